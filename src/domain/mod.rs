//! Validated domain types.
//!
//! Everything that comes from outside (HTTP bodies, provider payloads) is turned into these types by
//! a `parse` function at the edge, so invalid data cannot exist past it: a `UserName` is never
//! empty, an `Email` is always lower-case and well-formed, an item's keywords are always bounded.

mod fields;
pub mod item;
pub mod item_list;
pub mod job;
pub mod page;
pub mod password;
pub mod search;
pub mod token;
pub mod user;

pub use fields::{Extra, Location};
pub use item::{Item, ItemPatch, NewItem};
pub use item_list::ItemList;
pub use job::{Job, JobOutcome, JobState, NewJob};
pub use page::Page;
pub use search::SearchQuery;
pub use token::{Principal, Token, TokenHash};
pub use user::{Email, NewUser, User, UserInput, UserName, UserPatch, UserPatchInput};

use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

/// A fresh time-ordered id (UUIDv7): inserts append to the key order and "newest first" follows it.
pub fn new_id() -> Uuid {
    Uuid::now_v7()
}

/// A time-ordered id for a given instant (used by seeding to spread items over the past).
/// Its random bits come from the thread's fast generator, not a system call per id.
pub fn id_at(ts: DateTime<Utc>) -> Uuid {
    let random: [u8; 10] = rand::random();
    uuid::Builder::from_unix_timestamp_millis(ts.timestamp_millis().max(0) as u64, &random)
        .into_uuid()
}

/// Milliseconds since the Unix epoch, the storage form of timestamps.
pub fn to_millis(ts: DateTime<Utc>) -> i64 {
    ts.timestamp_millis()
}

pub fn from_millis(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// Now, truncated to milliseconds so that what is stored equals what was returned.
pub fn now() -> DateTime<Utc> {
    from_millis(Utc::now().timestamp_millis())
}
