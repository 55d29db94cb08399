//! Collecting what a call left in its io directory (faas-init's status, the
//! logs, the result or the runtime's error report) and turning it into a
//! `CallResult`. Reading ([`collect`]) is blocking and bounded, through
//! [`crate::io_files`]; building the result ([`build_result`]) is pure.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use faas_driver::ExitStatus;
use faas_init_protocol::{files, Status};
use faas_proto::v1::{CallError, CallResult, CallStatus, Timings};
use serde::Deserialize;

use crate::io_files::{self, IoFileError, Logs};

/// Largest status.json or error.json read.
const SMALL_FILE_LIMIT: u64 = 64 << 10;

/// Machine-readable reasons of a failed call (`CallError.reason`, listed in
/// proto/faas/v1/api.proto).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The function raised or exited non-zero.
    Error,
    Timeout,
    Oom,
    NoOutput,
    InvalidOutput,
    /// The runtime's dependencies command failed.
    Dependencies,
    /// The platform could not run the call (or the container broke the
    /// protocol).
    Platform,
    /// The leader cancelled the call.
    Cancelled,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Error => "error",
            Reason::Timeout => "timeout",
            Reason::Oom => "oom",
            Reason::NoOutput => "no_output",
            Reason::InvalidOutput => "invalid_output",
            Reason::Dependencies => "dependencies",
            Reason::Platform => "platform",
            Reason::Cancelled => "cancelled",
        }
    }
}

/// Why the function's result cannot be returned.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("the function exited without writing a result")]
    Missing,
    #[error("the result is over the limit of {limit} bytes (the agent's max_result_bytes)")]
    TooLarge { limit: u64 },
    #[error("the result is not UTF-8 text: {0}")]
    NotUtf8(std::string::FromUtf8Error),
    #[error("the result is not valid JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("the result is marked base64 but is not a JSON string of standard base64")]
    NotBase64,
    #[error("the result's encoding {0:?} is not one faas knows (empty or \"base64\")")]
    UnknownEncoding(String),
    #[error("the result cannot be read: {0}")]
    Unreadable(IoFileError),
}

impl OutputError {
    pub fn reason(&self) -> Reason {
        match self {
            OutputError::Missing => Reason::NoOutput,
            OutputError::TooLarge { .. }
            | OutputError::NotUtf8(_)
            | OutputError::NotJson(_)
            | OutputError::NotBase64
            | OutputError::UnknownEncoding(_)
            | OutputError::Unreadable(_) => Reason::InvalidOutput,
        }
    }
}

/// `error.json`, as written by a runtime when the handler failed.
#[derive(Debug, Default, Deserialize)]
pub struct RuntimeErrorReport {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub message: String,
}

/// The function's result as the agent passes it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// JSON text.
    pub json: String,
    /// `json` is a string of standard base64: the function returned bytes.
    pub base64: bool,
}

impl Output {
    pub fn json(json: impl Into<String>) -> Output {
        Output {
            json: json.into(),
            base64: false,
        }
    }
}

/// Everything read from a finished call's io directory.
#[derive(Debug)]
pub struct Collected {
    /// faas-init's status; the default when missing or unreadable (a
    /// container killed before writing it).
    pub status: Status,
    pub logs: Logs,
    pub output: Result<Output, OutputError>,
    pub error_report: Option<RuntimeErrorReport>,
}

/// Reads a finished call's files. Blocking: run it in `spawn_blocking`.
pub fn collect(dir: &Arc<OwnedFd>, max_result_bytes: u64, max_log_bytes: u64) -> Collected {
    let status = parse_json::<Status>(dir, files::STATUS).unwrap_or_default();
    // faas-init kept the logs within the bound (with its own marker); the
    // agent's bound only guards against a log the function forged.
    let log_limit = (max_log_bytes + 256) as usize;
    let logs = match io_files::read_log(&**dir, files::LOG, log_limit, 4 * log_limit as u64) {
        Ok(logs) => logs,
        Err(e) => {
            tracing::debug!(error = %e, "no logs");
            Logs::default()
        }
    };
    let error_report = parse_json::<RuntimeErrorReport>(dir, files::ERROR);
    Collected {
        status,
        logs,
        output: read_output(dir, max_result_bytes)
            .and_then(|json| with_encoding(json, read_encoding(dir)?)),
        error_report,
    }
}

