//! One scenario's system under test: drive it (set up, load and faults at the same time),
//! then wait for it to settle and run the checks. It starts no process of its own (the
//! supervisor does) and owns no connection but through [`Connections`].

use super::ChaosOptions;
use super::INITIAL_STOCK;
use super::POISON;
use super::PROBE_PRODUCT;
use super::PRODUCTS;
use super::Row;
use super::Scenario;
use super::checks;
use super::connections::Connections;
use super::faults;
use crate::client::Client;
use crate::client::parse_order;
use crate::supervisor::Supervisor;
use anyhow::Context;
use anyhow::bail;
use eventline_events::CorrelationId;
use eventline_events::Metadata;
use eventline_events::Namespace;
use eventline_events::OutgoingMessage;
use eventline_events::Service;
use eventline_events::Topology;
use eventline_events::auth::Role;
use eventline_events::catalog::AddProduct;
use eventline_events::catalog::CatalogCommand;
use eventline_events::catalog::Restock;
use eventline_events::orders::OrdersCommand;
use eventline_events::values::Money;
use eventline_events::values::ProductId;
use eventline_events::values::ProductName;
use eventline_events::values::Quantity;
use eventline_events::values::StockLevel;
use eventline_workers::runtime::Config;
use eventline_workers::runtime::broker;
use eventline_workers::runtime::store::EventStore;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

pub(super) struct System<'a> {
    pub(super) base: &'a Config,
    pub(super) namespace: Namespace,
    pub(super) topology: Topology,
    pub(super) store: EventStore,
    pub(super) signing: ed25519_dalek::SigningKey,
    /// Orders' key, for the saga steps the duplicates scenario sends early.
    pub(super) saga: ed25519_dalek::SigningKey,
    pub(super) options: &'a ChaosOptions,
    pub(super) scenario: Scenario,
}

/// The answer a client finally got for one order.
#[derive(Debug)]
pub(super) enum Answer {
    Accepted,
    Refused(String),
    Unanswered,
}

