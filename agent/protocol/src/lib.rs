//! The protocol between the agent and faas-init, the init process of every
//! function container: where the io files are, the words faas-init writes
//! to the notify FIFO, the fields of `status.json`, the command line, and
//! how logs are cut. Both ends compile this crate, so they cannot drift.
//!
//! std only (serde behind a feature, for the agent's side): faas-init is a
//! small static binary mounted into every container.

use std::fmt::Write as _;
use std::path::PathBuf;

/// Where faas-init is mounted in every container.
pub const INIT_PATH: &str = "/faas/bin/faas-init";
/// The container's io directory: a tmpfs the agent mounts and fills. It is
/// root-owned and not writable by the container; the container writes only
/// into the entries the agent created for it.
pub const IO_DIR: &str = "/faas/io";

/// The entries of [`IO_DIR`]. All of them exist before the container starts.
pub mod files {
    /// Regular file, written by faas-init (in place: it cannot create files).
    pub const STATUS: &str = "status.json";
    /// Regular file, the call's logs as faas-init kept them.
    pub const LOG: &str = "log";
    /// Regular file, the function's JSON result (`$FAAS_OUTPUT`).
    pub const OUTPUT: &str = "output.json";
    /// Regular file, how the result is encoded (`$FAAS_OUTPUT_ENCODING`):
    /// empty for JSON, `base64` when the function returned bytes and the
    /// result is a JSON string of their base64.
    pub const OUTPUT_ENCODING: &str = "output-encoding";
    /// Regular file, the runtime's `{"type", "message"}` on failure (`$FAAS_ERROR`).
    pub const ERROR: &str = "error.json";
    /// FIFO, the call's input envelope (`$FAAS_INPUT`), whatever the start kind.
    pub const INPUT: &str = "input.json";
    /// FIFO, faas-init to the agent: one word a line (see [`super::notify`]).
    pub const NOTIFY: &str = "notify";
    /// FIFO, the agent releases faas-init once the function's files are in place.
    pub const LOAD_GATE: &str = "load-gate";
    /// Regular file, read-only for the container: the function's environment
    /// (see [`super::parse_env_file`]).
    pub const ENV: &str = "env";
}

/// `IO_DIR/name`, the path of an io entry inside the container.
pub fn io_path(name: &str) -> String {
    format!("{IO_DIR}/{name}")
}

/// The lines faas-init writes to the notify FIFO.
pub mod notify {
    /// The dependencies command finished (the function is loaded).
    pub const DEPS_DONE: &str = "deps-done";
    /// The final status.json and log are written; faas-init exits next.
    pub const DONE: &str = "done";
    /// Longest line the agent accepts (newline excluded): anything longer
    /// was not written by faas-init.
    pub const MAX_LINE: usize = 256;
}

/// The environment variables every runtime gets (the same in every container).
pub mod env {
    pub const INPUT: &str = "FAAS_INPUT";
    pub const OUTPUT: &str = "FAAS_OUTPUT";
    pub const ERROR: &str = "FAAS_ERROR";
    pub const OUTPUT_ENCODING: &str = "FAAS_OUTPUT_ENCODING";
}

/// faas-init's command line.
#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    pub status: PathBuf,
    pub cwd: PathBuf,
    /// `None` when absent or blank: nothing to run before the gate.
    pub deps: Option<String>,
    pub run: String,
    pub gate: Option<PathBuf>,
    /// Waited at before the dependencies: a runtime-preloaded spot whose
    /// function files are not there yet.
    pub load_gate: Option<PathBuf>,
    /// A FIFO held open by the agent: faas-init writes `deps-done` when the
    /// dependencies finished and `done` after the final status.json, so the
    /// agent learns both without polling or waiting for the container's exit.
    pub notify: Option<PathBuf>,
    /// Environment added to the dependencies and run commands, read after
    /// the load gate: NUL-separated `KEY=VALUE` entries (a runtime-preloaded
    /// spot learns its function only when the call arrives).
    pub env_file: Option<PathBuf>,
    /// Where the commands' stdout and stderr are kept (bounded by
    /// `log_limit`); without it they go to faas-init's own stdio.
    pub log: Option<PathBuf>,
    pub log_limit: usize,
}

pub const DEFAULT_LOG_LIMIT: usize = 64 << 10;

pub const USAGE: &str = "usage: faas-init --status PATH --cwd DIR [--load-gate FIFO] [--env-file PATH] [--deps CMD] [--gate FIFO] --run CMD [--notify FIFO] [--log PATH [--log-limit BYTES]]";

