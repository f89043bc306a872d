//! `weft check`, `weft stat` and `weft edges`: what the controller sees of
//! the mesh (it scrapes every meshed proxy), as tables or JSON.

use anyhow::{Context, bail};
use serde_json::Value;
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};
use weft_proxy::config::parse_duration;

#[derive(clap::Args, Clone)]
pub struct Controller {
    /// The controller's admin address.
    #[arg(long, env = "WEFT_CONTROLLER_ADMIN", default_value = "127.0.0.1:9990")]
    pub(crate) admin: SocketAddr,
    /// Output: table (default), wide, or json.
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "wide", "json"])]
    pub(crate) output: String,
}

#[derive(clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    controller: Controller,
    /// Retry until every check passes, for up to this long.
    #[arg(long, value_parser = parse_duration)]
    wait: Option<Duration>,
}

#[derive(clap::Args)]
pub struct StatArgs {
    /// What to group by: deploy (workloads), pod, or svc (services, by the
    /// authority their clients asked for).
    #[arg(default_value = "deploy", value_parser = ["deploy", "deployment", "pod", "po", "svc", "service"])]
    resource: String,
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// How far back the rates and latencies look.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    window: Duration,
    #[command(flatten)]
    controller: Controller,
}

#[derive(clap::Args)]
pub struct EdgesArgs {
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    #[command(flatten)]
    controller: Controller,
}

fn fetch(admin: SocketAddr, path: &str) -> anyhow::Result<String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (status, body) = runtime.block_on(crate::http_get(admin, path)).with_context(|| {
        format!(
            "the controller's admin server at {admin} did not answer: is `weft controller` (or `weft demo`) running? \
             (--admin or WEFT_CONTROLLER_ADMIN point elsewhere)"
        )
    })?;
    if status != 200 {
        bail!("{admin}{path} answered {status}: {}", body.trim());
    }
    Ok(body)
}

pub(crate) fn api(admin: SocketAddr, path: &str) -> anyhow::Result<Value> {
    serde_json::from_str(&fetch(admin, path)?).with_context(|| format!("{admin}{path} did not answer JSON"))
}

fn colour(code: &str, text: &str) -> String {
    // SAFETY: isatty has no preconditions.
    if unsafe { libc::isatty(1) } == 1 { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_string() }
}

/// One check's outcome.
struct Check {
    name: String,
    ok: bool,
    /// A warning does not fail the run.
    warn: bool,
    hint: Option<String>,
}

/// That the controller answers, then what it checks itself (`/api/check`:
/// the store, identity and the proxies; the dashboard's Health page shows
/// the same).
fn checks(admin: SocketAddr) -> Vec<Check> {
    let reached = format!("the controller answers at {admin}");
    let list = match api(admin, "/api/check") {
        Ok(Value::Array(list)) => list,
        Ok(other) => {
            return vec![Check {
                name: reached,
                ok: false,
                warn: false,
                hint: Some(format!("/api/check: {other}")),
            }];
        }
        Err(e) => return vec![Check { name: reached, ok: false, warn: false, hint: Some(format!("{e:#}")) }],
    };
    let mut out = vec![Check { name: reached, ok: true, warn: false, hint: None }];
    out.extend(list.iter().map(|c| Check {
        name: c["check"].as_str().unwrap_or_default().to_string(),
        ok: c["ok"] == true,
        warn: c["warning"] == true,
        hint: c["hint"].as_str().map(str::to_string),
    }));
    out
}

