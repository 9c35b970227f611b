//! Every rejection and dead-letter code a worker can emit, and how it reaches the sender: the
//! registry schema/CONTRACT.md §4 is checked against (a test below fails when a code is
//! missing from the table, or the table says otherwise about replies and dead letters).
//!
//! Codes are stable and meant for programs. This module holds no logic and must never be the
//! only place a code is defined in a worker: services keep their own `code()` functions, and
//! a workers test checks that each of those codes is registered here.

/// How a code reaches the sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// A `rejected` reply only: a normal outcome, stored in the inbox and acked.
    Reply,
    /// Dead-lettered, and (if the envelope is valid and `reply_to` is set) a `rejected` reply.
    ReplyAndDeadLetter,
    /// Dead-lettered only: there is no valid envelope, or nobody waits (retries, the broker).
    DeadLetter,
    /// A reply for a token role; dead-lettered as well for a saga step without orders'
    /// credential (`forbidden`).
    ReplyOrBoth,
}

/// One code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Code {
    pub code: &'static str,
    pub delivery: Delivery,
}

const fn code(code: &'static str, delivery: Delivery) -> Code {
    Code { code, delivery }
}

use Delivery::{DeadLetter, Reply, ReplyAndDeadLetter, ReplyOrBoth};

/// Every code, in the order of the contract's table.
pub const ALL: &[Code] = &[
    // Poison: retrying cannot fix it.
    code("missing_field", DeadLetter),
    code("invalid_id", DeadLetter),
    code("invalid_header", DeadLetter),
    code("invalid_reply_to", DeadLetter),
    code("unsupported_schema_version", DeadLetter),
    code("body_too_large", ReplyAndDeadLetter),
    code("unsupported_content_type", ReplyAndDeadLetter),
    code("unknown_message_type", ReplyAndDeadLetter),
    code("invalid_body", ReplyAndDeadLetter),
    code("unreadable_stream", ReplyAndDeadLetter),
    code("database_refused", ReplyAndDeadLetter),
    code("undecodable_stored_dispatch", ReplyAndDeadLetter),
    code("handler_panicked", ReplyAndDeadLetter),
    code("retries_exhausted", ReplyAndDeadLetter),
    code("delivery_limit", DeadLetter),
    // Authority.
    code("forbidden", ReplyOrBoth),
    code("token_missing", Reply),
    code("token_invalid", Reply),
    code("token_expired", Reply),
    code("token_unverifiable", Reply),
    // Idempotency.
    code("idempotency_key_reused", Reply),
    // Catalog.
    code("unknown_product", Reply),
    code("product_exists", Reply),
    code("insufficient_stock", Reply),
    code("reservation_mismatch", Reply),
    code("order_closed", Reply),
    code("no_reservation", Reply),
    code("stock_limit", Reply),
    // Auth.
    code("email_taken", Reply),
    code("invalid_credentials", Reply),
    code("auth_unavailable", Reply),
    // Orders.
    code("order_exists", Reply),
    code("unknown_order", Reply),
    // Payments.
    code("payment_declined", Reply),
    code("payment_insufficient_funds", Reply),
    code("payment_unknown_card", Reply),
    code("payment_closed", Reply),
    // Runtime.
    code("unavailable", Reply),
    code("duplicate", Reply),
];

/// The registered code named `name`.
pub fn find(name: &str) -> Option<Code> {
    ALL.iter().copied().find(|c| c.code == name)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn contract() -> String {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schema/CONTRACT.md");
        std::fs::read_to_string(path).expect("schema/CONTRACT.md")
    }

    /// The cells of the table row that starts with `` | `code` | ``.
    fn row<'a>(contract: &'a str, code: &str) -> Option<Vec<&'a str>> {
        let start = format!("| `{code}` |");
        contract
            .lines()
            .find(|l| l.starts_with(&start))
            .map(|l| l.trim_matches('|').split('|').map(str::trim).collect())
    }

    #[test]
    fn every_code_is_in_the_contract_with_how_it_is_delivered() {
        let contract = contract();
        let mut wrong = Vec::new();
        for c in ALL {
            let Some(cells) = row(&contract, c.code) else {
                wrong.push(format!("{}: no row in §4", c.code));
                continue;
            };
            // | code | cause | reply? | dead-lettered? |
            let (reply, dead) = (cells[cells.len() - 2], cells[cells.len() - 1]);
            let (want_reply, want_dead) = match c.delivery {
                Reply => (true, false),
                ReplyAndDeadLetter => (true, true),
                DeadLetter => (false, true),
                ReplyOrBoth => (true, true),
            };
            if (reply != "no") != want_reply || (dead != "no") != want_dead {
                wrong.push(format!(
                    "{}: the table says reply {reply:?}, dead letter {dead:?}; the code is {:?}",
                    c.code, c.delivery
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "schema/CONTRACT.md §4 is wrong: {wrong:#?}"
        );
    }

    #[test]
    fn every_message_type_has_a_row_in_the_contract() {
        let contract = contract();
        let missing: Vec<String> = crate::schema::all()
            .into_iter()
            .map(|(file, _)| file.trim_end_matches(".json").to_owned())
            .filter(|t| !contract.contains(&format!("| [`{t}`](json/{t}.json) |")))
            .collect();
        assert!(
            missing.is_empty(),
            "schema/CONTRACT.md has no row for {missing:?}"
        );
    }
}
