//! `weft demo` as a newcomer runs it: up with traffic and mutual TLS
//! between every workload, stopped cleanly by Ctrl-C, and started cleanly
//! again after being killed outright.

use std::{
    process::Command,
    time::{Duration, Instant},
};

mod support;

use support::{Demo, WEFT, alive, metrics, sum};

#[test]
fn the_demo_runs_meshed_and_stops_clean() {
    let dir = std::env::temp_dir().join(format!("weft-demo-test-{}", std::process::id()));
    let mut demo = Demo::start(&dir);
    let pids = demo.pids();
    assert_eq!(pids.len(), 10, "five workloads and their proxies: {pids:?}");

    // Traffic flows, over mutual TLS, and the voting service's failures
    // show as failures at web.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let web = metrics("127.0.77.10:4191");
        let bot = r#"client_id="vote-bot.demo.serviceaccount.identity.weft.cluster.local""#;
        let ok = sum(&web, "response_total{direction=\"inbound\"", &[bot, "classification=\"success\""]);
        let failed = sum(&web, "response_total{direction=\"inbound\"", &[bot, "classification=\"failure\""]);
        let edges = ["emoji", "voting", "leaderboard"].iter().all(|svc| {
            let server =
                format!(r#"tls="true",server_id="{svc}.demo.serviceaccount.identity.weft.cluster.local""#);
            sum(&web, "request_total{direction=\"outbound\"", &[&server]) > 0.0
        });
        if ok > 20.0 && failed > 0.0 && edges {
            break;
        }
        assert!(Instant::now() < deadline, "no meshed traffic with failures after 30s:\n{web}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Nothing web sends goes in plaintext.
    let plaintext =
        sum(&metrics("127.0.77.10:4191"), "request_total{direction=\"outbound\"", &["no_identity"]);
    assert_eq!(plaintext, 0.0);

    // What operators run: everything checks out, stat agrees with the
    // proxies' own counters, and every edge is mutual TLS.
    let check = Command::new(WEFT).args(["check", "--wait", "30s"]).output().unwrap();
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    assert!(String::from_utf8_lossy(&check.stdout).contains("every proxy has a current certificate"));
    let stat = |name: &str| -> serde_json::Value {
        let out = Command::new(WEFT)
            .args(["stat", "-n", "demo", "--window", "60s", "-o", "json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        rows.as_array().unwrap().iter().find(|r| r["name"] == name).cloned().unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let web = loop {
        let web = stat("web");
        if web["requests"].as_f64().unwrap_or(0.0) >= 100.0 {
            break web;
        }
        assert!(Instant::now() < deadline, "weft stat shows no traffic at web: {web}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let counters = metrics("127.0.77.10:4191");
    let ok = sum(&counters, "response_total{direction=\"inbound\"", &["classification=\"success\""]);
    let failed = sum(&counters, "response_total{direction=\"inbound\"", &["classification=\"failure\""]);
    let own_rate = ok / (ok + failed);
    let stat_rate = web["success_rate"].as_f64().unwrap();
    assert!((stat_rate - own_rate).abs() < 0.05, "weft stat says {stat_rate}, web's proxy counts {own_rate}");
    assert!(web["requests"].as_f64().unwrap() <= ok + failed, "stat counted more than the proxy served");
    let rps = web["rps"].as_f64().unwrap();
    assert!((28.0..=52.0).contains(&rps), "the bot sends 40 requests/s; weft stat says {rps}");
    assert!(web["latency_p99_ms"].as_f64().is_some_and(|p| p > 0.0));
    // By service: the voting service fails about 15% of its calls.
    let svc = Command::new(WEFT)
        .args(["stat", "svc", "-n", "demo", "--window", "60s", "-o", "json"])
        .output()
        .unwrap();
    let svc: serde_json::Value = serde_json::from_slice(&svc.stdout).unwrap();
    let voting = svc.as_array().unwrap().iter().find(|r| r["name"] == "voting").cloned().unwrap_or_default();
    let rate = voting["success_rate"].as_f64().unwrap_or(0.0);
    assert!((0.75..0.95).contains(&rate), "voting's success rate by service: {voting}");
    let edges = Command::new(WEFT).args(["edges", "-n", "demo", "-o", "json"]).output().unwrap();
    let edges: serde_json::Value = serde_json::from_slice(&edges.stdout).unwrap();
    let edges = edges.as_array().unwrap();
    let pairs: Vec<(String, String, bool)> = edges
        .iter()
        .map(|e| (e["src"].as_str().unwrap().into(), e["dst"].as_str().unwrap().into(), e["secured"] == true))
        .collect();
    for (src, dst) in [("vote-bot", "web"), ("web", "emoji"), ("web", "voting"), ("web", "leaderboard")] {
        assert!(pairs.contains(&(src.into(), dst.into(), true)), "no mTLS edge {src} -> {dst}: {pairs:?}");
    }
    assert!(pairs.iter().all(|p| p.2), "an edge is not mTLS: {pairs:?}");

    // Live requests, with who sent them and who answered.
    let tap = Command::new(WEFT)
        .args(["tap", "-n", "demo", "deploy/web", "--max", "5", "-o", "json"])
        .output()
        .unwrap();
    assert!(tap.status.success(), "{}", String::from_utf8_lossy(&tap.stderr));
    let events: Vec<serde_json::Value> =
        String::from_utf8_lossy(&tap.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(events.len() >= 5, "{events:?}");
    assert!(
        events.iter().any(|e| e["direction"] == "in"
            && e["client_id"] == "vote-bot.demo.serviceaccount.identity.weft.cluster.local"
            && e["tls"] == "true"),
        "{events:?}"
    );
    assert!(
        events.iter().any(|e| e["direction"] == "out"
            && e["server_id"]
                .as_str()
                .is_some_and(|id| id.ends_with(".demo.serviceaccount.identity.weft.cluster.local"))),
        "{events:?}"
    );
    assert!(events.iter().any(|e| e["event"] == "response" && e["status"].as_u64().is_some()), "{events:?}");
    // Each response's end: its length, and for gRPC its status.
    assert!(events.iter().any(|e| e["event"] == "end" && e["bytes"].as_u64().is_some()), "{events:?}");
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "end" && e["direction"] == "out" && e["grpc_status"].as_u64().is_some()),
        "{events:?}"
    );

    // The busiest paths, live.
    let top = Command::new(WEFT)
        .args(["top", "-n", "demo", "deploy/web", "--duration", "3s", "--interval", "1s"])
        .output()
        .unwrap();
    let top = String::from_utf8_lossy(&top.stdout);
    assert!(top.contains("SOURCE") && top.contains("/vote/") && top.contains("vote-bot.demo"), "{top}");

    // Any program, meshed beside the demo, reaches its services over mTLS.
    let run = Command::new(WEFT)
        .args(["run", "--dir"])
        .arg(&dir)
        .args([
            "--workload",
            "curl-client",
            "--",
            "curl",
            "-sS",
            "http://web.demo.svc.cluster.local:8080/leaderboard",
        ])
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    // (The leaderboard, which never fails: votes may meet the jammed ballot box.)
    assert!(
        String::from_utf8_lossy(&run.stdout).contains(r#""top""#),
        "{}",
        String::from_utf8_lossy(&run.stdout)
    );
    assert!(!dir.join("store/run-curl-client.yaml").exists(), "weft run left its manifest");

    // Traffic management from the store: retries on the jammed ballot box.
    // `weft routes` shows them as a share of traffic, with the success the
    // clients got (effective) beside what the back end answered (actual).
    std::fs::write(dir.join("store/retries.yaml"), RETRIES).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new(WEFT)
            .args(["routes", "-n", "demo", "--window", "10s", "-o", "json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let voting =
            rows.as_array().unwrap().iter().find(|r| r["route"] == "grpcroute/voting-retries").cloned();
        let shows_retries = voting.as_ref().is_some_and(|r| {
            let (effective, actual) = (r["effective_success"].as_f64(), r["actual_success"].as_f64());
            r["retry_ratio"].as_f64().is_some_and(|x| x > 0.0)
                && effective.zip(actual).is_some_and(|(e, a)| e > a && e > 0.97)
        });
        if shows_retries {
            break;
        }
        assert!(Instant::now() < deadline, "weft routes shows no retries on voting: {rows}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Ctrl-C: every process ends.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(demo.child.id() as i32, libc::SIGINT) };
    demo.expect_line("every process it started has exited", Duration::from_secs(20));
    assert!(demo.child.wait().unwrap().success());
    let left: Vec<_> = pids.iter().filter(|p| alive(**p)).collect();
    assert!(left.is_empty(), "still running after Ctrl-C: {left:?}");
    drop(demo);

    // Killed outright: its children go with it, and the next start is clean.
    let mut killed = Demo::start(&dir);
    let pids = killed.pids();
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    drop(killed);
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| alive(*p)) {
        assert!(Instant::now() < deadline, "children outlived a killed demo: {pids:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut again = Demo::start(&dir);
    unsafe { libc::kill(again.child.id() as i32, libc::SIGINT) };
    again.expect_line("every process it started has exited", Duration::from_secs(20));
    drop(again);

    // As root, the same mesh with a network namespace and iptables rules
    // per workload (one test, so the two demos never run at once: they
    // share the controller's admin address).
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("NOT RUN: the_demo_runs_meshed_and_stops_clean, --netns half: it needs root");
    } else {
        let mut pods = Demo::start_with(&dir, &["--netns"]);
        let check = Command::new(WEFT).args(["check", "--wait", "30s"]).output().unwrap();
        assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let edges = Command::new(WEFT).args(["edges", "-n", "demo", "-o", "json"]).output().unwrap();
            let edges: serde_json::Value = serde_json::from_slice(&edges.stdout).unwrap();
            let edges = edges.as_array().unwrap();
            if edges.len() >= 4 {
                assert!(edges.iter().all(|e| e["secured"] == true), "{edges:?}");
                break;
            }
            assert!(Instant::now() < deadline, "fewer than 4 edges in the namespaced demo: {edges:?}");
            std::thread::sleep(Duration::from_millis(500));
        }
        unsafe { libc::kill(pods.child.id() as i32, libc::SIGINT) };
        pods.expect_line("every process it started has exited", Duration::from_secs(20));
        let left = Command::new("ip").args(["netns", "list"]).output().unwrap();
        let left = String::from_utf8_lossy(&left.stdout);
        assert!(!left.contains("weftdemo-"), "namespaces left behind:\n{left}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

const RETRIES: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: voting-retries
  namespace: demo
  annotations:
    retry.linkerd.io/grpc: unavailable
    retry.linkerd.io/limit: "3"
spec:
  parentRefs: [{ group: core, kind: Service, name: voting, port: 8080 }]
  rules: [{}]
"#;
