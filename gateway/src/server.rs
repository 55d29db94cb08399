//! The routes and the accept loop.
//!
//! - `ANY /function/NAME[.NAMESPACE][/PATH]`: a synchronous call; the
//!   function's answer is the response.
//! - `ANY /async-function/NAME[.NAMESPACE][/PATH]`: 202 with `X-Call-Id`
//!   once the call is durably accepted; with `X-Callback-Url`, the answer
//!   is POSTed there when the call ends.
//! - `GET /healthz`, `GET /openapi.json`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::header::{
    HeaderValue, AUTHORIZATION, CONTENT_LENGTH, RETRY_AFTER, WWW_AUTHENTICATE,
};
use axum::http::{Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use faas_proto::v1::InvokeRequest;
use serde_json::json;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::callback::{Callbacks, Pending};
use crate::config::Config;
use crate::event::{self, RequestInfo};
use crate::response::Reply;
use crate::upstream::{Token, Upstream};

/// The OpenAPI 3 document of this gateway, served as is.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// The header naming an async call's callback (OpenFaaS's).
const CALLBACK_URL: &str = "x-callback-url";
/// The header carrying the call id (sync and async answers).
const CALL_ID: &str = "x-call-id";
/// The W3C header that tells a client where the time went.
const SERVER_TIMING: &str = "server-timing";

/// The client's address, set on every request by the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

pub struct Gateway {
    upstream: Upstream,
    callbacks: Callbacks,
    in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    max_body_bytes: usize,
    body_timeout: Duration,
    call_timeout: Duration,
    scheme: &'static str,
    /// For requests without a token (public functions only).
    public_token: Option<Token>,
}

impl Gateway {
    pub fn new(config: &Config, upstream: Upstream) -> anyhow::Result<Gateway> {
        Ok(Gateway {
            callbacks: Callbacks::new(config.callbacks.clone(), upstream.clone())?,
            upstream,
            in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
            max_in_flight: config.max_in_flight,
            max_body_bytes: config.max_body_bytes,
            body_timeout: config.body_timeout,
            call_timeout: config.call_timeout,
            public_token: config.public_token.clone(),
            scheme: if config.tls.is_some() {
                "https"
            } else {
                "http"
            },
        })
    }
}

pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Reply::json(StatusCode::OK, &json!({"status": "ok"})) }),
        )
        .route(
            "/openapi.json",
            get(|| async {
                (
                    [(axum::http::header::CONTENT_TYPE, "application/json")],
                    OPENAPI,
                )
            }),
        )
        .fallback(move |request: Request<Body>| {
            let gateway = gateway.clone();
            async move { gateway.handle(request).await }
        })
}

/// Which kind of call a path asks for.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Mode {
    Sync,
    Async,
}

/// `/function/hello.web/a/b` → (Sync, "hello", "web", "/function/hello.web", "/a/b").
#[derive(Debug, PartialEq, Eq)]
struct Route<'a> {
    mode: Mode,
    function: &'a str,
    namespace: &'a str,
    prefix: &'a str,
    path: &'a str,
}

fn route(path: &str) -> Option<Route<'_>> {
    let (mode, rest, start) = if let Some(rest) = path.strip_prefix("/function/") {
        (Mode::Sync, rest, "/function/".len())
    } else if let Some(rest) = path.strip_prefix("/async-function/") {
        (Mode::Async, rest, "/async-function/".len())
    } else {
        return None;
    };
    let end = rest.find('/').unwrap_or(rest.len());
    let target = &rest[..end];
    if target.is_empty() {
        return None;
    }
    let (function, namespace) = target.split_once('.').unwrap_or((target, ""));
    let sub = &rest[end..];
    Some(Route {
        mode,
        function,
        namespace,
        prefix: &path[..start + end],
        path: if sub.is_empty() { "/" } else { sub },
    })
}

fn error(status: StatusCode, code: &str, message: &str) -> Reply {
    Reply::error(status, code, message, json!({}))
}

/// The caller's token from `Authorization: Bearer <token>`, or why there
/// is none.
fn bearer(request: &Request<Body>) -> Result<Token, &'static str> {
    let value = request
        .headers()
        .get(AUTHORIZATION)
        .ok_or("no API token: send it as 'Authorization: Bearer <token>'")?;
    let text = value
        .to_str()
        .map_err(|_| "the Authorization header is not printable ASCII")?;
    let token = text
        .strip_prefix("Bearer ")
        .or_else(|| text.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or("the Authorization header is not 'Bearer <token>'")?;
    format!("Bearer {token}")
        .parse::<Token>()
        .map_err(|_| "the token is not printable ASCII")
}

