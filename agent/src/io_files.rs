//! The agent's side of a container's io directory, whose entries the
//! container can write into: every open is relative to the directory's
//! descriptor and never follows a link (openat2 `RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV`, or
//! `O_NOFOLLOW` on a kernel without openat2), is non-blocking (a FIFO
//! where a file was expected can never hang the agent), checks the file's
//! type with fstat, and reads at most the bound plus one byte whatever
//! `st_size` says.
//!
//! The io directory itself is root-owned and not writable by the container
//! (see `container::prepare_dir`), so its entries cannot be replaced: these
//! checks are the second line of defence.
//!
//! Everything here does blocking system calls: call it from
//! `spawn_blocking`, except [`NotifyReader`] and [`open_fifo_writer`],
//! whose descriptors are non-blocking and used through tokio.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use faas_init_protocol::BoundedLog;
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;

/// Why an io entry could not be used.
#[derive(Debug, thiserror::Error)]
pub enum IoFileError {
    #[error("{name} does not exist")]
    Missing { name: &'static str },
    #[error("{name} is a {found}, not a {expected}")]
    WrongType {
        name: &'static str,
        expected: &'static str,
        found: &'static str,
    },
    #[error("{name} holds more than {limit} bytes")]
    TooLarge { name: &'static str, limit: u64 },
    #[error("{name}: {source}")]
    Io {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl IoFileError {
    fn io(name: &'static str, source: impl Into<std::io::Error>) -> IoFileError {
        let source = source.into();
        match source.kind() {
            std::io::ErrorKind::NotFound => IoFileError::Missing { name },
            _ => IoFileError::Io { name, source },
        }
    }
}

/// Opens the io directory itself: a path under the agent's own state
/// directory, which nothing in a container can reach.
pub fn open_dir(path: &Path) -> std::io::Result<OwnedFd> {
    Ok(rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Set once openat2 answered ENOSYS (a kernel older than 5.6).
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Opens the entry `name` (one component) of the io directory `dir`
/// without following any link, non-blocking and close-on-exec.
pub fn open_beneath(dir: impl AsFd, name: &str, flags: OFlags) -> std::io::Result<OwnedFd> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
    }
    let flags = flags | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NOFOLLOW;
    if !NO_OPENAT2.load(Ordering::Relaxed) {
        let resolve = ResolveFlags::BENEATH
            | ResolveFlags::NO_SYMLINKS
            | ResolveFlags::NO_MAGICLINKS
            | ResolveFlags::NO_XDEV;
        match rustix::fs::openat2(&dir, name, flags, Mode::empty(), resolve) {
            Err(rustix::io::Errno::NOSYS) => NO_OPENAT2.store(true, Ordering::Relaxed),
            other => return Ok(other?),
        }
    }
    // One component and O_NOFOLLOW: the per-component equivalent.
    Ok(rustix::fs::openat(&dir, name, flags, Mode::empty())?)
}

fn type_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "file of unknown type",
    }
}

/// Opens `name` for reading and checks that it is a regular file; returns
/// it with the size fstat gave.
pub fn open_regular(dir: impl AsFd, name: &'static str) -> Result<(File, u64), IoFileError> {
    let fd = open_beneath(dir, name, OFlags::RDONLY).map_err(|e| IoFileError::io(name, e))?;
    let stat = rustix::fs::fstat(&fd).map_err(|e| IoFileError::io(name, e))?;
    let found = FileType::from_raw_mode(stat.st_mode);
    if found != FileType::RegularFile {
        return Err(IoFileError::WrongType {
            name,
            expected: "regular file",
            found: type_name(found),
        });
    }
    Ok((File::from(fd), stat.st_size.max(0) as u64))
}

/// The whole content of the regular file `name`, at most `limit` bytes
/// (more is [`IoFileError::TooLarge`]; at most `limit + 1` are read).
pub fn read_bounded(
    dir: impl AsFd,
    name: &'static str,
    limit: u64,
) -> Result<Vec<u8>, IoFileError> {
    let (file, size) = open_regular(dir, name)?;
    let mut buf = Vec::with_capacity(size.min(limit + 1) as usize);
    file.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| IoFileError::io(name, e))?;
    if buf.len() as u64 > limit {
        return Err(IoFileError::TooLarge { name, limit });
    }
    Ok(buf)
}

/// A call's logs as the agent keeps them.
#[derive(Debug, Default, PartialEq)]
pub struct Logs {
    pub bytes: Vec<u8>,
    /// Bytes were cut (here or already by faas-init).
    pub truncated: bool,
}

/// The regular file `name` as logs: whole if within `limit`, else its head
/// and tail around a marker. At most `max_read` bytes are read in all, so
/// a file whose size lies (procfs says 0) or that never ends costs a bound.
pub fn read_log(
    dir: impl AsFd,
    name: &'static str,
    limit: usize,
    max_read: u64,
) -> Result<Logs, IoFileError> {
    let (mut file, size) = open_regular(dir, name)?;
    let mut first = Vec::with_capacity((size as usize).min(limit + 1));
    (&mut file)
        .take(limit as u64 + 1)
        .read_to_end(&mut first)
        .map_err(|e| IoFileError::io(name, e))?;
    if first.len() <= limit {
        let truncated = contains(&first, faas_init_protocol::LOG_CUT_NEEDLE);
        return Ok(Logs {
            bytes: first,
            truncated,
        });
    }
    let mut log = BoundedLog::new(limit);
    log.push(&first);
    let mut read = first.len() as u64;
    // A file as long as it says: skip to its tail instead of reading the
    // middle. (A size that lies only makes the loop below read more, up
    // to `max_read`.)
    let tail_from = size.saturating_sub(log.tail_limit() as u64);
    if tail_from > read && file.seek(SeekFrom::Start(tail_from)).is_ok() {
        log.skip(tail_from - read);
    }
    let mut buf = vec![0u8; 64 << 10];
    while read < max_read {
        let want = buf.len().min((max_read - read) as usize);
        match file.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => {
                log.push(&buf[..n]);
                read += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(IoFileError::io(name, e)),
        }
    }
    Ok(Logs {
        bytes: log.render(),
        truncated: true,
    })
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Opens the FIFO `name` with `flags` and checks that it is one.
fn open_fifo(dir: impl AsFd, name: &'static str, flags: OFlags) -> Result<OwnedFd, IoFileError> {
    let fd = open_beneath(dir, name, flags).map_err(|e| IoFileError::io(name, e))?;
    let stat = rustix::fs::fstat(&fd).map_err(|e| IoFileError::io(name, e))?;
    let found = FileType::from_raw_mode(stat.st_mode);
    if found != FileType::Fifo {
        return Err(IoFileError::WrongType {
            name,
            expected: "FIFO",
            found: type_name(found),
        });
    }
    Ok(fd)
}

/// The write end of the FIFO `name`, or `Ok(None)` while nobody has it
/// open for reading (ENXIO: the caller retries). Never blocks.
pub fn open_fifo_writer(
    dir: impl AsFd,
    name: &'static str,
) -> Result<Option<pipe::Sender>, IoFileError> {
    match open_fifo(dir, name, OFlags::WRONLY) {
        Ok(fd) => pipe::Sender::from_owned_fd(fd)
            .map(Some)
            .map_err(|e| IoFileError::io(name, e)),
        Err(IoFileError::Io { source, .. }) if source.raw_os_error() == Some(nix::libc::ENXIO) => {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Why the notify FIFO stopped making sense.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("a notify line longer than {max} bytes")]
    LineTooLong { max: usize },
    #[error("an unknown notify line {0:?}")]
    Unknown(String),
    #[error("reading the notify FIFO: {0}")]
    Io(#[from] std::io::Error),
}

/// What faas-init said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    DepsDone,
    Done,
}

/// The agent's end of the notify FIFO, opened once when the container's
/// directory is prepared (read-write, so that it never sees an end of file
/// while no writer has it open) and read in lines of at most
/// [`notify::MAX_LINE`](faas_init_protocol::notify::MAX_LINE) bytes: a
/// container writing without a newline costs that much memory, no more.
pub struct NotifyReader {
    pipe: pipe::Receiver,
    buf: Vec<u8>,
}

impl NotifyReader {
    /// Opens the FIFO `name` of the io directory. Does not block.
    pub fn open(dir: impl AsFd, name: &'static str) -> Result<NotifyReader, IoFileError> {
        let fd = open_fifo(dir, name, OFlags::RDWR)?;
        let pipe = pipe::Receiver::from_owned_fd(fd).map_err(|e| IoFileError::io(name, e))?;
        Ok(NotifyReader::new(pipe))
    }

    fn new(pipe: pipe::Receiver) -> NotifyReader {
        NotifyReader {
            pipe,
            buf: Vec::with_capacity(faas_init_protocol::notify::MAX_LINE + 1),
        }
    }

    /// The next notice; `Ok(None)` at the end of the stream. Cancel-safe:
    /// a partial line stays in the buffer.
    pub async fn next(&mut self) -> Result<Option<Notice>, NotifyError> {
        use faas_init_protocol::notify;
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let line = &line[..pos];
                return match line {
                    l if l == notify::DEPS_DONE.as_bytes() => Ok(Some(Notice::DepsDone)),
                    l if l == notify::DONE.as_bytes() => Ok(Some(Notice::Done)),
                    other => Err(NotifyError::Unknown(
                        String::from_utf8_lossy(other).into_owned(),
                    )),
                };
            }
            if self.buf.len() > notify::MAX_LINE {
                return Err(NotifyError::LineTooLong {
                    max: notify::MAX_LINE,
                });
            }
            // Never more than one line's worth in the buffer.
            let room = notify::MAX_LINE + 1 - self.buf.len();
            let mut chunk = [0u8; notify::MAX_LINE + 1];
            let n = self.pipe.read(&mut chunk[..room]).await?;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    struct TempDir(std::path::PathBuf);
    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let path = std::env::temp_dir().join(format!(
                "faas-iofiles-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
        fn fd(&self) -> OwnedFd {
            open_dir(&self.0).unwrap()
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn reads_a_regular_file_within_its_bound() {
        let dir = TempDir::new("regular");
        std::fs::write(dir.0.join("output.json"), b"{\"a\":1}").unwrap();
        assert_eq!(
            read_bounded(dir.fd(), "output.json", 7).unwrap(),
            b"{\"a\":1}"
        );
        assert!(matches!(
            read_bounded(dir.fd(), "output.json", 6),
            Err(IoFileError::TooLarge { limit: 6, .. })
        ));
        assert!(matches!(
            read_bounded(dir.fd(), "absent", 6),
            Err(IoFileError::Missing { .. })
        ));
    }

    #[test]
    fn never_follows_a_symlink() {
        let dir = TempDir::new("symlink");
        let secret = dir.0.join("secret");
        std::fs::write(&secret, b"host secret").unwrap();
        std::os::unix::fs::symlink(&secret, dir.0.join("log")).unwrap();
        std::os::unix::fs::symlink("secret", dir.0.join("rel")).unwrap();
        std::os::unix::fs::symlink("/proc/self/environ", dir.0.join("magic")).unwrap();
        for name in ["log", "rel", "magic"] {
            let err = read_bounded(dir.fd(), name, 100).unwrap_err();
            assert!(matches!(err, IoFileError::Io { .. }), "{name}: {err}");
            assert!(read_log(dir.fd(), name, 100, 1000).is_err(), "{name}");
        }
        // Nor a path out of the directory.
        assert!(open_beneath(dir.fd(), "../x", OFlags::RDONLY).is_err());
        assert!(open_beneath(dir.fd(), "..", OFlags::RDONLY).is_err());
    }

    #[test]
    fn a_fifo_where_a_file_belongs_is_refused_without_blocking() {
        let dir = TempDir::new("fifo");
        nix::unistd::mkfifo(
            &dir.0.join("log"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        // No writer: a blocking open would hang here.
        let err = read_bounded(dir.fd(), "log", 100).unwrap_err();
        assert!(
            matches!(err, IoFileError::WrongType { found: "FIFO", .. }),
            "{err}"
        );
        assert!(read_log(dir.fd(), "log", 100, 1000).is_err());
    }

    #[test]
    fn a_directory_or_device_is_refused() {
        let dir = TempDir::new("dir");
        std::fs::create_dir(dir.0.join("output.json")).unwrap();
        assert!(matches!(
            read_bounded(dir.fd(), "output.json", 100),
            Err(IoFileError::WrongType {
                found: "directory",
                ..
            })
        ));
    }

    #[test]
    fn a_file_whose_size_lies_is_read_to_the_bound_only() {
        // procfs files say size 0 and can be long; read through a directory
        // fd of /proc/self (a test only: the agent's io directory is a tmpfs,
        // RESOLVE_NO_XDEV included).
        let proc = open_dir(Path::new(&format!("/proc/{}", std::process::id()))).unwrap();
        let maps = read_bounded(&proc, "maps", 64);
        assert!(
            matches!(maps, Err(IoFileError::TooLarge { limit: 64, .. })),
            "{maps:?}"
        );
        let logs = read_log(&proc, "maps", 64, 512).unwrap();
        assert!(logs.truncated);
        assert!(logs.bytes.len() <= 64 + 64, "{}", logs.bytes.len());
    }

    #[test]
    fn logs_are_cut_in_the_middle_with_a_marker() {
        let dir = TempDir::new("logs");
        std::fs::write(dir.0.join("log"), "h".repeat(1000) + &"t".repeat(1000)).unwrap();
        let logs = read_log(dir.fd(), "log", 400, 1 << 20).unwrap();
        let text = String::from_utf8(logs.bytes).unwrap();
        assert!(logs.truncated);
        assert!(text.starts_with(&"h".repeat(100)));
        assert!(text.ends_with(&"t".repeat(300)));
        assert!(text.contains("1600 bytes of logs cut"), "{text}");
        // Within the bound: whole, not truncated unless faas-init cut it.
        std::fs::write(dir.0.join("log"), "short").unwrap();
        assert_eq!(
            read_log(dir.fd(), "log", 400, 1 << 20).unwrap(),
            Logs {
                bytes: b"short".to_vec(),
                truncated: false
            }
        );
        std::fs::write(
            dir.0.join("log"),
            "a\n[... 9 bytes of logs cut by faas ...]\nb",
        )
        .unwrap();
        assert!(read_log(dir.fd(), "log", 400, 1 << 20).unwrap().truncated);
    }

    #[test]
    fn a_long_file_costs_max_read_at_most() {
        let dir = TempDir::new("maxread");
        // A sparse 1 GiB file whose tail the seek reaches directly.
        let file = std::fs::File::create(dir.0.join("log")).unwrap();
        file.set_len(1 << 30).unwrap();
        let logs = read_log(dir.fd(), "log", 100, 1000).unwrap();
        assert!(logs.truncated);
        assert!(logs.bytes.len() < 200);
    }

    fn fifo_pair(dir: &TempDir) -> (NotifyReader, std::fs::File) {
        nix::unistd::mkfifo(
            &dir.0.join("notify"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let reader = NotifyReader::open(dir.fd(), "notify").unwrap();
        let writer = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.0.join("notify"))
            .unwrap();
        (reader, writer)
    }

    #[tokio::test]
    async fn notify_lines_are_words() {
        let dir = TempDir::new("notify");
        let (mut reader, mut writer) = fifo_pair(&dir);
        writer.write_all(b"deps-done\ndo").unwrap();
        assert_eq!(reader.next().await.unwrap(), Some(Notice::DepsDone));
        writer.write_all(b"ne\nbogus\n").unwrap();
        assert_eq!(reader.next().await.unwrap(), Some(Notice::Done));
        assert!(matches!(reader.next().await, Err(NotifyError::Unknown(l)) if l == "bogus"));
    }

    #[tokio::test]
    async fn a_notify_line_without_end_is_refused_at_the_cap() {
        let dir = TempDir::new("notifylong");
        let (mut reader, writer) = fifo_pair(&dir);
        // Far more than a line, no newline: written by another thread (the
        // FIFO holds 64 KiB), the reader must give up at the cap.
        let w = std::thread::spawn(move || {
            let mut writer = writer;
            let _ = writer.write_all(&vec![b'x'; 1 << 20]);
        });
        assert!(matches!(
            reader.next().await,
            Err(NotifyError::LineTooLong { .. })
        ));
        assert!(reader.buf.len() <= faas_init_protocol::notify::MAX_LINE + 1);
        drop(reader);
        w.join().unwrap();
    }

    #[test]
    fn fifo_writer_waits_for_a_reader_without_blocking() {
        let dir = TempDir::new("fifowriter");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        nix::unistd::mkfifo(
            &dir.0.join("input.json"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        assert!(open_fifo_writer(dir.fd(), "input.json").unwrap().is_none());
        let _reader =
            std::fs::File::from(open_beneath(dir.fd(), "input.json", OFlags::RDONLY).unwrap());
        assert!(open_fifo_writer(dir.fd(), "input.json").unwrap().is_some());
        // A regular file is not a FIFO.
        std::fs::write(dir.0.join("status.json"), b"").unwrap();
        assert!(matches!(
            open_fifo_writer(dir.fd(), "status.json"),
            Err(IoFileError::WrongType { .. })
        ));
    }
}
