//! A user's newest items, held in memory by the embedded store, so the platform's hottest read
//! (a user's first page: `/info/{uid}`, `/api/v1/users/{id}/items`) does not reach the database.
//!
//! Why SQLite's own page cache is not enough: in WAL mode a reader connection drops its whole
//! page cache whenever a write has committed since its last read (SQLite cannot tell which pages
//! changed). Under the provider's 1,000 inserts/s that was every read, so each one walked the
//! B-tree from the file again.
//!
//! Consistency, with the writer thread as the only writer:
//! - after a batch commits, and before any write of the batch is answered, the writer
//!   invalidates every user whose items the batch touched: a read that starts after a write's
//!   reply finds no list without that write;
//! - a reader takes a [`Ticket`] before its query and fills the cache only if no invalidation of
//!   that user happened in between, so a read whose snapshot predates a commit cannot put back
//!   the list that commit made stale.

use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use uuid::Uuid;

use crate::domain::item_list::encode_json;
use crate::domain::{Item, ItemList, Page};

/// Generation counters are striped: one lock per user would be a map of its own.
const STRIPES: usize = 256;

pub struct RecentItems {
    /// How many newest items are kept per user; pages within them are served from memory.
    depth: u32,
    lists: moka::sync::Cache<Uuid, Kept>,
    generations: Box<[Mutex<u64>]>,
}

/// A user's list as kept: the items, and their JSON encoded once for every read of them.
#[derive(Clone)]
struct Kept {
    items: Arc<[Item]>,
    json: Option<Bytes>,
}

/// Proof that a read started before a given invalidation count of its user's stripe.
pub struct Ticket {
    user_id: Uuid,
    generation: u64,
}

impl RecentItems {
    /// `None` when either limit is 0 (the cache is off).
    pub fn new(depth: u32, budget_bytes: u64) -> Option<RecentItems> {
        if depth == 0 || budget_bytes == 0 {
            return None;
        }
        let lists = moka::sync::Cache::builder()
            .max_capacity(budget_bytes)
            .weigher(|_user: &Uuid, kept: &Kept| {
                let items = kept.items.iter().map(approximate_size).sum::<usize>();
                let json = kept.json.as_ref().map_or(0, Bytes::len);
                u32::try_from(items + json + 64).unwrap_or(u32::MAX)
            })
            .build();
        Some(RecentItems {
            depth,
            lists,
            generations: (0..STRIPES).map(|_| Mutex::new(0)).collect(),
        })
    }

    /// How many newest items a user's list holds.
    pub fn depth(&self) -> u32 {
        self.depth
    }

    /// Whether `page` lies within the newest items kept per user (a cursor page never does).
    pub fn covers(&self, page: Page) -> bool {
        page.offset == 0 && page.after.is_none() && page.limit <= self.depth
    }

    /// The user's `limit` newest items, if their list is in memory (counted as a hit; a miss
    /// is counted by [`ticket`](Self::ticket), so a request that looks twice counts once).
    pub fn get(&self, user_id: Uuid, limit: u32) -> Option<ItemList> {
        let Kept { items, json } = self.lists.get(&user_id)?;
        metrics::counter!("gorgon_store_recent_lookups_total", "outcome" => "hit").increment(1);
        Some(ItemList::shared(items, limit as usize, json))
    }

    /// Taken before reading a user's list from the database, to [`fill`](Self::fill) it after.
    pub fn ticket(&self, user_id: Uuid) -> Ticket {
        metrics::counter!("gorgon_store_recent_lookups_total", "outcome" => "miss").increment(1);
        Ticket {
            user_id,
            generation: *self.stripe(user_id).lock(),
        }
    }

    /// Keeps `items` (the user's newest, at most `depth`, newest first) unless the user was
    /// invalidated since `ticket` was taken.
    pub fn fill(&self, ticket: Ticket, items: &[Item]) {
        // Encoded before the stripe's lock, which the writer takes to invalidate.
        let items: Arc<[Item]> = items.iter().take(self.depth as usize).cloned().collect();
        let json = encode_json(&items);
        let generation = self.stripe(ticket.user_id).lock();
        if *generation == ticket.generation {
            self.lists.insert(ticket.user_id, Kept { items, json });
        }
    }

