//! The observability endpoint of a server process (`EVENTLINE_METRICS_ADDR`): Prometheus
//! metrics on `/metrics`, liveness on `/healthz`, readiness on `/readyz`; and [`get`], the
//! few lines of HTTP client that `eventline status` and the tests read it with.
//!
//! It serves only what the process already knows (the metrics recorder, the readiness
//! reports): it must never touch the broker or the database per request, so a scrape cannot
//! load either, and it must never show a secret. It is off unless an address is configured,
//! and the documented address is loopback.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get as route;
use eventline_events::Namespace;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::sampler::Sampler;
use super::shutdown::Shutdown;
use super::store::EventStore;
use super::{metrics, readiness};

/// The Prometheus text format's content type.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Where the endpoint listens: off unless set. Documented as loopback (`127.0.0.1:9464`);
/// compose sets `0.0.0.0:9464` inside each container for its health check and Prometheus.
pub const ADDRESS_VAR: &str = "EVENTLINE_METRICS_ADDR";
/// Seconds the relay's oldest unpublished event may age before the relay is not ready.
pub const RELAY_STALL_VAR: &str = "EVENTLINE_RELAY_STALL_SECS";
const DEFAULT_RELAY_STALL: Duration = Duration::from_secs(30);

/// The endpoint's settings, from the environment.
#[derive(Clone, Debug)]
pub struct Settings {
    pub address: Option<SocketAddr>,
    pub relay_stall: Duration,
}

impl Settings {
    /// Reads [`ADDRESS_VAR`] and [`RELAY_STALL_VAR`].
    pub fn from_env() -> Result<Self, HttpError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let address = var(ADDRESS_VAR)
            .map(|v| {
                v.parse().map_err(|_| HttpError::Setting {
                    name: ADDRESS_VAR,
                    reason: format!("{v:?} is not an address and port, e.g. 127.0.0.1:9464"),
                })
            })
            .transpose()?;
        let relay_stall = var(RELAY_STALL_VAR)
            .map(|v| {
                v.parse::<u64>()
                    .ok()
                    .filter(|s| *s >= 1)
                    .map(Duration::from_secs)
                    .ok_or_else(|| HttpError::Setting {
                        name: RELAY_STALL_VAR,
                        reason: format!("{v:?} is not a whole number of seconds, at least 1"),
                    })
            })
            .transpose()?
            .unwrap_or(DEFAULT_RELAY_STALL);
        Ok(Self {
            address,
            relay_stall,
        })
    }

    /// For a server process: if an address is set, serves the endpoint and starts the
    /// database sampler (with the relay-stall check when `relay` is true); returns the bound
    /// address.
    pub async fn start(
        &self,
        namespace: &Namespace,
        store: &EventStore,
        relay: bool,
        shutdown: &Shutdown,
    ) -> Result<Option<SocketAddr>, HttpError> {
        let Some(address) = self.address else {
            return Ok(None);
        };
        let bound = serve(address, namespace.clone(), shutdown.clone()).await?;
        let sampler = Sampler {
            namespace: namespace.clone(),
            store: store.clone(),
            relay_stall: relay.then_some(self.relay_stall),
        };
        tokio::spawn(sampler.run(shutdown.clone()));
        Ok(Some(bound))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{name} is invalid: {reason}")]
    Setting { name: &'static str, reason: String },
    #[error("cannot listen on {address} for metrics and health (EVENTLINE_METRICS_ADDR): {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot read http://{address}{path}: {reason}")]
    Get {
        address: SocketAddr,
        path: String,
        reason: String,
    },
}

/// Listens on `address` (port 0: any free one) and serves the namespace's endpoint until
/// `shutdown`. Returns the address actually bound; the server runs on a task of its own.
pub async fn serve(
    address: SocketAddr,
    namespace: Namespace,
    shutdown: Shutdown,
) -> Result<SocketAddr, HttpError> {
    metrics::install();
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| HttpError::Bind { address, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| HttpError::Bind { address, source })?;
    let app = Router::new()
        .route("/metrics", route(render_metrics))
        .route("/healthz", route(|| async { "alive\n" }))
        .route("/readyz", route(move || ready(namespace.clone())));
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.triggered().await })
            .await;
        if let Err(error) = served {
            tracing::warn!(%error, "the metrics and health endpoint stopped");
        }
    });
    tracing::info!(address = %bound, "serving /metrics, /healthz and /readyz");
    Ok(bound)
}

async fn render_metrics() -> impl IntoResponse {
    // Rendering walks every series: off the async workers' hot path.
    let text = tokio::task::spawn_blocking(metrics::render)
        .await
        .unwrap_or_default();
    ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], text)
}

/// 200 when every component is ready, 503 otherwise; the body lists them, as JSON.
async fn ready(namespace: Namespace) -> impl IntoResponse {
    let report = readiness::snapshot(&namespace);
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::to_string_pretty(&report).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], body)
}

/// `GET http://{address}{path}`: the status code and the body. HTTP/1.0 with
/// `Connection: close`, so the body is everything until the server closes; a tiny task
/// that needs no HTTP client crate.
pub async fn get(
    address: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), HttpError> {
    let fail = |reason: String| HttpError::Get {
        address,
        path: path.to_owned(),
        reason,
    };
    let exchange = async {
        let mut stream = TcpStream::connect(address).await?;
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {address}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        Ok::<_, std::io::Error>(response)
    };
    let response = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| fail(format!("no answer within {timeout:?}")))?
        .map_err(|error| fail(error.to_string()))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| fail("the response has no header/body separator".into()))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| fail(format!("unreadable status line {:?}", head.lines().next())))?;
    Ok((status, body.to_owned()))
}
