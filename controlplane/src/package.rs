//! Function packages: what users upload (a zip or a tar.gz, or a plain tar)
//! is checked and rewritten into one normalized, deterministic tar.gz, so the
//! agents only ever extract one trusted format: regular files and
//! directories with relative paths, fixed owners, modes and times.

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};
use std::path::{Component, Path, PathBuf};

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
    #[error("package entry {0:?} is a {1}; only regular files and directories are supported")]
    UnsupportedEntry(String, &'static str),
    #[error("package unpacks to more than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("package has more than {limit} entries")]
    TooManyEntries { limit: usize },
    #[error("package contains no files")]
    NoFiles,
}

/// Limits on what a package may unpack to (zip bombs).
#[derive(Clone, Copy, Debug)]
pub struct PackageLimits {
    pub max_unpacked_bytes: u64,
    pub max_entries: usize,
}

enum Entry {
    Dir,
    File { executable: bool, data: Vec<u8> },
}

struct Collector {
    entries: BTreeMap<PathBuf, Entry>,
    total: u64,
    limits: PackageLimits,
}

impl Collector {
    fn add(&mut self, raw_path: &str, entry: Entry) -> Result<(), PackageError> {
        let path = safe_relative_path(raw_path)?;
        if path.as_os_str().is_empty() {
            return Ok(()); // "./" itself
        }
        if let Entry::File { data, .. } = &entry {
            self.total += data.len() as u64;
            if self.total > self.limits.max_unpacked_bytes {
                return Err(PackageError::TooLarge {
                    limit: self.limits.max_unpacked_bytes,
                });
            }
        }
        self.entries.insert(path, entry);
        if self.entries.len() > self.limits.max_entries {
            return Err(PackageError::TooManyEntries {
                limit: self.limits.max_entries,
            });
        }
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

/// Checks a package and returns it as a normalized tar.gz.
pub fn normalize(bytes: &[u8], limits: PackageLimits) -> Result<Vec<u8>, PackageError> {
    if bytes.is_empty() {
        return Err(PackageError::Empty);
    }
    let mut collector = Collector {
        entries: BTreeMap::new(),
        total: 0,
        limits,
    };
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        read_zip(bytes, &mut collector)?;
    } else if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut tar_bytes = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .take(limits.max_unpacked_bytes + 64 * 1024 * 1024)
            .read_to_end(&mut tar_bytes)
            .map_err(|e| PackageError::Corrupt(format!("gzip: {e}")))?;
        read_tar(&tar_bytes, &mut collector)?;
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
    write_tar_gz(&collector.entries).map_err(|e| PackageError::Corrupt(e.to_string()))
}

fn read_zip(bytes: &[u8], c: &mut Collector) -> Result<(), PackageError> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| PackageError::Corrupt(format!("zip: {e}")))?;
    for i in 0..zip.len() {
        let mut file = zip
            .by_index(i)
            .map_err(|e| PackageError::Corrupt(format!("zip entry {i}: {e}")))?;
        let name = file.name().to_string();
        if file.is_dir() {
            c.add(&name, Entry::Dir)?;
            continue;
        }
        if file.is_symlink() {
            return Err(PackageError::UnsupportedEntry(name, "symlink"));
        }
        let executable = file.unix_mode().is_some_and(|m| m & 0o111 != 0);
        let mut data = Vec::with_capacity(file.size().min(c.limits.max_unpacked_bytes) as usize);
        (&mut file)
            .take(c.limits.max_unpacked_bytes + 1)
            .read_to_end(&mut data)
            .map_err(|e| PackageError::Corrupt(format!("zip entry {name:?}: {e}")))?;
        c.add(&name, Entry::File { executable, data })?;
    }
    Ok(())
}

fn read_tar(bytes: &[u8], c: &mut Collector) -> Result<(), PackageError> {
    let mut archive = tar::Archive::new(bytes);
    let entries = archive
        .entries()
        .map_err(|e| PackageError::Corrupt(format!("tar: {e}")))?;
    let mut saw_any = false;
    for entry in entries {
        let mut entry = entry.map_err(|e| PackageError::Corrupt(format!("tar: {e}")))?;
        saw_any = true;
        let name = String::from_utf8_lossy(&entry.path_bytes()).to_string();
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => c.add(&name, Entry::Dir)?,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let executable = entry.header().mode().is_ok_and(|m| m & 0o111 != 0);
                let mut data = Vec::new();
                entry
                    .read_to_end(&mut data)
                    .map_err(|e| PackageError::Corrupt(format!("tar entry {name:?}: {e}")))?;
                c.add(&name, Entry::File { executable, data })?;
            }
            // Metadata entries carry no files of their own.
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName => {}
            tar::EntryType::Symlink => return Err(PackageError::UnsupportedEntry(name, "symlink")),
            tar::EntryType::Link => return Err(PackageError::UnsupportedEntry(name, "hard link")),
            _ => return Err(PackageError::UnsupportedEntry(name, "special file")),
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

fn write_tar_gz(entries: &BTreeMap<PathBuf, Entry>) -> std::io::Result<Vec<u8>> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    // Parent directories first: entries are sorted, and a missing parent is
    // added explicitly so extraction never depends on implicit creation.
    let mut dirs_written = std::collections::BTreeSet::new();
    for (path, entry) in entries {
        for ancestor in path
            .ancestors()
            .skip(1)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            if ancestor.as_os_str().is_empty() || !dirs_written.insert(ancestor.to_path_buf()) {
                continue;
            }
            append_dir(&mut tar, ancestor)?;
        }
        match entry {
            Entry::Dir => {
                if dirs_written.insert(path.clone()) {
                    append_dir(&mut tar, path)?;
                }
            }
            Entry::File { executable, data } => {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
                header.set_mode(if *executable { 0o755 } else { 0o644 });
                header.set_mtime(0);
                tar.append_data(&mut header, path, data.as_slice())?;
            }
        }
    }
    let gz = tar.into_inner()?;
    let mut gz_bytes = gz.finish()?;
    gz_bytes.flush()?;
    Ok(gz_bytes)
}

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, path: &Path) -> std::io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_size(0);
    header.set_mode(0o755);
    header.set_mtime(0);
    tar.append_data(&mut header, path, std::io::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: PackageLimits = PackageLimits {
        max_unpacked_bytes: 1 << 20,
        max_entries: 100,
    };

    fn tar_gz(files: &[(&str, &[u8])]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut t = tar::Builder::new(gz);
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            t.append_data(&mut h, name, *data).unwrap();
        }
        t.into_inner().unwrap().finish().unwrap()
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
        let files: &[(&str, &[u8])] = &[("handler.py", b"x = 1\n"), ("lib/util.py", b"y = 2\n")];
        let a = normalize(&tar_gz(files), LIMITS).unwrap();
        let b = normalize(&zip_of(files), LIMITS).unwrap();
        assert_eq!(a, b);
        assert_eq!(names(&a), vec!["handler.py", "lib", "lib/util.py"]);
    }

    #[test]
    fn refuses_escaping_paths_garbage_and_bombs() {
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
        let big = vec![0u8; 2 << 20];
        assert!(matches!(
            normalize(&tar_gz(&[("big.bin", &big)]), LIMITS),
            Err(PackageError::TooLarge { .. })
        ));
    }
}
