//! Paging: which slice of a listing or a search a caller wants, by offset or after a cursor.

use uuid::Uuid;

/// A page of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Page {
    pub limit: u32,
    pub offset: u32,
    /// Keyset cursor: start after the item with this id (in the listing's order), then skip
    /// `offset`. Costs the same at any depth, where a deep `offset` walks every skipped row.
    pub after: Option<Uuid>,
}

impl Page {
    /// The page at `offset`, without a cursor.
    pub const fn new(limit: u32, offset: u32) -> Page {
        Page {
            limit,
            offset,
            after: None,
        }
    }
}
