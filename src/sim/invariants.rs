//! The simulator's own checks at the end of a run, printed as PASS/FAIL with counts.

use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::workload::AckedWrite;

/// One invariant and what was found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.passed { "PASS" } else { "FAIL" };
        write!(f, "{verdict}  {}: {}", self.name, self.detail)
    }
}

/// Every write that got a 2xx can be read back with the content that was written.
pub async fn acknowledged_writes_readable(
    client: &reqwest::Client,
    base: &str,
    acked: &[AckedWrite],
    concurrency: usize,
) -> Check {
    let results: Vec<Result<(), String>> = futures::stream::iter(acked)
        .map(|w| async move {
            let url = format!("{base}/api/v1/items/{}", w.id);
            // A read that could not be sent (a connection a balancer closed) says nothing about
            // the write: it is sent again, a few times, before it counts.
            let mut attempt = 0;
            let resp = loop {
                attempt += 1;
                match client.get(&url).send().await {
                    Ok(resp) => break resp,
                    Err(e) if attempt < 3 => {
                        tracing::debug!(error = %e, "read-back not sent; again");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    Err(e) => return Err(format!("{}: {e}", w.id)),
                }
            };
            if resp.status() != reqwest::StatusCode::OK {
                return Err(format!("{}: status {}", w.id, resp.status()));
            }
            let item: serde_json::Value =
                resp.json().await.map_err(|e| format!("{}: {e}", w.id))?;
            if item["title"] != w.title.as_str() || item["body"] != w.body.as_str() {
                return Err(format!("{}: content differs from what was written", w.id));
            }
            Ok(())
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    Check {
        name: "acknowledged writes readable".into(),
        passed: failures.is_empty(),
        detail: if failures.is_empty() {
            format!("{} of {} read back as written", acked.len(), acked.len())
        } else {
            format!(
                "{} of {} missing or wrong, e.g. {}",
                failures.len(),
                acked.len(),
                failures
                    .iter()
                    .take(3)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        },
    }
}

/// Every request sent got an answer (a status), none timed out or broke.
pub fn all_answered(sent: u64, unanswered: u64) -> Check {
    Check {
        name: "every request answered".into(),
        passed: unanswered == 0,
        detail: format!(
            "{} sent, {} without an answer (timeout or broken connection)",
            sent, unanswered
        ),
    }
}

/// No server error (5xx) in the run.
pub fn no_server_errors(server_errors: u64, by_status: &str) -> Check {
    Check {
        name: "no server errors".into(),
        passed: server_errors == 0,
        detail: if by_status.is_empty() {
            "no error status at all".into()
        } else {
            format!("{server_errors} 5xx; errors by status: {by_status}")
        },
    }
}
