//! The identity CA (`io.linkerd.proxy.identity.Identity/Certify`): signs a
//! workload's CSR for the identity its token proves, and nothing else.
//!
//! The trust anchors and the issuer come from a directory (`weft identity
//! init` writes one); a new issuer there is picked up without a restart,
//! once it validates. The controller gets its own certificate from the same
//! issuer, so that proxies reach its APIs over mesh TLS.

use crate::Metrics;
use linkerd2_proxy_api::identity::{CertifyRequest, CertifyResponse, identity_server::Identity};
use std::{
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};
use tonic::{Request, Response, Status};
use weft_identity::{
    CaError, Credentials, Issuer, Names, TokenKey, TrustAnchors,
    ca::{ANCHOR_CERT, ISSUER_CERT, ISSUER_KEY},
    tls::LocalKey,
};

/// How the CA is set up.
#[derive(Clone, Debug)]
pub struct CaConfig {
    pub dir: PathBuf,
    pub names: Names,
    /// How long a workload certificate is valid (Linkerd's default: 24h).
    pub lifetime: Duration,
    /// How far before now a certificate is valid from, for peers whose
    /// clocks are behind.
    pub clock_skew: Duration,
}

/// Checks a workload's token; the answer is the `(namespace, service
/// account)` it proves.
pub trait TokenValidator: Send + Sync + 'static {
    fn validate<'a>(&'a self, token: &'a [u8]) -> BoxFuture<'a, Result<(String, String), Status>>;
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Local mode: tokens the controller signed itself (`weft identity token`).
pub struct LocalTokens(pub TokenKey);

impl TokenValidator for LocalTokens {
    fn validate<'a>(&'a self, token: &'a [u8]) -> BoxFuture<'a, Result<(String, String), Status>> {
        let result = self
            .0
            .verify(token, SystemTime::now())
            .map(|claims| (claims.ns, claims.sa))
            .map_err(|e| Status::unauthenticated(e.to_string()));
        Box::pin(std::future::ready(result))
    }
}

/// Kubernetes mode: the workload's projected service-account token (audience
/// `identity.l5d.io`), checked by the API server with a TokenReview.
pub struct TokenReviews(pub kube::Client);

impl TokenValidator for TokenReviews {
    fn validate<'a>(&'a self, token: &'a [u8]) -> BoxFuture<'a, Result<(String, String), Status>> {
        use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
        Box::pin(async move {
            let token = std::str::from_utf8(token)
                .map_err(|_| Status::unauthenticated("the token is not UTF-8"))?
                .trim();
            if token.is_empty() {
                return Err(Status::unauthenticated("no token was presented"));
            }
            let review = TokenReview {
                spec: TokenReviewSpec {
                    token: Some(token.to_string()),
                    audiences: Some(vec![weft_identity::TOKEN_AUDIENCE.to_string()]),
                },
                ..Default::default()
            };
            let api: kube::Api<TokenReview> = kube::Api::all(self.0.clone());
            let reviewed = api.create(&Default::default(), &review).await.map_err(|error| {
                tracing::warn!(%error, "TokenReview failed");
                Status::unavailable(format!("the Kubernetes API could not review the token: {error}"))
            })?;
            let status = reviewed.status.unwrap_or_default();
            if let Some(error) = status.error.filter(|e| !e.is_empty()) {
                return Err(Status::unauthenticated(format!("the token was not accepted: {error}")));
            }
            if status.authenticated != Some(true) {
                return Err(Status::unauthenticated("the token was not accepted"));
            }
            let audiences = status.audiences.unwrap_or_default();
            if !audiences.iter().any(|a| a == weft_identity::TOKEN_AUDIENCE) {
                return Err(Status::unauthenticated(format!(
                    "the token is not for audience {}",
                    weft_identity::TOKEN_AUDIENCE
                )));
            }
            let user = status.user.and_then(|u| u.username).unwrap_or_default();
            let Some(("system", "serviceaccount", ns, sa)) = split4(&user) else {
                return Err(Status::unauthenticated(format!(
                    "the token is for {user:?}, not a service account"
                )));
            };
            Ok((ns.to_string(), sa.to_string()))
        })
    }
}

fn split4(s: &str) -> Option<(&str, &str, &str, &str)> {
    let mut parts = s.splitn(4, ':');
    Some((parts.next()?, parts.next()?, parts.next()?, parts.next()?))
}

pub struct Ca {
    config: CaConfig,
    tokens: Box<dyn TokenValidator>,
    metrics: Arc<Metrics>,
    state: RwLock<Arc<State>>,
    /// The controller's own key: its certificates are reissued from the
    /// current issuer as they age and when the issuer changes.
    own_key: LocalKey,
}

/// What the files on disk said when they were last loaded.
struct State {
    anchors: TrustAnchors,
    issuer: Arc<Issuer>,
    stamp: Stamp,
    own: Arc<Credentials>,
    tls: Arc<rustls::ServerConfig>,
}

type Stamp = Vec<Option<(SystemTime, u64)>>;

// === impl Ca ===

impl Ca {
    /// Loads and validates the CA from `config.dir`: an expired issuer, an
    /// issuer that does not chain to the anchors, or a key that does not
    /// match is an error that says which.
    pub fn load(
        config: CaConfig,
        tokens: Box<dyn TokenValidator>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, CaError> {
        let own_key = LocalKey::generate();
        let state = load_state(&config, &own_key)?;
        metrics.issuer_loaded(state.issuer.not_after());
        Ok(Arc::new(Self { config, tokens, metrics, state: RwLock::new(Arc::new(state)), own_key }))
    }

    /// The TLS configuration of the controller's gRPC listener.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.state().tls.clone()
    }

