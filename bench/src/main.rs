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
mod haproxy;
mod load;
mod mtls;
mod targets;

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
    /// Seconds of load per measured point and round.
    #[arg(long, default_value_t = 4)]
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
    /// HAProxy, to measure beside weft-proxy (default: `haproxy` on PATH).
    #[arg(long)]
    haproxy: Option<PathBuf>,
    /// linkerd2-proxy, driven by weft's controller exactly as weft-proxy is
    /// (never downloaded or built here).
    #[arg(long, env = "LINKERD2_PROXY_BIN")]
    linkerd2_proxy: Option<PathBuf>,
    /// Rounds per point: every contender (and direct) is measured once per
    /// round, interleaved, and each figure is the median over the rounds of
    /// that round's value (added latency: the contender's minus direct's in
    /// the same round), so one noisy moment on a shared machine moves no
    /// figure.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// A short run for development: 1,000 req/s only, 2 s per point, one round.
    #[arg(long)]
    quick: bool,
    /// Measure only these contenders (e.g. `--only weft` while profiling).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Skip the closed-loop maximum-throughput runs (when counting
    /// instructions per request under valgrind, for instance).
    #[arg(long)]
    no_max_throughput: bool,
    /// Where the JSON results go.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
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
    let mut args = Args::parse();
    let proxy_bin = match args.proxy.take() {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("weft-proxy"),
    };
    if !proxy_bin.exists() {
        bail!("{} not found: build it with `cargo build --release -p weft-proxy`", proxy_bin.display());
    }
    let Some(net) = Net::for_test("weft-bench") else {
        bail!(
            "weft-bench runs its pods as network namespaces behind iptables: run it as root, \
             with `ip` (iproute2) and `iptables` installed (bench/run installs them)"
        );
    };
    if args.quick {
        args.seconds = 2;
        args.rates = vec![1000];
        args.rounds = 1;
    }
    let rounds = args.rounds.max(1);
    let duration = Duration::from_secs(args.seconds);

    let direct = path(&net, "direct", |_, _| None);
    let env = [("LINKERD2_PROXY_LOG", "warn")];
    let mut meshed = vec![path(&net, "weft", |pod, _| Some(pod.start_proxy(&proxy_bin, &env)))];
    let control = mtls::Control::start(&net);
    meshed.push(control.path(&net, &proxy_bin, "weft-mtls", false));
    if !args.quick {
        meshed.push(control.path(&net, &proxy_bin, "weft-authz", true));
    }
    if let Some(linkerd) = &args.linkerd2_proxy {
        meshed.push(control.path(&net, linkerd, "linkerd2-proxy-mtls", false));
    }
    match &args.envoy {
        Some(envoy) => {
            let config = envoy::sidecar_config();
            meshed.push(path(&net, "envoy", |pod, _| Some(pod.start_envoy(envoy, &config))));
            // And with mutual TLS between the pair, from the same CA.
            let (client, server) = (control.tls_files("envoy-client")?, control.tls_files("envoy-server")?);
            let (client_name, server_name) =
                (control.identity("envoy-client"), control.identity("envoy-server"));
            meshed.push(path(&net, "envoy-mtls", |pod, peer| {
                let config = match peer {
                    Some(_) => envoy::mtls_config(&client, true, &server_name),
                    None => envoy::mtls_config(&server, false, &client_name),
                };
                Some(pod.start_envoy(envoy, &config))
            }));
        }
        None => println!("(Envoy not measured: pass --envoy PATH, or let bench/run install it)"),
    }
    let haproxy = args.haproxy.clone().or_else(|| which("haproxy"));
    match &haproxy {
        Some(bin) => {
            meshed.push(path(&net, "haproxy", |pod, peer| {
                let config = match peer {
                    Some(server) => haproxy::client_config(server, None),
                    None => haproxy::server_config(None),
                };
                Some(pod.start_haproxy(bin, &config))
            }));
            // And with mutual TLS between the pair, from the same CA.
            let (client, server) =
                (control.tls_files("haproxy-client")?, control.tls_files("haproxy-server")?);
            let (client_name, server_name) =
                (control.identity("haproxy-client"), control.identity("haproxy-server"));
            meshed.push(path(&net, "haproxy-mtls", |pod, peer| {
                let config = match peer {
                    Some(ip) => haproxy::client_config(ip, Some((&client, &server_name))),
                    None => haproxy::server_config(Some((&server, &client_name))),
                };
                Some(pod.start_haproxy(bin, &config))
            }));
        }
        None => println!("(HAProxy not measured: install Debian's haproxy, or pass --haproxy PATH)"),
    }
    if !args.only.is_empty() {
        meshed.retain(|p| args.only.iter().any(|o| o == p.name));
    }
    let mut results = Results::default();
    let mut failed: Vec<&str> = Vec::new();

    println!(
        "weft-bench: HTTP/1.1 GET of 1 KiB over {} connections, gRPC unary over one HTTP/2 connection \
         ({} streams); open loop, {}s per point; each sidecar on one core; added = sidecar pair minus direct; \
         each figure the median of {rounds} interleaved round(s)",
        args.connections, args.connections, args.seconds
    );
    println!();
    println!(
        "{:<22} {:>7} {:>9} {:>9} {:>9} {:>9} {:>11} {:>11} {:>11}",
        "scenario", "req/s", "p50 ms", "p99 ms", "p999 ms", "max ms", "+p50 ms", "+p99 ms", "+p999 ms"
    );

    let mut cpu_rows = Vec::new();
    let mut points_measured: Vec<targets::Point> = Vec::new();
    let mut points: Vec<(Protocol, u32)> =
        args.rates.iter().filter(|&&r| r > 0).map(|&r| (Protocol::Http1, r)).collect();
    if args.grpc_rate > 0 {
        points.push((Protocol::Grpc, args.grpc_rate));
    }
    for (protocol, rate) in points {
        let load = Load { protocol, rate: Some(rate), duration, connections: args.connections };
        // Per round: direct, then every contender, so drift hits all alike.
        let mut direct_rounds = Vec::new();
        let mut rounds_of: Vec<Vec<Figures>> = meshed.iter().map(|_| Vec::new()).collect();
        for round in 0..rounds {
            let base = run(&direct, &load)?;
            // Every other round runs the contenders in reverse, so that no
            // contender always runs closest to direct's measurement (or right
            // after the heaviest peer).
            let mut order: Vec<usize> = (0..meshed.len()).collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for i in order {
                let (path, of) = (&meshed[i], &mut rounds_of[i]);
                if failed.contains(&path.name) {
                    continue;
                }
                let before = cpu(path);
                // A contender that cannot carry the load is reported and left
                // out; the others are still measured.
                let report = match run(path, &load) {
                    Ok(report) => report,
                    Err(error) => {
                        println!(
                            "{:<22} FAILED, left out of the run: {error:#}",
                            format!("{} {}", protocol.name(), path.name)
                        );
                        failed.push(path.name);
                        continue;
                    }
                };
                let after = cpu(path);
                let per_10k = |d: Duration| d.as_secs_f64() * 10_000.0 / report.completed.max(1) as f64;
                let cpu_pair =
                    (per_10k(after.0.saturating_sub(before.0)), per_10k(after.1.saturating_sub(before.1)));
                of.push(Figures::of(&report, Some(&base), Some(cpu_pair)));
            }
            direct_rounds.push(Figures::of(&base, None, None));
        }
        let base = Figures::median(&direct_rounds);
        print_row(&format!("{} direct", protocol.name()), &base);
        if base.rps < rate as f64 * 0.95 {
            println!(
                "  ! the load generator reached only {:.0} of {rate} req/s direct: this row measures it, not the proxies",
                base.rps
            );
        }
        results.push(protocol.name(), rate, "direct", &base);
        // Each contender's added p99 beside weft's doing the same job:
        // plaintext beside weft, mutual TLS beside weft-mtls.
        let mut weft_added_p99: Vec<(&str, f64)> = Vec::new();
        for (path, of) in meshed.iter().zip(&rounds_of) {
            if of.is_empty() || failed.contains(&path.name) {
                continue;
            }
            let figures = Figures::median(of);
            print_row(&format!("{} {}", protocol.name(), path.name), &figures);
            let added_p99 = figures.added.map_or(0.0, |a| a[1]);
            let against = targets::weft_doing_the_same_job(path.name);
            if path.name == "weft" || path.name == "weft-mtls" {
                weft_added_p99.push((path.name, added_p99));
            } else {
                // A ratio only means something when both added a measurable
                // amount (50 µs) over direct.
                match weft_added_p99.iter().find(|(name, _)| *name == against) {
                    Some((_, weft)) if *weft > 0.05 && added_p99 > 0.05 => {
                        println!("{:<22} added p99 is {:.1}x {against}'s", "", added_p99 / weft)
                    }
                    Some(_) => println!("{:<22} added p99 too close to direct's to compare", ""),
                    None => {}
                }
            }
            if let Some((client, server)) = figures.cpu {
                cpu_rows.push((format!("{} {} @ {rate}/s", path.name, protocol.name()), client, server));
            }
            results.push(protocol.name(), rate, path.name, &figures);
        }
        let contenders = meshed.iter().zip(rounds_of).filter(|(p, _)| !failed.contains(&p.name));
        points_measured.push((protocol, rate, contenders.map(|(p, of)| (p.name, of)).collect()));
    }

    println!();
    let load = Load { protocol: Protocol::Http1, rate: None, duration, connections: args.connections };
    if !args.no_max_throughput {
        let base = run(&direct, &load)?;
        println!("max throughput, HTTP/1.1: direct {:.0} req/s", base.throughput());
        results.throughput.push(("direct".into(), base.throughput()));
        for path in meshed.iter().filter(|p| !failed.contains(&p.name)) {
            let report = run(path, &load)?;
            results.throughput.push((path.name.into(), report.throughput()));
            println!(
                "max throughput, HTTP/1.1: through {} {:.0} req/s ({:.0}% of direct)",
                path.name,
                report.throughput(),
                100.0 * report.throughput() / base.throughput()
            );
        }
    }

    println!();
    println!("{:<28} {:>22} {:>22}", "CPU per 10k requests", "client sidecar s", "server sidecar s");
    for (name, client, server) in &cpu_rows {
        println!("{name:<28} {client:>22.3} {server:>22.3}");
    }
    println!();
    if let Some(mtls) = meshed.iter().find(|p| p.name == "weft-mtls") {
        let (rate, per_core) = control.handshakes(mtls, duration.min(Duration::from_secs(5)))?;
        results.handshakes = Some((rate, per_core));
        println!(
            "mesh-TLS handshakes (full, ECDSA P-256, client certificate) with the server sidecar: \
             {rate:.0}/s from 4 clients, {per_core:.0} per second of the sidecar's CPU"
        );
    }
    println!();
    for path in &meshed {
        let (client, server) = path.proxies.as_ref().expect("a meshed path has sidecars");
        results.rss_mb.push((
            path.name.into(),
            client.peak_rss_kib() as f64 / 1024.0,
            server.peak_rss_kib() as f64 / 1024.0,
        ));
        println!(
            "peak RSS, {}: client sidecar {:.1} MB, server sidecar {:.1} MB",
            path.name,
            client.peak_rss_kib() as f64 / 1024.0,
            server.peak_rss_kib() as f64 / 1024.0
        );
    }
    println!();
    let targets = targets::judge(&points_measured, &results.rss_mb);
    targets::print(&targets);
    results.targets = targets;
    std::fs::create_dir_all(&args.out)?;
    let json = args.out.join("results.json");
    std::fs::write(&json, serde_json::to_string_pretty(&results.to_json())?)?;
    println!();
    println!("results: {}", json.display());
    Ok(())
}

