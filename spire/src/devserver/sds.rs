//! Envoy's Secret Discovery Service (SDS v3) as served to one registered workload.
//!
//! With SPIRE, Envoy gets its certificate and trust bundle from the agent's SDS,
//! on the same Unix socket as the Workload API. The dev server does the same, so
//! an Envoy bootstrap written for a SPIRE agent works unchanged against it, and
//! Envoy-based peers in `meshward up` and in tests hold certificates from the
//! same CA as Meshward's own processes.
//!
//! The behaviour follows the SPIRE agent's SDS v3 handler, where Envoy can tell:
//!
//! - the workload's SVID is a `tls_certificate` secret named by its SPIFFE ID,
//!   or [`DEFAULT_SVID_NAME`] (SPIRE's `default_svid_name`);
//! - the trust bundle is a `validation_context` secret named
//!   `spiffe://<trust domain>`, or [`DEFAULT_BUNDLE_NAME`] (`ROOTCA`), and all
//!   bundles together are [`DEFAULT_ALL_BUNDLES_NAME`] (`ALL`);
//! - bundles are expressed with Envoy's SPIFFE certificate validator when the
//!   Envoy is new enough (1.18+, from `node.user_agent_build_version`) unless its
//!   node metadata sets `disable_spiffe_cert_validation: true`; otherwise as a
//!   plain `trusted_ca`;
//! - a request without resource names gets everything; a name the workload is
//!   not entitled to fails the request with `InvalidArgument`;
//! - streams follow the xDS protocol: every response carries a version and a
//!   nonce, a request with an outdated nonce is ignored, an ACK or NACK of the
//!   current response causes no resend, a change of requested names is answered
//!   at once, and a rotated SVID is pushed without being asked;
//! - no `workload.spiffe.io` header is required (Envoy does not send it; SPIRE
//!   only checks it on the Workload API).
//!
//! `DeltaSecrets` is unimplemented, as in SPIRE.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::{
    DataSource, Node, TypedExtensionConfig, data_source, node,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, Secret, SpiffeCertValidatorConfig, TlsCertificate, secret,
    spiffe_cert_validator_config,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_server::SecretDiscoveryService;
use envoy_types::pb::google::protobuf::{Any, value};
use futures::Stream;
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use meshward_contract::sotw::{Received, SotwStream, Subscription};

use super::workload_api::{CurrentSvid, WorkloadService};

/// Resource name that selects the workload's SVID whatever its SPIFFE ID
/// (SPIRE agent `sds.default_svid_name`).
pub const DEFAULT_SVID_NAME: &str = "default";
/// Resource name that selects the bundle of the workload's own trust domain
/// (SPIRE agent `sds.default_bundle_name`).
pub const DEFAULT_BUNDLE_NAME: &str = "ROOTCA";
/// Resource name that selects all bundles as one SPIFFE validator config
/// (SPIRE agent `sds.default_all_bundles_name`).
pub const DEFAULT_ALL_BUNDLES_NAME: &str = "ALL";
/// The type URL of SDS resources.
pub const SECRET_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

const SPIFFE_VALIDATOR_NAME: &str = "envoy.tls.cert_validator.spiffe";
const SPIFFE_VALIDATOR_TYPE_URL: &str =
    "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig";
/// Node metadata key with which one Envoy opts out of the SPIFFE validator.
const DISABLE_SPIFFE_VALIDATION_KEY: &str = "disable_spiffe_cert_validation";
/// Responses buffered per stream; Envoy reads promptly, and a slow reader
/// only delays pushes, it never loses the latest state.
const STREAM_BUFFER: usize = 4;
/// Pause before retrying after the CA failed to mint a replacement SVID.
const MINT_RETRY: Duration = Duration::from_secs(1);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Serves SDS for the one workload its socket attests. Shares the workload's
/// SVID cache with the Workload API service, so Envoy and Workload API clients
/// of the same socket hold the same certificate and see the same rotations.
#[derive(Clone)]
pub(crate) struct SdsService {
    workload: WorkloadService,
}

