//! weft-proxy's configuration, read from linkerd2-proxy's environment
//! variables (same names, same meanings, same defaults), so that manifests
//! written for Linkerd's proxy configure weft's unchanged.
//!
//! Every malformed value is a start-up error that names the variable and the
//! value; nothing falls back to a default silently.

use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

pub const ENV_INBOUND_LISTEN_ADDR: &str = "LINKERD2_PROXY_INBOUND_LISTEN_ADDR";
pub const ENV_OUTBOUND_LISTEN_ADDR: &str = "LINKERD2_PROXY_OUTBOUND_LISTEN_ADDR";
pub const ENV_ADMIN_LISTEN_ADDR: &str = "LINKERD2_PROXY_ADMIN_LISTEN_ADDR";
pub const ENV_CONTROL_LISTEN_ADDR: &str = "LINKERD2_PROXY_CONTROL_LISTEN_ADDR";
pub const ENV_INBOUND_DETECT_TIMEOUT: &str = "LINKERD2_PROXY_INBOUND_DETECT_TIMEOUT";
pub const ENV_OUTBOUND_DETECT_TIMEOUT: &str = "LINKERD2_PROXY_OUTBOUND_DETECT_TIMEOUT";
pub const ENV_INBOUND_CONNECT_TIMEOUT: &str = "LINKERD2_PROXY_INBOUND_CONNECT_TIMEOUT";
pub const ENV_OUTBOUND_CONNECT_TIMEOUT: &str = "LINKERD2_PROXY_OUTBOUND_CONNECT_TIMEOUT";
/// TCP keepalive (the idle time before the first probe) on the connections
/// each listener accepts and on those the proxy opens for it; unset or 0,
/// none. Linkerd's injector sets `10000ms` on the inbound accept and
/// outbound connect side.
pub const ENV_INBOUND_ACCEPT_KEEPALIVE: &str = "LINKERD2_PROXY_INBOUND_ACCEPT_KEEPALIVE";
pub const ENV_OUTBOUND_ACCEPT_KEEPALIVE: &str = "LINKERD2_PROXY_OUTBOUND_ACCEPT_KEEPALIVE";
pub const ENV_INBOUND_CONNECT_KEEPALIVE: &str = "LINKERD2_PROXY_INBOUND_CONNECT_KEEPALIVE";
pub const ENV_OUTBOUND_CONNECT_KEEPALIVE: &str = "LINKERD2_PROXY_OUTBOUND_CONNECT_KEEPALIVE";
/// TCP_USER_TIMEOUT on the same connections: how long sent data may stay
/// unacknowledged before the kernel gives the connection up; unset or 0,
/// the kernel's default (retransmits for ~15 minutes). Linkerd's injector
/// sets `30s` on the inbound accept and outbound connect side.
pub const ENV_INBOUND_ACCEPT_USER_TIMEOUT: &str = "LINKERD2_PROXY_INBOUND_ACCEPT_USER_TIMEOUT";
pub const ENV_OUTBOUND_ACCEPT_USER_TIMEOUT: &str = "LINKERD2_PROXY_OUTBOUND_ACCEPT_USER_TIMEOUT";
pub const ENV_INBOUND_CONNECT_USER_TIMEOUT: &str = "LINKERD2_PROXY_INBOUND_CONNECT_USER_TIMEOUT";
pub const ENV_OUTBOUND_CONNECT_USER_TIMEOUT: &str = "LINKERD2_PROXY_OUTBOUND_CONNECT_USER_TIMEOUT";
/// How often each listener's HTTP/2 server connections send a PING, and
/// how long an answer may take before the connection is closed (`10s` and
/// `3s`, what Linkerd's injector sets; an interval of 0 sends none).
pub const ENV_INBOUND_HTTP2_KEEP_ALIVE_INTERVAL: &str =
    "LINKERD2_PROXY_INBOUND_SERVER_HTTP2_KEEP_ALIVE_INTERVAL";
pub const ENV_INBOUND_HTTP2_KEEP_ALIVE_TIMEOUT: &str =
    "LINKERD2_PROXY_INBOUND_SERVER_HTTP2_KEEP_ALIVE_TIMEOUT";
pub const ENV_OUTBOUND_HTTP2_KEEP_ALIVE_INTERVAL: &str =
    "LINKERD2_PROXY_OUTBOUND_SERVER_HTTP2_KEEP_ALIVE_INTERVAL";
pub const ENV_OUTBOUND_HTTP2_KEEP_ALIVE_TIMEOUT: &str =
    "LINKERD2_PROXY_OUTBOUND_SERVER_HTTP2_KEEP_ALIVE_TIMEOUT";
