//! faas-init: the init process (PID 1) of every function container.
//!
//! It implements the "faas-init" section of docs/contract.md:
//! run the runtime's `dependencies` command, optionally wait at a gate (a FIFO
//! the agent writes one line to when the call arrives), run the runtime's `run`
//! command, reap every child (we are PID 1, so double-forked orphans land on
//! us), forward SIGTERM/SIGINT to the current child, and report timings in
//! `status.json`, written atomically so the agent never reads half a file.
//!
//! Kept tiny and std-only apart from `nix`: it is bind-mounted, statically
//! linked, into arbitrary images and sits on every call's hot path.

mod logs;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::prctl;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

const USAGE: &str = "usage: faas-init --status PATH --cwd DIR [--load-gate FIFO] [--deps CMD] [--gate FIFO] --run CMD [--notify FIFO]";

/// Exit code when faas-init itself cannot start a command (like a shell's
/// "command not found").
const EXIT_SPAWN_FAILED: i32 = 127;

#[derive(Debug, PartialEq)]
struct Args {
    status: PathBuf,
    cwd: PathBuf,
    /// `None` when absent or blank: nothing to run before the gate.
    deps: Option<String>,
    run: String,
    gate: Option<PathBuf>,
    /// Waited at before the dependencies: a runtime-preloaded spot whose
    /// function files are not there yet.
    load_gate: Option<PathBuf>,
    /// A FIFO held open by the agent: faas-init writes `deps-done` when the
    /// dependencies finished and `done` after the final status.json, so the
    /// agent learns both without polling or waiting for the container's exit.
    notify: Option<PathBuf>,
    /// Environment added to the dependencies and run commands, read after
    /// the load gate: NUL-separated `KEY=VALUE` entries (a runtime-preloaded
    /// spot learns its function only when the call arrives).
    env_file: Option<PathBuf>,
    /// Where the commands' stdout and stderr are kept (bounded by
    /// `log_limit`); without it they go to faas-init's own stdio.
    log: Option<PathBuf>,
    log_limit: usize,
}

/// Accepts `--flag VALUE` and `--flag=VALUE`; every flag at most once.
fn parse_args<I: IntoIterator<Item = String>>(args: I) -> Result<Args, String> {
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
        deps: deps.filter(|deps| !deps.trim().is_empty()),
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
            None => 64 << 10,
        },
    })
}

/// How a child ended.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Ended {
    Exited(i32),
    Signaled(i32),
}

impl Ended {
    /// The shell convention: the exit code, or 128+signal.
    fn exit_code(self) -> i32 {
        match self {
            Ended::Exited(code) => code,
            Ended::Signaled(signal) => 128 + signal,
        }
    }

    fn code(self) -> Option<i32> {
        match self {
            Ended::Exited(code) => Some(code),
            Ended::Signaled(_) => None,
        }
    }

    fn signal(self) -> Option<i32> {
        match self {
            Ended::Exited(_) => None,
            Ended::Signaled(signal) => Some(signal),
        }
    }
}

/// The content of status.json.
#[derive(Debug, Default)]
struct Status {
    phase: &'static str,
    deps_ms: f64,
    deps_exit: Option<i32>,
    deps_signal: Option<i32>,
    run_ms: Option<f64>,
    run_exit: Option<i32>,
    run_signal: Option<i32>,
    /// When faas-init started and when it started the run, epoch ms: the
    /// agent's clock, so that it can split container start-up from the run
    /// without overlapping them.
    started_at_ms: f64,
    run_started_at_ms: Option<f64>,
    /// Set only when faas-init itself failed (cannot spawn, bad gate, ...).
    error: Option<String>,
}

