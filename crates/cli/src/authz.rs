//! `weft authz` and `weft diagnostics policy`: the authorizations that
//! apply to a workload, as the controller computes them.

use anyhow::Context;
use linkerd2_proxy_api::inbound::{PortSpec, inbound_server_policies_client::InboundServerPoliciesClient};
use std::path::PathBuf;
use weft_controller::{
    inbound::{InboundConfig, policy_for},
    policy_view::{ports, render, rows, server_name},
};
use weft_store::{DirSource, Index, Kind as ResourceKind};

#[derive(clap::Args)]
pub struct AuthzArgs {
    /// The store directory (local mode), as `weft controller --store`.
    #[arg(long, env = "WEFT_STORE")]
    store: PathBuf,
    #[arg(long, short = 'n', default_value = "default")]
    namespace: String,
    /// The pod (or `externalworkload/NAME`).
    workload: String,
    /// The cluster-wide default policy, as the controller has it.
    #[arg(long, default_value = "all-unauthenticated")]
    default_inbound_policy: String,
}

#[derive(clap::Subcommand)]
pub enum Diagnostics {
    /// A pod's proxy metrics (the controller says where its admin is).
    ProxyMetrics {
        #[arg(short = 'n', long, default_value = "default")]
        namespace: String,
        pod: String,
        /// The controller's admin address.
        #[arg(long, env = "WEFT_CONTROLLER_ADMIN", default_value = "127.0.0.1:9990")]
        admin: std::net::SocketAddr,
    },
    /// A service's endpoints, as the controller's Destination API streams
    /// them to proxies.
    Endpoints {
        /// `name.ns.svc.cluster.local:port`, or a cluster IP and port.
        authority: String,
        /// The controller's gRPC address.
        #[arg(long, default_value = "127.0.0.1:8086")]
        controller: String,
    },
    /// The policy a workload's port gets, straight from the controller.
    Policy {
        /// The controller's gRPC address.
        #[arg(long, default_value = "127.0.0.1:8086")]
        controller: String,
        /// The workload as its proxy names it (`ns:pod`).
        #[arg(long)]
        workload: String,
        #[arg(long)]
        port: u16,
    },
}

/// `weft authz`: each port of the workload (its containers' and those its
/// Servers name) with the server, routes and authorizations that apply.
pub fn authz(args: AuthzArgs) -> anyhow::Result<()> {
    let index = std::sync::Mutex::new(Index::new(weft_store::Config::default()));
    let mut source = DirSource::new(&args.store);
    source.scan(&index).with_context(|| format!("reading --store {}", args.store.display()))?;
    for (path, error) in source.errors() {
        eprintln!("weft authz: {} was not loaded: {error}", path.display());
    }
    let index = index.into_inner().unwrap_or_else(|p| p.into_inner());
    let (name, external) = match args.workload.strip_prefix("externalworkload/") {
        Some(name) => (name.to_string(), true),
        None => (args.workload.trim_start_matches("pod/").to_string(), false),
    };
    let kind = if external { ResourceKind::ExternalWorkload } else { ResourceKind::Pod };
    let key = weft_store::Key { kind, namespace: args.namespace.clone(), name: name.clone() };
    let Some(workload) = index.get(&key) else {
        anyhow::bail!(
            "{} {}/{name} is not in the store",
            if external { "ExternalWorkload" } else { "Pod" },
            args.namespace
        );
    };
    let config = InboundConfig { default_policy: args.default_inbound_policy.clone(), ..Default::default() };
    let workload_name = if external {
        format!(r#"{{"ns":"{}","external_workload":"{name}"}}"#, args.namespace)
    } else {
        format!("{}:{name}", args.namespace)
    };
    println!("{:<7} {:<28} {:<24} AUTHORIZATION", "PORT", "SERVER", "ROUTE");
    for port in ports(&index, workload) {
        let server = policy_for(&index, &config, &workload_name, port)
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        for (route, authzs) in rows(&server) {
            let authzs = if authzs.is_empty() { "(none: denied)".to_string() } else { authzs.join(", ") };
            println!("{port:<7} {:<28} {route:<24} {authzs}", server_name(&server));
        }
    }
    Ok(())
}

/// `weft diagnostics policy`.
pub fn diagnostics(command: Diagnostics) -> anyhow::Result<()> {
    let (controller, workload, port) = match command {
        Diagnostics::Policy { controller, workload, port } => (controller, workload, port),
        Diagnostics::ProxyMetrics { namespace, pod, admin } => return proxy_metrics(admin, &namespace, &pod),
        Diagnostics::Endpoints { authority, controller } => return endpoints(&controller, &authority),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let server = runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{controller}"))?
            .connect_timeout(std::time::Duration::from_secs(3))
            .connect()
            .await
            .with_context(|| format!("connecting to the controller at {controller}"))?;
        let mut client = InboundServerPoliciesClient::new(channel);
        let rsp = client
            .get_port(PortSpec { workload: workload.clone(), port: port.into() })
            .await
            .map_err(|s| anyhow::anyhow!("the controller refused: {}", s.message()))?;
        anyhow::Ok(rsp.into_inner())
    })?;
    print!("{}", render(&server));
    Ok(())
}

