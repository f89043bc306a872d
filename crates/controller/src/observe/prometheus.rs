//! With `--prometheus-url`: the proxies' series come from a Prometheus
//! that scrapes them (with `namespace` and `pod` labels, as Linkerd's
//! scrape configuration and `weft viz prometheus-config` add), one
//! instant query per round, instead of the controller scraping each
//! proxy itself. Everything computed from them is the same.

use super::{
    Scraped, Series,
    text::{KEPT, KEPT_PREFIXES},
};
use serde_json::Value;
use std::{collections::BTreeMap, net::SocketAddr};

/// Labels Prometheus adds to what a proxy serves.
const ADDED: &[&str] = &["namespace", "pod", "instance", "job", "__name__"];

/// The selector of every kept series, and of `up` (whether Prometheus'
/// last scrape of the proxy worked).
pub(super) fn selector() -> String {
    let mut names: Vec<String> = KEPT.iter().map(|n| n.to_string()).collect();
    names.extend(KEPT_PREFIXES.iter().map(|p| format!("{p}.+")));
    names.push("up".into());
    format!("{{__name__=~\"{}\",pod!=\"\"}}", names.join("|"))
}

/// One round: the query's answer, by pod.
pub(super) async fn scrape(url: &str, targets: Vec<((String, String), String, SocketAddr)>) -> Vec<Scraped> {
    let answer = query(url, &selector()).await;
    from_answer(answer, targets)
}

/// The series of each target from Prometheus' answer (or its error, for
/// every target).
pub(super) fn from_answer(
    answer: Result<Value, String>,
    targets: Vec<((String, String), String, SocketAddr)>,
) -> Vec<Scraped> {
    let mut by_pod: BTreeMap<(String, String), (bool, Vec<Series>)> = BTreeMap::new();
    if let Ok(answer) = &answer {
        for r in answer["data"]["result"].as_array().into_iter().flatten() {
            let metric = r["metric"].as_object();
            let label = |n: &str| metric.and_then(|m| m.get(n)).and_then(Value::as_str).unwrap_or_default();
            let key = (label("namespace").to_string(), label("pod").to_string());
            let value = r["value"][1].as_str().and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
            let entry = by_pod.entry(key).or_default();
            let name = label("__name__");
            if name == "up" {
                entry.0 = value == 1.0;
                continue;
            }
            let labels = metric
                .into_iter()
                .flatten()
                .filter(|(k, _)| !ADDED.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect();
            entry.1.push(Series { name: name.to_string(), labels, value });
        }
    }
    targets
        .into_iter()
        .map(|(key, workload, admin)| {
            let (ready, series) = match (&answer, by_pod.remove(&key)) {
                (Err(e), _) => (false, Err(e.clone())),
                (Ok(_), Some((up, series))) => (up, Ok(series)),
                (Ok(_), None) => (false, Err("Prometheus has no series of this pod".to_string())),
            };
            Scraped { key, workload, admin, ready, series }
        })
        .collect()
}

/// An instant query (`GET /api/v1/query`), as HTTP/1.0 so that the answer
/// is not chunked.
async fn query(url: &str, promql: &str) -> Result<Value, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest =
        url.strip_prefix("http://").ok_or_else(|| format!("{url}: only http:// URLs are supported"))?;
    let (authority, prefix) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
    let authority = if authority.contains(':') { authority.to_string() } else { format!("{authority}:80") };
    let work = async {
        let mut sock = tokio::net::TcpStream::connect(&authority).await.map_err(|e| e.to_string())?;
        let path = format!("/{}api/v1/query?query={}", prefix_path(prefix), encode(promql));
        let head = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nAccept: application/json\r\n\r\n");
        sock.write_all(head.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        sock.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(buf)
    };
    let buf = tokio::time::timeout(std::time::Duration::from_secs(5), work)
        .await
        .map_err(|_| format!("{url}: no answer in 5s"))??;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    let value: Value =
        serde_json::from_str(body).map_err(|_| format!("{url}: answered {status}, not JSON"))?;
    if value["status"] != "success" {
        return Err(format!("{url}: {}", value["error"].as_str().unwrap_or(status)));
    }
    Ok(value)
}

fn prefix_path(prefix: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() { String::new() } else { format!("{prefix}/") }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_come_back_by_pod_without_prometheus_labels() {
        let answer: Value = serde_json::from_str(
            r#"{"status":"success","data":{"resultType":"vector","result":[
              {"metric":{"__name__":"response_total","job":"weft-proxy","instance":"127.0.77.10:4191","namespace":"demo","pod":"web-0","direction":"inbound","classification":"success"},"value":[1700000000.1,"42"]},
              {"metric":{"__name__":"up","job":"weft-proxy","instance":"127.0.77.10:4191","namespace":"demo","pod":"web-0"},"value":[1700000000.1,"1"]},
              {"metric":{"__name__":"up","job":"weft-proxy","instance":"127.0.77.11:4191","namespace":"demo","pod":"emoji-0"},"value":[1700000000.1,"0"]}
            ]}}"#,
        )
        .unwrap();
        let addr: SocketAddr = "127.0.0.1:4191".parse().unwrap();
        let targets = vec![
            (("demo".to_string(), "web-0".to_string()), "web".to_string(), addr),
            (("demo".to_string(), "emoji-0".to_string()), "emoji".to_string(), addr),
            (("demo".to_string(), "gone-0".to_string()), "gone".to_string(), addr),
        ];
        let scraped = from_answer(Ok(answer), targets);
        assert!(scraped[0].ready);
        let series = scraped[0].series.as_ref().unwrap();
        assert_eq!(series.len(), 1);
        assert_eq!(series[0].name, "response_total");
        assert_eq!(series[0].value, 42.0);
        assert_eq!(
            series[0].labels,
            vec![("classification".into(), "success".into()), ("direction".into(), "inbound".into())]
        );
        assert!(!scraped[1].ready && scraped[1].series.as_ref().unwrap().is_empty());
        assert!(scraped[2].series.is_err());
        assert!(selector().contains("outbound_http_route_.+|"), "{}", selector());
    }
}
