//! gRPC (tonic client, a real gRPC service) through two proxies in two
//! pods: unary, server streaming, statuses in trailers, and the proxy's own
//! gRPC status when the service is down.

mod support;

use support::*;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use weft_test_support::apps;

async fn client(dst: std::net::SocketAddr) -> HealthClient<tonic::transport::Channel> {
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{dst}")).unwrap().connect().await.unwrap();
    HealthClient::new(channel)
}

#[test]
fn grpc_unary_streaming_and_trailers() {
    let Some(mesh) = Mesh::start("grpc_unary_streaming_and_trailers") else { return };
    let (reporter, serve) = apps::grpc(mesh.server.listen(50051));
    mesh.server.spawn(serve);
    let dst = mesh.server_addr(50051);

    mesh.client.block_on(async move {
        reporter.set_service_status("weft.Test", tonic_health::ServingStatus::Serving).await;
        let mut health = client(dst).await;
        let req = || HealthCheckRequest { service: "weft.Test".into() };

        // Unary.
        let rsp = health.check(req()).await.unwrap().into_inner();
        assert_eq!(rsp.status(), ServingStatus::Serving);

        // A status in trailers.
        let err = health.check(HealthCheckRequest { service: "weft.Missing".into() }).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);

        // Server streaming: each change arrives as it happens.
        let mut watch = health.watch(req()).await.unwrap().into_inner();
        assert_eq!(watch.message().await.unwrap().unwrap().status(), ServingStatus::Serving);
        reporter.set_service_status("weft.Test", tonic_health::ServingStatus::NotServing).await;
        assert_eq!(watch.message().await.unwrap().unwrap().status(), ServingStatus::NotServing);
    });

    let out = outbound_labels(&dst.to_string(), dst);
    await_metric(
        &mesh.client,
        &format!(r#"response_total{{{out},status_code="200",grpc_status="0",classification="success"}}"#),
        1.0,
    );
    await_metric(
        &mesh.client,
        &format!(r#"response_total{{{out},status_code="200",grpc_status="5",classification="failure"}}"#),
        1.0,
    );
}

#[test]
fn grpc_clients_get_unavailable_when_the_service_is_down() {
    let Some(mesh) = Mesh::start("grpc_clients_get_unavailable_when_the_service_is_down") else { return };
    let dst = mesh.server_addr(50052);
    let status = mesh.client.block_on(async move {
        let mut health = client(dst).await;
        health.check(HealthCheckRequest { service: String::new() }).await.unwrap_err()
    });
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains(&format!("connect to {dst} failed")), "{status:?}");
    assert!(status.metadata().get("l5d-proxy-error").is_some());
}
