//! `weft viz prometheus-config`: a Prometheus scrape configuration for the
//! proxies, with the labels Linkerd's dashboards and `weft controller
//! --prometheus-url` expect (`namespace`, `pod`, `deployment`), and for the
//! controller itself.

use crate::observe::api;
use std::{fmt::Write, net::SocketAddr};

#[derive(clap::Subcommand)]
pub enum Viz {
    /// Print a Prometheus configuration that scrapes every proxy: the
    /// meshed pods the controller sees now (local mode), or, with
    /// --kubernetes, every pod's proxy admin port by service discovery.
    PrometheusConfig(PrometheusArgs),
}

#[derive(clap::Args)]
pub struct PrometheusArgs {
    /// The controller's admin address (asked for its proxies, and scraped).
    #[arg(long, env = "WEFT_CONTROLLER_ADMIN", default_value = "127.0.0.1:9990")]
    admin: SocketAddr,
    /// Discover proxies with Kubernetes' pod service discovery (the
    /// `linkerd-proxy` container's `linkerd-admin` port), as Linkerd's
    /// Prometheus does.
    #[arg(long)]
    kubernetes: bool,
    /// How often Prometheus scrapes.
    #[arg(long, default_value = "10s")]
    interval: String,
}

pub fn run(command: Viz) -> anyhow::Result<()> {
    let Viz::PrometheusConfig(args) = command;
    let mut out = format!(
        "# Written by `weft viz prometheus-config`. Each proxy's series carry\n\
         # namespace, pod and deployment labels, as Linkerd's Prometheus adds them:\n\
         # Linkerd's Grafana dashboards (and weft's, in grafana/) read them, and\n\
         # `weft controller --prometheus-url` reads them instead of scraping.\n\
         global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n\
         scrape_configs:\n",
        interval = args.interval
    );
    if args.kubernetes {
        out += KUBERNETES;
    } else {
        let proxies = api(args.admin, "/api/proxies")?;
        out += "- job_name: weft-proxy\n  metrics_path: /metrics\n  static_configs:\n";
        for p in proxies.as_array().into_iter().flatten() {
            let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
            writeln!(
                out,
                "  - targets: [\"{}\"]\n    labels: {{ namespace: \"{}\", pod: \"{}\", deployment: \"{}\" }}",
                s("admin"),
                s("namespace"),
                s("pod"),
                s("workload")
            )?;
        }
        if proxies.as_array().is_none_or(|p| p.is_empty()) {
            out += "  []  # the controller sees no meshed proxy yet\n";
        }
    }
    writeln!(out, "- job_name: weft-controller\n  static_configs:\n  - targets: [\"{}\"]", args.admin)?;
    print!("{out}");
    Ok(())
}

const KUBERNETES: &str = r#"- job_name: weft-proxy
  kubernetes_sd_configs:
  - role: pod
  relabel_configs:
  - source_labels: [__meta_kubernetes_pod_container_name, __meta_kubernetes_pod_container_port_name]
    action: keep
    regex: ^linkerd-proxy;linkerd-admin$
  - source_labels: [__meta_kubernetes_namespace]
    action: replace
    target_label: namespace
  - source_labels: [__meta_kubernetes_pod_name]
    action: replace
    target_label: pod
  - source_labels: [__meta_kubernetes_pod_label_app_kubernetes_io_name, __meta_kubernetes_pod_label_app]
    action: replace
    regex: ;?([^;]+);?.*
    target_label: deployment
  - action: labelmap
    regex: __meta_kubernetes_pod_label_linkerd_io_proxy_(.+)
"#;
