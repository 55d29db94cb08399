//! Streaming uploads to the control plane (connecting is faas-client's).

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::Stream;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::io::AsyncReadExt;

/// Bytes per upload message: well under the 4 MiB default message limit of
/// gRPC servers, large enough to keep per-message overhead negligible.
pub const CHUNK_SIZE: usize = 1 << 20;

/// Below this size an upload finishes before a progress bar is worth
/// drawing.
const PROGRESS_MIN_BYTES: u64 = 4 << 20;

/// Bytes to upload after the spec message.
pub enum UploadBody {
    File { path: PathBuf, size: u64 },
    Memory(Vec<u8>),
}

impl UploadBody {
    pub fn size(&self) -> u64 {
        match self {
            UploadBody::File { size, .. } => *size,
            UploadBody::Memory(bytes) => bytes.len() as u64,
        }
    }
}

/// Where a read error met while streaming is kept: a request stream cannot
/// fail, so it ends early and the caller reports this error instead of the
/// server's complaint about a truncated archive.
pub type UploadError = Arc<Mutex<Option<io::Error>>>;

/// A progress bar on stderr for large uploads to a terminal; hidden
/// otherwise so logs and pipes stay clean.
pub fn upload_progress(size: u64, label: &str) -> ProgressBar {
    use std::io::IsTerminal;
    if size < PROGRESS_MIN_BYTES || !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("static progress template")
        .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    bar
}

enum ChunkReader {
    Start(UploadBody),
    File(tokio::fs::File),
    Memory { bytes: Vec<u8>, offset: usize },
}

impl ChunkReader {
    /// The next chunk of at most CHUNK_SIZE bytes; None at the end.
    async fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        if let ChunkReader::Start(body) = self {
            let body = std::mem::replace(body, UploadBody::Memory(Vec::new()));
            *self = match body {
                UploadBody::File { path, .. } => {
                    ChunkReader::File(tokio::fs::File::open(&path).await?)
                }
                UploadBody::Memory(bytes) => ChunkReader::Memory { bytes, offset: 0 },
            };
        }
        match self {
            ChunkReader::Start(_) => unreachable!("replaced above"),
            ChunkReader::Memory { bytes, offset } => {
                if *offset >= bytes.len() {
                    return Ok(None);
                }
                let end = (*offset + CHUNK_SIZE).min(bytes.len());
                let chunk = bytes[*offset..end].to_vec();
                *offset = end;
                Ok(Some(chunk))
            }
            ChunkReader::File(file) => {
                let mut chunk = Vec::with_capacity(CHUNK_SIZE);
                // Fill whole chunks: a short read is not the end of a file.
                while chunk.len() < CHUNK_SIZE {
                    let read = (&mut *file)
                        .take((CHUNK_SIZE - chunk.len()) as u64)
                        .read_to_end(&mut chunk)
                        .await?;
                    if read == 0 {
                        break;
                    }
                }
                Ok(if chunk.is_empty() { None } else { Some(chunk) })
            }
        }
    }
}

/// The request stream of a client-streaming upload: `first` (the spec),
/// then the body in CHUNK_SIZE pieces wrapped by `wrap`.
pub fn upload_stream<M, F>(
    first: M,
    body: UploadBody,
    wrap: F,
    progress: ProgressBar,
    error_slot: UploadError,
) -> impl Stream<Item = M> + Send + 'static
where
    M: Send + 'static,
    F: Fn(Vec<u8>) -> M + Send + Sync + 'static,
{
    let head = futures::stream::once(async move { first });
    let state = (ChunkReader::Start(body), wrap, progress, error_slot);
    let tail = futures::stream::unfold(
        state,
        |(mut reader, wrap, progress, error_slot)| async move {
            match reader.next_chunk().await {
                Ok(Some(chunk)) => {
                    progress.inc(chunk.len() as u64);
                    Some((wrap(chunk), (reader, wrap, progress, error_slot)))
                }
                Ok(None) => {
                    progress.finish_and_clear();
                    None
                }
                Err(e) => {
                    progress.abandon();
                    *error_slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    None
                }
            }
        },
    );
    futures::StreamExt::chain(head, tail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    async fn collect(body: UploadBody) -> (Vec<Vec<u8>>, UploadError) {
        let slot = UploadError::default();
        let stream = upload_stream(Vec::new(), body, |c| c, ProgressBar::hidden(), slot.clone());
        let messages: Vec<Vec<u8>> = stream.collect().await;
        (messages, slot)
    }

    #[tokio::test]
    async fn spec_first_then_one_mib_chunks() {
        let data: Vec<u8> = (0..(2 * CHUNK_SIZE + 10))
            .map(|i| (i % 251) as u8)
            .collect();
        let (messages, slot) = collect(UploadBody::Memory(data.clone())).await;
        assert!(slot.lock().unwrap().is_none());
        assert_eq!(messages.len(), 4);
        assert!(messages[0].is_empty(), "the spec comes first");
        assert_eq!(messages[1].len(), CHUNK_SIZE);
        assert_eq!(messages[3].len(), 10);
        assert_eq!(messages[1..].concat(), data);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image.tar");
        std::fs::write(&path, &data).unwrap();
        let size = data.len() as u64;
        let (messages, _) = collect(UploadBody::File { path, size }).await;
        assert_eq!(messages.len(), 4);
        assert_eq!(messages[2].len(), CHUNK_SIZE);
        assert_eq!(messages[1..].concat(), data);
    }

    #[tokio::test]
    async fn read_errors_are_kept_not_sent() {
        let body = UploadBody::File {
            path: "/nonexistent/faasctl-test".into(),
            size: 1,
        };
        let (messages, slot) = collect(body).await;
        assert_eq!(messages.len(), 1, "only the spec went out");
        assert!(slot.lock().unwrap().is_some());
    }
}
