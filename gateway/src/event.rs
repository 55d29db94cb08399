//! The HTTP request as the function sees it: an AWS Lambda function-URL
//! event (payload format version 2.0), so handlers written for Lambda
//! function URLs (and the adapters of web frameworks that speak it) run
//! unchanged.

use axum::http;
use base64::Engine;
use http::header::{AUTHORIZATION, CONTENT_TYPE, COOKIE};
use http::HeaderMap;
use serde_json::{json, Map, Value};

/// What the gateway knows of one request besides its headers and body.
pub struct RequestInfo<'a> {
    pub method: &'a str,
    /// The path below `/function/NAME` (`/` when there is none), as the
    /// client sent it (percent-encoding kept).
    pub path: &'a str,
    /// The query string without `?`, as sent.
    pub query: &'a str,
    /// `HTTP/1.1`, `HTTP/2.0`.
    pub protocol: &'a str,
    pub source_ip: String,
    /// The gateway's id of this request.
    pub request_id: &'a str,
    pub now_ms: i64,
    /// The route the request came by, e.g. `/function/hello` (given to the
    /// function as `x-forwarded-prefix`).
    pub prefix: &'a str,
    pub function: &'a str,
    pub namespace: &'a str,
    /// `https` when the gateway serves TLS.
    pub scheme: &'a str,
}

/// Whether a body of this content type travels as text (when it is valid
/// UTF-8); any other body is base64-encoded (`isBase64Encoded: true`).
pub fn is_text_type(content_type: Option<&str>) -> bool {
    let Some(content_type) = content_type else {
        return true;
    };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence.is_empty() || essence.starts_with("text/") {
        return true;
    }
    let Some(subtype) = essence.strip_prefix("application/") else {
        return false;
    };
    matches!(
        subtype,
        "json"
            | "xml"
            | "javascript"
            | "ecmascript"
            | "x-www-form-urlencoded"
            | "graphql"
            | "yaml"
            | "x-yaml"
            | "x-ndjson"
            | "ld+json"
    ) || subtype.ends_with("+json")
        || subtype.ends_with("+xml")
}

/// The event, as the JSON text handed to the function as its params.
pub fn build(info: &RequestInfo<'_>, headers: &HeaderMap, body: &[u8]) -> String {
    let mut header_map = Map::new();
    let mut cookies: Vec<Value> = Vec::new();
    for name in headers.keys() {
        // The caller's API token is the gateway's business, never the
        // function's: a function must not collect its callers' tokens.
        if name == AUTHORIZATION {
            continue;
        }
        let values = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        if name == COOKIE {
            for value in values {
                cookies.extend(
                    value
                        .split(';')
                        .map(str::trim)
                        .filter(|c| !c.is_empty())
                        .map(|c| Value::String(c.to_string())),
                );
            }
            continue;
        }
        let joined = values.collect::<Vec<_>>().join(",");
        header_map.insert(name.as_str().to_string(), Value::String(joined));
    }
    let forwarded_for = match header_map.get("x-forwarded-for") {
        Some(Value::String(earlier)) => format!("{earlier}, {}", info.source_ip),
        _ => info.source_ip.clone(),
    };
    header_map.insert("x-forwarded-for".into(), Value::String(forwarded_for));
    header_map.insert(
        "x-forwarded-proto".into(),
        Value::String(info.scheme.into()),
    );
    header_map.insert(
        "x-forwarded-prefix".into(),
        Value::String(info.prefix.into()),
    );

    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    let domain_prefix = host.split(['.', ':']).next().unwrap_or("").to_string();
    let user_agent = headers
        .get(http::header::USER_AGENT)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();

    let mut event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": info.path,
        "rawQueryString": info.query,
        "headers": header_map,
        "requestContext": {
            "accountId": info.namespace,
            "apiId": info.function,
            "domainName": host,
            "domainPrefix": domain_prefix,
            "http": {
                "method": info.method,
                "path": info.path,
                "protocol": info.protocol,
                "sourceIp": info.source_ip,
                "userAgent": user_agent,
            },
            "requestId": info.request_id,
            "routeKey": "$default",
            "stage": "$default",
            "time": clf_time(info.now_ms),
            "timeEpoch": info.now_ms,
        },
        "isBase64Encoded": false,
    });
    let object = event.as_object_mut().expect("built as an object");
    if !cookies.is_empty() {
        object.insert("cookies".into(), Value::Array(cookies));
    }
    let query = query_parameters(info.query);
    if !query.is_empty() {
        object.insert("queryStringParameters".into(), Value::Object(query));
    }
    if !body.is_empty() {
        let content_type = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok());
        let text = if is_text_type(content_type) {
            std::str::from_utf8(body).ok()
        } else {
            None
        };
        match text {
            Some(text) => {
                object.insert("body".into(), Value::String(text.to_string()));
            }
            None => {
                object.insert(
                    "body".into(),
                    Value::String(base64::engine::general_purpose::STANDARD.encode(body)),
                );
                object.insert("isBase64Encoded".into(), Value::Bool(true));
            }
        }
    }
    event.to_string()
}

/// `a=1&a=2&b=%20x` → {"a": "1,2", "b": " x"}: names and values
/// percent-decoded, repeated names joined with ",".
fn query_parameters(query: &str) -> Map<String, Value> {
    let mut out: Map<String, Value> = Map::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let (name, value) = (percent_decode(name), percent_decode(value));
        match out.get_mut(&name) {
            Some(Value::String(existing)) => {
                existing.push(',');
                existing.push_str(&value);
            }
            _ => {
                out.insert(name, Value::String(value));
            }
        }
    }
    out
}

