//! The JSON Schemas of the contract, as checked in under `schema/json/`.
//!
//! A test in this crate regenerates them and fails when the files drift from the Rust types;
//! run it with `UPDATE_SCHEMAS=1` to rewrite the files after a deliberate change.

use std::collections::BTreeMap;

use crate::Contract;
use crate::auth::{AuthCommand, AuthEvent};
use crate::catalog::{CatalogCommand, CatalogEvent, CatalogQuery};
use crate::orders::{OrdersCommand, OrdersEvent, OrdersQuery};
use crate::payments::{PaymentsCommand, PaymentsEvent};
use crate::reply::{REPLY_TYPE, Reply};

/// Every message type's schema, keyed by the file name it is stored under (`{type}.json`).
pub fn all() -> Vec<(String, serde_json::Value)> {
    let mut all: BTreeMap<String, serde_json::Value> = [
        AuthCommand::json_schemas(),
        AuthEvent::json_schemas(),
        CatalogCommand::json_schemas(),
        CatalogEvent::json_schemas(),
        CatalogQuery::json_schemas(),
        OrdersCommand::json_schemas(),
        OrdersEvent::json_schemas(),
        OrdersQuery::json_schemas(),
        PaymentsCommand::json_schemas(),
        PaymentsEvent::json_schemas(),
    ]
    .into_iter()
    .flatten()
    .map(|(name, schema)| (format!("{name}.json"), schema))
    .collect();
    all.insert(
        format!("{REPLY_TYPE}.json"),
        schemars::schema_for!(Reply).to_value(),
    );
    all.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    #[test]
    fn checked_in_json_schemas_match_the_rust_types() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schema/json");
        let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
        let mut drifted = Vec::new();
        for (file, schema) in super::all() {
            let path = dir.join(&file);
            let expected = serde_json::to_string_pretty(&schema).unwrap() + "\n";
            if update {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, &expected).unwrap();
            } else if std::fs::read_to_string(&path).ok().as_deref() != Some(expected.as_str()) {
                drifted.push(file);
            }
        }
        assert!(
            drifted.is_empty(),
            "schema/json is out of date for {drifted:?}; run `UPDATE_SCHEMAS=1 cargo test -p eventline-events` and commit the result"
        );
    }
}
