//! faas-workload: the broker policies under the thesis's workloads (chapter
//! 6), on one node of a private stack, with the `ctr run --rm` floor measured
//! in the same run.
//!
//! For each policy it runs, open-loop (every call is issued on its schedule
//! as a sync Invoke of its own, whether or not earlier calls finished, so
//! queueing shows):
//! - `fixed`: the trivial Python function every 0.25 s;
//! - `random`: the same with intervals drawn uniformly from 0.1–0.4 s;
//! - `bigdep`: a function whose dependency step loads a large file, every
//!   1.5 s (its own stack: a runtime `python3-bigdep`, the python3 image with
//!   a `dependencies` command that reads and hashes the function's `dep.bin`
//!   at a paced bandwidth, standing for the thesis's 1 GB download);
//! - `saturation`: the trivial function at rising rates, to find the highest
//!   rate whose queue time stays bounded.
//!
//! It prints a JSON line per (policy, workload) and Markdown tables, and
//! writes `results-<date>.json`, `calls-<date>.jsonl.gz` (every call) and SVG
//! plots into `--out`. A program, not a test. As root, with FAAS_BIN_DIR and
//! FAAS_RUNTIME_ARCHIVES set (see tests/run.sh):
//!   faas-workload [--policies a,b] [--workloads fixed,random,bigdep,saturation]
//!                 [--duration 30] [--spots 4] [--out docs/bench] [--quick]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use faas_proto::v1::call_service_client::CallServiceClient;
use faas_proto::v1::{CallStatus, RuntimeSpec, StartKind, Timings};
use faas_tests::bench::{
    deploy, floor_same_image, floor_sh, invoke_timed, phases_json, round, Series,
};
use faas_tests::{fixture_dir, repo_root, runtime_archives, Stack, StackOptions};
use serde_json::{json, Value};
use tokio::time::Instant;

const HELLO: &str = "bench-hello";
const BIGDEP: &str = "bench-bigdep";
const BIGDEP_RUNTIME: &str = "python3-bigdep";
const PARAMS: &str = r#"{"name":"bench"}"#;
/// A sync Invoke gives up after this long (a saturated step can queue long).
const INVOKE_TIMEOUT: Duration = Duration::from_secs(180);
/// Pause between workloads on one stack, so tear-downs and refills of the
/// previous one do not count against the next.
const SETTLE: Duration = Duration::from_secs(3);
/// Queue time above which a saturation step is not sustained.
const QUEUE_BOUND_MS: f64 = 1000.0;
/// How many call errors are kept verbatim per workload.
const ERRORS_KEPT: usize = 5;

#[derive(Debug, Clone)]
struct Args {
    policies: Vec<String>,
    workloads: Vec<String>,
    duration_s: f64,
    warmup_s: f64,
    bigdep_duration_s: f64,
    bigdep_mb: u64,
    /// Pace of the bigdep dependency step's read, MiB/s; 0: unpaced.
    bigdep_mibps: u64,
    spots: u32,
    rates: Vec<f64>,
    step_s: f64,
    floor_runs: usize,
    floor_secs: u64,
    seed: u64,
    out: PathBuf,
}