pub const ENV_INBOUND_OPAQUE_PORTS: &str = "LINKERD2_PROXY_INBOUND_PORTS_DISABLE_PROTOCOL_DETECTION";
pub const ENV_OUTBOUND_OPAQUE_PORTS: &str = "LINKERD2_PROXY_OUTBOUND_PORTS_DISABLE_PROTOCOL_DETECTION";
pub const ENV_SHUTDOWN_GRACE_PERIOD: &str = "LINKERD2_PROXY_SHUTDOWN_GRACE_PERIOD";
pub const ENV_SHUTDOWN_ENDPOINT_ENABLED: &str = "LINKERD2_PROXY_SHUTDOWN_ENDPOINT_ENABLED";
pub const ENV_INGRESS_MODE: &str = "LINKERD2_PROXY_INGRESS_MODE";
pub const ENV_CORES: &str = "LINKERD2_PROXY_CORES";
pub const ENV_LOG: &str = "LINKERD2_PROXY_LOG";
pub const ENV_LOG_FORMAT: &str = "LINKERD2_PROXY_LOG_FORMAT";
pub const ENV_DESTINATION_SVC_ADDR: &str = "LINKERD2_PROXY_DESTINATION_SVC_ADDR";
pub const ENV_POLICY_SVC_ADDR: &str = "LINKERD2_PROXY_POLICY_SVC_ADDR";
pub const ENV_POLICY_WORKLOAD: &str = "LINKERD2_PROXY_POLICY_WORKLOAD";
pub const ENV_DISCOVERY_IDLE_TIMEOUT: &str = "LINKERD2_PROXY_OUTBOUND_DISCOVERY_IDLE_TIMEOUT";
pub const ENV_IDENTITY_DISABLED: &str = "LINKERD2_PROXY_IDENTITY_DISABLED";
pub const ENV_IDENTITY_DIR: &str = "LINKERD2_PROXY_IDENTITY_DIR";
pub const ENV_IDENTITY_TRUST_ANCHORS: &str = "LINKERD2_PROXY_IDENTITY_TRUST_ANCHORS";
pub const ENV_IDENTITY_TOKEN_FILE: &str = "LINKERD2_PROXY_IDENTITY_TOKEN_FILE";
pub const ENV_IDENTITY_LOCAL_NAME: &str = "LINKERD2_PROXY_IDENTITY_LOCAL_NAME";
pub const ENV_IDENTITY_SVC_ADDR: &str = "LINKERD2_PROXY_IDENTITY_SVC_ADDR";
pub const ENV_IDENTITY_SVC_NAME: &str = "LINKERD2_PROXY_IDENTITY_SVC_NAME";
pub const ENV_IDENTITY_MIN_REFRESH: &str = "LINKERD2_PROXY_IDENTITY_MIN_REFRESH";
pub const ENV_IDENTITY_MAX_REFRESH: &str = "LINKERD2_PROXY_IDENTITY_MAX_REFRESH";
pub const ENV_DESTINATION_SVC_NAME: &str = "LINKERD2_PROXY_DESTINATION_SVC_NAME";
pub const ENV_POLICY_SVC_NAME: &str = "LINKERD2_PROXY_POLICY_SVC_NAME";
pub const ENV_TAP_SVC_NAME: &str = "LINKERD2_PROXY_TAP_SVC_NAME";
pub const ENV_TAP_DISABLED: &str = "LINKERD2_PROXY_TAP_DISABLED";
pub const ENV_INBOUND_DEFAULT_POLICY: &str = "LINKERD2_PROXY_INBOUND_DEFAULT_POLICY";
pub const ENV_POLICY_CLUSTER_NETWORKS: &str = "LINKERD2_PROXY_POLICY_CLUSTER_NETWORKS";
pub const ENV_INBOUND_PORTS_REQUIRE_IDENTITY: &str = "LINKERD2_PROXY_INBOUND_PORTS_REQUIRE_IDENTITY";
/// weft's own: where inbound connections go when they were not redirected by
/// iptables (local mode on 127.0.0.0/8, where there is no `SO_ORIGINAL_DST`).
pub const ENV_INBOUND_FORWARD: &str = "WEFT_PROXY_INBOUND_FORWARD";
/// weft's own: HTTP/1 connections to one meshed endpoint before further
/// concurrent HTTP/1 requests to it ride HTTP/2 (0: always, as
/// linkerd2-proxy does).
pub const ENV_OUTBOUND_MESH_HTTP1_CONNECTIONS: &str = "WEFT_PROXY_OUTBOUND_MESH_HTTP1_CONNECTIONS";
/// weft's own: how long an HTTP/1 client may take to send its next request
/// head (idle keep-alive included) before its connection is closed, on both
/// listeners (0: no limit).
pub const ENV_HTTP1_HEADER_READ_TIMEOUT: &str = "WEFT_PROXY_HTTP1_HEADER_READ_TIMEOUT";

/// Linkerd's default list of ports on which the client or server speaks first
/// (SMTP, MySQL, Galera, PostgreSQL, Redis, Elasticsearch, memcached).
pub const DEFAULT_OPAQUE_PORTS: &[u16] = &[25, 587, 3306, 4444, 5432, 6379, 9300, 11211];

