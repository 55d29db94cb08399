//! faas-bench: end-to-end latency of synchronous invokes of a trivial
//! function on a private single-node stack, measured side by side with the
//! floor: containerd's own `ctr run --rm` of the same runtime image running
//! the same amount of Python, and `../shared/bench/floor.sh` (busybox echo).
//!
//! A program, not a test: it prints a JSON summary and a Markdown table.
//! Usage (as root, after tests/run.sh built everything, or with FAAS_BIN_DIR
//! and FAAS_RUNTIME_ARCHIVES set):
//!   faas-bench [--calls 50] [--floor-runs 20] [--policy no-preload] [--spots 2]
//!              [--network none|egress]
//! `--network egress` deploys the function with egress (a network
//! namespace, CNI bridge and nft elements per call; public addresses only).
//! `--gateway` also starts faas-gateway and alternates each gRPC invoke with
//! the same call as `POST /function/NAME` through it (HTTP/1.1, one kept-alive
//! connection), side by side on the same stack: the gateway's cost is the
//! difference of the two client-wall series.

use std::time::Duration;

use anyhow::{bail, Context};
use faas_proto::v1::call_service_client::CallServiceClient;
use faas_proto::v1::{CallStatus, Timings};
use faas_tests::bench::{deploy, floor_same_image, floor_sh, invoke_timed, phases_json, Series};
use faas_tests::{fixture_dir, Stack, StackOptions};