const USAGE: &str =
    "usage: faas-workload [--policies a,b,..] [--workloads fixed,random,mixed,bigdep,saturation]
       [--duration SECS (fixed, random; default 30)] [--warmup SECS (5)]
       [--bigdep-duration SECS (45)] [--bigdep-mb MIB (192)] [--bigdep-mibps MIB/S (64; 0 unpaced)]
       [--spots N (4)]
       [--rates 2,4,6,.. (saturation steps, calls/s)] [--step SECS (15)]
       [--floor-runs N (20)] [--floor-secs SECS (10)] [--seed N] [--out DIR (docs/bench)]
       [--quick (a smoke check: short phases, small file, two saturation steps)]";

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        policies: faas_broker::POLICY_NAMES
            .iter()
            .map(|p| p.to_string())
            .collect(),
        workloads: ["fixed", "random", "mixed", "bigdep", "saturation"]
            .map(String::from)
            .to_vec(),
        duration_s: 30.0,
        warmup_s: 5.0,
        bigdep_duration_s: 45.0,
        bigdep_mb: 192,
        bigdep_mibps: 64,
        spots: 4,
        rates: vec![
            2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0, 20.0, 24.0, 28.0, 32.0,
        ],
        step_s: 15.0,
        floor_runs: 20,
        floor_secs: 10,
        seed: 0x5eed_f00d,
        out: repo_root().join("docs/bench"),
    };
    let list = |v: String| -> Vec<String> {
        v.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--policies" => args.policies = list(value()?),
            "--workloads" => args.workloads = list(value()?),
            "--duration" => args.duration_s = value()?.parse()?,
            "--warmup" => args.warmup_s = value()?.parse()?,
            "--bigdep-duration" => args.bigdep_duration_s = value()?.parse()?,
            "--bigdep-mb" => args.bigdep_mb = value()?.parse()?,
            "--bigdep-mibps" => args.bigdep_mibps = value()?.parse()?,
            "--spots" => args.spots = value()?.parse()?,
            "--rates" => {
                args.rates = list(value()?)
                    .iter()
                    .map(|r| r.parse::<f64>())
                    .collect::<Result<_, _>>()?
            }
            "--step" => args.step_s = value()?.parse()?,
            "--floor-runs" => args.floor_runs = value()?.parse()?,
            "--floor-secs" => args.floor_secs = value()?.parse()?,
            "--seed" => args.seed = value()?.parse()?,
            "--out" => args.out = PathBuf::from(value()?),
            "--quick" => {
                args.duration_s = 8.0;
                args.warmup_s = 2.0;
                args.bigdep_duration_s = 9.0;
                args.bigdep_mb = 32;
                args.rates = vec![2.0, 4.0];
                args.step_s = 5.0;
                args.floor_runs = 5;
                args.floor_secs = 3;
            }
            "-h" | "--help" => {
                eprintln!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    for w in &args.workloads {
        if !["fixed", "random", "mixed", "bigdep", "saturation"].contains(&w.as_str()) {
            bail!("unknown workload {w}\n{USAGE}");
        }
    }
    for p in &args.policies {
        if !faas_broker::POLICY_NAMES.contains(&p.as_str()) {
            bail!(
                "unknown policy {p} (known: {})",
                faas_broker::POLICY_NAMES.join(", ")
            );
        }
    }
    Ok(args)
}

impl Args {
    fn wants(&self, workload: &str) -> bool {
        self.workloads.iter().any(|w| w == workload)
    }
}

/// splitmix64: a reproducible schedule without a dependency for one RNG.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Offsets (s) of calls every `interval` s for `secs` s.
fn fixed_schedule(interval: f64, secs: f64) -> Vec<f64> {
    let n = (secs / interval).round() as usize;
    (0..n).map(|i| i as f64 * interval).collect()
}

/// Offsets (s) with intervals uniform in [lo, hi) for `secs` s.
fn random_schedule(rng: &mut Rng, lo: f64, hi: f64, secs: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut t = 0.0;
    while t < secs {
        out.push(t);
        t += lo + (hi - lo) * rng.next_f64();
    }
    out
}

/// One call as the client saw it.
#[derive(Debug, Clone)]
struct Sample {
    function: String,
    /// Scheduled offset from the workload's start, s.
    offset_s: f64,
    /// How late the client issued it, ms (the bench process's own lag).
    lateness_ms: f64,
    /// Offset at which the reply arrived, s.
    done_s: f64,
    client_ms: f64,
    /// "succeeded", a failed call's status and reason, or "rpc: <code>".
    outcome: String,
    error: Option<String>,
    call_id: String,
    node: String,
    spot: u32,
    timings: Option<Timings>,
}

impl Sample {
    fn ok(&self) -> bool {
        self.outcome == "succeeded"
    }

    fn start_kind(&self) -> StartKind {
        self.timings
            .as_ref()
            .map(|t| t.start_kind())
            .unwrap_or(StartKind::Unspecified)
    }

    fn json(&self) -> Value {
        let t = self.timings.unwrap_or_default();
        json!({
            "function": self.function,
            "offset_s": round3(self.offset_s), "lateness_ms": round(self.lateness_ms),
            "done_s": round3(self.done_s), "client_ms": round(self.client_ms),
            "outcome": self.outcome, "error": self.error, "call_id": self.call_id,
            "node": self.node, "spot": self.spot, "start_kind": start_kind_name(t.start_kind()),
            "queue_ms": round(t.queue_ms), "runtime_load_ms": round(t.runtime_load_ms),
            "function_load_ms": round(t.function_load_ms), "dependencies_ms": round(t.dependencies_ms),
            "execution_ms": round(t.execution_ms), "result_return_ms": round(t.result_return_ms),
            "total_ms": round(t.total_ms),
        })
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn start_kind_name(kind: StartKind) -> &'static str {
    match kind {
        StartKind::Cold => "cold",
        StartKind::PrewarmRuntime => "prewarm_runtime",
        StartKind::PrewarmFunction => "prewarm_function",
        StartKind::Unspecified => "unspecified",
    }
}

/// The mixed workload's functions: (name, runtime, fixture, extra deploy
/// flags, share of the calls). Popularity is skewed as in production
/// traces: a few functions take most calls, on two runtimes.
const MIXED: [(&str, &str, &str, &[&str], f64); 6] = [
    ("mix-py-a", "python3", "py-hello", &[], 0.35),
    ("mix-py-b", "python3", "py-hello", &[], 0.20),
    ("mix-py-c", "python3", "py-hello", &[], 0.10),
    ("mix-py-d", "python3", "py-hello", &[], 0.05),
    (
        "mix-node-a",
        "node",
        "node-hello",
        &["--handler", "index.handler"],
        0.20,
    ),
    (
        "mix-node-b",
        "node",
        "node-hello",
        &["--handler", "index.handler"],
        0.10,
    ),
];

/// Random intervals of 0.1-0.4 s, each call to a function drawn by share.
fn mixed_calls(rng: &mut Rng, secs: f64) -> Vec<(f64, String)> {
    random_schedule(rng, 0.1, 0.4, secs)
        .into_iter()
        .map(|t| {
            let mut pick = rng.next_f64();
            let name = MIXED
                .iter()
                .find(|f| {
                    pick -= f.4;
                    pick < 0.0
                })
                .unwrap_or(&MIXED[0])
                .0;
            (t, name.to_string())
        })
        .collect()
}

/// Issues one sync Invoke of `function` at each offset of `schedule` (open
/// loop) and waits for all of them.
async fn run_schedule(stack: &Stack, function: &str, schedule: &[f64]) -> Vec<Sample> {
    let calls: Vec<(f64, String)> = schedule
        .iter()
        .map(|&t| (t, function.to_string()))
        .collect();
    run_calls(stack, &calls).await
}

/// Issues one sync Invoke of each (offset, function) (open loop) and waits
/// for all of them.
async fn run_calls(stack: &Stack, calls: &[(f64, String)]) -> Vec<Sample> {
    let client = CallServiceClient::new(stack.channel().await);
    // Leave time to spawn every task before the first is due.
    let start = Instant::now() + Duration::from_millis(200);
    let mut tasks = Vec::with_capacity(calls.len());
    for (offset_s, function) in calls.iter().cloned() {
        let mut client = client.clone();
        let due = start + Duration::from_secs_f64(offset_s);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(due).await;
            let lateness_ms = due.elapsed().as_secs_f64() * 1000.0;
            let reply = invoke_timed(&mut client, &function, PARAMS, INVOKE_TIMEOUT).await;
            let done_s = start.elapsed().as_secs_f64();
            let mut sample = Sample {
                function: function.clone(),
                offset_s,
                lateness_ms,
                done_s,
                client_ms: 0.0,
                outcome: String::new(),
                error: None,
                call_id: String::new(),
                node: String::new(),
                spot: 0,
                timings: None,
            };
            match reply {
                Ok((ms, call)) => {
                    sample.client_ms = ms;
                    sample.outcome = match call.status() {
                        CallStatus::Succeeded => "succeeded".to_string(),
                        other => format!(
                            "{} ({})",
                            other.as_str_name(),
                            call.error.as_ref().map(|e| e.reason.as_str()).unwrap_or("")
                        ),
                    };
                    if call.status() != CallStatus::Succeeded {
                        sample.error = Some(match &call.error {
                            Some(e) => format!(
                                "call {}: {}: {}; log tail: {}",
                                call.id, e.reason, e.message, e.log_tail
                            ),
                            None => format!("call {}: status {:?}", call.id, call.status()),
                        });
                    }
                    sample.call_id = call.id;
                    sample.node = call.node;
                    sample.spot = call.spot;
                    sample.timings = call.timings;
                }
                Err((ms, status)) => {
                    sample.client_ms = ms;
                    sample.outcome = format!("rpc: {:?}", status.code());
                    sample.error = Some(format!("Invoke: {status}"));
                }
            }
            sample
        }));
    }
    let mut samples = Vec::with_capacity(tasks.len());
    for task in tasks {
        samples.push(task.await.expect("invoke task panicked"));
    }
    samples
}