impl Status {
    fn to_json(&self) -> String {
        fn int(value: Option<i32>) -> String {
            value.map_or_else(|| "null".into(), |v| v.to_string())
        }
        fn ms(value: Option<f64>) -> String {
            value.map_or_else(|| "null".into(), |v| format!("{v:.3}"))
        }
        let mut json = format!(
            "{{\"phase\":\"{}\",\"deps_ms\":{},\"deps_exit\":{},\"deps_signal\":{},\"run_ms\":{},\"run_exit\":{},\"run_signal\":{}",
            self.phase,
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

/// Writes to a temporary sibling then renames: readers see the old file or
/// the new one, never a torn write.
fn write_atomically(path: &Path, content: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)
}

fn elapsed_ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

/// Why waiting at the gate ended without the call arriving.
enum GateAborted {
    Signal(Signal),
    Failed(std::io::Error),
}

/// Owns the blocked signal set. Every signal faas-init cares about is blocked
/// in all threads and taken synchronously with sigwait, so there are no
/// signal handlers and no races between a child exiting and us waiting.
struct Supervisor {
    watched: SigSet,
    /// Set once SIGTERM/SIGINT arrived: nothing new is started after it.
    terminated_by: Option<Signal>,
}

impl Supervisor {
    /// Must run before any thread or child exists so that all of them inherit
    /// the mask (std's Command clears it again in the child before exec).
    fn new() -> nix::Result<Self> {
        let mut watched = SigSet::empty();
        for signal in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGUSR1,
        ] {
            watched.add(signal);
        }
        watched.thread_block()?;
        // As PID 1 orphans are ours anyway; when run directly (tests, a
        // shell) this makes the double-forked ones come to us too.
        let _ = prctl::set_child_subreaper(true);
        Ok(Supervisor {
            watched,
            terminated_by: None,
        })
    }

    /// Reaps every exited child; returns how `target` ended if it was among them.
    fn reap(&self, target: Option<Pid>) -> Option<Ended> {
        let mut found = None;
        loop {
            let ended = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Ended::Exited(code)),
                Ok(WaitStatus::Signaled(pid, signal, _core)) => {
                    (pid, Ended::Signaled(signal as i32))
                }
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return found,
                Err(Errno::EINTR) => continue,
                Ok(_) => continue, // stopped/continued: not an end
                Err(_) => return found,
            };
            if Some(ended.0) == target {
                found = Some(ended.1);
            }
        }
    }

    /// Waits for `child` to end, reaping everything else meanwhile and
    /// forwarding SIGTERM/SIGINT to it.
    fn wait_for(&mut self, child: Pid) -> Ended {
        loop {
            match self.watched.wait() {
                Ok(Signal::SIGCHLD) => {
                    if let Some(ended) = self.reap(Some(child)) {
                        return ended;
                    }
                }
                Ok(signal @ (Signal::SIGTERM | Signal::SIGINT)) => {
                    self.terminated_by = Some(signal);
                    let _ = kill(child, signal);
                }
                Ok(_) | Err(_) => {}
            }
        }
    }

    /// Blocks until one line (or end of file) can be read from the gate FIFO.
    /// The read happens on a helper thread, which wakes us with SIGUSR1, so
    /// that we keep reaping and can still be terminated while waiting.
    fn wait_gate(&mut self, gate: &Path) -> Result<(), GateAborted> {
        let (opened_tx, opened_rx) = mpsc::channel();
        let gate = gate.to_path_buf();
        std::thread::spawn(move || {
            let result = std::fs::File::open(&gate).and_then(|fifo| {
                let mut line = String::new();
                BufReader::new(fifo).read_line(&mut line).map(|_| ())
            });
            let _ = opened_tx.send(result);
            let _ = kill(Pid::this(), Signal::SIGUSR1);
        });
        loop {
            match self.watched.wait() {
                Ok(Signal::SIGUSR1) => match opened_rx.try_recv() {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(error)) => return Err(GateAborted::Failed(error)),
                    Err(_) => {} // a stray SIGUSR1, not our thread
                },
                Ok(Signal::SIGCHLD) => {
                    self.reap(None);
                }
                Ok(signal @ (Signal::SIGTERM | Signal::SIGINT)) => {
                    self.terminated_by = Some(signal);
                    return Err(GateAborted::Signal(signal));
                }
                Ok(_) | Err(_) => {}
            }
        }
    }
}

/// NUL-separated `KEY=VALUE` entries; entries without `=` are skipped.
fn parse_env_file(bytes: &[u8]) -> Vec<(String, String)> {
    bytes
        .split(|b| *b == 0)
        .filter_map(|entry| {
            let entry = String::from_utf8_lossy(entry);
            let (key, value) = entry.split_once('=')?;
            (!key.is_empty()).then(|| (key.to_string(), value.to_string()))
        })
        .collect()
}

