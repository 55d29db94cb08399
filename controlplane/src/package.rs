//! Function packages: what users upload (a zip or a tar.gz, or a plain tar)
//! is checked and rewritten into one normalized, deterministic tar.gz, so the
//! agents only ever extract one trusted format: regular files and
//! directories with relative paths, fixed owners, modes and times.
//!
//! An upload is hostile until checked: a few hundred KiB of gzip can unpack
//! to gigabytes, and a tiny archive can hold thousands of nested
//! directories. So nothing is inflated into memory: the archive is read as a
//! stream, every entry is checked against [`PackageLimits`] as it arrives
//! (reading stops at the size limit, never past it), file contents are
//! spooled to an unlinked temporary file, and only the entries' names stay
//! in memory (bounded by the entry count and path length limits). The
//! normalized archive is then written from the spool in sorted order.

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Seek, SeekFrom, Write};
use std::ops::Bound;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("package is empty")]
    Empty,
    #[error("package is neither a zip nor a tar.gz nor a tar archive")]
    UnknownFormat,
    #[error("corrupt package: {0}")]
    Corrupt(String),
    #[error("unsafe path in package: {0:?} (paths must be relative and stay inside the package)")]
    UnsafePath(String),
    #[error(
        "package entry name {0:?} is not valid: names must be UTF-8 without control characters"
    )]
    BadName(String),
    #[error("package entry {0:?} is a {1}; only regular files and directories are supported")]
    UnsupportedEntry(String, &'static str),
    #[error("package unpacks to more than {limit} bytes (limit package.max_unpacked_bytes)")]
    TooLarge { limit: u64 },
    #[error(
        "package has more than {limit} entries, directories included (limit package.max_entries)"
    )]
    TooManyEntries { limit: usize },
    #[error(
        "package path {path:?} is nested deeper than {limit} levels (limit package.max_depth)"
    )]
    TooDeep { path: String, limit: usize },
    #[error(
        "package path {path:?} has a name longer than {limit} bytes (limit package.max_name_bytes)"
    )]
    NameTooLong { path: String, limit: usize },
    #[error("package path {path:?} is longer than {limit} bytes (limit package.max_path_bytes)")]
    PathTooLong { path: String, limit: usize },
    #[error("package entry {0:?} appears twice")]
    Duplicate(String),
    #[error("package entry {path:?} is a file, but {other:?} needs it to be a directory")]
    FileDirConflict { path: String, other: String },
    #[error(
        "the normalized package is larger than {limit} bytes (limit package.max_normalized_bytes)"
    )]
    NormalizedTooLarge { limit: u64 },
    #[error("package contains no files")]
    NoFiles,
    #[error("spooling the package: {0}")]
    Spool(std::io::Error),
}

impl PackageError {
    /// Whether the package broke a quantity limit (bytes, entries) rather
    /// than being malformed: the API answers RESOURCE_EXHAUSTED for those.
    pub fn is_over_limit(&self) -> bool {
        matches!(
            self,
            PackageError::TooLarge { .. }
                | PackageError::TooManyEntries { .. }
                | PackageError::NormalizedTooLarge { .. }
        )
    }
}

/// Limits on what a package may unpack to. The defaults keep a package
/// something an agent extracts in well under a second and a file system
/// accepts: names within Linux's NAME_MAX, paths far from PATH_MAX once
/// placed under the agent's cache directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackageLimits {
    /// Sum of the files' sizes [default: 4 × max_package_bytes, 256 MiB].
    pub max_unpacked_bytes: u64,
    /// Files and directories, implied parent directories included
    /// [default: 10000].
    pub max_entries: usize,
    /// Path components of an entry [default: 32].
    pub max_depth: usize,
    /// Bytes of one path component [default: 255].
    pub max_name_bytes: usize,
    /// Bytes of a whole relative path [default: 1024].
    pub max_path_bytes: usize,
    /// The normalized tar.gz the registry stores [default: 2 × max_package_bytes].
    pub max_normalized_bytes: u64,
}