/// Summary of a set of calls: client latency, phases of the succeeded ones,
/// start kinds, failures.
fn summarize(samples: &[&Sample]) -> Value {
    let ok: Vec<&Sample> = samples.iter().copied().filter(|s| s.ok()).collect();
    let timings: Vec<Timings> = ok.iter().filter_map(|s| s.timings).collect();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for s in &ok {
        *kinds.entry(start_kind_name(s.start_kind())).or_default() += 1;
    }
    let mut outcomes: BTreeMap<&str, usize> = BTreeMap::new();
    for s in samples {
        *outcomes.entry(s.outcome.as_str()).or_default() += 1;
    }
    let prewarm = ok
        .iter()
        .filter(|s| s.start_kind() != StartKind::Cold)
        .count();
    let function_hits = ok
        .iter()
        .filter(|s| s.start_kind() == StartKind::PrewarmFunction)
        .count();
    let rate = |k: usize| {
        if ok.is_empty() {
            Value::Null
        } else {
            json!(round3(k as f64 / ok.len() as f64))
        }
    };
    let errors: Vec<&str> = samples
        .iter()
        .filter_map(|s| s.error.as_deref())
        .take(ERRORS_KEPT)
        .collect();
    json!({
        "calls": samples.len(),
        "failed": samples.len() - ok.len(),
        "outcomes": outcomes,
        "errors": errors,
        "client": Series::new(ok.iter().map(|s| s.client_ms).collect()).json(),
        "phases": phases_json(&timings),
        "start_kinds": kinds,
        "prewarm_hit_rate": rate(prewarm),
        "function_hit_rate": rate(function_hits),
        "client_lateness_max_ms": round(samples.iter().map(|s| s.lateness_ms).fold(0.0, f64::max)),
    })
}

/// One measured workload: runs `warmup_s + secs` of `schedule_of(secs)` and
/// summarizes the calls scheduled after the warm-up.
async fn run_workload(
    stack: &Stack,
    policy: &str,
    workload: &str,
    function: &str,
    schedule: Vec<f64>,
    warmup_s: f64,
    all_calls: &mut Vec<Value>,
) -> Value {
    let calls: Vec<(f64, String)> = schedule
        .iter()
        .map(|&t| (t, function.to_string()))
        .collect();
    run_workload_calls(
        stack, policy, workload, function, &calls, warmup_s, all_calls,
    )
    .await
}

/// [`run_workload`] for calls of several functions (`label` names them in
/// the summary).
async fn run_workload_calls(
    stack: &Stack,
    policy: &str,
    workload: &str,
    function: &str,
    calls: &[(f64, String)],
    warmup_s: f64,
    all_calls: &mut Vec<Value>,
) -> Value {
    let started = SystemTime::now();
    let samples = run_calls(stack, calls).await;
    let measured: Vec<&Sample> = samples.iter().filter(|s| s.offset_s >= warmup_s).collect();
    let span = calls.last().map(|c| c.0).unwrap_or(0.0) - warmup_s;
    let mut summary = summarize(&measured);
    let mut names: Vec<&str> = measured.iter().map(|s| s.function.as_str()).collect();
    names.sort();
    names.dedup();
    if names.len() > 1 {
        let per_function: BTreeMap<&str, Value> = names
            .iter()
            .map(|name| {
                let of: Vec<&Sample> = measured
                    .iter()
                    .copied()
                    .filter(|s| s.function == *name)
                    .collect();
                let all = summarize(&of);
                let brief = json!({
                    "calls": all["calls"], "failed": all["failed"],
                    "client_p50_ms": all["client"]["p50_ms"], "client_p99_ms": all["client"]["p99_ms"],
                    "function_hit_rate": all["function_hit_rate"], "prewarm_hit_rate": all["prewarm_hit_rate"],
                });
                (*name, brief)
            })
            .collect();
        summary["per_function"] = json!(per_function);
    }
    summary["policy"] = json!(policy);
    summary["workload"] = json!(workload);
    summary["function"] = json!(function);
    summary["warmup_s"] = json!(warmup_s);
    summary["measured_s"] = json!(round(span));
    summary["offered_per_s"] = json!(round(measured.len() as f64 / span.max(1e-9)));
    summary["started_unix_ms"] = json!(unix_ms(started));
    summary["loadavg_after"] = json!(loadavg());
    for s in &samples {
        let mut record = s.json();
        record["policy"] = json!(policy);
        record["workload"] = json!(workload);
        record["warmup"] = json!(s.offset_s < warmup_s);
        all_calls.push(record);
    }
    emit_line(&summary);
    summary
}

/// One saturation step's verdict.
fn saturation_step(samples: &[Sample], rate: f64, step_s: f64) -> Value {
    let refs: Vec<&Sample> = samples.iter().collect();
    let mut summary = summarize(&refs);
    let half = step_s / 2.0;
    let mean_of = |first: bool, f: &dyn Fn(&Sample) -> f64| {
        let v: Vec<f64> = samples
            .iter()
            .filter(|s| s.ok() && (s.offset_s < half) == first)
            .map(f)
            .collect();
        Series::new(v).mean()
    };
    let queue = |s: &Sample| s.timings.as_ref().map(|t| t.queue_ms).unwrap_or(0.0);
    let client = |s: &Sample| s.client_ms;
    let (q1, q2) = (mean_of(true, &queue), mean_of(false, &queue));
    let (c1, c2) = (mean_of(true, &client), mean_of(false, &client));
    let queue_p99 = summary["phases"]["queue"]["p99_ms"]
        .as_f64()
        .unwrap_or(f64::INFINITY);
    let failed = summary["failed"].as_u64().unwrap_or(0);
    let growing = |a: f64, b: f64| b > 1.5 * a + 50.0;
    let bounded = failed == 0 && queue_p99 < QUEUE_BOUND_MS && !growing(q1, q2) && !growing(c1, c2);
    let last_done = samples.iter().map(|s| s.done_s).fold(0.0, f64::max);
    let first = samples.iter().map(|s| s.offset_s).fold(f64::MAX, f64::min);
    summary["rate_per_s"] = json!(rate);
    summary["step_s"] = json!(step_s);
    summary["queue_mean_first_half_ms"] = json!(round(q1));
    summary["queue_mean_second_half_ms"] = json!(round(q2));
    summary["client_mean_first_half_ms"] = json!(round(c1));
    summary["client_mean_second_half_ms"] = json!(round(c2));
    summary["completed_per_s"] = json!(round(
        (samples.len() as u64 - failed) as f64 / (last_done - first).max(1e-9)
    ));
    summary["bounded"] = json!(bounded);
    summary
}

