//! Envoy configured as a transparent sidecar, the way the benchmark runs
//! weft-proxy: the same ports, the same iptables redirection, one worker,
//! HTTP routed per request to the original destination.

pub fn sidecar_config() -> String {
    let listener = |name: &str, addr: &str, port: u16| {
        format!(
            r#"
  - name: {name}
    address: {{ socket_address: {{ address: {addr}, port_value: {port} }} }}
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {name}
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: original_dst, timeout: 0s }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}"#
        )
    };
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 9901 }} }}
static_resources:
  listeners:{}{}
  clusters:
  - name: original_dst
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        use_downstream_protocol_config: {{}}
"#,
        listener("outbound", "127.0.0.1", 4140),
        listener("inbound", "0.0.0.0", 4143)
    )
}

/// Files an Envoy sidecar needs for mutual TLS: its certificate chain and
/// key, and the trust anchors.
pub struct TlsFiles {
    pub chain: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub anchors: std::path::PathBuf,
    /// Chain and key in one file (HAProxy's `crt`).
    pub combined: std::path::PathBuf,
}

/// Envoy with mutual TLS between the pair (TLS 1.3, certificates from the
/// same CA as weft's, each side verifying the other's name): the client
/// side originates TLS to the server pod, the server side terminates it.
pub fn mtls_config(tls: &TlsFiles, client: bool, peer_name: &str) -> String {
    let common = format!(
        r#"common_tls_context:
            tls_params: {{ tls_minimum_protocol_version: TLSv1_3, tls_maximum_protocol_version: TLSv1_3 }}
            tls_certificates: [{{ certificate_chain: {{ filename: "{}" }}, private_key: {{ filename: "{}" }} }}]
            validation_context:
              trusted_ca: {{ filename: "{}" }}
              match_typed_subject_alt_names: [{{ san_type: DNS, matcher: {{ exact: "{peer_name}" }} }}]"#,
        tls.chain.display(),
        tls.key.display(),
        tls.anchors.display()
    );
    let base = sidecar_config();
    if client {
        // The upstream (to the server's sidecar) is TLS.
        base.replace(
            "    typed_extension_protocol_options:",
            &format!(
                r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: "{peer_name}"
        {common}
    typed_extension_protocol_options:"#,
                common = common.replace("\n          ", "\n        ")
            ),
        )
    } else {
        // The inbound listener terminates TLS and requires a client
        // certificate.
        base.replacen(
            "    filter_chains:\n    - filters:",
            &format!(
                r#"    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          {common}
      filters:"#
            ),
            // The second listener in the file is the inbound one.
            2,
        )
        .replacen(
            &format!(
                r#"    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          {common}
      filters:"#
            ),
            "    filter_chains:\n    - filters:",
            1,
        )
    }
}
