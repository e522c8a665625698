//! Measurements of a simulation: HDR latency histograms per operation, the per-second series,
//! the final table and its JSON form.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::workload::Op;

/// Latencies are recorded in microseconds, 1 µs to 60 s, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    Status(u16),
    Timeout,
    Failed,
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Status(s) if (200..300).contains(s))
    }
    fn label(&self) -> String {
        match self {
            Outcome::Status(s) => s.to_string(),
            Outcome::Timeout => "timeout".into(),
            Outcome::Failed => "failed".into(),
        }
    }
}

#[derive(Clone)]
struct OpWindow {
    latency: Histogram<u64>,
    ok: u64,
    errors: BTreeMap<String, u64>,
}

impl OpWindow {
    fn new() -> Self {
        OpWindow {
            latency: histogram(),
            ok: 0,
            errors: BTreeMap::new(),
        }
    }
    fn record(&mut self, latency: Duration, outcome: &Outcome) {
        let micros = (latency.as_micros() as u64).clamp(1, 60_000_000);
        let _ = self.latency.record(micros);
        if outcome.is_ok() {
            self.ok += 1;
        } else {
            *self.errors.entry(outcome.label()).or_default() += 1;
        }
    }
    fn total(&self) -> u64 {
        self.ok + self.errors.values().sum::<u64>()
    }
}

/// Collects every measured request; cheap to share between tasks.
pub struct Recorder {
    inner: Mutex<Windows>,
}

struct Windows {
    second: BTreeMap<Op, OpWindow>,
    total: BTreeMap<Op, OpWindow>,
}

/// One second of the run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecondSample {
    pub second: u64,
    pub requests: u64,
    pub errors: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// One row of the final table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpSummary {
    pub op: String,
    pub route: String,
    /// Requests per second asked for (open loop), or null (closed loop).
    pub target_rate: Option<f64>,
    pub achieved_rate: f64,
    pub requests: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub errors: u64,
    pub error_rate: f64,
    pub errors_by_status: BTreeMap<String, u64>,
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            inner: Mutex::new(Windows {
                second: BTreeMap::new(),
                total: BTreeMap::new(),
            }),
        }
    }
}

impl Recorder {
    pub fn record(&self, op: Op, latency: Duration, outcome: &Outcome) {
        let mut w = self.inner.lock();
        w.second
            .entry(op)
            .or_insert_with(OpWindow::new)
            .record(latency, outcome);
        w.total
            .entry(op)
            .or_insert_with(OpWindow::new)
            .record(latency, outcome);
    }

    /// Closes the current second and returns its summary over all operations.
    pub fn take_second(&self, second: u64) -> SecondSample {
        let windows = std::mem::take(&mut self.inner.lock().second);
        let mut all = histogram();
        let (mut requests, mut errors) = (0, 0);
        for w in windows.values() {
            let _ = all.add(&w.latency);
            requests += w.total();
            errors += w.errors.values().sum::<u64>();
        }
        SecondSample {
            second,
            requests,
            errors,
            p50_ms: ms(all.value_at_quantile(0.5)),
            p99_ms: ms(all.value_at_quantile(0.99)),
            max_ms: ms(all.max()),
        }
    }

    /// Drops everything recorded so far (end of warm-up).
    pub fn reset(&self) {
        let mut w = self.inner.lock();
        w.second.clear();
        w.total.clear();
    }

    pub fn summaries(&self, elapsed: Duration, target_rates: &BTreeMap<Op, f64>) -> Vec<OpSummary> {
        let w = self.inner.lock();
        w.total
            .iter()
            .map(|(op, window)| {
                let requests = window.total();
                let errors = window.errors.values().sum::<u64>();
                OpSummary {
                    op: op.name().into(),
                    route: op.route().into(),
                    target_rate: target_rates.get(op).copied(),
                    achieved_rate: requests as f64 / elapsed.as_secs_f64().max(1e-9),
                    requests,
                    p50_ms: ms(window.latency.value_at_quantile(0.5)),
                    p90_ms: ms(window.latency.value_at_quantile(0.9)),
                    p99_ms: ms(window.latency.value_at_quantile(0.99)),
                    max_ms: ms(window.latency.max()),
                    errors,
                    error_rate: if requests == 0 {
                        0.0
                    } else {
                        errors as f64 / requests as f64
                    },
                    errors_by_status: window.errors.clone(),
                }
            })
            .collect()
    }
}

/// Renders the final table.
pub fn table(rows: &[OpSummary]) -> String {
    let mut out = format!(
        "{:<8} {:<28} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>8}\n",
        "op", "route", "target/s", "achieved/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<8} {:<28} {:>9} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>7.2}%\n",
            r.op,
            r.route,
            r.target_rate
                .map(|t| format!("{t:.0}"))
                .unwrap_or_else(|| "closed".into()),
            r.achieved_rate,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.max_ms,
            r.error_rate * 100.0
        ));
    }
    out
}
