//! The targets weft-proxy is held to (issue 7), judged from one run: added
//! p50 and p99 below Envoy's and HAProxy's at every fixed rate, with and
//! without mutual TLS; less CPU per request than Envoy; under 15 MB peak
//! RSS per proxy.
//!
//! Each verdict compares the medians the table shows, and also says in how
//! many rounds weft's own figure was the lower one: a target met by the
//! median in 2 of 3 rounds is a lead within the machine's noise, one met in
//! every round is not.

use crate::{Figures, load::Protocol};

/// The peers weft has to beat.
const PEERS: [&str; 4] = ["envoy", "haproxy", "envoy-mtls", "haproxy-mtls"];

/// The weft a contender is compared with: mutual TLS (and policy, which
/// runs on it) beside weft-mtls, plaintext beside weft.
pub fn weft_doing_the_same_job(contender: &str) -> &'static str {
    if contender.ends_with("-mtls") || contender == "weft-authz" { "weft-mtls" } else { "weft" }
}

/// Peak RSS each weft sidecar stays under, in MB.
const RSS_LIMIT_MB: f64 = 15.0;

/// One fixed-rate point: its protocol and rate, and each contender's
/// figures round by round.
pub type Point<'a> = (Protocol, u32, Vec<(&'a str, Vec<Figures>)>);

pub struct Verdict {
    /// What is compared, e.g. `http/1.1 @ 1000/s added p99 vs haproxy`.
    target: String,
    /// weft's figure and the peer's (or the limit's).
    weft: f64,
    peer: f64,
    unit: &'static str,
    /// Rounds in which weft's figure was the lower, of the rounds both ran.
    ahead: Option<(usize, usize)>,
    met: bool,
}

impl Verdict {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "target": self.target, "weft": self.weft, "peer": self.peer, "unit": self.unit,
            "rounds_ahead": self.ahead.map(|(a, _)| a), "rounds": self.ahead.map(|(_, n)| n),
            "met": self.met,
        })
    }
}

/// Every target a run can judge: the peers it measured, at the points it ran.
pub fn judge(points: &[Point], rss_mb: &[(String, f64, f64)]) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    for (protocol, rate, contenders) in points {
        let rounds_of = |name: &str| contenders.iter().find(|(n, _)| *n == name).map(|(_, r)| r);
        for peer in PEERS {
            let weft = weft_doing_the_same_job(peer);
            let (Some(peer_rounds), Some(weft_rounds)) = (rounds_of(peer), rounds_of(weft)) else {
                continue;
            };
            let rounds = Rounds {
                weft: weft_rounds,
                peer: peer_rounds,
                medians: (Figures::median(weft_rounds), Figures::median(peer_rounds)),
            };
            let point = format!("{} @ {rate}/s", protocol.name());
            for (i, figure) in [(0, "added p50"), (1, "added p99")] {
                let added = |f: &Figures| f.added.map_or(f64::NAN, |a| a[i]);
                verdicts.push(rounds.compare(format!("{point} {figure} vs {peer}"), added, "ms"));
            }
            if peer.starts_with("envoy") {
                let cpu = |f: &Figures| f.cpu.map_or(f64::NAN, |(client, server)| client + server);
                verdicts.push(rounds.compare(
                    format!("{point} CPU per 10k requests (both sidecars) vs {peer}"),
                    cpu,
                    "s",
                ));
            }
        }
    }
    for (name, client, server) in rss_mb.iter().filter(|(n, _, _)| n.starts_with("weft")) {
        let peak = client.max(*server);
        verdicts.push(Verdict {
            target: format!("{name} peak RSS per sidecar under {RSS_LIMIT_MB} MB"),
            weft: peak,
            peer: RSS_LIMIT_MB,
            unit: "MB",
            ahead: None,
            met: peak < RSS_LIMIT_MB,
        });
    }
    verdicts
}

/// One peer's and its weft's figures at one point, round by round, and
/// their medians (what the table shows).
struct Rounds<'a> {
    weft: &'a [Figures],
    peer: &'a [Figures],
    medians: (Figures, Figures),
}

