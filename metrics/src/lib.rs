//! The `/metrics` endpoint of a faas service and what the services share
//! to fill it: bucket layouts and a text-format parser for tests.
//!
//! Each service keeps its metrics in a struct of its own (typed label
//! sets, registered once in a [`Registry`]); this crate serves that
//! registry over plain HTTP. The listener is off unless configured, and
//! meant for loopback or a scrape network: metric labels carry function
//! and node names.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
pub use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// OpenMetrics text, which Prometheus asks for and parses.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A scraper that stops sending its request is cut off after this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for /metrics on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A family of latency histograms (one per label set), all with
/// [`latency_buckets`].
pub type Histograms<L> = prometheus_client::metrics::family::Family<
    L,
    prometheus_client::metrics::histogram::Histogram,
    fn() -> prometheus_client::metrics::histogram::Histogram,
>;

/// An empty [`Histograms`] family.
pub fn latency_histograms<L>() -> Histograms<L>
where
    L: Clone + std::hash::Hash + Eq,
{
    fn histogram() -> prometheus_client::metrics::histogram::Histogram {
        prometheus_client::metrics::histogram::Histogram::new(latency_buckets())
    }
    Histograms::new_with_constructor(histogram)
}

/// Request latency buckets in seconds: 250 µs to about 65 s, doubling.
/// One layout for every latency so dashboards can compare them.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.000_25, 2.0, 19)
}

/// Serves `registry` at `GET /metrics` on `addr` until the task is
/// dropped or aborted; returns the bound address (port 0 picks one).
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), MetricsError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Listen { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| MetricsError::Listen { addr, source })?;
    tracing::info!(addr = %bound, "serving /metrics");
    let task = tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accepting a /metrics connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let registry = registry.clone();
                    async move { Ok::<_, Infallible>(answer(&registry, &request)) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(REQUEST_TIMEOUT)
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = connection.await {
                    tracing::debug!(%peer, error = %e, "/metrics connection ended with an error");
                }
            });
        }
    });
    Ok((bound, task))
}

fn answer(registry: &Registry, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response
    };
    if request.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "only /metrics is served here\n".into(),
        );
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "GET /metrics\n".into());
    }
    let mut text = String::new();
    if let Err(e) = encode(&mut text, registry) {
        return reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the metrics failed: {e}\n"),
        );
    }
    let mut response = reply(StatusCode::OK, text);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
    response
}

/// One sample of a scraped exposition: `name{labels} value`.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if the sample has it.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the samples of a text exposition (Prometheus or OpenMetrics);
/// comments and malformed lines are skipped. For tests and tools, not for
/// untrusted input at scale.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => return None,
    };
    let (labels, rest) = if let Some(body) = rest.strip_prefix('{') {
        let mut labels = Vec::new();
        let mut chars = body.char_indices().peekable();
        let mut end = None;
        loop {
            // key="value" pairs separated by commas, until '}'.
            while chars.peek().is_some_and(|(_, c)| *c == ',' || *c == ' ') {
                chars.next();
            }
            match chars.peek() {
                Some((i, '}')) => {
                    end = Some(*i);
                    break;
                }
                None => break,
                _ => {}
            }
            let mut key = String::new();
            for (_, c) in chars.by_ref() {
                if c == '=' {
                    break;
                }
                key.push(c);
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return None;
            }
            let mut value = String::new();
            let mut escaped = false;
            for (_, c) in chars.by_ref() {
                match (escaped, c) {
                    (true, 'n') => {
                        value.push('\n');
                        escaped = false;
                    }
                    (true, c) => {
                        value.push(c);
                        escaped = false;
                    }
                    (false, '\\') => escaped = true,
                    (false, '"') => break,
                    (false, c) => value.push(c),
                }
            }
            labels.push((key.trim().to_string(), value));
        }
        let end = end?;
        (labels, &body[end + 1..])
    } else {
        (Vec::new(), rest)
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::EncodeLabelSet;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use prometheus_client::metrics::histogram::Histogram;

    // prometheus-client writes label values as they are (no escaping):
    // the services label only with validated names and fixed words.
    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Labels {
        function: String,
        status: String,
    }

    #[test]
    fn what_is_encoded_parses_back() {
        let mut registry = Registry::default();
        let calls = Family::<Labels, Counter>::default();
        registry.register("faas_calls", "Calls", calls.clone());
        let phase = Histogram::new(latency_buckets());
        registry.register("faas_phase_seconds", "Phase", phase.clone());
        calls
            .get_or_create(&Labels {
                function: "hello-world".into(),
                status: "succeeded".into(),
            })
            .inc_by(3);
        phase.observe(0.003);
        phase.observe(100.0);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        let samples = parse(&text);
        let total = samples
            .iter()
            .find(|s| s.name == "faas_calls_total")
            .expect("counter sample");
        assert_eq!(total.value, 3.0);
        assert_eq!(total.label("function"), Some("hello-world"));
        assert_eq!(total.label("status"), Some("succeeded"));
        let count = samples
            .iter()
            .find(|s| s.name == "faas_phase_seconds_count")
            .unwrap();
        assert_eq!(count.value, 2.0);
        let inf = samples
            .iter()
            .find(|s| s.name == "faas_phase_seconds_bucket" && s.label("le") == Some("+Inf"))
            .unwrap();
        assert_eq!(inf.value, 2.0);
        let small = samples
            .iter()
            .find(|s| s.name == "faas_phase_seconds_bucket" && s.label("le") == Some("0.004"))
            .unwrap();
        assert_eq!(small.value, 1.0);
    }

    #[test]
    fn latency_buckets_cover_a_quarter_millisecond_to_a_minute() {
        let buckets: Vec<f64> = latency_buckets().collect();
        assert_eq!(buckets[0], 0.000_25);
        assert!(*buckets.last().unwrap() > 60.0);
    }

    #[tokio::test]
    async fn serves_metrics_and_nothing_else() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("faas_test", "A test counter", counter.clone());
        counter.inc();
        let (addr, task) = serve("127.0.0.1:0".parse().unwrap(), Arc::new(registry))
            .await
            .unwrap();
        let get = |path: &str| {
            let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                stream.write_all(request.as_bytes()).await.unwrap();
                let mut out = String::new();
                stream.read_to_string(&mut out).await.unwrap();
                out
            }
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("faas_test_total 1"), "{ok}");
        assert!(ok.contains("application/openmetrics-text"), "{ok}");
        let missing = get("/other").await;
        assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
        task.abort();
    }
}
