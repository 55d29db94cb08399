//! A finished call as an HTTP response, by Lambda function URLs' rules: a
//! result object with `statusCode` gives the status, `headers` (and
//! `multiValueHeaders`), `cookies` and `body` (base64-decoded when
//! `isBase64Encoded`); any other result is the body of a 200
//! `application/json` answer (a JSON string as its text). A function that
//! failed gives 502, one that timed out 504.

use axum::http::header::{HeaderName, HeaderValue, CONTENT_TYPE, SET_COOKIE};
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use bytes::Bytes;
use faas_proto::v1::{Call, CallStatus};
use serde_json::{json, Value};

/// An HTTP answer before it is sent (also what a callback carries).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// A JSON answer.
    pub fn json(status: StatusCode, value: &Value) -> Reply {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        Reply {
            status,
            headers,
            body: Bytes::from(value.to_string()),
        }
    }

    /// `{"error": {"code", "message", ...extra}}`.
    pub fn error(status: StatusCode, code: &str, message: &str, extra: Value) -> Reply {
        let mut error = json!({"code": code, "message": message});
        if let (Some(error), Value::Object(extra)) = (error.as_object_mut(), extra) {
            error.extend(extra);
        }
        Reply::json(status, &json!({ "error": error }))
    }
}

impl axum::response::IntoResponse for Reply {
    fn into_response(self) -> axum::response::Response {
        let mut response = axum::response::Response::new(axum::body::Body::from(self.body));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
    }
}

/// Headers a function may not set: they describe the connection or the
/// framing, which the gateway owns.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
];

/// Why a function's answer cannot be an HTTP response.
#[derive(Debug, thiserror::Error)]
pub enum Malformed {
    #[error("its result is not JSON: {0}")]
    NotJson(String),
    #[error("statusCode must be an integer from 100 to 599, not {0}")]
    Status(String),
    #[error("headers must be an object of strings")]
    HeadersShape,
    #[error("multiValueHeaders must be an object of arrays of strings")]
    MultiHeadersShape,
    #[error("header {0:?} is not a valid HTTP header")]
    Header(String),
    #[error("cookies must be an array of strings that are valid header values")]
    Cookies,
    #[error("body must be a string")]
    BodyShape,
    #[error("isBase64Encoded must be true or false")]
    Base64Flag,
    #[error("isBase64Encoded is true but body is not base64: {0}")]
    Base64(String),
}

/// Base64 with or without padding (functions write both).
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// The HTTP answer for a finished call.
pub fn from_call(call: &Call) -> Reply {
    match call.status() {
        CallStatus::Succeeded if call.result_base64 => match from_bytes_result(&call.result_json) {
            Ok(reply) => reply,
            Err(malformed) => Reply::error(
                StatusCode::BAD_GATEWAY,
                "INVALID_FUNCTION_RESPONSE",
                &format!("the function's bytes cannot be decoded: {malformed}"),
                json!({"call_id": call.id}),
            ),
        },
        CallStatus::Succeeded => match from_result(&call.result_json) {
            Ok(reply) => reply,
            Err(malformed) => Reply::error(
                StatusCode::BAD_GATEWAY,
                "INVALID_FUNCTION_RESPONSE",
                &format!("the function's answer is not a valid HTTP response: {malformed}"),
                json!({"call_id": call.id}),
            ),
        },
        CallStatus::Failed | CallStatus::Timeout => {
            let error = call.error.clone().unwrap_or_default();
            let (status, code) = if call.status() == CallStatus::Timeout {
                (StatusCode::GATEWAY_TIMEOUT, "FUNCTION_TIMEOUT")
            } else {
                (StatusCode::BAD_GATEWAY, "FUNCTION_FAILED")
            };
            // The log tail stays out: a web client is not the place for a
            // stack trace (`faasctl call logs ID` has it).
            Reply::error(
                status,
                code,
                &error.message,
                json!({"reason": error.reason, "call_id": call.id}),
            )
        }
        other => Reply::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL",
            &format!("the call came back {other:?}, not finished"),
            json!({"call_id": call.id}),
        ),
    }
}