/// `/bin/sh -c SCRIPT` in `cwd`, inheriting stdio and environment, with an
/// empty signal mask.
fn spawn_shell(
    script: &str,
    cwd: &Path,
    env: &[(String, String)],
    logs: Option<&logs::LogPump>,
) -> std::io::Result<Pid> {
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(script)
        .current_dir(cwd)
        .envs(env.iter().map(|(k, v)| (k, v)));
    if let Some(pump) = logs {
        command.stdout(pump.writer()?).stderr(pump.writer()?);
    }
    clear_signal_mask_in_child(&mut command);
    let child = command.spawn()?;
    // The child is reaped through waitpid(-1), never through `Child`.
    Ok(Pid::from_raw(child.id() as i32))
}

/// Children must not inherit our blocked SIGTERM/SIGINT/SIGCHLD (std's
/// Command does not reset the mask, checked in /proc/PID/status): the run
/// process would ignore the SIGTERM we forward, and a runtime that waits for
/// its own children would never see SIGCHLD.
#[allow(unsafe_code)]
fn clear_signal_mask_in_child(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs in the forked child before exec and only calls
    // pthread_sigmask on a stack value: async-signal-safe, no allocation, no
    // lock taken.
    unsafe {
        command.pre_exec(|| {
            SigSet::empty()
                .thread_set_mask()
                .map_err(std::io::Error::from)
        });
    }
}

/// Runs the whole sequence and returns faas-init's exit code.
fn epoch_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

