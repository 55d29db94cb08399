//! The call's logs: the commands' stdout and stderr go into one pipe that
//! faas-init reads, keeping the head and the tail within a bound, so that
//! a function printing gigabytes costs memory and disk of that bound only,
//! and the log file is complete the moment the run has ended.
//!
//! While the run goes on, the first `limit` bytes are also appended to the
//! log file as they arrive, so that the agent can stream them to whoever
//! follows the call (`faasctl call logs -f`); at the end the file is
//! rewritten with the kept head and tail.

use std::io::Write as _;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

pub use faas_init_protocol::BoundedLog;

/// A pipe whose write end the commands get as stdout and stderr, read by a
/// thread of ours.
pub struct LogPump {
    write_end: Option<OwnedFd>,
    stop: Arc<AtomicBool>,
    reader: JoinHandle<BoundedLog>,
}

impl LogPump {
    /// `live`: the log file, appended to as output arrives (up to `limit`
    /// bytes) for the agent to follow.
    pub fn start(limit: usize, mut live: Option<std::fs::File>) -> nix::Result<LogPump> {
        let (read_end, write_end) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        fcntl(read_end.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop_seen = stop.clone();
        let reader = std::thread::spawn(move || {
            let mut log = BoundedLog::new(limit);
            let mut buf = vec![0u8; 64 << 10];
            let mut live_room = limit;
            let mut append_live = |data: &[u8]| {
                if let Some(file) = live.as_mut() {
                    let n = data.len().min(live_room);
                    // A failed write (tmpfs full) ends the live copy only.
                    if n == 0 || file.write_all(&data[..n]).is_err() {
                        live = None;
                    }
                    live_room -= n;
                }
            };
            loop {
                let mut fds = [PollFd::new(read_end.as_fd(), PollFlags::POLLIN)];
                let _ = poll(&mut fds, PollTimeout::from(5u8));
                // Drain what is there, then look at the stop flag: data
                // written before the run ended is never left behind.
                loop {
                    match nix::unistd::read(read_end.as_raw_fd(), &mut buf) {
                        Ok(0) => return log,
                        Ok(n) => {
                            log.push(&buf[..n]);
                            append_live(&buf[..n]);
                        }
                        Err(Errno::EINTR) => continue,
                        Err(Errno::EAGAIN) => break,
                        Err(_) => return log,
                    }
                }
                if stop_seen.load(Ordering::Acquire) {
                    return log;
                }
            }
        });
        Ok(LogPump {
            write_end: Some(write_end),
            stop,
            reader,
        })
    }

    /// A new descriptor of the write end, for a child's stdout or stderr.
    pub fn writer(&self) -> std::io::Result<OwnedFd> {
        self.write_end
            .as_ref()
            .expect("the pump is running")
            .try_clone()
    }

    /// Stops reading once the pipe is drained (processes left behind may
    /// still hold the write end: their later output is not waited for) and
    /// writes the kept logs to `path`.
    pub fn finish(mut self, path: &Path) -> std::io::Result<()> {
        drop(self.write_end.take());
        self.stop.store(true, Ordering::Release);
        let log = self.reader.join().unwrap_or_else(|_| BoundedLog::new(0));
        // The agent created the file (the io directory is not ours to
        // create in): truncated and rewritten in place.
        let mut file = std::fs::File::create(path)?;
        file.write_all(&log.render())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pump_collects_what_children_wrote() {
        let pump = LogPump::start(1024, None).unwrap();
        let w = pump.writer().unwrap();
        let mut file = std::fs::File::from(w);
        file.write_all(b"hello from a child\n").unwrap();
        drop(file);
        let dir = std::env::temp_dir().join(format!("faas-init-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        pump.finish(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello from a child\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn output_reaches_the_live_file_as_it_is_written_up_to_the_bound() {
        let dir = std::env::temp_dir().join(format!("faas-init-live-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        std::fs::write(&path, b"").unwrap();
        let live = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let pump = LogPump::start(16, Some(live)).unwrap();
        let mut child = std::fs::File::from(pump.writer().unwrap());
        child.write_all(b"first line\n").unwrap();
        // Before the run ends, the line is in the file already.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::fs::read(&path).unwrap() != b"first line\n" {
            assert!(std::time::Instant::now() < deadline, "never written live");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // Past the bound the live copy stops; the final file keeps head
        // and tail.
        child.write_all(b"second line that is long\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(std::fs::read(&path).unwrap().len(), 16);
        drop(child);
        pump.finish(&path).unwrap();
        let end = String::from_utf8(std::fs::read(&path).unwrap()).unwrap();
        assert!(end.contains("cut by faas"), "{end}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
