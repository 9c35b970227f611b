//! Configuration from the environment. The redacting URL type that keeps passwords out of
//! logs and errors is `eventline_amqp::SecretUrl`, re-exported here.

use std::fmt;
use std::time::Duration;

pub use eventline_amqp::SecretUrl;
use eventline_events::{Namespace, Service};

/// Where the services are and how a process identifies itself.
#[derive(Clone, Debug)]
pub struct Config {
    pub amqp_url: SecretUrl,
    pub database_url: SecretUrl,
    pub namespace: Namespace,
    /// This process's name in logs, replies and the inbox (which replica handled what).
    pub replica: String,
    /// How many unacknowledged deliveries a worker holds at once; also its concurrency.
    pub prefetch: u16,
    /// Database connections per process.
    pub max_db_connections: u32,
    pub auth: AuthKeys,
    /// The saga's services' key pairs for service credentials on steps and their replies.
    pub saga: SagaKeys,
    /// How long the order saga waits for catalog and payments before cancelling an order.
    pub saga_timeout: Duration,
    pub payments: PaymentSettings,
    /// How long the inbox remembers a message id: a re-send within it has one effect; older
    /// inbox rows are pruned (`inbox.rs`).
    pub dedup_window: Duration,
    /// How long a message waits for a database connection before its transient handling
    /// starts (a database that is away answers nothing; this is how long we listen).
    pub db_acquire_timeout: Duration,
    /// How failures are retried and when they are given up on (see [`RetryPolicy`]).
    pub retry: RetryPolicy,
}

/// How the worker retries what failed and when it gives up: one value, read by the one
/// settlement function (`runtime::settle`). No queue argument depends on it — the retry
/// delay travels on each retried message as its `expiration` — so changing it is a restart
/// with other environment variables, never a re-declare the broker refuses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in the worker, with [`RetryPolicy::in_process_backoff`] between them, before
    /// a transient failure goes to the retry queue.
    pub in_process_attempts: u32,
    /// The first pause between in-process attempts; it doubles, up to one second.
    pub in_process_backoff: Duration,
    /// Rounds through the retry queue before a transient failure is dead-lettered.
    pub max_rounds: u32,
    /// How long a retried message waits in the retry queue (its per-message expiration).
    /// The same for every message of a policy, so the queue stays first-in first-out.
    pub retry_delay: Duration,
    /// Deliveries of a message whose handler panicked (it is requeued, and the quorum
    /// queue counts it) before the worker dead-letters it with the panic as reason. At most
    /// the queues' own backstop, `broker::QUEUE_DELIVERY_LIMIT`.
    pub delivery_limit: u32,
    /// Immediate re-decides after version conflicts before a command counts as transient.
    pub max_conflict_retries: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            in_process_attempts: 3,
            in_process_backoff: Duration::from_millis(50),
            max_rounds: 10,
            retry_delay: Duration::from_secs(1),
            delivery_limit: 5,
            max_conflict_retries: 20,
        }
    }
}

/// The keys for session tokens. Every service needs the public key to verify tokens; only
/// auth needs the signing key.
#[derive(Clone, Debug, Default)]
pub struct AuthKeys {
    pub verifying: Option<ed25519_dalek::VerifyingKey>,
    pub signing: Option<SigningKey>,
}

/// A signing key whose `Debug` never shows it.
#[derive(Clone)]
pub struct SigningKey(pub ed25519_dalek::SigningKey);

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

impl AuthKeys {
    /// Keys for a signing key: the public half is derived from it.
    pub fn from_signing(key: ed25519_dalek::SigningKey) -> Self {
        Self {
            verifying: Some(key.verifying_key()),
            signing: Some(SigningKey(key)),
        }
    }
}

/// One service's key pair for service credentials (see [`super::token`]).
#[derive(Clone, Debug, Default)]
pub struct ServiceKeys {
    pub verifying: Option<ed25519_dalek::VerifyingKey>,
    pub signing: Option<SigningKey>,
}

