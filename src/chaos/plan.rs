//! The fault schedule of a chaos run, drawn from its seed alone: the same seed, duration,
//! topology and fault kinds give the same plan on any machine (ChaCha8, whose output is fixed by
//! its specification), so a failure found once can be replayed.
//!
//! A run opens with a quiet baseline (whose p99 every recovery is measured against), then splits
//! the rest into equal slots, one fault each: every chosen kind at least once, in a drawn order,
//! then drawn kinds for the remaining slots. A fault starts early in its slot, lasts a couple of
//! seconds, and the rest of the slot is the time the cluster has to recover.

use std::fmt;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::topology::{StoreKind, Topology};
use crate::bus::Role;

/// What a fault does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// `kill -9` a node, restart it after the fault's length.
    Kill,
    /// SIGSTOP a node, SIGCONT it after the fault's length (a hung peer).
    Pause,
    /// `kill -9` Redis, restart it (AOF on) after the fault's length.
    Redis,
    /// Kill the database: the PostgreSQL primary (the standby is promoted), or the embedded
    /// store's node (restarted).
    Db,
    /// Latency, dropped connections or a one-way black hole on a link, through the fault proxy.
    Net,
    /// SIGTERM a node (a rolling restart): it drains, exits, and is started again.
    Drain,
}

impl FaultKind {
    pub const ALL: [FaultKind; 6] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Redis,
        FaultKind::Db,
        FaultKind::Net,
        FaultKind::Drain,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Redis => "redis",
            FaultKind::Db => "db",
            FaultKind::Net => "net",
            FaultKind::Drain => "drain",
        }
    }

    pub fn parse_list(value: &str) -> Result<Vec<FaultKind>, String> {
        let mut kinds = Vec::new();
        for part in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let kind = FaultKind::ALL
                .into_iter()
                .find(|k| k.name() == part)
                .ok_or_else(|| {
                    format!("unknown fault {part:?} (kill, pause, redis, db, net, drain)")
                })?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        if kinds.is_empty() {
            return Err("name at least one fault".into());
        }
        Ok(kinds)
    }
}

/// The link a network fault is on: the nodes' connections to it go through a fault proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Link {
    Redis,
    Db,
}

/// What a network fault does to its link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum NetMode {
    /// Every chunk each way waits this long.
    Latency { ms: u64 },
    /// Open connections are cut, new ones closed at once.
    Drop,
    /// Requests vanish, connections stay open (a one-way partition).
    BlackHole,
}

/// One scheduled fault.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fault {
    /// 1-based position in the plan.
    pub n: usize,
    pub kind: FaultKind,
    /// A node's name, `redis`, `postgres`, or the link's name.
    pub target: String,
    /// From the start of the measured run.
    #[serde(with = "seconds")]
    pub at: Duration,
    #[serde(with = "seconds")]
    pub length: Duration,
    /// How long after the planned heal the cluster has to be back under the recovery threshold
    /// (the rest of the slot).
    #[serde(with = "seconds")]
    pub recovery_bound: Duration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net: Option<(Link, NetMode)>,
}

impl Fault {
    /// What happens, in words.
    pub fn describe(&self) -> String {
        let secs = self.length.as_secs_f64();
        match (self.kind, self.net) {
            (FaultKind::Kill, _) => format!("kill -9 {}, restart after {secs:.1} s", self.target),
            (FaultKind::Pause, _) => {
                format!("SIGSTOP {}, SIGCONT after {secs:.1} s", self.target)
            }
            (FaultKind::Redis, _) => format!("kill -9 redis, restart after {secs:.1} s"),
            (FaultKind::Db, _) if self.target == "postgres" => {
                format!("kill -9 the PostgreSQL primary, promote the standby after {secs:.1} s")
            }
            (FaultKind::Db, _) => format!(
                "kill -9 {} (the embedded store), restart after {secs:.1} s",
                self.target
            ),
            (FaultKind::Net, Some((link, mode))) => {
                let link = match link {
                    Link::Redis => "nodes -> redis",
                    Link::Db => "nodes -> postgres",
                };
                let what = match mode {
                    NetMode::Latency { ms } => format!("+{ms} ms latency"),
                    NetMode::Drop => "connections dropped".into(),
                    NetMode::BlackHole => "one-way black hole".into(),
                };
                format!("{what} on {link} for {secs:.1} s")
            }
            (FaultKind::Net, None) => format!("network fault for {secs:.1} s"),
            (FaultKind::Drain, _) => {
                format!(
                    "SIGTERM {} (drain), start again after it exits",
                    self.target
                )
            }
        }
    }

