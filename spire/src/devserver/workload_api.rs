//! The SPIFFE Workload API as served to one registered workload.
//!
//! One instance per socket: the socket *is* the attestation, so the service
//! knows exactly which SPIFFE ID to issue. It behaves like a SPIRE agent where
//! clients can tell the difference: the `workload.spiffe.io: true` header is
//! required, SVID streams stay open and push a fresh SVID at half its lifetime,
//! and the JWT half of the API is answered with `Unimplemented`.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use meshward_contract::pb::workload::spiffe_workload_api_server::SpiffeWorkloadApi;
use meshward_contract::pb::workload::{
    JwtBundlesRequest, JwtBundlesResponse, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svid, X509svidRequest,
    X509svidResponse,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use super::ca::{Ca, LeafSpec};

/// The metadata header every Workload API client must send (SPIFFE Workload Endpoint spec).
pub const WORKLOAD_API_HEADER: &str = "workload.spiffe.io";

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Serves one workload's identity.
///
/// All streams of one workload share one current SVID, as a SPIRE agent's
/// cache does: a client that reconnects gets the same certificate, and a new
/// one is minted only once the current one reaches half its lifetime.
#[derive(Clone)]
pub(crate) struct WorkloadService {
    pub(crate) spiffe_id: String,
    /// DNS SANs its SVIDs carry beside the SPIFFE ID.
    pub(crate) dns_names: Vec<String>,
    pub(crate) ca: Arc<Ca>,
    pub(crate) ttl: Duration,
    pub(crate) shutdown: watch::Receiver<bool>,
    pub(crate) current: Arc<Mutex<Option<CurrentSvid>>>,
}

/// The SVID currently handed out, and when it is due for replacement.
#[derive(Clone)]
pub(crate) struct CurrentSvid {
    pub(crate) response: X509svidResponse,
    pub(crate) refresh_at: Instant,
}

/// Resolves when the server is shutting down (or its controller is gone).
async fn shutting_down(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|down| *down).await;
}

fn check_header<T>(req: &Request<T>) -> Result<(), Status> {
    match req
        .metadata()
        .get(WORKLOAD_API_HEADER)
        .and_then(|v| v.to_str().ok())
    {
        Some("true") => Ok(()),
        // SPIRE's wording and code, so clients behave the same against both.
        _ => Err(Status::invalid_argument(
            "security header missing from request",
        )),
    }
}

impl WorkloadService {
    /// The current SVID, minting a new one if none exists or it is due.
    /// Shared with the SDS service, so Envoy and Workload API clients of one
    /// socket always hold the same certificate.
    pub(crate) fn current_svid(&self) -> Result<CurrentSvid, Status> {
        let mut cur = self
            .current
            .lock()
            .map_err(|_| Status::internal("SVID cache poisoned"))?;
        if let Some(c) = cur.as_ref()
            && Instant::now() < c.refresh_at
        {
            return Ok(c.clone());
        }
        let fresh = CurrentSvid {
            response: self.mint_response()?,
            refresh_at: Instant::now() + self.ttl / 2,
        };
        *cur = Some(fresh.clone());
        Ok(fresh)
    }

    fn mint_response(&self) -> Result<X509svidResponse, Status> {
        let minted = self
            .ca
            .mint(&LeafSpec {
                dns_names: self.dns_names.clone(),
                ..LeafSpec::svid(&self.spiffe_id, self.ttl)
            })
            .map_err(|e| {
                tracing::error!(spiffe_id = %self.spiffe_id, error = %e, "minting SVID failed");
                Status::internal(format!("minting SVID for {}: {e}", self.spiffe_id))
            })?;
        tracing::debug!(spiffe_id = %self.spiffe_id, ttl = ?self.ttl, "issued X509-SVID");
        Ok(X509svidResponse {
            svids: vec![X509svid {
                spiffe_id: self.spiffe_id.clone(),
                x509_svid: minted.leaf_der.to_vec(),
                x509_svid_key: minted.key_pkcs8_der,
                bundle: self.ca.cert_der().to_vec(),
                hint: String::new(),
            }],
            crl: Vec::new(),
            federated_bundles: HashMap::new(),
        })
    }

    fn bundles_response(&self) -> X509BundlesResponse {
        X509BundlesResponse {
            crl: Vec::new(),
            bundles: HashMap::from([(
                self.ca.trust_domain().to_owned(),
                self.ca.cert_der().to_vec(),
            )]),
        }
    }
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadService {
    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        check_header(&request)?;
        Err(Status::unimplemented(
            "the Meshward dev identity server issues X509-SVIDs only",
        ))
    }

    type FetchJWTBundlesStream = BoxStream<JwtBundlesResponse>;

    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        check_header(&request)?;
        Err(Status::unimplemented(
            "the Meshward dev identity server issues X509-SVIDs only",
        ))
    }

    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        check_header(&request)?;
        Err(Status::unimplemented(
            "the Meshward dev identity server issues X509-SVIDs only",
        ))
    }

    type FetchX509SVIDStream = BoxStream<X509svidResponse>;

    /// Sends the current SVID now, then each replacement as it is minted at half TTL, until the
    /// client goes away or the server shuts down (which ends the stream so
    /// graceful shutdown is not held up by never-ending RPCs).
    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        check_header(&request)?;
        let stream =
            futures::stream::unfold((self.clone(), None::<Instant>), |(svc, next)| async move {
                if *svc.shutdown.borrow() {
                    return None;
                }
                if let Some(at) = next {
                    tokio::select! {
                        () = tokio::time::sleep_until(at.into()) => {}
                        () = shutting_down(svc.shutdown.clone()) => return None,
                    }
                }
                match svc.current_svid() {
                    Ok(c) => Some((Ok(c.response), (svc, Some(c.refresh_at)))),
                    // Report the failure and retry a little later.
                    Err(status) => {
                        let retry = Instant::now() + Duration::from_secs(1);
                        Some((Err(status), (svc, Some(retry))))
                    }
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }

    type FetchX509BundlesStream = BoxStream<X509BundlesResponse>;

    /// Sends the bundle once and keeps the stream open (the dev CA never
    /// changes) until the client goes away or the server shuts down.
    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        check_header(&request)?;
        let stream = futures::stream::unfold((self.clone(), true), |(svc, first)| async move {
            if first && !*svc.shutdown.borrow() {
                let item = Ok(svc.bundles_response());
                return Some((item, (svc, false)));
            }
            shutting_down(svc.shutdown.clone()).await;
            None
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