fn unauthorized(message: &str) -> Reply {
    let mut reply = error(StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", message);
    reply
        .headers
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    reply
}

impl Gateway {
    async fn handle(self: Arc<Self>, request: Request<Body>) -> Response {
        let Some(_slot) = self.in_flight.clone().try_acquire_owned().ok() else {
            let mut reply = error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                &format!(
                    "the gateway is serving {} requests, its limit (max_in_flight); retry",
                    self.max_in_flight
                ),
            );
            reply.headers.insert(RETRY_AFTER, HeaderValue::from(1));
            return reply.into_response();
        };
        let path = request.uri().path().to_string();
        let Some(route) = route(&path) else {
            return error(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                &format!("no route {path:?}: calls go to /function/NAME or /async-function/NAME"),
            )
            .into_response();
        };
        let request_id = uuid::Uuid::now_v7().to_string();
        let span = tracing::info_span!(
            "http",
            request_id = %request_id,
            function = %route.function,
            namespace = %route.namespace,
            call_id = tracing::field::Empty,
        );
        let started = Instant::now();
        let method = request.method().clone();
        let mut response = self
            .call(&route, &request_id, request)
            .instrument(span.clone())
            .await
            .into_response();
        let status = response.status();
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        // From routing to the answer, the control plane's part included.
        if let Ok(value) = HeaderValue::from_str(&format!("gateway;dur={ms:.2}")) {
            response.headers_mut().append(SERVER_TIMING, value);
        }
        span.in_scope(|| {
            if status.is_server_error() {
                tracing::warn!(%method, status = status.as_u16(), ms, "answered");
            } else {
                tracing::debug!(%method, status = status.as_u16(), ms, "answered");
            }
        });
        if let Ok(value) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert("x-request-id", value);
        }
        response
    }

    async fn call(&self, route: &Route<'_>, request_id: &str, request: Request<Body>) -> Reply {
        // No Authorization at all: the gateway's public-invoker token, if
        // it has one (a malformed header is still refused).
        let (token, anonymous) = match (bearer(&request), &self.public_token) {
            (Ok(token), _) => (token, false),
            (Err(_), Some(public)) if !request.headers().contains_key(AUTHORIZATION) => {
                (public.clone(), true)
            }
            (Err(why), _) => return unauthorized(why),
        };
        // A callback is a request the gateway makes for the caller: only
        // for callers who proved who they are.
        if anonymous && request.headers().contains_key(CALLBACK_URL) {
            return unauthorized(
                "X-Callback-Url needs an API token (Authorization: Bearer <token>)",
            );
        }
        let callback = match (route.mode, request.headers().get(CALLBACK_URL)) {
            (Mode::Async, Some(value)) => {
                let text = match value.to_str() {
                    Ok(text) => text,
                    Err(_) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "INVALID_ARGUMENT",
                            "X-Callback-Url is not printable ASCII",
                        )
                    }
                };
                match self.callbacks.guard().check_url(text) {
                    Ok(url) => Some(url),
                    Err(why) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "INVALID_ARGUMENT",
                            &format!("X-Callback-Url {text:?} is refused: {why}"),
                        )
                    }
                }
            }
            _ => None,
        };
        let declared = request
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body_bytes as u64) {
            return self.too_large();
        }
        let peer = request
            .extensions()
            .get::<Peer>()
            .map(|p| p.0.ip().to_string())
            .unwrap_or_default();
        let (parts, body) = request.into_parts();
        let body = match tokio::time::timeout(
            self.body_timeout,
            axum::body::to_bytes(body, self.max_body_bytes),
        )
        .await
        {
            Err(_) => {
                return error(
                    StatusCode::REQUEST_TIMEOUT,
                    "REQUEST_TIMEOUT",
                    &format!("the body did not arrive within {:?}", self.body_timeout),
                )
            }
            Ok(Err(e)) if is_length_limit(&e) => return self.too_large(),
            Ok(Err(e)) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "INVALID_ARGUMENT",
                    &format!("reading the body: {e}"),
                )
            }
            Ok(Ok(body)) => body,
        };
        let protocol = format!("{:?}", parts.version);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        let info = RequestInfo {
            method: parts.method.as_str(),
            path: route.path,
            query: parts.uri.query().unwrap_or(""),
            protocol: &protocol,
            source_ip: peer,
            request_id,
            now_ms,
            prefix: route.prefix,
            function: route.function,
            namespace: faas_proto::namespaces::or_default(route.namespace),
            scheme: self.scheme,
        };
        let trace = parts
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(faas_telemetry::TraceParent::parse);
        // Lambda's Invoke API carries a client context as base64 JSON in
        // X-Amz-Client-Context; the control plane checks what it decodes to.
        let client_context = match client_context_of(&parts.headers) {
            Ok(context) => context,
            Err(message) => return error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", &message),
        };
        let invoke = InvokeRequest {
            function: route.function.to_string(),
            params_json: event::build(&info, &parts.headers, &body),
            namespace: route.namespace.to_string(),
            client_context,
        };
        drop(body);
        match route.mode {
            Mode::Sync => {
                let invoked = Instant::now();
                let answer = self
                    .upstream
                    .invoke(invoke, &token, self.call_timeout, trace.as_ref())
                    .await;
                let invoke_ms = invoked.elapsed().as_secs_f64() * 1000.0;
                let mut reply = match answer {
                    Ok(call) => {
                        tracing::Span::current().record("call_id", call.id.as_str());
                        let mut reply = crate::response::from_call(&call);
                        set_call_id(&mut reply, &call.id);
                        reply
                    }
                    Err(status) => crate::status::reply(&status),
                };
                // How long the control plane took: what the gateway adds
                // is the client's wall time minus this.
                if let Ok(value) = HeaderValue::from_str(&format!("invoke;dur={invoke_ms:.2}")) {
                    reply.headers.append(SERVER_TIMING, value);
                }
                reply
            }
            Mode::Async => {
                let permit = match &callback {
                    None => None,
                    Some(_) => match self.callbacks.reserve() {
                        Some(permit) => Some(permit),
                        None => {
                            let mut reply = error(
                                StatusCode::SERVICE_UNAVAILABLE,
                                "UNAVAILABLE",
                                "too many callbacks are waiting for their calls (max_pending_callbacks); retry later",
                            );
                            reply.headers.insert(RETRY_AFTER, HeaderValue::from(1));
                            return reply;
                        }
                    },
                };
                let submit_timeout = Duration::from_secs(30);
                match self
                    .upstream
                    .submit(invoke, &token, submit_timeout, trace.as_ref())
                    .await
                {
                    Ok(call_id) => {
                        tracing::Span::current().record("call_id", call_id.as_str());
                        if let (Some(url), Some(permit)) = (callback, permit) {
                            self.callbacks.spawn(Pending {
                                permit,
                                url,
                                call_id: call_id.clone(),
                                function: route.function.to_string(),
                                token,
                            });
                        }
                        let mut reply =
                            Reply::json(StatusCode::ACCEPTED, &json!({"call_id": call_id}));
                        set_call_id(&mut reply, &call_id);
                        reply
                    }
                    Err(status) => crate::status::reply(&status),
                }
            }
        }
    }

    fn too_large(&self) -> Reply {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PAYLOAD_TOO_LARGE",
            &format!(
                "the body is over the gateway's limit of {} bytes (max_body_bytes)",
                self.max_body_bytes
            ),
        )
    }
}