/// Everything measured, for `results.json` (and the plot made from it).
#[derive(Default)]
struct Results {
    rows: Vec<serde_json::Value>,
    throughput: Vec<(String, f64)>,
    rss_mb: Vec<(String, f64, f64)>,
    handshakes: Option<(f64, f64)>,
    targets: Vec<targets::Verdict>,
}

impl Results {
    fn push(&mut self, protocol: &str, rate: u32, contender: &str, f: &Figures) {
        self.rows.push(serde_json::json!({
            "protocol": protocol, "rate": rate, "contender": contender,
            "achieved_rps": f.rps, "errors": f.errors,
            "p50_ms": f.ms[0], "p99_ms": f.ms[1], "p999_ms": f.ms[2], "max_ms": f.ms[3],
            "added_p50_ms": f.added.map(|a| a[0]), "added_p99_ms": f.added.map(|a| a[1]),
            "added_p999_ms": f.added.map(|a| a[2]),
            "cpu_s_per_10k": f.cpu.map(|(c, s)| serde_json::json!({"client": c, "server": s})),
        }));
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "rows": self.rows,
            "max_throughput_rps": self.throughput.iter().map(|(n, t)| serde_json::json!({"contender": n, "rps": t})).collect::<Vec<_>>(),
            "peak_rss_mb": self.rss_mb.iter().map(|(n, c, s)| serde_json::json!({"contender": n, "client": c, "server": s})).collect::<Vec<_>>(),
            "mtls_handshakes": self.handshakes.map(|(rate, per_core)| serde_json::json!({"per_second": rate, "per_cpu_second": per_core})),
            "targets": self.targets.iter().map(targets::Verdict::to_json).collect::<Vec<_>>(),
        })
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| PathBuf::from(d).join(program))
        .find(|p| p.exists())
}