fn supervise(args: &Args) -> i32 {
    let mut status = Status {
        phase: "done",
        started_at_ms: epoch_ms(),
        ..Status::default()
    };
    // The agent keeps the notify FIFO open for reading, so this open does
    // not block; without it the agent falls back to the container's exit.
    let notify = args.notify.as_ref().and_then(|path| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|error| eprintln!("faas-init: cannot open {}: {error}", path.display()))
            .ok()
    });
    let tell = |line: &str| {
        if let Some(mut fifo) = notify.as_ref() {
            use std::io::Write as _;
            let _ = fifo.write_all(line.as_bytes());
        }
    };
    // Started once signals are blocked, so its thread inherits the mask.
    let pump: std::cell::RefCell<Option<logs::LogPump>> = std::cell::RefCell::new(None);
    let finish = |status: &Status, code: i32| -> i32 {
        // Logs first: the agent reads them once status.json says done.
        if let (Some(pump), Some(path)) = (pump.borrow_mut().take(), &args.log) {
            if let Err(error) = pump.finish(path) {
                eprintln!("faas-init: cannot write {}: {error}", path.display());
            }
        }
        if let Err(error) = write_atomically(&args.status, &status.to_json()) {
            eprintln!("faas-init: cannot write {}: {error}", args.status.display());
        }
        tell("done\n");
        code
    };
    let mut supervisor = match Supervisor::new() {
        Ok(supervisor) => supervisor,
        Err(error) => {
            status.error = Some(format!("cannot block signals: {error}"));
            return finish(&status, 1);
        }
    };
    if args.log.is_some() {
        match logs::LogPump::start(args.log_limit) {
            Ok(p) => *pump.borrow_mut() = Some(p),
            Err(error) => {
                status.error = Some(format!("cannot set up the log pipe: {error}"));
                return finish(&status, 1);
            }
        }
    }

    if let Some(load_gate) = &args.load_gate {
        match supervisor.wait_gate(load_gate) {
            Ok(()) => {}
            Err(GateAborted::Signal(signal)) => {
                status.error = Some(format!("{signal} while waiting for the function"));
                return finish(&status, 128 + signal as i32);
            }
            Err(GateAborted::Failed(error)) => {
                status.error = Some(format!(
                    "cannot read the load gate {}: {error}",
                    load_gate.display()
                ));
                eprintln!("faas-init: {}", status.error.as_deref().unwrap_or_default());
                return finish(&status, 1);
            }
        }
    }

    let extra_env = match &args.env_file {
        None => Vec::new(),
        Some(path) => match std::fs::read(path) {
            Ok(bytes) => parse_env_file(&bytes),
            Err(error) => {
                status.error = Some(format!("cannot read {}: {error}", path.display()));
                eprintln!("faas-init: {}", status.error.as_deref().unwrap_or_default());
                return finish(&status, 1);
            }
        },
    };

    if let Some(deps) = &args.deps {
        let started = Instant::now();
        let pid = match spawn_shell(deps, &args.cwd, &extra_env, pump.borrow().as_ref()) {
            Ok(pid) => pid,
            Err(error) => {
                status.error = Some(format!("cannot start the dependencies command: {error}"));
                eprintln!("faas-init: {}", status.error.as_deref().unwrap_or_default());
                return finish(&status, EXIT_SPAWN_FAILED);
            }
        };
        let ended = supervisor.wait_for(pid);
        status.deps_ms = elapsed_ms(started);
        status.deps_exit = ended.code();
        status.deps_signal = ended.signal();
        if ended != Ended::Exited(0) {
            eprintln!(
                "faas-init: the dependencies command failed ({})",
                ended.exit_code()
            );
            return finish(&status, ended.exit_code());
        }
        if let Some(signal) = supervisor.terminated_by {
            return finish(&status, 128 + signal as i32);
        }
    }

    tell("deps-done\n");

    if let Some(gate) = &args.gate {
        status.phase = "ready";
        if let Err(error) = write_atomically(&args.status, &status.to_json()) {
            // The agent waits for "ready": without it the spot is useless.
            eprintln!("faas-init: cannot write {}: {error}", args.status.display());
            return 1;
        }
        status.phase = "done";
        match supervisor.wait_gate(gate) {
            Ok(()) => {}
            Err(GateAborted::Signal(signal)) => {
                status.error = Some(format!("{signal} while waiting at the gate"));
                return finish(&status, 128 + signal as i32);
            }
            Err(GateAborted::Failed(error)) => {
                status.error = Some(format!("cannot read the gate {}: {error}", gate.display()));
                eprintln!("faas-init: {}", status.error.as_deref().unwrap_or_default());
                return finish(&status, 1);
            }
        }
    }

    let started = Instant::now();
    status.run_started_at_ms = Some(epoch_ms());
    let pid = match spawn_shell(
        &format!("exec {}", args.run),
        &args.cwd,
        &extra_env,
        pump.borrow().as_ref(),
    ) {
        Ok(pid) => pid,
        Err(error) => {
            status.error = Some(format!("cannot start the run command: {error}"));
            eprintln!("faas-init: {}", status.error.as_deref().unwrap_or_default());
            return finish(&status, EXIT_SPAWN_FAILED);
        }
    };
    let ended = supervisor.wait_for(pid);
    status.run_ms = Some(elapsed_ms(started));
    status.run_exit = ended.code();
    status.run_signal = ended.signal();
    // Collect what already exited; anything still running dies with us
    // (the kernel kills the whole PID namespace when its init exits).
    supervisor.reap(None);
    finish(&status, ended.exit_code())
}

fn main() {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(error) => {
            if !error.is_empty() {
                eprintln!("faas-init: {error}");
            }
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    };
    std::process::exit(supervise(&args));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        parse_args(args.iter().map(|arg| arg.to_string()))
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
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(Ended::Exited(3).exit_code(), 3);
        assert_eq!(Ended::Signaled(9).exit_code(), 137);
        assert_eq!(Ended::Signaled(15).code(), None);
        assert_eq!(Ended::Signaled(15).signal(), Some(15));
    }

    #[test]
    fn status_json_has_every_field() {
        let status = Status {
            phase: "done",
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
            phase: "done",
            error: Some("no \"sh\"\n\u{1}".into()),
            ..Status::default()
        };
        assert!(status
            .to_json()
            .ends_with(",\"error\":\"no \\\"sh\\\"\\n\\u0001\"}\n"));
    }

    #[test]
    fn atomic_write_replaces_the_file() {
        let dir = std::env::temp_dir().join(format!("faas-init-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("status.json");
        write_atomically(&path, "one").unwrap();
        write_atomically(&path, "two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        assert!(!dir.join("status.json.tmp").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
