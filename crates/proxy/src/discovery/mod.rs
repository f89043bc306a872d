//! Outbound discovery: for each target the application connects to, the
//! controller's outbound policy says whether it is a service and which
//! endpoints to balance over (`OutboundPolicies/Watch`, then
//! `Destination/Get`). Answers are cached per target and dropped when a
//! target has been idle for `LINKERD2_PROXY_OUTBOUND_DISCOVERY_IDLE_TIMEOUT`.
//!
//! The controller is never on the data path's critical path: while it is
//! away, targets keep what they last knew, and a target it never answered
//! for is forwarded to its original destination.

pub mod balance;
pub(crate) mod proto;

use self::balance::Balancer;
use crate::control::{self, Backoff, ControlTls};
use linkerd2_proxy_api::{
    destination::{GetDestination, destination_client::DestinationClient, update},
    outbound::{TrafficSpec, traffic_spec},
};
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};
use tokio::sync::watch;
use tonic::transport::Channel;
use weft_api::client::OutboundPoliciesClient;

/// How long a new connection waits for the controller's first answer about
/// its target before going to the original destination.
const FIRST_ANSWER: Duration = Duration::from_secs(1);

pub struct Discovery {
    policy: OutboundPoliciesClient<Channel>,
    dst: DestinationClient<Channel>,
    workload: String,
    idle_timeout: Duration,
    targets: Mutex<HashMap<TargetKey, Arc<Target>>>,
    balancers: Mutex<HashMap<String, Weak<Balancer>>>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum TargetKey {
    Addr(SocketAddr),
    Authority(String),
}

struct Target {
    resolution: watch::Receiver<Resolution>,
    last_used: Mutex<Instant>,
    task: tokio::task::AbortHandle,
}

/// What the proxy does with connections to a target.
#[derive(Clone)]
pub enum Resolution {
    /// No answer yet.
    Pending,
    /// Not a service (or no answer): the original destination.
    Forward,
    Service(Arc<ServiceRoute>),
}

/// A service's route: where requests go and how.
pub struct ServiceRoute {
    /// The discovery name, `name.ns.svc.cluster.local:port`.
    pub name: String,
    pub opaque: bool,
    pub balancer: Arc<Balancer>,
    /// How long a request may wait for an endpoint before failing.
    pub failfast: Duration,
    /// HTTP and gRPC routes; `None` for opaque services.
    pub router: Option<crate::traffic::Router>,
}

/// What a policy says, before it is bound to a balancer.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct PolicySpec {
    pub name: String,
    pub opaque: bool,
    pub failfast: Duration,
    pub default_rtt: Duration,
    pub decay: Duration,
}

// === impl Discovery ===

impl Discovery {
    /// A discovery client for the controller at `policy_addr` and
    /// `dst_addr` (`host:port`); connections are made lazily and remade
    /// with backoff.
    pub fn new(
        dst: (&str, Option<ControlTls>),
        policy: (&str, Option<ControlTls>),
        workload: String,
        idle_timeout: Duration,
        connect_timeout: Duration,
    ) -> Result<Arc<Self>, tonic::transport::Error> {
        let discovery = Arc::new(Self {
            policy: OutboundPoliciesClient::new(control::channel(policy.0, policy.1, connect_timeout)?),
            dst: DestinationClient::new(control::channel(dst.0, dst.1, connect_timeout)?),
            workload,
            idle_timeout,
            targets: Mutex::new(HashMap::new()),
            balancers: Mutex::new(HashMap::new()),
        });
        tokio::spawn(Self::sweep(Arc::downgrade(&discovery), idle_timeout));
        Ok(discovery)
    }

    /// What to do with a connection to `key`: waits (briefly) for the
    /// controller's first answer about a target it has not seen.
    pub async fn resolve(self: &Arc<Self>, key: TargetKey) -> Resolution {
        let mut rx = {
            let mut targets = self.targets.lock().expect("targets lock");
            let target = targets.entry(key.clone()).or_insert_with(|| self.watch_target(key));
            *target.last_used.lock().expect("last_used lock") = Instant::now();
            target.resolution.clone()
        };
        let answered =
            tokio::time::timeout(FIRST_ANSWER, rx.wait_for(|r| !matches!(r, Resolution::Pending))).await;
        match answered {
            Ok(Ok(resolution)) => resolution.clone(),
            _ => Resolution::Forward,
        }
    }

    fn watch_target(self: &Arc<Self>, key: TargetKey) -> Arc<Target> {
        let (tx, rx) = watch::channel(Resolution::Pending);
        let this = self.clone();
        let task = tokio::spawn(async move { this.policy_loop(key, tx).await }).abort_handle();
        Arc::new(Target { resolution: rx, last_used: Mutex::new(Instant::now()), task })
    }

