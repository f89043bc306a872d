//! Each inbound port's policy, watched from the controller
//! (`InboundServerPolicies/WatchPort`) from the first connection on that
//! port. Until the controller answers (1 s at most for the first
//! connection), and whenever there is no controller, the proxy's default
//! policy (`LINKERD2_PROXY_INBOUND_DEFAULT_POLICY`) applies; once it has
//! answered, its last answer stays while it is away.

use super::ServerPolicy;
use crate::control::Backoff;
use linkerd2_proxy_api::inbound::{PortSpec, inbound_server_policies_client::InboundServerPoliciesClient};
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::sync::watch;
use tonic::transport::Channel;

const FIRST_ANSWER: Duration = Duration::from_secs(1);

pub struct Policies {
    client: Option<(InboundServerPoliciesClient<Channel>, String)>,
    default: Arc<ServerPolicy>,
    ports: Mutex<HashMap<u16, watch::Receiver<Option<Arc<ServerPolicy>>>>>,
}

/// A port's policy as it is now; cheap to read per request.
#[derive(Clone)]
pub struct PortPolicy {
    rx: watch::Receiver<Option<Arc<ServerPolicy>>>,
    default: Arc<ServerPolicy>,
}

impl PortPolicy {
    pub fn current(&self) -> Arc<ServerPolicy> {
        self.rx.borrow().clone().unwrap_or_else(|| self.default.clone())
    }
}

impl Policies {
    /// With `client` (a channel and this workload's name), policies come
    /// from the controller; without, every port gets `default`.
    pub fn new(client: Option<(Channel, String)>, default: ServerPolicy) -> Arc<Self> {
        Arc::new(Self {
            client: client.map(|(channel, workload)| (InboundServerPoliciesClient::new(channel), workload)),
            default: Arc::new(default),
            ports: Mutex::new(HashMap::new()),
        })
    }

    pub async fn port(&self, port: u16) -> PortPolicy {
        let Some((client, workload)) = &self.client else {
            let (_, rx) = watch::channel(None);
            return PortPolicy { rx, default: self.default.clone() };
        };
        let mut rx = {
            let mut ports = self.ports.lock().expect("ports lock");
            ports
                .entry(port)
                .or_insert_with(|| {
                    let (tx, rx) = watch::channel(None);
                    tokio::spawn(watch_port(client.clone(), workload.clone(), port, tx));
                    rx
                })
                .clone()
        };
        if rx.borrow().is_none() {
            let _ = tokio::time::timeout(FIRST_ANSWER, rx.wait_for(|p| p.is_some())).await;
        }
        PortPolicy { rx, default: self.default.clone() }
    }
}

async fn watch_port(
    mut client: InboundServerPoliciesClient<Channel>,
    workload: String,
    port: u16,
    tx: watch::Sender<Option<Arc<ServerPolicy>>>,
) {
    let mut backoff = Backoff::default();
    loop {
        let spec = PortSpec { workload: workload.clone(), port: port.into() };
        match client.watch_port(spec).await {
            Ok(rsp) => {
                let mut stream = rsp.into_inner();
                while let Ok(Some(server)) = stream.message().await {
                    backoff.reset();
                    let policy = super::proto::server_policy(server);
                    tracing::debug!(port, server = %policy.meta.name, "inbound policy updated");
                    tx.send_replace(Some(Arc::new(policy)));
                }
            }
            Err(status) => {
                tracing::warn!(port, %workload, code = ?status.code(), message = status.message(), "inbound policy unavailable");
            }
        }
        if tx.is_closed() {
            return;
        }
        backoff.wait().await;
    }
}