/// Per-stream bookkeeping beyond the xDS stream rules ([`SotwStream`]).
struct StreamState {
    stream: SotwStream,
    /// Bumped whenever the served SVID changes.
    version: u64,
    /// The client's node, from the first request that carried it (Envoy
    /// may send it only once): decides how bundles are expressed.
    node: Option<Node>,
}

impl StreamState {
    fn version_info(&self) -> String {
        self.version.to_string()
    }
}

/// Resolves when the server is shutting down (or its controller is gone).
async fn shutting_down(mut rx: tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|down| *down).await;
}

fn check_type_url(req: &DiscoveryRequest) -> Result<(), Status> {
    if req.type_url.is_empty() || req.type_url == SECRET_TYPE_URL {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "SDS serves {SECRET_TYPE_URL}, not {:?}",
            req.type_url
        )))
    }
}

/// Whether bundles go to this Envoy as a SPIFFE validator config: as SPIRE
/// decides it, Envoy 1.18 or newer unless its node metadata opts out.
fn uses_spiffe_validator(node: Option<&Node>) -> bool {
    let Some(node) = node else { return false };
    let disabled = node
        .metadata
        .as_ref()
        .and_then(|m| m.fields.get(DISABLE_SPIFFE_VALIDATION_KEY))
        .and_then(|v| match &v.kind {
            Some(value::Kind::BoolValue(b)) => Some(*b),
            Some(value::Kind::StringValue(s)) => s.parse::<bool>().ok(),
            _ => None,
        })
        .unwrap_or(false);
    if disabled {
        return false;
    }
    match &node.user_agent_version_type {
        Some(node::UserAgentVersionType::UserAgentBuildVersion(build)) => build
            .version
            .as_ref()
            .is_some_and(|v| (v.major_number == 1 && v.minor_number > 17) || v.major_number > 1),
        _ => false,
    }
}

fn inline(bytes: Vec<u8>) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(bytes)),
        ..Default::default()
    })
}

fn pem_of(tag: &str, der: &[u8]) -> Vec<u8> {
    pem::encode(&pem::Pem::new(tag, der)).into_bytes()
}

fn pack(secret: &Secret) -> Any {
    Any {
        type_url: SECRET_TYPE_URL.to_owned(),
        value: secret.encode_to_vec(),
    }
}

fn tls_certificate(name: &str, leaf_der: &[u8], key_pkcs8_der: &[u8]) -> Any {
    pack(&Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::TlsCertificate(TlsCertificate {
            certificate_chain: inline(pem_of("CERTIFICATE", leaf_der)),
            private_key: inline(pem_of("PRIVATE KEY", key_pkcs8_der)),
            ..Default::default()
        })),
    })
}