/// Percent-decoding; a malformed escape is kept as is, invalid UTF-8
/// replaced.
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(value) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(value);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Epoch ms as Lambda writes `requestContext.time`: `12/Mar/2020:19:03:58 +0000`.
pub fn clf_time(epoch_ms: i64) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = epoch_ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn info<'a>(path: &'a str, query: &'a str) -> RequestInfo<'a> {
        RequestInfo {
            method: "POST",
            path,
            query,
            protocol: "HTTP/1.1",
            source_ip: "10.1.2.3".into(),
            request_id: "req-1",
            now_ms: 1_583_348_638_390,
            prefix: "/function/hello",
            function: "hello",
            namespace: "default",
            scheme: "http",
        }
    }

    #[test]
    fn a_request_becomes_a_version_2_event() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("gw.example.com:8080"));
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert(
            "authorization",
            HeaderValue::from_static("Bearer secret.token"),
        );
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        headers.insert("cookie", HeaderValue::from_static("c1=v1; c2=v2"));
        headers.insert("user-agent", HeaderValue::from_static("curl/8"));
        let text = build(
            &info("/a/b", "x=1&x=2&y=%20z&flag"),
            &headers,
            br#"{"name":"ana"}"#,
        );
        assert!(!text.contains("secret.token"), "the token leaked: {text}");
        let event: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(event["version"], "2.0");
        assert_eq!(event["routeKey"], "$default");
        assert_eq!(event["rawPath"], "/a/b");
        assert_eq!(event["rawQueryString"], "x=1&x=2&y=%20z&flag");
        assert_eq!(event["queryStringParameters"]["x"], "1,2");
        assert_eq!(event["queryStringParameters"]["y"], " z");
        assert_eq!(event["queryStringParameters"]["flag"], "");
        assert_eq!(event["headers"]["x-multi"], "a,b");
        assert_eq!(event["headers"]["x-forwarded-for"], "10.1.2.3");
        assert!(event["headers"].get("authorization").is_none());
        assert!(event["headers"].get("cookie").is_none());
        assert_eq!(event["cookies"], json!(["c1=v1", "c2=v2"]));
        assert_eq!(event["body"], r#"{"name":"ana"}"#);
        assert_eq!(event["isBase64Encoded"], false);
        let context = &event["requestContext"];
        assert_eq!(context["http"]["method"], "POST");
        assert_eq!(context["http"]["path"], "/a/b");
        assert_eq!(context["http"]["sourceIp"], "10.1.2.3");
        assert_eq!(context["http"]["userAgent"], "curl/8");
        assert_eq!(context["domainName"], "gw.example.com:8080");
        assert_eq!(context["domainPrefix"], "gw");
        assert_eq!(context["requestId"], "req-1");
        assert_eq!(context["time"], "04/Mar/2020:19:03:58 +0000");
        assert_eq!(context["timeEpoch"], 1_583_348_638_390i64);
    }

    #[test]
    fn binary_bodies_travel_in_base64() {
        let mut headers = HeaderMap::new();
        let body = [0u8, 159, 146, 150, 255];
        let event: Value = serde_json::from_str(&build(&info("/", ""), &headers, &body)).unwrap();
        assert_eq!(event["isBase64Encoded"], true);
        assert_eq!(event["body"], "AJ+Slv8=");
        assert!(event.get("queryStringParameters").is_none());
        assert!(event.get("cookies").is_none());
        // Valid UTF-8, but declared binary.
        headers.insert("content-type", HeaderValue::from_static("image/png"));
        let event: Value = serde_json::from_str(&build(&info("/", ""), &headers, b"abc")).unwrap();
        assert_eq!(event["isBase64Encoded"], true);
        assert_eq!(event["body"], "YWJj");
        // No body at all: none in the event.
        let event: Value = serde_json::from_str(&build(&info("/", ""), &headers, b"")).unwrap();
        assert!(event.get("body").is_none());
        assert_eq!(event["isBase64Encoded"], false);
    }

    #[test]
    fn text_types() {
        for t in [
            None,
            Some("text/plain; charset=utf-8"),
            Some("application/json"),
            Some("application/vnd.api+json"),
            Some("application/x-www-form-urlencoded"),
            Some("APPLICATION/XML"),
        ] {
            assert!(is_text_type(t), "{t:?}");
        }
        for t in [
            Some("application/octet-stream"),
            Some("image/png"),
            Some("multipart/form-data; boundary=x"),
        ] {
            assert!(!is_text_type(t), "{t:?}");
        }
    }

    #[test]
    fn percent_decoding_keeps_what_is_malformed() {
        assert_eq!(percent_decode("a%20b"), "a b");
        assert_eq!(percent_decode("%zz%2"), "%zz%2");
        assert_eq!(percent_decode("%"), "%");
        assert_eq!(percent_decode("%C3%A9"), "é");
        assert_eq!(percent_decode("%ff"), "\u{fffd}");
    }

    #[test]
    fn times_in_common_log_format() {
        assert_eq!(clf_time(0), "01/Jan/1970:00:00:00 +0000");
        assert_eq!(clf_time(951_782_400_000), "29/Feb/2000:00:00:00 +0000");
        assert_eq!(clf_time(1_798_761_599_999), "31/Dec/2026:23:59:59 +0000");
    }
}
