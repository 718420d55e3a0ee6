use std::time::{Duration, SystemTime};

use super::source::IdentitySource;
use super::svid::SvidInfo;
use super::*;

#[test]
fn endpoint_forms() -> Result<(), IdentityError> {
    assert_eq!(normalize_endpoint("unix:/x/y.sock")?, "unix:/x/y.sock");
    assert_eq!(normalize_endpoint("unix:///x/y.sock")?, "unix:///x/y.sock");
    assert_eq!(normalize_endpoint("/x/y.sock")?, "unix:/x/y.sock");
    assert_eq!(
        normalize_endpoint("tcp://127.0.0.1:8081")?,
        "tcp://127.0.0.1:8081"
    );
    assert!(normalize_endpoint("rel.sock")?.starts_with("unix:/"));
    assert!(matches!(
        normalize_endpoint(""),
        Err(IdentityError::InvalidEndpoint { .. })
    ));
    assert!(matches!(
        normalize_endpoint("http://x"),
        Err(IdentityError::InvalidEndpoint { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn unavailable_endpoint_is_named_in_the_error() {
    let path = std::env::temp_dir().join(format!(
        "meshward-spire-missing-{}.sock",
        std::process::id()
    ));
    let endpoint = format!("unix:{}", path.display());
    let err = IdentitySource::connect(&endpoint, Duration::from_millis(300))
        .await
        .err();
    let msg = err.map(|e| e.to_string()).unwrap_or_default();
    assert!(
        msg.starts_with(&format!("workload API at {endpoint} unavailable:")),
        "{msg}"
    );
}

/// Waits (bounded) until `f` holds for `identity`, re-checking on every change.
async fn wait_until(
    identity: &WorkloadIdentity,
    f: impl Fn(&Result<SvidInfo, IdentityError>) -> bool,
) -> Result<SvidInfo, IdentityError> {
    let mut updates = identity.updated();
    let deadline = tokio::time::Instant::now() + crate::test_support::WAIT;
    loop {
        let now = identity.check();
        if f(&now) {
            return now;
        }
        if tokio::time::timeout_at(deadline, updates.changed())
            .await
            .is_err()
        {
            return now;
        }
    }
}

#[tokio::test]
async fn lazy_identity_says_why_it_waits_then_connects() -> crate::test_support::TestResult {
    use crate::test_support::{CLIENT_ID, dev_server};
    let (dev, _dir) = dev_server(Duration::from_secs(3600)).await?;
    let socket = dev.dir().join("agent_client.sock");
    let endpoint = format!("unix:{}", socket.display());
    let identity = WorkloadIdentity::connect(&endpoint)?;
    let waiting = wait_until(
        &identity,
        |r| matches!(r, Err(IdentityError::Waiting { reason, .. }) if reason != "connecting"),
    )
    .await;
    let msg = waiting.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        msg.starts_with(&format!(
            "waiting for SVID from workload API at {endpoint}: "
        )) && msg.contains("os error 2"),
        "{msg}"
    );
    assert_eq!(dev.register(CLIENT_ID).await?, socket);
    let src = tokio::time::timeout(crate::test_support::WAIT, identity.ready()).await??;
    assert_eq!(src.spiffe_id()?, CLIENT_ID);
    assert_eq!(identity.check()?.spiffe_id, CLIENT_ID);
    dev.shutdown().await;
    Ok(())
}

/// With the Workload API gone, the SVID serves until it expires; then
/// `check` fails closed naming it, and spiffe-rustls refuses to present it.
#[tokio::test]
async fn expired_svid_fails_closed_and_is_not_presented() -> crate::test_support::TestResult {
    use crate::test_support::{CLIENT_ID, SERVER_ID, dev_server, handshake, source_for};
    let (dev, _dir) = dev_server(Duration::from_secs(2)).await?;
    let server = source_for(&dev, SERVER_ID).await?;
    let client = source_for(&dev, CLIENT_ID).await?;
    let server_tls = crate::tls::server_config(&server, &[b"h2"])?;
    let client_tls = crate::tls::client_config(&client, Some(SERVER_ID), &[b"h2"])?;
    dev.shutdown().await;

    let identity = WorkloadIdentity::from(server.clone());
    let expired = wait_until(&identity, |r| {
        matches!(r, Err(IdentityError::Expired { .. }))
    })
    .await;
    let msg = expired.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        msg.starts_with(&format!("SVID for {SERVER_ID} expired at "))
            && msg.contains("workload API unavailable"),
        "{msg}"
    );
    assert!(
        server
            .last_svid()
            .is_some_and(|s| s.not_after <= SystemTime::now())
    );
    let client_identity = WorkloadIdentity::from(client);
    wait_until(&client_identity, |r| {
        matches!(r, Err(IdentityError::Expired { .. }))
    })
    .await
    .err()
    .ok_or("client SVID did not expire")?;

    let hs = handshake(server_tls, client_tls).await;
    assert!(hs.server.is_err(), "server accepted with an expired SVID");
    assert!(hs.client.is_err(), "client completed with an expired SVID");
    Ok(())
}