fn parse_json<T: for<'de> Deserialize<'de>>(dir: &Arc<OwnedFd>, name: &'static str) -> Option<T> {
    let bytes = io_files::read_bounded(&**dir, name, SMALL_FILE_LIMIT).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The function's result: present (not empty), within the size limit,
/// valid JSON.
pub fn read_output(dir: &Arc<OwnedFd>, limit: u64) -> Result<String, OutputError> {
    let bytes = match io_files::read_bounded(&**dir, files::OUTPUT, limit) {
        Ok(bytes) => bytes,
        Err(IoFileError::Missing { .. }) => return Err(OutputError::Missing),
        Err(IoFileError::TooLarge { limit, .. }) => return Err(OutputError::TooLarge { limit }),
        Err(e) => return Err(OutputError::Unreadable(e)),
    };
    // The agent creates the file empty: empty means never written.
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(OutputError::Missing);
    }
    let text = String::from_utf8(bytes).map_err(OutputError::NotUtf8)?;
    serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(OutputError::NotJson)?;
    Ok(text)
}

/// Whether the result is marked base64 (`output-encoding`, written by the
/// runtime): a few bytes at most, anything else is refused.
pub fn read_encoding(dir: &Arc<OwnedFd>) -> Result<bool, OutputError> {
    let bytes = match io_files::read_bounded(&**dir, files::OUTPUT_ENCODING, 16) {
        Ok(bytes) => bytes,
        // Not there: an image whose agent predates it, or none written.
        Err(IoFileError::Missing { .. }) => return Ok(false),
        Err(IoFileError::TooLarge { .. }) => {
            return Err(OutputError::UnknownEncoding("(over 16 bytes)".into()))
        }
        Err(e) => return Err(OutputError::Unreadable(e)),
    };
    match std::str::from_utf8(&bytes).map(str::trim) {
        Ok("") => Ok(false),
        Ok("base64") => Ok(true),
        Ok(other) => Err(OutputError::UnknownEncoding(other.to_string())),
        Err(_) => Err(OutputError::UnknownEncoding(
            String::from_utf8_lossy(&bytes).into_owned(),
        )),
    }
}

/// The result with its encoding, checked: one marked base64 must be a JSON
/// string of standard, padded base64 (clients decode it without a doubt).
pub fn with_encoding(json: String, base64: bool) -> Result<Output, OutputError> {
    if base64 {
        let text: String = serde_json::from_str(&json).map_err(|_| OutputError::NotBase64)?;
        if !is_standard_base64(&text) {
            return Err(OutputError::NotBase64);
        }
    }
    Ok(Output { json, base64 })
}

/// RFC 4648 base64, standard alphabet, padded.
fn is_standard_base64(text: &str) -> bool {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return false;
    }
    let body = bytes
        .strip_suffix(b"==")
        .or_else(|| bytes.strip_suffix(b"="))
        .unwrap_or(bytes);
    body.iter()
        .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

/// How the run of a call ended.
#[derive(Debug)]
pub enum Ended {
    /// faas-init reported `done` (the container may still be exiting).
    Done,
    /// The container exited (before or without `done`).
    Exited(ExitStatus),
    TimedOut,
    /// The leader cancelled the call.
    Cancelled,
    /// The platform failed, or the container broke the protocol.
    Broken(String),
}

/// What [`build_result`] needs to know about the call.
pub struct CallFacts<'a> {
    pub call_id: &'a str,
    pub spot: u32,
    pub timeout_ms: u64,
    pub memory_bytes: u64,
}

