//! A worker process's spans leave it the two ways the README says: over OTLP/gRPC to a
//! collector when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, and as ids in its JSON log lines when
//! it is not. Either way the span of a message continues the trace its sender named in
//! `traceparent`. These run the real `eventline worker` binary (the in-process harness installs
//! its own subscriber, so only a child process shows what `logging::init` does).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use eventline_events::catalog::{CatalogCommand, Restock};
use eventline_events::trace::TraceContext;
use eventline_events::values::Quantity;
use eventline_events::{Metadata, OutgoingMessage, Service};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;

use crate::support::{TestSystem, eventually, product};

/// A span as the collector received it.
#[derive(Clone, Debug)]
struct Received {
    service_name: String,
    name: String,
    trace_id: String,
    parent_span_id: String,
    message_type: String,
}

/// The smallest OTLP trace collector: it keeps what it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

fn string(attributes: &[KeyValue], key: &str) -> String {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.clone())
        .map(|v| match v {
            Value::StringValue(s) => s,
            other => format!("{other:?}"),
        })
        .unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service_name = resource_spans
                .resource
                .as_ref()
                .map(|r| string(&r.attributes, "service.name"))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service_name: service_name.clone(),
                        name: span.name.clone(),
                        trace_id: hex(&span.trace_id),
                        parent_span_id: hex(&span.parent_span_id),
                        message_type: string(&span.attributes, "message_type"),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

async fn start_collector() -> (SocketAddr, Collector) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let collector = Collector::default();
    let service = TraceServiceServer::new(collector.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (address, collector)
}

/// A restock sent as the child of a span of the caller's (random ids, so parallel runs never
/// share a trace).
fn traced_restock() -> (OutgoingMessage, TraceContext) {
    let trace = TraceContext::new(
        &format!("{:032x}", fastrand::u128(1..)),
        &format!("{:016x}", fastrand::u64(1..)),
        true,
        None,
    )
    .unwrap();
    let mut message = OutgoingMessage::new(
        Metadata::origin("catalog.restock"),
        &CatalogCommand::from(Restock {
            product_id: product("tea"),
            quantity: Quantity::parse(1).unwrap(),
        }),
    );
    message.metadata.trace = Some(trace.clone());
    (message, trace)
}

#[tokio::test]
async fn with_an_endpoint_a_workers_spans_reach_the_collector_in_the_callers_trace() {
    let (address, collector) = start_collector().await;
    let mut system = TestSystem::start().await;
    let endpoint = format!("http://{address}");
    let processes = system.processes();
    processes.set_env("OTEL_EXPORTER_OTLP_ENDPOINT", Some(&endpoint));
    processes.set_env("OTEL_SERVICE_NAME", Some("catalog-under-test"));
    // The batch exporter's default delay is 5 s; a short one keeps the test quick.
    processes.set_env("OTEL_BSP_SCHEDULE_DELAY", Some("100"));
    processes
        .spawn("catalog-1", &["worker", "catalog"])
        .unwrap();
    system.wait_for_consumers(Service::Catalog, 1).await;
    let (restock, sent_in) = traced_restock();
    system.request(restock).await;

    let span = eventually("the restock's span at the collector", || async {
        let spans = collector.spans.lock().unwrap().clone();
        spans
            .iter()
            .find(|s| s.name == "message" && s.message_type == "catalog.restock")
            .cloned()
            .ok_or_else(|| format!("{} spans, none for the restock", spans.len()))
    })
    .await;
    assert_eq!(span.service_name, "catalog-under-test");
    assert_eq!(span.trace_id, sent_in.trace_id(), "the caller's trace");
    assert_eq!(
        span.parent_span_id,
        sent_in.parent_span_id(),
        "the caller's span"
    );
    system.stop().await;
}

#[tokio::test]
async fn without_an_endpoint_the_json_log_names_the_callers_trace() {
    let mut system = TestSystem::start().await;
    let processes = system.processes();
    processes.set_env("EVENTLINE_LOG", Some("json"));
    processes.set_env("OTEL_EXPORTER_OTLP_ENDPOINT", None);
    // The runtime logs each settled message at debug level, inside the message's span.
    processes.set_env("RUST_LOG", Some("info,eventline_workers=debug"));
    processes
        .spawn("catalog-1", &["worker", "catalog"])
        .unwrap();
    system.wait_for_consumers(Service::Catalog, 1).await;
    let (restock, sent_in) = traced_restock();
    let message_id = restock.metadata.message_id.to_string();
    system.request(restock).await;
    let log = system.processes().log_dir().join("catalog-1.log");

    let span = eventually("a log line of the restock's span", || async {
        let text = std::fs::read_to_string(&log).map_err(|e| e.to_string())?;
        text.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find_map(|line| {
                line["spans"]
                    .as_array()?
                    .iter()
                    .find(|s| s["name"] == "message" && s["message_id"] == message_id.as_str())
                    .cloned()
            })
            .ok_or_else(|| "no line of its span yet".to_owned())
    })
    .await;
    assert_eq!(span["trace_id"], sent_in.trace_id(), "{span}");
    let own = span["span_id"].as_str().unwrap_or_default();
    assert_eq!(own.len(), 16, "a span id of its own: {span}");
    assert_ne!(own, sent_in.parent_span_id(), "{span}");
    system.stop().await;
}
