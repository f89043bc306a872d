//! A request to a service with routes: the rule it matches decides what
//! happens to it (filters, faults, the backend by weight, timeouts,
//! retries within the service's budget, circuit breaking, mirrors), and
//! the route series count it once as a logical request and once per
//! attempt.

use super::{
    Conn, L5D_ORIG_PROTO, ResponseBody, absolute_uri,
    body::{ObservedBody, Recorder, RequestBody, RouteEnd, UpstreamBody, grpc_status},
    client::Proto,
    error::ProxyError,
    headers,
};
use crate::{
    discovery::{
        ServiceRoute,
        balance::{InFlight, Pick},
    },
    metrics::grpc_label,
    traffic::{
        Backend, Redirect, Rule,
        metrics::{RetryOutcome, RuleSeries},
    },
};
use bytes::Bytes;
use http::{
    HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header::HOST, uri::Authority,
};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use std::{future::Future, sync::Arc, time::Duration};
use tower::retry::budget::Budget;

/// A request's head, kept to send it again.
#[derive(Clone)]
struct Head {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

/// One attempt's answer, with the endpoint that gave it.
struct Answered {
    rsp: Response<UpstreamBody>,
    picked: InFlight,
    /// An HTTP/1 request carried over HTTP/2 to a meshed endpoint.
    upgraded: bool,
}

/// How long mirrored requests may take before they are dropped.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

impl Conn {
    /// Not an async fn: an async block keeps its captured request once,
    /// where an async fn's future keeps the argument and a copy. The
    /// future is boxed per request (see `Conn::proxy`), so its size is
    /// memory touched per request.
    #[allow(clippy::manual_async_fn, reason = "an async fn's future keeps its arguments twice")]
    pub(super) fn proxy_routed(
        &self,
        mut req: Request<Incoming>,
        mut authority: Authority,
        service: Arc<ServiceRoute>,
        started: std::time::Instant,
        grpc: bool,
    ) -> impl Future<Output = Response<ResponseBody>> + Send + '_ {
        async move {
            let router = service.router.as_ref().expect("a routed service has a router");
            let Some(selected) = router.select(&req, grpc) else {
                return self.fail(None, ProxyError::NoOutboundRoute { service: service.name.clone() }, grpc);
            };
            let rule = selected.rule;
            let prefix = selected.prefix();
            let series = rule.series(grpc, &self.proxy.metrics.routes);

            // Filters that answer in place of a backend.
            if let Some(redirect) = &rule.redirect {
                let rsp = redirect_response(redirect, &req, &authority, prefix);
                series.request(Some(rsp.status().as_u16()), None, started.elapsed(), 0);
                return rsp;
            }
            if let Some(abort) = rule.abort.as_ref().filter(|a| a.ratio.hit()) {
                // An HTTP route's status becomes a gRPC code for gRPC clients.
                let (status, as_grpc) = match (abort.grpc, grpc) {
                    (true, _) => (abort.status, true),
                    (false, true) => (grpc_code_for(abort.status), true),
                    (false, false) => (abort.status, false),
                };
                let rsp = injected(status, as_grpc, &abort.message);
                let status = if as_grpc { status } else { rsp.status().as_u16() };
                series.request(Some(status), None, started.elapsed(), 0);
                return rsp;
            }
            if let Some((ratio, delay)) = rule.delay {
                if ratio.hit() {
                    tokio::time::sleep(delay).await;
                }
            }
            if let Some(modifier) = &rule.request_headers {
                modifier.apply(req.headers_mut());
            }
            if let Some(rewrite) = &rule.rewrite {
                if let Some(host) = &rewrite.host {
                    let with_port = match authority.port_u16() {
                        Some(port) => format!("{host}:{port}"),
                        None => host.clone(),
                    };
                    if let Ok(a) = Authority::try_from(with_port) {
                        authority = a;
                        req.headers_mut().remove(HOST);
                    }
                }
                if let Some(path) = &rewrite.path {
                    let new = path.apply(req.uri().path(), prefix);
                    let pq = match req.uri().query() {
                        Some(q) => format!("{new}?{q}"),
                        None => new,
                    };
                    if let Ok(uri) = Uri::builder().path_and_query(pq).build() {
                        *req.uri_mut() = uri;
                    }
                }
            }

            let (mut head, body) = self.head(req, &authority);
            let replay_limit = match &rule.retry {
                Some(retry) => Some(retry.max_request_bytes),
                None if !rule.mirrors.is_empty() => Some(crate::traffic::MIRROR_MAX_BYTES),
                None => None,
            };
            let mut body = Some(RequestBody::new(body, replay_limit));

            // The budget counts the requests that may be retried.
            if rule.retry.is_some() {
                router.budget.deposit();
            }
            let mut attempts = 0u32;
            let outcome = match rule.timeouts.request {
                // One attempt, with no deadline over it: awaited here. Retries
                // and a request timeout take the loop, boxed, so that the
                // common case's future (boxed per request) is not kilobytes.
                None if rule.retry.is_none() => {
                    attempts = 1;
                    let this_body = first_body(&mut body);
                    self.attempt(&service, rule, series, &mut head, this_body, grpc).await
                }
                None => {
                    Box::pin(self.retrying(&service, rule, series, &mut head, &mut body, &mut attempts, grpc))
                        .await
                }
                Some(timeout) => match Box::pin(tokio::time::timeout(
                    timeout,
                    self.retrying(&service, rule, series, &mut head, &mut body, &mut attempts, grpc),
                ))
                .await
                {
                    Ok(outcome) => outcome,
                    Err(_) => Err(ProxyError::RequestTimeout { timeout }),
                },
            };

            let answered = match outcome {
                Ok(answered) => answered,
                Err(error) => {
                    let status =
                        if grpc { Some(error.grpc_code() as u16) } else { Some(error.status().as_u16()) };
                    series.request(status, Some(error.route_label()), started.elapsed(), attempts);
                    let target = self.target.unwrap_or_else(|| ([0, 0, 0, 0], 0).into());
                    let metrics = self.route(&authority, target, None);
                    metrics.request();
                    return self.fail(Some(&metrics), error, grpc);
                }
            };

            // Mirrors get a copy once the request has been sent.
            for (backend, ratio) in &rule.mirrors {
                if !ratio.hit() {
                    continue;
                }
                if let Some(copy) = body.as_ref().and_then(RequestBody::try_clone) {
                    let req = request(&mut head, copy, false, false);
                    tokio::spawn(mirror(self.proxy.clone(), backend.clone(), req));
                }
            }

            let Answered { rsp, picked, upgraded } = answered;
            let metrics = self.route(&authority, picked.addr(), Some(&picked));
            metrics.request();
            let tapped = self.tap_head(&head.method, head.uri.path(), &authority, picked.addr(), &metrics);
            if let Some(tapped) = &tapped {
                tapped.response(rsp.status().as_u16());
            }
            self.respond(rsp, upgraded, head.version, rule, series, started, attempts, metrics, tapped, grpc)
        }
    }