impl ServiceKeys {
    /// Keys for a signing key: the public half is derived from it.
    pub fn from_signing(key: ed25519_dalek::SigningKey) -> Self {
        Self {
            verifying: Some(key.verifying_key()),
            signing: Some(SigningKey(key)),
        }
    }
}

/// The key pairs of the services that take part in the order saga, for service credentials
/// (see [`super::token`]): orders signs the steps it sends, catalog and payments verify them;
/// catalog and payments sign their replies to those steps, orders verifies each with the key
/// of the step's callee. Every process gets every public key; a worker keeps only its own
/// service's signing key ([`SagaKeys::keep_signing_key_of`]): a service holding another's
/// could speak for it.
#[derive(Clone, Debug, Default)]
pub struct SagaKeys {
    pub orders: ServiceKeys,
    pub catalog: ServiceKeys,
    pub payments: ServiceKeys,
}

impl SagaKeys {
    /// The services that sign saga traffic, each with the environment variables of its
    /// signing key and its public key.
    pub const SIGNERS: [(Service, &'static str, &'static str); 3] = [
        (
            Service::Orders,
            "EVENTLINE_ORDERS_SIGNING_KEY",
            "EVENTLINE_ORDERS_PUBLIC_KEY",
        ),
        (
            Service::Catalog,
            "EVENTLINE_CATALOG_SIGNING_KEY",
            "EVENTLINE_CATALOG_PUBLIC_KEY",
        ),
        (
            Service::Payments,
            "EVENTLINE_PAYMENTS_SIGNING_KEY",
            "EVENTLINE_PAYMENTS_PUBLIC_KEY",
        ),
    ];

    /// Fresh key pairs for all three (tests, the demo, chaos and bench runs).
    pub fn generate() -> Self {
        let new = || ServiceKeys::from_signing(super::token::generate_signing_key());
        Self {
            orders: new(),
            catalog: new(),
            payments: new(),
        }
    }

    /// `service`'s keys; `None` for a service that takes no part in the saga (auth).
    pub fn of(&self, service: Service) -> Option<&ServiceKeys> {
        match service {
            Service::Orders => Some(&self.orders),
            Service::Catalog => Some(&self.catalog),
            Service::Payments => Some(&self.payments),
            Service::Auth => None,
        }
    }

    fn of_mut(&mut self, service: Service) -> Option<&mut ServiceKeys> {
        match service {
            Service::Orders => Some(&mut self.orders),
            Service::Catalog => Some(&mut self.catalog),
            Service::Payments => Some(&mut self.payments),
            Service::Auth => None,
        }
    }

    /// Forgets every signing key but `service`'s own (one env file for all, as in a dev
    /// setup, must not let catalog sign as payments).
    pub fn keep_signing_key_of(&mut self, service: Service) {
        for (other, _, _) in Self::SIGNERS {
            if other != service
                && let Some(keys) = self.of_mut(other)
            {
                keys.signing = None;
            }
        }
    }

    /// The `EVENTLINE_{SERVICE}_SIGNING_KEY` variables for the signing keys held, for a
    /// child process (the public keys follow from them).
    pub fn signing_env(&self) -> Vec<(String, String)> {
        Self::SIGNERS
            .iter()
            .filter_map(|(service, signing, _)| {
                let key = self.of(*service)?.signing.as_ref()?;
                Some((
                    (*signing).to_owned(),
                    super::token::encode_key(&key.0.to_bytes()),
                ))
            })
            .collect()
    }
}

/// The simulated payment provider's behaviour (see `services::payments::provider`).
#[derive(Clone, Debug)]
pub struct PaymentSettings {
    /// Added to every provider call.
    pub latency: Duration,
    /// Percentage of calls (0 to 100) that fail transiently, to exercise retries.
    pub failure_percent: u32,
    /// How long `tok_slow` takes: longer than the saga timeout by default.
    pub slow_delay: Duration,
}