pub fn check(args: CheckArgs) -> anyhow::Result<()> {
    let admin = args.controller.admin;
    let deadline = args.wait.map(|w| Instant::now() + w);
    let results = loop {
        let results = checks(admin);
        let failing = results.iter().filter(|c| !c.ok && !c.warn).count();
        match deadline {
            Some(d) if failing > 0 && Instant::now() < d => {
                eprint!("\rwaiting for {failing} of {} checks to pass...", results.len());
                std::thread::sleep(Duration::from_millis(500));
            }
            _ => {
                if deadline.is_some() {
                    eprint!("\r{:60}\r", "");
                }
                break results;
            }
        }
    };
    let failed = results.iter().any(|c| !c.ok && !c.warn);
    if args.controller.output == "json" {
        let list: Vec<Value> = results
            .iter()
            .map(|c| serde_json::json!({"check": c.name, "ok": c.ok, "warning": c.warn, "hint": c.hint}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        for c in &results {
            let mark = match (c.ok, c.warn) {
                (true, _) => colour("32", "√"),
                (false, true) => colour("33", "‼"),
                (false, false) => colour("31", "×"),
            };
            println!("{mark} {}", c.name);
            if let Some(hint) = &c.hint {
                println!("    {hint}");
            }
        }
        println!();
        println!("Status check results are {}", if failed { colour("31", "×") } else { colour("32", "√") });
    }
    if failed {
        std::process::exit(1);
    }
    Ok(())
}

pub fn stat(args: StatArgs) -> anyhow::Result<()> {
    let by = match args.resource.as_str() {
        "pod" | "po" => "pod",
        "svc" | "service" => "svc",
        _ => "deploy",
    };
    let mut path = format!("/api/stat?by={by}&window={}", args.window.as_secs().max(1));
    if let Some(ns) = &args.namespace {
        path += &format!("&namespace={ns}");
    }
    let rows = api(args.controller.admin, &path)?;
    if args.controller.output == "json" {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let rows = rows.as_array().cloned().unwrap_or_default();
    let wide = args.controller.output == "wide";
    let header =
        ["NAME", "MESHED", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99", "TCP_CONN"];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    if args.namespace.is_none() || wide {
        table[0].insert(0, "NAMESPACE".into());
    }
    let ms = |v: &Value| {
        v.as_f64().map_or("-".into(), |v| if v < 10.0 { format!("{v:.1}ms") } else { format!("{v:.0}ms") })
    };
    for r in &rows {
        let mut row = vec![
            r["name"].as_str().unwrap_or("").to_string(),
            r["meshed"].as_str().unwrap_or("").to_string(),
            r["success_rate"].as_f64().map_or("-".into(), |s| format!("{:.2}%", s * 100.0)),
            format!("{:.1}", r["rps"].as_f64().unwrap_or(0.0)),
            ms(&r["latency_p50_ms"]),
            ms(&r["latency_p95_ms"]),
            ms(&r["latency_p99_ms"]),
            format!("{}", r["tcp_connections"].as_f64().unwrap_or(0.0)),
        ];
        if args.namespace.is_none() || wide {
            row.insert(0, r["namespace"].as_str().unwrap_or("").to_string());
        }
        table.push(row);
    }
    if rows.is_empty() {
        println!(
            "No meshed resources found{}.",
            args.namespace.map(|n| format!(" in namespace {n}")).unwrap_or_default()
        );
        return Ok(());
    }
    print_table(&table);
    Ok(())
}

pub fn edges(args: EdgesArgs) -> anyhow::Result<()> {
    let mut path = "/api/edges".to_string();
    if let Some(ns) = &args.namespace {
        path += &format!("?namespace={ns}");
    }
    let edges = api(args.controller.admin, &path)?;
    if args.controller.output == "json" {
        println!("{}", serde_json::to_string_pretty(&edges)?);
        return Ok(());
    }
    let wide = args.controller.output == "wide";
    let mut table =
        vec![["SRC", "DST", "SRC_NS", "DST_NS", "SECURED"].iter().map(|s| s.to_string()).collect::<Vec<_>>()];
    if wide {
        table[0].extend(["CLIENT_ID".to_string(), "SERVER_ID".to_string()]);
    }
    for e in edges.as_array().into_iter().flatten() {
        let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
        let secured =
            if e["secured"] == Value::Bool(true) { colour("32", "√") } else { colour("31", "×") };
        let mut row = vec![s("src"), s("dst"), s("src_namespace"), s("dst_namespace"), secured];
        if wide {
            row.extend([s("client_id"), s("server_id")]);
        }
        table.push(row);
    }
    if table.len() == 1 {
        println!("No edges found yet (the controller scrapes the proxies every 2s).");
        return Ok(());
    }
    print_table(&table);
    Ok(())
}

/// Aligned columns, two spaces apart (widths by characters, so that
/// colour codes and symbols do not skew them).
pub(crate) fn print_table(rows: &[Vec<String>]) {
    let visible = |s: &str| {
        let mut n = 0;
        let mut in_escape = false;
        for c in s.chars() {
            match (in_escape, c) {
                (false, '\x1b') => in_escape = true,
                (true, 'm') => in_escape = false,
                (true, _) => {}
                (false, _) => n += 1,
            }
        }
        n
    };
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| rows.iter().filter_map(|r| r.get(i)).map(|c| visible(c)).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c}{}", " ".repeat(widths[i].saturating_sub(visible(c)))))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

#[derive(clap::Args)]
pub struct TapArgs {
    /// What to tap: `deploy/NAME` (a workload, by its app label),
    /// `pod/NAME`, or `ns` for the whole namespace.
    target: String,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Only requests with this method.
    #[arg(long)]
    method: Option<String>,
    /// Only requests whose path starts with this.
    #[arg(long)]
    path: Option<String>,
    /// Only requests for this authority.
    #[arg(long)]
    authority: Option<String>,
    /// Stop after this many requests per proxy (0: until interrupted).
    #[arg(long, default_value_t = 0)]
    max: u32,
    #[command(flatten)]
    controller: Controller,
}

/// Percent-encodes a query value.
pub(crate) fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' | b':' => {
                (b as char).to_string()
            }
            b => format!("%{b:02X}"),
        })
        .collect()
}

