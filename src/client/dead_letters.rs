//! Dead letters: list and show them without removing them, and re-drive a selection, each
//! removed only once its copy is confirmed.

use eventline_amqp::broker;
use eventline_events::IncomingMessage;
use eventline_events::Service;
use eventline_events::envelope::{HeaderValue, headers};
use eventline_events::topology::is_query;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::BasicGetOptions;

use super::{Client, ClientError};

impl Client {
    /// Reads up to `limit` dead letters of a service without removing them: they are fetched
    /// unacknowledged on a private channel, which is then closed so the broker puts them back.
    pub async fn dead_letters(
        &self,
        service: Service,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, ClientError> {
        let (channel, held) = self.hold_dead_letters(service, limit).await?;
        let _ = channel.close(200, "peeked".into()).await;
        Ok(held
            .into_iter()
            .map(|(letter, _)| letter.truncated(LISTED_BODY_CHARS))
            .collect())
    }

    /// One dead letter, in full (every header, the whole body), by message id; left in the
    /// queue. `None` if no dead letter of `service` has that id.
    pub async fn dead_letter(
        &self,
        service: Service,
        message_id: &str,
    ) -> Result<Option<DeadLetter>, ClientError> {
        let (channel, held) = self.hold_dead_letters(service, usize::MAX).await?;
        let _ = channel.close(200, "peeked".into()).await;
        Ok(held
            .into_iter()
            .map(|(letter, _)| letter)
            .find(|letter| letter.message_id.as_deref() == Some(message_id)))
    }

    /// Sends the selected dead letters of `service` back to its queue, after a fix, and removes
    /// each from the dead-letter queue only once the broker has confirmed its copy.
    ///
    /// A re-driven message keeps its message id, so the inbox turns anything that was in fact
    /// applied into a duplicate with the stored reply: re-driving twice, or re-driving a
    /// command that had committed before it was dead-lettered, has one effect. The dead-letter
    /// headers and the retry count are dropped (it starts afresh); the dead letter's session
    /// token was removed when it was parked, so this client's token, if any, goes instead.
    /// Letters whose body was redacted (a password was replaced by `***`) or that have no
    /// message id are refused: re-sending them would not be the original command.
    ///
    /// Bounded: the queue is read once, at most as many messages as it held at the start;
    /// letters not selected go back in their place when the scan ends.
    pub async fn redrive(
        &self,
        service: Service,
        selection: &Selection,
    ) -> Result<Redrive, ClientError> {
        let (channel, held) = self.hold_dead_letters(service, usize::MAX).await?;
        let mut report = Redrive::default();
        let mut failure = None;
        for (letter, delivery) in held {
            if !selection.matches(&letter) {
                report.left += 1;
                continue;
            }
            let id = letter.message_id.clone().unwrap_or_default();
            if let Some(why) = letter.not_redrivable() {
                report.refused.push(Refused {
                    message_id: id,
                    why,
                });
                report.left += 1;
                continue;
            }
            if failure.is_some() {
                report.left += 1;
                continue;
            }
            let routing_key = match &letter.message_type {
                Some(t) if is_query(t) => self.topology.query_routing_key(service),
                _ => self.topology.command_routing_key(service).to_owned(),
            };
            let properties = self.fresh_properties(&delivery.properties);
            match broker::publish_confirmed(
                &self.publisher,
                &self.topology.commands_exchange(),
                &routing_key,
                &delivery.data,
                properties,
            )
            .await
            {
                Ok(()) => {
                    // Confirmed: the copy is stored, so the dead letter may go. If this ack is
                    // lost the letter stays, and a second re-drive is a harmless duplicate.
                    broker::ack(&channel, delivery.delivery_tag).await?;
                    report.redriven.push(id);
                }
                Err(error) => {
                    report.left += 1;
                    failure = Some(error);
                }
            }
        }
        if let Some(ids) = selection.ids() {
            report.not_found = ids
                .iter()
                .filter(|id| {
                    !report.redriven.contains(id)
                        && !report.refused.iter().any(|r| &r.message_id == *id)
                })
                .cloned()
                .collect();
        }
        // Everything still held goes back to the queue, in its place.
        let _ = channel.close(200, "redriven".into()).await;
        match failure {
            Some(error) => Err(ClientError::RedriveStopped {
                redriven: report.redriven.len(),
                source: error,
            }),
            None => Ok(report),
        }
    }

    /// The original message's properties without what the dead-lettering added.
    fn fresh_properties(&self, properties: &lapin::BasicProperties) -> lapin::BasicProperties {
        broker::redrive_properties(properties, self.token.as_deref())
    }

    /// Fetches up to `limit` of a service's dead letters, unacknowledged, on a new channel:
    /// never more than the queue held when it was asked, so the read ends even while new dead
    /// letters arrive. Closing the channel puts back whatever was not acked.
    async fn hold_dead_letters(
        &self,
        service: Service,
        limit: usize,
    ) -> Result<(Channel, Vec<(DeadLetter, Delivery)>), ClientError> {
        let queue = self.topology.dead_letter_queue(service);
        let not_found = |error: lapin::Error| {
            if error.to_string().contains("NOT_FOUND") {
                ClientError::NoSuchQueue(queue.clone())
            } else {
                error.into()
            }
        };
        let declared = broker::inspect_queue(&self.connection, &queue)
            .await
            .map_err(not_found)?;
        let count = (declared.message_count() as usize).min(limit);
        let channel = self.connection.create_channel().await?;
        let mut held = Vec::new();
        while held.len() < count {
            let got = channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false })
                .await
                .map_err(not_found)?;
            let Some(message) = got else { break };
            let delivery = message.delivery;
            let letter = DeadLetter::from_incoming(broker::incoming(
                &delivery.properties,
                delivery.data.clone(),
            ));
            held.push((letter, delivery));
        }
        Ok((channel, held))
    }
}

