//! What the faas services share to be observed: their log set-up, and the
//! traces of calls (OpenTelemetry spans exported over OTLP, linked across
//! processes by the W3C `traceparent` a call carries).
//!
//! A call's trace is made of a few spans with exact times, made through
//! the OpenTelemetry API: the submit on the control plane, the queue wait,
//! the agent's run of the call with one span per phase, and the recording
//! of its outcome. With no OTLP endpoint configured nothing is exported
//! and [`CallSpan`] only carries the ids a call hands on.

mod traceparent;

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue, SpanId, TraceId};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;
pub use traceparent::TraceParent;
use tracing_subscriber::EnvFilter;

/// The services' logs: human-readable lines on stderr (journald keeps
/// them under systemd), filtered by `RUST_LOG`, `info` by default.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("OTLP endpoint {endpoint:?}: {message}")]
    Endpoint { endpoint: String, message: String },
    #[error("call tracing was set up already in this process")]
    AlreadySet,
}

/// The tracer of this process, once [`Tracing::start`] ran with an
/// endpoint.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The OTLP export of this process's call spans, batched on a thread of
/// the SDK's (`OTEL_BSP_*` variables tune it; `OTEL_TRACES_SAMPLER` picks
/// the sampler, by default every call whose parent is not unsampled).
/// Dropping it flushes what is pending, for up to 5 s.
pub struct Tracing {
    provider: SdkTracerProvider,
}

impl Tracing {
    /// Exports to `endpoint` (`http://host:4317`), the spans tagged with `service` and `attributes`
    /// (`service.version`, the node's name). Called inside a tokio
    /// runtime: the exporter's channel runs on it.
    pub fn start(
        service: &'static str,
        endpoint: &str,
        attributes: Vec<(&'static str, String)>,
    ) -> Result<Tracing, Error> {
        let failed = |message: String| Error::Endpoint {
            endpoint: endpoint.to_string(),
            message,
        };
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e| failed(format!("not a URL: {e}")))?;
        // Plain gRPC only: spans go to a collector on this machine or a
        // private network (the OpenTelemetry Collector's usual place),
        // which forwards them over TLS if it must.
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(failed(
                "expected http://HOST:PORT (plain OTLP/gRPC to a collector nearby; TLS is not supported)".into(),
            ));
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| failed(e.to_string()))?;
        let resource = Resource::builder()
            .with_service_name(service)
            .with_attributes(
                attributes
                    .into_iter()
                    .map(|(key, value)| KeyValue::new(key, value)),
            )
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        use opentelemetry::trace::TracerProvider as _;
        TRACER
            .set(provider.tracer("faas"))
            .map_err(|_| Error::AlreadySet)?;
        Ok(Tracing { provider })
    }
}

impl Tracing {
    /// [`Tracing::start`] if an endpoint is configured; nothing otherwise.
    pub fn start_if(
        service: &'static str,
        endpoint: Option<&str>,
        attributes: Vec<(&'static str, String)>,
    ) -> Result<Option<Tracing>, Error> {
        endpoint
            .map(|endpoint| Tracing::start(service, endpoint, attributes))
            .transpose()
    }
}

impl Drop for Tracing {
    fn drop(&mut self) {
        let _ = self.provider.shutdown_with_timeout(Duration::from_secs(5));
    }
}

/// The span's role, as OpenTelemetry names it.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// Serving a request of a client (a submit).
    Server,
    /// Work inside one service (a phase).
    Internal,
    /// Taking work handed over asynchronously (the agent running a call
    /// the leader dispatched).
    Consumer,
}

impl From<Kind> for SpanKind {
    fn from(kind: Kind) -> SpanKind {
        match kind {
            Kind::Server => SpanKind::Server,
            Kind::Internal => SpanKind::Internal,
            Kind::Consumer => SpanKind::Consumer,
        }
    }
}

/// One span of a call's trace, open until [`CallSpan::end`] (or dropped).
pub struct CallSpan {
    span: Option<opentelemetry_sdk::trace::Span>,
    traceparent: TraceParent,
}

impl std::fmt::Debug for CallSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallSpan")
            .field("traceparent", &self.traceparent.to_string())
            .field("recording", &self.span.is_some())
            .finish()
    }
}

impl CallSpan {
    /// Starts a span now, as a child of `parent` (a new trace if `None`).
    pub fn start(name: &'static str, kind: Kind, parent: Option<&TraceParent>) -> CallSpan {
        CallSpan::start_at(name, kind, parent, SystemTime::now())
    }

    /// Starts a span at `start`, a time already past.
    pub fn start_at(
        name: &'static str,
        kind: Kind,
        parent: Option<&TraceParent>,
        start: SystemTime,
    ) -> CallSpan {
        let Some(tracer) = TRACER.get() else {
            // Not tracing here: the call carries its parent's ids on
            // unchanged, as a system not taking part in a trace does.
            return CallSpan {
                span: None,
                traceparent: parent.copied().unwrap_or_else(TraceParent::new_root),
            };
        };
        let context = match parent {
            Some(parent) => Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_bytes(parent.trace_id),
                SpanId::from_bytes(parent.span_id),
                TraceFlags::new(parent.flags),
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        let span = tracer
            .span_builder(name)
            .with_kind(kind.into())
            .with_start_time(start)
            .start_with_context(tracer, &context);
        let own = span.span_context();
        let traceparent = TraceParent {
            trace_id: own.trace_id().to_bytes(),
            span_id: own.span_id().to_bytes(),
            flags: own.trace_flags().to_u8(),
        };
        CallSpan {
            span: Some(span),
            traceparent,
        }
    }

    /// What the span's children (and the function) are handed.
    pub fn traceparent(&self) -> TraceParent {
        self.traceparent
    }

    /// Copied only when the span is recorded: with tracing off a call
    /// pays no allocation for its attributes.
    pub fn attribute(&mut self, key: &'static str, value: &str) {
        if let Some(span) = self.span.as_mut() {
            span.set_attribute(KeyValue::new(key, value.to_string()));
        }
    }

    /// Marks the span failed, with why (formatted only when recorded).
    pub fn error(&mut self, message: impl std::fmt::Display) {
        if let Some(span) = self.span.as_mut() {
            span.set_status(Status::error(message.to_string()));
        }
    }

    pub fn end(self) {
        self.end_at(SystemTime::now());
    }

    pub fn end_at(mut self, end: SystemTime) {
        if let Some(span) = self.span.as_mut() {
            span.end_with_timestamp(end);
        }
    }

    /// A span of work already done, from `start` to `end`.
    pub fn record(
        name: &'static str,
        parent: &TraceParent,
        start: SystemTime,
        end: SystemTime,
        attributes: &[(&'static str, &str)],
    ) {
        if TRACER.get().is_none() {
            return;
        }
        let mut span = CallSpan::start_at(name, Kind::Internal, Some(parent), start);
        for (key, value) in attributes {
            span.attribute(key, value);
        }
        span.end_at(end);
    }
}

/// True when this process exports call spans.
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// A time in epoch milliseconds (as call records keep them) as a
/// `SystemTime`.
pub fn at_epoch_ms(ms: f64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs_f64(ms.max(0.0) / 1000.0)
}