#[derive(Clone, Debug)]
pub struct Config {
    pub inbound: ListenerConfig,
    pub outbound: ListenerConfig,
    pub admin_addr: SocketAddr,
    pub control_addr: SocketAddr,
    pub shutdown_grace_period: Duration,
    pub shutdown_endpoint_enabled: bool,
    pub ingress_mode: bool,
    pub cores: usize,
    pub log: String,
    pub log_format: LogFormat,
    pub inbound_forward: Option<SocketAddr>,
    /// HTTP/1 connections to one meshed endpoint before HTTP/1 requests
    /// to it ride HTTP/2.
    pub mesh_http1_connections: usize,
    /// The controller, when there is one: without it, outbound traffic
    /// goes to its original destination.
    pub discovery: Option<DiscoveryConfig>,
    /// Mesh identity; without it, the proxy neither originates nor
    /// terminates mesh TLS.
    pub identity: Option<IdentityConfig>,
    /// Inbound ports that accept only clients with a mesh identity.
    pub require_identity_ports: PortSet,
    /// The identity allowed to tap this proxy; set (with mesh identity on),
    /// the tap server listens on the control address.
    pub tap_name: Option<String>,
    /// The inbound policy where the controller gives none.
    pub default_policy: String,
    /// The networks `cluster-*` default policies admit.
    pub cluster_networks: Vec<ipnet::IpNet>,
}

#[derive(Clone, Debug)]
pub struct IdentityConfig {
    /// This proxy's identity (`sa.ns.serviceaccount.identity.weft.cluster.local`).
    pub local_name: String,
    /// The trust anchors (PEM), as given.
    pub trust_anchors: weft_identity::TrustAnchors,
    pub token_file: std::path::PathBuf,
    /// `host:port` of the identity CA, and the identity it presents.
    pub svc_addr: String,
    pub svc_name: String,
    /// Renewal happens at 70% of a certificate's life, but never sooner
    /// than `min_refresh` nor later than `max_refresh` after issuance.
    pub min_refresh: Duration,
    pub max_refresh: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// `host:port` of the Destination API.
    pub destination_addr: String,
    /// `host:port` of the policy APIs (the destination's when unset).
    pub policy_addr: String,
    /// Who this proxy is, as the policy API takes it (`ns:name`).
    pub workload: String,
    /// The identities the Destination and policy APIs present: where set
    /// (and the proxy has an identity), they are reached over mesh TLS.
    pub destination_name: Option<String>,
    pub policy_name: Option<String>,
    pub idle_timeout: Duration,
}

#[derive(Clone, Debug)]
pub struct ListenerConfig {
    pub addr: SocketAddr,
    pub detect_timeout: Duration,
    /// TCP options on the connections this listener accepts.
    pub accept: TcpOptions,
    /// How the proxy opens connections for this listener's traffic.
    pub connect: ConnectConfig,
    pub opaque_ports: PortSet,
    /// How long an HTTP/1 client may take to send its next request head.
    pub header_read_timeout: Duration,
    /// PINGs on HTTP/2 server connections.
    pub http2_keep_alive: Http2KeepAlive,
}

/// A PING every `interval` (none when `None`); a connection whose peer
/// does not answer in `timeout` is closed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Http2KeepAlive {
    pub interval: Option<Duration>,
    pub timeout: Duration,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ConnectConfig {
    /// The TCP connect (and any mesh TLS handshake after it) must end in this.
    pub timeout: Duration,
    pub tcp: TcpOptions,
}

/// Socket options weft-proxy sets on a TCP connection; `None` leaves the
/// kernel's default.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct TcpOptions {
    /// TCP keepalive: probes after this long without traffic.
    pub keepalive: Option<Duration>,
    /// TCP_USER_TIMEOUT: sent data unacknowledged this long ends the connection.
    pub user_timeout: Option<Duration>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Plain,
    Json,
}

/// A set of ports, as Linkerd spells them: `25,587,4000-4100`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortSet(BTreeSet<(u16, u16)>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{name}={value:?} is not valid: {reason}")]
pub struct EnvError {
    pub name: &'static str,
    pub value: String,
    pub reason: String,
}