/// Steps the offered rate up until a step is not sustained.
async fn run_saturation(
    stack: &Stack,
    policy: &str,
    args: &Args,
    all_calls: &mut Vec<Value>,
) -> Value {
    let mut steps = Vec::new();
    let mut max_sustained: Option<f64> = None;
    for &rate in &args.rates {
        let schedule = fixed_schedule(1.0 / rate, args.step_s);
        let samples = run_schedule(stack, HELLO, &schedule).await;
        let mut step = saturation_step(&samples, rate, args.step_s);
        step["policy"] = json!(policy);
        step["workload"] = json!("saturation");
        step["loadavg_after"] = json!(loadavg());
        emit_line(&step);
        for s in &samples {
            let mut record = s.json();
            record["policy"] = json!(policy);
            record["workload"] = json!("saturation");
            record["rate_per_s"] = json!(rate);
            all_calls.push(record);
        }
        let bounded = step["bounded"].as_bool().unwrap_or(false);
        steps.push(step);
        if !bounded {
            break;
        }
        max_sustained = Some(rate);
        tokio::time::sleep(SETTLE).await;
    }
    json!({"policy": policy, "max_sustained_per_s": max_sustained, "steps": steps})
}

/// Registers runtime `python3-bigdep`: the python3 runtime's image archive
/// and commands, with a `dependencies` command that loads the function's
/// `dep.bin` (`mb` MiB): it reads and hashes it in 1 MiB chunks, paced at
/// `mibps` MiB/s (0: as fast as it goes). The thesis's function downloads
/// 1 GB in its dependency step; there is no network here, and the function
/// directory is read-only, so the large file ships in the package and the
/// pace stands for the download's bandwidth. Returns the command.
async fn register_bigdep_runtime(stack: &Stack, mb: u64, mibps: u64) -> anyhow::Result<String> {
    #[derive(serde::Deserialize)]
    struct RuntimeToml {
        path: String,
        #[serde(default)]
        dependencies: String,
        run: String,
    }
    let toml_path = repo_root().join("runtimes/python3/runtime.toml");
    let python3: RuntimeToml = toml::from_str(&std::fs::read_to_string(&toml_path)?)
        .with_context(|| format!("parsing {}", toml_path.display()))?;
    let archive = runtime_archives()?
        .into_iter()
        .find(|(name, _)| name == "python3")
        .map(|(_, path)| path)
        .ok_or_else(|| anyhow!("FAAS_RUNTIME_ARCHIVES has no python3 archive"))?;
    // One line of Python (the image had no coreutils); a short read fails
    // the load. Last, so that its exit status is the step's.
    let pace = if mibps == 0 {
        String::new()
    } else {
        format!(", time.sleep(max(0.0, t0 + (i + 1) / {mibps} - time.monotonic()))")
    };
    let read = format!(
        "python3 -c 'import hashlib, sys, time; h = hashlib.sha256(); \
         f = open(\"dep.bin\", \"rb\"); t0 = time.monotonic(); \
         step = lambda i: ((h.update(b) if len(b := f.read(1 << 20)) == 1 << 20 \
         else sys.exit(\"dep.bin is short\")){pace}); [step(i) for i in range({mb})]'"
    );
    // After the runtime's own step, if it has one.
    let dependencies = if python3.dependencies.trim().is_empty() {
        read
    } else {
        format!("{}; {read}", python3.dependencies)
    };
    stack
        .register_runtime_spec(
            RuntimeSpec {
                name: BIGDEP_RUNTIME.into(),
                path: python3.path,
                dependencies: dependencies.clone(),
                run: python3.run,
                default_handler: String::new(),
                build: String::new(),
                build_only_with_dependencies: false,
                image_ref: String::new(),
                replace: true,
            },
            &archive,
        )
        .await?;
    Ok(dependencies)
}

/// Sequential calls until one succeeds (the first pulls and unpacks the
/// image), at most `n`; fails with the last error.
async fn warm_up(stack: &Stack, function: &str, n: usize) -> anyhow::Result<()> {
    let mut client = CallServiceClient::new(stack.channel().await);
    let mut ok = 0;
    let mut last = String::new();
    for _ in 0..n {
        match invoke_timed(&mut client, function, PARAMS, INVOKE_TIMEOUT).await {
            Ok((_, call)) if call.status() == CallStatus::Succeeded => ok += 1,
            Ok((_, call)) => last = format!("{call:?}"),
            Err((_, status)) => last = status.to_string(),
        }
    }
    if ok == 0 {
        bail!("warm-up calls of {function} all failed, last: {last}");
    }
    Ok(())
}

/// `/proc/loadavg`: other work on the machine skews a benchmark, so the
/// load is kept with the results.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn emit_line(value: &Value) {
    // Results go to stdout: this is a program, not a service.
    #[allow(clippy::print_stdout)]
    {
        println!("{value}");
    }
    let _ = std::io::stdout().flush();
}

fn progress(message: &str) {
    eprintln!("faas-workload: {message}");
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// `YYYY-MM-DD` (UTC) of `t` (Howard Hinnant's civil_from_days).
fn utc_date(t: SystemTime) -> String {
    let days = (t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn first_line_of(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_default()
}

fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kb: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let os = std::fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "memory_gib": round(mem_kb as f64 / 1024.0 / 1024.0),
        "os": os,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        "containerd": first_line_of("containerd", &["--version"]),
        "runc": first_line_of("runc", &["--version"]),
    })
}

/// What one policy produced.
#[derive(Default)]
struct PolicyResults {
    workloads: Vec<Value>,
    saturation: Option<Value>,
    floor: Option<Value>,
    /// Problems of the stack itself (shutdown leftovers, start failures).
    problems: Vec<String>,
}

