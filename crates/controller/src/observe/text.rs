//! The proxies' Prometheus text exposition, as far as the controller
//! reads it: the series its answers use.

#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Series {
    pub(super) fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// The series names kept from each scrape.
pub(super) const KEPT: &[&str] = &[
    "response_total",
    "response_latency_ms_bucket",
    "request_total",
    "tcp_open_connections",
    "tcp_open_total",
    "identity_cert_expiration_timestamp_seconds",
    "inbound_http_authz_deny_total",
    "inbound_tcp_authz_deny_total",
];

/// Kept too: Linkerd's per-route series (`outbound_http_route_*`,
/// `outbound_grpc_route_*`).
pub(super) const KEPT_PREFIXES: &[&str] = &["outbound_http_route_", "outbound_grpc_route_"];

fn kept(name: &str) -> bool {
    KEPT.contains(&name) || KEPT_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Prometheus text, the series weft uses. Written here because the format
/// is line-based and weft-proxy is the only producer; no crate in the tree
/// parses it.
pub fn parse(text: &str) -> Vec<Series> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|line| {
            let (head, value) = line.rsplit_once(' ')?;
            let value: f64 = value.parse().ok()?;
            let (name, labels) = match head.split_once('{') {
                Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
                None => (head, Vec::new()),
            };
            kept(name).then(|| Series { name: name.to_string(), labels, value })
        })
        .collect()
}

fn parse_labels(s: &str) -> Option<Vec<(String, String)>> {
    let mut labels = Vec::new();
    let mut rest = s;
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.push((key.trim_start_matches(',').to_string(), value));
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_proxys_exposition() {
        let text = "# HELP x\nresponse_total{direction=\"inbound\",authority=\"a\\\"b\",classification=\"success\"} 7\nresponse_latency_ms_bucket{direction=\"inbound\",le=\"+Inf\"} 3\nother_total 1\n";
        let series = parse(text);
        assert_eq!(series.len(), 2);
        assert_eq!(series[0].label("authority"), Some("a\"b"));
        assert_eq!(series[0].value, 7.0);
        assert_eq!(series[1].label("le"), Some("+Inf"));
    }
}