/// The HTTP answer for bytes a function returned (`result_base64`: a JSON
/// string of their base64): the bytes, `application/octet-stream`.
pub fn from_bytes_result(result_json: &str) -> Result<Reply, Malformed> {
    let text: String =
        serde_json::from_str(result_json).map_err(|e| Malformed::NotJson(e.to_string()))?;
    let body = BASE64
        .decode(text.as_bytes())
        .map_err(|e| Malformed::Base64(e.to_string()))?;
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(Reply {
        status: StatusCode::OK,
        headers,
        body: Bytes::from(body),
    })
}

/// The HTTP answer for a function's result (JSON text).
pub fn from_result(result_json: &str) -> Result<Reply, Malformed> {
    let value: Value =
        serde_json::from_str(result_json).map_err(|e| Malformed::NotJson(e.to_string()))?;
    let object = match value {
        Value::Object(object) if object.contains_key("statusCode") => object,
        Value::String(text) => return Ok(Reply::json_text(text)),
        other => return Ok(Reply::json(StatusCode::OK, &other)),
    };
    let status = object
        .get("statusCode")
        .and_then(Value::as_u64)
        .and_then(|code| u16::try_from(code).ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .filter(|code| (100..=599).contains(&code.as_u16()))
        .ok_or_else(|| Malformed::Status(object["statusCode"].to_string()))?;
    let mut headers = HeaderMap::new();
    match object.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, value) in map {
                let value = scalar_text(value).ok_or(Malformed::HeadersShape)?;
                if let Some((name, value)) = header(name, &value)? {
                    headers.insert(name, value);
                }
            }
        }
        Some(_) => return Err(Malformed::HeadersShape),
    }
    match object.get("multiValueHeaders") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, values) in map {
                let values = values.as_array().ok_or(Malformed::MultiHeadersShape)?;
                let mut first = true;
                for value in values {
                    let value = scalar_text(value).ok_or(Malformed::MultiHeadersShape)?;
                    if let Some((name, value)) = header(name, &value)? {
                        // Replaces what `headers` gave, then adds.
                        if first {
                            headers.insert(name, value);
                        } else {
                            headers.append(name, value);
                        }
                        first = false;
                    }
                }
            }
        }
        Some(_) => return Err(Malformed::MultiHeadersShape),
    }
    match object.get("cookies") {
        None | Some(Value::Null) => {}
        Some(Value::Array(cookies)) => {
            for cookie in cookies {
                let value = cookie
                    .as_str()
                    .and_then(|c| HeaderValue::from_str(c).ok())
                    .ok_or(Malformed::Cookies)?;
                headers.append(SET_COOKIE, value);
            }
        }
        Some(_) => return Err(Malformed::Cookies),
    }
    let encoded = match object.get("isBase64Encoded") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(flag)) => *flag,
        Some(_) => return Err(Malformed::Base64Flag),
    };
    let body = match object.get("body") {
        None | Some(Value::Null) => Bytes::new(),
        Some(Value::String(text)) if encoded => Bytes::from(
            BASE64
                .decode(text.trim())
                .map_err(|e| Malformed::Base64(e.to_string()))?,
        ),
        Some(Value::String(text)) => Bytes::from(text.clone()),
        Some(_) => return Err(Malformed::BodyShape),
    };
    // Lambda function URLs' default.
    if !headers.contains_key(CONTENT_TYPE) {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    Ok(Reply {
        status,
        headers,
        body,
    })
}

impl Reply {
    /// A 200 `application/json` answer whose body is `text` as is (a
    /// function that returned a JSON string).
    fn json_text(text: String) -> Reply {
        let mut reply = Reply::json(StatusCode::OK, &Value::Null);
        reply.body = Bytes::from(text);
        reply
    }
}

