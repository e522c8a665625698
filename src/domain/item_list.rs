//! A list of items that may be shared with the memory it came from: cloning it counts a
//! reference, and a list held in memory carries its JSON form, encoded once when it was kept.
//!
//! Why: a user's newest items are the hottest read. Copying ten items out of the cache and
//! encoding them again for every request was a fifth of the CPU of a read-heavy run; the list
//! changes far less often than it is read.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Item;

#[derive(Debug, Clone, PartialEq)]
pub struct ItemList {
    items: Arc<[Item]>,
    /// How many of `items`, from the first, this list is.
    len: usize,
    /// `items[..len]` as a JSON array, when the list's holder encoded it.
    json: Option<Bytes>,
}

impl ItemList {
    /// The first `len` of `items` (all of them if fewer), with `json` the encoding of every item
    /// of `items`: kept only when the list is all of them.
    pub fn shared(items: Arc<[Item]>, len: usize, json: Option<Bytes>) -> ItemList {
        let len = len.min(items.len());
        let json = json.filter(|_| len == items.len());
        ItemList { items, len, json }
    }

    pub fn as_slice(&self) -> &[Item] {
        &self.items[..self.len]
    }

    /// The items as a JSON array (exactly what `serde_json` writes for them), when encoded
    /// already.
    pub fn json(&self) -> Option<&Bytes> {
        self.json.as_ref()
    }

    pub fn into_vec(self) -> Vec<Item> {
        self.as_slice().to_vec()
    }
}

/// `items` as the JSON array `ItemList::json` holds.
pub fn encode_json(items: &[Item]) -> Option<Bytes> {
    serde_json::to_vec(items).ok().map(Bytes::from)
}

impl From<Vec<Item>> for ItemList {
    fn from(items: Vec<Item>) -> ItemList {
        let len = items.len();
        ItemList {
            items: items.into(),
            len,
            json: None,
        }
    }
}

impl std::ops::Deref for ItemList {
    type Target = [Item];
    fn deref(&self) -> &[Item] {
        self.as_slice()
    }
}

/// On every wire a plain sequence of items, as the `Vec<Item>` of earlier builds.
impl Serialize for ItemList {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.as_slice().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for ItemList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ItemList, D::Error> {
        Vec::<Item>::deserialize(deserializer).map(ItemList::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Extra, NewItem};
    use uuid::Uuid;

    fn items(n: usize) -> Vec<Item> {
        (0..n)
            .map(|i| {
                NewItem {
                    title: format!("title \"{i}\""),
                    body: "line\nbreak".into(),
                    url: None,
                    location: None,
                    keywords: vec!["k".into()],
                    extra: Extra::default(),
                }
                .into_item(Uuid::now_v7(), Uuid::now_v7(), crate::domain::now())
            })
            .collect()
    }

    #[test]
    fn a_shared_list_is_its_prefix_and_keeps_json_only_when_whole() {
        let all: Arc<[Item]> = items(3).into();
        let json = encode_json(&all);
        let whole = ItemList::shared(all.clone(), 10, json.clone());
        assert_eq!(whole.len(), 3);
        assert_eq!(whole.json(), json.as_ref());
        let part = ItemList::shared(all.clone(), 2, json);
        assert_eq!(part.as_slice(), &all[..2]);
        assert!(part.json().is_none(), "the encoding is of all three");
    }

    #[test]
    fn the_json_form_is_what_serde_writes_and_the_wire_form_is_a_sequence() {
        let all: Arc<[Item]> = items(2).into();
        let list = ItemList::shared(all.clone(), 2, encode_json(&all));
        let written = serde_json::to_vec(&list).unwrap();
        assert_eq!(list.json().unwrap().as_ref(), written.as_slice());
        assert_eq!(written, serde_json::to_vec(&all.to_vec()).unwrap());
        let packed = rmp_serde::to_vec_named(&list).unwrap();
        let back: ItemList = rmp_serde::from_slice(&packed).unwrap();
        assert_eq!(back.as_slice(), list.as_slice());
        let back: ItemList = serde_json::from_slice(&written).unwrap();
        assert_eq!(back.into_vec(), all.to_vec());
    }
}