async fn run_policy(
    policy: &str,
    args: &Args,
    all_calls: &mut Vec<Value>,
) -> anyhow::Result<PolicyResults> {
    let mut results = PolicyResults::default();
    let mut rng = Rng(args.seed);
    let trivial = ["fixed", "random", "saturation"]
        .iter()
        .any(|w| args.wants(w));
    if trivial {
        progress(&format!(
            "{policy}: starting a stack for the trivial function"
        ));
        let stack = Stack::start(StackOptions {
            agents: 1,
            spots: args.spots,
            runtimes: vec!["python3"],
            policy: Some(policy.to_string()),
            ..StackOptions::default()
        })
        .await?;
        let body = async {
            deploy(&stack, HELLO, "python3", &fixture_dir("py-hello"), &[])?;
            warm_up(&stack, HELLO, 3).await?;
            let total = args.warmup_s + args.duration_s;
            if args.wants("fixed") {
                progress(&format!("{policy}: fixed, a call every 0.25 s"));
                let schedule = fixed_schedule(0.25, total);
                results.workloads.push(
                    run_workload(
                        &stack,
                        policy,
                        "fixed",
                        HELLO,
                        schedule,
                        args.warmup_s,
                        all_calls,
                    )
                    .await,
                );
                tokio::time::sleep(SETTLE).await;
            }
            if args.wants("random") {
                progress(&format!("{policy}: random, intervals of 0.1-0.4 s"));
                let schedule = random_schedule(&mut rng, 0.1, 0.4, total);
                results.workloads.push(
                    run_workload(
                        &stack,
                        policy,
                        "random",
                        HELLO,
                        schedule,
                        args.warmup_s,
                        all_calls,
                    )
                    .await,
                );
                tokio::time::sleep(SETTLE).await;
            }
            progress(&format!("{policy}: the floor (ctr run --rm, floor.sh)"));
            let same_image = floor_same_image(&stack, "python3", args.floor_runs).await?;
            let busybox = floor_sh(&stack, args.floor_runs, args.floor_secs)?;
            let floor = json!({
                "policy": policy, "workload": "floor",
                "ctr_run_rm_same_image_python": same_image,
                "floor_sh_busybox": busybox,
            });
            emit_line(&floor);
            results.floor = Some(floor);
            tokio::time::sleep(SETTLE).await;
            if args.wants("saturation") {
                progress(&format!("{policy}: saturation, rates {:?}", args.rates));
                results.saturation = Some(run_saturation(&stack, policy, args, all_calls).await);
            }
            anyhow::Ok(())
        }
        .await;
        let logs = stack.dir.path().display().to_string();
        if let Err(err) = &body {
            results
                .problems
                .push(format!("{policy}: {err:#} (stack logs under {logs})"));
            progress(&format!("{policy}: {err:#}\n{}", stack.log_tails()));
        }
        if let Err(err) = stack.shutdown().await {
            results
                .problems
                .push(format!("{policy}: shutdown of the stack: {err:#}"));
        }
    }
    if args.wants("mixed") {
        progress(&format!(
            "{policy}: starting a stack for the mixed workload"
        ));
        let stack = Stack::start(StackOptions {
            agents: 1,
            spots: args.spots,
            runtimes: vec!["python3", "node"],
            policy: Some(policy.to_string()),
            ..StackOptions::default()
        })
        .await?;
        let body = async {
            for (name, runtime, fixture, extra, _) in MIXED {
                deploy(&stack, name, runtime, &fixture_dir(fixture), extra)?;
                warm_up(&stack, name, 1).await?;
            }
            tokio::time::sleep(SETTLE).await;
            progress(&format!(
                "{policy}: mixed, {} functions on 2 runtimes, intervals of 0.1-0.4 s",
                MIXED.len()
            ));
            let calls = mixed_calls(&mut rng, args.warmup_s + args.duration_s);
            results.workloads.push(
                run_workload_calls(
                    &stack,
                    policy,
                    "mixed",
                    "mixed",
                    &calls,
                    args.warmup_s,
                    all_calls,
                )
                .await,
            );
            anyhow::Ok(())
        }
        .await;
        if let Err(err) = &body {
            let logs = stack.dir.path().display().to_string();
            results
                .problems
                .push(format!("{policy} mixed: {err:#} (stack logs under {logs})"));
            progress(&format!("{policy} mixed: {err:#}\n{}", stack.log_tails()));
        }
        if let Err(err) = stack.shutdown().await {
            results
                .problems
                .push(format!("{policy} mixed: shutdown of the stack: {err:#}"));
        }
    }
    if args.wants("bigdep") {
        progress(&format!(
            "{policy}: starting a stack for the {} MiB dependency function",
            args.bigdep_mb
        ));
        let stack = Stack::start(StackOptions {
            agents: 1,
            spots: args.spots,
            runtimes: vec![],
            policy: Some(policy.to_string()),
            ..StackOptions::default()
        })
        .await?;
        let body = async {
            let dependencies =
                register_bigdep_runtime(&stack, args.bigdep_mb, args.bigdep_mibps).await?;
            // The trivial function plus the large file its dependency step
            // loads (zeros: the package stays small compressed; the agent
            // unpacks it once per node, by digest).
            let package = tempfile::tempdir()?;
            std::fs::copy(
                fixture_dir("py-hello").join("handler.py"),
                package.path().join("handler.py"),
            )?;
            let dep = std::fs::File::create(package.path().join("dep.bin"))?;
            dep.set_len(args.bigdep_mb << 20)?;
            deploy(
                &stack,
                BIGDEP,
                BIGDEP_RUNTIME,
                package.path(),
                &["--timeout", "120s"],
            )?;
            warm_up(&stack, BIGDEP, 1).await?;
            tokio::time::sleep(SETTLE).await;
            progress(&format!("{policy}: bigdep, a call every 1.5 s"));
            let schedule = fixed_schedule(1.5, args.warmup_s + args.bigdep_duration_s);
            let mut summary = run_workload(
                &stack,
                policy,
                "bigdep",
                BIGDEP,
                schedule,
                args.warmup_s,
                all_calls,
            )
            .await;
            summary["dependency_mib"] = json!(args.bigdep_mb);
            summary["dependency_pace_mib_per_s"] = json!(args.bigdep_mibps);
            summary["dependencies_command"] = json!(dependencies);
            results.workloads.push(summary);
            anyhow::Ok(())
        }
        .await;
        if let Err(err) = &body {
            let logs = stack.dir.path().display().to_string();
            results.problems.push(format!(
                "{policy} bigdep: {err:#} (stack logs under {logs})"
            ));
            progress(&format!("{policy} bigdep: {err:#}\n{}", stack.log_tails()));
        }
        if let Err(err) = stack.shutdown().await {
            results
                .problems
                .push(format!("{policy} bigdep: shutdown of the stack: {err:#}"));
        }
    }
    Ok(results)
}

// ---------------------------------------------------------------- tables

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn fmt_ms(x: f64) -> String {
    if x.is_nan() {
        "–".into()
    } else if x >= 1000.0 {
        format!("{:.0}", x)
    } else {
        format!("{:.1}", x)
    }
}

