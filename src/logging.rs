//! Log and trace output for every `eventline` command: human-readable lines, or one JSON object
//! per line with `EVENTLINE_LOG=json`, on stderr; and spans over OTLP when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! Colour codes are written only when stderr is a terminal: logs redirected to a file or
//! collected by a container runtime stay plain text. JSON lines carry the current span and
//! the list of enclosing spans, so each line names the message (message, correlation and
//! causation ids, type, service, replica, and its `trace_id` and `span_id`) it belongs to.
//! Spans always have W3C ids, which messages carry across processes
//! (`eventline_workers::runtime::propagation`): from the OpenTelemetry layer when an endpoint is
//! set, else from the much cheaper `span_ids` layer, which makes the same ids and builds no
//! OpenTelemetry span to throw away. `OTEL_SDK_DISABLED=true` leaves both out (messages then
//! pass their context on unchanged; the bench measures the difference). This module must
//! never log anything itself, nor read secrets.

use std::io::IsTerminal;

use eventline_workers::runtime::span_ids::SpanIdLayer;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Flushes the spans not yet exported when dropped: keep it until the command ends.
#[must_use = "dropping it at once would stop the span export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = &self.provider {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber: `RUST_LOG` if set, else `default` (e.g. `info,sqlx=warn`).
pub fn init(default: &str) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let json = std::env::var("EVENTLINE_LOG").is_ok_and(|v| v == "json");
    // OTel's own off switch: no span ids at all (messages still pass their context on).
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    let exporting = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some();
    let (provider, exporter_error) = match (disabled, exporting) {
        (false, true) => match exporting_provider() {
            Ok(provider) => (Some(provider), None),
            Err(error) => (None, Some(error)),
        },
        _ => (None, None),
    };
    let exported = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("eventline")));
    let ids = (!disabled && provider.is_none()).then_some(SpanIdLayer);
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(exported)
        .with(ids);
    let lines = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        registry
            .with(lines.json().with_current_span(true).with_span_list(true))
            .init();
    } else {
        registry.with(lines).init();
    }
    if let Some(error) = exporter_error {
        tracing::warn!(%error, "cannot export spans over OTLP; check OTEL_EXPORTER_OTLP_ENDPOINT");
    }
    Telemetry { provider }
}

/// The tracer provider exporting over OTLP/gRPC (batched, off the message path) to the
/// configured endpoint. `OTEL_SERVICE_NAME` names the process in the traces, `eventline` when
/// unset.
fn exporting_provider() -> Result<SdkTracerProvider, String> {
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("eventline");
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| e.to_string())?;
    Ok(SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_batch_exporter(exporter)
        .build())
}
