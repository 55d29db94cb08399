//! One spot: runs the operations the broker sends it, one at a time, each in
//! a container that serves at most one call and is destroyed after it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use faas_driver::{BindMount, ContainerSpec, Driver, ImageInfo, Limits};
use faas_proto::v1::{
    agent_message, spot_operation, AgentMessage, CallAssignment, CallError, CallResult, CallStatus,
    FunctionBundle, RuntimeBundle, Spot, SpotOperation, SpotReport, SpotState, StartKind, Timings,
};
use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::{info_span, warn, Instrument};

use crate::config::Config;
use crate::packages::{copy_tree, Packages};

/// The unprivileged user functions run as.
pub const FUNCTION_UID: u32 = 65534;
pub const FUNCTION_GID: u32 = 65534;

const INIT_PATH: &str = "/faas/bin/faas-init";
const IO_DIR: &str = "/faas/io";
/// Grace given to the container after its timeout to be killed and reaped.
const KILL_GRACE: Duration = Duration::from_secs(5);

/// What every spot of the agent shares.
pub struct SpotContext {
    pub config: Config,
    pub driver: Driver,
    pub packages: Packages,
    pub outbound: mpsc::UnboundedSender<AgentMessage>,
}

impl SpotContext {
    fn report(&self, spot: Spot, error: String) {
        let _ = self.outbound.send(AgentMessage {
            msg: Some(agent_message::Msg::Spot(SpotReport {
                spot: Some(spot),
                error,
            })),
        });
    }

    fn send_result(&self, result: CallResult) {
        let _ = self.outbound.send(AgentMessage {
            msg: Some(agent_message::Msg::Result(result)),
        });
    }
}

/// Runs a spot's operations in order until the channel closes.
pub async fn run_spot(
    ctx: Arc<SpotContext>,
    index: u32,
    mut ops: mpsc::UnboundedReceiver<SpotOperation>,
) {
    while let Some(op) = ops.recv().await {
        match op.kind() {
            spot_operation::Kind::ExecuteNoPreload => {
                let (Some(runtime), Some(function), Some(call)) =
                    (op.runtime, op.function, op.call)
                else {
                    warn!(
                        spot = index,
                        "execute without runtime, function or call; ignored"
                    );
                    continue;
                };
                let span = info_span!("call", call_id = %call.call_id, function = %function.name, spot = index);
                execute_no_preload(&ctx, index, runtime, function, call)
                    .instrument(span)
                    .await;
            }
            other => {
                // Preload operations arrive with the preload policies.
                ctx.report(
                    Spot {
                        index,
                        state: SpotState::Free as i32,
                        ..Default::default()
                    },
                    format!("operation {other:?} is not supported by this agent"),
                );
            }
        }
    }
}

/// `status.json`, as written by faas-init.
#[derive(Debug, Default, Deserialize)]
struct InitStatus {
    #[serde(default)]
    deps_ms: f64,
    deps_exit: Option<i32>,
    #[serde(default)]
    run_ms: f64,
    run_exit: Option<i32>,
    run_signal: Option<i32>,
}

/// `error.json`, as written by a runtime when the handler failed.
#[derive(Debug, Deserialize)]
struct RuntimeErrorReport {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    message: String,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A failed result with no run behind it (the platform could not start it).
fn platform_failure(
    call: &CallAssignment,
    spot: u32,
    message: String,
    timings: Timings,
) -> CallResult {
    CallResult {
        call_id: call.call_id.clone(),
        spot,
        status: CallStatus::Failed as i32,
        error: Some(CallError {
            reason: "platform".into(),
            message,
            log_tail: String::new(),
        }),
        timings: Some(timings),
        ..Default::default()
    }
}

async fn execute_no_preload(
    ctx: &SpotContext,
    index: u32,
    runtime: RuntimeBundle,
    function: FunctionBundle,
    call: CallAssignment,
) {
    ctx.report(
        Spot {
            index,
            state: SpotState::Running as i32,
            runtime: runtime.name.clone(),
            function: format!("{}@{}", function.name, function.version),
            call_id: call.call_id.clone(),
        },
        String::new(),
    );
    let container_id = format!("call-{}", call.call_id);
    let dir = ctx.config.state_dir.join("spots").join(&container_id);
    let result = run_call(ctx, index, &container_id, &dir, &runtime, &function, &call).await;
    // The result goes out before the tear-down: nobody waits for it.
    ctx.send_result(result);
    if let Err(e) = ctx.driver.destroy(&container_id).await {
        warn!(error = %e, "destroying the call's container failed");
    }
    if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(error = %e, dir = %dir.display(), "removing the call's files failed");
        }
    }
    ctx.report(
        Spot {
            index,
            state: SpotState::Free as i32,
            ..Default::default()
        },
        String::new(),
    );
}

