//! Publishing: a typed or prepared command to the service its type names, with the session
//! token and (for saga steps sent by hand) orders' credential, returning once confirmed.

use eventline_amqp::broker;
use eventline_amqp::{credential, propagation};
use eventline_events::auth::{SERVICE_CREDENTIAL_HEADER, TOKEN_HEADER};
use eventline_events::envelope::HeaderValue;
use eventline_events::topology::is_query;
use eventline_events::{Contract, MessageId, Metadata, OutgoingMessage, Service};

use super::{Client, ClientError, service_of};

impl Client {
    /// Publishes a typed command that starts a new conversation; returns once the broker has it.
    pub async fn send<C: Contract>(&self, command: &C) -> Result<MessageId, ClientError> {
        let message = OutgoingMessage::new(Metadata::origin(command.message_type()), command);
        self.publish(&message).await?;
        Ok(message.metadata.message_id)
    }

    /// Publishes a prepared message to the service its type names, with a confirm.
    pub async fn publish(&self, message: &OutgoingMessage) -> Result<(), ClientError> {
        let service = service_of(&message.metadata.message_type)?;
        let traced = propagation::stamped(message);
        let message = traced.as_ref();
        let with_token;
        let message = if self.token.is_some() || self.saga_key.is_some() {
            let mut m = message.clone();
            if let Some(token) = &self.token {
                m.extra_headers
                    .push((TOKEN_HEADER, HeaderValue::Text(token.clone())));
            }
            if let Some(key) = &self.saga_key {
                let credential = credential::service_credential(
                    key,
                    &m.metadata.message_id.to_string(),
                    &m.metadata.message_type,
                    &m.body,
                );
                m.extra_headers
                    .push((SERVICE_CREDENTIAL_HEADER, HeaderValue::Text(credential)));
            }
            with_token = m;
            &with_token
        } else {
            message
        };
        let routing_key = if is_query(&message.metadata.message_type) {
            self.topology.query_routing_key(service)
        } else {
            self.topology.command_routing_key(service).to_owned()
        };
        broker::publish_message(
            &self.publisher,
            &self.topology.commands_exchange(),
            &routing_key,
            message,
        )
        .await?;
        Ok(())
    }

    /// Publishes raw bytes with raw properties to a service's commands: for tests and tools
    /// that need to send what a well-behaved client never would.
    pub async fn publish_raw(
        &self,
        service: Service,
        body: &[u8],
        properties: lapin::BasicProperties,
    ) -> Result<(), ClientError> {
        broker::publish_confirmed(
            &self.publisher,
            &self.topology.commands_exchange(),
            self.topology.command_routing_key(service),
            body,
            properties,
        )
        .await?;
        Ok(())
    }
}
