//! Annotations: named marks on the dashboard's timeline — a fault `gorgon chaos` injects ("kill
//! front-1"), a deploy, a load step — from `start_ms` to `end_ms` (open while it goes on), which
//! `/dashboard` draws over its latency heatmap and throughput chart so that cause and effect show
//! side by side.
//!
//! They live with the node's stats ([`StatsHub`](super::history::StatsHub)): the stats role puts
//! them (`PutAnnotation`, from `PUT /api/v1/admin/annotations/{id}`) and answers those that
//! overlap a snapshot's window with `/api/v1/stats`. An annotation is upserted by its id, a short
//! name the caller chooses, so a fault is put once when it starts and again, with its end, when it
//! heals.
//!
//! **One view across a cluster.** Every node's heartbeat summary carries its annotations, and each
//! node merges its peers' into its own ring ([`Annotations::merge`]): of two versions of an id the
//! one with the higher [`Annotation::revision`] wins everywhere. So an annotation put through any
//! front is on every front's `/api/v1/stats` within a heartbeat or two, whichever stats instance
//! answers, and it outlives the node it was put to (a chaos run kills nodes).
//!
//! **Bounded.** A node keeps the [`CAPACITY`] most recently put annotations (by revision, ties by
//! id, so every node keeps the same ones); putting one more drops the one put longest ago. The
//! bound is a constant rather than a flag: the marks are for a person watching a run, a few dozen
//! at most, and the whole ring rides on every heartbeat, so its size is also the size of the
//! heartbeat's share (at most ~64 KiB).

use std::collections::HashMap;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, Result};

/// Annotations a node keeps (the newest by revision).
pub const CAPACITY: usize = 256;
/// Longest id, in characters of `[A-Za-z0-9_.-]`.
pub const MAX_ID_LEN: usize = 64;
/// Longest text, in characters.
pub const MAX_TEXT_CHARS: usize = 120;
/// The latest time accepted: the last millisecond of the year 9999.
pub const MAX_TIME_MS: i64 = 253_402_300_799_999;

/// A named span of time (or instant) on the dashboard's charts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Annotation {
    /// Chosen by the caller: 1 to 64 letters, digits, `_`, `.` or `-`.
    pub id: String,
    /// The label drawn on the charts: 1 to 120 characters, no control characters.
    pub text: String,
    /// When it began, in milliseconds since the Unix epoch.
    pub start_ms: i64,
    /// When it ended, in milliseconds since the Unix epoch; `null` while it goes on. Equal to
    /// `start_ms` for an instant (drawn as a line).
    pub end_ms: Option<i64>,
    /// When it was last put, in microseconds since the Unix epoch (raised where needed so each
    /// put of an id is newer than the last): of two versions of an id, nodes keep the higher.
    pub revision: u64,
}

impl Annotation {
    /// Whether it overlaps `[from_ms, to_ms]` (an open one reaches into the future).
    pub fn overlaps(&self, from_ms: i64, to_ms: i64) -> bool {
        self.start_ms <= to_ms && self.end_ms.unwrap_or(i64::MAX) >= from_ms
    }

    /// Which of two versions of an id wins: the higher revision; on a tie (two nodes put the
    /// same id in the same microsecond) the contents decide, so every node picks the same one.
    fn newer_than(&self, other: &Annotation) -> bool {
        (self.revision, self.end_ms, self.start_ms, &self.text)
            > (other.revision, other.end_ms, other.start_ms, &other.text)
    }

    /// The order of eviction: the lowest goes first.
    fn rank(&self) -> (u64, &str) {
        (self.revision, &self.id)
    }
}

/// Checks an annotation's id.
pub fn check_id(id: &str) -> Result<()> {
    let ok = (1..=MAX_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "id",
            format!("1 to {MAX_ID_LEN} letters, digits, '_', '.' or '-'"),
        ))
    }
}