    /// Forgets a user's list (their items changed).
    pub fn invalidate(&self, user_id: Uuid) {
        let mut generation = self.stripe(user_id).lock();
        *generation += 1;
        self.lists.invalidate(&user_id);
    }

    /// Forgets every list (a bulk load changed items of anyone).
    pub fn clear(&self) {
        let mut generations: Vec<_> = self.generations.iter().map(|g| g.lock()).collect();
        generations.iter_mut().for_each(|g| **g += 1);
        self.lists.invalidate_all();
    }

    fn stripe(&self, user_id: Uuid) -> &Mutex<u64> {
        // The low bits of both UUIDv4 and UUIDv7 are random.
        &self.generations[(user_id.as_u128() as usize) % STRIPES]
    }
}

/// Heap bytes an item holds, roughly: what the cache's memory budget is counted in.
fn approximate_size(item: &Item) -> usize {
    std::mem::size_of::<Item>()
        + item.title.len()
        + item.body.len()
        + item.url.as_ref().map_or(0, String::len)
        + item
            .keywords
            .iter()
            .map(|k| k.len() + std::mem::size_of::<String>())
            .sum::<usize>()
        + item.extra.approximate_size()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Extra, NewItem};

    fn item(user_id: Uuid, title: &str) -> Item {
        NewItem {
            title: title.into(),
            body: "body".into(),
            url: None,
            location: None,
            keywords: vec!["k".into()],
            extra: Extra::default(),
        }
        .into_item(Uuid::now_v7(), user_id, crate::domain::now())
    }

    fn cache() -> RecentItems {
        RecentItems::new(10, 1 << 20).expect("cache on")
    }

    #[test]
    fn a_filled_list_serves_pages_within_its_depth() {
        let recent = cache();
        let user = Uuid::now_v7();
        let items: Vec<Item> = (0..12).map(|n| item(user, &format!("t{n}"))).collect();
        assert!(recent.get(user, 10).is_none());
        recent.fill(recent.ticket(user), &items);
        let page = recent.get(user, 3).expect("hit");
        assert_eq!(
            page.iter().map(|i| i.title.as_str()).collect::<Vec<_>>(),
            ["t0", "t1", "t2"]
        );
        assert!(page.json().is_none(), "the kept JSON is of all ten");
        let whole = recent.get(user, 10).expect("hit");
        assert_eq!(whole.len(), 10, "kept to its depth");
        assert_eq!(
            whole.json().expect("encoded when kept").as_ref(),
            serde_json::to_vec(&items[..10]).unwrap().as_slice()
        );
        assert!(recent.covers(Page::new(10, 0)));
        assert!(!recent.covers(Page::new(11, 0)));
        assert!(!recent.covers(Page::new(5, 1)));
    }

    #[test]
    fn a_read_that_raced_an_invalidation_does_not_fill() {
        let recent = cache();
        let user = Uuid::now_v7();
        let stale = vec![item(user, "before the write")];
        let ticket = recent.ticket(user);
        // The write commits (and invalidates) while the read that took `ticket` is running.
        recent.invalidate(user);
        recent.fill(ticket, &stale);
        assert!(recent.get(user, 10).is_none(), "a stale list was put back");
        // A read that starts after the write fills normally.
        recent.fill(recent.ticket(user), &stale);
        assert!(recent.get(user, 10).is_some());
    }

    #[test]
    fn invalidation_and_clear_forget_lists() {
        let recent = cache();
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        recent.fill(recent.ticket(a), &[item(a, "a")]);
        recent.fill(recent.ticket(b), &[item(b, "b")]);
        recent.invalidate(a);
        assert!(recent.get(a, 10).is_none());
        assert!(recent.get(b, 10).is_some());
        let ticket = recent.ticket(b);
        recent.clear();
        assert!(recent.get(b, 10).is_none());
        recent.fill(ticket, &[item(b, "b")]);
        assert!(recent.get(b, 10).is_none(), "a fill from before the clear");
    }

    #[test]
    fn off_when_a_limit_is_zero() {
        assert!(RecentItems::new(0, 1 << 20).is_none());
        assert!(RecentItems::new(10, 0).is_none());
    }
}
