//! What a chaos run measured: every request's send time, latency and outcome; each fault's
//! window, failures by status, p99 before and during, and time to recover; the invariants; the
//! timeline. Printed as tables, and written as JSON with `--json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

use super::plan::{Fault, Plan};
pub use crate::sim::invariants::Check;
use crate::sim::report::Outcome;

/// One request: when it was meant to be sent (from the run's start), how long it took, how it
/// ended.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub at_ms: u32,
    pub latency_us: u32,
    /// The HTTP status, or [`TIMEOUT`] / [`BROKEN`].
    pub status: u16,
}

/// No answer within the deadline.
pub const TIMEOUT: u16 = 0;
/// The connection broke without an answer.
pub const BROKEN: u16 = 1;

impl Sample {
    pub fn new(at: Duration, latency: Duration, outcome: &Outcome) -> Sample {
        Sample {
            at_ms: at.as_millis().min(u32::MAX as u128) as u32,
            latency_us: latency.as_micros().min(u32::MAX as u128) as u32,
            status: match outcome {
                Outcome::Status(s) => *s,
                Outcome::Timeout => TIMEOUT,
                Outcome::Failed => BROKEN,
            },
        }
    }

    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    fn label(&self) -> String {
        match self.status {
            TIMEOUT => "timeout".into(),
            BROKEN => "broken".into(),
            s => s.to_string(),
        }
    }
}

/// Every request of the run, shared by the load's tasks.
#[derive(Default)]
pub struct RequestLog {
    samples: Mutex<Vec<Sample>>,
}

impl RequestLog {
    pub fn push(&self, sample: Sample) {
        self.samples.lock().push(sample);
    }

    pub fn sorted(&self) -> Vec<Sample> {
        let mut samples = self.samples.lock().clone();
        samples.sort_by_key(|s| s.at_ms);
        samples
    }
}

/// p99 in milliseconds of the samples in `[from, to)` (seconds); `None` when there are none.
fn p99_ms(samples: &[Sample], from: f64, to: f64) -> Option<f64> {
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).ok()?;
    let mut any = false;
    for s in in_window(samples, from, to) {
        let _ = histogram.record(u64::from(s.latency_us).max(1));
        any = true;
    }
    any.then(|| histogram.value_at_quantile(0.99) as f64 / 1000.0)
}

fn in_window(samples: &[Sample], from: f64, to: f64) -> &[Sample] {
    let (from, to) = ((from * 1000.0) as u32, (to.max(from) * 1000.0) as u32);
    let start = samples.partition_point(|s| s.at_ms < from);
    let end = samples.partition_point(|s| s.at_ms < to);
    &samples[start..end.max(start)]
}

/// When a fault actually started and healed (seconds from the run's start), as done.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub started_s: f64,
    pub healed_s: f64,
    /// What the heal did or found (e.g. the drain's exit time), or why it failed.
    pub note: String,
    pub healed: bool,
}

/// One row of the per-fault table.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRow {
    #[serde(flatten)]
    pub fault: Fault,
    pub what: String,
    pub applied: Applied,
    pub requests: u64,
    pub failed_by_status: BTreeMap<String, u64>,
    pub p99_before_ms: f64,
    pub p99_during_ms: Option<f64>,
    /// Seconds from the heal until a window of requests all succeeded under the threshold.
    pub recovered_after_s: Option<f64>,
    pub recovery_bound_s: f64,
}

/// A moment of the run.
#[derive(Debug, Clone, Serialize)]
pub struct TimelineEvent {
    pub t_s: f64,
    pub event: String,
}

/// One second of the load, by when its requests were due.
#[derive(Debug, Clone, Serialize)]
pub struct Second {
    pub second: u32,
    pub requests: u64,
    pub errors: u64,
    pub p99_ms: f64,
}

/// The load second by second.
pub fn per_second(samples: &[Sample]) -> Vec<Second> {
    let last = samples.last().map(|s| s.at_ms / 1000).unwrap_or(0);
    (0..=last)
        .map(|second| {
            let (from, to) = (f64::from(second), f64::from(second + 1));
            let window = in_window(samples, from, to);
            Second {
                second,
                requests: window.len() as u64,
                errors: window.iter().filter(|s| !s.ok()).count() as u64,
                p99_ms: p99_ms(samples, from, to).unwrap_or(0.0),
            }
        })
        .collect()
}