impl PackageLimits {
    /// The defaults for a control plane accepting uploads of at most
    /// `max_package_bytes`.
    pub fn defaults_for(max_package_bytes: u64) -> PackageLimits {
        PackageLimits {
            max_unpacked_bytes: max_package_bytes.saturating_mul(4),
            max_entries: 10_000,
            max_depth: 32,
            max_name_bytes: 255,
            max_path_bytes: 1024,
            max_normalized_bytes: max_package_bytes.saturating_mul(2),
        }
    }
}

/// The `[package]` table of the control plane's configuration file: any of
/// [`PackageLimits`]' fields, plus `max_concurrent_deploys`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageSettings {
    pub max_unpacked_bytes: Option<u64>,
    pub max_entries: Option<usize>,
    pub max_depth: Option<usize>,
    pub max_name_bytes: Option<usize>,
    pub max_path_bytes: Option<usize>,
    pub max_normalized_bytes: Option<u64>,
    /// Deploys checked at once by one replica; more are refused with
    /// RESOURCE_EXHAUSTED and a retry hint [default: 4].
    pub max_concurrent_deploys: Option<usize>,
    /// Seconds a deploy may take to upload its package: a deploy holds
    /// one of the slots above from its first message, so a client that
    /// stops sending must not hold it forever [default: 120, a 64 MiB
    /// package at about 0.5 MiB/s].
    pub upload_timeout_secs: Option<u64>,
}

/// Default of [`PackageSettings::max_concurrent_deploys`].
pub const DEFAULT_MAX_CONCURRENT_DEPLOYS: usize = 4;

impl PackageSettings {
    pub fn limits(&self, max_package_bytes: u64) -> PackageLimits {
        let d = PackageLimits::defaults_for(max_package_bytes);
        PackageLimits {
            max_unpacked_bytes: self.max_unpacked_bytes.unwrap_or(d.max_unpacked_bytes),
            max_entries: self.max_entries.unwrap_or(d.max_entries),
            max_depth: self.max_depth.unwrap_or(d.max_depth),
            max_name_bytes: self.max_name_bytes.unwrap_or(d.max_name_bytes),
            max_path_bytes: self.max_path_bytes.unwrap_or(d.max_path_bytes),
            max_normalized_bytes: self.max_normalized_bytes.unwrap_or(d.max_normalized_bytes),
        }
    }

    pub fn upload_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.upload_timeout_secs.unwrap_or(120))
    }

    pub fn max_concurrent_deploys(&self) -> usize {
        self.max_concurrent_deploys
            .unwrap_or(DEFAULT_MAX_CONCURRENT_DEPLOYS)
            .max(1)
    }
}

#[derive(Clone, Copy)]
enum Entry {
    /// `explicit`: listed by the archive, not only implied by a file below.
    Dir { explicit: bool },
    /// Content at `offset..offset + len` of the spool.
    File {
        executable: bool,
        offset: u64,
        len: u64,
    },
}

/// The entries seen so far: names and kinds in memory, contents in the
/// spool file.
struct Collector {
    entries: BTreeMap<PathBuf, Entry>,
    spool: std::fs::File,
    total: u64,
    limits: PackageLimits,
}

impl Collector {
    fn new(limits: PackageLimits) -> Result<Collector, PackageError> {
        Ok(Collector {
            entries: BTreeMap::new(),
            // Unlinked at once: nothing is left behind whatever happens.
            spool: tempfile::tempfile().map_err(PackageError::Spool)?,
            total: 0,
            limits,
        })
    }

