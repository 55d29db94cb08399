//! faas-init: the init process (PID 1) of every function container.
//!
//! It implements the "faas-init" section of docs/contract.md:
//! run the runtime's `dependencies` command, optionally wait at a gate (a FIFO
//! the agent writes one line to when the call arrives), run the runtime's `run`
//! command, reap every child (we are PID 1, so double-forked orphans land on
//! us), forward SIGTERM/SIGINT to the current child, and report timings in
//! `status.json` (the protocol lives in the faas-init-protocol crate).
//!
//! Kept tiny and std-only apart from `nix`: it is bind-mounted, statically
//! linked, into arbitrary images and sits on every call's hot path.

mod logs;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::prctl;
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use faas_init_protocol::{notify, parse_env_file, Args, Phase, Status, USAGE};

/// Exit code when faas-init itself cannot start a command (like a shell's
/// "command not found").
const EXIT_SPAWN_FAILED: i32 = 127;

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

/// Writes status.json in place: the io directory is not writable by the
/// container, so the file the agent created is truncated and rewritten. The
/// agent reads it only after `done` or the container's exit, never while it
/// is being written.
fn write_status(path: &Path, status: &Status) -> std::io::Result<()> {
    std::fs::write(path, status.to_json())
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
        phase: Phase::Done,
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
    // One write per line (shorter than PIPE_BUF, so never interleaved).
    let tell = |word: &str| {
        if let Some(mut fifo) = notify.as_ref() {
            use std::io::Write as _;
            let _ = fifo.write_all(format!("{word}\n").as_bytes());
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
        if let Err(error) = write_status(&args.status, status) {
            eprintln!("faas-init: cannot write {}: {error}", args.status.display());
        }
        tell(notify::DONE);
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
        // The agent made the file; appended to live, rewritten at the end.
        let live = args
            .log
            .as_ref()
            .and_then(|path| std::fs::OpenOptions::new().append(true).open(path).ok());
        match logs::LogPump::start(args.log_limit, live) {
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

    tell(notify::DEPS_DONE);

    if let Some(gate) = &args.gate {
        status.phase = Phase::Ready;
        if let Err(error) = write_status(&args.status, &status) {
            // The agent waits for "ready": without it the spot is useless.
            eprintln!("faas-init: cannot write {}: {error}", args.status.display());
            return 1;
        }
        status.phase = Phase::Done;
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
    let args = match Args::parse(std::env::args().skip(1)) {
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

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(Ended::Exited(3).exit_code(), 3);
        assert_eq!(Ended::Signaled(9).exit_code(), 137);
        assert_eq!(Ended::Signaled(15).code(), None);
        assert_eq!(Ended::Signaled(15).signal(), Some(15));
    }

    #[test]
    fn status_is_rewritten_in_place() {
        let dir = std::env::temp_dir().join(format!("faas-init-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("status.json");
        std::fs::write(&path, "x".repeat(4096)).unwrap();
        write_status(&path, &Status::default()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            Status::default().to_json()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