/// Everything a run found; `--json` writes this.
#[derive(Debug, Clone, Serialize)]
pub struct ChaosReport {
    pub topology: String,
    pub plan: Plan,
    pub rate: f64,
    pub requests: u64,
    pub baseline_p99_ms: f64,
    /// A window is recovered when all its requests succeeded and their p99 is at most this.
    pub recovery_threshold_ms: f64,
    pub faults: Vec<FaultRow>,
    pub invariants: Vec<Check>,
    pub timeline: Vec<TimelineEvent>,
    pub series: Vec<Second>,
    /// Fault marks put on the dashboards, and those the cluster took (a start mark put while
    /// the stats role's node is down is lost; its end mark then puts the whole band).
    pub marks_sent: u64,
    pub marks_taken: u64,
    pub passed: bool,
}

/// Length of the window that must be clean for a fault to count as recovered.
const RECOVERY_WINDOW: f64 = 2.0;
/// Step between the windows tried.
const RECOVERY_STEP: f64 = 0.25;

/// The per-fault rows and the recovery invariant.
pub fn analyse(
    plan: &Plan,
    applied: &[Applied],
    samples: &[Sample],
) -> (f64, f64, Vec<FaultRow>, Check) {
    // The first seconds warm the connections and caches: not part of the baseline.
    let baseline_from = (plan.baseline.as_secs_f64() * 0.25).min(3.0);
    let baseline = p99_ms(samples, baseline_from, plan.baseline.as_secs_f64()).unwrap_or(0.0);
    let threshold = baseline * 2.0;
    let mut rows = Vec::new();
    for (fault, applied) in plan.faults.iter().zip(applied) {
        let bound = fault.recovery_bound.as_secs_f64();
        let window_end = applied.healed_s + bound;
        let mut failed_by_status = BTreeMap::new();
        let window = in_window(samples, applied.started_s, window_end);
        for s in window.iter().filter(|s| !s.ok()) {
            *failed_by_status.entry(s.label()).or_default() += 1;
        }
        let mut recovered = None;
        let mut t = applied.healed_s;
        while applied.healed && t + RECOVERY_WINDOW <= window_end + 1e-9 {
            let w = in_window(samples, t, t + RECOVERY_WINDOW);
            let clean = !w.is_empty() && w.iter().all(Sample::ok);
            if clean && p99_ms(samples, t, t + RECOVERY_WINDOW).is_some_and(|p| p <= threshold) {
                recovered = Some(t - applied.healed_s);
                break;
            }
            t += RECOVERY_STEP;
        }
        rows.push(FaultRow {
            fault: fault.clone(),
            what: fault.describe(),
            applied: applied.clone(),
            requests: window.len() as u64,
            failed_by_status,
            p99_before_ms: baseline,
            p99_during_ms: p99_ms(samples, applied.started_s, applied.healed_s),
            recovered_after_s: recovered,
            recovery_bound_s: bound,
        });
    }
    let late: Vec<String> = rows
        .iter()
        .filter(|r| r.recovered_after_s.is_none())
        .map(|r| r.fault.label())
        .collect();
    let slowest = rows
        .iter()
        .filter_map(|r| r.recovered_after_s)
        .fold(0.0f64, f64::max);
    let check = Check {
        name: "back under 2 x baseline p99 after every fault".into(),
        passed: late.is_empty() && baseline > 0.0,
        detail: if late.is_empty() {
            format!(
                "baseline p99 {baseline:.2} ms; every fault recovered ({RECOVERY_WINDOW:.0} s \
                 of clean requests at p99 <= {threshold:.2} ms) within its bound; slowest {slowest:.2} s"
            )
        } else {
            format!(
                "not recovered within the bound: {} (threshold p99 {threshold:.2} ms)",
                late.join(", ")
            )
        },
    };
    (baseline, threshold, rows, check)
}

