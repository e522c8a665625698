//! What an ingest request carries: items on behalf of existing users, validated like items
//! created through the API.

use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::item::ItemDraft;
use crate::domain::{Item, NewItem};
use crate::error::{Error, Result};

/// The body of `POST /api/v1/providers/{name}/ingest`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct IngestRequest {
    /// 1 to `--ingest-max-items` items.
    pub items: Vec<IngestItem>,
}

/// One item and the user it belongs to.
#[derive(Debug, Deserialize, ToSchema)]
pub struct IngestItem {
    pub user_id: Uuid,
    #[serde(flatten)]
    pub item: ItemDraft,
}

/// Parses and validates a whole batch (all or nothing), giving each item its id and time.
pub fn parse(body: &[u8], max_items: usize) -> Result<Vec<Item>> {
    let request: IngestRequest = serde_json::from_slice(body)
        .map_err(|e| Error::BadRequest(format!("malformed ingest body: {e}")))?;
    if request.items.is_empty() || request.items.len() > max_items {
        return Err(Error::invalid(
            "items",
            format!("send 1 to {max_items} items"),
        ));
    }
    let now = crate::domain::now();
    request
        .items
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let new = NewItem::parse(entry.item).map_err(|e| match e {
                Error::Invalid { field, message } => {
                    Error::invalid(format!("items[{i}].{field}"), message)
                }
                other => other,
            })?;
            Ok(new.into_item(crate::domain::new_id(), entry.user_id, now))
        })
        .collect()
}