struct Args {
    calls: usize,
    floor_runs: usize,
    policy: Option<String>,
    spots: u32,
    network: String,
    gateway: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        calls: 50,
        floor_runs: 20,
        policy: None,
        spots: 2,
        network: "none".into(),
        gateway: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--calls" => args.calls = value()?.parse()?,
            "--floor-runs" => args.floor_runs = value()?.parse()?,
            "--policy" => args.policy = Some(value()?),
            "--spots" => args.spots = value()?.parse()?,
            "--network" => args.network = value()?,
            "--gateway" => args.gateway = true,
            "-h" | "--help" => {
                eprintln!(
                    "usage: faas-bench [--calls N] [--floor-runs N] [--policy P] [--spots N] \
                     [--network none|egress] [--gateway]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let mut stack = Stack::start(StackOptions {
        agents: 1,
        spots: args.spots,
        runtimes: vec!["python3"],
        policy: args.policy.clone(),
        ..StackOptions::default()
    })
    .await?;
    deploy(
        &stack,
        "bench-hello",
        "python3",
        &fixture_dir("py-hello"),
        &["--network", &args.network],
    )?;
    let mut client = CallServiceClient::new(stack.channel().await);
    let gateway = if args.gateway {
        Some(GatewayClient {
            url: format!("{}/function/bench-hello", stack.start_gateway(&[]).await?),
            token: stack.auth.token.clone(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .no_proxy()
                .build()?,
        })
    } else {
        None
    };
    let invoke = |client: &mut CallServiceClient<_>| {
        let mut client = client.clone();
        async move {
            let (ms, call) = invoke_timed(
                &mut client,
                "bench-hello",
                r#"{"name":"bench"}"#,
                Duration::from_secs(60),
            )
            .await
            .map_err(|(_, status)| anyhow::anyhow!("invoke: {status}"))?;
            if call.status() != CallStatus::Succeeded {
                bail!("call failed: {call:?}");
            }
            Ok::<_, anyhow::Error>((ms, call.timings.unwrap_or_default()))
        }
    };
    // Warm-up: the first call pulls and unpacks the image.
    for _ in 0..3 {
        invoke(&mut client).await?;
        if let Some(gateway) = &gateway {
            gateway.call(&mut client).await?;
        }
    }
    let mut client_ms = Vec::new();
    let mut timings: Vec<Timings> = Vec::new();
    let mut http_ms = Vec::new();
    let mut http_timings: Vec<Timings> = Vec::new();
    let mut http_added_ms = Vec::new();
    let mut http_inside_ms = Vec::new();
    for i in 0..args.calls {
        // gRPC first on even rounds, HTTP first on odd ones.
        for path in [i % 2, 1 - i % 2] {
            match (path, &gateway) {
                (0, _) => {
                    let (ms, t) = invoke(&mut client).await?;
                    client_ms.push(ms);
                    timings.push(t);
                }
                (_, Some(gateway)) => {
                    let (ms, t, invoke_ms, inside_ms) = gateway.call(&mut client).await?;
                    http_ms.push(ms);
                    http_added_ms.push(ms - invoke_ms);
                    http_inside_ms.push(inside_ms - invoke_ms);
                    http_timings.push(t);
                }
                (_, None) => continue,
            }
            // Let the previous container's tear-down finish, as a call
            // every 0.25 s would.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut faas = phases_json(&timings);
    faas["client_wall"] = Series::new(client_ms).json();
    let gateway_json = if gateway.is_some() {
        let mut json = phases_json(&http_timings);
        json["client_wall"] = Series::new(http_ms).json();
        json["added_by_gateway"] = Series::new(http_added_ms).json();
        json["gateway_handling"] = Series::new(http_inside_ms).json();
        json
    } else {
        serde_json::Value::Null
    };

    // The floor, on the same containerd: the same image through ctr, and
    // the reference floor of ../shared/bench/floor.sh.
    let floor_same_image = floor_same_image(&stack, "python3", args.floor_runs).await?;
    let busybox_floor = floor_sh(&stack, args.floor_runs, 10)?;

    let nodes = stack.list_nodes().await?;
    let summary = serde_json::json!({
        "benchmark": "sync invoke of a trivial python function, one fresh container per call",
        "policy": nodes.policy,
        "calls": args.calls,
        "spots": args.spots,
        "network": args.network,
        "faas": faas,
        "gateway": gateway_json,
        "floor_ctr_run_rm_same_image": floor_same_image,
        "floor_sh_busybox": busybox_floor,
    });
    stack.shutdown().await?;

    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let row = |name: &str, v: &serde_json::Value| {
        format!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} |",
            f(v, "mean_ms"),
            f(v, "p50_ms"),
            f(v, "p90_ms"),
            f(v, "p99_ms")
        )
    };
    let mut table = vec![
        "| measured | mean ms | p50 ms | p90 ms | p99 ms |".to_string(),
        "|---|---|---|---|---|".to_string(),
        row("faas invoke, client wall", &summary["faas"]["client_wall"]),
    ];
    if gateway.is_some() {
        table.push(row(
            "gateway `POST /function/NAME`, client wall",
            &summary["gateway"]["client_wall"],
        ));
        table.push(row(
            "gateway: client wall − its invoke (Server-Timing)",
            &summary["gateway"]["added_by_gateway"],
        ));
        table.push(row(
            "gateway: its handling − its invoke (Server-Timing)",
            &summary["gateway"]["gateway_handling"],
        ));
        table.push(row(
            "gateway: faas phase: total",
            &summary["gateway"]["total"],
        ));
    }
    for p in [
        "total",
        "queue",
        "runtime_load",
        "function_load",
        "dependencies",
        "execution",
        "result_return",
    ] {
        table.push(row(&format!("faas phase: {p}"), &summary["faas"][p]));
    }
    table.push(row(
        "`ctr run --rm` same image, python3 -c",
        &summary["floor_ctr_run_rm_same_image"],
    ));
    let report = format!(
        "{}\n\n{}",
        serde_json::to_string(&summary)?,
        table.join("\n")
    );
    // Results go to stdout: this is a program, not a service.
    #[allow(clippy::print_stdout)]
    {
        println!("{report}");
    }
    Ok(())
}

/// The same call through faas-gateway, timed on the client.
struct GatewayClient {
    url: String,
    token: String,
    http: reqwest::Client,
}

impl GatewayClient {
    /// One `POST /function/bench-hello`: the wall time in ms, the call's
    /// timings (read afterwards by its X-Call-Id, outside the timed part)
    /// and how long the gateway's own invoke and its whole handling took
    /// (its Server-Timing).
    async fn call(
        &self,
        client: &mut CallServiceClient<faas_tests::Channel>,
    ) -> anyhow::Result<(f64, Timings, f64, f64)> {
        let started = std::time::Instant::now();
        let response = self
            .http
            .post(&self.url)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(r#"{"name":"bench"}"#)
            .send()
            .await?;
        let status = response.status();
        let id = response
            .headers()
            .get("x-call-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let timing = |metric: &str| -> f64 {
            response
                .headers()
                .get_all("server-timing")
                .iter()
                .filter_map(|v| v.to_str().ok())
                .find_map(|v| v.strip_prefix(metric)?.strip_prefix(";dur="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN)
        };
        let (invoke_ms, inside_ms) = (timing("invoke"), timing("gateway"));
        let body = response.bytes().await?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if status != 200 || !String::from_utf8_lossy(&body).contains("hello") {
            bail!("gateway call: {status}: {}", String::from_utf8_lossy(&body));
        }
        let call = client
            .get_call(faas_proto::v1::GetCallRequest { id })
            .await?
            .into_inner();
        Ok((ms, call.timings.unwrap_or_default(), invoke_ms, inside_ms))
    }
}
