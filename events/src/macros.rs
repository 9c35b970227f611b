//! `wire_enum!`: declares a message family so that each wire name is spelled exactly once.

/// Declares an enum whose variants each wrap one message struct, with its wire name.
///
/// Generates the enum, `From<Struct>` for each variant, and the [`crate::Contract`] impl
/// (decode by type name, encode, JSON Schemas).
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident($ty:ty) = $wire:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub enum $name {
            $( $(#[$vmeta])* $variant($ty) ),+
        }

        $(
            impl From<$ty> for $name {
                fn from(value: $ty) -> Self {
                    Self::$variant(value)
                }
            }
        )+

        impl $crate::Contract for $name {
            const MESSAGE_TYPES: &'static [&'static str] = &[$($wire),+];

            fn message_type(&self) -> &'static str {
                match self {
                    $( Self::$variant(_) => $wire ),+
                }
            }

            fn decode(message_type: &str, body: &[u8]) -> Result<Self, $crate::DecodeError> {
                match message_type {
                    $(
                        $wire => $crate::decode_object::<$ty>(body)
                            .map(Self::$variant)
                            .map_err(|error| $crate::DecodeError::InvalidBody {
                                message_type: $wire,
                                error: error.to_string(),
                            }),
                    )+
                    other => Err($crate::DecodeError::UnknownMessageType {
                        message_type: other.chars().take(100).collect(),
                        expected: Self::MESSAGE_TYPES,
                    }),
                }
            }

            fn from_json(message_type: &str, body: serde_json::Value) -> Result<Self, $crate::DecodeError> {
                match message_type {
                    $(
                        $wire => serde_json::from_value::<$ty>(body)
                            .map(Self::$variant)
                            .map_err(|error| $crate::DecodeError::InvalidBody {
                                message_type: $wire,
                                error: error.to_string(),
                            }),
                    )+
                    other => Err($crate::DecodeError::UnknownMessageType {
                        message_type: other.chars().take(100).collect(),
                        expected: Self::MESSAGE_TYPES,
                    }),
                }
            }

            fn to_json(&self) -> serde_json::Value {
                // Serializing plain data structs with string keys cannot fail.
                match self {
                    $( Self::$variant(inner) => serde_json::to_value(inner)
                        .unwrap_or(serde_json::Value::Null) ),+
                }
            }

            fn json_schemas() -> Vec<(&'static str, serde_json::Value)> {
                vec![ $( ($wire, schemars::schema_for!($ty).to_value()) ),+ ]
            }
        }
    };
}