/// A request in flight on a front at the instant it is killed was sent at most this long after
/// the planned kill (the kill follows the plan by milliseconds).
const KILL_SLACK_MS: u32 = 100;

/// Every request got an answer (a status, even an error) within its deadline.
///
/// Except a request in flight on a front at the instant that front was killed (`front_kills`,
/// milliseconds from the start): nothing is left to answer it, and HAProxy, which cannot know
/// whether a request sent on a reused connection was applied, closes the client's connection as
/// the front's was closed and leaves the retry to the client. Those are counted, not failed; a
/// cut at any other moment fails.
pub fn all_answered(samples: &[Sample], deadline: Duration, front_kills: &[u32]) -> Check {
    let in_flight_at_kill = |s: &Sample| {
        let answered_at = u64::from(s.at_ms) + u64::from(s.latency_us / 1000);
        front_kills.iter().any(|&kill| {
            s.at_ms <= kill.saturating_add(KILL_SLACK_MS) && answered_at >= u64::from(kill)
        })
    };
    let timeouts = samples.iter().filter(|s| s.status == TIMEOUT).count();
    let (killed, broken): (Vec<&Sample>, Vec<&Sample>) = samples
        .iter()
        .filter(|s| s.status == BROKEN)
        .partition(|s| in_flight_at_kill(s));
    let slowest = samples.iter().map(|s| s.latency_us).max().unwrap_or(0) as f64 / 1e6;
    let examples: Vec<String> = samples
        .iter()
        .filter(|s| s.status == TIMEOUT || (s.status == BROKEN && !in_flight_at_kill(s)))
        .take(5)
        .map(|s| format!("{} sent at {:.1} s", s.label(), f64::from(s.at_ms) / 1000.0))
        .collect();
    let examples = if examples.is_empty() {
        String::new()
    } else {
        format!(" ({})", examples.join(", "))
    };
    let killed = match killed.len() {
        0 => String::new(),
        n => format!(" ({n} more cut: in flight on a front at the instant it was killed)"),
    };
    Check {
        name: "every request answered within its deadline".into(),
        passed: timeouts == 0 && broken.is_empty() && !samples.is_empty(),
        detail: format!(
            "{} requests: {timeouts} without an answer within {} s, {} cut without an \
             answer{examples}{killed}; slowest answer {slowest:.2} s",
            samples.len(),
            deadline.as_secs_f64(),
            broken.len()
        ),
    }
}