fn set_call_id(reply: &mut Reply, id: &str) {
    if let Ok(value) = HeaderValue::from_str(id) {
        reply.headers.insert(CALL_ID, value);
    }
}

/// Whether reading a body failed on its size limit.
fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if e.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// The `X-Amz-Client-Context` header decoded (base64 of a JSON object, as
/// Lambda's Invoke API takes it); empty without the header.
fn client_context_of(headers: &axum::http::HeaderMap) -> Result<String, String> {
    use base64::Engine as _;
    let Some(value) = headers.get("x-amz-client-context") else {
        return Ok(String::new());
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(value.as_bytes())
        .map_err(|e| format!("X-Amz-Client-Context is not base64: {e}"))?;
    String::from_utf8(bytes).map_err(|_| "X-Amz-Client-Context is not UTF-8 JSON".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_context_header_is_lambdas_base64_json() {
        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(client_context_of(&headers).unwrap(), "");
        // base64 of {"custom":{"a":1}}
        headers.insert(
            "x-amz-client-context",
            "eyJjdXN0b20iOnsiYSI6MX19".parse().unwrap(),
        );
        assert_eq!(
            client_context_of(&headers).unwrap(),
            r#"{"custom":{"a":1}}"#
        );
        headers.insert("x-amz-client-context", "not base64!".parse().unwrap());
        assert!(client_context_of(&headers).unwrap_err().contains("base64"));
    }

    #[test]
    fn routes() {
        assert_eq!(
            route("/function/hello"),
            Some(Route {
                mode: Mode::Sync,
                function: "hello",
                namespace: "",
                prefix: "/function/hello",
                path: "/",
            })
        );
        assert_eq!(
            route("/async-function/hello.web/a/b/"),
            Some(Route {
                mode: Mode::Async,
                function: "hello",
                namespace: "web",
                prefix: "/async-function/hello.web",
                path: "/a/b/",
            })
        );
        assert_eq!(route("/function/x/").unwrap().path, "/");
        assert_eq!(route("/function/"), None);
        assert_eq!(route("/function"), None);
        assert_eq!(route("/other/x"), None);
    }

    #[test]
    fn the_openapi_document_is_json_and_names_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        for path in [
            "/function/{name}",
            "/function/{name}/{path}",
            "/async-function/{name}",
            "/async-function/{name}/{path}",
            "/healthz",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path} missing");
        }
    }
}
