//! The controller at scale: thousands of endpoints across a thousand
//! services, a thousand proxies' `Destination/Get` watches open, and how
//! long a change takes to reach a watcher, with the controller's memory.
//!
//! Runs `weft controller --store DIR` as its own process (the `weft` binary
//! next to this one) on a generated store, and edits the store the way an
//! operator would. Needs no root.

use anyhow::{Context, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use linkerd2_proxy_api::destination::{GetDestination, destination_client::DestinationClient, update};
use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};
use tokio::sync::mpsc;

#[derive(Parser)]
#[command(about = "Measures weft controller's update latency and memory at scale")]
struct Args {
    /// The `weft` binary (default: next to this one).
    #[arg(long)]
    weft: Option<PathBuf>,
    #[arg(long, default_value_t = 1000)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    endpoints_per_service: usize,
    /// Store edits to time.
    #[arg(long, default_value_t = 200)]
    changes: usize,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let weft = match args.weft {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("weft"),
    };
    if !weft.exists() {
        bail!("{} not found: build it with `cargo build --release -p weft-cli`", weft.display());
    }
    let dir = std::env::temp_dir().join(format!("weft-bench-controller-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let _cleanup = Cleanup(dir.clone());
    write_store(&dir, args.services, args.endpoints_per_service)?;

    let mut controller = Command::new(&weft)
        .args(["controller", "--store"])
        .arg(&dir)
        .args(["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .env("WEFT_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting weft controller")?;
    let pid = controller.id();
    let mut lines = BufReader::new(controller.stderr.take().expect("piped")).lines();
    let mut controller = KillOnDrop(controller);
    let started = Instant::now();
    let serving = loop {
        let line = lines.next().context("weft controller exited before serving")??;
        if line.contains("weft controller is serving") {
            break line;
        }
    };
    std::thread::spawn(move || for _ in lines.map_while(Result::ok) {});
    let field = |name: &str| -> anyhow::Result<String> {
        let start = serving.find(&format!("{name}=")).context("address in the log")? + name.len() + 1;
        Ok(serving[start..].split_whitespace().next().unwrap_or_default().to_string())
    };
    let (grpc, admin) = (field("grpc")?, field("admin")?);
    let load_time = started.elapsed();

    // A thousand watches, as a thousand proxies would hold them, spread
    // over a few connections.
    let channels: Vec<_> = (0..10)
        .map(|_| tonic::transport::Endpoint::from_shared(format!("http://{grpc}")).map(|e| e.connect_lazy()))
        .collect::<Result<_, _>>()?;
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Instant)>();
    let watch_start = Instant::now();
    for i in 0..args.services {
        let mut client = DestinationClient::new(channels[i % channels.len()].clone());
        let tx = tx.clone();
        tokio::spawn(async move {
            let req =
                GetDestination { path: format!("svc-{i}.scale.svc.cluster.local:80"), ..Default::default() };
            let mut stream = client.get(req).await.expect("watch").into_inner();
            while let Ok(Some(msg)) = stream.message().await {
                if matches!(msg.update, Some(update::Update::Add(_))) {
                    let _ = tx.send((i, Instant::now()));
                }
            }
        });
    }
    let mut initial = 0;
    while initial < args.services {
        let (_, _) =
            tokio::time::timeout(Duration::from_secs(60), rx.recv()).await?.context("watch ended")?;
        initial += 1;
    }
    let watch_time = watch_start.elapsed();

    // Edit the store: each change moves one endpoint of one service.
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for k in 0..args.changes {
        let svc = (k * 7919) % args.services;
        write_pods(&dir, svc, args.endpoints_per_service, k + 1)?;
        let written = Instant::now();
        loop {
            let (i, at) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .context("a change did not reach its watcher within 10 s")?
                .context("watch ended")?;
            if i == svc {
                latency.record(at.duration_since(written).as_micros().max(1) as u64)?;
                break;
            }
        }
    }

    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |field: &str| -> f64 {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0.0)
    };
    let metrics = reqwest_metrics(&admin)
        .await
        .unwrap_or_else(|e| format!("(could not read the controller's metrics at {admin}: {e})"));
    let _ = controller.0.kill();

    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "weft controller at scale: {} services × {} endpoints = {} endpoints, {} Destination/Get watches over {} connections",
        args.services,
        args.endpoints_per_service,
        args.services * args.endpoints_per_service,
        args.services,
        channels.len()
    );
    println!(
        "store loaded and serving in {:.2} s; all watches answered in {:.2} s",
        load_time.as_secs_f64(),
        watch_time.as_secs_f64()
    );
    println!(
        "store edit → watcher has the update, over {} edits: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        args.changes,
        ms(latency.value_at_quantile(0.5)),
        ms(latency.value_at_quantile(0.99)),
        ms(latency.max())
    );
    println!("  (includes the directory watch: inotify, a 25 ms settle window, parsing the edited file)");
    let series = |name: &str| {
        metrics.lines().find(|l| l.starts_with(name)).and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    match (
        series("weft_controller_endpoint_update_latency_seconds_count"),
        series("weft_controller_endpoint_update_latency_seconds_sum"),
        series(r#"weft_controller_endpoint_update_latency_seconds_bucket{le="0.01"}"#),
    ) {
        (Some(count), Some(sum), Some(under_10ms)) if count > 0.0 => println!(
            "  controller side, index publish → update sent: {count} updates, mean {:.2} ms, {:.1}% under 10 ms",
            1000.0 * sum / count,
            100.0 * under_10ms / count
        ),
        _ => {
            println!("  controller side: no update latency reported {}", metrics.lines().next().unwrap_or(""))
        }
    }
    println!(
        "controller memory: RSS {:.1} MB, peak {:.1} MB",
        kib("VmRSS:") / 1024.0,
        kib("VmHWM:") / 1024.0
    );
    Ok(())
}

/// The controller's `/metrics`, with a bare HTTP/1.1 GET.
async fn reqwest_metrics(admin: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(admin).await?;
    sock.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    sock.read_to_string(&mut out).await?;
    Ok(out)
}

fn write_store(dir: &Path, services: usize, per: usize) -> std::io::Result<()> {
    let mut svcs = String::new();
    for i in 0..services {
        svcs.push_str(&format!(
            "---\napiVersion: v1\nkind: Service\nmetadata: {{ name: svc-{i}, namespace: scale }}\nspec:\n  selector: {{ app: svc-{i} }}\n  ports: [{{ port: 80, targetPort: 8080 }}]\n"
        ));
    }
    std::fs::write(dir.join("services.yaml"), svcs)?;
    for i in 0..services {
        write_pods(dir, i, per, 0)?;
    }
    Ok(())
}

/// Service `i`'s pods; `generation` moves the first pod's address.
fn write_pods(dir: &Path, i: usize, per: usize, generation: usize) -> std::io::Result<()> {
    let mut pods = String::new();
    for j in 0..per {
        let last = match (j, generation) {
            (0, 0) => 10,
            (0, g) => 11 + g % 199,
            (j, _) => j + 210,
        };
        let ip = format!("10.{}.{}.{}", i / 250, i % 250, last.min(254));
        pods.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{ name: svc-{i}-{j}, namespace: scale, labels: {{ app: svc-{i}, linkerd.io/control-plane-ns: weft }} }}\nstatus: {{ podIP: {ip} }}\n"
        ));
    }
    // Write then rename, as tools that edit manifests do: the watcher
    // never sees half a file.
    let tmp = dir.join(format!(".pods-{i}.yaml.tmp"));
    std::fs::write(&tmp, pods)?;
    std::fs::rename(tmp, dir.join(format!("pods-{i}.yaml")))
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
