//! Every name on the broker, and only here.
//!
//! All names are prefixed by a [`Namespace`] so that several systems (or several tests) can
//! share one broker without seeing each other's messages.
//!
//! ```text
//! client ──▶ {ns}.commands (direct) ──routing key = service──▶ {ns}.{service}.commands (quorum)
//!                                                                 │ poison / delivery limit
//!                                                                 ▼
//!                            {ns}.dead-letter (direct) ──service──▶ {ns}.{service}.dead-letter
//! worker ──transient failure──▶ {ns}.{service}.retry (TTL) ──expires──▶ {ns}.commands
//! relay  ──▶ {ns}.events (topic, routing key = event type, e.g. catalog.stock_reserved)
//! ```

use std::fmt;
use std::str::FromStr;

/// The services of the seed's system. Each owns one command queue and one stream category.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Service {
    /// Server A.
    Auth,
    /// Server B.
    Catalog,
    /// Server C.
    Orders,
    /// Server D.
    Payments,
}

impl Service {
    /// Every service, in the seed's order.
    pub const ALL: [Service; 4] = [Self::Auth, Self::Catalog, Self::Orders, Self::Payments];

    /// The service's name on the wire: routing key, queue and message-type prefix.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Catalog => "catalog",
            Self::Orders => "orders",
            Self::Payments => "payments",
        }
    }
}

/// Whether a message type is a query: `{service}.query.{name}`.
pub fn is_query(message_type: &str) -> bool {
    message_type
        .split('.')
        .nth(1)
        .is_some_and(|part| part == "query")
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Service {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|service| service.name() == s)
            .ok_or_else(|| {
                format!("unknown service {s:?}; expected one of auth, catalog, orders, payments")
            })
    }
}

/// A prefix for every broker name: lowercase letters, digits, `-` and `_`, 1 to 40 characters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Namespace(String);