impl Args {
    /// Accepts `--flag VALUE` and `--flag=VALUE`; every flag at most once.
    /// An empty error means help was asked for.
    pub fn parse<I: IntoIterator<Item = String>>(args: I) -> Result<Args, String> {
        let mut status = None;
        let mut cwd = None;
        let mut deps = None;
        let mut run = None;
        let mut gate = None;
        let mut load_gate = None;
        let mut notify = None;
        let mut env_file = None;
        let mut log = None;
        let mut log_limit = None;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (flag, inline_value) = match arg.split_once('=') {
                Some((flag, value)) if flag.starts_with("--") => {
                    (flag.to_string(), Some(value.to_string()))
                }
                _ => (arg, None),
            };
            let slot = match flag.as_str() {
                "--status" => &mut status,
                "--cwd" => &mut cwd,
                "--deps" => &mut deps,
                "--run" => &mut run,
                "--gate" => &mut gate,
                "--load-gate" => &mut load_gate,
                "--notify" => &mut notify,
                "--env-file" => &mut env_file,
                "--log" => &mut log,
                "--log-limit" => &mut log_limit,
                "-h" | "--help" => return Err(String::new()),
                other => return Err(format!("unknown argument {other:?}")),
            };
            let value = match inline_value {
                Some(value) => value,
                None => args.next().ok_or_else(|| format!("{flag} needs a value"))?,
            };
            if slot.replace(value).is_some() {
                return Err(format!("{flag} given twice"));
            }
        }
        let run = run.ok_or("--run is required")?;
        if run.trim().is_empty() {
            return Err("--run must not be empty".into());
        }
        Ok(Args {
            status: status.ok_or("--status is required")?.into(),
            cwd: cwd.ok_or("--cwd is required")?.into(),
            deps: deps.filter(|deps: &String| !deps.trim().is_empty()),
            run,
            gate: gate.map(PathBuf::from),
            load_gate: load_gate.map(PathBuf::from),
            notify: notify.map(PathBuf::from),
            env_file: env_file.map(PathBuf::from),
            log: log.map(PathBuf::from),
            log_limit: match log_limit {
                Some(n) => n
                    .parse()
                    .map_err(|_| format!("--log-limit {n:?} is not a number of bytes"))?,
                None => DEFAULT_LOG_LIMIT,
            },
        })
    }

    /// The command line (without the program) that [`Args::parse`] reads back.
    pub fn to_argv(&self) -> Vec<String> {
        let mut argv = Vec::new();
        let mut push = |flag: &str, value: String| {
            argv.push(flag.to_string());
            argv.push(value);
        };
        let path = |p: &PathBuf| p.to_string_lossy().into_owned();
        push("--status", path(&self.status));
        push("--cwd", path(&self.cwd));
        if let Some(notify) = &self.notify {
            push("--notify", path(notify));
        }
        if let Some(log) = &self.log {
            push("--log", path(log));
            push("--log-limit", self.log_limit.to_string());
        }
        if let Some(load_gate) = &self.load_gate {
            push("--load-gate", path(load_gate));
        }
        if let Some(env_file) = &self.env_file {
            push("--env-file", path(env_file));
        }
        if let Some(deps) = &self.deps {
            push("--deps", deps.clone());
        }
        if let Some(gate) = &self.gate {
            push("--gate", path(gate));
        }
        push("--run", self.run.clone());
        argv
    }
}

/// What faas-init is at when it writes status.json.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Phase {
    /// Waiting at the gate (`--gate`), dependencies done.
    Ready,
    /// Finished: nothing runs any more.
    #[default]
    Done,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Ready => "ready",
            Phase::Done => "done",
        }
    }
}

/// The content of status.json. faas-init writes it by hand (no serde in a
/// static init); the agent parses it with serde: a test in the agent checks
/// that one reads what the other writes.
#[derive(Debug, Clone, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
pub struct Status {
    pub phase: Phase,
    pub deps_ms: f64,
    pub deps_exit: Option<i32>,
    pub deps_signal: Option<i32>,
    pub run_ms: Option<f64>,
    pub run_exit: Option<i32>,
    pub run_signal: Option<i32>,
    /// When faas-init started and when it started the run, epoch ms: the
    /// agent's clock, so that it can split container start-up from the run
    /// without overlapping them.
    pub started_at_ms: f64,
    pub run_started_at_ms: Option<f64>,
    /// Set only when faas-init itself failed (cannot spawn, bad gate, ...).
    pub error: Option<String>,
}