    /// Sends attempts until one's answer is final for the rule's retry
    /// policy, or retries run out (their limit, the service's budget, or a
    /// body that cannot be sent again). `attempts` counts them.
    #[allow(clippy::too_many_arguments)]
    async fn retrying(
        &self,
        service: &ServiceRoute,
        rule: &Rule,
        series: &RuleSeries,
        head: &mut Head,
        body: &mut Option<RequestBody>,
        attempts: &mut u32,
        grpc: bool,
    ) -> Result<Answered, ProxyError> {
        let budget = &service.router.as_ref().expect("a routed service has a router").budget;
        let mut this_body = first_body(body);
        loop {
            *attempts += 1;
            let outcome = self.attempt(service, rule, series, head, this_body, grpc).await;
            let Some(retry) = &rule.retry else { return outcome };
            let wants_retry = match &outcome {
                Ok(a) => retry.retries(a.rsp.status(), grpc_status(a.rsp.headers())),
                Err(e) => e.retryable(),
            };
            if !wants_retry {
                if *attempts > 1 && outcome.as_ref().is_ok_and(|a| succeeded(&a.rsp, grpc)) {
                    series.retry(RetryOutcome::Succeeded);
                }
                return outcome;
            }
            if *attempts > retry.max_retries {
                series.retry(RetryOutcome::LimitExceeded);
                return outcome;
            }
            // Only with a body to send again (this copy, made now, is the
            // one sent), and within the budget.
            let Some(next) = body.as_ref().and_then(RequestBody::try_clone) else {
                series.retry(RetryOutcome::Overflow);
                return outcome;
            };
            if !budget.withdraw() {
                series.retry(RetryOutcome::Overflow);
                return outcome;
            }
            series.retry(RetryOutcome::Retried);
            drop(outcome);
            this_body = next;
            tokio::time::sleep(retry.backoff(*attempts)).await;
        }
    }

