//! `eventline lesson IDEA`: each of the seed's ten ideas as a short scripted scenario against a
//! small system of its own — it says what to watch, does it, then checks the idea's claim and
//! says whether it held. Six are the seed's key characteristics (distribution, autonomy,
//! coordination, transparency, fault tolerance, scalability), four its core challenges
//! (concurrency, no global clock, independent failures, network unreliability).
//!
//! A lesson's verdict is a value ([`Verdict`]): the binary exits 0 only if the claim held.
//! `--sabotage` runs a lesson's scenario wrongly on purpose (where it has a way to), so that its
//! claim must fail: proof that the check can tell. A lesson must never report a claim it did
//! not check against the running system.

mod challenges;
pub mod lab;
mod seed;

use eventline_events::Service;
use eventline_workers::runtime::Config;

use lab::Lab;

/// The seed's ten ideas, in its order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Idea {
    Distribution,
    Autonomy,
    Coordination,
    Transparency,
    FaultTolerance,
    Scalability,
    Concurrency,
    NoGlobalClock,
    IndependentFailures,
    NetworkUnreliability,
}

impl Idea {
    pub const ALL: [Idea; 10] = [
        Self::Distribution,
        Self::Autonomy,
        Self::Coordination,
        Self::Transparency,
        Self::FaultTolerance,
        Self::Scalability,
        Self::Concurrency,
        Self::NoGlobalClock,
        Self::IndependentFailures,
        Self::NetworkUnreliability,
    ];

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Distribution => "distribution",
            Self::Autonomy => "autonomy",
            Self::Coordination => "coordination",
            Self::Transparency => "transparency",
            Self::FaultTolerance => "fault-tolerance",
            Self::Scalability => "scalability",
            Self::Concurrency => "concurrency",
            Self::NoGlobalClock => "no-global-clock",
            Self::IndependentFailures => "independent-failures",
            Self::NetworkUnreliability => "network-unreliability",
        }
    }

    /// The claim the lesson checks.
    pub fn claim(self) -> &'static str {
        match self {
            Self::Distribution => {
                "one order is handled by several processes: orders, catalog and payments replicas"
            }
            Self::Autonomy => {
                "with payments stopped, catalog still decides on its own: its commands are accepted"
            }
            Self::Coordination => {
                "the saga coordinates by messages: a declined card releases the stock catalog reserved"
            }
            Self::Transparency => {
                "the client addresses one exchange, never a replica, yet two replicas share its work"
            }
            Self::FaultTolerance => {
                "SIGKILL one catalog replica while orders flow: every order is still confirmed"
            }
            Self::Scalability => {
                "a replica added under load takes a share of the work at once, with no reconfiguration"
            }
            Self::Concurrency => {
                "ten orders race for five items: exactly five are confirmed and stock never goes negative"
            }
            Self::NoGlobalClock => {
                "two commands whose wall-clock timestamps contradict their causal order: the log keeps the causal order"
            }
            Self::IndependentFailures => {
                "payments dies: orders waiting on it are cancelled by the saga's timer and their stock released, while catalog keeps working"
            }
            Self::NetworkUnreliability => {
                "a command re-sent after a lost reply (same message id) has exactly one effect"
            }
        }
    }

    /// What to watch on the page (`eventline dashboard`) and in the terminal.
    pub fn watch(self) -> &'static str {
        match self {
            Self::Distribution => {
                "the dashboard's replica boxes of orders, catalog and payments all move for one order; `eventline trace` names each"
            }
            Self::Autonomy => "payments' box disappears; catalog's keeps its rate",
            Self::Coordination => {
                "orders by outcome gains a rejection; catalog's reserved stock returns to zero"
            }
            Self::Transparency => {
                "catalog-1 and catalog-2 both count messages; the client printed no replica name"
            }
            Self::FaultTolerance => {
                "catalog-1 leaves the picture within ~3 s; catalog-2's rate rises; the outcomes keep coming"
            }
            Self::Scalability => "catalog-2 appears and its done count grows beside catalog-1's",
            Self::Concurrency => "orders by outcome: five confirmed, five rejected (out_of_stock)",
            Self::NoGlobalClock => {
                "the log's positions and stream versions, not the timestamps the clients stamped"
            }
            Self::IndependentFailures => {
                "payments' box disappears; orders end cancelled (payment_timeout); auth and catalog boxes stay"
            }
            Self::NetworkUnreliability => {
                "catalog's duplicate count rises by one; the stream's version by one only"
            }
        }
    }

    /// Whether `--sabotage` has a way to make this lesson's claim false.
    pub fn has_sabotage(self) -> bool {
        matches!(self, Self::FaultTolerance | Self::NetworkUnreliability)
    }

    /// The replicas the lesson's system starts with.
    fn system(self) -> Vec<(Service, usize)> {
        use Service::*;
        match self {
            Self::Transparency | Self::FaultTolerance => {
                vec![(Catalog, 2), (Orders, 1), (Payments, 1)]
            }
            Self::Autonomy | Self::IndependentFailures => {
                vec![(Auth, 1), (Catalog, 1), (Orders, 1), (Payments, 1)]
            }
            Self::NoGlobalClock | Self::NetworkUnreliability => vec![(Catalog, 1)],
            _ => vec![(Catalog, 1), (Orders, 1), (Payments, 1)],
        }
    }
}