    /// Checks an entry's path against the shape rules and against what is
    /// known already; returns the path to record, or None for the root.
    fn check_path(&mut self, raw: &[u8], is_dir: bool) -> Result<Option<PathBuf>, PackageError> {
        let lossy = || String::from_utf8_lossy(raw).into_owned();
        let text = std::str::from_utf8(raw).map_err(|_| PackageError::BadName(lossy()))?;
        if text.chars().any(char::is_control) {
            return Err(PackageError::BadName(lossy()));
        }
        let path = safe_relative_path(text)?;
        if path.as_os_str().is_empty() {
            return Ok(None); // "./" itself
        }
        let l = &self.limits;
        let shown = || path.display().to_string();
        if path.as_os_str().len() > l.max_path_bytes {
            return Err(PackageError::PathTooLong {
                path: shown(),
                limit: l.max_path_bytes,
            });
        }
        let mut depth = 0;
        for comp in path.components() {
            depth += 1;
            if comp.as_os_str().len() > l.max_name_bytes {
                return Err(PackageError::NameTooLong {
                    path: shown(),
                    limit: l.max_name_bytes,
                });
            }
        }
        if depth > l.max_depth {
            return Err(PackageError::TooDeep {
                path: shown(),
                limit: l.max_depth,
            });
        }
        match self.entries.get(&path) {
            // A directory listed again (or listed after a file below it
            // implied it) carries nothing new; some archivers do this.
            Some(Entry::Dir { explicit: true }) if is_dir => return Ok(None),
            // Implied by a file below it so far: now listed too.
            Some(Entry::Dir { explicit: false }) if is_dir => {}
            Some(Entry::Dir { .. }) => {
                // A file where a directory is already implied or listed.
                let child = self
                    .entries
                    .range::<PathBuf, _>((Bound::Excluded(&path), Bound::Unbounded))
                    .next()
                    .filter(|(p, _)| p.starts_with(&path))
                    .map(|(p, _)| p.display().to_string())
                    .unwrap_or_else(shown);
                return Err(PackageError::FileDirConflict {
                    path: shown(),
                    other: child,
                });
            }
            Some(Entry::File { .. }) if is_dir => {
                return Err(PackageError::FileDirConflict {
                    path: shown(),
                    other: format!("{}/", path.display()),
                })
            }
            Some(Entry::File { .. }) => return Err(PackageError::Duplicate(shown())),
            None => {}
        }
        // Parents: each must be (or become) a directory.
        let mut implied = Vec::new();
        for ancestor in path.ancestors().skip(1) {
            if ancestor.as_os_str().is_empty() {
                break;
            }
            match self.entries.get(ancestor) {
                Some(Entry::File { .. }) => {
                    return Err(PackageError::FileDirConflict {
                        path: ancestor.display().to_string(),
                        other: shown(),
                    })
                }
                // Its own parents were checked when it was recorded.
                Some(Entry::Dir { .. }) => break,
                None => implied.push(ancestor.to_path_buf()),
            }
        }
        let new = implied.len() + usize::from(!self.entries.contains_key(&path));
        if self.entries.len() + new > l.max_entries {
            return Err(PackageError::TooManyEntries {
                limit: l.max_entries,
            });
        }
        for dir in implied {
            self.entries.insert(dir, Entry::Dir { explicit: false });
        }
        Ok(Some(path))
    }

    fn add_dir(&mut self, raw: &[u8]) -> Result<(), PackageError> {
        if let Some(path) = self.check_path(raw, true)? {
            self.entries.insert(path, Entry::Dir { explicit: true });
        }
        Ok(())
    }

    /// Records a file, copying its content into the spool; reading stops
    /// one byte past what the size budget has left.
    fn add_file(
        &mut self,
        raw: &[u8],
        executable: bool,
        content: &mut dyn Read,
    ) -> Result<(), PackageError> {
        let Some(path) = self.check_path(raw, false)? else {
            return Err(PackageError::UnsafePath(
                String::from_utf8_lossy(raw).into_owned(),
            ));
        };
        let left = self.limits.max_unpacked_bytes - self.total;
        let offset = self.total;
        let len = std::io::copy(&mut content.take(left + 1), &mut self.spool).map_err(|e| {
            PackageError::Corrupt(format!("entry {:?}: {e}", path.display().to_string()))
        })?;
        if len > left {
            return Err(PackageError::TooLarge {
                limit: self.limits.max_unpacked_bytes,
            });
        }
        self.total += len;
        self.entries.insert(
            path,
            Entry::File {
                executable,
                offset,
                len,
            },
        );
        Ok(())
    }
}