impl Namespace {
    /// Parses a namespace, saying what is wrong with a bad one.
    pub fn parse(value: &str) -> Result<Self, String> {
        let ok_len = (1..=40).contains(&value.len());
        let ok_chars = value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if ok_len && ok_chars {
            Ok(Self(value.to_owned()))
        } else {
            Err(format!(
                "namespace {value:?} is invalid: use 1 to 40 lowercase letters, digits, '-' or '_'"
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Namespace {
    fn default() -> Self {
        Self("eventline".to_owned())
    }
}

impl fmt::Display for Namespace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The names of every exchange and queue of one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    namespace: Namespace,
}

impl Topology {
    pub fn new(namespace: Namespace) -> Self {
        Self { namespace }
    }

    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// Direct exchange that clients publish commands to, with the service name as routing key.
    pub fn commands_exchange(&self) -> String {
        format!("{}.commands", self.namespace)
    }

    /// The routing key that sends a command to a service.
    pub fn command_routing_key(&self, service: Service) -> &'static str {
        service.name()
    }

    /// A service's command queue: its workers compete for its messages (the load balancer).
    pub fn command_queue(&self, service: Service) -> String {
        format!("{}.{}.commands", self.namespace, service)
    }

    /// The routing key of a service's queries (read-only requests answered from read models).
    pub fn query_routing_key(&self, service: Service) -> String {
        format!("{service}.queries")
    }

    /// A service's query queue: kept apart from commands so reads never wait behind writes.
    pub fn query_queue(&self, service: Service) -> String {
        format!("{}.{}.queries", self.namespace, service)
    }

    /// Holds commands that failed transiently until their delay expires, then sends them back
    /// to the commands exchange.
    pub fn retry_queue(&self, service: Service) -> String {
        format!("{}.{}.retry", self.namespace, service)
    }

    /// Where replies to the commands a service sends come back (the orders saga's inbox of
    /// outcomes). Durable: a reply survives the saga's worker restarting.
    pub fn reply_queue(&self, service: Service) -> String {
        format!("{}.{}.replies", self.namespace, service)
    }

    /// Holds messages a service schedules for itself (saga timeouts), each with its own
    /// expiration, then sends them to the commands exchange: a timer that survives restarts.
    pub fn delay_queue(&self, service: Service) -> String {
        format!("{}.{}.delay", self.namespace, service)
    }

    /// Direct exchange for messages that cannot be processed, routed by service name.
    pub fn dead_letter_exchange(&self) -> String {
        format!("{}.dead-letter", self.namespace)
    }

    /// A service's dead-letter queue: poison and given-up messages with their reason.
    pub fn dead_letter_queue(&self, service: Service) -> String {
        format!("{}.{}.dead-letter", self.namespace, service)
    }

    /// Topic exchange that the relay publishes committed events to, routed by event type.
    pub fn events_exchange(&self) -> String {
        format!("{}.events", self.namespace)
    }

    /// Fanout exchange that every worker replica and the relay announce themselves on about
    /// once a second (`runtime::presence`): who is alive, and what it has handled. Its
    /// messages expire within seconds; nothing durable is ever bound to it.
    pub fn presence_exchange(&self) -> String {
        format!("{}.presence", self.namespace)
    }

    /// A binding pattern on the events exchange for every event of a service.
    pub fn events_of(&self, service: Service) -> String {
        format!("{service}.#")
    }

    /// A durable queue that sees every relayed event, for an auditor that must not miss one
    /// even across a broker restart (the chaos checks).
    pub fn tap_queue(&self, name: &str) -> String {
        format!("{}.tap.{name}", self.namespace)
    }

    /// Every queue this namespace may own, for clean-up tools and tests. (It once left out
    /// replies and timers, so deleting a namespace left those two queues behind.)
    pub fn all_queues(&self) -> Vec<String> {
        Service::ALL
            .into_iter()
            .flat_map(|s| self.service_queues(s))
            .collect()
    }

    /// Every exchange this namespace owns.
    pub fn all_exchanges(&self) -> Vec<String> {
        vec![
            self.commands_exchange(),
            self.dead_letter_exchange(),
            self.events_exchange(),
            self.presence_exchange(),
        ]
    }
}

/// Who connects to the broker. Each gets a user of its own whose permissions cover only what
/// it declares, consumes and publishes to (README, "Least privilege").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BrokerUser {
    /// A service's workers (commands, queries, replies, and its projections' processes).
    Service(Service),
    /// The relay: publishes committed events, consumes nothing.
    Relay,
}

impl BrokerUser {
    /// Every user of a deployment: the four services and the relay.
    pub const ALL: [BrokerUser; 5] = [
        Self::Service(Service::Auth),
        Self::Service(Service::Catalog),
        Self::Service(Service::Orders),
        Self::Service(Service::Payments),
        Self::Relay,
    ];

    /// `auth`, `catalog`, `orders`, `payments` or `relay`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Service(service) => service.name(),
            Self::Relay => "relay",
        }
    }
}

/// RabbitMQ's three permissions for one user: regular expressions over exchange and queue
/// names, anchored, matching exactly the names listed (see `rabbitmqctl set_permissions`).
///
/// `configure` declares and deletes, `write` publishes to an exchange or binds a queue, `read`
/// consumes from a queue or binds from an exchange. The default exchange is `amq.default`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerPermissions {
    pub configure: String,
    pub write: String,
    pub read: String,
}

/// RabbitMQ's direct reply-to pseudo-queue: a client consumes it and names it in `reply_to`
/// (see `reply_to`, which checks the names the broker rewrites it to).
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// The name RabbitMQ checks permissions against when a message goes to the default exchange.
pub const DEFAULT_EXCHANGE: &str = "amq.default";

/// `^(a|b|c)$` with every `.` escaped; `^$` (nothing) for no names.
fn exactly(names: &[String]) -> String {
    if names.is_empty() {
        return "^$".to_owned();
    }
    let names: Vec<String> = names.iter().map(|n| n.replace('.', "\\.")).collect();
    format!("^({})$", names.join("|"))
}

impl Topology {
    /// The broker user name of `user` in this namespace, e.g. `eventline-catalog`: one set of
    /// users per namespace, since their permissions name the namespace's queues.
    pub fn broker_user(&self, user: BrokerUser) -> String {
        format!("{}-{}", self.namespace, user.name())
    }