    async fn policy_loop(self: Arc<Self>, key: TargetKey, tx: watch::Sender<Resolution>) {
        let target = match &key {
            TargetKey::Addr(addr) => traffic_spec::Target::Addr((*addr).into()),
            TargetKey::Authority(a) => traffic_spec::Target::Authority(a.clone()),
        };
        let spec = TrafficSpec { source_workload: self.workload.clone(), target: Some(target) };
        let mut backoff = Backoff::default();
        loop {
            let mut client = self.policy.clone();
            match client.watch(spec.clone()).await {
                Ok(rsp) => {
                    let mut stream = rsp.into_inner();
                    loop {
                        match stream.message().await {
                            Ok(Some(policy)) => {
                                backoff.reset();
                                let resolution = match self.route(&policy) {
                                    Ok(route) => Resolution::Service(route),
                                    Err(error) => {
                                        tracing::warn!(?key, %error, "unusable outbound policy; forwarding");
                                        Resolution::Forward
                                    }
                                };
                                tx.send_replace(resolution);
                            }
                            Ok(None) => break,
                            Err(status) => {
                                tracing::debug!(?key, %status, "outbound policy stream ended");
                                break;
                            }
                        }
                    }
                }
                Err(status) if status.code() == tonic::Code::NotFound => {
                    tx.send_replace(Resolution::Forward);
                    return;
                }
                Err(status) => {
                    tracing::debug!(?key, %status, "outbound policy unavailable; keeping what is known");
                    // Never block traffic on the controller.
                    tx.send_if_modified(|r| {
                        let pending = matches!(r, Resolution::Pending);
                        if pending {
                            *r = Resolution::Forward;
                        }
                        pending
                    });
                }
            }
            backoff.wait().await;
        }
    }

    /// The route for a policy, sharing one balancer per discovery name.
    fn route(
        self: &Arc<Self>,
        policy: &weft_api::OutboundPolicy,
    ) -> Result<Arc<ServiceRoute>, proto::InvalidPolicy> {
        let spec = proto::policy_spec(policy)?;
        let mut bind =
            |b: &crate::traffic::proto::BackendSpec| self.balancer(&b.name, b.default_rtt, b.decay);
        let router = crate::traffic::proto::router(policy, &mut bind)?;
        let balancer = self.balancer(&spec.name, spec.default_rtt, spec.decay);
        Ok(Arc::new(ServiceRoute {
            name: spec.name,
            opaque: spec.opaque,
            balancer,
            failfast: spec.failfast,
            router,
        }))
    }

    /// The balancer for a discovery name, made (and fed) on first use.
    fn balancer(self: &Arc<Self>, name: &str, default_rtt: Duration, decay: Duration) -> Arc<Balancer> {
        let mut balancers = self.balancers.lock().expect("balancers lock");
        balancers.retain(|_, b| b.strong_count() > 0);
        match balancers.get(name).and_then(Weak::upgrade) {
            Some(b) => b,
            None => {
                let b = Arc::new(Balancer::new(default_rtt, decay));
                balancers.insert(name.to_string(), Arc::downgrade(&b));
                tokio::spawn(self.clone().endpoints_loop(name.to_string(), Arc::downgrade(&b)));
                b
            }
        }
    }

    /// Keeps a balancer's endpoints current until no one uses it.
    async fn endpoints_loop(self: Arc<Self>, name: String, balancer: Weak<Balancer>) {
        let req = GetDestination { scheme: "k8s".into(), path: name.clone(), context_token: String::new() };
        let mut backoff = Backoff::default();
        let mut endpoints: BTreeMap<SocketAddr, balance::EndpointMeta> = BTreeMap::new();
        while balancer.strong_count() > 0 {
            let mut client = self.dst.clone();
            if let Ok(rsp) = client.get(req.clone()).await {
                let mut stream = rsp.into_inner();
                let mut fresh = true;
                loop {
                    let next = tokio::select! {
                        next = stream.message() => next,
                        // Notice when the balancer is dropped even if the
                        // endpoints never change.
                        () = tokio::time::sleep(Duration::from_secs(5)) => {
                            if balancer.strong_count() == 0 { return }
                            continue;
                        }
                    };
                    let Ok(Some(update)) = next else { break };
                    backoff.reset();
                    if std::mem::take(&mut fresh) {
                        // A new stream starts from the whole set.
                        endpoints.clear();
                    }
                    match update.update {
                        Some(update::Update::Add(set)) => {
                            for (addr, meta) in proto::endpoints(set) {
                                endpoints.insert(addr, meta);
                            }
                        }
                        Some(update::Update::Remove(set)) => {
                            for addr in set.addrs.into_iter().filter_map(|a| SocketAddr::try_from(a).ok()) {
                                endpoints.remove(&addr);
                            }
                        }
                        Some(update::Update::NoEndpoints(_)) => endpoints.clear(),
                        None => continue,
                    }
                    let Some(balancer) = balancer.upgrade() else { return };
                    tracing::debug!(%name, endpoints = endpoints.len(), "endpoints updated");
                    balancer.update(endpoints.iter().map(|(a, m)| (*a, m.clone())).collect());
                }
            }
            // The controller went away: keep the endpoints, retry.
            backoff.wait().await;
        }
    }

    /// Drops targets no connection has asked about for the idle timeout.
    async fn sweep(this: Weak<Self>, idle: Duration) {
        let mut tick = tokio::time::interval((idle / 2).max(Duration::from_millis(500)));
        loop {
            tick.tick().await;
            let Some(this) = this.upgrade() else { return };
            let mut targets = this.targets.lock().expect("targets lock");
            targets.retain(|_, t| {
                let keep = t.last_used.lock().map(|l| l.elapsed() < this.idle_timeout).unwrap_or(true);
                if !keep {
                    t.task.abort();
                }
                keep
            });
        }
    }
}