    pub fn anchors(&self) -> TrustAnchors {
        self.state().anchors.clone()
    }

    /// Mesh TLS as a client, presenting the controller's own certificate
    /// (which also names the tap service): how it taps proxies.
    pub fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        let state = self.state();
        weft_identity::tls::client_config(state.anchors.roots(), Some(state.own.clone()))
    }

    pub fn names(&self) -> &Names {
        &self.config.names
    }

    fn state(&self) -> Arc<State> {
        self.state.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Watches the directory for a new issuer (or anchors) and keeps the
    /// controller's own certificate fresh. A change that does not validate
    /// is logged and counted; the last good issuer stays in effect.
    pub async fn watch(self: Arc<Self>, every: Duration) {
        loop {
            tokio::time::sleep(every).await;
            let current = self.state();
            let stamp = stamp(&self.config.dir);
            let own_expiring = current.own.not_after().is_none_or(|t| {
                t.duration_since(SystemTime::now()).unwrap_or_default() < self.config.lifetime * 3 / 10
            });
            if stamp == current.stamp && !own_expiring {
                continue;
            }
            match load_state(&self.config, &self.own_key) {
                Ok(state) => {
                    if stamp != current.stamp {
                        tracing::info!(dir = %self.config.dir.display(), "loaded a new issuer");
                    }
                    self.metrics.issuer_loaded(state.issuer.not_after());
                    *self.state.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(state);
                }
                Err(error) => {
                    // Try again only when the files change again.
                    tracing::error!(
                        dir = %self.config.dir.display(), %error,
                        "the identity directory changed but does not hold a valid issuer; keeping the last one"
                    );
                    self.metrics.issuer_reload_failed();
                    let mut kept = self.state.write().unwrap_or_else(|p| p.into_inner());
                    *kept = Arc::new(State {
                        anchors: current.anchors.clone(),
                        issuer: current.issuer.clone(),
                        stamp,
                        own: current.own.clone(),
                        tls: current.tls.clone(),
                    });
                }
            }
        }
    }

    async fn certify(&self, req: CertifyRequest) -> Result<CertifyResponse, Status> {
        let names = &self.config.names;
        let Some((ns, sa)) = names.parse(&req.identity) else {
            return Err(Status::invalid_argument(format!(
                "{:?} is not a workload identity of this mesh (want <sa>.<ns>.serviceaccount.identity.{}.{})",
                req.identity, names.control_plane_ns, names.trust_domain
            )));
        };
        let (token_ns, token_sa) = self.tokens.validate(&req.token).await?;
        if (token_ns.as_str(), token_sa.as_str()) != (ns, sa) {
            return Err(Status::permission_denied(format!(
                "the token proves {}, not {}",
                names.workload(&token_ns, &token_sa),
                req.identity
            )));
        }
        let state = self.state();
        let now = SystemTime::now();
        let leaf = state
            .issuer
            .sign_csr(
                &req.certificate_signing_request,
                &req.identity,
                self.config.lifetime,
                self.config.clock_skew,
                now,
            )
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        tracing::info!(identity = %req.identity, "issued a certificate");
        Ok(CertifyResponse {
            leaf_certificate: leaf.cert.to_vec(),
            intermediate_certificates: leaf.chain.iter().map(|c| c.to_vec()).collect(),
            valid_until: Some(leaf.not_after.into()),
        })
    }
}

/// The service tonic serves.
#[derive(Clone)]
pub struct IdentityService(pub Arc<Ca>);

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn certify(&self, req: Request<CertifyRequest>) -> Result<Response<CertifyResponse>, Status> {
        let result = self.0.certify(req.into_inner()).await;
        self.0.metrics.certify(match &result {
            Ok(_) => "ok",
            Err(status) => match status.code() {
                tonic::Code::Unauthenticated => "unauthenticated",
                tonic::Code::PermissionDenied => "permission_denied",
                tonic::Code::InvalidArgument => "invalid_argument",
                _ => "error",
            },
        });
        if let Err(status) = &result {
            tracing::info!(code = ?status.code(), reason = status.message(), "refused a certificate");
        }
        result.map(Response::new)
    }
}

fn load_state(config: &CaConfig, own_key: &LocalKey) -> Result<State, CaError> {
    let stamp = stamp(&config.dir);
    let now = SystemTime::now();
    let anchors = TrustAnchors::read(&config.dir.join(ANCHOR_CERT))?;
    let issuer = Issuer::read(&config.dir, &anchors, now)?;
    let names = &config.names;
    let own_names = [names.destination_service(), names.identity_service(), names.tap_service()];
    let own = Arc::new(Credentials::new(own_names[0].clone(), anchors.roots(), own_key));
    let leaf = issuer.issue(
        &[own_names[0].as_str(), own_names[1].as_str(), own_names[2].as_str()],
        own_key.public_key(),
        config.lifetime,
        config.clock_skew,
        now,
    )?;
    own.install(&leaf, now).map_err(CaError::NotChained)?;
    let tls = weft_identity::tls::server_config(own.clone());
    Ok(State { anchors, issuer: Arc::new(issuer), stamp, own, tls })
}

fn stamp(dir: &Path) -> Stamp {
    [ANCHOR_CERT, ISSUER_CERT, ISSUER_KEY]
        .iter()
        .map(|f| {
            let meta = std::fs::metadata(dir.join(f)).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}