impl Rounds<'_> {
    /// Lower is better: the medians decide, the rounds say how firmly.
    fn compare(&self, target: String, figure: impl Fn(&Figures) -> f64, unit: &'static str) -> Verdict {
        let (w, p) = (figure(&self.medians.0), figure(&self.medians.1));
        let paired = self.weft.len().min(self.peer.len());
        let ahead = self.weft.iter().zip(self.peer).filter(|(w, p)| figure(w) < figure(p)).count();
        Verdict { target, weft: w, peer: p, unit, ahead: Some((ahead, paired)), met: w < p }
    }
}

pub fn print(verdicts: &[Verdict]) {
    if verdicts.is_empty() {
        return;
    }
    println!(
        "targets: weft's median beside the peer's; \"ahead\" counts the rounds in which weft's own figure was lower"
    );
    let width = verdicts.iter().map(|v| v.target.len()).max().unwrap_or(0);
    for v in verdicts {
        let ahead = v.ahead.map(|(a, n)| format!("  ahead in {a} of {n} rounds")).unwrap_or_default();
        println!(
            "  {:<8} {:<width$} weft {:>7.3} {:<2}  peer {:>7.3} {:<2}{ahead}",
            if v.met { "met" } else { "NOT met" },
            v.target,
            v.weft,
            v.unit,
            v.peer,
            v.unit
        );
    }
    let met = verdicts.iter().filter(|v| v.met).count();
    println!("{met} of {} targets met", verdicts.len());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(added_p50: f64, added_p99: f64, cpu: f64) -> Figures {
        Figures {
            rps: 1000.0,
            errors: 0,
            ms: [0.0; 4],
            added: Some([added_p50, added_p99, 0.0]),
            cpu: Some((cpu, cpu)),
        }
    }

    #[test]
    fn medians_decide_and_rounds_say_how_firmly() {
        let weft = vec![round(0.20, 0.30, 1.0), round(0.30, 0.20, 1.0), round(0.25, 0.50, 1.0)];
        let envoy = vec![round(0.60, 0.25, 3.0), round(0.70, 0.90, 3.0), round(0.65, 0.95, 3.0)];
        let haproxy = vec![round(0.24, 0.25, 1.0), round(0.22, 0.21, 1.0), round(0.26, 0.45, 1.0)];
        let points =
            vec![(Protocol::Http1, 1000, vec![("weft", weft), ("envoy", envoy), ("haproxy", haproxy)])];
        let rss = vec![("weft".to_string(), 8.8, 9.1), ("haproxy".to_string(), 15.0, 15.2)];
        let verdicts = judge(&points, &rss);
        let find = |t: &str| verdicts.iter().find(|v| v.target == t).unwrap_or_else(|| panic!("no {t}"));

        let p99 = find("http/1.1 @ 1000/s added p99 vs envoy");
        assert!(p99.met);
        assert_eq!(p99.ahead, Some((2, 3)), "round one's p99 was envoy's");
        let p50 = find("http/1.1 @ 1000/s added p50 vs haproxy");
        assert!(!p50.met, "weft's median p50 0.25 is not below haproxy's 0.24");
        assert_eq!(p50.ahead, Some((2, 3)), "though weft was lower in rounds one and three");
        assert!(find("http/1.1 @ 1000/s CPU per 10k requests (both sidecars) vs envoy").met);
        assert!(verdicts.iter().all(|v| !v.target.contains("CPU") || v.target.contains("envoy")));
        assert!(find("weft peak RSS per sidecar under 15 MB").met);
        // Peers not in the run (the mTLS ones here) are not judged.
        assert!(verdicts.iter().all(|v| !v.target.contains("mtls")));
        assert_eq!(verdicts.len(), 6);
    }

    #[test]
    fn mutual_tls_and_policy_are_compared_with_weft_mtls() {
        assert_eq!(weft_doing_the_same_job("haproxy-mtls"), "weft-mtls");
        assert_eq!(weft_doing_the_same_job("linkerd2-proxy-mtls"), "weft-mtls");
        assert_eq!(weft_doing_the_same_job("weft-authz"), "weft-mtls");
        assert_eq!(weft_doing_the_same_job("envoy"), "weft");
    }

    #[test]
    fn a_sidecar_over_the_limit_fails_the_memory_target() {
        let verdicts = judge(&[], &[("weft-mtls".to_string(), 11.0, 15.5)]);
        assert_eq!(verdicts.len(), 1);
        assert!(!verdicts[0].met);
        assert_eq!(verdicts[0].weft, 15.5);
    }
}