/// A client/server pair; `sidecar` starts each side's sidecar, told the
/// server's address when it is the client's.
fn path(
    net: &Net,
    name: &'static str,
    sidecar: impl Fn(&Pod, Option<std::net::Ipv4Addr>) -> Option<ProxyProcess>,
) -> Path {
    let client = net.pod(&format!("{name}-client"));
    let server = net.pod(&format!("{name}-server"));
    let (_, http) = apps::http(server.listen(8080));
    server.spawn(http);
    let (_, grpc) = apps::grpc(server.listen(50051));
    server.spawn(grpc);
    let proxies = sidecar(&client, Some(server.ip())).zip(sidecar(&server, None));
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

/// One point's figures, from one round or the median of several.
#[derive(Clone, Copy)]
struct Figures {
    rps: f64,
    errors: u64,
    /// p50, p99, p999 and max, in milliseconds.
    ms: [f64; 4],
    /// p50, p99 and p999 over direct's in the same round.
    added: Option<[f64; 3]>,
    /// Client and server sidecar CPU seconds per 10,000 requests.
    cpu: Option<(f64, f64)>,
}

impl Figures {
    fn of(r: &Report, base: Option<&Report>, cpu: Option<(f64, f64)>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        let qs = [0.5, 0.99, 0.999];
        Figures {
            rps: r.throughput(),
            errors: r.errors,
            ms: [ms(r.quantile(0.5)), ms(r.quantile(0.99)), ms(r.quantile(0.999)), ms(r.max())],
            added: base.map(|b| qs.map(|q| ms(r.quantile(q)) - ms(b.quantile(q)))),
            cpu,
        }
    }

    /// Each figure's median over the rounds (errors: their sum).
    fn median(rounds: &[Figures]) -> Figures {
        fn median(mut v: Vec<f64>) -> f64 {
            v.sort_by(f64::total_cmp);
            let n = v.len();
            if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
        }
        let of = |f: &dyn Fn(&Figures) -> f64| median(rounds.iter().map(f).collect());
        Figures {
            rps: of(&|r| r.rps),
            errors: rounds.iter().map(|r| r.errors).sum(),
            ms: [0, 1, 2, 3].map(|i| of(&|r| r.ms[i])),
            added: rounds[0].added.map(|_| [0, 1, 2].map(|i| of(&|r| r.added.map_or(0.0, |a| a[i])))),
            cpu: rounds[0]
                .cpu
                .map(|_| (of(&|r| r.cpu.map_or(0.0, |c| c.0)), of(&|r| r.cpu.map_or(0.0, |c| c.1)))),
        }
    }
}

fn print_row(name: &str, r: &Figures) {
    let added = |i: usize| r.added.map(|a| format!("{:+.3}", a[i])).unwrap_or_default();
    println!(
        "{:<22} {:>7.0} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>11} {:>11} {:>11}",
        name,
        r.rps,
        r.ms[0],
        r.ms[1],
        r.ms[2],
        r.ms[3],
        added(0),
        added(1),
        added(2)
    );
    if r.errors > 0 {
        println!("{:<22} {} requests failed", "", r.errors);
    }
}