pub fn tap(args: TapArgs) -> anyhow::Result<()> {
    let mut query = tap_query(&args.namespace, &args.target)?;
    for (k, v) in [("method", &args.method), ("path", &args.path), ("authority", &args.authority)] {
        if let Some(v) = v {
            query += &format!("&{k}={}", encode(v));
        }
    }
    if args.max > 0 {
        query += &format!("&limit={}", args.max);
    }
    let json = args.controller.output == "json";
    stream_tap(args.controller.admin, &query, |line| {
        let text = if json {
            line.to_string()
        } else if let Ok(event) = serde_json::from_str::<Value>(line) {
            tap_text(&event)
        } else {
            return true;
        };
        use std::io::Write;
        // A reader that went away (`| head`) ends the tap.
        writeln!(std::io::stdout(), "{text}").is_ok()
    })
}

/// The tap query for a target (`deploy/NAME`, `pod/NAME`, `ns`) and filters.
fn tap_query(namespace: &str, target: &str) -> anyhow::Result<String> {
    let mut query = format!("namespace={}", encode(namespace));
    match target.split_once('/') {
        Some(("deploy" | "deployment" | "workload", name)) => query += &format!("&workload={}", encode(name)),
        Some(("pod" | "po", name)) => query += &format!("&pod={}", encode(name)),
        None if target == "ns" || target == "namespace" => {}
        _ => bail!("{target:?}: tap deploy/NAME, pod/NAME, or ns"),
    }
    Ok(query)
}

/// Streams `/api/tap?query` from the controller, a JSON line at a time,
/// until `on_line` says stop or the controller ends the stream. Errors the
/// controller reports (`error: ...` lines) go to stderr.
fn stream_tap(admin: SocketAddr, query: &str, mut on_line: impl FnMut(&str) -> bool) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        use http_body_util::BodyExt;
        let sock = tokio::net::TcpStream::connect(admin).await.with_context(|| {
            format!("the controller's admin server at {admin} did not answer: is `weft controller` (or `weft demo`) running?")
        })?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(sock)).await?;
        tokio::spawn(conn);
        let req = http::Request::get(format!("/api/tap?{query}"))
            .header(http::header::HOST, admin.to_string())
            .body(http_body_util::Empty::<bytes::Bytes>::new())?;
        let rsp = send.send_request(req).await?;
        let status = rsp.status();
        let mut body = rsp.into_body();
        if !status.is_success() {
            let text = body.collect().await?.to_bytes();
            bail!("the controller refused the tap ({status}): {}", String::from_utf8_lossy(&text).trim());
        }
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else { continue };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
                if let Some(error) = line.strip_prefix("error: ") {
                    eprintln!("weft: {error}");
                } else if !on_line(&line) {
                    return anyhow::Ok(());
                }
            }
        }
        anyhow::Ok(())
    })
}

/// One tap event, as Linkerd's `tap` prints it.
fn tap_text(e: &Value) -> String {
    let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
    let mut tls = format!("tls={}", s("tls"));
    if let Some(id) = e["client_id"].as_str() {
        tls += &format!(" client_id={id}");
    }
    if let Some(id) = e["server_id"].as_str() {
        tls += &format!(" server_id={id}");
    }
    let head = format!(
        "id={} proxy={:<3} src={} dst={} {tls}",
        s("id"),
        s("direction"),
        s("source"),
        s("destination")
    );
    if s("event") == "request" {
        format!("req {head} :method={} :authority={} :path={}", s("method"), s("authority"), s("path"))
    } else if s("event") == "end" {
        let how = match (e["grpc_status"].as_u64(), e["reset"].as_bool()) {
            (Some(code), _) => format!("grpc-status={code}"),
            (None, Some(true)) => "reset".to_string(),
            _ => "ok".to_string(),
        };
        let duration =
            e["latency_ms"].as_f64().map_or(String::new(), |l| format!(" duration={:.0}µs", l * 1000.0));
        format!("end {head} {how}{duration} response-length={}B", e["bytes"].as_u64().unwrap_or(0))
    } else {
        let latency =
            e["latency_ms"].as_f64().map_or(String::new(), |l| format!(" latency={:.0}µs", l * 1000.0));
        format!("rsp {head} :status={}{latency}", e["status"])
    }
}