/// Checks what a put carries: the id, the text and the times.
pub fn check(id: &str, text: &str, start_ms: i64, end_ms: Option<i64>) -> Result<()> {
    check_id(id)?;
    let chars = text.chars().count();
    if chars == 0 || chars > MAX_TEXT_CHARS || text.trim().is_empty() {
        return Err(Error::invalid(
            "text",
            format!("1 to {MAX_TEXT_CHARS} characters, not only spaces"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(Error::invalid(
            "text",
            "no control characters (line breaks, tabs, escapes)",
        ));
    }
    let time = 0..=MAX_TIME_MS;
    if !time.contains(&start_ms) {
        return Err(Error::invalid(
            "start_ms",
            "milliseconds since the Unix epoch (0 to the year 9999)",
        ));
    }
    match end_ms {
        Some(end) if !time.contains(&end) => Err(Error::invalid(
            "end_ms",
            "milliseconds since the Unix epoch (0 to the year 9999), or null while it goes on",
        )),
        Some(end) if end < start_ms => Err(Error::invalid(
            "end_ms",
            "must not be before start_ms (equal for an instant)",
        )),
        _ => Ok(()),
    }
}

/// A node's annotations: at most `capacity`, by id.
pub struct Annotations {
    capacity: usize,
    by_id: Mutex<HashMap<String, Annotation>>,
}

impl Default for Annotations {
    fn default() -> Self {
        Annotations::new(CAPACITY)
    }
}

impl Annotations {
    pub fn new(capacity: usize) -> Self {
        Annotations {
            capacity: capacity.max(1),
            by_id: Mutex::new(HashMap::new()),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Puts (inserts or replaces) the annotation `id`, checked first: nothing changes when it
    /// is refused. Returns it as kept, with its new revision.
    pub fn put(
        &self,
        id: &str,
        text: &str,
        start_ms: i64,
        end_ms: Option<i64>,
    ) -> Result<Annotation> {
        check(id, text, start_ms, end_ms)?;
        let mut by_id = self.by_id.lock();
        let now = unix_micros();
        let revision = by_id
            .get(id)
            .map_or(now, |old| now.max(old.revision.saturating_add(1)));
        let annotation = Annotation {
            id: id.to_string(),
            text: text.to_string(),
            start_ms,
            end_ms,
            revision,
        };
        by_id.insert(annotation.id.clone(), annotation.clone());
        evict(&mut by_id, self.capacity);
        Ok(annotation)
    }

    /// Takes in a peer's annotations: an id's newer version replaces an older one; one this node
    /// lacks is added unless the ring is full of newer ones. Versions that fail the checks (from
    /// a node of another build) are left out. Returns how many changed.
    pub fn merge(&self, theirs: &[Annotation]) -> usize {
        let mut by_id = self.by_id.lock();
        let mut changed = 0;
        for annotation in theirs {
            let newer = match by_id.get(&annotation.id) {
                Some(ours) => annotation.newer_than(ours),
                None => {
                    by_id.len() < self.capacity
                        || by_id
                            .values()
                            .map(Annotation::rank)
                            .min()
                            .is_some_and(|oldest| annotation.rank() > oldest)
                }
            };
            let valid = check(
                &annotation.id,
                &annotation.text,
                annotation.start_ms,
                annotation.end_ms,
            )
            .is_ok();
            if newer && valid {
                by_id.insert(annotation.id.clone(), annotation.clone());
                changed += 1;
            }
        }
        evict(&mut by_id, self.capacity);
        changed
    }

    /// Every annotation kept, by start (then id).
    pub fn all(&self) -> Vec<Annotation> {
        self.select(|_| true)
    }

    /// Those that overlap `[from_ms, to_ms]`, by start (then id).
    pub fn overlapping(&self, from_ms: i64, to_ms: i64) -> Vec<Annotation> {
        self.select(|a| a.overlaps(from_ms, to_ms))
    }

    pub fn len(&self) -> usize {
        self.by_id.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn select(&self, keep: impl Fn(&Annotation) -> bool) -> Vec<Annotation> {
        let mut chosen: Vec<Annotation> = self
            .by_id
            .lock()
            .values()
            .filter(|a| keep(a))
            .cloned()
            .collect();
        chosen.sort_by(|a, b| (a.start_ms, &a.id).cmp(&(b.start_ms, &b.id)));
        chosen
    }
}

/// The Unix time in microseconds (1 before 1970).
fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2))
        .unwrap_or(1)
        .max(1)
}

/// Drops the annotations put longest ago until at most `capacity` are left.
fn evict(by_id: &mut HashMap<String, Annotation>, capacity: usize) {
    while by_id.len() > capacity {
        let Some(oldest) = by_id
            .values()
            .min_by(|a, b| a.rank().cmp(&b.rank()))
            .map(|a| a.id.clone())
        else {
            return;
        };
        by_id.remove(&oldest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_texts_are_checked() {
        assert!(check("kill-front-1", "kill front-1", 1, None).is_ok());
        assert!(check("a.b_C-9", "x", 5, Some(5)).is_ok());
        let long = "x".repeat(MAX_ID_LEN + 1);
        for bad in ["", "has space", "slash/y", "ünï", long.as_str()] {
            let refused = check(bad, "text", 1, None).unwrap_err();
            assert!(
                matches!(&refused, Error::Invalid { field, .. } if field == "id"),
                "{bad:?}"
            );
        }
        let long = "é".repeat(MAX_TEXT_CHARS + 1);
        assert!(check("a", &"é".repeat(MAX_TEXT_CHARS), 1, None).is_ok());
        for bad in [
            "",
            "   ",
            "line\nbreak",
            "tab\there",
            "\u{1b}[31m",
            long.as_str(),
        ] {
            let refused = check("a", bad, 1, None).unwrap_err();
            assert!(
                matches!(&refused, Error::Invalid { field, .. } if field == "text"),
                "{bad:?}"
            );
        }
        let field = |r: Result<()>| match r {
            Err(Error::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(check("a", "t", -1, None)), "start_ms");
        assert_eq!(field(check("a", "t", 10, Some(9))), "end_ms");
        assert_eq!(field(check("a", "t", 10, Some(MAX_TIME_MS + 1))), "end_ms");
    }

    #[test]
    fn a_put_replaces_by_id_and_the_ring_keeps_the_newest() {
        let ring = Annotations::new(3);
        let first = ring.put("a", "kill a", 1_000, None).unwrap();
        let ended = ring.put("a", "kill a", 1_000, Some(2_000)).unwrap();
        assert!(ended.revision > first.revision);
        assert_eq!(ring.all(), vec![ended]);
        assert!(ring.put("b", "bad\ntext", 1_000, None).is_err());
        assert_eq!(ring.len(), 1, "a refused put changes nothing");
        for id in ["b", "c", "d"] {
            ring.put(id, id, 500, None).unwrap();
        }
        let ids: Vec<String> = ring.all().into_iter().map(|a| a.id).collect();
        assert_eq!(ids, ["b", "c", "d"], "the one put longest ago went");
        assert_eq!(ring.overlapping(0, 499), vec![]);
        assert_eq!(ring.overlapping(600, 700).len(), 3, "open ones go on");
    }

    #[test]
    fn merging_converges_on_the_newest_versions() {
        let (one, two) = (Annotations::new(2), Annotations::new(2));
        let started = one.put("x", "pause x", 10, None).unwrap();
        assert_eq!(two.merge(&one.all()), 1);
        let healed = two.put("x", "pause x", 10, Some(20)).unwrap();
        assert_eq!(one.merge(&two.all()), 1);
        assert_eq!(one.all(), vec![healed.clone()]);
        // The older version coming back changes nothing.
        assert_eq!(one.merge(&[started]), 0);
        assert_eq!(one.all(), vec![healed]);
        // Full of newer ones: an older newcomer is not taken, a newer one evicts the oldest.
        two.put("y", "y", 30, None).unwrap();
        let old = Annotation {
            id: "old".into(),
            text: "old".into(),
            start_ms: 1,
            end_ms: None,
            revision: 1,
        };
        assert_eq!(two.merge(&[old]), 0);
        one.put("z", "z", 40, None).unwrap();
        two.merge(&one.all());
        one.merge(&two.all());
        assert_eq!(one.all(), two.all());
        let ids: Vec<String> = one.all().into_iter().map(|a| a.id).collect();
        assert_eq!(ids, ["y", "z"]);
    }
}