/// Recognizes the package format from its first bytes.
pub fn check_format(head: &[u8]) -> Result<(), PackageError> {
    let zip = head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06");
    let gzip = head.starts_with(&[0x1f, 0x8b]);
    let tar = head.len() > 262 && &head[257..262] == b"ustar";
    if zip || gzip || tar {
        Ok(())
    } else {
        Err(PackageError::UnknownFormat)
    }
}

/// Checks a package and returns it as a normalized tar.gz. Blocking (file
/// I/O and decompression): run it on a blocking thread.
pub fn normalize(bytes: &[u8], limits: PackageLimits) -> Result<Vec<u8>, PackageError> {
    if bytes.is_empty() {
        return Err(PackageError::Empty);
    }
    let mut collector = Collector::new(limits)?;
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        read_zip(bytes, &mut collector)?;
    } else if bytes.starts_with(&[0x1f, 0x8b]) {
        read_tar(flate2::read::GzDecoder::new(bytes), &mut collector)?;
    } else if bytes.len() > 262 && &bytes[257..262] == b"ustar" {
        read_tar(bytes, &mut collector)?;
    } else {
        return Err(PackageError::UnknownFormat);
    }
    if !collector
        .entries
        .values()
        .any(|e| matches!(e, Entry::File { .. }))
    {
        return Err(PackageError::NoFiles);
    }
    write_tar_gz(&mut collector)
}

/// The top-level entries of a normalized package (tar.gz): the names of
/// its directories and of its other entries. Blocking.
pub fn top_level(package: &[u8]) -> std::io::Result<(Vec<String>, Vec<String>)> {
    let mut dirs = std::collections::BTreeSet::new();
    let mut others = std::collections::BTreeSet::new();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(package));
    for entry in archive.entries()? {
        let entry = entry?;
        let path = entry.path()?.into_owned();
        let mut parts = path
            .components()
            .filter(|c| matches!(c, Component::Normal(_)));
        let Some(first) = parts.next() else { continue };
        let first = first.as_os_str().to_string_lossy().into_owned();
        if parts.next().is_some() || entry.header().entry_type().is_dir() {
            dirs.insert(first);
        } else {
            others.insert(first);
        }
    }
    Ok((dirs.into_iter().collect(), others.into_iter().collect()))
}

