//! Golden metrics between two scrapes: how much each counter grew, and
//! success, failure and latency buckets summed from that growth.

use super::{Sample, Series, parse_le, quantile};
use std::collections::{BTreeMap, HashMap};

/// A series' name and labels.
type SeriesKey<'a> = (&'a str, &'a [(String, String)]);

/// How much each series of `new` that `keep` selects grew since `old`, as
/// Prometheus' `increase` takes it: a counter that went down was reset,
/// and all of its value is new.
pub(super) fn increases<'a>(
    old: &Sample,
    new: &'a Sample,
    keep: impl Fn(&Series) -> bool,
) -> Vec<(&'a Series, f64)> {
    let before: HashMap<SeriesKey<'_>, f64> = old
        .series
        .iter()
        .filter(|s| keep(s))
        .map(|s| ((s.name.as_str(), s.labels.as_slice()), s.value))
        .collect();
    new.series
        .iter()
        .filter(|s| keep(s))
        .map(|s| {
            let was = before.get(&(s.name.as_str(), s.labels.as_slice())).copied().unwrap_or(0.0);
            let grew = if s.value >= was { s.value - was } else { s.value };
            (s, grew)
        })
        .collect()
}

/// Responses and their latencies, summed over proxies and series.
#[derive(Default, Debug)]
pub(super) struct Golden {
    pub success: f64,
    pub failure: f64,
    /// Cumulative counts by bound (thousandths of a millisecond).
    pub buckets: BTreeMap<u64, f64>,
    /// The longest span summed (seconds), for rates.
    pub secs: f64,
}

impl Golden {
    /// Adds what `response_total` and `response_latency_ms_bucket` of
    /// `series` grew by.
    pub fn add(&mut self, series: &Series, grew: f64) {
        match series.name.as_str() {
            "response_total" => match series.label("classification") {
                Some("success") => self.success += grew,
                Some("failure") => self.failure += grew,
                _ => {}
            },
            "response_latency_ms_bucket" => {
                if let Some(le) = series.label("le").and_then(parse_le) {
                    *self.buckets.entry(le).or_default() += grew;
                }
            }
            _ => {}
        }
    }

    /// Adds the growth between two samples of one proxy, of the response
    /// series `keep` selects.
    pub fn add_between(&mut self, old: &Sample, new: &Sample, keep: impl Fn(&Series) -> bool) {
        self.secs = self.secs.max(new.at.duration_since(old.at).as_secs_f64());
        let golden = |s: &Series| {
            matches!(s.name.as_str(), "response_total" | "response_latency_ms_bucket") && keep(s)
        };
        for (series, grew) in increases(old, new, golden) {
            self.add(series, grew);
        }
    }

    pub fn total(&self) -> f64 {
        self.success + self.failure
    }

    pub fn success_rate(&self) -> Option<f64> {
        let total = self.total();
        (total > 0.0).then(|| self.success / total)
    }

    pub fn rps(&self) -> f64 {
        if self.secs > 0.0 { self.total() / self.secs } else { 0.0 }
    }

    pub fn latency_ms(&self, q: f64) -> Option<f64> {
        if self.total() > 0.0 { quantile(&self.buckets, q) } else { None }
    }
}

/// The sample `span` before the newest (or the oldest kept), and the
/// newest, among samples up to `until`.
pub(super) fn span_ending(
    samples: &std::collections::VecDeque<Sample>,
    until: usize,
    span: std::time::Duration,
) -> Option<(&Sample, &Sample)> {
    let new = samples.get(until)?;
    let old = samples.range(..until).find(|s| new.at.duration_since(s.at) <= span)?;
    Some((old, new))
}
