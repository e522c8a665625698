//! Per-user quotas of the HTTP edge: how many items a user may create per minute, and how large
//! an item or a job payload may be. (How many unfinished jobs a user may have is counted by the
//! store, see `Store::insert_job`.) Admins are exempt from the rate.
//!
//! The item rate is counted per web node (a cluster of N web nodes allows N times as many); its
//! memory stays bounded: a user's entry is dropped once its quota has refilled.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use uuid::Uuid;

use super::HttpLimits;
use crate::domain::item::check_item_size;
use crate::domain::{ItemPatch, NewItem, Principal};
use crate::error::{Error, Result};

/// Checks between two sweeps of users whose quota has refilled: the limiter holds at most the
/// users active in the last minute and this many more.
const SWEEP_EVERY: u64 = 4096;

pub struct Quotas {
    items: Option<DefaultKeyedRateLimiter<Uuid>>,
    checks: AtomicU64,
    max_item_bytes: usize,
    max_job_payload_bytes: usize,
}

impl Quotas {
    pub fn new(limits: &HttpLimits) -> Quotas {
        Quotas {
            items: NonZeroU32::new(limits.user_items_per_minute)
                .map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            checks: AtomicU64::new(0),
            max_item_bytes: limits.max_item_bytes,
            max_job_payload_bytes: limits.max_job_payload_bytes,
        }
    }

    /// Counts one item created by `who`: a 429 with `Retry-After` once they are over their rate.
    pub fn item_created(&self, who: &Principal) -> Result<()> {
        let Some(items) = &self.items else {
            return Ok(());
        };
        if who.admin {
            return Ok(());
        }
        let outcome = items.check_key(&who.user_id);
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            items.retain_recent();
            items.shrink_to_fit();
        }
        outcome.map_err(|not_until| {
            metrics::counter!("gorgon_quota_refusals_total", "quota" => "items_per_minute")
                .increment(1);
            Error::rate_limited(
                "you are creating items faster than your quota allows; slow down",
                not_until.wait_time_from(DefaultClock::default().now()),
            )
        })
    }

    /// A 413 for an item larger than `--max-item-bytes`.
    pub fn check_item(&self, item: &NewItem) -> Result<()> {
        self.check_item_size(item.size_bytes())
    }

    /// A 413 for a patch whose fields alone are larger than `--max-item-bytes`.
    pub fn check_patch(&self, patch: &ItemPatch) -> Result<()> {
        let size = patch.title.as_ref().map_or(0, String::len)
            + patch.body.as_ref().map_or(0, String::len)
            + patch
                .url
                .as_ref()
                .and_then(Option::as_ref)
                .map_or(0, String::len)
            + patch
                .keywords
                .as_ref()
                .map_or(0, |k| k.iter().map(String::len).sum())
            + patch.extra.as_ref().map_or(0, |e| e.to_json().len());
        self.check_item_size(size)
    }

    fn check_item_size(&self, size: usize) -> Result<()> {
        check_item_size(size, self.max_item_bytes)
    }

    /// A 413 for a job payload larger than `--max-job-payload-bytes` (as compact JSON).
    pub fn check_job_payload(&self, payload: &serde_json::Value) -> Result<()> {
        let size = json_bytes(payload);
        if size > self.max_job_payload_bytes {
            return Err(Error::PayloadTooLarge(format!(
                "the job payload is {size} bytes of JSON; at most {} are allowed",
                self.max_job_payload_bytes
            )));
        }
        Ok(())
    }
}

fn json_bytes(value: &serde_json::Value) -> usize {
    /// Counts what serde writes, without keeping it.
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}