/// The call's result from how it ended and what it left. Pure.
pub fn build_result(
    call: &CallFacts<'_>,
    ended: &Ended,
    oom: bool,
    collected: Collected,
    timings: Timings,
) -> CallResult {
    let Collected {
        status,
        logs,
        output,
        error_report,
    } = collected;
    let log_tail = tail_lines(&logs.bytes, 20, 4096);
    let mut result = CallResult {
        call_id: call.call_id.to_string(),
        spot: call.spot,
        status: CallStatus::Succeeded as i32,
        logs: logs.bytes,
        logs_truncated: logs.truncated,
        timings: Some(timings),
        ..Default::default()
    };
    let mut fail = |status: CallStatus, reason: Reason, message: String| {
        result.status = status as i32;
        result.error = Some(CallError {
            reason: reason.as_str().into(),
            message,
            log_tail: log_tail.clone(),
        });
    };
    let exit_code = match ended {
        Ended::Exited(exit) => Some(exit.code as i32),
        _ => None,
    };
    if let Ended::TimedOut = ended {
        fail(
            CallStatus::Timeout,
            Reason::Timeout,
            format!(
                "the call ran past its timeout of {} and was killed",
                humantime::format_duration(Duration::from_millis(call.timeout_ms))
            ),
        );
    } else if let Ended::Cancelled = ended {
        fail(
            CallStatus::Cancelled,
            Reason::Cancelled,
            "the call was cancelled and its container killed".into(),
        );
    } else if let Ended::Broken(message) = ended {
        fail(CallStatus::Failed, Reason::Platform, message.clone());
    } else if oom {
        fail(
            CallStatus::Failed,
            Reason::Oom,
            format!(
                "the call ran out of memory (limit {} MiB) and was killed",
                call.memory_bytes >> 20
            ),
        );
    } else if status.deps_exit.is_some_and(|c| c != 0) {
        fail(
            CallStatus::Failed,
            Reason::Dependencies,
            format!(
                "the runtime's dependencies command failed (exit {})",
                status.deps_exit.unwrap_or_default()
            ),
        );
    } else if let Some(error) = &status.error {
        fail(
            CallStatus::Failed,
            Reason::Platform,
            format!("faas-init: {error}"),
        );
    } else if status.run_exit != Some(0)
        || exit_code.is_some_and(|c| c != 0 && status.run_exit.is_none())
    {
        let message = match error_report {
            Some(e) if !e.message.is_empty() || !e.kind.is_empty() => {
                if e.kind.is_empty() {
                    e.message
                } else {
                    format!("{}: {}", e.kind, e.message)
                }
            }
            _ => match (status.run_signal, status.run_exit, exit_code) {
                (Some(sig), _, _) => format!("the function was killed by signal {sig}"),
                (None, Some(code), _) => format!("the function exited with code {code}"),
                (None, None, Some(code)) => format!("the container exited with code {code}"),
                (None, None, None) => "the function ended without a status".to_string(),
            },
        };
        fail(CallStatus::Failed, Reason::Error, message);
    } else {
        match output {
            Ok(output) => {
                result.result_json = output.json;
                result.result_base64 = output.base64;
            }
            Err(e) => fail(CallStatus::Failed, e.reason(), e.to_string()),
        }
    }
    result
}

/// A failed result with no run behind it (the platform could not start it).
pub fn platform_failure(call_id: &str, spot: u32, message: String, timings: Timings) -> CallResult {
    CallResult {
        call_id: call_id.to_string(),
        spot,
        status: CallStatus::Failed as i32,
        error: Some(CallError {
            reason: Reason::Platform.as_str().into(),
            message,
            log_tail: String::new(),
        }),
        timings: Some(timings),
        ..Default::default()
    }
}

