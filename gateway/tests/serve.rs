//! The gateway served in-process, over HTTPS, with no control plane to
//! reach: TLS on the listener, the routes that need no call, and the
//! answers the gateway gives by itself (401 without a token, 413 over the
//! body limit, 503 when no replica answers).

use std::time::Duration;

use faas_gateway::config::{CallbackSettings, Config};

fn config(tls: (String, String)) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        // Port 1 on loopback: nothing listens, connections are refused.
        control_plane: vec!["http://127.0.0.1:1".into()],
        public_token: None,
        ca_pem: None,
        tls: Some(tls),
        max_body_bytes: 1000,
        max_in_flight: 16,
        threads: 1,
        header_timeout: Duration::from_secs(5),
        body_timeout: Duration::from_secs(5),
        call_timeout: Duration::from_secs(5),
        callbacks: CallbackSettings {
            allow_nets: Vec::new(),
            timeout: Duration::from_secs(1),
            attempts: 1,
            max_wait: Duration::from_secs(1),
            max_pending: 1,
        },
    }
}

#[tokio::test]
async fn https_routes_and_the_gateways_own_answers() {
    let ca = faas_pki::ca::ClusterCa::generate().unwrap();
    let issued = ca
        .issue_replica("gateway", &["127.0.0.1".into()], Duration::from_secs(3600))
        .unwrap();
    let tls = (issued.cert_pem, issued.key_pem.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(faas_gateway::serve(config(tls), listener, async {
        let _ = stopped.await;
    }));

    let https = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.cert_pem().as_bytes()).unwrap()])
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let base = format!("https://{addr}");

    let health = https.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let doc: serde_json::Value = https
        .get(format!("{base}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json_body()
        .await;
    assert!(doc["paths"].get("/function/{name}").is_some());

    let answer = https
        .post(format!("{base}/function/hello"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401);
    assert_eq!(answer.headers()["www-authenticate"], "Bearer");

    let answer = https
        .post(format!("{base}/function/hello"))
        .header("authorization", "Bearer a.b")
        .body(vec![b'x'; 1001])
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 413);

    // No replica to reach: 503, nothing hangs.
    let answer = https
        .post(format!("{base}/function/hello"))
        .header("authorization", "Bearer a.b")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 503);
    let error: serde_json::Value = answer.json_body().await;
    assert_eq!(error["error"]["code"], "UNAVAILABLE", "{error}");

    // Plain HTTP to the TLS port gets no answer.
    let plain = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    assert!(plain
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .is_err());

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(40), server)
        .await
        .expect("the gateway stops")
        .unwrap()
        .unwrap();
}

/// The body as JSON (reqwest's `json` feature is not built).
trait JsonBody {
    async fn json_body(self) -> serde_json::Value;
}

impl JsonBody for reqwest::Response {
    async fn json_body(self) -> serde_json::Value {
        serde_json::from_slice(&self.bytes().await.unwrap()).unwrap()
    }
}

/// A "control plane" that accepts connections and never answers.
async fn black_hole() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    addr
}

#[tokio::test]
async fn a_silent_control_plane_costs_call_timeout_and_max_in_flight_holds() {
    let silent = black_hole().await;
    let mut config = config(("".into(), "".into()));
    config.tls = None;
    config.control_plane = vec![format!("http://{silent}")];
    config.max_in_flight = 1;
    config.call_timeout = Duration::from_secs(2);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(faas_gateway::serve(
        config,
        listener,
        std::future::pending(),
    ));
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();

    let started = std::time::Instant::now();
    let first = tokio::spawn({
        let http = http.clone();
        let url = format!("{base}/function/hello");
        async move {
            http.post(url)
                .header("authorization", "Bearer a.b")
                .send()
                .await
                .unwrap()
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The one place is taken by the waiting call.
    let second = http
        .post(format!("{base}/function/hello"))
        .header("authorization", "Bearer a.b")
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 503);
    assert_eq!(second.headers()["retry-after"], "1");
    // The waiting call ends at call_timeout, not never.
    let first = first.await.unwrap();
    assert_eq!(first.status(), 504);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    let error: serde_json::Value = first.json_body().await;
    assert_eq!(error["error"]["code"], "DEADLINE_EXCEEDED", "{error}");
}