    /// A short label for the dashboard and the table.
    pub fn label(&self) -> String {
        format!("#{} {} {}", self.n, self.kind.name(), self.target)
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "#{:<2} at {:>6.1} s  {:<5}  {}",
            self.n,
            self.at.as_secs_f64(),
            self.kind.name(),
            self.describe()
        )
    }
}

/// The whole schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub seed: u64,
    #[serde(with = "seconds")]
    pub duration: Duration,
    /// The quiet opening whose latency is the baseline.
    #[serde(with = "seconds")]
    pub baseline: Duration,
    pub faults: Vec<Fault>,
}

/// Each fault gets a slot of about this long: a short fault, then time to recover.
const SLOT: Duration = Duration::from_secs(20);
/// The shortest slot that leaves a fault and its recovery room.
const MIN_SLOT: Duration = Duration::from_secs(8);

impl Plan {
    pub fn draw(
        seed: u64,
        duration: Duration,
        kinds: &[FaultKind],
        topology: &Topology,
    ) -> anyhow::Result<Plan> {
        anyhow::ensure!(!kinds.is_empty(), "no fault kinds chosen");
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let baseline = (duration.mul_f64(0.15)).clamp(Duration::from_secs(8), SLOT);
        let rest = duration.saturating_sub(baseline);
        let count = ((rest.as_secs_f64() / SLOT.as_secs_f64()) as usize).max(kinds.len());
        let slot = rest / count as u32;
        anyhow::ensure!(
            slot >= MIN_SLOT,
            "{} s is too short for {count} faults: give at least {} s (--duration)",
            duration.as_secs(),
            (baseline + MIN_SLOT * count as u32).as_secs()
        );
        let mut order: Vec<FaultKind> = kinds.to_vec();
        order.shuffle(&mut rng);
        while order.len() < count {
            order.push(kinds[rng.random_range(0..kinds.len())]);
        }
        // Nodes that may be killed, paused or drained: all but the embedded store's (its loss
        // is the `db` fault).
        let store_node = topology.embedded_store_node();
        let victims: Vec<&str> = topology
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != store_node)
            .map(|(_, n)| n.name.as_str())
            .collect();
        anyhow::ensure!(
            !victims.is_empty(),
            "no node may be killed in this topology"
        );
        let max_length = slot
            .mul_f64(0.3)
            .clamp(Duration::from_secs(2), Duration::from_secs(8));
        let mut faults = Vec::with_capacity(count);
        for (i, kind) in order.into_iter().enumerate() {
            let slot_start = baseline + slot * i as u32;
            let at = slot_start + slot.mul_f64(rng.random_range(0.0..0.1));
            let length = Duration::from_millis(
                rng.random_range(2000..=max_length.as_millis().max(2000) as u64),
            );
            let (target, net) = match kind {
                FaultKind::Kill | FaultKind::Pause | FaultKind::Drain => (
                    victims[rng.random_range(0..victims.len())].to_string(),
                    None,
                ),
                FaultKind::Redis => ("redis".to_string(), None),
                FaultKind::Db => match store_node {
                    Some(n) => (topology.nodes[n].name.clone(), None),
                    None => ("postgres".to_string(), None),
                },
                FaultKind::Net => {
                    let link = if topology.store == StoreKind::Postgres && rng.random_bool(0.5) {
                        Link::Db
                    } else {
                        Link::Redis
                    };
                    let mode = match rng.random_range(0..3) {
                        0 => NetMode::Latency {
                            ms: rng.random_range(50..=200),
                        },
                        1 => NetMode::Drop,
                        _ => NetMode::BlackHole,
                    };
                    let name = match link {
                        Link::Redis => "redis-link",
                        Link::Db => "db-link",
                    };
                    (name.to_string(), Some((link, mode)))
                }
            };
            let recovery_bound = (slot_start + slot).saturating_sub(at + length);
            faults.push(Fault {
                n: i + 1,
                kind,
                target,
                at,
                length,
                recovery_bound,
                net,
            });
        }
        // A fault of a role's only node would be an outage no cluster survives, not a fault:
        // refuse a topology where that can be drawn.
        for fault in &faults {
            if matches!(fault.kind, FaultKind::Kill | FaultKind::Pause) {
                for role in [Role::Web, Role::Auth, Role::App] {
                    let holders = topology.nodes.iter().filter(|n| n.has(role)).count();
                    let victim = topology.nodes.iter().find(|n| n.name == fault.target);
                    anyhow::ensure!(
                        holders > 1 || !victim.is_some_and(|v| v.has(role)),
                        "node {} is the only one running {}: killing it is not survivable",
                        fault.target,
                        role.name()
                    );
                }
            }
        }
        Ok(Plan {
            seed,
            duration,
            baseline,
            faults,
        })
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "plan for seed {}: {} s, baseline {} s, {} faults",
            self.seed,
            self.duration.as_secs(),
            self.baseline.as_secs(),
            self.faults.len()
        )?;
        for fault in &self.faults {
            writeln!(f, "  {fault}")?;
        }
        Ok(())
    }
}

