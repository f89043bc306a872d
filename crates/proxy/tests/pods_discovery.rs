//! Discovery and balancing end to end: a client pod whose proxy asks the
//! controller (serving a store directory the test edits) about a service of
//! three server pods, each with its own proxy.

mod support;

use support::cluster::{Cluster, connect, counts, get, wait_until};

use http::StatusCode;
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicUsize, Ordering},
};
use weft_test_support::apps;

#[test]
fn grpc_calls_on_one_connection_spread_over_three_endpoints() {
    let Some(cluster) = Cluster::start("grpc_calls_on_one_connection_spread_over_three_endpoints") else {
        return;
    };
    for server in &cluster.servers {
        let (_, serve) = apps::grpc(server.listen(8080));
        server.spawn(serve);
    }
    let dst = cluster.service_addr();
    // Each server's proxy counts what reached it.
    let served = |cluster: &Cluster| -> Vec<f64> {
        cluster
            .servers
            .iter()
            .map(|s| {
                s.metrics()
                    .lines()
                    .filter(|l| l.starts_with(r#"request_total{direction="inbound""#))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum()
            })
            .collect()
    };
    const CALLS: usize = 3000;
    let call = move |calls: usize| async move {
        use futures_util::StreamExt;
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        // One connection from the application.
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{dst}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let calls = futures_util::stream::iter(0..calls)
            .map(|_| {
                let mut client = HealthClient::new(channel.clone());
                async move { client.check(HealthCheckRequest { service: String::new() }).await }
            })
            .buffer_unordered(16);
        let failures = calls.filter(|r| std::future::ready(r.is_err())).count().await;
        assert_eq!(failures, 0);
    };
    // Warm up: connections to every endpoint are made (their set-up is in
    // the first latencies), then the spread is measured.
    cluster.client.block_on(call(300));
    let before = served(&cluster);
    cluster.client.block_on(call(CALLS));
    let per_server: Vec<f64> =
        served(&cluster).iter().zip(&before).map(|(after, before)| after - before).collect();
    println!("calls per server: {per_server:?}");
    // Without balancing per request every call would ride the one
    // connection to one endpoint. Peak-EWMA is latency-aware, not
    // round-robin: a latency spike (a scheduling hiccup on this shared
    // machine) moves load off an endpoint for about the decay time (10 s).
    // Equal endpoints land within ±15% of even in about two runs of three
    // and have been seen at +30%; the bound here is what holds every time:
    // each endpoint carries between half and one and a half of its share.
    let even = CALLS as f64 / 3.0;
    for (i, n) in per_server.iter().enumerate() {
        assert!((n - even).abs() <= 0.5 * even, "server {i} got {n} of {CALLS} calls: {per_server:?}");
    }
    let client_metrics = cluster.client.metrics();
    assert!(client_metrics.contains(r#"dst_namespace="shop",dst_service="web""#), "{client_metrics}");
}

#[test]
fn a_slow_endpoint_gets_clearly_less_traffic() {
    let Some(cluster) = Cluster::start("a_slow_endpoint_gets_clearly_less_traffic") else { return };
    let stats = cluster.http_apps();
    stats[2].delay_ms.store(30, Ordering::Relaxed);
    let dst = cluster.service_addr();
    const REQUESTS: usize = 600;
    cluster.client.block_on(async move {
        let sent = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..8)
            .map(|_| {
                let sent = sent.clone();
                tokio::spawn(async move {
                    let mut send = connect(dst).await;
                    while sent.fetch_add(1, Ordering::SeqCst) < REQUESTS {
                        assert_eq!(get(&mut send).await, Ok(StatusCode::OK));
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
    });
    let c = counts(&stats);
    println!("requests per server (the third is slow): {c:?}");
    assert_eq!(c.iter().sum::<usize>(), REQUESTS, "{c:?}");
    assert!(c[2] * 5 < REQUESTS, "the slow endpoint got {} of {REQUESTS}: {c:?}", c[2]);
}

#[test]
fn endpoint_changes_and_a_controller_restart_lose_no_request() {
    let Some(mut cluster) = Cluster::start("endpoint_changes_and_a_controller_restart_lose_no_request")
    else {
        return;
    };
    let stats = cluster.http_apps();
    let dst = cluster.service_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let load: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            cluster.client.spawn(async move {
                let mut send = connect(dst).await;
                while !stop.load(Ordering::SeqCst) {
                    match get(&mut send).await {
                        Ok(StatusCode::OK) => ok.fetch_add(1, Ordering::SeqCst),
                        other => {
                            failures.lock().unwrap().push(format!("{other:?}"));
                            0
                        }
                    };
                }
            })
        })
        .collect();
    let progress = |n: usize| {
        let start = ok.load(Ordering::SeqCst);
        wait_until(&format!("{n} more requests"), || ok.load(Ordering::SeqCst) >= start + n);
    };

    wait_until("every endpoint to get traffic", || counts(&stats).iter().all(|&n| n > 0));

    // An endpoint leaves, under load: once the change has reached the
    // proxy, the endpoint gets nothing more.
    cluster.remove_endpoint(2);
    wait_until("the removed endpoint to get no more traffic", || {
        let before = counts(&stats)[2];
        progress(200);
        counts(&stats)[2] == before
    });

    // A malformed file changes nothing.
    std::fs::write(cluster.store.0.join("broken.yaml"), "apiVersion: v1\nkind: Pod\nmetadata: [oops\n")
        .unwrap();
    progress(100);

    // It comes back.
    cluster.add_endpoint(2);
    let before = counts(&stats)[2];
    wait_until("the endpoint to get traffic again", || counts(&stats)[2] > before + 10);

    // The controller dies: traffic goes on with what the proxy knew.
    cluster.kill_controller();
    progress(300);
    cluster.start_controller();
    progress(50);

    // The proxy has reconnected: a change after the restart takes effect.
    cluster.remove_endpoint(0);
    wait_until("an update after the controller came back", || {
        let before = counts(&stats)[0];
        progress(200);
        counts(&stats)[0] == before
    });

    stop.store(true, Ordering::SeqCst);
    for task in load {
        cluster.client.block_on(async move { task.await.unwrap() });
    }
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        ok.load(Ordering::SeqCst),
        &failures[..failures.len().min(5)]
    );
}

#[test]
fn opaque_tcp_to_a_service_is_balanced_per_connection() {
    let Some(cluster) = Cluster::start("opaque_tcp_to_a_service_is_balanced_per_connection") else { return };
    for server in &cluster.servers {
        server.spawn(apps::tcp_echo(server.listen(8080)));
    }
    let dst = cluster.service_addr();
    let echoed = cluster.client.block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut total = 0;
        for i in 0..6u8 {
            // Not HTTP: detection gives up on the first byte.
            let sent = [0u8, 1, 2, i];
            let mut sock = tokio::net::TcpStream::connect(dst).await.unwrap();
            sock.write_all(&sent).await.unwrap();
            sock.shutdown().await.unwrap();
            let mut back = Vec::new();
            sock.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, sent);
            total += 1;
        }
        total
    });
    assert_eq!(echoed, 6);
    let text = cluster.client.metrics();
    let opened: f64 = text
        .lines()
        .filter(|l| l.starts_with(r#"tcp_open_total{direction="outbound",peer="dst""#))
        .filter(|l| l.contains(r#"dst_namespace="shop",dst_service="web""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(opened, 6.0, "{text}");
}
