//! The ceiling E*: how many commands per second the raw figures of this run allow, and
//! how close eventline gets (E/E*).
//!
//! The model charges each command what it must cost on each shared resource, and nothing for
//! the worker's own CPU (that is the overhead E/E* exposes):
//!
//! - broker: one confirmed persistent publish to the quorum command queue, one delivery +
//!   ack from it, one confirmed reply publish by direct reply-to, one confirmed
//!   event publish by the relay. Each was measured alone at full speed, so each costs
//!   1/rate seconds of broker; they add up because one broker does all four;
//! - database: a share of a batched command transaction — the worker's statements for
//!   inbox claim + stream read + append + reply update, for 32 commands at once, measured
//!   alone on 8 connections — since a saturated worker commits its deliveries in batches
//!   of up to 32. (One transaction per command would cap the database lower; the report
//!   prints that figure beside E*, but it is no ceiling for a worker that batches.)
//! - CPU: the broker and the database share the machine's cores (with each other, the
//!   workers and the clients). Each raw operation's CPU on its server was measured from
//!   `/proc` while it ran; a command costs the sum, and the machine has `cpus` seconds of CPU
//!   per second. This is the resource that binds on a small machine.
//!
//! E* = min over the three of capacity / cost per command. The workers' and clients' own CPU
//! is charged nothing: it is the overhead that E/E* exposes.
//!
//! The load generator, though, is no part of the system: its clients run on the same cores,
//! and what they use the services cannot. [`Ceiling::with_load_generator`] states their share
//! at saturation and the CPU ceiling (and E*) on the cores they left, beside the whole
//! machine's.

use crate::raw_broker::BrokerFigures;
use crate::raw_db::{COMMANDS_PER_BATCH, DbFigures};

/// One cost line of the model.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Cost {
    pub resource: &'static str,
    pub operation: &'static str,
    pub per_command: f64,
    /// The operation's raw rate, per second.
    pub raw_per_s: f64,
    /// Microseconds of the resource per command.
    pub micros: f64,
    /// Microseconds of the serving process's CPU (RabbitMQ or PostgreSQL) per operation.
    pub cpu_micros: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Ceiling {
    pub costs: Vec<Cost>,
    pub broker_per_s: f64,
    pub database_per_s: f64,
    /// Commands per second the machine's cores allow for the services' CPU alone.
    pub cpu_per_s: f64,
    pub cpus: usize,
    /// Database capacity with one transaction per command. Not part of E*: workers batch.
    pub database_unbatched_per_s: f64,
    pub e_star: f64,
    pub bound_by: &'static str,
    /// Saturation at the base replica count.
    pub e: f64,
    pub ratio: f64,
    /// Best saturation over every replica count measured.
    pub e_best: f64,
    pub ratio_best: f64,
    /// The bench's own clients at saturation, and the ceiling without them; `None` when
    /// their CPU was not measured.
    pub load_generator: Option<LoadGenerator>,
}

/// The load generator's CPU at the saturation point, and the ceiling on what it left.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LoadGenerator {
    /// Cores the bench's process (its clients) kept busy.
    pub cores: f64,
    /// Of the machine's cores, 0 to 1.
    pub share: f64,
    /// Its CPU per command, µs.
    pub cpu_micros_per_command: f64,
    /// Commands per second the services' CPU allows on the cores the clients left.
    pub cpu_per_s: f64,
    /// E* with that CPU ceiling in place of the whole machine's.
    pub e_star: f64,
    pub bound_by: &'static str,
    /// The base saturation over that E*.
    pub ratio: f64,
}

/// The lowest capacity, and its resource's name.
fn bound(broker_per_s: f64, database_per_s: f64, cpu_per_s: f64) -> (f64, &'static str) {
    [
        (broker_per_s, "broker"),
        (database_per_s, "database"),
        (cpu_per_s, "services' CPU"),
    ]
    .into_iter()
    .min_by(|a, b| a.0.total_cmp(&b.0))
    .unwrap_or((f64::INFINITY, "nothing"))
}

/// Commands per second `cores` allow at `cpu_micros` of services' CPU per command; no
/// bound when the CPU was not measured.
fn cpu_capacity(cores: f64, cpu_micros: f64) -> f64 {
    if cpu_micros.is_finite() && cpu_micros > 0.0 {
        cores.max(0.0) * 1e6 / cpu_micros
    } else {
        f64::INFINITY
    }
}