impl System<'_> {
    pub(super) async fn drive(
        &self,
        supervisor: &mut Supervisor,
        targets: &faults::Targets<'_>,
    ) -> anyhow::Result<Row> {
        let replicas = self.options.replicas.max(1);
        let mut names = vec!["relay".to_owned()];
        supervisor.spawn("relay", &["relay"])?;
        for service in Service::ALL {
            for i in 1..=replicas {
                let name = format!("{service}-{i}");
                supervisor.spawn(&name, &["worker", service.name()])?;
                names.push(name);
            }
        }
        let audit = checks::Audit::declare(&self.base.amqp_url, &self.topology).await?;
        // Declared as the workers declare them (idempotent), so nothing sent before a worker
        // is up is returned unroutable.
        let connection = broker::connect(&self.base.amqp_url, "chaos setup").await?;
        let channel = connection.create_channel().await?;
        for service in Service::ALL {
            broker::declare_service_queues(&channel, &self.topology, service).await?;
        }
        let _ = connection.close(200, "declared".into()).await;
        let admin = Connections::new(self, Role::Admin);
        self.setup(&admin).await?;
        let connections_at_start = targets.amqp.accepted() + targets.postgres.accepted();

        let bound = Duration::from_secs(self.options.bound_s);
        let faults_done = std::sync::atomic::AtomicBool::new(false);
        let load = self.load(bound, &faults_done);
        let faults = async {
            let result = self
                .faults(supervisor, &names, targets, &admin, bound)
                .await;
            faults_done.store(true, std::sync::atomic::Ordering::Release);
            result
        };
        let lag = checks::relay_worst_lag(&self.store, &faults_done);
        let (answers, faults, relay_worst_lag) = tokio::join!(load, faults, lag);
        let (injected, mut evidence, longest_recovery, faults_cleared) = faults?;
        let reconnections = (targets.amqp.accepted() + targets.postgres.accepted())
            .saturating_sub(connections_at_start);
        if !evidence.is_empty() {
            evidence.push_str("; ");
        }
        evidence.push_str(&format!("{reconnections} connections re-opened by workers"));
        let answers = answers?;

        let accepted: Vec<_> = answers
            .iter()
            .filter(|(_, a)| matches!(a, Answer::Accepted))
            .map(|(id, _)| *id)
            .collect();
        let unanswered = answers
            .iter()
            .filter(|(_, a)| matches!(a, Answer::Unanswered))
            .count();
        let refused: BTreeMap<String, usize> =
            answers.iter().fold(BTreeMap::new(), |mut m, (_, a)| {
                if let Answer::Refused(code) = a {
                    *m.entry(code.clone()).or_default() += 1;
                }
                m
            });
        let ended = checks::wait_until_ended(&self.store, &accepted, faults_cleared + bound).await;
        let settled_after = faults_cleared.elapsed();
        let mut checks = checks::run(&self.store, &accepted, &PRODUCTS, INITIAL_STOCK).await?;
        checks.unanswered = unanswered;
        checks.refused = refused;
        checks.not_ended = ended.not_ended;
        checks.recovery_within_bound = longest_recovery < bound;
        // A fresh connection: the faults may have broken any cached one.
        let auditor = Client::connect(&self.base.amqp_url, self.namespace.clone()).await?;
        checks.dead_letters = checks::dead_letters(&auditor, POISON).await?;
        auditor.close().await;
        checks.relay = audit.verify(&self.store, bound).await?;
        Ok(Row {
            scenario: self.scenario.name(),
            faults_injected: injected,
            evidence,
            reconnections,
            sent: answers.len(),
            accepted: accepted.len(),
            lost: checks.lost + ended.not_ended,
            duplicated: checks.duplicated,
            longest_recovery,
            settled_after,
            relay_worst_lag,
            checks,
        })
    }

    /// Products with plenty of stock, so orders end by payment outcome, not by stock.
    async fn setup(&self, admin: &Connections) -> anyhow::Result<()> {
        let client = admin.get().await?;
        for (id, price) in PRODUCTS.iter().copied().chain([(PROBE_PRODUCT, 1)]) {
            let command = AddProduct {
                product_id: ProductId::parse(id.into()).map_err(anyhow::Error::msg)?,
                name: ProductName::parse(id.into()).map_err(anyhow::Error::msg)?,
                price: Money::parse(price).map_err(anyhow::Error::msg)?,
                initial_stock: StockLevel::parse(INITIAL_STOCK).map_err(anyhow::Error::msg)?,
            };
            let reply = client
                .request(&CatalogCommand::from(command), Duration::from_secs(30))
                .await
                .context("adding the products (did the workers start? see target/chaos-logs)")?;
            if !reply.is_accepted() {
                bail!("adding {id} was refused: {reply:?}");
            }
        }
        Ok(())
    }

    /// Two clients place the orders at a steady pace spread over the fault window, a few at a
    /// time, and a few poison messages; each order is retried under its one message id until
    /// it is answered or the bound passes.
    async fn load(
        &self,
        bound: Duration,
        faults_done: &std::sync::atomic::AtomicBool,
    ) -> anyhow::Result<Vec<(uuid::Uuid, Answer)>> {
        let clients = [
            Arc::new(Connections::new(self, Role::Customer)),
            Arc::new(Connections::new(self, Role::Customer)),
        ];
        let window = self.fault_window();
        let pace = window / (self.options.orders.max(1) as u32);
        let mut tasks = tokio::task::JoinSet::new();
        let limit = Arc::new(tokio::sync::Semaphore::new(8));
        // Orders keep coming, at a steady pace, until the faults are over and at least
        // `orders` were placed: every fault meets traffic.
        let every = (self.options.orders / POISON).max(1);
        let mut i = 0;
        while i < self.options.orders || !faults_done.load(std::sync::atomic::Ordering::Acquire) {
            if i % every == 0 && i / every < POISON {
                let (service, body, properties) = checks::poison(i / every);
                if !clients[0]
                    .publish_raw(service, &body, properties, bound)
                    .await
                {
                    bail!("a poison message could not be published within {bound:?}");
                }
            }
            let card = if i % 7 == 5 {
                "tok_declined"
            } else {
                "tok_visa"
            };
            let words = vec![
                format!("{}:{}", PRODUCTS[i % 3].0, 1 + i % 2),
                format!("{}:1", PRODUCTS[(i + 1) % 3].0),
            ];
            let order = parse_order(&words, card).map_err(anyhow::Error::msg)?;
            let mut metadata = Metadata::origin("orders.place_order");
            metadata.correlation_id = CorrelationId::from_uuid(order.order_id.as_uuid());
            let message = OutgoingMessage::new(metadata, &OrdersCommand::from(order));
            let client = clients[i % 2].clone();
            let permit = limit.clone().acquire_owned().await?;
            let twice = self.scenario == Scenario::Duplicates;
            tasks.spawn(async move {
                let answer = client.deliver(&message, bound, twice).await;
                drop(permit);
                (message.metadata.correlation_id.as_uuid(), message, answer)
            });
            tokio::time::sleep(pace).await;
            i += 1;
        }
        let mut answers = Vec::new();
        let mut replay = Vec::new();
        while let Some(done) = tasks.join_next().await {
            let (id, message, answer) = done?;
            if matches!(answer, Answer::Accepted) && replay.len() < 10 {
                replay.push(message);
            }
            answers.push((id, answer));
        }
        if self.scenario == Scenario::Duplicates {
            // Old message ids, replayed after their orders were handled: answered from the
            // inbox, never placed again.
            for message in replay {
                match clients[0].deliver(&message, bound, false).await {
                    Answer::Accepted => {}
                    other => bail!(
                        "a replayed place_order was answered {other:?}, not with its stored acceptance"
                    ),
                }
            }
            for step in checks::steps_before_state(&self.saga) {
                if let Answer::Unanswered = clients[0].deliver(&step, bound, false).await {
                    bail!(
                        "{} sent before its state was never answered",
                        step.metadata.message_type
                    );
                }
            }
        }
        Ok(answers)
    }

    fn fault_window(&self) -> Duration {
        let per_fault =
            Duration::from_millis(self.options.hold_ms.max(500)) + Duration::from_millis(500);
        per_fault * self.options.faults.max(1) as u32
    }

    /// Injects the fault `faults` times; after each one clears, times a fresh command until
    /// it is answered. Returns (faults injected, longest recovery, when the last cleared).
    async fn faults(
        &self,
        supervisor: &mut Supervisor,
        names: &[String],
        targets: &faults::Targets<'_>,
        admin: &Connections,
        bound: Duration,
    ) -> anyhow::Result<(usize, String, Duration, Instant)> {
        let hold = Duration::from_millis(self.options.hold_ms);
        let mut longest = Duration::ZERO;
        let mut seen: Vec<String> = Vec::new();
        let mut injected = 0;
        let mut rng = crate::demo::fastrand_like(names.len() as u64 + self.options.orders as u64);
        // Let the load start first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for _ in 0..self.options.faults {
            match self.scenario {
                Scenario::KillWorkers => {
                    // One replica of every service, and the relay, each time.
                    for prefix in Service::ALL.iter().map(|s| s.name()).chain(["relay"]) {
                        let candidates: Vec<&String> =
                            names.iter().filter(|n| n.starts_with(prefix)).collect();
                        let name = candidates[(rng() % candidates.len() as u64) as usize];
                        supervisor.kill(name).await;
                        seen.push(format!("killed {name}"));
                        let args: Vec<&str> = if name == "relay" {
                            vec!["relay"]
                        } else {
                            vec!["worker", prefix]
                        };
                        supervisor.spawn(name, &args)?;
                    }
                }
                Scenario::Duplicates => seen.push(
                    "every order delivered twice, 10 old ids replayed, 2 steps before their state"
                        .into(),
                ),
                lasting => {
                    seen.push(faults::inject(lasting, targets).await?);
                    if !matches!(
                        lasting,
                        Scenario::DbTerminate
                            | Scenario::NetDrop
                            | Scenario::BrokerConnections
                            | Scenario::DbRestart
                    ) {
                        tokio::time::sleep(hold).await;
                    }
                    faults::clear(lasting, targets).await?;
                }
            }
            injected += 1;
            let cleared = Instant::now();
            probe(admin, bound).await?;
            longest = longest.max(cleared.elapsed());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let mut counted: BTreeMap<String, usize> = BTreeMap::new();
        for what in seen {
            *counted.entry(what).or_default() += 1;
        }
        let evidence: Vec<String> = counted
            .into_iter()
            .map(|(what, n)| if n > 1 { format!("{what} ×{n}") } else { what })
            .collect();
        Ok((injected, evidence.join(", "), longest, Instant::now()))
    }
}

/// Restocks the probe product under a fresh message id, retrying that same id until answered.
async fn probe(admin: &Connections, bound: Duration) -> anyhow::Result<()> {
    let message = OutgoingMessage::new(
        Metadata::origin("catalog.restock"),
        &CatalogCommand::from(Restock {
            product_id: ProductId::parse(PROBE_PRODUCT.into()).map_err(anyhow::Error::msg)?,
            quantity: Quantity::parse(1).map_err(anyhow::Error::msg)?,
        }),
    );
    match admin.deliver(&message, bound, false).await {
        Answer::Accepted => Ok(()),
        other => bail!("the recovery probe was answered {other:?} within {bound:?}"),
    }
}
