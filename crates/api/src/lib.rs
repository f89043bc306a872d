//! weft's additions to Linkerd's proxy API (DESIGN.md, contract 1).
//!
//! weft does things Linkerd's outbound policy cannot say: delay faults,
//! request mirroring, URL rewrites, circuit breaking scoped to one route,
//! and a service's retry budget. They travel inside the very
//! `OutboundPolicies` messages stock proxies read, as field 1000 of
//! `OutboundPolicy`: protobuf decoders skip fields they do not know, so the
//! stock linkerd2-proxy gets the standard policy and ignores the rest, and
//! weft-proxy against Linkerd's control plane simply gets no additions.
//!
//! [`OutboundPolicy`] is wire-compatible with
//! `io.linkerd.proxy.outbound.OutboundPolicy` (same fields, same tags) plus
//! `weft`. Because the generated server and client of
//! `linkerd2-proxy-api` are typed with the stock message (and prost drops
//! unknown fields when decoding), this crate has its own small server and
//! client for the same gRPC methods, built the way tonic's generated code
//! is.

use linkerd2_proxy_api::{
    http_route::{PathModifier, Ratio},
    meta::Metadata,
    outbound::{self as stock, Backend, FailureAccrual, ProxyProtocol, TrafficSpec},
};

/// `io.linkerd.proxy.outbound.OutboundPolicy`, with weft's additions.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OutboundPolicy {
    #[prost(message, optional, tag = "1")]
    pub protocol: Option<ProxyProtocol>,
    #[prost(message, optional, tag = "2")]
    pub metadata: Option<Metadata>,
    #[prost(message, optional, tag = "1000")]
    pub weft: Option<Extensions>,
}

/// What weft adds to a service's outbound policy.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Extensions {
    /// Additions to route rules, by position.
    #[prost(message, repeated, tag = "1")]
    pub rules: Vec<RuleExtension>,
    /// How much extra load retries may add (a ServiceProfile's
    /// `retryBudget`); unset means 20%, at least 10 per second, over 10 s.
    #[prost(message, optional, tag = "2")]
    pub retry_budget: Option<RetryBudget>,
}

/// Additions to one rule: `route` indexes the protocol's route list (a
/// `Detect`'s HTTP/1 and HTTP/2 lists are the same list), `rule` that
/// route's rules.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RuleExtension {
    #[prost(uint32, tag = "1")]
    pub route: u32,
    #[prost(uint32, tag = "2")]
    pub rule: u32,
    /// Delay a share of requests before sending them on.
    #[prost(message, optional, tag = "3")]
    pub delay: Option<Delay>,
    /// Send a copy of a share of requests to other backends, not waiting
    /// for (or caring about) their answers.
    #[prost(message, repeated, tag = "4")]
    pub mirrors: Vec<Mirror>,
    /// Rewrite the authority and path before sending requests on.
    #[prost(message, optional, tag = "5")]
    pub url_rewrite: Option<UrlRewrite>,
    /// Circuit breaking scoped to this rule: endpoints are ejected for this
    /// rule's requests only.
    #[prost(message, optional, tag = "6")]
    pub failure_accrual: Option<FailureAccrual>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Delay {
    #[prost(message, optional, tag = "1")]
    pub ratio: Option<Ratio>,
    #[prost(message, optional, tag = "2")]
    pub duration: Option<prost_types::Duration>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Mirror {
    #[prost(message, optional, tag = "1")]
    pub backend: Option<Backend>,
    #[prost(message, optional, tag = "2")]
    pub ratio: Option<Ratio>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct UrlRewrite {
    /// Replaces the request's host (the port stays); empty leaves it.
    #[prost(string, tag = "1")]
    pub hostname: String,
    #[prost(message, optional, tag = "2")]
    pub path: Option<PathModifier>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RetryBudget {
    /// Retries allowed per original request, e.g. 0.2.
    #[prost(float, tag = "1")]
    pub retry_ratio: f32,
    /// Retries always allowed per second, whatever the ratio.
    #[prost(uint32, tag = "2")]
    pub min_retries_per_second: u32,
    /// The window over which requests are counted.
    #[prost(message, optional, tag = "3")]
    pub ttl: Option<prost_types::Duration>,
}

impl From<stock::OutboundPolicy> for OutboundPolicy {
    fn from(p: stock::OutboundPolicy) -> Self {
        Self { protocol: p.protocol, metadata: p.metadata, weft: None }
    }
}

impl From<OutboundPolicy> for stock::OutboundPolicy {
    fn from(p: OutboundPolicy) -> Self {
        Self { protocol: p.protocol, metadata: p.metadata }
    }
}

const SERVICE: &str = "io.linkerd.proxy.outbound.OutboundPolicies";

pub mod server {
    //! `OutboundPolicies` served with weft's [`OutboundPolicy`].

    use super::{OutboundPolicy, SERVICE, TrafficSpec};
    use tonic::codegen::{Body, BoxFuture, Context, Poll, StdError, http, tokio_stream::Stream};
    use tonic::{Request, Response, Status, server::NamedService};

    #[tonic::async_trait]
    pub trait OutboundPolicies: Send + Sync + 'static {
        async fn get(&self, req: Request<TrafficSpec>) -> Result<Response<OutboundPolicy>, Status>;

        type WatchStream: Stream<Item = Result<OutboundPolicy, Status>> + Send + 'static;

        async fn watch(&self, req: Request<TrafficSpec>) -> Result<Response<Self::WatchStream>, Status>;
    }

    pub struct OutboundPoliciesServer<T>(std::sync::Arc<T>);

    impl<T> OutboundPoliciesServer<T> {
        pub fn new(inner: T) -> Self {
            Self(std::sync::Arc::new(inner))
        }
    }

    impl<T> Clone for OutboundPoliciesServer<T> {
        fn clone(&self) -> Self {
            Self(self.0.clone())
        }
    }

    impl<T> NamedService for OutboundPoliciesServer<T> {
        const NAME: &'static str = SERVICE;
    }

    struct Get<T>(std::sync::Arc<T>);
    struct Watch<T>(std::sync::Arc<T>);

    impl<T: OutboundPolicies> tonic::server::UnaryService<TrafficSpec> for Get<T> {
        type Response = OutboundPolicy;
        type Future = BoxFuture<Response<OutboundPolicy>, Status>;

        fn call(&mut self, req: Request<TrafficSpec>) -> Self::Future {
            let inner = self.0.clone();
            Box::pin(async move { inner.get(req).await })
        }
    }

    impl<T: OutboundPolicies> tonic::server::ServerStreamingService<TrafficSpec> for Watch<T> {
        type Response = OutboundPolicy;
        type ResponseStream = T::WatchStream;
        type Future = BoxFuture<Response<T::WatchStream>, Status>;

        fn call(&mut self, req: Request<TrafficSpec>) -> Self::Future {
            let inner = self.0.clone();
            Box::pin(async move { inner.watch(req).await })
        }
    }

    impl<T, B> tonic::codegen::Service<http::Request<B>> for OutboundPoliciesServer<T>
    where
        T: OutboundPolicies,
        B: Body + Send + 'static,
        B::Error: Into<StdError> + Send + 'static,
    {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Self::Response, Self::Error>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: http::Request<B>) -> Self::Future {
            let inner = self.0.clone();
            let method = req
                .uri()
                .path()
                .strip_prefix('/')
                .and_then(|p| p.strip_prefix(SERVICE))
                .and_then(|m| m.strip_prefix('/'));
            match method {
                Some("Get") => Box::pin(async move {
                    let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                    Ok(grpc.unary(Get(inner), req).await)
                }),
                Some("Watch") => Box::pin(async move {
                    let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
                    Ok(grpc.server_streaming(Watch(inner), req).await)
                }),
                _ => Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) }),
            }
        }
    }
}

