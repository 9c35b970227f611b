//! Tailing the events exchange: a private queue bound to topic patterns, read as a stream of
//! [`EventMessage`]s.

use eventline_amqp::broker;
use eventline_events::IncomingMessage;
use eventline_events::envelope::{HeaderValue, headers};
use futures_util::{Stream, StreamExt};

use super::{Client, ClientError};

impl Client {
    /// Events published by the relay whose type matches `pattern` (AMQP topic syntax:
    /// `catalog.#`, `#.stock_reserved`, `#` for all), from now on.
    pub async fn subscribe(
        &self,
        pattern: &str,
    ) -> Result<impl Stream<Item = EventMessage> + use<>, ClientError> {
        self.subscribe_to(&[pattern]).await
    }

    /// Like [`Client::subscribe`], for several patterns on one queue.
    pub async fn subscribe_to(
        &self,
        patterns: &[&str],
    ) -> Result<impl Stream<Item = EventMessage> + use<>, ClientError> {
        let queue = broker::open_private_queue(&self.connection, "tail").await?;
        for pattern in patterns {
            broker::bind_to_events(&queue.channel, &self.topology, &queue.name, pattern).await?;
        }
        let consumer = queue.consumer;
        Ok(consumer.filter_map(|delivery| async move {
            let delivery = delivery.ok()?;
            let message = broker::incoming(&delivery.properties, delivery.data);
            EventMessage::from_incoming(message)
        }))
    }
}

/// An event as received from the events exchange.
#[derive(Clone, Debug, serde::Serialize)]
pub struct EventMessage {
    pub event_id: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub stream_id: String,
    pub stream_version: i64,
    pub position: i64,
    pub correlation_id: String,
    pub causation_id: String,
    pub data: serde_json::Value,
}

impl EventMessage {
    pub fn from_incoming(message: IncomingMessage) -> Option<Self> {
        let metadata = message.metadata().ok()?;
        let int = |name: &str| match message.headers.get(name) {
            Some(HeaderValue::Int(n)) => *n,
            _ => 0,
        };
        let text = |name: &str| match message.headers.get(name) {
            Some(HeaderValue::Text(s)) => s.clone(),
            _ => String::new(),
        };
        Some(Self {
            event_id: metadata.message_id.to_string(),
            event_type: metadata.message_type,
            stream_id: text(headers::STREAM_ID),
            stream_version: int(headers::STREAM_VERSION),
            position: int(headers::LOG_POSITION),
            correlation_id: metadata.correlation_id.to_string(),
            causation_id: metadata.causation_id.to_string(),
            data: serde_json::from_slice(&message.body).unwrap_or(serde_json::Value::Null),
        })
    }
}
