//! Waiting for a command's reply: a waiter per message id, answered by the reply router that
//! `Client::connect` starts on its direct reply-to consumer, or timed out and forgotten.

use std::time::Duration;

use eventline_events::reply_to::DIRECT_REPLY_TO;
use eventline_events::{Contract, MessageId, Metadata, OutgoingMessage, Reply};
use tokio::sync::oneshot;

use super::{Client, ClientError};

impl Client {
    /// Publishes a typed command and waits for its reply.
    pub async fn request<C: Contract>(
        &self,
        command: &C,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        let message = OutgoingMessage::new(Metadata::origin(command.message_type()), command);
        self.request_message(message, timeout).await
    }

    /// Publishes a prepared message (any type, any body, e.g. from the CLI) and waits for its
    /// reply. Sending the same message again (same message id) is safe: the worker answers a
    /// duplicate with the reply it stored the first time.
    pub async fn request_message(
        &self,
        mut message: OutgoingMessage,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        // The broker rewrites it to this channel's own direct reply-to name.
        message.metadata.reply_to = Some(DIRECT_REPLY_TO.to_owned());
        let message_id = message.metadata.message_id;
        let (tx, rx) = oneshot::channel();
        if let Ok(mut pending) = self.pending.lock() {
            pending.entry(message_id).or_default().push(tx);
        }
        if let Err(error) = self.publish(&message).await {
            drop(rx);
            self.forget(message_id);
            return Err(error);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => {
                self.forget(message_id);
                Err(ClientError::Timeout {
                    message_id,
                    timeout,
                })
            }
        }
    }

    /// Drops waiters whose receiver is gone (timed out), keeping any still waiting.
    fn forget(&self, message_id: MessageId) {
        if let Ok(mut pending) = self.pending.lock()
            && let Some(waiters) = pending.get_mut(&message_id)
        {
            waiters.retain(|w| !w.is_closed());
            if waiters.is_empty() {
                pending.remove(&message_id);
            }
        }
    }
}
