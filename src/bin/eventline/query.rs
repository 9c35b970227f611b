//! Reading a query's answer (`products`, `orders`): the part of the result a command prints,
//! or the service's refusal as an error.
//!
//! It must never print: the commands decide how an answer is shown.

use anyhow::bail;
use eventline_events::Reply;

/// The `key` of a query's answer, or the reason it was refused.
pub fn query_result(reply: Reply, key: &str) -> anyhow::Result<serde_json::Value> {
    match reply {
        Reply::Accepted {
            result: Some(mut result),
            ..
        } => Ok(result[key].take()),
        Reply::Accepted { result: None, .. } => bail!("the query's reply had no result"),
        Reply::Rejected { reason } => bail!("{} ({})", reason.message, reason.code),
    }
}