    /// The request as every attempt sends it: its head, and its body.
    fn head(&self, mut req: Request<Incoming>, authority: &Authority) -> (Head, Incoming) {
        headers::strip_hop_by_hop(req.headers_mut(), false);
        if self.proto == Proto::Http1 && !req.headers().contains_key(HOST) {
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                req.headers_mut().insert(HOST, host);
            }
        }
        *req.uri_mut() = absolute_uri(req.uri(), authority);
        let (parts, body) = req.into_parts();
        (Head { method: parts.method, uri: parts.uri, version: parts.version, headers: parts.headers }, body)
    }

    #[allow(clippy::too_many_arguments)]
    fn respond(
        &self,
        mut rsp: Response<UpstreamBody>,
        upgraded: bool,
        version: Version,
        rule: &Rule,
        series: &Arc<RuleSeries>,
        started: std::time::Instant,
        attempts: u32,
        metrics: crate::metrics::RouteMetrics,
        tapped: Option<crate::tap::Tapped>,
        grpc: bool,
    ) -> Response<ResponseBody> {
        if upgraded {
            rsp.headers_mut().remove(L5D_ORIG_PROTO);
            *rsp.version_mut() = version;
        }
        if let Some(modifier) = &rule.response_headers {
            modifier.apply(rsp.headers_mut());
        }
        let status = rsp.status();
        metrics.response_headers(status.as_u16(), started);
        headers::strip_hop_by_hop(rsp.headers_mut(), false);
        let end = RouteEnd { series: series.clone(), started, attempts };
        let recorder =
            Recorder::new(metrics, status.as_u16(), grpc, rsp.headers()).tapped(tapped).routed(end);
        rsp.map(|body| Either::Left(ObservedBody::new(body, recorder)))
    }

    /// One attempt: a backend by weight, an endpoint by the balancer (minus
    /// ejected ones), the request, within the attempt's timeout.
    async fn attempt(
        &self,
        service: &ServiceRoute,
        rule: &Rule,
        series: &RuleSeries,
        head: &mut Head,
        body: RequestBody,
        grpc: bool,
    ) -> Result<Answered, ProxyError> {
        let backend =
            rule.pick_backend().ok_or_else(|| ProxyError::NoBackend { service: service.name.clone() })?;
        let picked = match backend
            .balancer
            .pick_within_for(backend.failfast, rule.breaker.as_deref(), backend.accrual.as_ref())
            .await
        {
            Pick::Endpoint(p) => p,
            Pick::Empty => return Err(ProxyError::NoEndpoints { service: backend.name.clone() }),
            Pick::AllFailing => return Err(ProxyError::CircuitOpen { service: backend.name.clone() }),
        };
        series.backend_request(&backend.meta);
        let clients = &self.proxy.clients;
        let meta = picked.meta();
        let (client, upgraded) =
            clients.for_endpoint(picked.addr(), self.proto, meta.identity.as_ref(), meta.http2);
        // A request sent once gives its headers away rather than a copy.
        let once = rule.retry.is_none() && rule.mirrors.is_empty();
        let req = request(head, body, upgraded, once);

        let timeout = rule.retry.as_ref().and_then(|r| r.timeout).or(rule.timeouts.response);
        let sent = client.request(req);
        let result = match timeout {
            // Boxed: the timer would add its size to every attempt's future.
            Some(timeout) => match Box::pin(tokio::time::timeout(timeout, sent)).await {
                Ok(r) => r.map_err(ProxyError::from_client),
                Err(_) => Err(ProxyError::ResponseTimeout { timeout }),
            },
            None => sent.await.map_err(ProxyError::from_client),
        };
        match result {
            Ok(rsp) => {
                picked.responded();
                let code = grpc_status(rsp.headers());
                let failed = rsp.status().is_server_error() || (grpc && code.is_some_and(is_grpc_failure));
                picked.record(!failed, rule.breaker.as_deref());
                let status =
                    if grpc { code.map(grpc_label).or(Some(0)) } else { Some(rsp.status().as_u16()) };
                series.backend_response(&backend.meta, status, None);
                Ok(Answered { rsp, picked, upgraded })
            }
            Err(error) => {
                tracing::debug!(endpoint = %picked.addr(), %error, "attempt failed");
                // A failure's wait counts in the latency estimate, so an
                // endpoint that hangs is not taken for a fast one.
                picked.responded();
                picked.record(false, rule.breaker.as_deref());
                series.backend_response(&backend.meta, None, Some(error.route_label()));
                Err(error)
            }
        }
    }
}

/// The body of a request's first attempt: the stream itself, or a first
/// copy of a body kept to send again (to a retry or a mirror).
fn first_body(body: &mut Option<RequestBody>) -> RequestBody {
    match body.take() {
        Some(RequestBody::Stream(stream)) => RequestBody::Stream(stream),
        Some(b) => {
            let first = b.try_clone().unwrap_or(RequestBody::Empty);
            *body = Some(b);
            first
        }
        None => RequestBody::Empty,
    }
}

/// Whether an answer is a success for the client (a retry that ended
/// this way succeeded).
fn succeeded(rsp: &Response<UpstreamBody>, grpc: bool) -> bool {
    let code = grpc_status(rsp.headers());
    rsp.status().is_success() && (!grpc || code.is_none_or(|c| c == 0))
}

