//! weft-bench: what weft-proxy adds to a request.
//!
//! Pairs of pods (network namespaces) on one bridge: one pair talks
//! directly, the others through a client-side and a server-side sidecar
//! with proxy-init's iptables redirection: weft-proxy in plaintext,
//! weft-proxy with mesh TLS (certified by a controller in a pod of its
//! own, the server reached through a service), the same with three
//! authorization policies on the server's ports, and Envoy. The same
//! open-loop load runs against each, and the table shows the difference:
//! added latency at fixed rates, maximum throughput, each proxy's memory
//! and CPU, and mesh-TLS handshakes per second per core.
//!
//! Needs root (network namespaces). Run it with `bench/run`.

mod envoy;
mod load;
mod mtls;

use anyhow::{Context, bail};
use clap::Parser;
use load::{Load, Protocol, Report};
use std::{net::SocketAddr, path::PathBuf, time::Duration};
use weft_test_support::{Net, Pod, ProxyProcess, apps};

#[derive(Parser)]
#[command(about = "Measures the latency, throughput, memory and CPU weft-proxy adds")]
struct Args {
    /// The weft-proxy binary (default: next to this one).
    #[arg(long)]
    proxy: Option<PathBuf>,
    /// An Envoy binary, to measure it beside weft-proxy in the same run.
    #[arg(long)]
    envoy: Option<PathBuf>,
    /// Seconds of load per measured point.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Fixed request rates for HTTP/1.1 (requests per second; 0 for none).
    #[arg(long, value_delimiter = ',', default_value = "500,1000,2000,5000")]
    rates: Vec<u32>,
    /// Fixed request rate for gRPC (0 for none).
    #[arg(long, default_value_t = 1000)]
    grpc_rate: u32,
    /// Concurrent connections (HTTP/1.1) or streams (gRPC).
    #[arg(long, default_value_t = 8)]
    connections: usize,
}

/// One path through the network: a client pod and a server pod, with or
/// without proxies.
struct Path {
    name: &'static str,
    /// The client's and the server's sidecar, if any.
    proxies: Option<(ProxyProcess, ProxyProcess)>,
    client: Pod,
    server: Pod,
    /// Where the client sends HTTP/1.1 and gRPC: the server pod, or a
    /// service in front of it.
    http: SocketAddr,
    grpc: SocketAddr,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let proxy_bin = match args.proxy {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("weft-proxy"),
    };
    if !proxy_bin.exists() {
        bail!("{} not found: build it with `cargo build --release -p weft-proxy`", proxy_bin.display());
    }
    let Some(net) = Net::for_test("weft-bench") else {
        bail!("weft-bench needs root: it runs pods as network namespaces");
    };
    let duration = Duration::from_secs(args.seconds);

    let direct = path(&net, "direct", |_| None);
    let env = [("LINKERD2_PROXY_LOG", "warn")];
    let mut meshed = vec![path(&net, "weft", |pod| Some(pod.start_proxy(&proxy_bin, &env)))];
    let control = mtls::Control::start(&net);
    meshed.push(control.path(&net, &proxy_bin, false));
    meshed.push(control.path(&net, &proxy_bin, true));
    match &args.envoy {
        Some(envoy) => {
            let config = envoy::sidecar_config();
            meshed.push(path(&net, "envoy", |pod| Some(pod.start_envoy(envoy, &config))));
        }
        None => println!("(Envoy not measured: pass --envoy PATH, or let bench/run install it)"),
    }

    println!(
        "weft-bench: HTTP/1.1 GET of 1 KiB over {} connections, gRPC unary over one HTTP/2 connection \
         ({} streams); open loop, {}s per point; each sidecar on one core; added = sidecar pair minus direct",
        args.connections, args.connections, args.seconds
    );
    println!();
    println!(
        "{:<22} {:>7} {:>9} {:>9} {:>9} {:>11} {:>11} {:>11}",
        "scenario", "req/s", "p50 ms", "p99 ms", "p999 ms", "+p50 ms", "+p99 ms", "+p999 ms"
    );

