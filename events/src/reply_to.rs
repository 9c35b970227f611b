//! The `reply_to` address: a queue name, or RabbitMQ's direct reply-to.
//!
//! A client that consumes the pseudo-queue [`DIRECT_REPLY_TO`] (no-ack, on the channel it
//! publishes on) and sets `reply_to` to that name gets its replies straight from the broker's
//! channel process, with no reply queue to enqueue into and deliver from. The broker rewrites
//! the property to `amq.rabbitmq.reply-to.<pid>.<key>`, where `<pid>` is the base64 of an
//! Erlang pid whose node is a tag such as `reply@9248884`.
//!
//! Why a worker must check that name before it publishes to it: RabbitMQ 3.10 decodes the pid
//! in the publishing channel, and a name it cannot decode (a bad base64, a pid of another
//! shape, or a node tag it does not know) crashes that channel and closes the publisher's
//! whole connection with `INTERNAL_ERROR`. Any client can put any `reply_to` on a command, so
//! without this check one forged property would drop a worker's connection, and every
//! delivery in flight on it, each time the command was redelivered. This module checks the
//! shape; the worker checks the node tag against the one its own broker node hands out.

pub use crate::topology::DIRECT_REPLY_TO;

/// What a well-formed `reply_to` names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyAddress {
    /// A queue, reached by the default exchange. A queue that does not exist just drops the
    /// reply: harmless to the publisher.
    Queue,
    /// A direct reply-to channel on the broker node with this tag (`reply@…`).
    Direct { node: String },
}

/// Why a `reply_to` cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidReplyTo(&'static str);

/// Classifies a `reply_to`: a queue name, or a direct reply-to name of the shape the broker
/// itself writes (anything else under the `amq.rabbitmq.reply-to` prefix is refused).
pub fn classify(reply_to: &str) -> Result<ReplyAddress, InvalidReplyTo> {
    let Some(rest) = reply_to.strip_prefix(DIRECT_REPLY_TO) else {
        return Ok(ReplyAddress::Queue);
    };
    if rest.is_empty() {
        // The pseudo-queue's own name: the broker only writes it through for a channel that
        // does not consume it, and a publish to it is dropped.
        return Err(InvalidReplyTo(
            "is the bare direct reply-to name: consume amq.rabbitmq.reply-to on the channel you publish on, or name a queue",
        ));
    }
    let (pid, key) = rest
        .strip_prefix('.')
        .and_then(|r| r.split_once('.'))
        .ok_or(InvalidReplyTo(
            "is not amq.rabbitmq.reply-to.<pid>.<key> as the broker writes it",
        ))?;
    if key.is_empty() || key.contains('.') {
        return Err(InvalidReplyTo("has no usable key after the pid"));
    }
    let node = pid_node(pid).ok_or(InvalidReplyTo(
        "does not hold a pid the broker wrote (base64 of a NEW_PID_EXT on a reply@ node)",
    ))?;
    Ok(ReplyAddress::Direct { node })
}

/// The node tag of a base64-encoded pid in RabbitMQ 3.10's direct reply-to format: version
/// 131, NEW_PID_EXT (88), ATOM_UTF8_EXT (118), a 16-bit length, the node, then id, serial and
/// creation (4 bytes each). Nothing else is accepted.
fn pid_node(pid: &str) -> Option<String> {
    let bytes = base64_decode(pid)?;
    let (head, rest) = bytes.split_first_chunk::<5>()?;
    let [131, 88, 118, hi, lo] = *head else {
        return None;
    };
    let len = usize::from(u16::from_be_bytes([hi, lo]));
    if rest.len() != len + 12 {
        return None;
    }
    let node = std::str::from_utf8(&rest[..len]).ok()?;
    let digits = node.strip_prefix("reply@")?;
    (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())).then(|| node.to_owned())
}

/// Standard base64, padded or not: what the broker writes is padded, or needs none.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const STANDARD_ANY_PADDING: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    STANDARD_ANY_PADDING.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pid and key of a name a RabbitMQ 3.10 node wrote for a real consumer.
    const REAL: &str = ".g1h2AA1yZXBseUA5MjQ4ODg0AAAC/QAAAABrD+/6.b0H+f3raDndoBxFJuuQ6ZA==";

    /// `amq.rabbitmq.reply-to` followed by `rest`.
    fn named(rest: &str) -> String {
        format!("{DIRECT_REPLY_TO}{rest}")
    }

    fn direct(node: &str) -> Result<ReplyAddress, InvalidReplyTo> {
        Ok(ReplyAddress::Direct { node: node.into() })
    }

    #[test]
    fn a_name_the_broker_wrote_is_a_direct_address_on_its_node() {
        assert_eq!(classify(&named(REAL)), direct("reply@9248884"));
    }

    #[test]
    fn queue_names_are_queues() {
        for name in [
            "amq.gen-JzTY20BRgKO-HjmUJj0wLg",
            "eventline.orders.replies",
            "x",
        ] {
            assert_eq!(classify(name), Ok(ReplyAddress::Queue), "{name}");
        }
    }

    /// Each of these closed the publisher's connection on RabbitMQ 3.10.8 (541
    /// INTERNAL_ERROR) when tried by hand; none may reach a worker's publish.
    #[test]
    fn names_the_broker_cannot_decode_are_refused() {
        for rest in [
            "",
            ".",
            ".garbage",
            ".g1h2.x",
            ".!!!.x",
            // An ATOM_EXT node (a pid of another shape).
            ".g1hkABNyYWJiaXRAbG9jYWxob3N0AAAAAAAAAAAAAAAA.xxxx",
            // A real pid with its key missing, or a dot too many.
            ".g1h2AA1yZXBseUA5MjQ4ODg0AAAC/QAAAABrD+/6.",
            ".g1h2AA1yZXBseUA5MjQ4ODg0AAAC/QAAAABrD+/6.a.b",
            // One byte short.
            ".g1h2AA1yZXBseUA5MjQ4ODg0AAAC/QAAAABrD+8.key",
        ] {
            let name = named(rest);
            assert!(classify(&name).is_err(), "{name} was accepted");
        }
    }

    #[test]
    fn a_well_formed_pid_on_another_node_is_direct_on_that_node() {
        // Well formed, so only the worker's node check can refuse it (a node tag the broker
        // does not know also crashes its channel).
        assert_eq!(
            classify(&named(".g1h2AA1yZXBseUAxMjM0NTY3AAAAAQAAAAAAAAAF.abc")),
            direct("reply@1234567")
        );
    }

    #[test]
    fn base64_decodes_with_or_without_padding_and_refuses_other_alphabets() {
        assert_eq!(base64_decode("aGk=").as_deref(), Some(&b"hi"[..]));
        assert_eq!(base64_decode("aGk").as_deref(), Some(&b"hi"[..]));
        assert_eq!(base64_decode("aGVsbG8h").as_deref(), Some(&b"hello!"[..]));
        assert_eq!(base64_decode("aG-k"), None);
        assert_eq!(base64_decode("a"), None);
    }
}
