//! `weft controller`: the control plane in one process.

use anyhow::{Context, bail};
use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};
use weft_controller::identity::{Ca, CaConfig, LocalTokens, TokenReviews, TokenValidator};
use weft_identity::{TokenKey, ca::TOKEN_KEY};
use weft_proxy::config::parse_duration;
use weft_store::{Config, DirSource, Index};

#[derive(clap::Args)]
pub struct Args {
    /// Where resources come from: a directory of YAML manifests (local
    /// mode), or `kubernetes`.
    #[arg(long, env = "WEFT_STORE")]
    store: String,
    /// The proxy APIs (Destination, OutboundPolicies), gRPC.
    #[arg(long, env = "WEFT_GRPC_ADDR", default_value = "127.0.0.1:8086")]
    grpc_addr: SocketAddr,
    /// `/metrics` and `/ready`.
    #[arg(long, env = "WEFT_ADMIN_ADDR", default_value = "127.0.0.1:9990")]
    admin_addr: SocketAddr,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    #[command(flatten)]
    names: crate::identity::NameArgs,
    /// Run the identity CA from this directory (`weft identity init`):
    /// proxies get certificates from it, and reach the controller's APIs
    /// over mesh TLS.
    #[arg(long, env = "WEFT_IDENTITY_DIR")]
    identity_dir: Option<PathBuf>,
    /// How long the certificates the CA signs are valid.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    identity_lifetime: Duration,
    /// The policy of inbound ports no Server covers, unless a workload's or
    /// namespace's `config.linkerd.io/default-inbound-policy` says
    /// otherwise: all-unauthenticated, all-authenticated,
    /// cluster-unauthenticated, cluster-authenticated, deny or audit.
    #[arg(long, default_value = "all-unauthenticated", value_parser = parse_default_policy)]
    default_inbound_policy: String,
    /// The networks `cluster-*` policies admit (comma-separated CIDRs).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8",
        value_parser = parse_net
    )]
    cluster_networks: Vec<ipnet::IpNet>,
    /// Read the proxies' metrics from this Prometheus (`http://host:port`,
    /// scraping them with `namespace` and `pod` labels, as
    /// `weft viz prometheus-config` sets up) instead of scraping them.
    #[arg(long, env = "WEFT_PROMETHEUS_URL")]
    prometheus_url: Option<String>,
    /// How far before now certificates are valid from, for clocks behind.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    identity_clock_skew: Duration,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEFT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let kubernetes = args.store == "kubernetes";
    let dir = PathBuf::from(&args.store);
    if !kubernetes && !dir.is_dir() {
        bail!(
            "--store {}: not a directory (give a directory of YAML manifests, or `kubernetes`)",
            dir.display()
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let config =
            Config { cluster_domain: args.cluster_domain, trust_domain: args.names.trust_domain.clone() };
        let index = Arc::new(std::sync::Mutex::new(Index::new(config)));
        let client = if kubernetes {
            // In a pod, the service account's credentials; elsewhere, the
            // kubeconfig, as kubectl finds it.
            Some(kube::Client::try_default().await.context(
                "connecting to the Kubernetes API (in-cluster config, or KUBECONFIG / ~/.kube/config)",
            )?)
        } else {
            None
        };
        let watcher = match &client {
            Some(client) => tokio::spawn(weft_store::kube::run(client.clone(), index.clone())),
            None => DirSource::new(&dir).watch(index.clone()).context("loading the store")?,
        };
        let metrics = weft_controller::Metrics::new();
        let ca = match &args.identity_dir {
            None => None,
            Some(id_dir) => {
                if !id_dir.join(weft_identity::ca::ANCHOR_CERT).exists() {
                    bail!(
                        "--identity-dir {}: no identity there (create one with `weft identity init {}`)",
                        id_dir.display(),
                        id_dir.display()
                    );
                }
                let tokens: Box<dyn TokenValidator> = match client {
                    Some(client) => Box::new(TokenReviews(client)),
                    None => {
                        let path = id_dir.join(TOKEN_KEY);
                        let stored = std::fs::read_to_string(&path)
                            .with_context(|| format!("--identity-dir: reading {}", path.display()))?;
                        Box::new(LocalTokens(
                            TokenKey::from_stored(&stored)
                                .map_err(|e| anyhow::anyhow!("--identity-dir: {}: {e}", path.display()))?,
                        ))
                    }
                };
                let config = CaConfig {
                    dir: id_dir.clone(),
                    names: args.names.names(),
                    lifetime: args.identity_lifetime,
                    clock_skew: args.identity_clock_skew,
                };
                let ca = Ca::load(config, tokens, metrics.clone())
                    .with_context(|| format!("--identity-dir {}", id_dir.display()))?;
                tokio::spawn(ca.clone().watch(Duration::from_secs(2)));
                Some(ca)
            }
        };
        let grpc = tokio::net::TcpListener::bind(args.grpc_addr)
            .await
            .with_context(|| format!("listening on --grpc-addr {}", args.grpc_addr))?;
        let admin = tokio::net::TcpListener::bind(args.admin_addr)
            .await
            .with_context(|| format!("listening on --admin-addr {}", args.admin_addr))?;
        tracing::info!(
            store = %dir.display(), grpc = %grpc.local_addr()?, admin = %admin.local_addr()?,
            identity = args.identity_dir.is_some(),
            "weft controller is serving"
        );
        let inbound = weft_controller::inbound::InboundConfig {
            default_policy: args.default_inbound_policy,
            cluster_networks: args.cluster_networks,
            control_plane_ns: args.names.control_plane_namespace.clone(),
        };
        // The proxies, as `weft stat`, `weft edges`, `weft check` and the
        // dashboard see them.
        let observer = weft_controller::observe::Observer::new(index.clone(), Duration::from_secs(2));
        if let Some(ca) = &ca {
            observer.enable_tap(ca.clone());
        }
        if let Some(url) = args.prometheus_url {
            anyhow::ensure!(url.starts_with("http://"), "--prometheus-url {url}: give an http:// URL");
            observer.use_prometheus(url);
        }
        observer.set_inbound_config(inbound.clone());
        tokio::spawn(observer.clone().run());
        tokio::spawn(weft_controller::serve_admin(admin, index.clone(), metrics.clone(), Some(observer)));
        tokio::spawn(weft_controller::serve_grpc_with(grpc, index, metrics, ca, inbound));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        watcher.abort();
        tracing::info!("weft controller stopped");
        Ok(())
    })
}

fn parse_default_policy(s: &str) -> Result<String, String> {
    let known = weft_store::policy::DEFAULT_POLICIES;
    if known.contains(&s) { Ok(s.to_string()) } else { Err(format!("expected one of {}", known.join(", "))) }
}

fn parse_net(s: &str) -> Result<ipnet::IpNet, String> {
    weft_store::policy::parse_net(s)
}