/// A validation context for `bundles` (trust domain name, CA DER): the SPIFFE
/// validator for each trust domain, or the CAs as `trusted_ca`.
fn validation_context(name: &str, bundles: &[(&str, &[u8])], spiffe_validator: bool) -> Any {
    let context = if spiffe_validator {
        let config = SpiffeCertValidatorConfig {
            trust_domains: bundles
                .iter()
                .map(|(td, ca)| spiffe_cert_validator_config::TrustDomain {
                    name: (*td).to_owned(),
                    trust_bundle: inline(pem_of("CERTIFICATE", ca)),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        CertificateValidationContext {
            custom_validator_config: Some(TypedExtensionConfig {
                name: SPIFFE_VALIDATOR_NAME.to_owned(),
                typed_config: Some(Any {
                    type_url: SPIFFE_VALIDATOR_TYPE_URL.to_owned(),
                    value: config.encode_to_vec(),
                }),
            }),
            ..Default::default()
        }
    } else {
        let pems: Vec<u8> = bundles
            .iter()
            .flat_map(|(_, ca)| pem_of("CERTIFICATE", ca))
            .collect();
        CertificateValidationContext {
            trusted_ca: inline(pems),
            ..Default::default()
        }
    };
    pack(&Secret {
        name: name.to_owned(),
        r#type: Some(secret::Type::ValidationContext(context)),
    })
}

/// The DER of the leaf in `svid`, to tell whether a refresh changed anything.
fn leaf_of(svid: &CurrentSvid) -> Option<&[u8]> {
    svid.response.svids.first().map(|s| s.x509_svid.as_slice())
}

impl SdsService {
    pub(crate) fn new(workload: WorkloadService) -> Self {
        Self { workload }
    }

    /// The secrets `subscription` asks for, from `svid`, or why they cannot
    /// be served. Naming nothing (a wildcard) means the SVID under its
    /// SPIFFE ID and the trust domain's bundle, as with SPIRE.
    fn secrets(
        &self,
        svid: &CurrentSvid,
        subscription: &Subscription,
        node: Option<&Node>,
    ) -> Result<Vec<Any>, Status> {
        let spiffe_id = self.workload.spiffe_id.as_str();
        let trust_domain = self.workload.ca.trust_domain();
        let issued = svid
            .response
            .svids
            .first()
            .ok_or_else(|| Status::internal(format!("no SVID issued for {spiffe_id}")))?;
        let bundles = [(trust_domain, issued.bundle.as_slice())];
        let td_id = format!("spiffe://{trust_domain}");

        let (everything, mut names): (bool, BTreeSet<&str>) = match subscription {
            Subscription::Wildcard { .. } => (true, BTreeSet::new()),
            Subscription::Names(names) => (false, names.iter().map(String::as_str).collect()),
        };
        let spiffe_validator = uses_spiffe_validator(node);

        let mut resources = Vec::new();
        if names.remove(td_id.as_str()) || everything {
            resources.push(validation_context(&td_id, &bundles, spiffe_validator));
        }
        if names.remove(DEFAULT_BUNDLE_NAME) {
            resources.push(validation_context(
                DEFAULT_BUNDLE_NAME,
                &bundles,
                spiffe_validator,
            ));
        }
        if names.remove(DEFAULT_ALL_BUNDLES_NAME) {
            if !spiffe_validator {
                return Err(Status::internal(format!(
                    "{DEFAULT_ALL_BUNDLES_NAME:?} needs Envoy's SPIFFE certificate validator \
                     (Envoy 1.18 or newer, without {DISABLE_SPIFFE_VALIDATION_KEY})"
                )));
            }
            resources.push(validation_context(DEFAULT_ALL_BUNDLES_NAME, &bundles, true));
        }
        if names.remove(spiffe_id) || everything {
            resources.push(tls_certificate(
                spiffe_id,
                &issued.x509_svid,
                &issued.x509_svid_key,
            ));
        }
        if names.remove(DEFAULT_SVID_NAME) {
            resources.push(tls_certificate(
                DEFAULT_SVID_NAME,
                &issued.x509_svid,
                &issued.x509_svid_key,
            ));
        }
        if !names.is_empty() {
            return Err(Status::invalid_argument(format!(
                "workload {spiffe_id} is not authorized for the requested identities {names:?}"
            )));
        }
        Ok(resources)
    }

    /// Takes in one stream request; returns whether it must be answered now.
    fn on_request(&self, state: &mut StreamState, req: DiscoveryRequest) -> Result<bool, Status> {
        check_type_url(&req)?;
        let spiffe_id = self.workload.spiffe_id.as_str();
        let req = DiscoveryRequest {
            // The stream rules are per type; an empty type is SDS here.
            type_url: SECRET_TYPE_URL.to_string(),
            ..req
        };
        if state.node.is_none() {
            state.node = req.node.clone();
        }
        let outcome = state.stream.receive(&req);
        match &outcome.received {
            Received::Ignored => {
                tracing::debug!(%spiffe_id, nonce = %req.response_nonce, "ignoring SDS request with a stale nonce");
            }
            Received::Nack { version, message } => {
                tracing::warn!(%spiffe_id, names = ?req.resource_names, %version, %message,
                    "Envoy rejected SDS secrets (NACK)");
            }
            Received::Ack { version } if req.version_info != *version => {
                tracing::warn!(%spiffe_id, version = %req.version_info, expected = %version,
                    "Envoy did not apply the last SDS response and kept its previous secrets");
            }
            Received::Ack { .. } | Received::Subscribe => {}
        }
        tracing::debug!(%spiffe_id, names = ?req.resource_names, answer = outcome.answer(), "SDS request");
        Ok(outcome.answer())
    }

    /// Runs one `StreamSecrets` stream until the client leaves, the request
    /// fails, or the server shuts down.
    async fn drive(
        self,
        mut inbound: Streaming<DiscoveryRequest>,
        tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) {
        let spiffe_id = self.workload.spiffe_id.clone();
        let mut svid = match self.workload.current_svid() {
            Ok(svid) => svid,
            Err(status) => {
                let _ = tx.send(Err(status)).await;
                return;
            }
        };
        let mut state = StreamState {
            stream: SotwStream::default(),
            version: 1,
            node: None,
        };
        loop {
            let answer = tokio::select! {
                () = shutting_down(self.workload.shutdown.clone()) => return,
                () = tx.closed() => return,
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => match self.on_request(&mut state, req) {
                        Ok(answer) => answer,
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    },
                    Ok(None) => return,
                    Err(status) => {
                        tracing::debug!(%spiffe_id, %status, "SDS stream ended by the client");
                        return;
                    }
                },
                () = tokio::time::sleep_until(svid.refresh_at.into()) => {
                    match self.workload.current_svid() {
                        Ok(fresh) => {
                            let changed = leaf_of(&fresh) != leaf_of(&svid);
                            svid = fresh;
                            if svid.refresh_at <= Instant::now() {
                                svid.refresh_at = Instant::now() + MINT_RETRY;
                            }
                            if changed {
                                state.version += 1;
                                tracing::debug!(%spiffe_id, version = state.version, "pushing rotated SVID over SDS");
                            }
                            changed && state.stream.subscription(SECRET_TYPE_URL).is_some()
                        }
                        Err(status) => {
                            tracing::error!(%spiffe_id, %status, "no replacement SVID for SDS; retrying");
                            svid.refresh_at = Instant::now() + MINT_RETRY;
                            false
                        }
                    }
                }
            };
            if !answer {
                continue;
            }
            let Some(subscription) = state.stream.subscription(SECRET_TYPE_URL) else {
                continue;
            };
            let secrets = match self.secrets(&svid, subscription, state.node.as_ref()) {
                Ok(secrets) => secrets,
                Err(status) => {
                    tracing::warn!(%spiffe_id, %status, "refusing SDS request");
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            // Answered even when the version is unchanged: a changed
            // subscription needs the secrets it now names.
            let version = state.version_info();
            let Some(resp) = state
                .stream
                .respond(SECRET_TYPE_URL, version, secrets, true)
            else {
                continue;
            };
            tracing::debug!(
                %spiffe_id,
                version = %resp.version_info,
                nonce = %resp.nonce,
                resources = resp.resources.len(),
                "sending SDS response"
            );
            if tx.send(Ok(resp)).await.is_err() {
                return;
            }
        }
    }
}

#[tonic::async_trait]
impl SecretDiscoveryService for SdsService {
    type DeltaSecretsStream = BoxStream<DeltaDiscoveryResponse>;

    async fn delta_secrets(
        &self,
        _request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaSecretsStream>, Status> {
        Err(Status::unimplemented(
            "delta SDS is not implemented; use StreamSecrets",
        ))
    }

    type StreamSecretsStream = BoxStream<DiscoveryResponse>;

    async fn stream_secrets(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamSecretsStream>, Status> {
        let (tx, mut rx) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(self.clone().drive(request.into_inner(), tx));
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn fetch_secrets(
        &self,
        request: Request<DiscoveryRequest>,
    ) -> Result<Response<DiscoveryResponse>, Status> {
        let req = request.into_inner();
        check_type_url(&req)?;
        let svid = self.workload.current_svid()?;
        let names: BTreeSet<String> = req
            .resource_names
            .iter()
            .filter(|n| !n.is_empty())
            .cloned()
            .collect();
        let subscription = if names.is_empty() {
            Subscription::Wildcard { legacy: true }
        } else {
            Subscription::Names(names)
        };
        let resources = self.secrets(&svid, &subscription, req.node.as_ref())?;
        // `version` and `nonce` are empty for `FetchSecrets`, as with SPIRE.
        Ok(Response::new(DiscoveryResponse {
            resources,
            type_url: SECRET_TYPE_URL.to_owned(),
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use envoy_types::pb::envoy::config::core::v3::{BuildVersion, Node};
    use envoy_types::pb::envoy::service::secret::v3::secret_discovery_service_client::SecretDiscoveryServiceClient;
    use envoy_types::pb::envoy::r#type::v3::SemanticVersion;
    use envoy_types::pb::google::protobuf::{Struct, Value};
    use envoy_types::pb::google::rpc;
    use hyper_util::rt::TokioIo;
    use tokio::net::UnixStream;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::transport::{Channel, Endpoint, Uri};

    use super::*;
    use crate::test_support::{CLIENT_ID, SERVER_ID, TD, TestResult, WAIT, dev_server, source_for};

    const LONG_TTL: Duration = Duration::from_secs(3600);
    const TD_ID: &str = "spiffe://example.org";

    async fn sds_client(
        path: &Path,
    ) -> Result<SecretDiscoveryServiceClient<Channel>, tonic::transport::Error> {
        let path = path.to_owned();
        let channel = Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { UnixStream::connect(path).await.map(TokioIo::new) }
            }))
            .await?;
        Ok(SecretDiscoveryServiceClient::new(channel))
    }

    /// A node as Envoy of `major.minor` reports itself.
    fn envoy_node(major: u32, minor: u32) -> Node {
        Node {
            id: "envoy-test".into(),
            user_agent_name: "envoy".into(),
            user_agent_version_type: Some(node::UserAgentVersionType::UserAgentBuildVersion(
                BuildVersion {
                    version: Some(SemanticVersion {
                        major_number: major,
                        minor_number: minor,
                        patch: 0,
                    }),
                    metadata: None,
                },
            )),
            ..Default::default()
        }
    }

    fn request(names: &[&str], node: Option<Node>) -> DiscoveryRequest {
        DiscoveryRequest {
            node,
            resource_names: names.iter().map(|n| (*n).to_owned()).collect(),
            type_url: SECRET_TYPE_URL.into(),
            ..Default::default()
        }
    }

    fn ack(names: &[&str], resp: &DiscoveryResponse) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: resp.version_info.clone(),
            response_nonce: resp.nonce.clone(),
            ..request(names, None)
        }
    }

    fn secrets(resp: &DiscoveryResponse) -> Result<Vec<Secret>, prost::DecodeError> {
        resp.resources
            .iter()
            .map(|any| {
                assert_eq!(any.type_url, SECRET_TYPE_URL);
                Secret::decode(any.value.as_slice())
            })
            .collect()
    }

    fn names(resp: &DiscoveryResponse) -> Result<Vec<String>, prost::DecodeError> {
        let mut names: Vec<String> = secrets(resp)?.into_iter().map(|s| s.name).collect();
        names.sort();
        Ok(names)
    }

    fn inline_bytes(src: Option<&DataSource>) -> Option<&[u8]> {
        match src?.specifier.as_ref()? {
            data_source::Specifier::InlineBytes(b) => Some(b),
            _ => None,
        }
    }

    /// The SVID of a `tls_certificate` secret, validated by the spiffe crate.
    fn svid_of(
        secret: &Secret,
    ) -> Result<spiffe::X509Svid, Box<dyn std::error::Error + Send + Sync>> {
        let Some(secret::Type::TlsCertificate(tls)) = &secret.r#type else {
            return Err(format!("{} is not a tls_certificate", secret.name).into());
        };
        let chain = pem::parse(inline_bytes(tls.certificate_chain.as_ref()).ok_or("no chain")?)?;
        let key = pem::parse(inline_bytes(tls.private_key.as_ref()).ok_or("no key")?)?;
        assert_eq!(chain.tag(), "CERTIFICATE");
        assert_eq!(key.tag(), "PRIVATE KEY");
        Ok(spiffe::X509Svid::parse_from_der(
            chain.contents(),
            key.contents(),
        )?)
    }

    /// CA certificates (DER) and, for a SPIFFE validator, its trust domain names.
    type Bundle = (Vec<Vec<u8>>, Option<Vec<String>>);

    /// The CA certificates of a `validation_context` secret, and whether they
    /// came as a SPIFFE validator config (with its trust domain names).
    fn bundle_of(secret: &Secret) -> Result<Bundle, Box<dyn std::error::Error + Send + Sync>> {
        let Some(secret::Type::ValidationContext(ctx)) = &secret.r#type else {
            return Err(format!("{} is not a validation_context", secret.name).into());
        };
        if let Some(custom) = &ctx.custom_validator_config {
            assert_eq!(custom.name, SPIFFE_VALIDATOR_NAME);
            let any = custom.typed_config.as_ref().ok_or("no typed_config")?;
            assert_eq!(any.type_url, SPIFFE_VALIDATOR_TYPE_URL);
            let cfg = SpiffeCertValidatorConfig::decode(any.value.as_slice())?;
            let mut cas = Vec::new();
            let mut tds = Vec::new();
            for td in &cfg.trust_domains {
                tds.push(td.name.clone());
                let pems = inline_bytes(td.trust_bundle.as_ref()).ok_or("no trust bundle")?;
                cas.extend(
                    pem::parse_many(pems)?
                        .into_iter()
                        .map(|p| p.into_contents()),
                );
            }
            assert!(ctx.trusted_ca.is_none());
            return Ok((cas, Some(tds)));
        }
        let pems = inline_bytes(ctx.trusted_ca.as_ref()).ok_or("no trusted_ca")?;
        let cas = pem::parse_many(pems)?
            .into_iter()
            .map(|p| p.into_contents())
            .collect();
        Ok((cas, None))
    }

    /// A request sender and response reader for one StreamSecrets stream.
    async fn open_stream(
        client: &mut SecretDiscoveryServiceClient<Channel>,
    ) -> Result<(mpsc::Sender<DiscoveryRequest>, Streaming<DiscoveryResponse>), Status> {
        let (tx, rx) = mpsc::channel(8);
        let responses = client
            .stream_secrets(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok((tx, responses))
    }

    async fn next(
        stream: &mut Streaming<DiscoveryResponse>,
    ) -> Result<DiscoveryResponse, Box<dyn std::error::Error + Send + Sync>> {
        Ok(tokio::time::timeout(WAIT, stream.message())
            .await
            .map_err(|_| "no SDS response in time")??
            .ok_or("SDS stream ended")?)
    }

    #[tokio::test]
    async fn fetch_without_names_returns_the_svid_and_bundle() -> TestResult {
        let (dev, _dir) = dev_server(LONG_TTL).await?;
        let path = dev.register(SERVER_ID).await?;
        let mut client = sds_client(&path).await?;

        // No workload.spiffe.io header: Envoy never sends it.
        let resp = client.fetch_secrets(request(&[], None)).await?.into_inner();
        assert_eq!(resp.type_url, SECRET_TYPE_URL);
        assert_eq!(resp.version_info, "");
        assert_eq!(resp.nonce, "");
        assert_eq!(names(&resp)?, [TD_ID, SERVER_ID]);
        for secret in secrets(&resp)? {
            if secret.name == SERVER_ID {
                let svid = svid_of(&secret)?;
                assert_eq!(svid.spiffe_id().to_string(), SERVER_ID);
                assert_eq!(svid.cert_chain().len(), 1);
            } else {
                // An unversioned node gets a plain trusted_ca, as from SPIRE.
                let (cas, validator) = bundle_of(&secret)?;
                assert_eq!(cas, [dev.bundle_der()]);
                assert_eq!(validator, None);
            }
        }
        dev.shutdown().await;
        Ok(())
    }

    #[tokio::test]
    async fn sds_and_workload_api_share_the_current_svid() -> TestResult {
        let (dev, _dir) = dev_server(LONG_TTL).await?;
        let src = source_for(&dev, CLIENT_ID).await?;
        let path = dev.register(CLIENT_ID).await?;
        let resp = sds_client(&path)
            .await?
            .fetch_secrets(request(&[CLIENT_ID], None))
            .await?
            .into_inner();
        let [secret] = secrets(&resp)?
            .try_into()
            .map_err(|_| "expected one secret")?;
        let svid = svid_of(&secret)?;
        assert_eq!(svid.leaf().as_bytes(), src.leaf_der()?.as_slice());
        dev.shutdown().await;
        Ok(())
    }

    #[tokio::test]
    async fn default_names_and_spiffe_validator_follow_spire() -> TestResult {
        let (dev, _dir) = dev_server(LONG_TTL).await?;
        let path = dev.register(SERVER_ID).await?;
        let mut client = sds_client(&path).await?;

        let all = [
            DEFAULT_SVID_NAME,
            DEFAULT_BUNDLE_NAME,
            DEFAULT_ALL_BUNDLES_NAME,
            TD_ID,
        ];
        let resp = client
            .fetch_secrets(request(&all, Some(envoy_node(1, 40))))
            .await?
            .into_inner();
        assert_eq!(names(&resp)?, ["ALL", "ROOTCA", "default", TD_ID]);
        for secret in secrets(&resp)? {
            if secret.name == DEFAULT_SVID_NAME {
                assert_eq!(svid_of(&secret)?.spiffe_id().to_string(), SERVER_ID);
            } else {
                let (cas, validator) = bundle_of(&secret)?;
                assert_eq!(cas, [dev.bundle_der()], "{}", secret.name);
                assert_eq!(validator, Some(vec![TD.to_owned()]), "{}", secret.name);
            }
        }

        // Node metadata opts one Envoy out of the SPIFFE validator.
        let mut node = envoy_node(1, 40);
        node.metadata = Some(Struct {
            fields: [(
                DISABLE_SPIFFE_VALIDATION_KEY.to_owned(),
                Value {
                    kind: Some(value::Kind::BoolValue(true)),
                },
            )]
            .into(),
        });
        let resp = client
            .fetch_secrets(request(&[DEFAULT_BUNDLE_NAME], Some(node.clone())))
            .await?
            .into_inner();
        let [secret] = secrets(&resp)?
            .try_into()
            .map_err(|_| "expected one secret")?;
        assert_eq!(bundle_of(&secret)?, (vec![dev.bundle_der()], None));
        // ... and then cannot have ALL, as with SPIRE.
        let err = client
            .fetch_secrets(request(&[DEFAULT_ALL_BUNDLES_NAME], Some(node)))
            .await
            .err()
            .ok_or("ALL served without the SPIFFE validator")?;
        assert_eq!(err.code(), tonic::Code::Internal, "{err:?}");

        // Envoy older than 1.18 gets trusted_ca.
        let resp = client
            .fetch_secrets(request(&[TD_ID], Some(envoy_node(1, 17))))
            .await?
            .into_inner();
        let [secret] = secrets(&resp)?
            .try_into()
            .map_err(|_| "expected one secret")?;
        assert_eq!(bundle_of(&secret)?.1, None);
        dev.shutdown().await;
        Ok(())
    }

    #[tokio::test]
    async fn names_the_workload_does_not_hold_are_refused() -> TestResult {
        let (dev, _dir) = dev_server(LONG_TTL).await?;
        let path = dev.register(SERVER_ID).await?;
        dev.register(CLIENT_ID).await?;
        let mut client = sds_client(&path).await?;

        for bad in [CLIENT_ID, "spiffe://other.org", "nonsense"] {
            let err = client
                .fetch_secrets(request(&[SERVER_ID, bad], None))
                .await
                .err()
                .ok_or_else(|| format!("{bad} was served to {SERVER_ID}"))?;
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
            assert!(err.message().contains(bad), "{err:?}");
        }
        let wrong_type = DiscoveryRequest {
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            ..request(&[], None)
        };
        let err = client
            .fetch_secrets(wrong_type)
            .await
            .err()
            .ok_or("a cluster request was served")?;
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");

        // On a stream the refusal ends the stream with the same status.
        let (tx, mut responses) = open_stream(&mut client).await?;
        tx.send(request(&[CLIENT_ID], None)).await?;
        let err = tokio::time::timeout(WAIT, responses.message())
            .await?
            .err()
            .ok_or("stream served a foreign identity")?;
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        dev.shutdown().await;
        Ok(())
    }

    #[tokio::test]
    async fn stream_follows_xds_ack_nack_and_nonce_rules() -> TestResult {
        let (dev, _dir) = dev_server(LONG_TTL).await?;
        let path = dev.register(SERVER_ID).await?;
        let mut client = sds_client(&path).await?;
        let (tx, mut responses) = open_stream(&mut client).await?;

        tx.send(request(&[SERVER_ID], Some(envoy_node(1, 40))))
            .await?;
        let first = next(&mut responses).await?;
        assert_eq!(names(&first)?, [SERVER_ID]);
        assert!(!first.version_info.is_empty() && !first.nonce.is_empty());

        // ACK: nothing to send. NACK of the same version: no resend either.
        tx.send(ack(&[SERVER_ID], &first)).await?;
        tx.send(DiscoveryRequest {
            error_detail: Some(rpc::Status {
                code: tonic::Code::InvalidArgument as i32,
                message: "test: rejected".into(),
                details: Vec::new(),
            }),
            version_info: String::new(),
            ..ack(&[SERVER_ID], &first)
        })
        .await?;
        // A request with a stale nonce is ignored even though its names changed.
        tx.send(DiscoveryRequest {
            response_nonce: "stale".into(),
            ..ack(&[SERVER_ID, TD_ID], &first)
        })
        .await?;
        // A current-nonce request with new names is answered at once. Being
        // the next message proves nothing was sent for the requests above.
        tx.send(ack(&[DEFAULT_BUNDLE_NAME, SERVER_ID], &first))
            .await?;
        let second = next(&mut responses).await?;
        assert_eq!(names(&second)?, ["ROOTCA", SERVER_ID]);
        assert_eq!(
            second.version_info, first.version_info,
            "SVID did not change"
        );
        assert_ne!(second.nonce, first.nonce);

        // The client hanging up ends the stream server-side too; the next
        // stream starts from scratch.
        drop(tx);
        assert!(
            tokio::time::timeout(WAIT, responses.message())
                .await?
                .is_ok_and(|m| m.is_none()),
            "stream did not end"
        );
        dev.shutdown().await;
        Ok(())
    }

    #[tokio::test]
    async fn rotation_is_pushed_without_a_request() -> TestResult {
        let ttl = crate::devserver::MIN_SVID_TTL;
        let (dev, _dir) = dev_server(ttl).await?;
        let path = dev.register(SERVER_ID).await?;
        let mut client = sds_client(&path).await?;
        let (tx, mut responses) = open_stream(&mut client).await?;

        tx.send(request(&[DEFAULT_SVID_NAME], None)).await?;
        let first = next(&mut responses).await?;
        tx.send(ack(&[DEFAULT_SVID_NAME], &first)).await?;
        let second = next(&mut responses).await?;
        assert_ne!(second.version_info, first.version_info);
        assert_ne!(second.nonce, first.nonce);
        let [old] = secrets(&first)?
            .try_into()
            .map_err(|_| "expected one secret")?;
        let [new] = secrets(&second)?
            .try_into()
            .map_err(|_| "expected one secret")?;
        let (old, new) = (svid_of(&old)?, svid_of(&new)?);
        assert_eq!(new.spiffe_id().to_string(), SERVER_ID);
        assert_ne!(old.leaf().as_bytes(), new.leaf().as_bytes());
        dev.shutdown().await;
        Ok(())
    }

    #[tokio::test]
    async fn shutdown_ends_open_streams() -> TestResult {
        let (dev, _dir) = dev_server(LONG_TTL).await?;
        let path = dev.register(SERVER_ID).await?;
        let mut client = sds_client(&path).await?;
        let (tx, mut responses) = open_stream(&mut client).await?;
        tx.send(request(&[], None)).await?;
        next(&mut responses).await?;
        tokio::time::timeout(WAIT, dev.shutdown()).await?;
        let end = tokio::time::timeout(WAIT, responses.message()).await?;
        assert!(!matches!(end, Ok(Some(_))), "stream still serving: {end:?}");
        Ok(())
    }

    #[tokio::test]
    async fn delta_sds_is_unimplemented() -> TestResult {
        let (dev, _dir) = dev_server(LONG_TTL).await?;
        let path = dev.register(SERVER_ID).await?;
        let mut client = sds_client(&path).await?;
        let (_tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(1);
        let err = client
            .delta_secrets(ReceiverStream::new(rx))
            .await
            .err()
            .ok_or("delta SDS served")?;
        assert_eq!(err.code(), tonic::Code::Unimplemented);
        dev.shutdown().await;
        Ok(())
    }
}