/// What a lesson found: `held` with what was seen, or not, with why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub held: bool,
    pub evidence: String,
}

impl Verdict {
    /// Held exactly when `ok`.
    pub fn check(ok: bool, evidence: impl Into<String>) -> Self {
        Self {
            held: ok,
            evidence: evidence.into(),
        }
    }
}

#[derive(Clone, Debug, clap::Args)]
pub struct LessonOptions {
    /// The idea to see (omit with --list).
    #[arg(value_enum, required_unless_present = "list")]
    pub idea: Option<Idea>,
    /// List the ten lessons and their claims.
    #[arg(long)]
    pub list: bool,
    /// Run the scenario wrongly on purpose so that its claim must fail (for the lessons that
    /// have such a twist): proof that the check can tell.
    #[arg(long)]
    pub sabotage: bool,
}

/// The `--list` text.
pub fn list() -> String {
    let mut out =
        String::from("eventline lesson IDEA — the seed's ten ideas, each checked live:\n");
    for idea in Idea::ALL {
        out.push_str(&format!("  {:<22} {}\n", idea.name(), idea.claim()));
    }
    out
}

/// Runs one lesson: starts its system, prints what to watch, runs the scenario, stops the
/// system, and returns the verdict.
pub async fn run(base: &Config, idea: Idea, options: &LessonOptions) -> anyhow::Result<Verdict> {
    if options.sabotage && !idea.has_sabotage() {
        anyhow::bail!(
            "the {} lesson has no sabotage; fault-tolerance and network-unreliability do",
            idea.name()
        );
    }
    // The system's processes run this very binary.
    let exe = std::env::current_exe()?;
    println!("lesson: {}\nclaim: {}", idea.name(), idea.claim());
    let mut lab = Lab::start(base, &exe, &idea.system()).await?;
    println!(
        "system: namespace {} (watch it: EVENTLINE_NAMESPACE={} eventline dashboard)\nwatch: {}",
        lab.namespace,
        lab.namespace,
        idea.watch()
    );
    let verdict = scenario(&mut lab, idea, options.sabotage).await;
    lab.stop().await;
    verdict
}

async fn scenario(lab: &mut Lab, idea: Idea, sabotage: bool) -> anyhow::Result<Verdict> {
    match idea {
        Idea::Distribution => seed::distribution(lab).await,
        Idea::Autonomy => seed::autonomy(lab).await,
        Idea::Coordination => seed::coordination(lab).await,
        Idea::Transparency => seed::transparency(lab).await,
        Idea::FaultTolerance => seed::fault_tolerance(lab, sabotage).await,
        Idea::Scalability => seed::scalability(lab).await,
        Idea::Concurrency => challenges::concurrency(lab).await,
        Idea::NoGlobalClock => challenges::no_global_clock(lab).await,
        Idea::IndependentFailures => challenges::independent_failures(lab).await,
        Idea::NetworkUnreliability => challenges::network_unreliability(lab, sabotage).await,
    }
}