// === impl Config ===

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, EnvError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// The `LINKERD2_PROXY_*` and `WEFT_PROXY_*` variables among `vars` that
    /// weft-proxy does not read (with the rest of `vars` as its
    /// configuration): a Linkerd manifest's variables weft has no use for,
    /// or misspelt ones, which a user moving over should hear about.
    pub fn unread(vars: &[(String, String)]) -> Vec<String> {
        let read = std::cell::RefCell::new(BTreeSet::new());
        let _ = Self::from_lookup(|name| {
            read.borrow_mut().insert(name.to_string());
            vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        });
        let read = read.into_inner();
        let mut unread: Vec<String> = vars
            .iter()
            .map(|(k, _)| k)
            .filter(|k| k.starts_with("LINKERD2_PROXY_") || k.starts_with("WEFT_PROXY_"))
            .filter(|k| !read.contains(k.as_str()))
            .cloned()
            .collect();
        unread.sort();
        unread
    }

    /// Reads configuration through `get`, so tests need not touch the
    /// process environment.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        let env = Env(&get);
        let default_opaque = PortSet::from_ports(DEFAULT_OPAQUE_PORTS);
        let header_read_timeout =
            env.parse(ENV_HTTP1_HEADER_READ_TIMEOUT, parse_duration)?.unwrap_or(Duration::from_secs(60));
        let config = Config {
            inbound: ListenerConfig {
                addr: env.parse(ENV_INBOUND_LISTEN_ADDR, parse_addr)?.unwrap_or(([0, 0, 0, 0], 4143).into()),
                detect_timeout: env
                    .parse(ENV_INBOUND_DETECT_TIMEOUT, parse_duration)?
                    .unwrap_or(Duration::from_secs(10)),
                accept: env.tcp_options(ENV_INBOUND_ACCEPT_KEEPALIVE, ENV_INBOUND_ACCEPT_USER_TIMEOUT)?,
                connect: ConnectConfig {
                    timeout: env
                        .parse(ENV_INBOUND_CONNECT_TIMEOUT, parse_duration)?
                        .unwrap_or(Duration::from_millis(100)),
                    tcp: env.tcp_options(ENV_INBOUND_CONNECT_KEEPALIVE, ENV_INBOUND_CONNECT_USER_TIMEOUT)?,
                },
                opaque_ports: env
                    .parse(ENV_INBOUND_OPAQUE_PORTS, PortSet::parse)?
                    .unwrap_or_else(|| default_opaque.clone()),
                header_read_timeout,
                http2_keep_alive: env.http2_keep_alive(
                    ENV_INBOUND_HTTP2_KEEP_ALIVE_INTERVAL,
                    ENV_INBOUND_HTTP2_KEEP_ALIVE_TIMEOUT,
                )?,
            },
            outbound: ListenerConfig {
                addr: env
                    .parse(ENV_OUTBOUND_LISTEN_ADDR, parse_addr)?
                    .unwrap_or(([127, 0, 0, 1], 4140).into()),
                detect_timeout: env
                    .parse(ENV_OUTBOUND_DETECT_TIMEOUT, parse_duration)?
                    .unwrap_or(Duration::from_secs(10)),
                accept: env.tcp_options(ENV_OUTBOUND_ACCEPT_KEEPALIVE, ENV_OUTBOUND_ACCEPT_USER_TIMEOUT)?,
                connect: ConnectConfig {
                    timeout: env
                        .parse(ENV_OUTBOUND_CONNECT_TIMEOUT, parse_duration)?
                        .unwrap_or(Duration::from_secs(1)),
                    tcp: env
                        .tcp_options(ENV_OUTBOUND_CONNECT_KEEPALIVE, ENV_OUTBOUND_CONNECT_USER_TIMEOUT)?,
                },
                opaque_ports: env.parse(ENV_OUTBOUND_OPAQUE_PORTS, PortSet::parse)?.unwrap_or(default_opaque),
                header_read_timeout,
                http2_keep_alive: env.http2_keep_alive(
                    ENV_OUTBOUND_HTTP2_KEEP_ALIVE_INTERVAL,
                    ENV_OUTBOUND_HTTP2_KEEP_ALIVE_TIMEOUT,
                )?,
            },
            admin_addr: env.parse(ENV_ADMIN_LISTEN_ADDR, parse_addr)?.unwrap_or(([0, 0, 0, 0], 4191).into()),
            control_addr: env
                .parse(ENV_CONTROL_LISTEN_ADDR, parse_addr)?
                .unwrap_or(([0, 0, 0, 0], 4190).into()),
            shutdown_grace_period: env
                .parse(ENV_SHUTDOWN_GRACE_PERIOD, parse_duration)?
                .unwrap_or(Duration::from_secs(120)),
            shutdown_endpoint_enabled: env.parse(ENV_SHUTDOWN_ENDPOINT_ENABLED, parse_bool)?.unwrap_or(false),
            ingress_mode: env.parse(ENV_INGRESS_MODE, parse_bool)?.unwrap_or(false),
            cores: env.parse(ENV_CORES, parse_cores)?.unwrap_or(1),
            log: env.parse(ENV_LOG, |s| Ok(s.to_string()))?.unwrap_or_else(|| "warn,weft=info".into()),
            log_format: env.parse(ENV_LOG_FORMAT, parse_log_format)?.unwrap_or(LogFormat::Plain),
            inbound_forward: env.parse(ENV_INBOUND_FORWARD, parse_addr)?,
            mesh_http1_connections: env
                .parse(ENV_OUTBOUND_MESH_HTTP1_CONNECTIONS, parse_count)?
                .unwrap_or(crate::http::client::DEFAULT_MESH_HTTP1_CONNECTIONS),
            discovery: None,
            identity: None,
            require_identity_ports: env
                .parse(ENV_INBOUND_PORTS_REQUIRE_IDENTITY, PortSet::parse)?
                .unwrap_or_default(),
            tap_name: match env.parse(ENV_TAP_DISABLED, parse_bool)? {
                Some(true) => None,
                _ => env.parse(ENV_TAP_SVC_NAME, parse_identity_name)?,
            },
            default_policy: env
                .parse(ENV_INBOUND_DEFAULT_POLICY, parse_default_policy)?
                .unwrap_or_else(|| "all-unauthenticated".into()),
            cluster_networks: env.parse(ENV_POLICY_CLUSTER_NETWORKS, parse_networks)?.unwrap_or_else(|| {
                parse_networks("10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8")
                    .expect("valid networks")
            }),
        };
        let mut config = config;
        config.identity = identity_config(&env)?;
        if let Some(destination_addr) = env.parse(ENV_DESTINATION_SVC_ADDR, parse_svc_addr)? {
            let destination_name = env.parse(ENV_DESTINATION_SVC_NAME, parse_identity_name)?;
            config.discovery = Some(DiscoveryConfig {
                policy_addr: env
                    .parse(ENV_POLICY_SVC_ADDR, parse_svc_addr)?
                    .unwrap_or_else(|| destination_addr.clone()),
                destination_addr,
                workload: env.parse(ENV_POLICY_WORKLOAD, |s| Ok(s.to_string()))?.unwrap_or_default(),
                policy_name: env
                    .parse(ENV_POLICY_SVC_NAME, parse_identity_name)?
                    .or_else(|| destination_name.clone()),
                destination_name,
                idle_timeout: env
                    .parse(ENV_DISCOVERY_IDLE_TIMEOUT, parse_duration)?
                    .unwrap_or(Duration::from_secs(5)),
            });
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks what spans several variables.
    fn validate(&self) -> Result<(), EnvError> {
        let listeners = [
            (ENV_INBOUND_LISTEN_ADDR, self.inbound.addr),
            (ENV_OUTBOUND_LISTEN_ADDR, self.outbound.addr),
            (ENV_ADMIN_LISTEN_ADDR, self.admin_addr),
        ];
        for (i, (name, addr)) in listeners.iter().enumerate() {
            for (other, other_addr) in &listeners[..i] {
                if addr.port() != 0 && addr == other_addr {
                    return Err(EnvError {
                        name,
                        value: addr.to_string(),
                        reason: format!("it is the same address as {other}"),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Identity is on when its variables are set, and then all of them must
/// be; `LINKERD2_PROXY_IDENTITY_DISABLED` turns it off whatever else is set.
fn identity_config<F: Fn(&str) -> Option<String>>(
    env: &Env<'_, F>,
) -> Result<Option<IdentityConfig>, EnvError> {
    if env.parse(ENV_IDENTITY_DISABLED, |_| Ok(()))?.is_some() {
        return Ok(None);
    }
    let local_name = env.parse(ENV_IDENTITY_LOCAL_NAME, parse_identity_name)?;
    let anchors = env.parse(ENV_IDENTITY_TRUST_ANCHORS, |pem| {
        weft_identity::TrustAnchors::from_pem(pem).map_err(|e| e.to_string())
    })?;
    let token_file = env.parse(ENV_IDENTITY_TOKEN_FILE, |s| Ok(std::path::PathBuf::from(s)))?;
    let svc_addr = env.parse(ENV_IDENTITY_SVC_ADDR, parse_svc_addr)?;
    let svc_name = env.parse(ENV_IDENTITY_SVC_NAME, parse_identity_name)?;
    let any = local_name.is_some()
        || anchors.is_some()
        || token_file.is_some()
        || svc_addr.is_some()
        || svc_name.is_some();
    if !any {
        return Ok(None);
    }
    let missing = |name: &'static str| EnvError {
        name,
        value: String::new(),
        reason: format!(
            "it must be set when mesh identity is configured (or set {ENV_IDENTITY_DISABLED}=true)"
        ),
    };
    let config = IdentityConfig {
        local_name: local_name.ok_or_else(|| missing(ENV_IDENTITY_LOCAL_NAME))?,
        trust_anchors: anchors.ok_or_else(|| missing(ENV_IDENTITY_TRUST_ANCHORS))?,
        token_file: token_file.ok_or_else(|| missing(ENV_IDENTITY_TOKEN_FILE))?,
        svc_addr: svc_addr.ok_or_else(|| missing(ENV_IDENTITY_SVC_ADDR))?,
        svc_name: svc_name.ok_or_else(|| missing(ENV_IDENTITY_SVC_NAME))?,
        min_refresh: env.parse(ENV_IDENTITY_MIN_REFRESH, parse_duration)?.unwrap_or(Duration::from_secs(10)),
        max_refresh: env
            .parse(ENV_IDENTITY_MAX_REFRESH, parse_duration)?
            .unwrap_or(Duration::from_secs(86_400)),
    };
    let _ = env.parse(ENV_IDENTITY_DIR, |_| Ok(()))?; // Linkerd's; weft keeps its key in memory.
    Ok(Some(config))
}

fn parse_default_policy(s: &str) -> Result<String, String> {
    const POLICIES: &[&str] = &[
        "all-unauthenticated",
        "all-authenticated",
        "cluster-unauthenticated",
        "cluster-authenticated",
        "deny",
        "audit",
    ];
    if POLICIES.contains(&s) { Ok(s.into()) } else { Err(format!("expected one of {}", POLICIES.join(", "))) }
}

fn parse_networks(s: &str) -> Result<Vec<ipnet::IpNet>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| n.parse::<ipnet::IpNet>().map_err(|_| format!("{n:?} is not a CIDR such as 10.0.0.0/8")))
        .collect()
}

/// An identity as TLS names it: a DNS name.
fn parse_identity_name(s: &str) -> Result<String, String> {
    rustls_pki_types::ServerName::try_from(s)
        .ok()
        .filter(|n| matches!(n, rustls_pki_types::ServerName::DnsName(_)))
        .map(|_| s.to_string())
        .ok_or_else(|| {
            "expected a DNS-like identity, such as web.shop.serviceaccount.identity.weft.cluster.local".into()
        })
}

struct Env<'a, F>(&'a F);

impl<F: Fn(&str) -> Option<String>> Env<'_, F> {
    fn parse<T>(
        &self,
        name: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, EnvError> {
        let Some(value) = (self.0)(name) else {
            return Ok(None);
        };
        parse(value.trim()).map(Some).map_err(|reason| EnvError { name, value, reason })
    }

    fn tcp_options(
        &self,
        keepalive: &'static str,
        user_timeout: &'static str,
    ) -> Result<TcpOptions, EnvError> {
        Ok(TcpOptions {
            keepalive: self.parse(keepalive, parse_keepalive)?.flatten(),
            user_timeout: self.parse(user_timeout, parse_user_timeout)?.flatten(),
        })
    }

    /// Linkerd's injector sets 10s and 3s; weft uses them unset too.
    fn http2_keep_alive(
        &self,
        interval: &'static str,
        timeout: &'static str,
    ) -> Result<Http2KeepAlive, EnvError> {
        Ok(Http2KeepAlive {
            interval: self
                .parse(interval, parse_duration)?
                .map_or(Some(Duration::from_secs(10)), |d| (!d.is_zero()).then_some(d)),
            timeout: self.parse(timeout, parse_duration)?.unwrap_or(Duration::from_secs(3)),
        })
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse().map_err(|_| "expected an IP address and port, such as 0.0.0.0:4143 or [::]:4143".to_string())
}

/// A control-plane address: `host:port`, the host a name or an IP.
fn parse_svc_addr(s: &str) -> Result<String, String> {
    let hint =
        || "expected host:port, such as weft-dst.weft.svc.cluster.local:8086 or 127.0.0.1:8086".to_string();
    let (host, port) = s.rsplit_once(':').ok_or_else(hint)?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(hint());
    }
    Ok(s.to_string())
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" | "" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn parse_count(s: &str) -> Result<usize, String> {
    s.trim().parse().map_err(|_| "expected a whole number (0 or more)".into())
}

fn parse_cores(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("expected a whole number of cores, at least 1".into()),
    }
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s.to_ascii_lowercase().as_str() {
        "plain" => Ok(LogFormat::Plain),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected plain or json".into()),
    }
}

/// A TCP keepalive idle time: 0 is none. Linux counts it in whole seconds
/// (1 to 32,767; a part second is dropped), so less than a second is an error
/// rather than a socket option the kernel refuses on every connection.
fn parse_keepalive(s: &str) -> Result<Option<Duration>, String> {
    const MAX_SECS: u64 = i16::MAX as u64;
    let d = parse_duration(s)?;
    match d.as_secs() {
        0 if d.is_zero() => Ok(None),
        0 => Err("TCP keepalive counts whole seconds: expected 0 (none) or at least 1s".into()),
        secs if secs > MAX_SECS => Err(format!("TCP keepalive can wait at most {MAX_SECS}s")),
        secs => Ok(Some(Duration::from_secs(secs))),
    }
}

/// A TCP_USER_TIMEOUT: 0 is the kernel's default; the kernel takes
/// milliseconds in 32 bits.
fn parse_user_timeout(s: &str) -> Result<Option<Duration>, String> {
    let d = parse_duration(s)?;
    if d.as_millis() > u128::from(u32::MAX) {
        return Err(format!("TCP user timeout can be at most {}ms", u32::MAX));
    }
    Ok((!d.is_zero()).then_some(d))
}

/// Durations as linkerd2-proxy writes them: a whole number and a unit
/// (`100ms`, `10s`, `2m`, `1h`, `1d`). A bare `0` means zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const HINT: &str = "expected a whole number with a unit (ms, s, m, h or d), such as 10s";
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| HINT.to_string())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| HINT.to_string())?;
    let ms = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => return Err(HINT.into()),
    };
    ms.map(Duration::from_millis).ok_or_else(|| "the duration is too long".into())
}

