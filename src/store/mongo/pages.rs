//! Reads of a page (newest first, `skip`, `limit`) through a named index.
//!
//! Queries name their index (`hint`) instead of leaving the choice to the query planner: the
//! planner of the test server scans whole collections for `$in` and `$all`, and even MongoDB's
//! may pick a worse index for a short while after a restart. If the named index is missing (a
//! bulk load into an empty store set it aside), the query runs again without the hint.

use futures::TryStreamExt;
use mongodb::bson::Document;
use mongodb::error::ErrorKind;
use mongodb::options::{FindOptions, Hint};
use mongodb::Collection;

use super::errors::op;
use crate::domain::Page;
use crate::error::Result;

/// The documents of `page` matching `filter`, in `sort` order, through the index `index`.
pub(super) async fn find_page(
    collection: &Collection<Document>,
    filter: Document,
    sort: Document,
    projection: Option<Document>,
    page: Page,
    index: &str,
    what: &'static str,
) -> Result<Vec<Document>> {
    if page.limit == 0 {
        return Ok(Vec::new()); // MongoDB reads `limit(0)` as "no limit"
    }
    let mut hint = Some(Hint::Name(index.to_string()));
    loop {
        let mut options = FindOptions::default();
        options.sort = Some(sort.clone());
        options.skip = Some(u64::from(page.offset));
        options.limit = Some(i64::from(page.limit));
        options.projection = projection.clone();
        options.hint = hint.clone();
        let found: std::result::Result<Vec<Document>, mongodb::error::Error> = async {
            collection
                .find(filter.clone())
                .with_options(options)
                .await?
                .try_collect()
                .await
        }
        .await;
        match found {
            Err(e) if hint.is_some() && is_missing_index(&e) => {
                tracing::debug!(index, "index missing: querying without a hint");
                hint = None;
            }
            found => return found.map_err(op(what)),
        }
    }
}

/// Whether a query failed because its hint names no index (code 2, BadValue).
pub(super) fn is_missing_index(e: &mongodb::error::Error) -> bool {
    matches!(e.kind.as_ref(), ErrorKind::Command(c) if c.code == 2 && c.message.contains("hint"))
}