impl Default for PaymentSettings {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            failure_percent: 0,
            slow_delay: Duration::from_secs(15),
        }
    }
}

/// The default broker: the local RabbitMQ of a development machine.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The default database: `eventline` on the local PostgreSQL (created by `eventline migrate`).
pub const DEFAULT_DATABASE_URL: &str = "postgres://root@127.0.0.1:5432/eventline";
/// The dedup window by default: a week, as payment APIs keep idempotency keys for days.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
/// The database connection wait by default: a healthy pool hands one out in microseconds and
/// a new connection takes milliseconds, so a second means the database is away.
pub const DEFAULT_DB_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(1);

impl Config {
    /// The defaults: local services, namespace `eventline`, no auth keys.
    pub fn local() -> Self {
        Self {
            amqp_url: SecretUrl::new(DEFAULT_AMQP_URL),
            database_url: SecretUrl::new(DEFAULT_DATABASE_URL),
            namespace: Namespace::default(),
            replica: default_replica_name(),
            prefetch: 64,
            max_db_connections: 8,
            auth: AuthKeys::default(),
            saga: SagaKeys::default(),
            saga_timeout: Duration::from_secs(10),
            payments: PaymentSettings::default(),
            retry: RetryPolicy::default(),
            dedup_window: DEFAULT_DEDUP_WINDOW,
            db_acquire_timeout: DEFAULT_DB_ACQUIRE_TIMEOUT,
        }
    }