impl Ceiling {
    /// Services' CPU a command costs, µs (the sum the CPU resource divides by).
    pub fn cpu_micros_per_command(&self) -> f64 {
        self.costs
            .iter()
            .map(|c| c.cpu_micros * c.per_command)
            .sum()
    }

    /// Adds the load generator's figures: `clients_cores` is the bench process's CPU, in
    /// cores, over the saturation window that measured `self.e`.
    pub fn with_load_generator(mut self, clients_cores: Option<f64>) -> Self {
        self.load_generator = clients_cores
            .filter(|cores| cores.is_finite() && *cores >= 0.0)
            .map(|cores| {
                let cpu_per_s =
                    cpu_capacity(self.cpus as f64 - cores, self.cpu_micros_per_command());
                let (e_star, bound_by) = bound(self.broker_per_s, self.database_per_s, cpu_per_s);
                LoadGenerator {
                    cores,
                    share: if self.cpus > 0 {
                        cores / self.cpus as f64
                    } else {
                        0.0
                    },
                    cpu_micros_per_command: if self.e > 0.0 {
                        cores / self.e * 1e6
                    } else {
                        f64::NAN
                    },
                    cpu_per_s,
                    e_star,
                    bound_by,
                    ratio: if e_star > 0.0 { self.e / e_star } else { 0.0 },
                }
            });
        self
    }
}

fn per_second(rate: f64) -> f64 {
    if rate > 0.0 {
        1.0 / rate
    } else {
        f64::INFINITY
    }
}