impl ChaosReport {
    /// The per-fault table, the invariants and the verdict.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "== faults ({} requests at {:.0} req/s; baseline p99 {:.2} ms, recovered = {:.0} s of \
             clean requests at p99 <= {:.2} ms)",
            self.requests,
            self.rate,
            self.baseline_p99_ms,
            RECOVERY_WINDOW,
            self.recovery_threshold_ms
        );
        let _ = writeln!(
            out,
            "{:<24} {:>13} {:>8}  {:<26} {:>11} {:>11}  recovered in",
            "fault", "window (s)", "requests", "failed (by status)", "p99 before", "p99 during",
        );
        for row in &self.faults {
            let failed = if row.failed_by_status.is_empty() {
                "none".to_string()
            } else {
                row.failed_by_status
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let during = row
                .p99_during_ms
                .map(|p| format!("{p:.1} ms"))
                .unwrap_or_else(|| "-".into());
            let recovered = match row.recovered_after_s {
                Some(s) => format!("{s:.2} s (bound {:.1} s)", row.recovery_bound_s),
                None if !row.applied.healed => format!("not healed: {}", row.applied.note),
                None => format!("not within {:.1} s", row.recovery_bound_s),
            };
            let _ = writeln!(
                out,
                "{:<24} {:>13} {:>8}  {:<26} {:>8.1} ms {:>11}  {}",
                row.fault.label(),
                format!("{:.1}-{:.1}", row.applied.started_s, row.applied.healed_s),
                row.requests,
                failed,
                row.p99_before_ms,
                during,
                recovered
            );
            let _ = writeln!(out, "{:<24} {}", "", row.what);
        }
        let _ = writeln!(out, "== invariants");
        for check in &self.invariants {
            let _ = writeln!(out, "{check}");
        }
        let _ = writeln!(out, "RESULT: {}", if self.passed { "PASS" } else { "FAIL" });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::plan::FaultKind;
    use crate::chaos::topology::Topology;

    fn sample(at_ms: u32, latency_ms: u32, status: u16) -> Sample {
        Sample {
            at_ms,
            latency_us: latency_ms * 1000,
            status,
        }
    }

    #[test]
    fn recovery_is_the_first_clean_window_after_the_heal() {
        let plan = Plan::draw(
            3,
            Duration::from_secs(60),
            &FaultKind::ALL,
            &Topology::load("embedded").unwrap(),
        )
        .unwrap();
        let first = &plan.faults[0];
        let (start, heal) = (
            first.at.as_secs_f64(),
            (first.at + first.length).as_secs_f64(),
        );
        // 1 ms everywhere; 502s and slow answers from the fault until 1 s after its heal.
        let mut samples = Vec::new();
        for ms in (0..60_000).step_by(10) {
            let t = ms as f64 / 1000.0;
            let bad = t >= start && t < heal + 1.0;
            samples.push(if bad {
                sample(ms, 50, if ms % 100 == 0 { 502 } else { 200 })
            } else {
                sample(ms, 1, 200)
            });
        }
        let applied: Vec<Applied> = plan
            .faults
            .iter()
            .map(|f| Applied {
                started_s: f.at.as_secs_f64(),
                healed_s: (f.at + f.length).as_secs_f64(),
                note: String::new(),
                healed: true,
            })
            .collect();
        let (baseline, threshold, rows, check) = analyse(&plan, &applied, &samples);
        assert_eq!(baseline, 1.0);
        assert_eq!(threshold, 2.0);
        assert!(check.passed, "{check}");
        let r = rows[0].recovered_after_s.unwrap();
        assert!((1.0..=1.25).contains(&r), "{r}");
        assert!(rows[0].failed_by_status["502"] > 0);
        assert!(rows[0].p99_during_ms.unwrap() >= 50.0);
        assert_eq!(rows[1].recovered_after_s, Some(0.0));

        // Never clean again after the first fault: every row from there fails.
        for s in samples
            .iter_mut()
            .filter(|s| s.at_ms as f64 / 1000.0 >= start)
        {
            s.status = 503;
        }
        let (_, _, rows, check) = analyse(&plan, &applied, &samples);
        assert!(!check.passed);
        assert!(rows.iter().all(|r| r.recovered_after_s.is_none()));
    }

    #[test]
    fn unanswered_requests_fail_the_answer_invariant() {
        let fine = vec![sample(0, 1, 200), sample(1, 1, 503)];
        assert!(all_answered(&fine, Duration::from_secs(10), &[]).passed);
        let cut = vec![sample(0, 1, 200), sample(1, 1, BROKEN)];
        assert!(!all_answered(&cut, Duration::from_secs(10), &[]).passed);
        let late = vec![sample(0, 1, TIMEOUT)];
        assert!(!all_answered(&late, Duration::from_secs(10), &[]).passed);
    }

    #[test]
    fn only_a_cut_in_flight_at_a_front_kill_is_excused() {
        let deadline = Duration::from_secs(10);
        // Sent 20 ms before the kill at 5,000 ms, cut 30 ms later: in flight on the killed front.
        let at_kill = vec![sample(4_980, 50, BROKEN)];
        let check = all_answered(&at_kill, deadline, &[5_000]);
        assert!(check.passed, "{}", check.detail);
        assert!(check.detail.contains("1 more cut"), "{}", check.detail);
        // Cut before the kill, or sent well after it: a defect.
        assert!(!all_answered(&[sample(4_000, 50, BROKEN)], deadline, &[5_000]).passed);
        assert!(!all_answered(&[sample(6_000, 5, BROKEN)], deadline, &[5_000]).passed);
        // A timeout is never excused.
        assert!(!all_answered(&[sample(4_990, 10_000, TIMEOUT)], deadline, &[5_000]).passed);
    }
}