pub mod client {
    //! `OutboundPolicies/Watch` read as weft's [`OutboundPolicy`].

    use super::{OutboundPolicy, TrafficSpec};
    use tonic::codegen::{Body, Bytes, StdError, http};
    use tonic::{Request, Response, Status, codec::Streaming};

    #[derive(Clone)]
    pub struct OutboundPoliciesClient<T> {
        inner: tonic::client::Grpc<T>,
    }

    impl<T> OutboundPoliciesClient<T>
    where
        T: tonic::client::GrpcService<tonic::body::Body>,
        T::Error: Into<StdError>,
        T::ResponseBody: Body<Data = Bytes> + Send + 'static,
        <T::ResponseBody as Body>::Error: Into<StdError> + Send,
    {
        pub fn new(inner: T) -> Self {
            Self { inner: tonic::client::Grpc::new(inner) }
        }

        pub async fn watch(
            &mut self,
            spec: TrafficSpec,
        ) -> Result<Response<Streaming<OutboundPolicy>>, Status> {
            self.inner
                .ready()
                .await
                .map_err(|e| Status::unavailable(format!("the controller is not ready: {}", e.into())))?;
            let path =
                http::uri::PathAndQuery::from_static("/io.linkerd.proxy.outbound.OutboundPolicies/Watch");
            self.inner.server_streaming(Request::new(spec), path, tonic_prost::ProstCodec::default()).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    /// A stock decoder reads weft's policy as the standard one, and weft's
    /// reads a stock one with no additions.
    #[test]
    fn stock_and_weft_policies_read_each_other() {
        let policy = OutboundPolicy {
            protocol: Some(ProxyProtocol::default()),
            metadata: Some(Metadata::default()),
            weft: Some(Extensions {
                rules: vec![RuleExtension { route: 1, rule: 2, ..Default::default() }],
                retry_budget: None,
            }),
        };
        let bytes = policy.encode_to_vec();
        let stock = stock::OutboundPolicy::decode(bytes.as_slice()).unwrap();
        assert_eq!(stock, stock::OutboundPolicy::from(policy.clone()));
        let back = OutboundPolicy::decode(stock.encode_to_vec().as_slice()).unwrap();
        assert_eq!(back.weft, None);
        assert_eq!(OutboundPolicy::decode(bytes.as_slice()).unwrap(), policy);
    }
}