/// The largest entry count any end-of-central-directory record of a zip
/// declares (zip64 ones included). The zip crate reads the whole central
/// directory into memory as soon as it opens an archive: a 64 MiB upload
/// of empty entries would be over a million of them, hundreds of MiB of
/// metadata. So the count is checked first, from the raw bytes.
fn zip_declared_entries(bytes: &[u8]) -> u64 {
    let u16_at = |i: usize| {
        bytes
            .get(i..i + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as u64)
    };
    let u64_at = |i: usize| {
        bytes
            .get(i..i + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    };
    // The record is 22 bytes plus a comment of at most 64 KiB.
    let from = bytes.len().saturating_sub(22 + 0xffff);
    let mut most = 0;
    for i in (from..bytes.len().saturating_sub(21)).rev() {
        if &bytes[i..i + 4] != b"PK\x05\x06" {
            continue;
        }
        let mut count = u16_at(i + 10).unwrap_or(0);
        // A zip64 locator just before it points at the zip64 record.
        if i >= 20 && &bytes[i - 20..i - 16] == b"PK\x06\x07" {
            if let Some(at) = u64_at(i - 20 + 8).and_then(|a| usize::try_from(a).ok()) {
                if bytes.get(at..at + 4) == Some(b"PK\x06\x06") {
                    count = count.max(u64_at(at + 32).unwrap_or(u64::MAX));
                }
            }
        }
        most = most.max(count);
    }
    most
}

fn read_zip(bytes: &[u8], c: &mut Collector) -> Result<(), PackageError> {
    if zip_declared_entries(bytes) > c.limits.max_entries as u64 {
        return Err(PackageError::TooManyEntries {
            limit: c.limits.max_entries,
        });
    }
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| PackageError::Corrupt(format!("zip: {e}")))?;
    // Whatever the records said, what was read counts.
    if zip.len() > c.limits.max_entries {
        return Err(PackageError::TooManyEntries {
            limit: c.limits.max_entries,
        });
    }
    for i in 0..zip.len() {
        let mut file = zip
            .by_index(i)
            .map_err(|e| PackageError::Corrupt(format!("zip entry {i}: {e}")))?;
        let name = file.name_raw().to_vec();
        let shown = || String::from_utf8_lossy(&name).into_owned();
        if file.is_dir() {
            c.add_dir(&name)?;
            continue;
        }
        if file.is_symlink() {
            return Err(PackageError::UnsupportedEntry(shown(), "symlink"));
        }
        // Zips made on Unix carry the file type: only regular files pass.
        if let Some(mode) = file.unix_mode() {
            let kind = mode & 0o170000;
            if kind != 0 && kind != 0o100000 {
                return Err(PackageError::UnsupportedEntry(shown(), "special file"));
            }
        }
        let executable = file.unix_mode().is_some_and(|m| m & 0o111 != 0);
        c.add_file(&name, executable, &mut file)?;
    }
    Ok(())
}

fn read_tar<R: Read>(reader: R, c: &mut Collector) -> Result<(), PackageError> {
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| PackageError::Corrupt(format!("tar: {e}")))?;
    let mut saw_any = false;
    for entry in entries {
        let mut entry = entry.map_err(|e| PackageError::Corrupt(format!("tar: {e}")))?;
        saw_any = true;
        let name = entry.path_bytes().into_owned();
        let shown = || String::from_utf8_lossy(&name).into_owned();
        match entry.header().entry_type() {
            tar::EntryType::Directory => c.add_dir(&name)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let executable = entry.header().mode().is_ok_and(|m| m & 0o111 != 0);
                c.add_file(&name, executable, &mut entry)?;
            }
            // Metadata entries carry no files of their own.
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName => {}
            tar::EntryType::Symlink => {
                return Err(PackageError::UnsupportedEntry(shown(), "symlink"))
            }
            tar::EntryType::Link => {
                return Err(PackageError::UnsupportedEntry(shown(), "hard link"))
            }
            _ => return Err(PackageError::UnsupportedEntry(shown(), "special file")),
        }
    }
    if !saw_any {
        return Err(PackageError::Corrupt("tar: no entries".into()));
    }
    Ok(())
}

/// Accepts `a/b`, `./a/b`; refuses absolute paths and any `..`.
fn safe_relative_path(raw: &str) -> Result<PathBuf, PackageError> {
    let mut out = PathBuf::new();
    for comp in Path::new(raw).components() {
        match comp {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(PackageError::UnsafePath(raw.to_string()))
            }
        }
    }
    Ok(out)
}

/// A `Vec` that refuses to grow past `limit` bytes.
struct CappedVec {
    data: Vec<u8>,
    limit: u64,
}