/// The last `lines` lines of `logs`, at most `max_bytes`.
pub fn tail_lines(logs: &[u8], lines: usize, max_bytes: usize) -> String {
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
    use faas_init_protocol::Phase;

    #[test]
    fn tails() {
        assert_eq!(tail_lines(b"a\nb\nc\n", 2, 100), "b\nc");
        assert_eq!(tail_lines(b"a\nb\nc", 5, 100), "a\nb\nc");
        assert_eq!(tail_lines(b"", 5, 100), "");
        assert_eq!(tail_lines(b"abcdef", 5, 3), "def");
    }

    fn dir(tag: &str) -> (std::path::PathBuf, Arc<OwnedFd>) {
        let path = std::env::temp_dir().join(format!("faas-collect-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        let fd = Arc::new(io_files::open_dir(&path).unwrap());
        (path, fd)
    }

    #[test]
    fn output_must_be_json() {
        let (path, fd) = dir("out");
        let out = path.join(files::OUTPUT);
        assert!(matches!(read_output(&fd, 100), Err(OutputError::Missing)));
        std::fs::write(&out, "").unwrap();
        assert!(matches!(read_output(&fd, 100), Err(OutputError::Missing)));
        std::fs::write(&out, "{\"a\": 1}").unwrap();
        assert_eq!(read_output(&fd, 100).unwrap(), "{\"a\": 1}");
        std::fs::write(&out, "{nope").unwrap();
        assert_eq!(
            read_output(&fd, 100).unwrap_err().reason(),
            Reason::InvalidOutput
        );
        std::fs::write(&out, "[".to_string() + &"1,".repeat(100) + "1]").unwrap();
        assert!(matches!(
            read_output(&fd, 100),
            Err(OutputError::TooLarge { limit: 100 })
        ));
        std::fs::remove_file(&out).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &out).unwrap();
        assert_eq!(
            read_output(&fd, 100).unwrap_err().reason(),
            Reason::InvalidOutput
        );
        std::fs::remove_dir_all(&path).unwrap();
    }

    #[test]
    fn bytes_results_must_be_base64_strings() {
        let (path, fd) = dir("encoding");
        let enc = path.join(files::OUTPUT_ENCODING);
        assert!(!read_encoding(&fd).unwrap());
        std::fs::write(&enc, "").unwrap();
        assert!(!read_encoding(&fd).unwrap());
        std::fs::write(&enc, "base64").unwrap();
        assert!(read_encoding(&fd).unwrap());
        for bad in ["gzip", "base64 and then a lot more of it"] {
            std::fs::write(&enc, bad).unwrap();
            assert_eq!(
                read_encoding(&fd).unwrap_err().reason(),
                Reason::InvalidOutput
            );
        }
        std::fs::remove_file(&enc).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", &enc).unwrap();
        assert!(read_encoding(&fd).is_err());
        std::fs::remove_dir_all(&path).unwrap();

        assert_eq!(
            with_encoding("\"aGk=\"".into(), true).unwrap(),
            Output {
                json: "\"aGk=\"".into(),
                base64: true
            }
        );
        assert!(with_encoding("\"\"".into(), true).unwrap().base64);
        for bad in ["{\"a\": 1}", "\"aGk\"", "\"a-_k\"", "\"aG=k\"", "12"] {
            assert!(
                matches!(with_encoding(bad.into(), true), Err(OutputError::NotBase64)),
                "{bad}"
            );
        }
        // Unmarked: any JSON.
        assert!(!with_encoding("12".into(), false).unwrap().base64);
    }

    /// What faas-init writes, the agent reads: the two ends of status.json.
    #[test]
    fn status_json_reads_back() {
        let status = Status {
            phase: Phase::Done,
            deps_ms: 2.5,
            deps_exit: Some(0),
            deps_signal: None,
            run_ms: Some(1.25),
            run_exit: Some(3),
            run_signal: Some(9),
            started_at_ms: 123.5,
            run_started_at_ms: Some(124.0),
            error: Some("a \"quoted\"\nerror".into()),
        };
        let parsed: Status = serde_json::from_str(&status.to_json()).unwrap();
        assert_eq!(parsed, status);
        let ready = Status {
            phase: Phase::Ready,
            ..Status::default()
        };
        assert_eq!(
            serde_json::from_str::<Status>(&ready.to_json()).unwrap(),
            ready
        );
    }

    fn facts() -> CallFacts<'static> {
        CallFacts {
            call_id: "c",
            spot: 1,
            timeout_ms: 1000,
            memory_bytes: 128 << 20,
        }
    }

    fn collected(status: Status, output: Result<Output, OutputError>) -> Collected {
        Collected {
            status,
            logs: Logs::default(),
            output,
            error_report: None,
        }
    }

    #[test]
    fn results_say_why_they_failed() {
        let ok = Status {
            run_exit: Some(0),
            ..Status::default()
        };
        let r = build_result(
            &facts(),
            &Ended::Done,
            false,
            collected(ok.clone(), Ok(Output::json("1"))),
            Timings::default(),
        );
        assert_eq!(r.status, CallStatus::Succeeded as i32);
        assert_eq!(r.result_json, "1");
        let r = build_result(
            &facts(),
            &Ended::Done,
            false,
            collected(ok.clone(), Err(OutputError::Missing)),
            Timings::default(),
        );
        assert_eq!(r.error.unwrap().reason, "no_output");
        let deps = Status {
            deps_exit: Some(2),
            ..Status::default()
        };
        let r = build_result(
            &facts(),
            &Ended::Exited(ExitStatus {
                code: 2,
                exited_at: None,
                oom_killed: false,
            }),
            false,
            collected(deps, Err(OutputError::Missing)),
            Timings::default(),
        );
        assert_eq!(r.error.unwrap().reason, "dependencies");
        let r = build_result(
            &facts(),
            &Ended::Broken("notify".into()),
            false,
            collected(ok, Ok(Output::json("1"))),
            Timings::default(),
        );
        assert_eq!(r.error.unwrap().reason, "platform");
    }
}