#[allow(clippy::too_many_arguments)]
async fn run_call(
    ctx: &SpotContext,
    index: u32,
    container_id: &str,
    dir: &Path,
    runtime: &RuntimeBundle,
    function: &FunctionBundle,
    call: &CallAssignment,
) -> CallResult {
    let mut timings = Timings {
        start_kind: StartKind::Cold as i32,
        ..Default::default()
    };
    // Runtime: the image, unpacked (cached after the first call).
    let t = Instant::now();
    let image = match ctx.driver.ensure_image(&runtime.image).await {
        Ok(image) => image,
        Err(e) => {
            return platform_failure(call, index, format!("loading runtime image: {e}"), timings)
        }
    };
    let image_ms = ms(t.elapsed());

    // Function: its files, a private copy, plus the call's input.
    let t = Instant::now();
    let package = match ctx
        .packages
        .ensure(&function.package_repository, &function.package_digest)
        .await
    {
        Ok(p) => p,
        Err(e) => {
            return platform_failure(
                call,
                index,
                format!("loading function package: {e}"),
                timings,
            )
        }
    };
    let deadline_ms = crate::now_ms() + function.timeout_ms as i64;
    let prepared = {
        let (package, dir) = (package.clone(), dir.to_path_buf());
        // The control plane validated the params as JSON: splice them in
        // as they are instead of parsing them again.
        let input = format!(
            "{{\"call_id\":{},\"deadline_ms\":{deadline_ms},\"event\":{}}}",
            serde_json::Value::String(call.call_id.clone()),
            call.params_json
        );
        tokio::task::spawn_blocking(move || prepare_dir(&package, &dir, &input)).await
    };
    match prepared {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return platform_failure(
                call,
                index,
                format!("preparing the call's files: {e}"),
                timings,
            )
        }
        Err(e) => {
            return platform_failure(
                call,
                index,
                format!("preparing the call's files: {e}"),
                timings,
            )
        }
    }
    timings.function_load_ms = ms(t.elapsed());

    // The container: created and started for this call only.
    let t = Instant::now();
    let spec = container_spec(ctx, container_id, dir, image, runtime, function, call);
    if let Err(e) = ctx.driver.create(&spec).await {
        return platform_failure(call, index, format!("creating the container: {e}"), timings);
    }
    let waiter = match ctx.driver.start(container_id).await {
        Ok(w) => w,
        Err(e) => {
            return platform_failure(call, index, format!("starting the container: {e}"), timings)
        }
    };
    timings.runtime_load_ms = image_ms + ms(t.elapsed());

    // The run, bounded by the function's timeout.
    let timeout = Duration::from_millis(function.timeout_ms.max(1));
    let wait = waiter.wait();
    tokio::pin!(wait);
    let (exit, timed_out) = match tokio::time::timeout(timeout, &mut wait).await {
        Ok(Ok(exit)) => (Some(exit), false),
        Ok(Err(e)) => {
            return platform_failure(
                call,
                index,
                format!("waiting for the container: {e}"),
                timings,
            )
        }
        Err(_) => {
            if let Err(e) = ctx.driver.kill(container_id, 9).await {
                warn!(error = %e, "killing a timed-out container failed");
            }
            // Let the shim reap it and flush its stdio before reading logs.
            let _ = tokio::time::timeout(KILL_GRACE, &mut wait).await;
            (None, true)
        }
    };
    let logs_path = dir.join("stdio.log");
    let io_dir = dir.join("io");
    let status: InitStatus = read_json(&io_dir.join("status.json"), 64 << 10).unwrap_or_default();
    timings.dependencies_ms = status.deps_ms;
    timings.execution_ms = status.run_ms;
    if timed_out {
        // faas-init never wrote its final status: count the whole wait.
        timings.execution_ms = ms(timeout);
    }
    let (logs, logs_truncated) = read_logs(&logs_path, ctx.config.max_log_bytes);
    let log_tail = tail_lines(&logs, 20, 4096);

    let mut result = CallResult {
        call_id: call.call_id.clone(),
        spot: index,
        status: CallStatus::Succeeded as i32,
        logs,
        logs_truncated,
        ..Default::default()
    };
    let fail = |result: &mut CallResult, status: CallStatus, reason: &str, message: String| {
        result.status = status as i32;
        result.error = Some(CallError {
            reason: reason.into(),
            message,
            log_tail: log_tail.clone(),
        });
    };
    let exit = exit.map(|e| (e.code, e.oom_killed));
    match exit {
        None => fail(
            &mut result,
            CallStatus::Timeout,
            "timeout",
            format!(
                "the call ran past its timeout of {} and was killed",
                humantime::format_duration(timeout)
            ),
        ),
        Some((_, true)) => fail(
            &mut result,
            CallStatus::Failed,
            "oom",
            format!(
                "the call ran out of memory (limit {} MiB) and was killed",
                function.memory_bytes >> 20
            ),
        ),
        Some((code, false)) if status.deps_exit.is_some_and(|c| c != 0) => fail(
            &mut result,
            CallStatus::Failed,
            "dependencies",
            format!("the runtime's dependencies command failed (exit {code})"),
        ),
        Some((code, false)) if code != 0 => {
            let message =
                match read_json::<RuntimeErrorReport>(&io_dir.join("error.json"), 64 << 10) {
                    Some(e) if !e.message.is_empty() || !e.kind.is_empty() => {
                        if e.kind.is_empty() {
                            e.message
                        } else {
                            format!("{}: {}", e.kind, e.message)
                        }
                    }
                    _ => match status.run_signal {
                        Some(sig) => format!("the function was killed by signal {sig}"),
                        None => format!(
                            "the function exited with code {}",
                            status.run_exit.unwrap_or(code as i32)
                        ),
                    },
                };
            fail(&mut result, CallStatus::Failed, "error", message)
        }
        Some(_) => match read_output(&io_dir.join("output.json"), ctx.config.max_result_bytes) {
            Ok(json) => result.result_json = json,
            Err((reason, message)) => fail(&mut result, CallStatus::Failed, reason, message),
        },
    }
    result.timings = Some(timings);
    result
}

