//! `weft controller`: the control plane in one process.

use anyhow::{Context, bail};
use std::{net::SocketAddr, path::PathBuf, sync::Arc};
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
    /// The identity trust domain.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
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
        let config = Config { cluster_domain: args.cluster_domain, trust_domain: args.trust_domain };
        let index = Arc::new(std::sync::Mutex::new(Index::new(config)));
        let watcher = if kubernetes {
            // In a pod, the service account's credentials; elsewhere, the
            // kubeconfig, as kubectl finds it.
            let client = kube::Client::try_default().await.context(
                "connecting to the Kubernetes API (in-cluster config, or KUBECONFIG / ~/.kube/config)",
            )?;
            tokio::spawn(weft_store::kube::run(client, index.clone()))
        } else {
            DirSource::new(&dir).watch(index.clone()).context("loading the store")?
        };
        let metrics = weft_controller::Metrics::new();
        let grpc = tokio::net::TcpListener::bind(args.grpc_addr)
            .await
            .with_context(|| format!("listening on --grpc-addr {}", args.grpc_addr))?;
        let admin = tokio::net::TcpListener::bind(args.admin_addr)
            .await
            .with_context(|| format!("listening on --admin-addr {}", args.admin_addr))?;
        tracing::info!(
            store = %dir.display(), grpc = %grpc.local_addr()?, admin = %admin.local_addr()?,
            "weft controller is serving"
        );
        tokio::spawn(weft_controller::serve_admin(admin, index.clone(), metrics.clone()));
        tokio::spawn(weft_controller::serve_grpc(grpc, index, metrics));
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
