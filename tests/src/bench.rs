//! Helpers shared by the benchmark programs (`faas-bench`, `faas-workload`):
//! latency statistics, the `ctr run --rm` floor measured on the stack's own
//! containerd, `floor.sh`, deploying a fixture, and one timed sync invoke.
//!
//! The floor is measured with containerd's own client on purpose: it is the
//! reference faas is compared against, not part of faas.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::Channel;
use anyhow::{bail, Context};
use faas_proto::v1::call_service_client::CallServiceClient;
use faas_proto::v1::runtime_service_client::RuntimeServiceClient;
use faas_proto::v1::{Call, GetRuntimeRequest, InvokeRequest, Timings};
use serde_json::{json, Value};

use crate::{repo_root, Stack};

/// Latency samples in ms, sorted.
#[derive(Debug, Clone, Default)]
pub struct Series(Vec<f64>);

impl Series {
    pub fn new(mut samples: Vec<f64>) -> Series {
        samples.sort_by(|a, b| a.total_cmp(b));
        Series(samples)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Nearest-rank percentile; NaN when empty.
    pub fn pct(&self, p: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let i = ((p / 100.0) * (self.0.len() - 1) as f64).round() as usize;
        self.0[i]
    }

    /// NaN when empty.
    pub fn mean(&self) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        self.0.iter().sum::<f64>() / self.0.len() as f64
    }

    /// `{mean_ms, p50_ms, p90_ms, p99_ms, n}`, rounded to 0.1 ms (null when empty).
    pub fn json(&self) -> Value {
        json!({
            "mean_ms": round(self.mean()), "p50_ms": round(self.pct(50.0)),
            "p90_ms": round(self.pct(90.0)), "p99_ms": round(self.pct(99.0)), "n": self.0.len(),
        })
    }
}

/// Rounds to 0.1; NaN stays NaN (serde_json writes it as null).
pub fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// Reads one phase's duration from a call's timings.
pub type PhaseField = fn(&Timings) -> f64;

/// The phases of a call record, in the order they happen.
pub const PHASES: [(&str, PhaseField); 7] = [
    ("queue", |t| t.queue_ms),
    ("runtime_load", |t| t.runtime_load_ms),
    ("function_load", |t| t.function_load_ms),
    ("dependencies", |t| t.dependencies_ms),
    ("execution", |t| t.execution_ms),
    ("result_return", |t| t.result_return_ms),
    ("total", |t| t.total_ms),
];

/// `{phase: Series::json}` for every phase of [`PHASES`].
pub fn phases_json(timings: &[Timings]) -> Value {
    let mut out = serde_json::Map::new();
    for (name, field) in PHASES {
        out.insert(
            name.to_string(),
            Series::new(timings.iter().map(field).collect()).json(),
        );
    }
    Value::Object(out)
}

/// Runs `ctr -a <sock> -n <namespace> <args>`, failing with its stderr.
pub fn ctr(sock: &str, namespace: &str, args: &[&str]) -> anyhow::Result<Output> {
    let out = Command::new("ctr")
        .arg("-a")
        .arg(sock)
        .args(["-n", namespace])
        .args(args)
        .output()
        .context("running ctr (the floor is measured with containerd's own client)")?;
    if !out.status.success() {
        bail!("ctr {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out)
}

/// The floor on the stack's containerd: `ctr run --rm` of runtime
/// `runtime`'s own image running the same amount of Python as the trivial
/// function (`runs` timed runs after 2 untimed ones). Sequential.
pub async fn floor_same_image(stack: &Stack, runtime: &str, runs: usize) -> anyhow::Result<Value> {
    const NAMESPACE: &str = "faas-bench-floor";
    let image = RuntimeServiceClient::new(stack.channel().await)
        .get_runtime(GetRuntimeRequest {
            name: runtime.into(),
        })
        .await?
        .into_inner()
        .image;
    let sock = stack.containerd_socket.display().to_string();
    // The registry takes only the control plane's tokens, over TLS of its
    // own CA: ctr pulls with a token for the image's repository, set as a
    // header in a hosts directory of the stack's own, with the CA.
    let (host, path) = image.split_once('/').context("an image reference")?;
    let repository = path.split(['@', ':']).next().unwrap_or(path);
    let token = stack.registry_token(repository)?;
    let hosts = stack.dir.path().join("floor-hosts");
    std::fs::create_dir_all(hosts.join(host))?;
    std::fs::write(
        hosts.join(host).join("hosts.toml"),
        format!(
            "server = \"https://{host}\"\n\n[host.\"https://{host}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  ca = \"{ca}\"\n  [host.\"https://{host}\".header]\n    Authorization = \"Bearer {token}\"\n",
            ca = faas_pki::registry::RegistryFiles::new(stack.registry_pki())
                .tls_ca()
                .display()
        ),
    )?;
    ctr(
        &sock,
        NAMESPACE,
        &[
            "images",
            "pull",
            "--hosts-dir",
            &hosts.display().to_string(),
            &image,
        ],
    )?;
    let python = "import json; print(json.dumps({'greeting': 'hello bench'}))";
    let mut samples = Vec::new();
    for i in 0..runs + 2 {
        let id = format!("floor-{i}");
        let started = Instant::now();
        let out = ctr(
            &sock,
            NAMESPACE,
            &["run", "--rm", &image, &id, "python3", "-c", python],
        )?;
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if !String::from_utf8_lossy(&out.stdout).contains("hello bench") {
            bail!(
                "floor container printed {:?}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        if i >= 2 {
            samples.push(ms);
        }
    }
    let _ = ctr(&sock, NAMESPACE, &["images", "rm", &image]);
    Ok(Series::new(samples).json())
}

/// `../shared/bench/floor.sh RUNS SECONDS` on the stack's containerd
/// (busybox echo: sequential p50/p90 and `throughput_per_s` with 2 in
/// parallel), its JSON line; null when the script is absent, `{"error"}`
/// when it failed.
pub fn floor_sh(stack: &Stack, runs: usize, seconds: u64) -> anyhow::Result<Value> {
    let script = repo_root().join("../shared/bench/floor.sh");
    if !script.is_file() {
        return Ok(Value::Null);
    }
    let out = Command::new("bash")
        .arg(&script)
        .args([runs.to_string(), seconds.to_string()])
        .env("FLOOR_SOCK", &stack.containerd_socket)
        .output()
        .context("running floor.sh")?;
    Ok(serde_json::from_slice::<Value>(&out.stdout)
        .unwrap_or_else(|_| json!({"error": String::from_utf8_lossy(&out.stderr)})))
}

/// [`Stack::deploy`], kept for the benchmark programs.
pub fn deploy(
    stack: &Stack,
    name: &str,
    runtime: &str,
    dir: &Path,
    extra: &[&str],
) -> anyhow::Result<()> {
    stack.deploy(name, runtime, dir, extra)
}

/// One synchronous Invoke, timed on the client: the wall time in ms and the
/// call record (whatever its status). Fails only on an RPC error.
pub async fn invoke_timed(
    client: &mut CallServiceClient<Channel>,
    function: &str,
    params_json: &str,
    timeout: Duration,
) -> Result<(f64, Call), (f64, tonic::Status)> {
    let mut request = tonic::Request::new(InvokeRequest {
        function: function.into(),
        params_json: params_json.into(),
        ..Default::default()
    });
    request.set_timeout(timeout);
    let started = Instant::now();
    let reply = client.invoke(request).await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    match reply {
        Ok(call) => Ok((ms, call.into_inner())),
        Err(status) => Err((ms, status)),
    }
}
