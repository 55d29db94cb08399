//! Call traces (issue 13, "metrics and traces"): with an OTLP endpoint
//! configured, a call is one trace with spans from the control plane and
//! from the agent, joined to the client's trace when it sends a W3C
//! `traceparent`, and the function is handed the trace (`$TRACEPARENT`,
//! `$_X_AMZN_TRACE_ID`, `context.traceparent`). The collector is a real
//! OTLP/gRPC receiver (the OpenTelemetry project's generated service).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use faas_proto::v1::call_service_client::CallServiceClient;
use faas_proto::v1::*;
use faas_tests::{fixture_dir, Stack, StackOptions};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

/// One exported span, flattened.
#[derive(Clone, Debug)]
struct Exported {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Exported>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    let attributes = span
                        .attributes
                        .iter()
                        .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                            Value::StringValue(s) => Some((kv.key.clone(), s.clone())),
                            _ => None,
                        })
                        .collect();
                    spans.push(Exported {
                        service: service.clone(),
                        name: span.name,
                        trace_id: hex::encode(&span.trace_id),
                        span_id: hex::encode(&span.span_id),
                        parent_span_id: hex::encode(&span.parent_span_id),
                        attributes,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// Serves OTLP/gRPC on a loopback port; returns its URL.
    async fn start(&self) -> anyhow::Result<String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
        });
        Ok(url)
    }

    /// The spans of `trace_id` once every name in `wanted` is among them
    /// (the services export in batches, every 5 s by default).
    async fn trace(&self, trace_id: &str, wanted: &[&str]) -> Vec<Exported> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans: Vec<Exported> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.trace_id == trace_id)
                .cloned()
                .collect();
            let complete = wanted.iter().all(|w| spans.iter().any(|s| s.name == *w));
            if complete || Instant::now() > deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn one<'a>(spans: &'a [Exported], name: &str) -> &'a Exported {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} span expected: {spans:#?}");
    found[0]
}

/// `00-<trace>-<span>-<flags>` into its parts.
fn parts(traceparent: &str) -> (String, String, String) {
    let p: Vec<&str> = traceparent.split('-').collect();
    assert_eq!(p.len(), 4, "{traceparent:?}");
    assert_eq!(p[0], "00");
    (p[1].to_string(), p[2].to_string(), p[3].to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_one_trace_with_spans_from_both_processes() -> anyhow::Result<()> {
    let collector = Collector::default();
    let otlp = collector.start().await?;
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        spots: 1,
        policy: Some("no-preload".into()),
        controlplane_args: vec!["--otlp-endpoint".into(), otlp.clone()],
        agent_config: Some(format!("otlp_endpoint = \"{otlp}\"\n")),
        ..StackOptions::default()
    })
    .await?;
    stack.deploy("traced", "python3", &fixture_dir("py-trace"), &[])?;
    let mut calls = CallServiceClient::new(stack.channel().await);

    // 1. A client in a trace of its own: the call joins it.
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let mut request = tonic::Request::new(InvokeRequest {
        function: "traced".into(),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{client_trace}-{client_span}-01").parse()?,
    );
    let call = calls.invoke(request).await?.into_inner();
    assert_eq!(call.status(), CallStatus::Succeeded, "{call:?}");
    let (trace, submit_span, flags) = parts(&call.traceparent);
    assert_eq!(trace, client_trace, "the call joins the client's trace");
    assert_ne!(submit_span, client_span);
    assert_eq!(flags, "01");

    let seen: serde_json::Value = serde_json::from_str(&call.result_json)?;
    let in_function = seen["env"].as_str().expect("TRACEPARENT set").to_string();
    assert_eq!(seen["context"].as_str(), Some(in_function.as_str()));
    let (fn_trace, fn_parent, _) = parts(&in_function);
    assert_eq!(fn_trace, client_trace);
    assert_eq!(
        seen["xray"].as_str(),
        Some(
            format!(
                "Root=1-{}-{};Parent={fn_parent};Sampled=1",
                &client_trace[..8],
                &client_trace[8..]
            )
            .as_str()
        )
    );

    let spans = collector
        .trace(
            client_trace,
            &[
                "faas.submit",
                "faas.queue",
                "faas.run",
                "faas.execution",
                "faas.record",
            ],
        )
        .await;
    let submit = one(&spans, "faas.submit");
    assert_eq!(submit.service, "faas-controlplane");
    assert_eq!(submit.parent_span_id, client_span);
    assert_eq!(submit.span_id, submit_span);
    assert_eq!(submit.attributes.get("faas.call_id"), Some(&call.id));
    for name in ["faas.queue", "faas.record"] {
        let span = one(&spans, name);
        assert_eq!(span.service, "faas-controlplane", "{span:?}");
        assert_eq!(span.parent_span_id, submit_span, "{span:?}");
    }
    let run = one(&spans, "faas.run");
    assert_eq!(run.service, "faas-agent");
    assert_eq!(
        run.parent_span_id, submit_span,
        "the agent's run is the submit's child"
    );
    assert_eq!(
        run.attributes.get("faas.status").map(String::as_str),
        Some("succeeded")
    );
    assert_eq!(
        run.attributes.get("faas.start").map(String::as_str),
        Some("cold")
    );
    assert_eq!(
        fn_parent, run.span_id,
        "the function descends from the run span"
    );
    // A cold call went through every phase on the agent.
    for phase in ["faas.runtime_load", "faas.function_load", "faas.execution"] {
        let span = one(&spans, phase);
        assert_eq!(span.service, "faas-agent");
        assert_eq!(span.parent_span_id, run.span_id, "{span:?}");
    }
    assert!(
        spans
            .iter()
            .all(|s| s.service == "faas-controlplane" || s.service == "faas-agent"),
        "{spans:#?}"
    );

    // 2. No trace from the client (and a malformed header is no trace):
    //    the call starts its own, again across both processes.
    for header in [None, Some("00-not-a-trace-01")] {
        let mut request = tonic::Request::new(InvokeRequest {
            function: "traced".into(),
            ..Default::default()
        });
        if let Some(value) = header {
            request.metadata_mut().insert("traceparent", value.parse()?);
        }
        let call = calls.invoke(request).await?.into_inner();
        assert_eq!(call.status(), CallStatus::Succeeded, "{call:?}");
        let (trace, submit_span, _) = parts(&call.traceparent);
        assert_ne!(trace, client_trace);
        let spans = collector.trace(&trace, &["faas.submit", "faas.run"]).await;
        let submit = one(&spans, "faas.submit");
        assert_eq!(submit.parent_span_id, "", "a root span: {submit:?}");
        assert_eq!(one(&spans, "faas.run").parent_span_id, submit_span);
    }
    Ok(())
}
