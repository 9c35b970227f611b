//! `eventline trace`: one conversation as a causal tree, from the inbox and the log.
//!
//! Every handled message is in some service's inbox with its causation id, and every event
//! names the message that recorded it, so the tree needs no timestamps: a child is printed under
//! what caused it. That is the seed's "no global clock" made visible — the order of things is
//! what caused what, not what each machine's clock said.

use std::collections::BTreeMap;
use std::fmt::Write;

use anyhow::Context;
use eventline_workers::runtime::store::EventStore;
use sqlx::Row;
use uuid::Uuid;

struct Handled {
    message_id: Uuid,
    causation_id: Option<Uuid>,
    message_type: String,
    consumer: String,
    handled_by: String,
    outcome: String,
}

struct Recorded {
    causation_id: Option<Uuid>,
    event_type: String,
    stream_id: String,
    stream_version: i64,
}

/// The tree for `correlation_id`, as text.
pub async fn render(store: &EventStore, correlation_id: Uuid) -> anyhow::Result<String> {
    let messages: Vec<Handled> = sqlx::query(
        "SELECT message_id, causation_id, coalesce(message_type, '?') AS message_type, consumer, handled_by, \
                coalesce(reply ->> 'outcome', '') || coalesce(' ' || (reply -> 'reason' ->> 'code'), '') AS outcome \
         FROM processed_messages WHERE correlation_id = $1",
    )
    .bind(correlation_id)
    .fetch_all(store.pool())
    .await
    .context("reading the inbox (has `eventline migrate` run?)")?
    .into_iter()
    .map(|r| {
        Ok(Handled {
            message_id: r.try_get("message_id")?,
            causation_id: r.try_get("causation_id")?,
            message_type: r.try_get("message_type")?,
            consumer: r.try_get("consumer")?,
            handled_by: r.try_get("handled_by")?,
            outcome: r.try_get("outcome")?,
        })
    })
    .collect::<Result<_, sqlx::Error>>()?;
    let events: Vec<Recorded> = sqlx::query(
        "SELECT (metadata ->> 'causation_id')::uuid AS causation_id, event_type, stream_id, stream_version \
         FROM event_log WHERE metadata ->> 'correlation_id' = $1 ORDER BY position",
    )
    .bind(correlation_id.to_string())
    .fetch_all(store.pool())
    .await?
    .into_iter()
    .map(|r| {
        Ok(Recorded {
            causation_id: r.try_get("causation_id")?,
            event_type: r.try_get("event_type")?,
            stream_id: r.try_get("stream_id")?,
            stream_version: r.try_get("stream_version")?,
        })
    })
    .collect::<Result<_, sqlx::Error>>()?;
    if messages.is_empty() && events.is_empty() {
        anyhow::bail!(
            "nothing recorded for correlation id {correlation_id} (an order id, or a command's correlation id)"
        );
    }

    let known: std::collections::HashSet<Uuid> = messages.iter().map(|m| m.message_id).collect();
    let mut children: BTreeMap<Option<Uuid>, Vec<&Handled>> = BTreeMap::new();
    for m in &messages {
        // A message whose cause is not in this conversation (or itself) is a root.
        let parent = m
            .causation_id
            .filter(|c| *c != m.message_id && known.contains(c));
        children.entry(parent).or_default().push(m);
    }
    for list in children.values_mut() {
        // Siblings have no causal order; sort them for a stable print (UUIDv7 ids sort roughly
        // by creation, which is informational only).
        list.sort_by_key(|m| (m.message_type.clone(), m.message_id));
    }
    let mut out = String::new();
    writeln!(out, "conversation {correlation_id}")?;
    let mut stack: Vec<(&Handled, usize)> = children
        .get(&None)
        .map(|roots| roots.iter().rev().map(|m| (*m, 0)).collect())
        .unwrap_or_default();
    while let Some((message, depth)) = stack.pop() {
        let indent = "  ".repeat(depth);
        writeln!(
            out,
            "{indent}▸ {}  handled by {} ({}){}",
            message.message_type,
            message.handled_by,
            message.consumer,
            if message.outcome.is_empty() {
                String::new()
            } else {
                format!(" → {}", message.outcome)
            }
        )?;
        for event in events
            .iter()
            .filter(|e| e.causation_id == Some(message.message_id))
        {
            writeln!(
                out,
                "{indent}    • {} {} v{}",
                event.event_type, event.stream_id, event.stream_version
            )?;
        }
        if let Some(kids) = children.get(&Some(message.message_id)) {
            for kid in kids.iter().rev() {
                stack.push((kid, depth + 1));
            }
        }
    }
    Ok(out)
}
