//! The proxy's mesh identity: a private key made here (it never leaves the
//! process), a certificate for `LINKERD2_PROXY_IDENTITY_LOCAL_NAME` from the
//! controller's CA, renewed at 70% of its life and swapped in without
//! touching open connections.
//!
//! The proxy is `/ready` only once it has a certificate. While the CA is
//! away it retries with backoff, keeping the certificate it has.

use crate::{
    config::IdentityConfig,
    control::{self, Backoff, ControlTls},
    metrics::Metrics,
};
use linkerd2_proxy_api::identity::{CertifyRequest, identity_client::IdentityClient};
use rustls_pki_types::{CertificateDer, ServerName};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};
use weft_identity::{Credentials, Leaf, tls::LocalKey};

pub struct Identity {
    pub creds: Arc<Credentials>,
    /// Originating mesh TLS: verifies servers against the anchors and
    /// presents this proxy's certificate.
    pub client_tls: Arc<rustls::ClientConfig>,
    /// Terminating mesh TLS on the inbound side.
    pub server_tls: Arc<rustls::ServerConfig>,
    key: LocalKey,
    config: IdentityConfig,
}

#[derive(Debug, thiserror::Error)]
enum CertifyError {
    #[error("reading the token from {path}: {source}")]
    Token { path: String, source: std::io::Error },
    #[error("the identity service refused: {0}")]
    Refused(tonic::Status),
    #[error("the identity service answered with an unusable certificate: {0}")]
    BadCertificate(String),
}

impl Identity {
    pub fn new(config: IdentityConfig) -> Arc<Self> {
        let key = LocalKey::generate();
        let creds = Arc::new(Credentials::new(config.local_name.clone(), config.trust_anchors.roots(), &key));
        let client_tls = weft_identity::tls::client_config(creds.roots(), Some(creds.clone()));
        let server_tls = weft_identity::tls::server_config(creds.clone());
        Arc::new(Self { creds, client_tls, server_tls, key, config })
    }

    pub fn local_name(&self) -> &str {
        &self.config.local_name
    }

    /// How to reach a control-plane service that presents `name`.
    pub fn control_tls(&self, name: &str) -> Option<ControlTls> {
        let name = ServerName::try_from(name.to_string()).ok()?;
        Some(ControlTls { config: self.client_tls.clone(), name })
    }

    /// Gets and renews the certificate for as long as the proxy runs.
    pub async fn run(
        self: Arc<Self>,
        ready: Arc<AtomicBool>,
        metrics: Arc<Metrics>,
        connect_timeout: Duration,
    ) {
        let tls = self.control_tls(&self.config.svc_name).expect("the config checked the name");
        let channel = match control::channel(&self.config.svc_addr, Some(tls), connect_timeout) {
            Ok(channel) => channel,
            Err(error) => {
                tracing::error!(addr = %self.config.svc_addr, %error, "the identity service cannot be reached");
                return;
            }
        };
        let mut client = IdentityClient::new(channel);
        let mut backoff = Backoff::default();
        loop {
            match self.certify(&mut client).await {
                Ok(not_after) => {
                    backoff.reset();
                    metrics.identity_refreshed(not_after);
                    if !ready.swap(true, Ordering::AcqRel) {
                        tracing::info!(identity = %self.config.local_name, "certified; the proxy is ready");
                    }
                    let now = SystemTime::now();
                    let wait = refresh_in(not_after, now, self.config.min_refresh, self.config.max_refresh);
                    tracing::debug!(?wait, "next certificate renewal");
                    tokio::time::sleep(wait).await;
                }
                Err(error) => {
                    tracing::warn!(identity = %self.config.local_name, %error, "certification failed; retrying");
                    backoff.wait().await;
                }
            }
        }
    }

    async fn certify(
        &self,
        client: &mut IdentityClient<tonic::transport::Channel>,
    ) -> Result<SystemTime, CertifyError> {
        let path = &self.config.token_file;
        // Read each time: the token may be rotated on disk. (A small local
        // file, read once a renewal: not worth a blocking-pool hop.)
        let token = std::fs::read(path)
            .map_err(|source| CertifyError::Token { path: path.display().to_string(), source })?;
        let csr = self.key.csr(&self.config.local_name).map_err(CertifyError::BadCertificate)?;
        let request = CertifyRequest {
            identity: self.config.local_name.clone(),
            token,
            certificate_signing_request: csr,
        };
        let mut request = tonic::Request::new(request);
        request.set_timeout(Duration::from_secs(10));
        let rsp = client.certify(request).await.map_err(CertifyError::Refused)?.into_inner();
        let not_after = rsp
            .valid_until
            .and_then(|t| SystemTime::try_from(t).ok())
            .ok_or_else(|| CertifyError::BadCertificate("no valid_until".into()))?;
        let leaf = Leaf {
            cert: CertificateDer::from(rsp.leaf_certificate),
            chain: rsp.intermediate_certificates.into_iter().map(CertificateDer::from).collect(),
            not_after,
        };
        self.creds.install(&leaf, SystemTime::now()).map_err(CertifyError::BadCertificate)?;
        Ok(not_after)
    }
}

/// When to renew: at 70% of the time left, within `[min, max]`.
fn refresh_in(not_after: SystemTime, now: SystemTime, min: Duration, max: Duration) -> Duration {
    let left = not_after.duration_since(now).unwrap_or_default();
    left.mul_f64(0.7).clamp(min, max.max(min))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_seventy_percent_within_bounds() {
        let now = SystemTime::now();
        let min = Duration::from_secs(10);
        let max = Duration::from_secs(86_400);
        let day = now + Duration::from_secs(86_400);
        assert_eq!(refresh_in(day, now, min, max), Duration::from_secs(60_480));
        let minute = now + Duration::from_secs(60);
        assert_eq!(refresh_in(minute, now, min, max), Duration::from_secs(42));
        // Nearly expired, or already: no busy loop.
        assert_eq!(refresh_in(now + Duration::from_secs(2), now, min, max), min);
        assert_eq!(refresh_in(now - Duration::from_secs(5), now, min, max), min);
        let year = now + Duration::from_secs(365 * 86_400);
        assert_eq!(refresh_in(year, now, min, max), max);
    }
}