/// Makes the call's private directory: `fn/` (a copy of the package),
/// `io/` (the input), both owned by the function's user.
fn prepare_dir(package: &Path, dir: &Path, input: &str) -> std::io::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    copy_tree(package, &dir.join("fn"), FUNCTION_UID, FUNCTION_GID)?;
    let io = dir.join("io");
    std::fs::create_dir(&io)?;
    std::os::unix::fs::chown(&io, Some(FUNCTION_UID), Some(FUNCTION_GID))?;
    let input_path = io.join("input.json");
    std::fs::write(&input_path, input)?;
    std::os::unix::fs::chown(&input_path, Some(FUNCTION_UID), Some(FUNCTION_GID))?;
    Ok(())
}

fn container_spec(
    ctx: &SpotContext,
    id: &str,
    dir: &Path,
    image: ImageInfo,
    runtime: &RuntimeBundle,
    function: &FunctionBundle,
    call: &CallAssignment,
) -> ContainerSpec {
    let mut args = vec![
        INIT_PATH.to_string(),
        "--status".into(),
        format!("{IO_DIR}/status.json"),
        "--cwd".into(),
        runtime.path.clone(),
    ];
    if !runtime.dependencies.trim().is_empty() {
        args.extend(["--deps".to_string(), runtime.dependencies.clone()]);
    }
    args.extend(["--run".to_string(), runtime.run.clone()]);
    let mut env: Vec<String> = function
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    env.sort();
    env.extend([
        format!("FAAS_INPUT={IO_DIR}/input.json"),
        format!("FAAS_OUTPUT={IO_DIR}/output.json"),
        format!("FAAS_ERROR={IO_DIR}/error.json"),
        format!("FAAS_HANDLER={}", function.handler),
        format!("FAAS_FUNCTION_NAME={}", function.name),
        format!("FAAS_FUNCTION_VERSION={}", function.version),
        format!("FAAS_FUNCTION_DIR={}", runtime.path),
        format!("FAAS_MEMORY_MB={}", function.memory_bytes >> 20),
        format!("FAAS_TIMEOUT_MS={}", function.timeout_ms),
        "HOME=/tmp".to_string(),
    ]);
    let _ = call;
    ContainerSpec {
        id: id.to_string(),
        image,
        args,
        env,
        cwd: runtime.path.clone(),
        hostname: "faas".into(),
        mounts: vec![
            BindMount {
                source: ctx.config.init_binary.clone(),
                destination: INIT_PATH.into(),
                readonly: true,
            },
            BindMount {
                source: dir.join("fn"),
                destination: runtime.path.clone(),
                readonly: false,
            },
            BindMount {
                source: dir.join("io"),
                destination: IO_DIR.into(),
                readonly: false,
            },
        ],
        stdio_path: dir.join("stdio.log"),
        limits: Limits {
            memory_bytes: function.memory_bytes,
            cpu_millis: ctx.config.cpu_millis,
            pids: ctx.config.pids_limit,
            tmp_bytes: 0,
        },
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path, limit: u64) -> Option<T> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.len() > limit {
        return None;
    }
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// The function's result: present, within the size limit, valid JSON.
fn read_output(path: &Path, limit: u64) -> Result<String, (&'static str, String)> {
    let meta = std::fs::metadata(path).map_err(|_| {
        (
            "no_output",
            "the function exited without writing a result".to_string(),
        )
    })?;
    if meta.len() > limit {
        return Err((
            "invalid_output",
            format!(
                "the result is {} bytes, over the limit of {limit} bytes",
                meta.len()
            ),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        (
            "invalid_output",
            format!("the result is not UTF-8 text: {e}"),
        )
    })?;
    serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|e| {
        (
            "invalid_output",
            format!("the result is not valid JSON: {e}"),
        )
    })?;
    Ok(text)
}

/// The call's logs, bounded: the head and the tail around a marker when
/// they are longer than `limit`.
fn read_logs(path: &PathBuf, limit: u64) -> (Vec<u8>, bool) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(path) else {
        return (Vec::new(), false);
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    if len <= limit {
        let mut buf = Vec::with_capacity(len as usize);
        let _ = file.read_to_end(&mut buf);
        return (buf, false);
    }
    let head_len = limit / 4;
    let tail_len = limit - head_len;
    let mut head = vec![0; head_len as usize];
    let _ = file.read_exact(&mut head);
    let mut tail = Vec::with_capacity(tail_len as usize);
    let _ = file.seek(SeekFrom::Start(len - tail_len));
    let _ = file.read_to_end(&mut tail);
    let mut out = head;
    out.extend_from_slice(
        format!(
            "\n[... {} bytes of logs cut by faas ...]\n",
            len - head_len - tail_len
        )
        .as_bytes(),
    );
    out.extend_from_slice(&tail);
    (out, true)
}

fn tail_lines(logs: &[u8], lines: usize, max_bytes: usize) -> String {
    let text = String::from_utf8_lossy(logs);
    let trimmed = text.trim_end();
    let mut start = trimmed.len();
    for _ in 0..lines {
        match trimmed[..start].rfind('\n') {
            Some(pos) => start = pos,
            None => {
                start = 0;
                break;
            }
        }
    }
    let tail = trimmed[start..].trim_start_matches('\n');
    if tail.len() > max_bytes {
        let mut cut = tail.len() - max_bytes;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail[cut..].to_string()
    } else {
        tail.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails() {
        assert_eq!(tail_lines(b"a\nb\nc\n", 2, 100), "b\nc");
        assert_eq!(tail_lines(b"a\nb\nc", 5, 100), "a\nb\nc");
        assert_eq!(tail_lines(b"", 5, 100), "");
        assert_eq!(tail_lines(b"abcdef", 5, 3), "def");
    }

    #[test]
    fn logs_are_cut_in_the_middle_with_a_marker() {
        let dir = std::env::temp_dir().join(format!("faas-logs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        std::fs::write(&path, "h".repeat(1000) + &"t".repeat(1000)).unwrap();
        let (logs, cut) = read_logs(&path, 400);
        let text = String::from_utf8(logs).unwrap();
        assert!(cut);
        assert!(text.starts_with(&"h".repeat(100)));
        assert!(text.ends_with(&"t".repeat(300)));
        assert!(text.contains("1600 bytes of logs cut"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn output_must_be_json() {
        let dir = std::env::temp_dir().join(format!("faas-out-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("output.json");
        assert_eq!(read_output(&path, 100).unwrap_err().0, "no_output");
        std::fs::write(&path, "{\"a\": 1}").unwrap();
        assert_eq!(read_output(&path, 100).unwrap(), "{\"a\": 1}");
        std::fs::write(&path, "{nope").unwrap();
        assert_eq!(read_output(&path, 100).unwrap_err().0, "invalid_output");
        std::fs::write(&path, "[".to_string() + &"1,".repeat(100) + "1]").unwrap();
        assert_eq!(read_output(&path, 100).unwrap_err().0, "invalid_output");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