impl Status {
    pub fn to_json(&self) -> String {
        fn int(value: Option<i32>) -> String {
            value.map_or_else(|| "null".into(), |v| v.to_string())
        }
        fn ms(value: Option<f64>) -> String {
            value.map_or_else(|| "null".into(), |v| format!("{v:.3}"))
        }
        let mut json = format!(
            "{{\"phase\":\"{}\",\"deps_ms\":{},\"deps_exit\":{},\"deps_signal\":{},\"run_ms\":{},\"run_exit\":{},\"run_signal\":{}",
            self.phase.as_str(),
            ms(Some(self.deps_ms)),
            int(self.deps_exit),
            int(self.deps_signal),
            ms(self.run_ms),
            int(self.run_exit),
            int(self.run_signal),
        );
        let _ = write!(
            json,
            ",\"started_at_ms\":{},\"run_started_at_ms\":{}",
            ms(Some(self.started_at_ms)),
            ms(self.run_started_at_ms)
        );
        if let Some(error) = &self.error {
            json.push_str(",\"error\":");
            json.push_str(&json_string(error));
        }
        json.push_str("}\n");
        json
    }
}

fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The env file: NUL-separated `KEY=VALUE` entries.
pub fn env_file(env: &[String]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in env {
        bytes.extend_from_slice(entry.as_bytes());
        bytes.push(0);
    }
    bytes
}

/// Reads an env file back; entries without `=` are skipped.
pub fn parse_env_file(bytes: &[u8]) -> Vec<(String, String)> {
    bytes
        .split(|b| *b == 0)
        .filter_map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            let (key, value) = entry.split_once('=')?;
            (!key.is_empty()).then(|| (key.to_string(), value.to_string()))
        })
        .collect()
}

/// The marker put where logs were cut.
pub fn log_cut_marker(cut: u64) -> String {
    format!("\n[... {cut} bytes of logs cut by faas ...]\n")
}

/// What every [`log_cut_marker`] contains.
pub const LOG_CUT_NEEDLE: &[u8] = b" bytes of logs cut by faas ...]";

/// Head and tail of a byte stream, within `limit` bytes in all: a quarter
/// for the head, the rest for the tail.
#[derive(Debug)]
pub struct BoundedLog {
    head: Vec<u8>,
    head_limit: usize,
    tail: std::collections::VecDeque<u8>,
    tail_limit: usize,
    total: u64,
}

impl BoundedLog {
    pub fn new(limit: usize) -> BoundedLog {
        let head_limit = limit / 4;
        BoundedLog {
            head: Vec::new(),
            head_limit,
            tail: std::collections::VecDeque::new(),
            tail_limit: limit - head_limit,
            total: 0,
        }
    }

    /// Bytes still wanted by the head.
    pub fn head_room(&self) -> usize {
        self.head_limit - self.head.len()
    }

    pub fn tail_limit(&self) -> usize {
        self.tail_limit
    }

