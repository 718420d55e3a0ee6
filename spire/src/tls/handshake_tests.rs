//! Handshakes over loopback between the SPIFFE-aware configs and good or bad peers.

use std::time::Duration;

use super::*;
use crate::grpc::ALPN_H2;
use crate::test_support::{
    CLIENT_ID, Handshake, SERVER_ID, TestResult, WAIT, dev_server, handshake, source_for,
};
use crate::test_util::{TestCa, anonymous_client_config};

const TTL: Duration = Duration::from_secs(3600);
const ALPN: &[&[u8]] = &[ALPN_H2];

fn refused_by_server(h: &Handshake) -> bool {
    h.server.is_err() && h.client.is_err()
}

#[tokio::test]
async fn mutual_tls_succeeds_and_reports_both_ids() -> TestResult {
    let (dev, _dir) = dev_server(TTL).await?;
    let server_src = source_for(&dev, SERVER_ID).await?;
    let client_src = source_for(&dev, CLIENT_ID).await?;
    let h = handshake(
        server_config(&server_src, ALPN)?,
        client_config(&client_src, Some(SERVER_ID), ALPN)?,
    )
    .await;
    let client_chain = h.server.map_err(|e| format!("server side: {e}"))?;
    assert_eq!(peer_spiffe_id(&client_chain)?, CLIENT_ID);
    let (server_chain, alpn) = h.client.map_err(|e| format!("client side: {e}"))?;
    assert_eq!(peer_spiffe_id(&server_chain)?, SERVER_ID);
    assert_eq!(alpn.as_deref(), Some(ALPN_H2));
    dev.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn server_refuses_bad_client_certificates() -> TestResult {
    let (dev, _dir) = dev_server(TTL).await?;
    let server = server_config(&source_for(&dev, SERVER_ID).await?, ALPN)?;
    let trusted = dev.test_ca();
    let foreign = TestCa::new("other.org")?;

    // Control: a well-formed cert from the trusted CA through the same test
    // client path is accepted, so the refusals below are due to the defect.
    let good = trusted.issue(CLIENT_ID, TTL)?;
    let h = handshake(server.clone(), good.client_config(ALPN)?).await;
    assert_eq!(
        peer_spiffe_id(&h.server.map_err(|e| format!("control refused: {e}"))?)?,
        CLIENT_ID
    );

    let cases = [
        (
            "no client certificate",
            "sent no certificates",
            anonymous_client_config(ALPN)?,
        ),
        (
            "other trust domain",
            "no bundle for trust domain other.org",
            foreign
                .issue("spiffe://other.org/agent/x", TTL)?
                .client_config(ALPN)?,
        ),
        (
            "foreign CA claiming our trust domain",
            "UnknownIssuer",
            foreign.issue(CLIENT_ID, TTL)?.client_config(ALPN)?,
        ),
        (
            "expired",
            "expired",
            trusted.issue_expired(CLIENT_ID)?.client_config(ALPN)?,
        ),
        (
            "two URI SANs",
            "multiple URI SAN",
            trusted
                .issue_with_uris(&[CLIENT_ID, "spiffe://example.org/agent/two"])?
                .client_config(ALPN)?,
        ),
        (
            "no URI SAN",
            "missing SPIFFE ID",
            trusted.issue_without_uri()?.client_config(ALPN)?,
        ),
        (
            "CA certificate as leaf",
            "CA is set to true",
            trusted.issue_ca_as_leaf(CLIENT_ID)?.client_config(ALPN)?,
        ),
    ];
    for (what, reason, client) in cases {
        let h = handshake(server.clone(), client).await;
        assert!(
            refused_by_server(&h),
            "{what}: server={:?} client={:?}",
            h.server.as_ref().map(|c| peer_spiffe_id(c)),
            h.client.as_ref().map(|_| "ok")
        );
        let err = h.server.err().unwrap_or_default();
        assert!(
            err.contains(reason),
            "{what}: refused for another reason: {err}"
        );
    }
    dev.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn client_refuses_wrong_or_bad_servers() -> TestResult {
    let (dev, _dir) = dev_server(TTL).await?;
    let server_src = source_for(&dev, SERVER_ID).await?;
    let client_src = source_for(&dev, CLIENT_ID).await?;
    let server = server_config(&server_src, ALPN)?;

    // The right server is accepted with or without an expected ID.
    for expected in [Some(SERVER_ID), None] {
        let h = handshake(server.clone(), client_config(&client_src, expected, ALPN)?).await;
        assert!(h.client.is_ok(), "{expected:?}: {:?}", h.client.err());
    }

    // A valid SVID of the trust domain, but not the expected one.
    let h = handshake(
        server.clone(),
        client_config(&client_src, Some("spiffe://example.org/svc/other"), ALPN)?,
    )
    .await;
    let err = h.client.err().ok_or("wrong server ID accepted")?;
    assert!(err.contains("not authorized"), "{err}");

    // Servers presenting bad certificates are refused even with no expected ID.
    let trusted = dev.test_ca();
    let foreign = TestCa::new("other.org")?;
    let cases = [
        (
            "other trust domain",
            "no bundle for trust domain other.org",
            foreign.issue("spiffe://other.org/svc/server", TTL)?,
        ),
        ("expired", "expired", trusted.issue_expired(SERVER_ID)?),
        (
            "two URI SANs",
            "multiple URI SAN",
            trusted.issue_with_uris(&[SERVER_ID, "spiffe://example.org/svc/two"])?,
        ),
        (
            "no URI SAN",
            "missing SPIFFE ID",
            trusted.issue_without_uri()?,
        ),
    ];
    for (what, reason, svid) in cases {
        let h = handshake(
            svid.server_config(ALPN)?,
            client_config(&client_src, None, ALPN)?,
        )
        .await;
        let err = h
            .client
            .err()
            .ok_or(format!("{what}: client accepted the server"))?;
        assert!(
            err.contains(reason),
            "{what}: refused for another reason: {err}"
        );
    }

    // Invalid expected IDs are configuration errors, not handshake surprises.
    assert!(matches!(
        client_config(&client_src, Some("not-a-spiffe-id"), ALPN),
        Err(IdentityError::InvalidSpiffeId { .. })
    ));
    dev.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn new_handshakes_present_the_rotated_svid() -> TestResult {
    let (dev, _dir) = dev_server(Duration::from_secs(2)).await?;
    let server_src = source_for(&dev, SERVER_ID).await?;
    let client_src = source_for(&dev, CLIENT_ID).await?;
    // Configs are built once, before rotation, as production code does.
    let server = server_config(&server_src, ALPN)?;
    let client = client_config(&client_src, Some(SERVER_ID), ALPN)?;

    let first = handshake(server.clone(), client.clone()).await;
    let (first_chain, _) = first.client.map_err(|e| format!("first handshake: {e}"))?;
    assert_eq!(
        first_chain.first().map(|c| c.to_vec()),
        Some(server_src.leaf_der()?)
    );

    let mut updates = server_src.updated();
    tokio::time::timeout(WAIT, updates.changed()).await??;
    let rotated = server_src.leaf_der()?;
    assert_ne!(
        first_chain.first().map(|c| c.to_vec()),
        Some(rotated.clone())
    );

    // The TLS layer converts new material right after the source publishes it;
    // poll (bounded) until a fresh handshake shows the rotated certificate.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let h = handshake(server.clone(), client.clone()).await;
        if let Ok((chain, _)) = &h.client {
            let presented = chain.first().map(|c| c.to_vec());
            // Compare with the source's current leaf: with a 2s TTL it may have
            // rotated once more while we polled.
            let current = server_src.leaf_der()?;
            if presented.as_ref() == Some(&current)
                && Some(current.as_slice()) != first_chain.first().map(|c| c.as_ref())
            {
                assert_eq!(peer_spiffe_id(chain)?, SERVER_ID);
                break;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("rotated SVID never presented; last: {:?}", h.client.err()).into());
        }
        tokio::task::yield_now().await;
    }
    dev.shutdown().await;
    Ok(())
}