    /// Every queue a service declares and owns.
    pub fn service_queues(&self, service: Service) -> Vec<String> {
        vec![
            self.command_queue(service),
            self.query_queue(service),
            self.retry_queue(service),
            self.reply_queue(service),
            self.delay_queue(service),
            self.dead_letter_queue(service),
        ]
    }

    /// What `user` may do on the broker, and nothing more.
    ///
    /// A service may configure, bind and consume only its own queues. It re-declares the
    /// shared exchanges at start (so no process depends on another having started first),
    /// which needs `configure` on them. It publishes to the commands exchange (saga steps;
    /// its retry and timer queues also dead-letter there, which RabbitMQ checks as a write when
    /// it declares them), to the dead-letter exchange, and to the default exchange (replies,
    /// retries, timers). Write on the default exchange cannot be narrowed by queue name in
    /// RabbitMQ, so what is confined is reading: no service can consume, purge or delete
    /// another's queue. The relay only declares the exchanges and publishes events.
    pub fn permissions(&self, user: BrokerUser) -> BrokerPermissions {
        let exchanges = self.all_exchanges();
        match user {
            BrokerUser::Service(service) => {
                let own = self.service_queues(service);
                let shared = [self.commands_exchange(), self.dead_letter_exchange()];
                let mut write = own.clone();
                write.extend(shared.iter().cloned());
                write.push(self.presence_exchange());
                write.push(DEFAULT_EXCHANGE.to_owned());
                let mut read = own.clone();
                read.extend(shared.iter().cloned());
                let mut configure = own;
                configure.extend(exchanges);
                BrokerPermissions {
                    configure: exactly(&configure),
                    write: exactly(&write),
                    read: exactly(&read),
                }
            }
            BrokerUser::Relay => BrokerPermissions {
                configure: exactly(&exchanges),
                write: exactly(&[self.events_exchange(), self.presence_exchange()]),
                read: exactly(&[]),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_rejects_names_that_would_break_broker_names() {
        assert!(Namespace::parse("t-01_x").is_ok());
        for bad in ["", "UPPER", "has.dot", "has space", &"x".repeat(41)] {
            assert!(Namespace::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn every_name_carries_the_namespace() {
        let topology = Topology::new(Namespace::parse("ns1").unwrap());
        for name in topology
            .all_queues()
            .iter()
            .chain(&topology.all_exchanges())
        {
            assert!(name.starts_with("ns1."), "{name} is not namespaced");
        }
    }

    /// The names a pattern from `exactly` matches (its inverse, for checking by name).
    fn names(pattern: &str) -> Vec<String> {
        let inner = pattern
            .strip_prefix("^(")
            .and_then(|p| p.strip_suffix(")$"))
            .unwrap_or("");
        inner
            .split('|')
            .filter(|n| !n.is_empty())
            .map(|n| n.replace("\\.", "."))
            .collect()
    }

    #[test]
    fn a_service_may_read_only_its_own_queues() {
        let topology = Topology::new(Namespace::parse("ns1").unwrap());
        let catalog = topology.permissions(BrokerUser::Service(Service::Catalog));
        let read = names(&catalog.read);
        assert!(read.contains(&topology.command_queue(Service::Catalog)));
        assert!(read.contains(&topology.dead_letter_queue(Service::Catalog)));
        for other in [Service::Auth, Service::Orders, Service::Payments] {
            for queue in topology.service_queues(other) {
                assert!(!read.contains(&queue), "catalog may read {queue}");
                assert!(!names(&catalog.configure).contains(&queue));
                assert!(!names(&catalog.write).contains(&queue));
            }
        }
        assert!(!read.contains(&topology.events_exchange()));
        assert_eq!(
            catalog.read,
            format!(
                "^({})$",
                read.iter()
                    .map(|n| n.replace('.', "\\."))
                    .collect::<Vec<_>>()
                    .join("|")
            )
        );
    }

    #[test]
    fn the_relay_only_publishes_events() {
        let topology = Topology::new(Namespace::parse("ns1").unwrap());
        let relay = topology.permissions(BrokerUser::Relay);
        assert_eq!(relay.read, "^$");
        assert_eq!(relay.write, "^(ns1\\.events|ns1\\.presence)$");
        assert_eq!(topology.broker_user(BrokerUser::Relay), "ns1-relay");
    }
}
