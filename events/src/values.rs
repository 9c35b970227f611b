//! Domain value types, parsed once at the edge so that invalid values cannot exist inside.
//!
//! Each type deserializes through its `parse`, so a command with a negative quantity, an
//! empty name or a 10 MB product id is rejected while decoding, with a reason naming the field.
//! The JSON Schemas in `schema/json/` state the same limits for other languages.

use std::borrow::Cow;
use std::fmt;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize};

use crate::ids::id_type;

/// Declares serde (through `parse`) and a JSON Schema for a validated newtype.
macro_rules! validated {
    ($name:ident, $raw:ty, $schema:tt) => {
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let raw = <$raw>::deserialize(deserializer)?;
                Self::parse(raw).map_err(serde::de::Error::custom)
            }
        }

        impl JsonSchema for $name {
            fn inline_schema() -> bool {
                true
            }

            fn schema_name() -> Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema {
                json_schema!($schema)
            }
        }
    };
}

/// A product's id: 1 to 64 ASCII letters, digits, `-` or `_` (e.g. `tea-earl-grey`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ProductId(String);

impl ProductId {
    pub fn parse(value: String) -> Result<Self, String> {
        let ok_chars = value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if (1..=64).contains(&value.len()) && ok_chars {
            Ok(Self(value))
        } else {
            Err(format!(
                "product id {:?} is invalid: use 1 to 64 ASCII letters, digits, '-' or '_'",
                value.chars().take(70).collect::<String>()
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProductId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

validated!(ProductId, String, {
    "type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[A-Za-z0-9_-]+$"
});

/// A product's display name: trimmed, 1 to 200 characters, at least one visible; no control
/// characters, line breaks or bidirectional overrides.
///
/// Names are shown to people next to prices, so a name must not be able to hide itself (only
/// zero-width characters) or reorder the text around it (U+202E, "Trojan Source"). Emoji,
/// accents and zero-width joiners inside emoji sequences are fine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ProductName(String);

impl ProductName {
    pub fn parse(value: String) -> Result<Self, String> {
        let trimmed = value.trim();
        let chars = trimmed.chars().count();
        if chars == 0 || chars > 200 {
            return Err(format!(
                "product name must be 1 to 200 characters after trimming, got {chars}"
            ));
        }
        if let Some(c) = trimmed
            .chars()
            .find(|c| c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
        {
            return Err(format!(
                "product name must not contain control characters or line breaks (found U+{:04X})",
                u32::from(c)
            ));
        }
        if let Some(c) = trimmed.chars().find(|c| is_bidi_control(*c)) {
            return Err(format!(
                "product name must not contain bidirectional controls (found U+{:04X}), which reorder the text shown around it",
                u32::from(c)
            ));
        }
        if trimmed.chars().all(is_invisible) {
            return Err(
                "product name has no visible character (only zero-width or blank characters)"
                    .to_owned(),
            );
        }
        Ok(Self(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Unicode's bidirectional formatting characters (marks, embeddings, overrides, isolates):
/// invisible, yet they reorder how surrounding text is displayed.
pub(crate) fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

/// Blank or zero-width: a string made only of these shows as nothing.
fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || is_bidi_control(c)
        || matches!(
            c,
            '\u{00AD}'
                | '\u{034F}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200D}'
                | '\u{2060}'..='\u{2064}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

validated!(ProductName, String, {
    "type": "string", "minLength": 1, "maxLength": 200,
    "description": "trimmed; at least one visible character; no control characters, line breaks or bidirectional controls"
});

/// An amount of money in minor units (cents) of the system's single currency.
///
/// Integers only: no float ever touches money. The upper bound keeps every amount exact in
/// JavaScript and far from i64 overflow when summed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Money(u64);

impl Money {
    /// 10 billion in major units.
    pub const MAX_MINOR_UNITS: u64 = 1_000_000_000_000;
    pub const ZERO: Money = Money(0);

    pub fn parse(minor_units: u64) -> Result<Self, String> {
        if minor_units <= Self::MAX_MINOR_UNITS {
            Ok(Self(minor_units))
        } else {
            Err(format!(
                "amount {minor_units} is over the maximum of {} minor units",
                Self::MAX_MINOR_UNITS
            ))
        }
    }

    pub const fn minor_units(self) -> u64 {
        self.0
    }

    /// `self × quantity`, or `None` past the maximum.
    pub fn times(self, quantity: Quantity) -> Option<Money> {
        self.0
            .checked_mul(u64::from(quantity.get()))
            .filter(|m| *m <= Self::MAX_MINOR_UNITS)
            .map(Money)
    }

    /// `self + other`, or `None` past the maximum.
    pub fn plus(self, other: Money) -> Option<Money> {
        self.0
            .checked_add(other.0)
            .filter(|m| *m <= Self::MAX_MINOR_UNITS)
            .map(Money)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

validated!(Money, u64, {
    "type": "integer", "minimum": 0, "maximum": 1_000_000_000_000u64,
    "description": "minor units (cents)"
});

/// A quantity of items in one request: 1 to 1,000,000.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Quantity(u32);

impl Quantity {
    pub const MAX: u32 = 1_000_000;

    pub fn parse(value: u32) -> Result<Self, String> {
        if (1..=Self::MAX).contains(&value) {
            Ok(Self(value))
        } else {
            Err(format!(
                "quantity {value} is out of range: use 1 to {}",
                Self::MAX
            ))
        }
    }

    pub const fn get(self) -> u32 {
        self.0
    }
}

validated!(Quantity, u32, { "type": "integer", "minimum": 1, "maximum": 1_000_000 });

/// A stock level: how many items are on hand, 0 to 1,000,000,000.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct StockLevel(u32);

impl StockLevel {
    pub const MAX: u32 = 1_000_000_000;

    pub fn parse(value: u32) -> Result<Self, String> {
        if value <= Self::MAX {
            Ok(Self(value))
        } else {
            Err(format!(
                "stock level {value} is over the maximum of {}",
                Self::MAX
            ))
        }
    }

    pub const fn get(self) -> u32 {
        self.0
    }
}

validated!(StockLevel, u32, { "type": "integer", "minimum": 0, "maximum": 1_000_000_000 });

id_type! {
    /// An order's id, chosen by whoever places the order (a UUID, v7 recommended).
    OrderId
}

/// The id of an event stream in the log, e.g. `catalog.product-tea`. Built only by the
/// constructors next to each aggregate's id, so the format lives in one place.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct StreamId(String);

impl StreamId {
    /// `{category}-{id}`, where the category names the service and aggregate.
    pub fn new(category: &str, id: impl fmt::Display) -> Self {
        Self(format!("{category}-{id}"))
    }

    /// Whether the stream belongs to `category` (`{category}-{id}`), without allocating:
    /// projections ask this for every event in the log.
    pub fn in_category(&self, category: &str) -> bool {
        self.0
            .strip_prefix(category)
            .is_some_and(|rest| rest.starts_with('-'))
    }

    /// Wraps a stream id read back from the log.
    pub fn from_log(value: String) -> Self {
        Self(value)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use uuid::Uuid;

    #[test]
    fn bad_values_are_rejected_while_decoding_with_the_field_named() {
        let err = serde_json::from_str::<Quantity>("0")
            .unwrap_err()
            .to_string();
        assert!(err.contains("quantity 0 is out of range"), "{err}");
        assert!(serde_json::from_str::<Quantity>("-1").is_err());
        assert!(serde_json::from_str::<Money>("-5").is_err());
        assert!(serde_json::from_str::<Money>("1000000000001").is_err());
        assert!(serde_json::from_str::<ProductId>("\"a b\"").is_err());
        assert!(serde_json::from_str::<ProductId>("\"'; DROP TABLE x;--\"").is_err());
        assert!(serde_json::from_str::<ProductName>("\"  \"").is_err());
        assert!(serde_json::from_str::<ProductName>("\"a\\u0000b\"").is_err());
    }

    #[test]
    fn names_are_trimmed_and_unicode_is_counted_in_characters() {
        let name: ProductName = serde_json::from_str("\"  Thé vert 🍵 \"").unwrap();
        assert_eq!(name.as_str(), "Thé vert 🍵");
        let long = "é".repeat(200);
        assert!(ProductName::parse(long).is_ok());
    }

    #[test]
    fn names_that_hide_or_reorder_text_are_rejected_and_emoji_sequences_are_not() {
        for bad in [
            "\u{200B}",
            "\u{200B}\u{200D}\u{FEFF}",
            "\u{3164}",
            "Tea\u{202E}gnp.exe",
            "Tea \u{2066}cup\u{2069}",
            "Tea\u{2028}Time",
            "Tea\nTime",
            "Tea\u{7}",
        ] {
            let err = ProductName::parse(bad.to_owned()).unwrap_err();
            assert!(err.starts_with("product name"), "{bad:?}: {err}");
        }
        assert!(
            ProductName::parse("\u{202E}x".to_owned())
                .unwrap_err()
                .contains("U+202E")
        );
        for good in [
            "Family pack \u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}",
            "Caf\u{0065}\u{0301} cr\u{00E8}me",
            "\u{0634}\u{0627}\u{064A} tea",
            "Z\u{0351}\u{0352}a\u{0353}lgo",
            "Robert'); DROP TABLE event_log;--",
        ] {
            assert!(ProductName::parse(good.to_owned()).is_ok(), "{good:?}");
        }
    }

    /// The wire form of an id type: what a type's JSON is, what it reads, how it prints and
    /// its JSON Schema. Pinned so that a change of how an id is defined (a hand-written
    /// newtype or `id_type!`) cannot change what other languages see.
    fn assert_uuid_wire_form<T>(id: T, uuid: Uuid, schema: serde_json::Value)
    where
        T: Serialize
            + for<'de> Deserialize<'de>
            + JsonSchema
            + fmt::Display
            + PartialEq
            + fmt::Debug,
    {
        let text = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
        assert_eq!(uuid.to_string(), text);
        assert_eq!(serde_json::to_value(&id).unwrap(), serde_json::json!(text));
        assert_eq!(
            serde_json::from_value::<T>(serde_json::json!(text)).unwrap(),
            id
        );
        assert_eq!(id.to_string(), text);
        assert!(serde_json::from_value::<T>(serde_json::json!(42)).is_err());
        assert!(serde_json::from_value::<T>(serde_json::json!("not-a-uuid")).is_err());
        assert_eq!(
            serde_json::to_value(schemars::schema_for!(T)).unwrap(),
            schema
        );
    }

    fn wire_uuid() -> Uuid {
        Uuid::parse_str("0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b").unwrap()
    }

    #[test]
    fn order_ids_keep_their_wire_form() {
        assert_uuid_wire_form(
            OrderId::from_uuid(wire_uuid()),
            wire_uuid(),
            serde_json::json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "title": "OrderId",
                "description": "An order's id, chosen by whoever places the order (a UUID, v7 recommended).",
                "type": "string",
                "format": "uuid",
            }),
        );
        assert_eq!(OrderId::from_uuid(wire_uuid()).as_uuid(), wire_uuid());
    }

    #[test]
    fn user_ids_keep_their_wire_form() {
        use crate::auth::UserId;
        assert_uuid_wire_form(
            UserId::from_uuid(wire_uuid()),
            wire_uuid(),
            serde_json::json!({
                "$schema": "https://json-schema.org/draft/2020-12/schema",
                "title": "UserId",
                "description": "A user's id, assigned at registration.",
                "type": "string",
                "format": "uuid",
            }),
        );
        assert_eq!(UserId::from_uuid(wire_uuid()).as_uuid(), wire_uuid());
    }

    #[test]
    fn a_stream_is_in_its_category_only() {
        let stream = StreamId::new("catalog.product", "tea");
        assert!(stream.in_category("catalog.product"));
        assert!(!stream.in_category("catalog"));
        assert!(!stream.in_category("catalog.product-tea"));
    }

    proptest! {
        #[test]
        fn product_ids_round_trip_or_fail_with_a_reason(s in ".{0,80}") {
            match ProductId::parse(s.clone()) {
                Ok(id) => prop_assert_eq!(id.as_str(), s.as_str()),
                Err(reason) => prop_assert!(reason.contains("product id")),
            }
        }
    }
}
