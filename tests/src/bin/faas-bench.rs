//! faas-bench: end-to-end latency of synchronous invokes of a trivial
//! function on a private single-node stack, measured side by side with the
//! floor: containerd's own `ctr run --rm` of the same runtime image running
//! the same amount of Python, and `../shared/bench/floor.sh` (busybox echo).
//!
//! A program, not a test: it prints a JSON summary and a Markdown table.
//! Usage (as root, after tests/run.sh built everything, or with FAAS_BIN_DIR
//! and FAAS_RUNTIME_ARCHIVES set):
//!   faas-bench [--calls 50] [--floor-runs 20] [--policy no-preload] [--spots 2]

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use faas_proto::v1::call_service_client::CallServiceClient;
use faas_proto::v1::runtime_service_client::RuntimeServiceClient;
use faas_proto::v1::{CallStatus, GetRuntimeRequest, InvokeRequest, Timings};
use faas_tests::{fixture_dir, repo_root, Stack, StackOptions};

struct Args {
    calls: usize,
    floor_runs: usize,
    policy: Option<String>,
    spots: u32,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        calls: 50,
        floor_runs: 20,
        policy: None,
        spots: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--calls" => args.calls = value()?.parse()?,
            "--floor-runs" => args.floor_runs = value()?.parse()?,
            "--policy" => args.policy = Some(value()?),
            "--spots" => args.spots = value()?.parse()?,
            "-h" | "--help" => {
                eprintln!(
                    "usage: faas-bench [--calls N] [--floor-runs N] [--policy P] [--spots N]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(args)
}

/// Sorted samples in ms.
struct Series(Vec<f64>);

impl Series {
    fn new(mut v: Vec<f64>) -> Series {
        v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
        Series(v)
    }
    fn pct(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * (self.0.len() - 1) as f64).round() as usize;
        self.0[i]
    }
    fn mean(&self) -> f64 {
        self.0.iter().sum::<f64>() / self.0.len().max(1) as f64
    }
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "mean_ms": round(self.mean()), "p50_ms": round(self.pct(50.0)),
            "p90_ms": round(self.pct(90.0)), "p99_ms": round(self.pct(99.0)), "n": self.0.len(),
        })
    }
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn ctr(sock: &str, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let out = Command::new("ctr")
        .arg("-a")
        .arg(sock)
        .args(["-n", "faas-bench-floor"])
        .args(args)
        .output()
        .context("running ctr (the floor is measured with containerd's own client)")?;
    if !out.status.success() {
        bail!("ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let stack = Stack::start(StackOptions {
        agents: 1,
        spots: args.spots,
        runtimes: vec!["python3"],
        policy: args.policy.clone(),
    })
    .await?;
    let deploy = stack
        .faasctl()
        .args(["fn", "deploy", "bench-hello", "--runtime", "python3"])
        .arg(fixture_dir("py-hello"))
        .output()?;
    if !deploy.status.success() {
        bail!("deploy: {}", String::from_utf8_lossy(&deploy.stderr));
    }
    let mut client = CallServiceClient::new(stack.channel().await);
    let invoke = |client: &mut CallServiceClient<_>| {
        let mut client = client.clone();
        async move {
            let started = Instant::now();
            let call = client
                .invoke(InvokeRequest {
                    function: "bench-hello".into(),
                    params_json: r#"{"name":"bench"}"#.into(),
                })
                .await?
                .into_inner();
            if call.status() != CallStatus::Succeeded {
                bail!("call failed: {call:?}");
            }
            Ok::<_, anyhow::Error>((
                started.elapsed().as_secs_f64() * 1000.0,
                call.timings.unwrap_or_default(),
            ))
        }
    };
    // Warm-up: the first call pulls and unpacks the image.
    for _ in 0..3 {
        invoke(&mut client).await?;
    }
    let mut client_ms = Vec::new();
    let mut timings: Vec<Timings> = Vec::new();
    for _ in 0..args.calls {
        let (ms, t) = invoke(&mut client).await?;
        client_ms.push(ms);
        timings.push(t);
        // Let the previous container's tear-down finish, as a call every
        // 0.25 s would.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let phase = |f: fn(&Timings) -> f64| Series::new(timings.iter().map(f).collect()).json();
    let faas = serde_json::json!({
        "client_wall": Series::new(client_ms).json(),
        "total": phase(|t| t.total_ms),
        "queue": phase(|t| t.queue_ms),
        "runtime_load": phase(|t| t.runtime_load_ms),
        "function_load": phase(|t| t.function_load_ms),
        "dependencies": phase(|t| t.dependencies_ms),
        "execution": phase(|t| t.execution_ms),
        "result_return": phase(|t| t.result_return_ms),
    });

    // The floor, on the same containerd: the same image through ctr.
    let runtime = RuntimeServiceClient::new(stack.channel().await)
        .get_runtime(GetRuntimeRequest {
            name: "python3".into(),
        })
        .await?
        .into_inner();
    let sock = stack.containerd_socket.display().to_string();
    ctr(&sock, &["images", "pull", "--plain-http", &runtime.image])?;
    let python = "import json; print(json.dumps({'greeting': 'hello bench'}))";
    let mut floor_ms = Vec::new();
    for i in 0..args.floor_runs + 2 {
        let id = format!("floor-{i}");
        let started = Instant::now();
        let out = ctr(
            &sock,
            &["run", "--rm", &runtime.image, &id, "python3", "-c", python],
        )?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if !String::from_utf8_lossy(&out.stdout).contains("hello bench") {
            bail!(
                "floor container printed {:?}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        if i >= 2 {
            floor_ms.push(ms);
        }
    }
    let floor_same_image = Series::new(floor_ms).json();
    let _ = ctr(&sock, &["images", "rm", &runtime.image]);

    // The reference floor of ../shared/bench/floor.sh, if present.
    let floor_script = repo_root().join("../shared/bench/floor.sh");
    let busybox_floor = if floor_script.is_file() {
        let out = Command::new("bash")
            .arg(&floor_script)
            .args([args.floor_runs.to_string(), "10".to_string()])
            .env("FLOOR_SOCK", &sock)
            .output()?;
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .unwrap_or_else(|_| serde_json::json!({"error": String::from_utf8_lossy(&out.stderr)}))
    } else {
        serde_json::json!(null)
    };

    let nodes = stack.list_nodes().await?;
    let summary = serde_json::json!({
        "benchmark": "sync invoke of a trivial python function, one fresh container per call",
        "policy": nodes.policy,
        "calls": args.calls,
        "spots": args.spots,
        "faas": faas,
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
