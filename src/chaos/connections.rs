//! A client connection for the chaos load, re-made whenever a fault drops it, as a real
//! client's would be; and delivery with the same message id until answered.

use super::system::Answer;
use super::system::System;
use crate::client::Client;
use eventline_events::Namespace;
use eventline_events::OutgoingMessage;
use eventline_events::Reply;
use eventline_events::Service;
use eventline_events::auth::Role;
use eventline_workers::runtime::SecretUrl;
use eventline_workers::runtime::token;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use tokio::sync::Mutex;

/// A client connection that is re-made whenever the broker drops it, as a real client's
/// would be.
pub(super) struct Connections {
    url: SecretUrl,
    namespace: Namespace,
    token: String,
    current: Mutex<Option<Arc<Client>>>,
}

impl Connections {
    pub(super) fn new(system: &System<'_>, role: Role) -> Self {
        Self {
            url: system.base.amqp_url.clone(),
            namespace: system.namespace.clone(),
            token: token::mint(&system.signing, role, 3600),
            current: Mutex::new(None),
        }
    }

    pub(super) async fn get(&self) -> anyhow::Result<Arc<Client>> {
        let mut current = self.current.lock().await;
        if let Some(client) = current.as_ref() {
            return Ok(client.clone());
        }
        let client = Arc::new(
            Client::connect(&self.url, self.namespace.clone())
                .await?
                .with_token(self.token.clone()),
        );
        *current = Some(client.clone());
        Ok(client)
    }

    pub(super) async fn forget(&self, broken: &Arc<Client>) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, broken)) {
            *current = None;
        }
    }

    /// Publishes a raw message (the same id every time) until the broker confirms it.
    pub(super) async fn publish_raw(
        &self,
        service: Service,
        body: &[u8],
        properties: lapin::BasicProperties,
        bound: Duration,
    ) -> bool {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if let Ok(client) = self.get().await {
                let sent = tokio::time::timeout(
                    Duration::from_secs(5),
                    client.publish_raw(service, body, properties.clone()),
                )
                .await;
                if let Ok(Ok(())) = sent {
                    return true;
                }
                self.forget(&client).await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    /// Sends `message` (the same id every time) until a reply comes or `bound` passes.
    pub(super) async fn deliver(
        &self,
        message: &OutgoingMessage,
        bound: Duration,
        twice: bool,
    ) -> Answer {
        let deadline = Instant::now() + bound;
        let wait = Duration::from_secs(3);
        while Instant::now() < deadline {
            let Ok(client) = self.get().await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            if twice {
                let _ = client.publish(message).await;
            }
            match tokio::time::timeout(
                wait + Duration::from_secs(1),
                client.request_message(message.clone(), wait),
            )
            .await
            {
                Ok(Ok(Reply::Accepted { .. })) => return Answer::Accepted,
                Ok(Ok(Reply::Rejected { reason })) => return Answer::Refused(reason.code),
                Ok(Err(crate::ClientError::Timeout { .. })) => {}
                // Connection trouble (or a publish blocked by an alarm): reconnect, resend.
                Ok(Err(_)) | Err(_) => {
                    self.forget(&client).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        Answer::Unanswered
    }
}