    /// Every byte seen, kept or not.
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn push(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.head.len() < self.head_limit {
            let n = (self.head_limit - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        if data.len() >= self.tail_limit {
            self.tail.clear();
            self.tail.extend(&data[data.len() - self.tail_limit..]);
        } else {
            let overflow = (self.tail.len() + data.len()).saturating_sub(self.tail_limit);
            self.tail.drain(..overflow);
            self.tail.extend(data);
        }
    }

    /// Counts `n` bytes that were never read (skipped over) as cut.
    pub fn skip(&mut self, n: u64) {
        self.total += n;
    }

    /// Whether bytes were cut.
    pub fn is_cut(&self) -> bool {
        self.total > (self.head.len() + self.tail.len()) as u64
    }

    /// The logs as they are kept: the head, a marker where bytes were cut,
    /// the tail.
    pub fn render(&self) -> Vec<u8> {
        let kept = (self.head.len() + self.tail.len()) as u64;
        let mut out = self.head.clone();
        if self.total > kept {
            out.extend_from_slice(log_cut_marker(self.total - kept).as_bytes());
        }
        out.extend(self.tail.iter());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        Args::parse(args.iter().map(|arg| arg.to_string()))
    }

    #[test]
    fn parses_the_contract_command_line() {
        let args = parse(&[
            "--status",
            "/faas/io/status.json",
            "--cwd",
            "/var/task",
            "--deps",
            "make deps",
            "--run=python3 -u /opt/faas/bootstrap.py",
            "--gate",
            "/faas/io/gate",
            "--load-gate",
            "/faas/io/load",
            "--notify=/faas/io/notify",
        ])
        .unwrap();
        assert_eq!(
            args,
            Args {
                status: "/faas/io/status.json".into(),
                cwd: "/var/task".into(),
                deps: Some("make deps".into()),
                run: "python3 -u /opt/faas/bootstrap.py".into(),
                gate: Some("/faas/io/gate".into()),
                load_gate: Some("/faas/io/load".into()),
                notify: Some("/faas/io/notify".into()),
                env_file: None,
                log: None,
                log_limit: 64 << 10,
            }
        );
    }

    #[test]
    fn argv_reads_back() {
        let args = Args {
            status: io_path(files::STATUS).into(),
            cwd: "/var/task".into(),
            deps: Some("pip install -r x --target=y".into()),
            run: "python3 -u /opt/faas/bootstrap.py".into(),
            gate: None,
            load_gate: Some(io_path(files::LOAD_GATE).into()),
            notify: Some(io_path(files::NOTIFY).into()),
            env_file: Some(io_path(files::ENV).into()),
            log: Some(io_path(files::LOG).into()),
            log_limit: 1234,
        };
        assert_eq!(Args::parse(args.to_argv()).unwrap(), args);
    }

    #[test]
    fn blank_deps_means_no_deps() {
        let args = parse(&["--status", "s", "--cwd", "c", "--deps", "  ", "--run", "r"]).unwrap();
        assert_eq!(args.deps, None);
        assert_eq!(args.gate, None);
    }

    #[test]
    fn rejects_bad_command_lines() {
        assert!(parse(&["--status", "s", "--cwd", "c"])
            .unwrap_err()
            .contains("--run"));
        assert!(parse(&["--cwd", "c", "--run", "r"])
            .unwrap_err()
            .contains("--status"));
        assert!(parse(&["--status", "s", "--cwd", "c", "--run", ""]).is_err());
        assert!(parse(&["--status", "s", "--cwd", "c", "--run"])
            .unwrap_err()
            .contains("needs a value"));
        assert!(
            parse(&["--status", "s", "--status", "t", "--cwd", "c", "--run", "r"])
                .unwrap_err()
                .contains("twice")
        );
        assert!(parse(&["--bogus", "x"]).unwrap_err().contains("--bogus"));
    }

    #[test]
    fn env_files_are_nul_separated() {
        let env = parse_env_file(b"A=1\0B=x=y\0\0junk\0C=multi\nline\0");
        assert_eq!(
            env,
            vec![
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), "x=y".to_string()),
                ("C".to_string(), "multi\nline".to_string())
            ]
        );
        assert_eq!(
            parse_env_file(&env_file(&["K=v".into(), "L=w=x".into()])),
            vec![
                ("K".to_string(), "v".to_string()),
                ("L".to_string(), "w=x".to_string())
            ]
        );
    }

    #[test]
    fn status_json_has_every_field() {
        let status = Status {
            phase: Phase::Done,
            deps_ms: 1.5,
            deps_exit: Some(0),
            run_ms: Some(20.25),
            run_exit: None,
            run_signal: Some(9),
            started_at_ms: 1000.5,
            ..Status::default()
        };
        assert_eq!(
            status.to_json(),
            "{\"phase\":\"done\",\"deps_ms\":1.500,\"deps_exit\":0,\"deps_signal\":null,\"run_ms\":20.250,\"run_exit\":null,\"run_signal\":9,\"started_at_ms\":1000.500,\"run_started_at_ms\":null}\n"
        );
    }

    #[test]
    fn status_error_is_escaped() {
        let status = Status {
            error: Some("no \"sh\"\n\u{1}".into()),
            ..Status::default()
        };
        assert!(status
            .to_json()
            .ends_with(",\"error\":\"no \\\"sh\\\"\\n\\u0001\"}\n"));
    }

    #[test]
    fn keeps_head_and_tail_with_a_marker() {
        let mut log = BoundedLog::new(8);
        log.push(b"ab");
        assert_eq!(log.render(), b"ab");
        assert!(!log.is_cut());
        log.push(b"cdefghijklmnop");
        // head 2 bytes, tail 6 bytes, 8 cut in between
        assert_eq!(
            String::from_utf8(log.render()).unwrap(),
            "ab\n[... 8 bytes of logs cut by faas ...]\nklmnop"
        );
        for _ in 0..1000 {
            log.push(b"xyz");
        }
        assert!(log.render().ends_with(b"zxyzxyz"[1..].as_ref()));
        assert_eq!(log.total(), 16 + 3000);
        assert!(log.is_cut());
    }
}
