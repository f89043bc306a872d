//! `weft routes`: per-route golden metrics, as the clients' proxies count
//! them (Linkerd's `outbound_{http,grpc}_route_*` series): for each parent
//! Service and route, requests per second, effective success (requests
//! as the application saw them, after retries), actual success (each
//! attempt a backend answered), retries and latency.

use crate::observe::{Controller, api, encode, print_table};
use serde_json::Value;
use std::time::Duration;
use weft_proxy::config::parse_duration;

#[derive(clap::Args)]
pub struct RoutesArgs {
    /// Whose outbound routes: `deploy/NAME` (a workload's proxies), or
    /// every client in the namespace when left out.
    target: Option<String>,
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// How far back the rates and latencies look.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    window: Duration,
    #[command(flatten)]
    controller: Controller,
}

pub fn routes(args: RoutesArgs) -> anyhow::Result<()> {
    let mut path = format!("/api/routes?window={}", args.window.as_secs().max(1));
    if let Some(ns) = &args.namespace {
        path += &format!("&namespace={}", encode(ns));
    }
    match args.target.as_deref().map(|t| t.split_once('/')) {
        None => {}
        Some(Some(("deploy" | "deployment" | "workload", name))) => {
            path += &format!("&workload={}", encode(name));
        }
        Some(_) => {
            anyhow::bail!("{:?}: routes of deploy/NAME, or leave it out", args.target.unwrap_or_default())
        }
    }
    let rows = api(args.controller.admin, &path)?;
    if args.controller.output == "json" {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let rows = rows.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        println!(
            "No route metrics{} in the last {}s: the clients' proxies count routes (outbound_http_route_* and \
             outbound_grpc_route_*) once they send on one.",
            args.namespace.map(|n| format!(" in namespace {n}")).unwrap_or_default(),
            args.window.as_secs()
        );
        return Ok(());
    }
    print_table(&table(&rows, args.controller.output == "wide"));
    Ok(())
}

fn table(rows: &[Value], wide: bool) -> Vec<Vec<String>> {
    let mut header =
        vec!["NAMESPACE", "PARENT", "ROUTE", "RPS", "EFFECTIVE_SUCCESS", "ACTUAL_SUCCESS", "RETRIES"];
    header.extend(["LATENCY_P50", "LATENCY_P95", "LATENCY_P99"]);
    if wide {
        header.insert(3, "PROTOCOL");
    }
    let mut table = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    let pct = |v: &Value| v.as_f64().map_or("-".into(), |v| format!("{:.2}%", v * 100.0));
    let ms = |v: &Value| {
        v.as_f64().map_or("-".into(), |v| if v < 10.0 { format!("{v:.1}ms") } else { format!("{v:.0}ms") })
    };
    for r in rows {
        let s = |k: &str| r[k].as_str().unwrap_or("").to_string();
        let mut row = vec![
            s("parent_namespace"),
            format!("{}:{}", s("parent"), s("parent_port")),
            s("route"),
            format!("{:.1}", r["rps"].as_f64().unwrap_or(0.0)),
            pct(&r["effective_success"]),
            pct(&r["actual_success"]),
            pct(&r["retry_ratio"]),
            ms(&r["latency_p50_ms"]),
            ms(&r["latency_p95_ms"]),
            ms(&r["latency_p99_ms"]),
        ];
        if wide {
            row.insert(3, s("protocol"));
        }
        table.push(row);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_reads_like_weft_stat() {
        let row = serde_json::json!({
            "protocol": "http", "parent_namespace": "demo", "parent": "service/voting", "parent_port": "8080",
            "route_namespace": "demo", "route": "httproute/vote", "requests": 100.0, "rps": 10.0,
            "effective_success": 0.9, "actual_success": 0.8461538, "retry_ratio": 0.3,
            "latency_p50_ms": 5.55, "latency_p95_ms": 55.0, "latency_p99_ms": null, "window_secs": 10.0
        });
        let t = table(std::slice::from_ref(&row), false);
        assert_eq!(
            t[1],
            [
                "demo",
                "service/voting:8080",
                "httproute/vote",
                "10.0",
                "90.00%",
                "84.62%",
                "30.00%",
                "5.5ms",
                "55ms",
                "-"
            ]
        );
        assert_eq!(table(&[row], true)[1][3], "http");
    }
}