    /// Reads `AMQP_URL`, `DATABASE_URL`, `EVENTLINE_NAMESPACE`, `EVENTLINE_REPLICA`,
    /// `EVENTLINE_PREFETCH`, `EVENTLINE_DB_CONNECTIONS`, `EVENTLINE_DEDUP_WINDOW_SECS`,
    /// `EVENTLINE_DB_ACQUIRE_TIMEOUT_MS` and the `EVENTLINE_RETRY_*` policy, each with a local
    /// default.
    pub fn from_env() -> Result<Self, ConfigError> {
        let var = |name: &'static str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let namespace = match var("EVENTLINE_NAMESPACE") {
            Some(ns) => Namespace::parse(&ns).map_err(|reason| ConfigError::Invalid {
                name: "EVENTLINE_NAMESPACE",
                reason,
            })?,
            None => Namespace::default(),
        };
        let number =
            |name: &'static str, default: u32, min: u32, max: u32| -> Result<u32, ConfigError> {
                match var(name) {
                    None => Ok(default),
                    Some(v) => v
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (min..=max).contains(n))
                        .ok_or_else(|| ConfigError::Invalid {
                            name,
                            reason: format!("{v:?} is not a whole number from {min} to {max}"),
                        }),
                }
            };
        let key = |name: &'static str| -> Result<Option<[u8; 32]>, ConfigError> {
            var(name)
                .map(|v| {
                    super::token::decode_key(&v).ok_or(ConfigError::Invalid {
                        name,
                        reason: "not a base64url-encoded 32-byte key (generate one with `eventline keygen`)"
                            .to_owned(),
                    })
                })
                .transpose()
        };
        let mut auth = match key("EVENTLINE_AUTH_SIGNING_KEY")? {
            Some(seed) => AuthKeys::from_signing(ed25519_dalek::SigningKey::from_bytes(&seed)),
            None => AuthKeys::default(),
        };
        if let Some(public) = key("EVENTLINE_AUTH_PUBLIC_KEY")? {
            auth.verifying = Some(ed25519_dalek::VerifyingKey::from_bytes(&public).map_err(
                |_| ConfigError::Invalid {
                    name: "EVENTLINE_AUTH_PUBLIC_KEY",
                    reason: "not a valid Ed25519 public key".to_owned(),
                },
            )?);
        }
        let mut saga = SagaKeys::default();
        for (service, signing, public) in SagaKeys::SIGNERS {
            let Some(keys) = saga.of_mut(service) else {
                continue;
            };
            if let Some(seed) = key(signing)? {
                *keys = ServiceKeys::from_signing(ed25519_dalek::SigningKey::from_bytes(&seed));
            }
            if let Some(bytes) = key(public)? {
                keys.verifying = Some(ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(
                    |_| ConfigError::Invalid {
                        name: public,
                        reason: "not a valid Ed25519 public key".to_owned(),
                    },
                )?);
            }
        }
        let millis = |name: &'static str, default: u32| -> Result<Duration, ConfigError> {
            Ok(Duration::from_millis(u64::from(number(
                name, default, 0, 86_400_000,
            )?)))
        };
        let defaults = RetryPolicy::default();
        let retry = RetryPolicy {
            in_process_attempts: number(
                "EVENTLINE_RETRY_IN_PROCESS_ATTEMPTS",
                defaults.in_process_attempts,
                1,
                100,
            )?,
            in_process_backoff: millis(
                "EVENTLINE_RETRY_BACKOFF_MS",
                defaults.in_process_backoff.as_millis() as u32,
            )?,
            max_rounds: number("EVENTLINE_RETRY_MAX_ROUNDS", defaults.max_rounds, 0, 1000)?,
            retry_delay: millis(
                "EVENTLINE_RETRY_DELAY_MS",
                defaults.retry_delay.as_millis() as u32,
            )?,
            delivery_limit: number(
                "EVENTLINE_RETRY_DELIVERY_LIMIT",
                defaults.delivery_limit,
                1,
                super::broker::QUEUE_DELIVERY_LIMIT,
            )?,
            max_conflict_retries: number(
                "EVENTLINE_RETRY_MAX_CONFLICTS",
                defaults.max_conflict_retries,
                0,
                10_000,
            )?,
        };
        Ok(Self {
            auth,
            retry,
            saga,
            saga_timeout: millis("EVENTLINE_SAGA_TIMEOUT_MS", 10_000)?,
            payments: PaymentSettings {
                latency: millis("EVENTLINE_PAYMENT_LATENCY_MS", 0)?,
                failure_percent: number("EVENTLINE_PAYMENT_FAILURE_PERCENT", 0, 0, 100)?,
                slow_delay: millis("EVENTLINE_PAYMENT_SLOW_MS", 15_000)?,
            },
            amqp_url: SecretUrl::new(var("AMQP_URL").unwrap_or_else(|| DEFAULT_AMQP_URL.into())),
            database_url: SecretUrl::new(
                var("DATABASE_URL").unwrap_or_else(|| DEFAULT_DATABASE_URL.into()),
            ),
            namespace,
            replica: var("EVENTLINE_REPLICA").unwrap_or_else(default_replica_name),
            prefetch: number("EVENTLINE_PREFETCH", 64, 1, 1000)? as u16,
            max_db_connections: number("EVENTLINE_DB_CONNECTIONS", 8, 1, 200)?,
            // At least a second: the prune function refuses shorter windows.
            dedup_window: Duration::from_secs(u64::from(number(
                "EVENTLINE_DEDUP_WINDOW_SECS",
                DEFAULT_DEDUP_WINDOW.as_secs() as u32,
                1,
                366 * 24 * 3600,
            )?)),
            db_acquire_timeout: Duration::from_millis(u64::from(number(
                "EVENTLINE_DB_ACQUIRE_TIMEOUT_MS",
                DEFAULT_DB_ACQUIRE_TIMEOUT.as_millis() as u32,
                50,
                60_000,
            )?)),
        })
    }
}

/// `{hostname}-{pid}`: unique per process on a machine, and readable in a compose setup where
/// the hostname is the container id.
pub fn default_replica_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "local".to_owned());
    format!("{host}-{}", std::process::id())
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}