/// Durations as seconds (a float) in the JSON report.
mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(seed: u64, secs: u64, topology: &str) -> anyhow::Result<Plan> {
        Plan::draw(
            seed,
            Duration::from_secs(secs),
            &FaultKind::ALL,
            &Topology::load(topology).unwrap(),
        )
    }

    #[test]
    fn the_same_seed_gives_the_same_plan() {
        assert_eq!(
            plan(7, 300, "postgres").unwrap(),
            plan(7, 300, "postgres").unwrap()
        );
        assert_ne!(
            plan(7, 300, "postgres").unwrap(),
            plan(8, 300, "postgres").unwrap()
        );
    }

    #[test]
    fn every_kind_once_in_slots_that_fit_the_run() {
        for topology in ["embedded", "postgres"] {
            for seed in 0..50 {
                let p = plan(seed, 60, topology).unwrap();
                assert_eq!(p.faults.len(), 6);
                for kind in FaultKind::ALL {
                    assert_eq!(p.faults.iter().filter(|f| f.kind == kind).count(), 1);
                }
                let mut end = p.baseline;
                for f in &p.faults {
                    assert!(f.at >= end, "{f} overlaps the one before");
                    assert!(f.length >= Duration::from_secs(2));
                    assert!(f.recovery_bound >= Duration::from_secs(4), "{f}");
                    end = f.at + f.length + f.recovery_bound;
                }
                assert!(end <= p.duration + Duration::from_millis(1));
                // The embedded store's node is only ever the `db` fault's target.
                if topology == "embedded" {
                    for f in &p.faults {
                        assert_eq!(f.target == "store", f.kind == FaultKind::Db, "{f}");
                    }
                }
            }
        }
        let long = plan(1, 300, "postgres").unwrap();
        assert!(long.faults.len() >= 13, "{long}");
    }

    #[test]
    fn too_short_runs_and_unknown_kinds_are_refused() {
        assert!(plan(1, 30, "embedded").is_err());
        assert!(FaultKind::parse_list("kill,nap").is_err());
        assert_eq!(
            FaultKind::parse_list("kill, db,kill").unwrap(),
            vec![FaultKind::Kill, FaultKind::Db]
        );
    }

    #[test]
    fn a_lone_node_of_a_role_is_not_killed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            "store = \"postgres\"\n\
             [[node]]\nname = \"f1\"\nroles = \"web,notify\"\n\
             [[node]]\nname = \"f2\"\nroles = \"web,notify\"\n\
             [[node]]\nname = \"b\"\nroles = \"auth,app,store,stats\"\n",
        )
        .unwrap();
        let topology = Topology::load(path.to_str().unwrap()).unwrap();
        let refused = (0..20).any(|seed| {
            Plan::draw(seed, Duration::from_secs(60), &[FaultKind::Kill], &topology).is_err()
        });
        assert!(refused);
    }
}