/// The gRPC code for an HTTP status, as gRPC's own mapping has it.
fn grpc_code_for(status: u16) -> u16 {
    match status {
        400 => 13,
        401 => 16,
        403 => 7,
        404 => 12,
        429 | 502 | 503 | 504 => 14,
        _ => 2,
    }
}

/// The request to send; `take` moves the headers out of `head` (its last
/// use), else they are copied for later attempts and mirrors.
fn request(head: &mut Head, body: RequestBody, upgraded: bool, take: bool) -> Request<RequestBody> {
    let mut req = Request::new(body);
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.headers_mut() = if take { std::mem::take(&mut head.headers) } else { head.headers.clone() };
    *req.version_mut() = head.version;
    if upgraded {
        let orig = if head.version == Version::HTTP_10 { "HTTP/1.0" } else { "HTTP/1.1" };
        req.headers_mut().insert(L5D_ORIG_PROTO, HeaderValue::from_static(orig));
        *req.version_mut() = Version::HTTP_2;
    }
    req
}

/// gRPC codes that count against an endpoint: it is unwell, not the call.
fn is_grpc_failure(code: u32) -> bool {
    matches!(code, 2 | 4 | 8 | 13 | 14 | 15)
}

/// A copy of the request to a mirror backend; its answer is read and
/// dropped, and nothing about it reaches the client.
async fn mirror(proxy: Arc<super::HttpProxy>, backend: Arc<Backend>, mut req: Request<RequestBody>) {
    let clients = &proxy.clients;
    let Pick::Endpoint(picked) = backend.balancer.pick_for(None, None) else {
        tracing::debug!(backend = %backend.name, "mirror has no endpoints; copy dropped");
        return;
    };
    let meta = picked.meta();
    let proto = if req.version() == Version::HTTP_2 { Proto::Http2 } else { Proto::Http1 };
    let (client, upgraded) = clients.for_endpoint(picked.addr(), proto, meta.identity.as_ref(), meta.http2);
    if upgraded {
        req.headers_mut().insert(L5D_ORIG_PROTO, HeaderValue::from_static("HTTP/1.1"));
        *req.version_mut() = Version::HTTP_2;
    }
    let sent = async {
        let rsp = client.request(req).await?;
        let _ = rsp.into_body().collect().await;
        Ok::<_, super::client::ClientError>(())
    };
    match tokio::time::timeout(MIRROR_TIMEOUT, sent).await {
        Ok(Ok(())) => picked.responded(),
        Ok(Err(error)) => tracing::debug!(backend = %backend.name, %error, "mirrored request failed"),
        Err(_) => tracing::debug!(backend = %backend.name, "mirrored request timed out"),
    }
}

fn redirect_response<B>(
    redirect: &Redirect,
    req: &Request<B>,
    authority: &Authority,
    prefix: Option<&str>,
) -> Response<ResponseBody> {
    let scheme = redirect.scheme.clone().unwrap_or_else(|| "http".into());
    let host = redirect.host.clone().unwrap_or_else(|| authority.host().to_string());
    let port = redirect.port.or(if redirect.host.is_some() { None } else { authority.port_u16() });
    let path = match &redirect.path {
        Some(modifier) => modifier.apply(req.uri().path(), prefix),
        None => req.uri().path().to_string(),
    };
    let mut location = match port {
        Some(port) => format!("{scheme}://{host}:{port}{path}"),
        None => format!("{scheme}://{host}{path}"),
    };
    if let Some(q) = req.uri().query() {
        location.push('?');
        location.push_str(q);
    }
    let mut rsp = Response::new(Either::Right(Full::default()));
    *rsp.status_mut() = redirect.status;
    if let Ok(value) = HeaderValue::from_str(&location) {
        rsp.headers_mut().insert(http::header::LOCATION, value);
    }
    rsp
}

/// A fault the route injects: an HTTP status, or a gRPC status in a
/// trailers-only response.
fn injected(status: u16, grpc: bool, message: &str) -> Response<ResponseBody> {
    let message = if message.is_empty() { "fault injected by weft" } else { message };
    let mut rsp = Response::new(Either::Right(Full::new(Bytes::from(if grpc {
        String::new()
    } else {
        format!("{message}\n")
    }))));
    let h = rsp.headers_mut();
    h.insert(super::error::L5D_PROXY_ERROR, HeaderValue::from_static("fault injected by weft"));
    if grpc {
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from(status));
        if let Ok(v) = HeaderValue::from_str(message) {
            h.insert("grpc-message", v);
        }
    } else {
        *rsp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    }
    rsp
}
