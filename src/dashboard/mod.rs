//! `eventline dashboard`: the seed's diagram with the running system in it, as one web page
//! on loopback. Client 1 and 2, the queues as the load balancer, Servers A–D with a box per
//! live replica, the Database with the log's head and every reader's lag, dead letters per
//! service, orders by outcome; clicking an order shows its causal path (`eventline trace`).
//!
//! Routes: `/` the page (embedded, plain HTML + SVG + JavaScript: no build step, works
//! offline), `/events` one JSON [`Snapshot`](snapshot::Snapshot) a second as server-sent
//! events, `/snapshot` the latest one, `/trace/{order_id}` the trace as text.
//!
//! Where the figures come from: the replicas' presence heartbeats ([`roster`]), passive queue
//! declares and at most one database sample a second ([`snapshot`]), shared by every page
//! open. It must never write to the broker's queues or the database, and never read the
//! database per request but for a clicked trace.

pub mod roster;
pub mod snapshot;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse};
use axum::routing::get;
use eventline_workers::runtime::store::EventStore;
use eventline_workers::runtime::{Config, Shutdown};
use tokio::sync::watch;

/// The page: one file, embedded in the binary.
const PAGE: &str = include_str!("page.html");

#[derive(Clone, Debug, clap::Args)]
pub struct DashboardOptions {
    /// Where to serve the page. Loopback by default: the page shows the system's insides.
    #[arg(
        long,
        default_value = "127.0.0.1:8080",
        env = "EVENTLINE_DASHBOARD_ADDR"
    )]
    pub listen: SocketAddr,
}

#[derive(Clone)]
struct AppState {
    latest: watch::Receiver<Arc<String>>,
    store: EventStore,
}

/// Starts the listener, the sampler and the server for `config`'s namespace; returns the
/// address bound (port 0: a free one). Everything stops at `shutdown`.
pub async fn start(
    config: Config,
    listen: SocketAddr,
    shutdown: &Shutdown,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for the dashboard (--listen)"))?;
    let bound = listener.local_addr()?;
    let store = EventStore::connect_lazy(&config.database_url, 2)?;
    let roster = Arc::new(Mutex::new(roster::Roster::default()));
    let (out, latest) = watch::channel(Arc::new(String::from("{}")));
    tokio::spawn(roster::listen(
        config.clone(),
        roster.clone(),
        shutdown.clone(),
    ));
    tokio::spawn(snapshot::run(config, roster, out, shutdown.clone()));
    let app = Router::new()
        .route("/", get(|| async { Html(PAGE) }))
        .route("/events", get(events))
        .route("/snapshot", get(latest_snapshot))
        .route("/trace/{order_id}", get(trace))
        .with_state(AppState { latest, store });
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.triggered().await })
            .await;
        if let Err(error) = served {
            tracing::warn!(%error, "the dashboard stopped");
        }
    });
    Ok(bound)
}

/// Serves the dashboard until Ctrl-C or SIGTERM.
pub async fn run(config: Config, options: &DashboardOptions) -> anyhow::Result<()> {
    let shutdown = Shutdown::on_signals();
    let namespace = config.namespace.clone();
    let bound = start(config, options.listen, &shutdown).await?;
    println!("eventline dashboard: namespace {namespace}, open http://{bound}/ (Ctrl-C stops)");
    shutdown.triggered().await;
    Ok(())
}

/// Every snapshot from now on, the latest first, as server-sent events.
async fn events(State(state): State<AppState>) -> impl IntoResponse {
    let mut latest = state.latest.clone();
    latest.mark_changed();
    let stream = futures_util::stream::unfold(latest, |mut latest| async move {
        latest.changed().await.ok()?;
        let json = latest.borrow_and_update().clone();
        Some((
            Ok::<_, Infallible>(Event::default().data(json.as_str())),
            latest,
        ))
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn latest_snapshot(State(state): State<AppState>) -> impl IntoResponse {
    let json = state.latest.borrow().clone();
    (
        [(header::CONTENT_TYPE, "application/json")],
        json.to_string(),
    )
}

/// What `eventline trace ORDER_ID` prints, for the order clicked.
async fn trace(State(state): State<AppState>, Path(order_id): Path<String>) -> impl IntoResponse {
    let Ok(id) = uuid::Uuid::parse_str(&order_id) else {
        return (
            StatusCode::BAD_REQUEST,
            format!("{order_id:?} is not an order id (a UUID)\n"),
        );
    };
    match crate::trace::render(&state.store, id).await {
        Ok(text) => (StatusCode::OK, text),
        Err(error) => (StatusCode::NOT_FOUND, format!("{error:#}\n")),
    }
}