fn workload_table(workloads: &[Value]) -> String {
    let mut out = String::from(
        "| workload | policy | calls | failed | client mean / p50 / p99 ms | total mean / p50 / p99 ms | queue mean / p99 | runtime load | function load | dependencies | execution | result return | prewarm hits | function hits |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for w in workloads {
        let p = |phase: &str, k: &str| fmt_ms(num(&w["phases"][phase][k]));
        let c = |k: &str| fmt_ms(num(&w["client"][k]));
        let pct = |k: &str| {
            w[k].as_f64()
                .map(|r| format!("{:.0}%", r * 100.0))
                .unwrap_or("–".into())
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} / {} / {} | {} / {} / {} | {} / {} | {} | {} | {} | {} | {} | {} | {} |",
            w["workload"].as_str().unwrap_or(""),
            w["policy"].as_str().unwrap_or(""),
            w["calls"],
            w["failed"],
            c("mean_ms"),
            c("p50_ms"),
            c("p99_ms"),
            p("total", "mean_ms"),
            p("total", "p50_ms"),
            p("total", "p99_ms"),
            p("queue", "mean_ms"),
            p("queue", "p99_ms"),
            p("runtime_load", "mean_ms"),
            p("function_load", "mean_ms"),
            p("dependencies", "mean_ms"),
            p("execution", "mean_ms"),
            p("result_return", "mean_ms"),
            pct("prewarm_hit_rate"),
            pct("function_hit_rate"),
        );
    }
    out
}

