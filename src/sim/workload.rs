//! What simulated clients do: the operations, their mix, and how each one is sent.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use rand::seq::IndexedRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use bytes::Bytes;
use http::{Method, StatusCode};

use super::connections::{Connections, Reply};
use super::report::Outcome;

/// One kind of request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// A random user's 10 newest items (`/info/{uid}`, the original system's test).
    Read,
    /// A new item by one of the writer accounts.
    Write,
    /// A keyword search.
    Search,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Search => "search",
        }
    }
    pub fn route(self) -> &'static str {
        match self {
            Op::Read => "GET /info/{uid}",
            Op::Write => "POST /api/v1/items",
            Op::Search => "GET /api/v1/items?q=",
        }
    }
}

/// Relative weights of the operations, e.g. `read=90,write=5,search=5`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mix {
    weights: Vec<(Op, u32)>,
    total: u32,
}

impl Mix {
    pub fn parse(value: &str) -> Result<Mix, String> {
        let mut weights = Vec::new();
        for part in value.split(',').filter(|p| !p.trim().is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected op=weight"))?;
            let op = match name.trim() {
                "read" => Op::Read,
                "write" => Op::Write,
                "search" => Op::Search,
                other => return Err(format!("unknown op {other:?} (read, write, search)")),
            };
            let weight: u32 = weight
                .trim()
                .parse()
                .map_err(|_| format!("{part:?}: weight must be a whole number"))?;
            if weight > 0 {
                weights.push((op, weight));
            }
        }
        let total = weights.iter().map(|(_, w)| w).sum();
        if total == 0 {
            return Err("the mix needs at least one op with a positive weight".into());
        }
        Ok(Mix { weights, total })
    }

    pub fn pick(&self, rng: &mut impl Rng) -> Op {
        let mut ticket = rng.random_range(0..self.total);
        for (op, weight) in &self.weights {
            if ticket < *weight {
                return *op;
            }
            ticket -= weight;
        }
        self.weights[0].0
    }

    pub fn share(&self, op: Op) -> f64 {
        self.weights
            .iter()
            .find(|(o, _)| *o == op)
            .map(|(_, w)| *w as f64 / self.total as f64)
            .unwrap_or(0.0)
    }

    pub fn ops(&self) -> impl Iterator<Item = Op> + '_ {
        self.weights.iter().map(|(op, _)| *op)
    }
}

/// A write that got a 2xx: what the invariant checker expects to read back.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AckedWrite {
    pub id: String,
    pub title: String,
    pub body: String,
}

const SEARCH_WORDS: &[&str] = &[
    "river", "harbor", "lantern", "comet", "meadow", "station", "copper",
];

/// Everything a simulated client needs to send requests.
pub struct Workload {
    pub connections: Connections,
    pub user_ids: Vec<Uuid>,
    pub writer_tokens: Vec<String>,
    pub acked: Mutex<Vec<AckedWrite>>,
    next_write: AtomicU64,
}

impl Workload {
    pub fn new(
        connections: Connections,
        user_ids: Vec<Uuid>,
        writer_tokens: Vec<String>,
    ) -> Arc<Self> {
        Arc::new(Workload {
            connections,
            user_ids,
            writer_tokens,
            acked: Mutex::new(Vec::new()),
            next_write: AtomicU64::new(0),
        })
    }

    /// Sends one request of kind `op` and says how it ended.
    pub async fn execute(&self, op: Op) -> Outcome {
        let (path, token, write) = {
            let mut rng = rand::rng();
            match op {
                Op::Read => {
                    let uid = self.user_ids.choose(&mut rng).copied().unwrap_or_default();
                    (format!("/info/{uid}"), None, None)
                }
                Op::Search => {
                    let word = SEARCH_WORDS.choose(&mut rng).unwrap_or(&"river");
                    (format!("/api/v1/items?q={word}"), None, None)
                }
                Op::Write => {
                    let n = self.next_write.fetch_add(1, Ordering::Relaxed);
                    let token = self
                        .writer_tokens
                        .choose(&mut rng)
                        .cloned()
                        .unwrap_or_default();
                    let title = format!("sim write {n} {}", rng.random::<u32>());
                    let body = format!("written by the simulator, write number {n}");
                    (
                        "/api/v1/items".to_string(),
                        Some(token),
                        Some((title, body)),
                    )
                }
            }
        };
        let json = write.as_ref().map(|(title, body)| {
            Bytes::from(json!({"title": title, "body": body, "keywords": ["sim"]}).to_string())
        });
        let method = if write.is_some() {
            Method::POST
        } else {
            Method::GET
        };
        match self
            .connections
            .send(method, &path, token.as_deref(), json)
            .await
        {
            Reply::Answered(status, bytes) => {
                if let (Some((title, body)), StatusCode::CREATED) = (write, status) {
                    match serde_json::from_slice::<serde_json::Value>(&bytes) {
                        Ok(created) => {
                            if let Some(id) = created["id"].as_str() {
                                self.acked.lock().push(AckedWrite {
                                    id: id.to_string(),
                                    title,
                                    body,
                                });
                            }
                        }
                        Err(_) => return Outcome::Failed,
                    }
                }
                Outcome::Status(status.as_u16())
            }
            Reply::TimedOut => Outcome::Timeout,
            Reply::Broken => Outcome::Failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_pick_by_weight() {
        let mix = Mix::parse("read=90, write=10, search=0").unwrap();
        assert_eq!(mix.ops().collect::<Vec<_>>(), vec![Op::Read, Op::Write]);
        assert!((mix.share(Op::Write) - 0.1).abs() < 1e-9);
        let mut rng = rand::rng();
        let writes = (0..10_000)
            .filter(|_| mix.pick(&mut rng) == Op::Write)
            .count();
        assert!(
            (700..1300).contains(&writes),
            "about 10% writes, got {writes}"
        );
        assert!(Mix::parse("read=0").is_err());
        assert!(Mix::parse("reed=5").is_err());
        assert!(Mix::parse("read=x").is_err());
    }
}