impl Write for CappedVec {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.data.len() as u64 + buf.len() as u64 > self.limit {
            return Err(std::io::Error::new(
                std::io::ErrorKind::FileTooLarge,
                "normalized package over its limit",
            ));
        }
        self.data.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn write_tar_gz(c: &mut Collector) -> Result<Vec<u8>, PackageError> {
    let limit = c.limits.max_normalized_bytes;
    let written = (|| -> std::io::Result<Vec<u8>> {
        let out = CappedVec {
            data: Vec::new(),
            limit,
        };
        let gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        tar.mode(tar::HeaderMode::Deterministic);
        // Sorted by components, so every directory (listed or implied)
        // comes before what it holds: extraction never depends on
        // implicit creation.
        for (path, entry) in &c.entries {
            let mut header = tar::Header::new_gnu();
            header.set_mtime(0);
            match *entry {
                Entry::Dir { .. } => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    header.set_mode(0o755);
                    tar.append_data(&mut header, path, std::io::empty())?;
                }
                Entry::File {
                    executable,
                    offset,
                    len,
                } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(len);
                    header.set_mode(if executable { 0o755 } else { 0o644 });
                    c.spool.seek(SeekFrom::Start(offset))?;
                    tar.append_data(&mut header, path, (&mut c.spool).take(len))?;
                }
            }
        }
        let gz = tar.into_inner()?;
        Ok(gz.finish()?.data)
    })();
    written.map_err(|e| {
        if e.kind() == std::io::ErrorKind::FileTooLarge {
            PackageError::NormalizedTooLarge { limit }
        } else {
            PackageError::Spool(e)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: PackageLimits = PackageLimits {
        max_unpacked_bytes: 1 << 20,
        max_entries: 100,
        max_depth: 8,
        max_name_bytes: 64,
        max_path_bytes: 200,
        max_normalized_bytes: 4 << 20,
    };

    /// Entries: (name, Some(data)) a file, (name, None) a directory.
    fn tar_gz_of(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let mut t = tar::Builder::new(gz);
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            match data {
                Some(data) => {
                    h.set_size(data.len() as u64);
                    h.set_mode(0o644);
                    t.append_data(&mut h, name, *data).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    t.append_data(&mut h, name, std::io::empty()).unwrap();
                }
            }
        }
        t.into_inner().unwrap().finish().unwrap()
    }

    fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
        let entries: Vec<_> = files.iter().map(|(n, d)| (*n, Some(*d))).collect();
        tar_gz_of(&entries)
    }

    fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, data) in files {
            w.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    fn names(tgz: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(flate2::read::GzDecoder::new(tgz));
        a.entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().to_string())
            .collect()
    }

    #[test]
    fn zip_and_tar_gz_normalize_to_the_same_bytes() {
        let files: &[(&str, &[u8])] = &[("lib/util.py", b"y = 2\n"), ("handler.py", b"x = 1\n")];
        let a = normalize(&tar_gz(files), LIMITS).unwrap();
        let b = normalize(&zip_of(files), LIMITS).unwrap();
        assert_eq!(a, b);
        assert_eq!(names(&a), vec!["handler.py", "lib", "lib/util.py"]);
        // Contents survive the spool, each at its own offset.
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(a.as_slice()));
        let contents: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| std::io::read_to_string(e.unwrap()).unwrap())
            .collect();
        assert_eq!(contents, vec!["x = 1\n", "", "y = 2\n"]);
    }

    #[test]
    fn refuses_escaping_paths_and_garbage() {
        // The tar crate refuses to write ".." itself, so build the zip case.
        let evil = zip_of(&[("../evil.py", b"x")]);
        assert!(matches!(
            normalize(&evil, LIMITS),
            Err(PackageError::UnsafePath(_))
        ));
        assert!(matches!(
            normalize(b"not an archive at all", LIMITS),
            Err(PackageError::UnknownFormat)
        ));
        assert!(matches!(normalize(b"", LIMITS), Err(PackageError::Empty)));
        let mut truncated = zip_of(&[("a.py", b"hello world")]);
        truncated.truncate(20);
        assert!(matches!(
            normalize(&truncated, LIMITS),
            Err(PackageError::Corrupt(_))
        ));
        let escape = zip_of(&[("a\x1b]52;c;aGk=\x07.py", b"x")]);
        assert!(matches!(
            normalize(&escape, LIMITS),
            Err(PackageError::BadName(_))
        ));
    }

    /// A tar.gz of `size` zero bytes in one file, written as a stream so the
    /// test itself does not hold the uncompressed data.
    fn zeros_bomb(size: u64) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let mut t = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        t.append_data(&mut h, "zeros.bin", std::io::repeat(0).take(size))
            .unwrap();
        t.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn a_gzip_bomb_is_refused_without_inflating_it() {
        let bomb = zeros_bomb(64 << 20);
        assert!(bomb.len() < 200 << 10, "{} bytes", bomb.len());
        let err = normalize(&bomb, LIMITS).unwrap_err();
        assert!(matches!(err, PackageError::TooLarge { limit } if limit == 1 << 20));
        assert!(err.is_over_limit());
        assert!(err.to_string().contains("max_unpacked_bytes"), "{err}");
        // Exactly at the limit passes: the check is not off by one.
        let exact = zeros_bomb(1 << 20);
        assert!(normalize(&exact, LIMITS).is_ok());
    }

    #[test]
    fn a_zip_bomb_is_refused() {
        // Many entries, each highly compressible: together over the limit.
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        let chunk = vec![0u8; 256 << 10];
        for i in 0..8 {
            w.start_file(format!("z{i}.bin"), options).unwrap();
            w.write_all(&chunk).unwrap();
        }
        let bomb = w.finish().unwrap().into_inner();
        assert!(matches!(
            normalize(&bomb, LIMITS),
            Err(PackageError::TooLarge { .. })
        ));
    }

    #[test]
    fn entry_count_includes_implied_directories() {
        let names: Vec<String> = (0..101).map(|i| format!("f{i}.py")).collect();
        let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
        let err = normalize(&tar_gz(&files), LIMITS).unwrap_err();
        assert!(matches!(err, PackageError::TooManyEntries { limit: 100 }));
        assert!(normalize(&tar_gz(&files[..100]), LIMITS).is_ok());
        // 60 files in 60 directories: 120 entries.
        let nested: Vec<String> = (0..60).map(|i| format!("d{i}/f.py")).collect();
        let files: Vec<(&str, &[u8])> = nested.iter().map(|n| (n.as_str(), &b"x"[..])).collect();
        assert!(matches!(
            normalize(&tar_gz(&files), LIMITS),
            Err(PackageError::TooManyEntries { .. })
        ));
        // Too many zip entries are refused from the end record, before
        // the central directory is read.
        let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
        let many = zip_of(&files);
        assert_eq!(zip_declared_entries(&many), 101);
        assert!(matches!(
            normalize(&many, LIMITS),
            Err(PackageError::TooManyEntries { .. })
        ));
        assert_eq!(zip_declared_entries(&zip_of(&files[..3])), 3);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = ["d"; 9].join("/") + "/f.py";
        let err = normalize(&tar_gz(&[(&deep, b"x")]), LIMITS).unwrap_err();
        assert!(
            matches!(err, PackageError::TooDeep { limit: 8, .. }),
            "{err}"
        );
        // Directories alone count too (2,100 nested directories, finding 9).
        let dir = ["d"; 9].join("/");
        let err = normalize(&tar_gz_of(&[(&dir, None), ("f.py", Some(b"x"))]), LIMITS);
        assert!(matches!(err, Err(PackageError::TooDeep { .. })));
        let ok = ["d"; 7].join("/") + "/f.py";
        assert!(normalize(&tar_gz(&[(&ok, b"x")]), LIMITS).is_ok());
    }

    #[test]
    fn long_names_and_paths_are_refused() {
        let long = "n".repeat(65);
        let err = normalize(&tar_gz(&[(&long, b"x")]), LIMITS).unwrap_err();
        assert!(
            matches!(err, PackageError::NameTooLong { limit: 64, .. }),
            "{err}"
        );
        let path = vec!["p".repeat(60); 4].join("/");
        let err = normalize(&tar_gz(&[(&path, b"x")]), LIMITS).unwrap_err();
        assert!(
            matches!(err, PackageError::PathTooLong { limit: 200, .. }),
            "{err}"
        );
        // The default refuses a 256-byte name (finding 9), accepts 255.
        let defaults = PackageLimits::defaults_for(64 << 20);
        let name = "n".repeat(256);
        assert!(matches!(
            normalize(&tar_gz(&[(&name, b"x")]), defaults),
            Err(PackageError::NameTooLong { .. })
        ));
        assert!(normalize(&tar_gz(&[(&name[1..], b"x")]), defaults).is_ok());
    }

    #[test]
    fn file_beside_directory_is_refused_in_either_order() {
        for entries in [
            vec![("a", Some(&b"x"[..])), ("a/b", Some(&b"y"[..]))],
            vec![("a/b", Some(&b"y"[..])), ("a", Some(&b"x"[..]))],
            vec![("a", None), ("a", Some(&b"x"[..]))],
            vec![("a", Some(&b"x"[..])), ("a", None)],
            vec![("a/b/c", Some(&b"x"[..])), ("a/b", Some(&b"x"[..]))],
        ] {
            let err = normalize(&tar_gz_of(&entries), LIMITS).unwrap_err();
            assert!(
                matches!(err, PackageError::FileDirConflict { .. }),
                "{entries:?}: {err}"
            );
            assert!(!err.is_over_limit());
        }
        // A sibling whose name merely starts with the file's is fine.
        assert!(normalize(&tar_gz(&[("a", b"x"), ("a0/b", b"y")]), LIMITS).is_ok());
    }

    #[test]
    fn duplicates_and_special_entries_are_refused() {
        let err = normalize(&tar_gz(&[("a.py", b"x"), ("./a.py", b"y")]), LIMITS).unwrap_err();
        assert!(matches!(err, PackageError::Duplicate(_)), "{err}");
        // A directory listed twice, or after a file implied it, is harmless.
        let ok = tar_gz_of(&[("d", None), ("d/f.py", Some(b"x")), ("d", None)]);
        assert_eq!(names(&normalize(&ok, LIMITS).unwrap()), vec!["d", "d/f.py"]);

        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut t = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        t.append_link(&mut h, "link", "/etc/shadow").unwrap();
        let link = t.into_inner().unwrap().finish().unwrap();
        assert!(matches!(
            normalize(&link, LIMITS),
            Err(PackageError::UnsupportedEntry(_, "symlink"))
        ));
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut t = tar::Builder::new(gz);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Fifo);
        h.set_size(0);
        t.append_data(&mut h, "fifo", std::io::empty()).unwrap();
        let fifo = t.into_inner().unwrap().finish().unwrap();
        assert!(matches!(
            normalize(&fifo, LIMITS),
            Err(PackageError::UnsupportedEntry(_, "special file"))
        ));
    }

    #[test]
    fn an_oversized_normalized_package_is_refused() {
        // Incompressible content re-compresses to about its own size.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..200_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let limits = PackageLimits {
            max_normalized_bytes: 100_000,
            ..LIMITS
        };
        assert!(matches!(
            normalize(&tar_gz(&[("noise.bin", &noise)]), limits),
            Err(PackageError::NormalizedTooLarge { limit: 100_000 })
        ));
    }

    #[test]
    fn settings_default_from_the_upload_limit() {
        let limits = PackageSettings::default().limits(64 << 20);
        assert_eq!(limits.max_unpacked_bytes, 256 << 20);
        assert_eq!(limits.max_normalized_bytes, 128 << 20);
        let s: PackageSettings =
            toml::from_str("max_depth = 4\nmax_concurrent_deploys = 2").unwrap();
        assert_eq!(s.limits(1 << 20).max_depth, 4);
        assert_eq!(s.max_concurrent_deploys(), 2);
        assert!(toml::from_str::<PackageSettings>("max_dpeth = 4").is_err());
    }
}
