//! Publishing a reply to its `reply_to` without letting a forged address cost the worker its
//! connection.
//!
//! The decoder already refuses every direct reply-to name the broker could not have written
//! (`eventline_events::reply_to`). What it cannot know is whether a well-formed name's node tag
//! is one the broker knows: RabbitMQ 3.10 crashes the publishing channel, and closes its whole
//! connection, on a tag it does not. So the first reply to each node tag goes out on a
//! connection of its own; if that connection survives the publish, the tag is remembered as
//! good and later replies to it take the session's publisher, and if the broker closes it, the
//! tag is remembered as bad and nothing more is sent to it. A cluster has a few nodes, so this
//! costs one extra connection per node per worker process. The memory is bounded: once it
//! holds [`MAX_NODES`] tags, an unseen tag is refused without a probe, so a client inventing
//! tags cannot make a worker open connections without end.

use std::collections::HashMap;
use std::sync::Mutex;

use eventline_amqp::SecretUrl;
use eventline_amqp::broker::{self, BrokerError};
use eventline_events::reply_to::{self, ReplyAddress};
use eventline_events::{Namespace, OutgoingMessage};
use lapin::Channel;

use super::metrics;

/// How many node tags one worker process remembers (good or bad).
pub const MAX_NODES: usize = 64;

/// Why a reply was not sent.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("reply_to {0:?} is not a usable address: {1}")]
    Invalid(String, reply_to::InvalidReplyTo),
    #[error("reply_to names direct reply-to node {0:?}, which this broker does not know")]
    UnknownNode(String),
}

/// The direct reply-to node tags this process has tried, and whether the broker took them.
pub struct ReplyNodes {
    namespace: Namespace,
    known: Mutex<HashMap<String, bool>>,
    /// One probe at a time: a burst of replies to one new node opens one connection, not many.
    probing: tokio::sync::Mutex<()>,
}

impl ReplyNodes {
    pub fn new(namespace: Namespace) -> Self {
        Self {
            namespace,
            known: Mutex::default(),
            probing: tokio::sync::Mutex::default(),
        }
    }

    /// Publishes `message` to `reply_to` on the default exchange, on `publisher` unless the
    /// address is a direct reply-to name on a node not yet known to be good.
    pub async fn publish(
        &self,
        publisher: &Channel,
        url: &SecretUrl,
        reply_to: &str,
        message: &OutgoingMessage,
    ) -> Result<(), ReplyError> {
        let node = match reply_to::classify(reply_to) {
            Ok(ReplyAddress::Queue) => None,
            Ok(ReplyAddress::Direct { node }) => Some(node),
            Err(why) => return Err(ReplyError::Invalid(reply_to.to_owned(), why)),
        };
        let Some(node) = node else {
            return Ok(broker::publish_reply(publisher, reply_to, message).await?);
        };
        if self.verdict(&node)? {
            return Ok(broker::publish_reply(publisher, reply_to, message).await?);
        }
        let _one = self.probing.lock().await;
        // Another reply may have settled this node while we waited.
        if self.verdict(&node)? {
            return Ok(broker::publish_reply(publisher, reply_to, message).await?);
        }
        let connection = broker::connect_publisher(url, "reply probe").await?;
        let sent = async {
            let channel = broker::confirm_channel(&connection).await?;
            let sent = broker::publish_reply(&channel, reply_to, message).await;
            broker::close_channel(&channel, "probe done").await;
            sent
        }
        .await;
        let _ = connection.close(200, "probe done".into()).await;
        // A connection the broker closed under the publish is this tag's fault; any other
        // failure (a negative confirm) is reported as it is, and the tag is tried again.
        match sent {
            Ok(()) => {
                metrics::reply_probed(&self.namespace, true);
                self.remember(node, true);
                Ok(())
            }
            Err(BrokerError::Amqp(_)) => {
                metrics::reply_probed(&self.namespace, false);
                self.remember(node.clone(), false);
                Err(ReplyError::UnknownNode(node))
            }
            Err(other) => Err(other.into()),
        }
    }

    /// `Ok(true)`: known good; `Ok(false)`: not tried yet, and there is room to try it;
    /// `Err`: known bad, or unknown with no room left.
    fn verdict(&self, node: &str) -> Result<bool, ReplyError> {
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        match known.get(node) {
            Some(true) => Ok(true),
            Some(false) => Err(ReplyError::UnknownNode(node.to_owned())),
            None if known.len() >= MAX_NODES => Err(ReplyError::UnknownNode(node.to_owned())),
            None => Ok(false),
        }
    }

    fn remember(&self, node: String, good: bool) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() < MAX_NODES {
            known.insert(node, good);
        }
    }
}