// === impl PortSet ===

impl PortSet {
    pub fn from_ports(ports: &[u16]) -> Self {
        Self(ports.iter().map(|&p| (p, p)).collect())
    }

    /// Parses a comma-separated list of ports and inclusive ranges.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut set = BTreeSet::new();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let bad = || format!("{item:?} is not a port (1-65535) or a range of ports such as 4000-4100");
            let port = |p: &str| p.trim().parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad);
            let range = match item.split_once('-') {
                Some((lo, hi)) => (port(lo)?, port(hi)?),
                None => (port(item)?, port(item)?),
            };
            if range.0 > range.1 {
                return Err(format!("{item:?} is a range whose start is above its end"));
            }
            set.insert(range);
        }
        Ok(Self(set))
    }

    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| lo <= port && port <= hi)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, EnvError> {
        let vars: HashMap<String, String> =
            vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|k| vars.get(k).cloned())
    }

    #[test]
    fn defaults_are_linkerds() {
        let c = config(&[]).unwrap();
        assert_eq!(c.inbound.addr, "0.0.0.0:4143".parse().unwrap());
        assert_eq!(c.outbound.addr, "127.0.0.1:4140".parse().unwrap());
        assert_eq!(c.admin_addr, "0.0.0.0:4191".parse().unwrap());
        assert_eq!(c.inbound.connect.timeout, Duration::from_millis(100));
        assert_eq!(c.outbound.connect.timeout, Duration::from_secs(1));
        assert_eq!(
            (c.inbound.accept, c.outbound.connect.tcp),
            (TcpOptions::default(), TcpOptions::default())
        );
        assert_eq!(c.shutdown_grace_period, Duration::from_secs(120));
        for port in DEFAULT_OPAQUE_PORTS {
            assert!(c.inbound.opaque_ports.contains(*port));
            assert!(c.outbound.opaque_ports.contains(*port));
        }
        assert!(!c.inbound.opaque_ports.contains(80));
        assert!(!c.ingress_mode);
    }

    #[test]
    fn tcp_keepalive_is_linkerds_four_variables() {
        let c = config(&[
            (ENV_INBOUND_ACCEPT_KEEPALIVE, "10000ms"),
            (ENV_OUTBOUND_CONNECT_KEEPALIVE, "10000ms"),
            (ENV_OUTBOUND_ACCEPT_KEEPALIVE, "2m"),
            (ENV_INBOUND_CONNECT_KEEPALIVE, "0"),
        ])
        .unwrap();
        assert_eq!(c.inbound.accept.keepalive, Some(Duration::from_secs(10)));
        assert_eq!(c.outbound.connect.tcp.keepalive, Some(Duration::from_secs(10)));
        assert_eq!(c.outbound.accept.keepalive, Some(Duration::from_secs(120)));
        assert_eq!(c.inbound.connect.tcp.keepalive, None);
        // A part second is dropped; under a second, or past the kernel's limit, is an error.
        let c = config(&[(ENV_INBOUND_ACCEPT_KEEPALIVE, "1500ms")]).unwrap();
        assert_eq!(c.inbound.accept.keepalive, Some(Duration::from_secs(1)));
        for bad in ["500ms", "10h", "10"] {
            let err = config(&[(ENV_OUTBOUND_CONNECT_KEEPALIVE, bad)]).unwrap_err();
            assert_eq!((err.name, err.value.as_str()), (ENV_OUTBOUND_CONNECT_KEEPALIVE, bad), "{err}");
        }
    }

    #[test]
    fn tcp_user_timeout_is_linkerds_four_variables() {
        let c = config(&[
            (ENV_INBOUND_ACCEPT_USER_TIMEOUT, "30s"),
            (ENV_OUTBOUND_CONNECT_USER_TIMEOUT, "30s"),
            (ENV_OUTBOUND_ACCEPT_USER_TIMEOUT, "1500ms"),
            (ENV_INBOUND_CONNECT_USER_TIMEOUT, "0"),
        ])
        .unwrap();
        assert_eq!(c.inbound.accept.user_timeout, Some(Duration::from_secs(30)));
        assert_eq!(c.outbound.connect.tcp.user_timeout, Some(Duration::from_secs(30)));
        assert_eq!(c.outbound.accept.user_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(c.inbound.connect.tcp.user_timeout, None);
        for bad in ["50d", "30"] {
            let err = config(&[(ENV_INBOUND_ACCEPT_USER_TIMEOUT, bad)]).unwrap_err();
            assert_eq!((err.name, err.value.as_str()), (ENV_INBOUND_ACCEPT_USER_TIMEOUT, bad), "{err}");
        }
    }

    #[test]
    fn http2_server_pings_follow_linkerds_variables() {
        let c = config(&[]).unwrap();
        assert_eq!(c.inbound.http2_keep_alive.interval, Some(Duration::from_secs(10)));
        assert_eq!(c.outbound.http2_keep_alive.timeout, Duration::from_secs(3));
        let c = config(&[
            (ENV_INBOUND_HTTP2_KEEP_ALIVE_INTERVAL, "1s"),
            (ENV_INBOUND_HTTP2_KEEP_ALIVE_TIMEOUT, "500ms"),
            (ENV_OUTBOUND_HTTP2_KEEP_ALIVE_INTERVAL, "0"),
        ])
        .unwrap();
        assert_eq!(c.inbound.http2_keep_alive.interval, Some(Duration::from_secs(1)));
        assert_eq!(c.inbound.http2_keep_alive.timeout, Duration::from_millis(500));
        assert_eq!(c.outbound.http2_keep_alive.interval, None);
        let err = config(&[(ENV_OUTBOUND_HTTP2_KEEP_ALIVE_TIMEOUT, "3")]).unwrap_err();
        assert_eq!(err.name, ENV_OUTBOUND_HTTP2_KEEP_ALIVE_TIMEOUT);
    }

    #[test]
    fn variables_weft_does_not_read_are_named() {
        let vars = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let set = vars(&[
            ("PATH", "/bin"),
            ("LINKERD2_PROXY_INBOUND_IPS", "10.0.0.1"),
            (ENV_INBOUND_ACCEPT_KEEPALIVE, "10000ms"),
            ("WEFT_PROXY_INBOUND_FORWRAD", "127.0.0.1:8080"),
            (ENV_IDENTITY_DIR, "/var/run/linkerd/identity/end-entity"),
        ]);
        // The identity directory is read (and ignored) only with identity on.
        assert_eq!(
            Config::unread(&set),
            ["LINKERD2_PROXY_IDENTITY_DIR", "LINKERD2_PROXY_INBOUND_IPS", "WEFT_PROXY_INBOUND_FORWRAD"]
        );
        assert!(Config::unread(&vars(&[(ENV_LOG, "info")])).is_empty());
    }

    #[test]
    fn errors_name_the_variable_and_value() {
        let err = config(&[(ENV_INBOUND_LISTEN_ADDR, "localhost:4143")]).unwrap_err();
        assert_eq!(err.name, ENV_INBOUND_LISTEN_ADDR);
        assert_eq!(err.value, "localhost:4143");
        let msg = err.to_string();
        assert!(msg.contains("LINKERD2_PROXY_INBOUND_LISTEN_ADDR=\"localhost:4143\""), "{msg}");

        let err = config(&[(ENV_OUTBOUND_CONNECT_TIMEOUT, "10")]).unwrap_err();
        assert_eq!((err.name, err.value.as_str()), (ENV_OUTBOUND_CONNECT_TIMEOUT, "10"));

        let err = config(&[(ENV_INBOUND_OPAQUE_PORTS, "25,abc")]).unwrap_err();
        assert!(err.reason.contains("\"abc\""), "{err}");

        let err = config(&[(ENV_INGRESS_MODE, "maybe")]).unwrap_err();
        assert_eq!(err.name, ENV_INGRESS_MODE);

        let err = config(&[(ENV_CORES, "0")]).unwrap_err();
        assert_eq!(err.name, ENV_CORES);

        let err = config(&[(ENV_OUTBOUND_MESH_HTTP1_CONNECTIONS, "-1")]).unwrap_err();
        assert_eq!(err.name, ENV_OUTBOUND_MESH_HTTP1_CONNECTIONS);
        let c = config(&[(ENV_OUTBOUND_MESH_HTTP1_CONNECTIONS, "0")]).unwrap();
        assert_eq!(c.mesh_http1_connections, 0);
        assert_eq!(config(&[]).unwrap().mesh_http1_connections, 32);

        let err = config(&[(ENV_HTTP1_HEADER_READ_TIMEOUT, "soon")]).unwrap_err();
        assert_eq!(err.name, ENV_HTTP1_HEADER_READ_TIMEOUT);
        let c = config(&[(ENV_HTTP1_HEADER_READ_TIMEOUT, "5s")]).unwrap();
        assert_eq!(
            (c.inbound.header_read_timeout, c.outbound.header_read_timeout),
            (Duration::from_secs(5), Duration::from_secs(5))
        );
        assert_eq!(config(&[]).unwrap().inbound.header_read_timeout, Duration::from_secs(60));
    }

    #[test]
    fn discovery_needs_a_destination_address() {
        assert_eq!(config(&[]).unwrap().discovery, None);
        let c = config(&[(ENV_DESTINATION_SVC_ADDR, "127.0.0.1:8086")]).unwrap();
        let d = c.discovery.unwrap();
        assert_eq!(
            (d.destination_addr.as_str(), d.policy_addr.as_str()),
            ("127.0.0.1:8086", "127.0.0.1:8086")
        );
        assert_eq!(d.idle_timeout, Duration::from_secs(5));
        let err = config(&[(ENV_DESTINATION_SVC_ADDR, "weft-dst")]).unwrap_err();
        assert_eq!(err.name, ENV_DESTINATION_SVC_ADDR);
    }

    #[test]
    fn listeners_must_differ() {
        let err = config(&[(ENV_ADMIN_LISTEN_ADDR, "0.0.0.0:4143")]).unwrap_err();
        assert_eq!(err.name, ENV_ADMIN_LISTEN_ADDR);
        assert!(err.reason.contains(ENV_INBOUND_LISTEN_ADDR));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
    }

    #[test]
    fn port_sets() {
        let set = PortSet::parse("25, 4000-4100,6379").unwrap();
        assert!(set.contains(25) && set.contains(4000) && set.contains(4100) && set.contains(6379));
        assert!(!set.contains(3999) && !set.contains(4101));
        assert!(PortSet::parse("").unwrap() == PortSet::default());
        assert!(PortSet::parse("0").is_err());
        assert!(PortSet::parse("70000").is_err());
        assert!(PortSet::parse("20-10").is_err());
    }
}
