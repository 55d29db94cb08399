//! Streaming a running call's output to the leader while someone follows
//! it (`faasctl call logs -f`): faas-init appends the first bytes of the
//! output to the io directory's log file as they come (up to the log
//! bound), and this tails that file.
//!
//! The file is the container's to write: it is opened through the io
//! directory without following links, checked to be a regular file, read
//! at an offset in bounded chunks, and never past the log bound, whatever
//! the container does to it.

use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::Duration;

use faas_init_protocol::files;
use faas_proto::v1::{agent_message, AgentMessage, LogChunk};
use tokio::sync::mpsc;

/// How often the file is looked at: the delay a follower sees at most.
const POLL: Duration = Duration::from_millis(100);
/// Largest chunk sent at once.
const CHUNK: usize = 64 << 10;

/// Tails the call's log while it lives; dropped (the run ended), it stops.
pub struct Tail {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Tail {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts streaming the log of call `call_id` from the io directory `io`,
/// at most `limit` bytes in all.
pub fn follow(
    io: Arc<OwnedFd>,
    call_id: String,
    outbound: mpsc::UnboundedSender<AgentMessage>,
    limit: u64,
) -> Tail {
    let label = call_id.clone();
    tail(io, label, outbound, limit, move |offset, data| {
        AgentMessage {
            msg: Some(agent_message::Msg::Log(LogChunk {
                call_id: call_id.clone(),
                offset,
                data,
            })),
        }
    })
}

/// Streams the log file of the io directory `io` (a call's or a build's,
/// named `label` in diagnostics), at most `limit` bytes in all, each chunk
/// read made into a message by `message(offset, data)`.
pub fn tail(
    io: Arc<OwnedFd>,
    label: String,
    outbound: mpsc::UnboundedSender<AgentMessage>,
    limit: u64,
    message: impl Fn(u64, Vec<u8>) -> AgentMessage + Send + 'static,
) -> Tail {
    let task = tokio::spawn(async move {
        let mut offset = 0u64;
        let mut file: Option<Arc<std::fs::File>> = None;
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while offset < limit {
            tick.tick().await;
            let io = io.clone();
            let opened = file.clone();
            let want = CHUNK.min((limit - offset) as usize);
            let read = tokio::task::spawn_blocking(move || {
                let file = match opened {
                    Some(file) => file,
                    None => Arc::new(crate::io_files::open_regular(&*io, files::LOG)?.0),
                };
                let mut buf = vec![0u8; want];
                let n = file.read_at(&mut buf, offset).map_err(|e| {
                    crate::io_files::IoFileError::Io {
                        name: files::LOG,
                        source: e,
                    }
                })?;
                buf.truncate(n);
                Ok::<_, crate::io_files::IoFileError>((file, buf))
            })
            .await;
            let (opened, data) = match read {
                Ok(Ok(read)) => read,
                Ok(Err(e)) => {
                    tracing::debug!(%label, error = %e, "the live log cannot be read; not followed");
                    return;
                }
                Err(_) => return,
            };
            file = Some(opened);
            if data.is_empty() {
                continue;
            }
            let len = data.len() as u64;
            if outbound.send(message(offset, data)).is_err() {
                return;
            }
            offset += len;
        }
    });
    Tail { task }
}