fn saturation_table(saturation: &[Value], floors: &[Value]) -> String {
    let mut out = String::from(
        "| policy | highest sustained rate (calls/s) | floor.sh `ctr run --rm`, 2 in parallel (containers/s) | ratio | steps (rate: queue p99 ms, client p50/p99 ms, completed/s) |\n|---|---|---|---|---|\n",
    );
    for s in saturation {
        let policy = s["policy"].as_str().unwrap_or("");
        let floor = floors
            .iter()
            .find(|f| f["policy"] == policy)
            .map(|f| num(&f["floor_sh_busybox"]["throughput_per_s"]))
            .unwrap_or(f64::NAN);
        let max = num(&s["max_sustained_per_s"]);
        let steps: Vec<String> = s["steps"]
            .as_array()
            .map(|v| v.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|st| {
                format!(
                    "{}{}: {}, {}/{}, {}",
                    st["rate_per_s"],
                    if st["bounded"] == true { "" } else { " ✗" },
                    fmt_ms(num(&st["phases"]["queue"]["p99_ms"])),
                    fmt_ms(num(&st["client"]["p50_ms"])),
                    fmt_ms(num(&st["client"]["p99_ms"])),
                    st["completed_per_s"],
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "| {policy} | {} | {} | {} | {} |",
            if max.is_nan() {
                "none".to_string()
            } else {
                format!("{max}")
            },
            fmt_ms(floor),
            if max.is_nan() || floor.is_nan() {
                "–".into()
            } else {
                format!("{:.2}×", max / floor)
            },
            steps.join("; "),
        );
    }
    out
}

fn floor_table(floors: &[Value]) -> String {
    let mut out = String::from(
        "| measured with stack of | `ctr run --rm` python3 image, `python3 -c` p50 / p99 ms | floor.sh busybox echo p50 / p90 ms | floor.sh throughput, 2 in parallel (/s) |\n|---|---|---|---|\n",
    );
    for f in floors {
        let same = &f["ctr_run_rm_same_image_python"];
        let bb = &f["floor_sh_busybox"];
        let _ = writeln!(
            out,
            "| {} | {} / {} | {} / {} | {} |",
            f["policy"].as_str().unwrap_or(""),
            fmt_ms(num(&same["p50_ms"])),
            fmt_ms(num(&same["p99_ms"])),
            fmt_ms(num(&bb["p50_ms"])),
            fmt_ms(num(&bb["p90_ms"])),
            fmt_ms(num(&bb["throughput_per_s"])),
        );
    }
    out
}

// ---------------------------------------------------------------- plots

/// An axis label: no decimals for whole numbers.
fn tick(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

const COLORS: [&str; 6] = [
    "#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#b07aa1",
];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A "nice" axis maximum ≥ `x`.
fn nice_max(x: f64) -> f64 {
    if x.is_nan() || x <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(x.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * mag >= x {
            return m * mag;
        }
    }
    10.0 * mag
}

/// Like the thesis's figures 6.1–6.3: per policy, the mean of each phase
/// stacked into the mean total, with the client-side p50 and p99 marked,
/// and the `ctr run --rm` floor as a dashed line.
fn phase_bars_svg(title: &str, workloads: &[&Value], floor_ms: Option<f64>) -> String {
    let phases = [
        "queue",
        "runtime_load",
        "function_load",
        "dependencies",
        "execution",
        "result_return",
    ];
    let (w, h) = (760.0, 420.0);
    let (left, right, top, bottom) = (70.0, 190.0, 40.0, 60.0);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let max_value = workloads
        .iter()
        .flat_map(|wl| {
            let stacked: f64 = phases
                .iter()
                .map(|p| num(&wl["phases"][p]["mean_ms"]))
                .filter(|x| !x.is_nan())
                .sum();
            [stacked, num(&wl["client"]["p99_ms"])]
        })
        .chain(floor_ms)
        .filter(|x| !x.is_nan())
        .fold(0.0, f64::max);
    let ymax = nice_max(max_value * 1.05);
    let y = |v: f64| top + plot_h - (v / ymax) * plot_h;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14" font-weight="bold">{}</text>"#,
        left + plot_w / 2.0,
        esc(title)
    );
    for i in 0..=5 {
        let v = ymax * i as f64 / 5.0;
        let yy = y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            left + plot_w,
            left - 6.0,
            yy + 4.0,
            tick(v)
        );
    }
    let _ = writeln!(
        s,
        r#"<text transform="translate(18,{:.1}) rotate(-90)" text-anchor="middle">ms (mean per phase; ◆ client p50, ▲ client p99)</text>"#,
        top + plot_h / 2.0
    );
    let n = workloads.len().max(1) as f64;
    let slot = plot_w / n;
    let bar_w = (slot * 0.5).min(80.0);
    for (i, wl) in workloads.iter().enumerate() {
        let cx = left + slot * (i as f64 + 0.5);
        let mut base = 0.0;
        for (k, phase) in phases.iter().enumerate() {
            let v = num(&wl["phases"][phase]["mean_ms"]);
            if v.is_nan() || v <= 0.0 {
                continue;
            }
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="{bar_w:.1}" height="{:.1}" fill="{}"><title>{phase}: {:.1} ms</title></rect>"#,
                cx - bar_w / 2.0,
                y(base + v),
                y(base) - y(base + v),
                COLORS[k],
                v
            );
            base += v;
        }
        let _ = writeln!(
            s,
            r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            y(base) - 4.0,
            fmt_ms(base)
        );
        for (key, shape) in [("p50_ms", "◆"), ("p99_ms", "▲")] {
            let v = num(&wl["client"][key]);
            if !v.is_nan() {
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11"><title>client {key}: {v:.1} ms</title>{shape}</text>"#,
                    cx + bar_w / 2.0 + 9.0,
                    y(v) + 4.0,
                );
            }
        }
        let failed = wl["failed"].as_u64().unwrap_or(0);
        let _ = writeln!(
            s,
            r#"<text x="{cx:.1}" y="{:.1}" text-anchor="middle">{}</text><text x="{cx:.1}" y="{:.1}" text-anchor="middle" font-size="10" fill="{}">{} calls{}</text>"#,
            top + plot_h + 18.0,
            esc(wl["policy"].as_str().unwrap_or("")),
            top + plot_h + 32.0,
            if failed > 0 { "#c00" } else { "#666" },
            wl["calls"],
            if failed > 0 {
                format!(", {failed} failed")
            } else {
                String::new()
            }
        );
    }
    if let Some(f) = floor_ms.filter(|f| !f.is_nan()) {
        let _ = writeln!(
            s,
            r##"<line x1="{left}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#000" stroke-dasharray="6,4"/>"##,
            y(f),
            left + plot_w,
            y(f)
        );
    }
    let lx = left + plot_w + 16.0;
    for (k, phase) in phases.iter().enumerate() {
        let ly = top + 10.0 + 20.0 * k as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{}</text>"#,
            ly - 10.0,
            COLORS[k],
            lx + 18.0,
            ly,
            phase.replace('_', " ")
        );
    }
    if floor_ms.is_some_and(|f| !f.is_nan()) {
        let ly = top + 10.0 + 20.0 * phases.len() as f64;
        let _ = writeln!(
            s,
            r##"<line x1="{lx}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#000" stroke-dasharray="6,4"/><text x="{:.1}" y="{:.1}">ctr run --rm p50</text>"##,
            ly - 4.0,
            lx + 12.0,
            ly - 4.0,
            lx + 18.0,
            ly
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Per saturation step: offered rate, client p50 and p99 ms.
type Curve = Vec<(f64, f64, f64)>;

/// Client-side p50 (solid) and p99 (dashed) latency against the offered
/// rate, one colour per policy, log scale; the floor.sh throughput and 1.5×
/// it as vertical lines.
fn saturation_svg(saturation: &[Value], floor_throughput: Option<f64>) -> String {
    let (w, h) = (760.0, 440.0);
    let (left, right, top, bottom) = (70.0, 190.0, 40.0, 50.0);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let mut points: Vec<(String, Curve)> = Vec::new();
    for s in saturation {
        let steps = s["steps"].as_array().cloned().unwrap_or_default();
        points.push((
            s["policy"].as_str().unwrap_or("").to_string(),
            steps
                .iter()
                .map(|st| {
                    (
                        num(&st["rate_per_s"]),
                        num(&st["client"]["p50_ms"]),
                        num(&st["client"]["p99_ms"]),
                    )
                })
                .collect(),
        ));
    }
    let all = points.iter().flat_map(|(_, p)| p.iter());
    let xmax = nice_max(
        all.clone()
            .map(|p| p.0)
            .chain(floor_throughput.map(|f| f * 1.5))
            .fold(0.0, f64::max)
            * 1.05,
    );
    let ys: Vec<f64> = all
        .flat_map(|p| [p.1, p.2])
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    let ymin_log = ys
        .iter()
        .cloned()
        .fold(f64::MAX, f64::min)
        .max(1.0)
        .log10()
        .floor();
    let ymax_log = ys
        .iter()
        .cloned()
        .fold(1.0, f64::max)
        .log10()
        .ceil()
        .max(ymin_log + 1.0);
    let x = |v: f64| left + v / xmax * plot_w;
    let y =
        |v: f64| top + plot_h - (v.max(1.0).log10() - ymin_log) / (ymax_log - ymin_log) * plot_h;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14" font-weight="bold">Saturation: client latency vs offered rate (trivial Python function, 1 node)</text>"#,
        left + plot_w / 2.0
    );
    let mut e = ymin_log;
    while e <= ymax_log + 1e-9 {
        for m in [1.0, 2.0, 5.0] {
            let v = m * 10f64.powf(e);
            if v.log10() > ymax_log + 1e-9 {
                continue;
            }
            let yy = y(v);
            let _ = writeln!(
                s,
                r##"<line x1="{left}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="{}"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                left + plot_w,
                if m == 1.0 { "#ccc" } else { "#eee" },
                left - 6.0,
                yy + 4.0,
                tick(v)
            );
        }
        e += 1.0;
    }
    for i in 0..=5 {
        let v = xmax * i as f64 / 5.0;
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            x(v),
            top + plot_h + 18.0,
            tick(v)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">offered calls/s (open loop)</text><text transform="translate(18,{:.1}) rotate(-90)" text-anchor="middle">client latency ms (log)</text>"#,
        left + plot_w / 2.0,
        h - 10.0,
        top + plot_h / 2.0
    );
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>"##
    );
    if let Some(f) = floor_throughput.filter(|f| f.is_finite()) {
        // Labels left of their lines, at the bottom, clear of the legend.
        for (v, label) in [(f, "ctr run --rm ×2"), (1.5 * f, "1.5× that")] {
            let _ = writeln!(
                s,
                r##"<line x1="{:.1}" y1="{top}" x2="{:.1}" y2="{:.1}" stroke="#000" stroke-dasharray="6,4"/><text x="{:.1}" y="{:.1}" font-size="10" text-anchor="end">{label} ({:.1}/s)</text>"##,
                x(v),
                x(v),
                top + plot_h,
                x(v) - 3.0,
                top + plot_h - 6.0,
                v
            );
        }
    }
    for (k, (policy, pts)) in points.iter().enumerate() {
        let color = COLORS[k % COLORS.len()];
        for (idx, dash) in [(1usize, ""), (2usize, r#" stroke-dasharray="5,3""#)] {
            let path: Vec<String> = pts
                .iter()
                .map(|p| (p.0, if idx == 1 { p.1 } else { p.2 }))
                .filter(|(_, v)| v.is_finite())
                .map(|(r, v)| format!("{:.1},{:.1}", x(r), y(v)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
                path.join(" ")
            );
            for pt in &path {
                let (px, py) = pt.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(s, r#"<circle cx="{px}" cy="{py}" r="3" fill="{color}"/>"#);
            }
        }
        let ly = top + 10.0 + 20.0 * k as f64;
        let lx = left + plot_w + 16.0;
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="{:.1}" width="12" height="12" fill="{color}"/><text x="{:.1}" y="{ly:.1}">{}</text>"#,
            ly - 10.0,
            lx + 18.0,
            esc(policy)
        );
    }
    let ly = top + 20.0 + 20.0 * points.len() as f64;
    let lx = left + plot_w + 16.0;
    let _ = writeln!(
        s,
        r##"<line x1="{lx}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333" stroke-width="2"/><text x="{:.1}" y="{ly:.1}">p50</text><line x1="{lx}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333" stroke-width="2" stroke-dasharray="5,3"/><text x="{:.1}" y="{:.1}">p99</text>"##,
        ly - 4.0,
        lx + 14.0,
        ly - 4.0,
        lx + 18.0,
        ly + 16.0,
        lx + 14.0,
        ly + 16.0,
        lx + 18.0,
        ly + 20.0
    );
    s.push_str("</svg>\n");
    s
}

fn write(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let started = SystemTime::now();
    let date = utc_date(started);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let command: Vec<String> = std::env::args().collect();
    let loadavg_start = loadavg();
    let commit = first_line_of(
        "git",
        &[
            "-C",
            &repo_root().display().to_string(),
            "rev-parse",
            "HEAD",
        ],
    );
    let mut all_calls = Vec::new();
    let mut workloads = Vec::new();
    let mut saturation = Vec::new();
    let mut floors = Vec::new();
    let mut problems = Vec::new();
    for policy in &args.policies {
        match run_policy(policy, &args, &mut all_calls).await {
            Ok(r) => {
                workloads.extend(r.workloads);
                saturation.extend(r.saturation);
                floors.extend(r.floor);
                problems.extend(r.problems);
            }
            Err(err) => problems.push(format!("{policy}: {err:#}")),
        }
    }
    let elapsed_s = started.elapsed().unwrap_or_default().as_secs_f64();

    // Sort workloads by workload then policy order, for the tables and plots.
    let order = |w: &Value| {
        let wl = ["fixed", "random", "mixed", "bigdep"]
            .iter()
            .position(|x| w["workload"] == *x)
            .unwrap_or(9);
        let p = args
            .policies
            .iter()
            .position(|x| w["policy"] == *x.as_str())
            .unwrap_or(99);
        (wl, p)
    };
    workloads.sort_by_key(order);

    let floor_python_p50 = Series::new(
        floors
            .iter()
            .map(|f| num(&f["ctr_run_rm_same_image_python"]["p50_ms"]))
            .filter(|v| v.is_finite())
            .collect(),
    )
    .pct(50.0);
    let floor_throughput = Series::new(
        floors
            .iter()
            .map(|f| num(&f["floor_sh_busybox"]["throughput_per_s"]))
            .filter(|v| v.is_finite())
            .collect(),
    )
    .pct(50.0);

    let mut plots = Vec::new();
    for (workload, title) in [
        ("fixed", "A call every 0.25 s (trivial Python function)"),
        (
            "random",
            "Intervals uniform in 0.1–0.4 s (trivial Python function)",
        ),
        (
            "mixed",
            "Mixed: 6 functions (4 Python, 2 Node), skewed shares, intervals 0.1–0.4 s",
        ),
        ("bigdep", "Large dependency, a call every 1.5 s"),
    ] {
        let of: Vec<&Value> = workloads
            .iter()
            .filter(|w| w["workload"] == workload)
            .collect();
        if of.is_empty() {
            continue;
        }
        let title = if workload == "bigdep" {
            format!(
                "{title} ({} MiB loaded at {} MiB/s)",
                args.bigdep_mb, args.bigdep_mibps
            )
        } else {
            title.to_string()
        };
        let floor = (workload != "bigdep").then_some(floor_python_p50);
        let name = format!("policies-{workload}-{date}.svg");
        write(
            &args.out.join(&name),
            phase_bars_svg(&title, &of, floor).as_bytes(),
        )?;
        plots.push(name);
    }
    if !saturation.is_empty() {
        let name = format!("policies-saturation-{date}.svg");
        write(
            &args.out.join(&name),
            saturation_svg(
                &saturation,
                Some(floor_throughput).filter(|f| f.is_finite()),
            )
            .as_bytes(),
        )?;
        plots.push(name);
    }

    let results = json!({
        "benchmark": "broker policies under the thesis's workloads, one node, open loop, sync Invoke",
        "date": date,
        "command": command.join(" "),
        "elapsed_s": round(elapsed_s),
        "machine": machine(),
        "git_commit": commit,
        "bin_dir": std::env::var("FAAS_BIN_DIR").unwrap_or_default(),
        "loadavg_start": loadavg_start,
        "loadavg_end": loadavg(),
        "spots": args.spots,
        "duration_s": args.duration_s,
        "warmup_s": args.warmup_s,
        "bigdep_duration_s": args.bigdep_duration_s,
        "bigdep_dependency_mib": args.bigdep_mb,
        "bigdep_dependency_pace_mib_per_s": args.bigdep_mibps,
        "saturation_step_s": args.step_s,
        "saturation_queue_bound_ms": QUEUE_BOUND_MS,
        "policies": args.policies,
        "workloads": workloads,
        "saturation": saturation,
        "floor": floors,
        "plots": plots,
        "problems": problems,
    });
    let json_name = format!("results-{date}.json");
    write(
        &args.out.join(&json_name),
        serde_json::to_string_pretty(&results)?.as_bytes(),
    )?;
    let calls_name = format!("calls-{date}.jsonl.gz");
    {
        let file = std::fs::File::create(args.out.join(&calls_name))?;
        let mut gz = flate2::write::GzEncoder::new(file, flate2::Compression::best());
        for call in &all_calls {
            serde_json::to_writer(&mut gz, call)?;
            gz.write_all(b"\n")?;
        }
        gz.finish()?;
    }
    let mut md = String::new();
    let _ = writeln!(md, "### Workloads\n\n{}", workload_table(&workloads));
    if !saturation.is_empty() {
        let _ = writeln!(
            md,
            "### Saturation\n\n{}",
            saturation_table(&saturation, &floors)
        );
    }
    if !floors.is_empty() {
        let _ = writeln!(md, "### Floor, same run\n\n{}", floor_table(&floors));
    }
    if !problems.is_empty() {
        let _ = writeln!(md, "### Problems\n");
        for p in &problems {
            let _ = writeln!(md, "- {p}");
        }
    }
    write(&args.out.join(format!("results-{date}.md")), md.as_bytes())?;
    #[allow(clippy::print_stdout)]
    {
        println!("\n{md}");
    }
    progress(&format!(
        "wrote {json_name}, {calls_name}, results-{date}.md and {} plots in {} ({:.0} s)",
        plots.len(),
        args.out.display(),
        elapsed_s
    ));
    if !problems.is_empty() {
        bail!("{} problem(s): {}", problems.len(), problems.join("; "));
    }
    Ok(())
}
