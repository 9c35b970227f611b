//! The spans the in-process workers, relay and clients finish, captured for the trace tests.
//!
//! One tracer serves the whole test binary (the subscriber is process-global), so a test asks
//! to [`watch`] its own correlation id and gets only the spans that carry it: other tests'
//! spans are dropped at once, and none is kept unless a test asked for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use opentelemetry::Value;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

type Watched = Arc<Mutex<HashMap<String, Vec<SpanData>>>>;

#[derive(Clone, Debug, Default)]
struct Capture {
    watched: Watched,
}

impl SpanExporter for Capture {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if let Ok(mut watched) = self.watched.lock() {
            for span in batch {
                if let Some(spans) = correlation_id(&span).and_then(|c| watched.get_mut(&c)) {
                    spans.push(span);
                }
            }
        }
        Ok(())
    }
}

static CAPTURE: OnceLock<Capture> = OnceLock::new();

/// Installs the binary's subscriber: logs to the test writer filtered by `TEST_LOG`, and spans
/// (at info) to the capture. The first call wins.
pub fn install() {
    let capture = CAPTURE.get_or_init(Capture::default).clone();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(capture)
        .build();
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("tests"))
        .with_filter(EnvFilter::new("info,sqlx=warn,lapin=warn"));
    let logs = tracing_subscriber::fmt::layer()
        .with_test_writer()
        .with_filter(EnvFilter::from_env("TEST_LOG"));
    let _ = tracing_subscriber::registry()
        .with(spans)
        .with(logs)
        .try_init();
}

/// Starts keeping the spans whose `correlation_id` attribute is `correlation`.
pub fn watch(correlation: &str) {
    install();
    if let Some(capture) = CAPTURE.get()
        && let Ok(mut watched) = capture.watched.lock()
    {
        watched.entry(correlation.to_owned()).or_default();
    }
}

/// The finished spans carrying `correlation`, so far.
pub fn finished(correlation: &str) -> Vec<SpanData> {
    CAPTURE
        .get()
        .and_then(|c| c.watched.lock().ok()?.get(correlation).cloned())
        .unwrap_or_default()
}

/// A string attribute of a span.
pub fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| match &kv.value {
            Value::String(s) => s.as_str().to_owned(),
            other => other.to_string(),
        })
}

fn correlation_id(span: &SpanData) -> Option<String> {
    attribute(span, "correlation_id")
}