fn proxy_metrics(admin: std::net::SocketAddr, namespace: &str, pod: &str) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let unreachable = || {
            format!("the controller's admin server at {admin} did not answer: is `weft controller` running?")
        };
        let (_, body) = crate::http_get(admin, "/api/proxies").await.with_context(unreachable)?;
        let proxies: serde_json::Value =
            serde_json::from_str(&body).context("the controller did not answer JSON")?;
        let Some(proxy) =
            proxies.as_array().into_iter().flatten().find(|p| p["namespace"] == namespace && p["pod"] == pod)
        else {
            anyhow::bail!("the controller sees no meshed pod {namespace}/{pod}");
        };
        let addr: std::net::SocketAddr = proxy["admin"].as_str().unwrap_or_default().parse()?;
        let (status, metrics) = crate::http_get(addr, "/metrics")
            .await
            .with_context(|| format!("{namespace}/{pod}'s proxy admin at {addr}"))?;
        anyhow::ensure!(status == 200, "{addr}/metrics answered {status}");
        print!("{metrics}");
        Ok(())
    })
}

fn endpoints(controller: &str, authority: &str) -> anyhow::Result<()> {
    use linkerd2_proxy_api::destination::{GetDestination, destination_client::DestinationClient, update};
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{controller}"))?
            .connect_timeout(std::time::Duration::from_secs(3))
            .connect()
            .await
            .with_context(|| format!("connecting to the controller at {controller}"))?;
        let req = GetDestination { scheme: "k8s".into(), path: authority.into(), ..Default::default() };
        let mut stream = DestinationClient::new(channel)
            .get(req)
            .await
            .map_err(|s| anyhow::anyhow!("the controller refused: {}", s.message()))?
            .into_inner();
        let first = tokio::time::timeout(std::time::Duration::from_secs(5), stream.message())
            .await
            .context("no answer in 5s")??
            .context("the controller ended the stream")?;
        println!("{:<24} {:<7} {:<64} LABELS", "ENDPOINT", "WEIGHT", "IDENTITY");
        match first.update {
            Some(update::Update::Add(set)) => {
                for a in set.addrs {
                    let addr = a
                        .addr
                        .and_then(|a| std::net::SocketAddr::try_from(a).ok())
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    let id = a
                        .tls_identity
                        .and_then(|t| t.server_name)
                        .map(|n| n.name)
                        .unwrap_or_else(|| "-".into());
                    let mut labels: Vec<String> =
                        a.metric_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    labels.sort();
                    println!("{addr:<24} {:<7} {id:<64} {}", a.weight, labels.join(","));
                }
            }
            Some(update::Update::NoEndpoints(_)) => println!("(no endpoints)"),
            _ => println!("(no endpoints yet)"),
        }
        Ok(())
    })
}
