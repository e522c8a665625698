//! Small validated values shared by users and items.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::{Error, Result};

/// Upper bound on the serialized size of an `extra` object.
pub const MAX_EXTRA_BYTES: usize = 16 * 1024;

/// Free-form application data attached to a user or an item: always a JSON object, bounded in size.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct Extra(serde_json::Map<String, serde_json::Value>);

impl Extra {
    pub fn parse(value: serde_json::Map<String, serde_json::Value>) -> Result<Self> {
        let size = serde_json::to_vec(&value)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if size > MAX_EXTRA_BYTES {
            return Err(Error::invalid(
                "extra",
                format!("must serialize to at most {MAX_EXTRA_BYTES} bytes"),
            ));
        }
        Ok(Extra(value))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_else(|_| "{}".into())
    }

    /// Bytes it takes encoded, as a stand-in for what it holds in memory (0 when empty, the
    /// common case, without encoding).
    pub fn approximate_size(&self) -> usize {
        if self.0.is_empty() {
            return 0;
        }
        serde_json::to_vec(&self.0).map_or(0, |v| v.len())
    }

    /// Reads back what `to_json` stored; a damaged value becomes an empty object rather than an error.
    pub fn from_json(text: &str) -> Self {
        match serde_json::from_str(text) {
            Ok(serde_json::Value::Object(map)) => Extra(map),
            _ => Extra::default(),
        }
    }
}

/// A point on Earth in degrees.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Location {
    /// Latitude, -90 to 90.
    #[schema(minimum = -90, maximum = 90)]
    pub lat: f64,
    /// Longitude, -180 to 180.
    #[schema(minimum = -180, maximum = 180)]
    pub lon: f64,
}

impl Location {
    pub fn parse(self) -> Result<Self> {
        if !(-90.0..=90.0).contains(&self.lat) {
            return Err(Error::invalid("location.lat", "must be between -90 and 90"));
        }
        if !(-180.0..=180.0).contains(&self.lon) {
            return Err(Error::invalid(
                "location.lon",
                "must be between -180 and 180",
            ));
        }
        Ok(self)
    }
}

/// Checks a free text field: trimmed length within bounds and no control characters.
pub(crate) fn text(field: &str, value: &str, min: usize, max: usize) -> Result<String> {
    let value = value.trim();
    let len = value.chars().count();
    if len < min {
        return Err(Error::invalid(
            field,
            if min == 1 {
                "must not be empty".to_string()
            } else {
                format!("must be at least {min} characters")
            },
        ));
    }
    if len > max {
        return Err(Error::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if value
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
    {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(value.to_string())
}
