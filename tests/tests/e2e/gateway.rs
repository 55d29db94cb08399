//! The HTTP gateway (`faas-gateway`) on the real stack, spoken to as curl
//! would: sync calls whose request reaches a Lambda function-URL web
//! handler (`tests/fixtures/py-http`) as its event and whose answer
//! (status, headers, cookies, text or binary body) comes back; async calls
//! answered 202 and called back on a test server; and what it refuses
//! (no token, someone else's namespace, unknown functions, oversize
//! bodies, callbacks to internal addresses) without making a call.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine;
use faas_proto::v1::call_service_client::CallServiceClient;
use faas_proto::v1::{CallStatus, GetCallRequest, ListCallsRequest};
use faas_tests::{fixture_dir, stdout_of, Stack, StackOptions};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const FUNCTION: &str = "web";

async fn stack(controlplane_args: Vec<String>) -> anyhow::Result<Stack> {
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        controlplane_args,
        ..StackOptions::default()
    })
    .await?;
    stack.deploy(FUNCTION, "python3", &fixture_dir("py-http"), &[])?;
    Ok(stack)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .no_proxy()
        .build()
        .expect("an HTTP client")
}

/// An answer, read whole.
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("an ASCII header"))
            .unwrap_or_else(|| panic!("no header {name} in {:?}", self.headers))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.expect("the gateway answers");
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.bytes().await.expect("a body").to_vec(),
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The calls of FUNCTION recorded so far.
async fn recorded_calls(stack: &Stack) -> usize {
    CallServiceClient::new(stack.channel().await)
        .list_calls(ListCallsRequest {
            function: FUNCTION.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("ListCalls")
        .into_inner()
        .calls
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_calls_hand_the_request_to_the_function_and_its_answer_back() -> anyhow::Result<()> {
    let mut stack = stack(Vec::new()).await?;
    let gateway = stack.start_gateway(&[]).await?;
    let http = client();
    let auth = bearer(&stack.auth.token);

    // A JSON body, a query, repeated headers and cookies: all in the event.
    let answer = send(
        http.post(format!(
            "{gateway}/function/{FUNCTION}/echo?x=1&x=2&q=a%20b"
        ))
        .header("authorization", &auth)
        .header("content-type", "application/json")
        .header("x-multi", "a")
        .header("x-multi", "b")
        .header("cookie", "c1=v1; c2=v2")
        .body(r#"{"name":"ana"}"#),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("content-type"), "application/json");
    assert!(
        !answer.text().contains(&stack.auth.token),
        "the caller's token reached the function"
    );
    let event = answer.json();
    assert_eq!(event["version"], "2.0");
    assert_eq!(event["routeKey"], "$default");
    assert_eq!(event["rawPath"], "/echo");
    assert_eq!(event["rawQueryString"], "x=1&x=2&q=a%20b");
    assert_eq!(event["queryStringParameters"]["x"], "1,2");
    assert_eq!(event["queryStringParameters"]["q"], "a b");
    assert_eq!(event["headers"]["x-multi"], "a,b");
    assert_eq!(event["headers"]["content-type"], "application/json");
    assert!(event["headers"].get("authorization").is_none(), "{event}");
    assert_eq!(event["cookies"], serde_json::json!(["c1=v1", "c2=v2"]));
    assert_eq!(event["body"], r#"{"name":"ana"}"#);
    assert_eq!(event["isBase64Encoded"], false);
    let context = &event["requestContext"];
    assert_eq!(context["http"]["method"], "POST");
    assert_eq!(context["http"]["path"], "/echo");
    assert_eq!(context["http"]["sourceIp"], "127.0.0.1");
    assert_eq!(context["accountId"], "default");
    assert_eq!(context["apiId"], FUNCTION);
    assert_eq!(context["requestId"], answer.header("x-request-id"));
    // The answer names a real call, which ran the function.
    let call = CallServiceClient::new(stack.channel().await)
        .get_call(GetCallRequest {
            id: answer.header("x-call-id").to_string(),
        })
        .await?
        .into_inner();
    assert_eq!(call.function, FUNCTION);
    assert_eq!(call.status(), CallStatus::Succeeded);

    // A raw text body, another method.
    let text = "plain text\nwith ünïcode and \"quotes\"";
    let answer = send(
        http.put(format!("{gateway}/function/{FUNCTION}/echo"))
            .header("authorization", &auth)
            .header("content-type", "text/plain; charset=utf-8")
            .body(text),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let event = answer.json();
    assert_eq!(event["body"], text);
    assert_eq!(event["isBase64Encoded"], false);
    assert_eq!(event["requestContext"]["http"]["method"], "PUT");

    // A binary body reaches the function base64-encoded ...
    let bytes: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let answer = send(
        http.post(format!("{gateway}/function/{FUNCTION}/echo"))
            .header("authorization", &auth)
            .header("content-type", "application/octet-stream")
            .body(bytes.clone()),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let event = answer.json();
    assert_eq!(event["isBase64Encoded"], true);
    assert_eq!(
        event["body"],
        base64::engine::general_purpose::STANDARD.encode(&bytes)
    );
    // ... and a binary answer comes back decoded.
    let answer = send(
        http.post(format!("{gateway}/function/{FUNCTION}/invert"))
            .header("authorization", &auth)
            .header("content-type", "application/octet-stream")
            .body(bytes.clone()),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("content-type"), "application/octet-stream");
    let inverted: Vec<u8> = bytes.iter().map(|b| b ^ 0xFF).collect();
    assert_eq!(answer.body, inverted);

    // Status codes, headers and cookies the function sets, whatever they are.
    for code in [201u16, 418, 500] {
        let answer = send(
            http.get(format!("{gateway}/function/{FUNCTION}/status?code={code}"))
                .header("authorization", &auth),
        )
        .await;
        assert_eq!(answer.status, code, "{}", answer.text());
        assert_eq!(answer.header("content-type"), "text/plain; charset=utf-8");
        assert_eq!(answer.header("x-answer"), "42");
        let cookies: Vec<&str> = answer
            .headers
            .get_all("set-cookie")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect();
        assert_eq!(cookies, ["session=abc; Path=/; HttpOnly", "theme=dark"]);
        assert_eq!(answer.text(), format!("made with {code}"));
    }

    // Results that are not HTTP answers are JSON bodies; a string is text.
    let answer = send(
        http.get(format!("{gateway}/function/{FUNCTION}.default/plain"))
            .header("authorization", &auth),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.header("content-type"), "application/json");
    assert_eq!(
        answer.json(),
        serde_json::json!({"plain": true, "method": "GET"})
    );
    // A version or alias after the name, as invoke takes it
    // (NAME:QUALIFIER[.NAMESPACE]).
    for (target, status) in [
        (format!("{FUNCTION}:1.default"), 200),
        (format!("{FUNCTION}:latest"), 200),
        (format!("{FUNCTION}:9"), 404),
        (format!("{FUNCTION}:no-alias"), 404),
    ] {
        let answer = send(
            http.get(format!("{gateway}/function/{target}/plain"))
                .header("authorization", &auth),
        )
        .await;
        assert_eq!(answer.status, status, "{target}: {}", answer.text());
    }
    let answer = send(
        http.post(format!("{gateway}/function/{FUNCTION}/string"))
            .header("authorization", &auth),
    )
    .await;
    assert_eq!((answer.status, answer.text().as_str()), (200, "just text"));

    // A function that fails, or answers nonsense: 502, with the call id.
    let answer = send(
        http.post(format!("{gateway}/function/{FUNCTION}/raise"))
            .header("authorization", &auth),
    )
    .await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    let error = answer.json();
    assert_eq!(error["error"]["code"], "FUNCTION_FAILED");
    assert_eq!(error["error"]["reason"], "error");
    assert_eq!(error["error"]["call_id"], answer.header("x-call-id"));
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("boom from the web handler"),
        "{error}"
    );
    assert!(!answer.text().contains("Traceback"), "{}", answer.text());
    let answer = send(
        http.post(format!("{gateway}/function/{FUNCTION}/malformed"))
            .header("authorization", &auth),
    )
    .await;
    assert_eq!(answer.status, 502, "{}", answer.text());
    assert_eq!(answer.json()["error"]["code"], "INVALID_FUNCTION_RESPONSE");

    // The gateway's own routes.
    let answer = send(http.get(format!("{gateway}/healthz"))).await;
    assert_eq!(answer.status, 200);
    let answer = send(http.get(format!("{gateway}/openapi.json"))).await;
    assert_eq!(answer.status, 200);
    let doc = answer.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    assert!(doc["paths"].get("/async-function/{name}").is_some());

    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_make_no_call() -> anyhow::Result<()> {
    // The control plane takes at most 64 KiB of params: a body the
    // gateway takes can still make an event over it.
    let mut stack = stack(vec!["--max-params-bytes".into(), "65536".into()]).await?;
    let gateway = stack.start_gateway(&["--max-body-bytes", "60000"]).await?;
    let http = client();
    let admin = stack.auth.token.clone();
    let url = format!("{gateway}/function/{FUNCTION}/plain");

    // No token, a malformed one, an unknown one.
    let answer = send(http.post(&url).body("{}")).await;
    assert_eq!(answer.status, 401, "{}", answer.text());
    assert_eq!(answer.header("www-authenticate"), "Bearer");
    assert_eq!(answer.json()["error"]["code"], "UNAUTHENTICATED");
    let answer = send(
        http.post(&url)
            .header("authorization", "Basic dXNlcjpwdw=="),
    )
    .await;
    assert_eq!(answer.status, 401, "{}", answer.text());
    let answer = send(
        http.post(&url)
            .header("authorization", "Bearer 0123456789abcdef.not-a-secret"),
    )
    .await;
    assert_eq!(answer.status, 401, "{}", answer.text());
    assert_eq!(answer.json()["error"]["code"], "UNAUTHENTICATED");

    // A token of another namespace may not call here; one of this
    // namespace may.
    stdout_of(
        stack.faasctl_as(&admin, &["namespace", "create", "other"]),
        "namespace create",
    );
    let token = |namespaces: &str| {
        stdout_of(
            stack.faasctl_as(
                &admin,
                &[
                    "token",
                    "create",
                    "--role",
                    "invoker",
                    "--namespaces",
                    namespaces,
                ],
            ),
            "token create",
        )
        .trim()
        .to_string()
    };
    let outsider = token("other");
    let answer = send(http.post(&url).header("authorization", bearer(&outsider))).await;
    assert_eq!(answer.status, 403, "{}", answer.text());
    assert_eq!(answer.json()["error"]["code"], "PERMISSION_DENIED");
    let answer = send(
        http.post(format!("{gateway}/function/{FUNCTION}.other/plain"))
            .header("authorization", bearer(&outsider)),
    )
    .await;
    assert_eq!(answer.status, 404, "{}", answer.text());
    assert_eq!(
        recorded_calls(&stack).await,
        0,
        "a refused request made a call"
    );

    // Unknown functions, bad names, unknown routes.
    let answer = send(
        http.post(format!("{gateway}/function/nothing-here"))
            .header("authorization", bearer(&admin)),
    )
    .await;
    assert_eq!(answer.status, 404, "{}", answer.text());
    assert_eq!(answer.json()["error"]["code"], "NOT_FOUND");
    let answer = send(
        http.post(format!("{gateway}/function/Bad_Name"))
            .header("authorization", bearer(&admin)),
    )
    .await;
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert_eq!(answer.json()["error"]["code"], "INVALID_ARGUMENT");
    let answer = send(http.get(format!("{gateway}/elsewhere"))).await;
    assert_eq!(answer.status, 404, "{}", answer.text());

    // Bodies over the gateway's limit: declared, or streamed in chunks
    // with no length given.
    let answer = send(
        http.post(&url)
            .header("authorization", bearer(&admin))
            .body(vec![b'a'; 60_001]),
    )
    .await;
    assert_eq!(answer.status, 413, "{}", answer.text());
    assert_eq!(answer.json()["error"]["code"], "PAYLOAD_TOO_LARGE");
    let raw = chunked_post(
        gateway.trim_start_matches("http://"),
        &format!("/function/{FUNCTION}/plain"),
        &admin,
        &[vec![b'b'; 40_000], vec![b'c'; 40_000]],
    )
    .await?;
    assert!(raw.starts_with("HTTP/1.1 413"), "{raw}");
    // Under the gateway's limit but, in base64, over the control plane's.
    let answer = send(
        http.post(&url)
            .header("authorization", bearer(&admin))
            .header("content-type", "application/octet-stream")
            .body(vec![0xFFu8; 55_000]),
    )
    .await;
    assert_eq!(answer.status, 413, "{}", answer.text());
    assert_eq!(answer.json()["error"]["code"], "RESOURCE_EXHAUSTED");
    assert_eq!(
        recorded_calls(&stack).await,
        0,
        "a refused request made a call"
    );

    // And an invoker of this namespace gets through: the refusals above
    // were about the requests, not the gateway.
    let answer = send(
        http.post(&url)
            .header("authorization", bearer(&token("default"))),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(recorded_calls(&stack).await, 1);

    stack.shutdown().await
}

/// A POST with a chunked body (no Content-Length), sent by hand; the
/// status line and whatever else came back.
async fn chunked_post(
    addr: &str,
    path: &str,
    token: &str,
    chunks: &[Vec<u8>],
) -> anyhow::Result<String> {
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await?;
    for chunk in chunks {
        tcp.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await?;
        // The gateway may answer (and close) before it read everything.
        if tcp.write_all(chunk).await.is_err() || tcp.write_all(b"\r\n").await.is_err() {
            break;
        }
    }
    let _ = tcp.write_all(b"0\r\n\r\n").await;
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut answer)).await??;
    Ok(String::from_utf8_lossy(&answer[..n]).into_owned())
}

/// One request a callback server received.
#[derive(Debug)]
struct Received {
    request_line: String,
    headers: HashMap<String, Vec<String>>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .unwrap_or_else(|| panic!("no header {name} in {:?}", self.headers))
    }
}

/// A minimal HTTP/1.1 server on 127.0.0.1 that answers 200 to anything and
/// hands each request over.
async fn callback_server() -> anyhow::Result<(String, mpsc::UnboundedReceiver<Received>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                let mut chunk = [0u8; 8192];
                // Headers, then Content-Length bytes of body.
                let head_end = loop {
                    let Ok(n) = tcp.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    buffer.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i;
                    }
                };
                let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
                let mut lines = head.split("\r\n");
                let request_line = lines.next().unwrap_or("").to_string();
                let mut headers: HashMap<String, Vec<String>> = HashMap::new();
                for line in lines {
                    if let Some((name, value)) = line.split_once(':') {
                        headers
                            .entry(name.trim().to_ascii_lowercase())
                            .or_default()
                            .push(value.trim().to_string());
                    }
                }
                let length: usize = headers
                    .get("content-length")
                    .and_then(|v| v.first())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let mut body = buffer[head_end + 4..].to_vec();
                while body.len() < length {
                    let Ok(n) = tcp.read(&mut chunk).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
                let _ = tcp
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                let _ = tx.send(Received {
                    request_line,
                    headers,
                    body,
                });
            });
        }
    });
    Ok((format!("http://{addr}"), rx))
}

async fn next_callback(rx: &mut mpsc::UnboundedReceiver<Received>) -> Received {
    tokio::time::timeout(Duration::from_secs(90), rx.recv())
        .await
        .expect("a callback within 90 s")
        .expect("the callback server runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_calls_answer_202_and_call_back() -> anyhow::Result<()> {
    let mut stack = stack(Vec::new()).await?;
    // The test's callback server is on loopback: allowed here only.
    let gateway = stack
        .start_gateway(&["--callback-allow-net", "127.0.0.1/32"])
        .await?;
    let strict = stack.start_gateway(&[]).await?;
    let (server, mut callbacks) = callback_server().await?;
    let http = client();
    let auth = bearer(&stack.auth.token);

    // The answer a sync call would have had, at the callback.
    let answer = send(
        http.post(format!(
            "{gateway}/async-function/{FUNCTION}/status?code=201"
        ))
        .header("authorization", &auth)
        .header("x-callback-url", format!("{server}/done?tag=1")),
    )
    .await;
    assert_eq!(answer.status, 202, "{}", answer.text());
    let id = answer.header("x-call-id").to_string();
    assert_eq!(answer.json()["call_id"], id.as_str());
    let back = next_callback(&mut callbacks).await;
    assert_eq!(back.request_line, "POST /done?tag=1 HTTP/1.1");
    assert_eq!(back.header("x-call-id"), id);
    assert_eq!(back.header("x-function-name"), FUNCTION);
    assert_eq!(back.header("x-function-status"), "201");
    assert_eq!(back.header("x-answer"), "42");
    assert_eq!(back.header("content-type"), "text/plain; charset=utf-8");
    assert_eq!(back.headers["set-cookie"].len(), 2, "{back:?}");
    assert_eq!(back.body, b"made with 201");

    // Binary in, binary out, through the callback.
    let bytes: Vec<u8> = (0..=255u8).rev().cycle().take(3000).collect();
    let answer = send(
        http.post(format!("{gateway}/async-function/{FUNCTION}/invert"))
            .header("authorization", &auth)
            .header("content-type", "application/octet-stream")
            .header("x-callback-url", format!("{server}/bin"))
            .body(bytes.clone()),
    )
    .await;
    assert_eq!(answer.status, 202, "{}", answer.text());
    let back = next_callback(&mut callbacks).await;
    assert_eq!(back.header("x-call-id"), answer.header("x-call-id"));
    assert_eq!(back.header("content-type"), "application/octet-stream");
    let inverted: Vec<u8> = bytes.iter().map(|b| b ^ 0xFF).collect();
    assert_eq!(back.body, inverted);

    // A failure is called back too, as the 502 a sync call gets.
    let answer = send(
        http.post(format!("{gateway}/async-function/{FUNCTION}/raise"))
            .header("authorization", &auth)
            .header("x-callback-url", format!("{server}/failed")),
    )
    .await;
    assert_eq!(answer.status, 202, "{}", answer.text());
    let back = next_callback(&mut callbacks).await;
    assert_eq!(back.header("x-function-status"), "502");
    let error: Value = serde_json::from_slice(&back.body)?;
    assert_eq!(error["error"]["code"], "FUNCTION_FAILED");

    // Without a callback: 202, and the call runs.
    let answer = send(
        http.post(format!("{gateway}/async-function/{FUNCTION}/plain"))
            .header("authorization", &auth),
    )
    .await;
    assert_eq!(answer.status, 202, "{}", answer.text());
    let id = answer.header("x-call-id").to_string();
    let mut calls = CallServiceClient::new(stack.channel().await);
    let call = faas_tests::wait_final(&mut calls, &id, Duration::from_secs(60)).await?;
    assert_eq!(call.status(), CallStatus::Succeeded, "{call:?}");
    let calls_before = recorded_calls(&stack).await;

    // Callbacks to internal addresses are refused, before any call is
    // made, unless the operator allowed their network.
    for refused in [
        server.clone(),
        server.replace("127.0.0.1", "localhost"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://10.0.0.1/".to_string(),
        "http://[::1]:9/".to_string(),
        "ftp://example.com/".to_string(),
    ] {
        let answer = send(
            http.post(format!("{strict}/async-function/{FUNCTION}/plain"))
                .header("authorization", &auth)
                .header("x-callback-url", &refused),
        )
        .await;
        assert_eq!(answer.status, 400, "{refused}: {}", answer.text());
        assert_eq!(answer.json()["error"]["code"], "INVALID_ARGUMENT");
    }
    let answer = send(
        http.post(format!("{gateway}/async-function/{FUNCTION}/plain"))
            .header("authorization", &auth)
            .header("x-callback-url", "http://127.0.0.2:9/"),
    )
    .await;
    assert_eq!(answer.status, 400, "{}", answer.text());
    assert_eq!(recorded_calls(&stack).await, calls_before);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), callbacks.recv())
            .await
            .is_err(),
        "a refused callback was delivered"
    );

    stack.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_moves_to_a_replica_that_answers() -> anyhow::Result<()> {
    let mut stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        controlplanes: 2,
        ..StackOptions::default()
    })
    .await?;
    stack.deploy(FUNCTION, "python3", &fixture_dir("py-http"), &[])?;
    // Given both replicas, replica 0 first.
    let gateway = stack.start_gateway(&[]).await?;
    let http = client();
    let auth = bearer(&stack.auth.token);
    let call = || {
        send(
            http.post(format!("{gateway}/function/{FUNCTION}/plain"))
                .header("authorization", &auth),
        )
    };
    let answer = call().await;
    assert_eq!(answer.status, 200, "{}", answer.text());

    // Replica 0 goes away (if it led, the other takes over within a few
    // seconds): calls through the gateway are served again by replica 1,
    // although the gateway was talking to replica 0.
    stack.kill_controlplane(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut last;
    loop {
        last = call().await;
        if last.status == 200 || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(last.status, 200, "never served again: {}", last.text());
    // And it stays there: the next calls need no detour.
    for _ in 0..3 {
        let answer = call().await;
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    stack.shutdown().await
}

/// Per-function HTTP access (`fn deploy --http public`): with a
/// public-invoker token configured, the gateway serves requests without a
/// token for public functions only; a private function answers as a
/// missing one, callbacks need a token, and the public-invoker token can
/// do nothing else through the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_functions_answer_without_a_token_and_nothing_else_does() -> anyhow::Result<()> {
    let mut stack = stack(Vec::new()).await?;
    stack.deploy(
        "open",
        "python3",
        &fixture_dir("py-http"),
        &["--http", "public"],
    )?;
    let admin = stack.auth.token.clone();
    let shown = stdout_of(
        stack.faasctl_as(&admin, &["fn", "get", "open", "-o", "json"]),
        "fn get",
    );
    assert_eq!(serde_json::from_str::<Value>(&shown)?["http"], "public");
    let shown = stdout_of(
        stack.faasctl_as(&admin, &["fn", "get", FUNCTION, "-o", "json"]),
        "fn get",
    );
    assert_eq!(serde_json::from_str::<Value>(&shown)?["http"], "private");
    let public = stdout_of(
        stack.faasctl_as(&admin, &["token", "create", "--role", "public-invoker"]),
        "token create",
    )
    .trim()
    .to_string();
    let token_file = stack.dir.path().join("public.token");
    std::fs::write(&token_file, &public)?;
    let gateway = stack
        .start_gateway(&["--public-token-file", token_file.to_str().unwrap()])
        .await?;
    let http = client();

    // Without a token: the public function answers, sync and async.
    let answer = send(
        http.post(format!("{gateway}/function/open/plain"))
            .body("{}"),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    let answer = send(
        http.post(format!("{gateway}/async-function/open/plain"))
            .body("{}"),
    )
    .await;
    assert_eq!(answer.status, 202, "{}", answer.text());
    // The private one is as missing as a function that does not exist.
    let private = send(http.post(format!("{gateway}/function/{FUNCTION}/plain"))).await;
    let missing = send(http.post(format!("{gateway}/function/nosuch/plain"))).await;
    assert_eq!(private.status, 404, "{}", private.text());
    assert_eq!(missing.status, 404, "{}", missing.text());
    assert_eq!(
        private.json()["error"]["message"]
            .as_str()
            .map(|m| m.replace(FUNCTION, "nosuch")),
        missing.json()["error"]["message"]
            .as_str()
            .map(String::from),
    );
    // A version or alias of it that does not exist says no more: a
    // "no version 9" would tell that the private function exists.
    for qualifier in ["9", "no-alias", "1"] {
        let probe =
            send(http.post(format!("{gateway}/function/{FUNCTION}:{qualifier}/plain"))).await;
        assert_eq!(probe.status, 404, "{}", probe.text());
        assert_eq!(
            probe.json()["error"]["message"]
                .as_str()
                .map(|m| m.replace(FUNCTION, "nosuch")),
            missing.json()["error"]["message"]
                .as_str()
                .map(String::from),
            ":{qualifier}"
        );
    }
    let answer = send(http.post(format!("{gateway}/async-function/{FUNCTION}/plain"))).await;
    assert_eq!(answer.status, 404, "{}", answer.text());
    // A callback is made only for a caller with a token; a malformed
    // header is refused, not taken for no header.
    let answer = send(
        http.post(format!("{gateway}/async-function/open/plain"))
            .header("x-callback-url", "http://127.0.0.1:9/x"),
    )
    .await;
    assert_eq!(answer.status, 401, "{}", answer.text());
    let answer = send(
        http.post(format!("{gateway}/function/open/plain"))
            .header("authorization", "Basic dXNlcjpwdw=="),
    )
    .await;
    assert_eq!(answer.status, 401, "{}", answer.text());
    // With a token the private function is there as before.
    let answer = send(
        http.post(format!("{gateway}/function/{FUNCTION}/plain"))
            .header("authorization", bearer(&admin)),
    )
    .await;
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(recorded_calls(&stack).await, 1, "only the admin's call ran");

    // The public-invoker token through the API: invoke public functions,
    // nothing else.
    let mut calls = CallServiceClient::new(stack.auth.channel_with(
        &stack.controlplane_url(0),
        Some(&public),
        Some(Duration::from_secs(60)),
    ));
    let invoke = |function: &str| faas_proto::v1::InvokeRequest {
        function: function.into(),
        params_json: r#"{"rawPath": "/plain", "requestContext": {"http": {"method": "POST"}}}"#
            .into(),
        ..Default::default()
    };
    let call = calls.invoke(invoke("open")).await?.into_inner();
    assert_eq!(call.status(), CallStatus::Succeeded, "{call:?}");
    let refused = calls.invoke(invoke(FUNCTION)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");
    let refused = calls
        .get_call(GetCallRequest {
            id: call.id.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let refused = calls
        .list_calls(ListCallsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let out = stack.faasctl_as(&public, &["fn", "ls"]);
    assert!(!out.status.success(), "a public invoker listed functions");
    Ok(())
}
