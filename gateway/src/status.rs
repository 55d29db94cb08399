//! The control plane's gRPC errors as HTTP answers: the one place they are
//! mapped. Google's mapping (google.rpc.Code → HTTP), except where the API
//! gives a code a meaning of its own:
//! RESOURCE_EXHAUSTED without `retry-after-ms` is a size limit (413), with
//! it an admission bound (429 + Retry-After); FAILED_PRECONDITION on a call
//! is the cluster unable to run it now (no agent; its runtime gone): 503.

use axum::http::header::{HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::StatusCode;
use serde_json::json;
use tonic::Code;

use crate::response::Reply;

/// Metadata key of the control plane's retry hint (milliseconds).
const RETRY_AFTER_MS: &str = "retry-after-ms";

pub fn http_status(status: &tonic::Status) -> StatusCode {
    match status.code() {
        Code::Ok => StatusCode::OK,
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted if retry_after_ms(status).is_some() => {
            StatusCode::TOO_MANY_REQUESTS
        }
        Code::ResourceExhausted => StatusCode::PAYLOAD_TOO_LARGE,
        Code::FailedPrecondition | Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        // The client went away (nginx's 499 has no standard name).
        Code::Cancelled => StatusCode::from_u16(499).expect("499 is a valid code"),
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn retry_after_ms(status: &tonic::Status) -> Option<u64> {
    status
        .metadata()
        .get(RETRY_AFTER_MS)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// `{"error": {"code": "NOT_FOUND", "message": "..."}}` with the matching
/// status; `Retry-After` (seconds, rounded up) when the control plane gave
/// a hint; `WWW-Authenticate: Bearer` on 401.
pub fn reply(status: &tonic::Status) -> Reply {
    let http = http_status(status);
    let code = format!("{:?}", status.code());
    let mut reply = Reply::error(http, &screaming(&code), status.message(), json!({}));
    if let Some(ms) = retry_after_ms(status) {
        let secs = ms.div_ceil(1000).max(1);
        reply.headers.insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    if http == StatusCode::UNAUTHORIZED {
        reply
            .headers
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    reply
}

/// "PermissionDenied" → "PERMISSION_DENIED", the proto's spelling.
fn screaming(camel: &str) -> String {
    let mut out = String::with_capacity(camel.len() + 4);
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_precisely() {
        let cases = [
            (Code::InvalidArgument, 400),
            (Code::Unauthenticated, 401),
            (Code::PermissionDenied, 403),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::ResourceExhausted, 413),
            (Code::FailedPrecondition, 503),
            (Code::Unavailable, 503),
            (Code::DeadlineExceeded, 504),
            (Code::Internal, 500),
            (Code::Unimplemented, 501),
        ];
        for (code, http) in cases {
            assert_eq!(
                http_status(&tonic::Status::new(code, "x")).as_u16(),
                http,
                "{code:?}"
            );
        }
    }

    #[test]
    fn a_retry_hint_makes_429_with_retry_after() {
        let mut status = tonic::Status::resource_exhausted("queue full");
        status
            .metadata_mut()
            .insert(RETRY_AFTER_MS, "1500".parse().unwrap());
        let reply = reply(&status);
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(reply.headers[RETRY_AFTER], "2");
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(body["error"]["code"], "RESOURCE_EXHAUSTED");
        assert_eq!(body["error"]["message"], "queue full");
    }

    #[test]
    fn unauthenticated_asks_for_a_bearer_token() {
        let reply = reply(&tonic::Status::unauthenticated("no token"));
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert_eq!(reply.headers[WWW_AUTHENTICATE], "Bearer");
        assert_eq!(screaming("PermissionDenied"), "PERMISSION_DENIED");
    }
}