/// A header value as text: strings, numbers and booleans.
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A header the function set; None for those the gateway owns.
fn header(name: &str, value: &str) -> Result<Option<(HeaderName, HeaderValue)>, Malformed> {
    let name =
        HeaderName::from_bytes(name.as_bytes()).map_err(|_| Malformed::Header(name.to_string()))?;
    if HOP_BY_HOP.contains(&name.as_str()) {
        return Ok(None);
    }
    let value =
        HeaderValue::from_str(value).map_err(|_| Malformed::Header(name.as_str().to_string()))?;
    Ok(Some((name, value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(reply: &Reply) -> &[u8] {
        &reply.body
    }

    #[test]
    fn a_structured_answer_gives_status_headers_cookies_and_body() {
        let reply = from_result(
            r#"{"statusCode": 201, "headers": {"Content-Type": "text/html", "X-Count": 3, "Content-Length": "999"},
                "cookies": ["a=1; Path=/", "b=2"], "body": "<p>hi</p>"}"#,
        )
        .unwrap();
        assert_eq!(reply.status, StatusCode::CREATED);
        assert_eq!(reply.headers["content-type"], "text/html");
        assert_eq!(reply.headers["x-count"], "3");
        assert!(reply.headers.get("content-length").is_none());
        let cookies: Vec<_> = reply.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1; Path=/", "b=2"]);
        assert_eq!(body(&reply), b"<p>hi</p>");
    }

    #[test]
    fn base64_bodies_are_decoded() {
        let reply = from_result(
            r#"{"statusCode": 200, "isBase64Encoded": true, "body": "AJ+Slv8=", "headers": {"content-type": "application/octet-stream"}}"#,
        )
        .unwrap();
        assert_eq!(body(&reply), [0u8, 159, 146, 150, 255]);
        // Without padding too.
        let reply =
            from_result(r#"{"statusCode": 200, "isBase64Encoded": true, "body": "YWJj"}"#).unwrap();
        assert_eq!(body(&reply), b"abc");
        assert_eq!(reply.headers["content-type"], "application/json");
    }

    #[test]
    fn anything_else_is_a_json_body() {
        let reply = from_result(r#"{"greeting": "hello"}"#).unwrap();
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.headers["content-type"], "application/json");
        assert_eq!(body(&reply), br#"{"greeting":"hello"}"#);
        let reply = from_result(r#""plain words""#).unwrap();
        assert_eq!(body(&reply), b"plain words");
        let reply = from_result("[1,2]").unwrap();
        assert_eq!(body(&reply), b"[1,2]");
        let reply = from_result("null").unwrap();
        assert_eq!(body(&reply), b"null");
    }

    #[test]
    fn multi_value_headers_add_up() {
        let reply = from_result(
            r#"{"statusCode": 200, "headers": {"x-a": "one"}, "multiValueHeaders": {"x-a": ["two", "three"]}}"#,
        )
        .unwrap();
        let values: Vec<_> = reply.headers.get_all("x-a").iter().collect();
        assert_eq!(values, ["two", "three"]);
    }

    #[test]
    fn malformed_answers_are_refused() {
        for bad in [
            r#"{"statusCode": 99}"#,
            r#"{"statusCode": 600}"#,
            r#"{"statusCode": "200"}"#,
            r#"{"statusCode": 200.5}"#,
            r#"{"statusCode": 200, "headers": []}"#,
            r#"{"statusCode": 200, "headers": {"bad name": "x"}}"#,
            r#"{"statusCode": 200, "headers": {"x": "line\nbreak"}}"#,
            r#"{"statusCode": 200, "headers": {"x": {"nested": 1}}}"#,
            r#"{"statusCode": 200, "cookies": "a=1"}"#,
            r#"{"statusCode": 200, "body": {"not": "a string"}}"#,
            r#"{"statusCode": 200, "isBase64Encoded": "yes", "body": ""}"#,
            r#"{"statusCode": 200, "isBase64Encoded": true, "body": "***"}"#,
            "not json",
        ] {
            assert!(from_result(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn failed_calls_are_502_and_timeouts_504_without_logs() {
        let call = Call {
            id: "c1".into(),
            status: CallStatus::Failed as i32,
            error: Some(faas_proto::v1::CallError {
                reason: "error".into(),
                message: "boom".into(),
                log_tail: "Traceback secret".into(),
            }),
            ..Default::default()
        };
        let reply = from_call(&call);
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
        let value: Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(value["error"]["code"], "FUNCTION_FAILED");
        assert_eq!(value["error"]["reason"], "error");
        assert_eq!(value["error"]["call_id"], "c1");
        assert!(!String::from_utf8_lossy(&reply.body).contains("Traceback"));
        let timeout = Call {
            status: CallStatus::Timeout as i32,
            ..call
        };
        assert_eq!(from_call(&timeout).status, StatusCode::GATEWAY_TIMEOUT);
        let bad = Call {
            status: CallStatus::Succeeded as i32,
            result_json: r#"{"statusCode": 1}"#.into(),
            ..Default::default()
        };
        assert_eq!(from_call(&bad).status, StatusCode::BAD_GATEWAY);
    }
}