pub fn compute(
    broker: &BrokerFigures,
    db: &DbFigures,
    cpus: usize,
    e: f64,
    e_best: f64,
) -> Ceiling {
    let costs = vec![
        Cost {
            resource: "broker",
            operation: "confirmed publish, quorum command queue",
            per_command: 1.0,
            raw_per_s: broker.quorum.publish_per_s,
            micros: per_second(broker.quorum.publish_per_s) * 1e6,
            cpu_micros: broker.quorum.publish_cpu_us,
        },
        Cost {
            resource: "broker",
            operation: "delivery + ack, quorum command queue",
            per_command: 1.0,
            raw_per_s: broker.quorum.consume_per_s,
            micros: per_second(broker.quorum.consume_per_s) * 1e6,
            cpu_micros: broker.quorum.consume_cpu_us,
        },
        Cost {
            resource: "broker",
            operation: "confirmed reply publish, direct reply-to",
            per_command: 1.0,
            raw_per_s: broker.reply_publish_per_s,
            micros: per_second(broker.reply_publish_per_s) * 1e6,
            cpu_micros: broker.reply_cpu_us,
        },
        Cost {
            resource: "broker",
            operation: "confirmed event publish (relay), topic exchange",
            per_command: 1.0,
            raw_per_s: broker.event_publish_per_s,
            micros: per_second(broker.event_publish_per_s) * 1e6,
            cpu_micros: broker.event_cpu_us,
        },
        Cost {
            resource: "database",
            operation: "32-command txn (inbox+read+append+reply), 8 conns",
            per_command: 1.0 / COMMANDS_PER_BATCH as f64,
            raw_per_s: db.command_batch_8.commits_per_s,
            micros: per_second(db.command_batch_8.commits_per_s) * 1e6,
            cpu_micros: db.command_batch_8.cpu_us_per_commit,
        },
    ];
    let total = |resource: &str| -> f64 {
        costs
            .iter()
            .filter(|c| c.resource == resource)
            .map(|c| c.micros * c.per_command)
            .sum()
    };
    let broker_per_s = 1e6 / total("broker");
    let database_per_s = 1e6 / total("database");
    let cpu_total: f64 = costs.iter().map(|c| c.cpu_micros * c.per_command).sum();
    // Unmeasurable (no /proc) or zero CPU leaves the CPU resource out of the minimum.
    let cpu_per_s = cpu_capacity(cpus as f64, cpu_total);
    let (e_star, bound_by) = bound(broker_per_s, database_per_s, cpu_per_s);
    let ratio = |e: f64| if e_star > 0.0 { e / e_star } else { 0.0 };
    Ceiling {
        database_unbatched_per_s: db.command_txn_8.commits_per_s,
        costs,
        broker_per_s,
        database_per_s,
        cpu_per_s,
        cpus,
        e_star,
        bound_by,
        e,
        ratio: ratio(e),
        e_best,
        ratio_best: ratio(e_best),
        load_generator: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw_broker::QueueFigures;
    use crate::raw_db::Rate;

    #[test]
    fn broker_costs_add_up_and_the_slower_resource_bounds() {
        let broker = BrokerFigures {
            quorum: QueueFigures {
                publish_per_s: 10_000.0,
                consume_per_s: 40_000.0,
                ..QueueFigures::default()
            },
            reply_publish_per_s: 40_000.0,
            event_publish_per_s: 20_000.0,
            ..BrokerFigures::default()
        };
        // 32 commands per transaction: 5000 commands per second.
        let db = DbFigures {
            command_batch_8: Rate {
                commits_per_s: 5_000.0 / 32.0,
                ..Rate::default()
            },
            ..DbFigures::default()
        };
        // 100 + 25 + 25 + 50 = 200 µs of broker per command: 5000 cmd/s; database 5000 too.
        let c = compute(&broker, &db, 2, 2_500.0, 4_000.0);
        assert!(
            c.cpu_per_s.is_infinite(),
            "no CPU figures: CPU does not bind"
        );
        assert!((c.broker_per_s - 5_000.0).abs() < 1e-6);
        assert!((c.e_star - 5_000.0).abs() < 1e-6);
        assert!((c.ratio - 0.5).abs() < 1e-9);
        assert!((c.ratio_best - 0.8).abs() < 1e-9);

        let slower_db = DbFigures {
            command_batch_8: Rate {
                commits_per_s: 1_000.0 / 32.0,
                ..Rate::default()
            },
            ..DbFigures::default()
        };
        let c = compute(&broker, &slower_db, 2, 500.0, 500.0);
        assert_eq!(c.bound_by, "database");
        assert!((c.e_star - 1_000.0).abs() < 1e-6);

        // 800 µs of server CPU per command (a 32-command transaction costs 32 times that) on
        // 2 cores: 2500 cmd/s, below broker and database.
        let mut cpu_bound = slower_db.clone();
        cpu_bound.command_batch_8.commits_per_s = 1e9;
        cpu_bound.command_batch_8.cpu_us_per_commit = 800.0 * 32.0;
        let c = compute(&broker, &cpu_bound, 2, 500.0, 500.0);
        assert_eq!(c.bound_by, "services' CPU");
        assert!((c.cpu_per_s - 2_500.0).abs() < 1e-6);
    }

    #[test]
    fn the_load_generators_cores_come_off_the_cpu_ceiling() {
        // 800 µs of services' CPU per command on 2 cores: 2500 cmd/s for the whole machine.
        let broker = BrokerFigures {
            quorum: QueueFigures {
                publish_per_s: 1e9,
                consume_per_s: 1e9,
                ..QueueFigures::default()
            },
            reply_publish_per_s: 1e9,
            event_publish_per_s: 1e9,
            ..BrokerFigures::default()
        };
        let db = DbFigures {
            command_batch_8: Rate {
                commits_per_s: 1e9,
                cpu_us_per_commit: 800.0 * 32.0,
                ..Rate::default()
            },
            ..DbFigures::default()
        };
        let c = compute(&broker, &db, 2, 1_000.0, 1_000.0);
        assert!(c.load_generator.is_none());
        // The clients kept half a core busy at 1000 cmd/s: 1.5 cores left, 1875 cmd/s.
        let c = c.with_load_generator(Some(0.5));
        let g = c.load_generator.as_ref().unwrap();
        assert!((c.e_star - 2_500.0).abs() < 1e-6, "E* itself is unchanged");
        assert!((g.share - 0.25).abs() < 1e-9);
        assert!((g.cpu_micros_per_command - 500.0).abs() < 1e-6);
        assert!((g.cpu_per_s - 1_875.0).abs() < 1e-6);
        assert!((g.e_star - 1_875.0).abs() < 1e-6);
        assert_eq!(g.bound_by, "services' CPU");
        assert!((g.ratio - 1_000.0 / 1_875.0).abs() < 1e-9);
        // Unmeasured: nothing is claimed.
        let c = compute(&broker, &db, 2, 1_000.0, 1_000.0).with_load_generator(None);
        assert!(c.load_generator.is_none());
    }
}