    let mut cpu_rows = Vec::new();
    let mut points: Vec<(Protocol, u32)> =
        args.rates.iter().filter(|&&r| r > 0).map(|&r| (Protocol::Http1, r)).collect();
    if args.grpc_rate > 0 {
        points.push((Protocol::Grpc, args.grpc_rate));
    }
    for (protocol, rate) in points {
        let load = Load { protocol, rate: Some(rate), duration, connections: args.connections };
        let base = run(&direct, &load)?;
        print_row(&format!("{} direct", protocol.name()), &base, None);
        for path in &meshed {
            let before = cpu(path);
            let report = run(path, &load)?;
            let after = cpu(path);
            let per_10k = |d: Duration| d.as_secs_f64() * 10_000.0 / report.completed.max(1) as f64;
            cpu_rows.push((
                format!("{} {} @ {rate}/s", path.name, protocol.name()),
                per_10k(after.0 - before.0),
                per_10k(after.1 - before.1),
            ));
            print_row(&format!("{} {}", protocol.name(), path.name), &report, Some(&base));
        }
    }

    println!();
    let load = Load { protocol: Protocol::Http1, rate: None, duration, connections: args.connections };
    let base = run(&direct, &load)?;
    println!("max throughput, HTTP/1.1: direct {:.0} req/s", base.throughput());
    for path in &meshed {
        let report = run(path, &load)?;
        println!(
            "max throughput, HTTP/1.1: through {} {:.0} req/s ({:.0}% of direct)",
            path.name,
            report.throughput(),
            100.0 * report.throughput() / base.throughput()
        );
    }

    println!();
    println!("{:<28} {:>22} {:>22}", "CPU per 10k requests", "client sidecar s", "server sidecar s");
    for (name, client, server) in &cpu_rows {
        println!("{name:<28} {client:>22.3} {server:>22.3}");
    }
    println!();
    let mtls = meshed.iter().find(|p| p.name == "weft-mtls").expect("the mTLS path");
    let (rate, per_core) = control.handshakes(mtls, duration.min(Duration::from_secs(5)))?;
    println!(
        "mesh-TLS handshakes (full, ECDSA P-256, client certificate) with the server sidecar: \
         {rate:.0}/s from 4 clients, {per_core:.0} per second of the sidecar's CPU"
    );
    println!();
    for path in &meshed {
        let (client, server) = path.proxies.as_ref().expect("a meshed path has sidecars");
        println!(
            "peak RSS, {}: client sidecar {:.1} MB, server sidecar {:.1} MB",
            path.name,
            client.peak_rss_kib() as f64 / 1024.0,
            server.peak_rss_kib() as f64 / 1024.0
        );
    }
    Ok(())
}

fn path(net: &Net, name: &'static str, sidecar: impl Fn(&Pod) -> Option<ProxyProcess>) -> Path {
    let client = net.pod(&format!("{name}-client"));
    let server = net.pod(&format!("{name}-server"));
    let (_, http) = apps::http(server.listen(8080));
    server.spawn(http);
    let (_, grpc) = apps::grpc(server.listen(50051));
    server.spawn(grpc);
    let proxies = sidecar(&client).zip(sidecar(&server));
    Path {
        name,
        proxies,
        http: (server.ip(), 8080).into(),
        grpc: (server.ip(), 50051).into(),
        client,
        server,
    }
}

fn run(path: &Path, load: &Load) -> anyhow::Result<Report> {
    let target = match load.protocol {
        Protocol::Http1 => path.http,
        Protocol::Grpc => path.grpc,
    };
    let load = load.clone();
    let report = path.client.block_on(async move { load.run(target).await });
    report.with_context(|| format!("load on the {} path", path.name))
}

fn cpu(path: &Path) -> (Duration, Duration) {
    let (client, server) = path.proxies.as_ref().expect("a meshed path has sidecars");
    (client.cpu_time(), server.cpu_time())
}

fn print_row(name: &str, r: &Report, base: Option<&Report>) {
    let ms = |us: u64| us as f64 / 1000.0;
    let added = |q: f64| match base {
        Some(b) => format!("{:+.3}", ms(r.quantile(q)) - ms(b.quantile(q))),
        None => String::new(),
    };
    println!(
        "{:<22} {:>7.0} {:>9.3} {:>9.3} {:>9.3} {:>11} {:>11} {:>11}",
        name,
        r.throughput(),
        ms(r.quantile(0.5)),
        ms(r.quantile(0.99)),
        ms(r.quantile(0.999)),
        added(0.5),
        added(0.99),
        added(0.999)
    );
    if r.errors > 0 {
        println!("{:<22} {} requests failed", "", r.errors);
    }
}