/// How much of a body `dead-letters` lists (`show` prints it whole).
const LISTED_BODY_CHARS: usize = 2000;

/// A dead-lettered message with the reason it was set aside.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeadLetter {
    pub message_id: Option<String>,
    pub message_type: Option<String>,
    /// Stable code (`invalid_body`, `unknown_message_type`, `retries_exhausted`, …), or
    /// `delivery_limit` when the broker gave up redelivering it.
    pub code: String,
    pub reason: String,
    pub handled_by: Option<String>,
    /// The queue it was taken from.
    pub original_queue: Option<String>,
    pub correlation_id: Option<String>,
    /// Every header, as text (the session token was removed when it was dead-lettered).
    pub headers: std::collections::BTreeMap<String, String>,
    /// The body as text (lossy for non-UTF-8); passwords were replaced by `***`.
    pub body: String,
}

impl DeadLetter {
    fn from_incoming(message: IncomingMessage) -> Self {
        let text = |name: &str| match message.headers.get(name) {
            Some(HeaderValue::Text(s)) => Some(s.clone()),
            _ => None,
        };
        // The broker dead-letters on its own (delivery limit) without our headers; say so.
        let code = text(headers::DEAD_LETTER_CODE).unwrap_or_else(|| "delivery_limit".into());
        let reason = text(headers::DEAD_LETTER_REASON).unwrap_or_else(|| {
            "the broker dead-lettered it after too many deliveries without an ack (a worker crashed on it each time?)".into()
        });
        Self {
            message_id: message.message_id.clone(),
            message_type: message.message_type.clone(),
            code,
            reason,
            handled_by: text(headers::HANDLED_BY),
            original_queue: text(headers::ORIGINAL_QUEUE),
            correlation_id: message.correlation_id.clone(),
            headers: message
                .headers
                .iter()
                .map(|(name, value)| {
                    let value = match value {
                        HeaderValue::Text(s) | HeaderValue::Other(s) => s.clone(),
                        HeaderValue::Int(n) => n.to_string(),
                    };
                    (name.clone(), value)
                })
                .collect(),
            body: String::from_utf8_lossy(&message.body).into_owned(),
        }
    }

    fn truncated(mut self, chars: usize) -> Self {
        if self.body.chars().count() > chars {
            self.body = self.body.chars().take(chars).collect();
        }
        self
    }

    /// Why re-sending this letter would not re-send the original command, if it would not.
    fn not_redrivable(&self) -> Option<String> {
        if self.message_id.is_none() {
            return Some(
                "it has no message id, so the inbox could not tell a repeat from a new command"
                    .into(),
            );
        }
        if self.body.to_ascii_lowercase().contains("password") {
            return Some(
                "its body was redacted when it was dead-lettered (a password was removed); ask its sender to send it again"
                    .into(),
            );
        }
        None
    }
}

/// Which dead letters to re-drive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// These message ids.
    Ids(Vec<String>),
    /// Every letter with this reason code (e.g. `retries_exhausted`).
    Code(String),
    /// Every letter in the queue.
    All,
}

impl Selection {
    fn matches(&self, letter: &DeadLetter) -> bool {
        match self {
            Self::Ids(ids) => letter
                .message_id
                .as_ref()
                .is_some_and(|id| ids.contains(id)),
            Self::Code(code) => &letter.code == code,
            Self::All => true,
        }
    }

    fn ids(&self) -> Option<&[String]> {
        match self {
            Self::Ids(ids) => Some(ids),
            _ => None,
        }
    }
}

/// What a re-drive did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Redrive {
    /// Message ids sent back to the service (and removed from the dead-letter queue).
    pub redriven: Vec<String>,
    /// Selected but kept, with why.
    pub refused: Vec<Refused>,
    /// Ids asked for that are not in the dead-letter queue.
    pub not_found: Vec<String>,
    /// Letters left in the dead-letter queue.
    pub left: usize,
}

/// A selected dead letter that was not re-driven.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Refused {
    pub message_id: String,
    pub why: String,
}