#[derive(clap::Args)]
pub struct TopArgs {
    /// What to watch: `deploy/NAME`, `pod/NAME`, or `ns`.
    target: String,
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// How often the table is redrawn.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    interval: Duration,
    /// Stop after this long (default: until interrupted).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Rows shown (the busiest paths).
    #[arg(long, default_value_t = 20)]
    rows: usize,
    #[command(flatten)]
    controller: Controller,
}

/// One path's running figures.
#[derive(Default)]
struct PathStats {
    count: u64,
    success: u64,
    best: f64,
    worst: f64,
    last: f64,
}

/// `weft top`: the busiest paths through the selected proxies, from a
/// tap, redrawn every interval.
pub fn top(args: TopArgs) -> anyhow::Result<()> {
    let query = tap_query(&args.namespace, &args.target)?;
    let started = Instant::now();
    let mut last_draw = Instant::now();
    type Request = (String, String, String, String);
    let mut requests: std::collections::HashMap<String, Request> = Default::default();
    // Responses seen, waiting for their end: (failed by status, latency, request).
    let mut statuses: std::collections::HashMap<String, (bool, f64, Request)> = Default::default();
    let mut paths: std::collections::BTreeMap<(String, String, String, String), PathStats> =
        Default::default();
    // SAFETY: isatty has no preconditions.
    let terminal = unsafe { libc::isatty(1) } == 1;
    let draw = |paths: &std::collections::BTreeMap<(String, String, String, String), PathStats>| {
        let mut rows: Vec<_> = paths.iter().collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1.count));
        let mut table = vec![
            ["SOURCE", "DESTINATION", "METHOD", "PATH", "COUNT", "BEST", "WORST", "LAST", "SUCCESS_RATE"]
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        ];
        for ((src, dst, method, path), s) in rows.into_iter().take(args.rows) {
            let ms = |v: f64| if v < 10.0 { format!("{v:.1}ms") } else { format!("{v:.0}ms") };
            table.push(vec![
                src.clone(),
                dst.clone(),
                method.clone(),
                path.clone(),
                s.count.to_string(),
                ms(s.best),
                ms(s.worst),
                ms(s.last),
                format!("{:.2}%", 100.0 * s.success as f64 / s.count.max(1) as f64),
            ]);
        }
        if terminal {
            print!("\x1b[2J\x1b[H");
        }
        print_table(&table);
        println!();
    };
    stream_tap(args.controller.admin, &query, |line| {
        let Ok(e) = serde_json::from_str::<Value>(line) else { return true };
        let s = |k: &str| e[k].as_str().unwrap_or("").to_string();
        let key = format!("{}/{}", s("pod"), s("id"));
        if s("event") == "request" {
            // Inbound, the source is the client; outbound, the server.
            let (src, dst) = if s("direction") == "in" {
                (short_id(e["client_id"].as_str()).unwrap_or_else(|| s("source")), s("pod"))
            } else {
                (s("pod"), short_id(e["server_id"].as_str()).unwrap_or_else(|| s("destination")))
            };
            requests.insert(key, (src, dst, s("method"), s("path")));
        } else if s("event") == "response" {
            // The status; success is judged at the end (gRPC status).
            if let Some(entry) = requests.get(&key) {
                let failed = e["status"].as_u64().is_none_or(|s| s >= 500);
                statuses
                    .insert(key.clone(), (failed, e["latency_ms"].as_f64().unwrap_or(0.0), entry.clone()));
            }
        } else if let (Some(_), Some((failed, latency, request))) =
            (requests.remove(&key), statuses.remove(&key))
        {
            let ok = !failed && e["grpc_status"].as_u64().is_none_or(|c| c == 0) && e["reset"] != true;
            let stats = paths.entry(request).or_default();
            stats.best = if stats.count == 0 { latency } else { stats.best.min(latency) };
            stats.worst = stats.worst.max(latency);
            stats.last = latency;
            stats.count += 1;
            stats.success += u64::from(ok);
        }
        if last_draw.elapsed() >= args.interval {
            draw(&paths);
            last_draw = Instant::now();
        }
        args.duration.is_none_or(|d| started.elapsed() < d)
    })?;
    draw(&paths);
    Ok(())
}

/// `web.demo.serviceaccount.identity...` as `web.demo`.
fn short_id(id: Option<&str>) -> Option<String> {
    let id = id?;
    Some(id.split_once(".serviceaccount.").map_or(id, |(w, _)| w).to_string())
}
