//! Turning a deploy SOURCE into the bytes of a function package, and reading
//! a runtime definition file.
//!
//! A directory is packed here into a tar.gz with relative paths in sorted
//! order, zeroed timestamps and owners, so the same tree always yields the
//! same bytes (and so the same content digest on the server). A .zip or
//! .tar.gz file is sent as is: the server normalizes and validates it.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use flate2::{Compression, GzBuilder};
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    // Not a #[source]: the message already carries it, and anyhow's
    // `{:#}` would print it twice.
    #[error("cannot read {path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error("{path} is neither a directory, a .zip nor a .tar.gz/.tgz file")]
    UnknownFormat { path: PathBuf },
    #[error("{path} is empty: nothing to deploy")]
    Empty { path: PathBuf },
    #[error("cannot parse {path}: {message}")]
    RuntimeFile { path: PathBuf, message: String },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> PackError + '_ {
    move |error| PackError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// What will be uploaded as the package.
#[derive(Debug)]
pub enum Package {
    /// An archive file sent as is.
    File {
        path: PathBuf,
        size: u64,
        kind: ArchiveKind,
    },
    /// A directory packed in memory into a tar.gz.
    Packed {
        bytes: Vec<u8>,
        files: usize,
        skipped: Vec<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    Zip,
    TarGz,
}

impl std::fmt::Display for ArchiveKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ArchiveKind::Zip => "zip",
            ArchiveKind::TarGz => "tar.gz",
        })
    }
}

/// Recognizes an archive by its magic bytes, which is what the server does
/// too, so a misnamed file is judged by its content.
pub fn detect_archive(header: &[u8]) -> Option<ArchiveKind> {
    if header.starts_with(b"PK\x03\x04") || header.starts_with(b"PK\x05\x06") {
        Some(ArchiveKind::Zip)
    } else if header.starts_with(&[0x1f, 0x8b]) {
        Some(ArchiveKind::TarGz)
    } else {
        None
    }
}

/// Resolves a deploy SOURCE: packs a directory, or checks that a file is a
/// zip or gzip archive.
pub fn prepare_source(source: &Path) -> Result<Package, PackError> {
    let metadata = fs::metadata(source).map_err(io_error(source))?;
    if metadata.is_dir() {
        let (bytes, files, skipped) = pack_directory(source)?;
        if files == 0 {
            return Err(PackError::Empty {
                path: source.to_path_buf(),
            });
        }
        return Ok(Package::Packed {
            bytes,
            files,
            skipped,
        });
    }
    let mut header = [0u8; 4];
    let mut file = fs::File::open(source).map_err(io_error(source))?;
    let read = read_up_to(&mut file, &mut header).map_err(io_error(source))?;
    let kind = detect_archive(&header[..read]).ok_or_else(|| PackError::UnknownFormat {
        path: source.to_path_buf(),
    })?;
    Ok(Package::File {
        path: source.to_path_buf(),
        size: metadata.len(),
        kind,
    })
}

fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Packs `root` into a deterministic tar.gz. Returns the bytes, the number
/// of regular files and the entries skipped (symlinks, sockets, devices:
/// following a symlink could ship files from outside the tree).
pub fn pack_directory(root: &Path) -> Result<(Vec<u8>, usize, Vec<PathBuf>), PackError> {
    // mtime 0 in the gzip header too, or identical trees would differ.
    let encoder = GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), Compression::default());
    let mut builder = tar::Builder::new(encoder);
    let mut files = 0;
    let mut skipped = Vec::new();
    let ignored = ignore_rules(root)?;
    let walk = Walk {
        root,
        ignored: &ignored,
    };
    walk.add_directory(&mut builder, Path::new(""), &mut files, &mut skipped)?;
    let encoder = builder.into_inner().map_err(io_error(root))?;
    let bytes = encoder.finish().map_err(io_error(root))?;
    Ok((bytes, files, skipped))
}

/// Left out of every package unless `.faasignore` brings them back
/// (`!__pycache__/`): version control, bytecode compiled for the
/// developer's Python, virtual environments (their symlinks point into the
/// developer's machine), and the ignore file itself.
pub const DEFAULT_IGNORED: [&str; 4] = [".git/", "__pycache__/", ".venv/", "/.faasignore"];

/// The default rules, then `.faasignore` at the root (gitignore syntax).
fn ignore_rules(root: &Path) -> Result<ignore::gitignore::Gitignore, PackError> {
    let mut builder = ignore::gitignore::GitignoreBuilder::new(root);
    for rule in DEFAULT_IGNORED {
        builder.add_line(None, rule).expect("a valid default rule");
    }
    let file = root.join(".faasignore");
    if file.is_file() {
        if let Some(error) = builder.add(&file) {
            return Err(PackError::RuntimeFile {
                path: file,
                message: error.to_string(),
            });
        }
    }
    builder.build().map_err(|e| PackError::RuntimeFile {
        path: file,
        message: e.to_string(),
    })
}

struct Walk<'a> {
    root: &'a Path,
    ignored: &'a ignore::gitignore::Gitignore,
}

impl Walk<'_> {
    fn add_directory<W: Write>(
        &self,
        builder: &mut tar::Builder<W>,
        relative: &Path,
        files: &mut usize,
        skipped: &mut Vec<PathBuf>,
    ) -> Result<(), PackError> {
        let root = self.root;
        let dir = root.join(relative);
        let mut entries = fs::read_dir(&dir)
            .map_err(io_error(&dir))?
            .map(|entry| entry.map(|e| e.file_name()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(io_error(&dir))?;
        // Byte order of names, not the filesystem's order: determinism.
        entries.sort();
        for name in entries {
            let rel = relative.join(&name);
            let full = root.join(&rel);
            // symlink_metadata: a symlink is reported as such, not followed.
            let metadata = fs::symlink_metadata(&full).map_err(io_error(&full))?;
            let file_type = metadata.file_type();
            if self.ignored.matched(&rel, file_type.is_dir()).is_ignore() {
                continue;
            }
            if file_type.is_dir() {
                let mut header = normalized_header(&metadata, tar::EntryType::Directory);
                header.set_size(0);
                builder
                    .append_data(&mut header, &rel, io::empty())
                    .map_err(io_error(&full))?;
                self.add_directory(builder, &rel, files, skipped)?;
            } else if file_type.is_file() {
                let mut header = normalized_header(&metadata, tar::EntryType::Regular);
                header.set_size(metadata.len());
                let file = fs::File::open(&full).map_err(io_error(&full))?;
                builder
                    .append_data(&mut header, &rel, file)
                    .map_err(io_error(&full))?;
                *files += 1;
            } else {
                skipped.push(rel);
            }
        }
        Ok(())
    }
}

/// A header carrying only what matters to a function: its type and whether
/// it is executable. Owners, times and other mode bits of the developer's
/// machine would make the package differ between machines.
fn normalized_header(metadata: &fs::Metadata, kind: tar::EntryType) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    let executable = is_executable(metadata);
    let mode = if kind == tar::EntryType::Directory || executable {
        0o755
    } else {
        0o644
    };
    header.set_mode(mode);
    header
}

#[cfg(unix)]
fn is_executable(metadata: &fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    metadata.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_metadata: &fs::Metadata) -> bool {
    false
}

/// A runtime definition file (`runtimes/<name>/runtime.toml`). Unknown keys
/// are accepted so the file can carry build hints for other tools.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
pub struct RuntimeFile {
    pub name: Option<String>,
    pub path: Option<String>,
    pub dependencies: Option<String>,
    pub run: Option<String>,
    /// The handler of functions deployed without one.
    pub default_handler: Option<String>,
    /// Run at each deploy in a build container (dependencies, bytecode).
    pub build: Option<String>,
    /// The build runs only for packages with a dependency file.
    pub build_only_with_dependencies: Option<bool>,
}

pub fn parse_runtime_file(path: &Path, text: &str) -> Result<RuntimeFile, PackError> {
    toml::from_str(text).map_err(|e| PackError::RuntimeFile {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

pub fn read_runtime_file(path: &Path) -> Result<RuntimeFile, PackError> {
    let text = fs::read_to_string(path).map_err(io_error(path))?;
    parse_runtime_file(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn list_tar_gz(bytes: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
        let decoder = flate2::read::GzDecoder::new(Cursor::new(bytes));
        let mut archive = tar::Archive::new(decoder);
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let mut entry = entry.unwrap();
                let path = entry.path().unwrap().to_string_lossy().into_owned();
                let mode = entry.header().mode().unwrap();
                assert_eq!(entry.header().mtime().unwrap(), 0);
                assert_eq!(entry.header().uid().unwrap(), 0);
                let mut content = Vec::new();
                entry.read_to_end(&mut content).unwrap();
                (path, mode, content)
            })
            .collect()
    }

    fn sample_tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("handler.py"),
            b"def handler(e, c): return e\n",
        )
        .unwrap();
        fs::create_dir(dir.path().join("lib")).unwrap();
        fs::write(dir.path().join("lib/b.txt"), b"b").unwrap();
        fs::write(dir.path().join("lib/a.txt"), b"a").unwrap();
        fs::write(dir.path().join("run.sh"), b"#!/bin/sh\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(dir.path().join("run.sh"), fs::Permissions::from_mode(0o700))
                .unwrap();
            std::os::unix::fs::symlink("/etc/passwd", dir.path().join("leak")).unwrap();
        }
        dir
    }

    #[test]
    fn packs_relative_sorted_normalized() {
        let dir = sample_tree();
        let (bytes, files, skipped) = pack_directory(dir.path()).unwrap();
        assert_eq!(files, 4);
        let entries = list_tar_gz(&bytes);
        let names: Vec<_> = entries.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["handler.py", "lib", "lib/a.txt", "lib/b.txt", "run.sh"]
        );
        assert_eq!(entries[0].2, b"def handler(e, c): return e\n");
        assert_eq!(entries[0].1, 0o644);
        assert_eq!(entries[1].1, 0o755);
        assert_eq!(entries[4].1, 0o755, "exec bit kept");
        #[cfg(unix)]
        assert_eq!(skipped, [PathBuf::from("leak")]);
        let _ = skipped;
    }

    #[test]
    fn version_control_bytecode_venvs_and_faasignore_matches_stay_out() {
        let dir = sample_tree();
        let root = dir.path();
        for d in [
            ".git/objects",
            "__pycache__",
            "lib/__pycache__",
            ".venv/bin",
            "data",
            "keep",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join(".git/objects/x"), b"x").unwrap();
        fs::write(root.join("__pycache__/handler.cpython-311.pyc"), b"x").unwrap();
        fs::write(root.join("lib/__pycache__/a.cpython-311.pyc"), b"x").unwrap();
        fs::write(root.join(".venv/bin/python"), b"x").unwrap();
        fs::write(root.join("data/big.csv"), b"x").unwrap();
        fs::write(root.join("notes.md"), b"x").unwrap();
        fs::write(root.join("keep/notes.md"), b"x").unwrap();
        fs::write(
            root.join(".faasignore"),
            b"# docs and data\n/notes.md\ndata/\n",
        )
        .unwrap();
        let (bytes, _, _) = pack_directory(root).unwrap();
        let names: Vec<_> = list_tar_gz(&bytes).into_iter().map(|(n, _, _)| n).collect();
        assert_eq!(
            names,
            [
                "handler.py",
                "keep",
                "keep/notes.md",
                "lib",
                "lib/a.txt",
                "lib/b.txt",
                "run.sh"
            ]
        );
        // A rule can bring a default back.
        fs::write(root.join(".faasignore"), b"!__pycache__/\n").unwrap();
        let (bytes, _, _) = pack_directory(root).unwrap();
        let names: Vec<_> = list_tar_gz(&bytes).into_iter().map(|(n, _, _)| n).collect();
        assert!(
            names.contains(&"lib/__pycache__/a.cpython-311.pyc".to_string()),
            "{names:?}"
        );
        assert!(!names.iter().any(|n| n.starts_with(".git")), "{names:?}");
    }

    #[test]
    fn packing_is_deterministic() {
        let dir = sample_tree();
        let (first, _, _) = pack_directory(dir.path()).unwrap();
        // Touch the files: times must not leak into the package.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        fs::write(dir.path().join("lib/a.txt"), b"a").unwrap();
        let (second, _, _) = pack_directory(dir.path()).unwrap();
        assert_eq!(first, second);
    }

    #[test]
    fn source_kinds() {
        let dir = sample_tree();
        assert!(matches!(
            prepare_source(dir.path()).unwrap(),
            Package::Packed { files: 4, .. }
        ));

        let zip = dir.path().join("f.zip");
        fs::write(&zip, b"PK\x03\x04rest").unwrap();
        match prepare_source(&zip).unwrap() {
            Package::File { kind, size, .. } => {
                assert_eq!(kind, ArchiveKind::Zip);
                assert_eq!(size, 8);
            }
            other => panic!("{other:?}"),
        }
        let tgz = dir.path().join("f.tgz");
        fs::write(&tgz, [0x1f, 0x8b, 8, 0]).unwrap();
        assert!(matches!(
            prepare_source(&tgz).unwrap(),
            Package::File {
                kind: ArchiveKind::TarGz,
                ..
            }
        ));

        let text = dir.path().join("notes.txt");
        fs::write(&text, b"hi").unwrap();
        assert!(matches!(
            prepare_source(&text),
            Err(PackError::UnknownFormat { .. })
        ));

        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            prepare_source(empty.path()),
            Err(PackError::Empty { .. })
        ));
        assert!(matches!(
            prepare_source(&dir.path().join("missing")),
            Err(PackError::Io { .. })
        ));
    }

    #[test]
    fn runtime_file() {
        let text = r#"
name = "python3"
path = "/var/task"
dependencies = "pip install -r requirements.txt -t ."
run = "python3 /opt/faas/bootstrap.py"
build = "python3 -I /opt/faas/build.py"
[image]
suite = "bookworm"
"#;
        let parsed = parse_runtime_file(Path::new("rt.toml"), text).unwrap();
        assert_eq!(parsed.name.as_deref(), Some("python3"));
        assert_eq!(parsed.path.as_deref(), Some("/var/task"));
        assert_eq!(
            parsed.run.as_deref(),
            Some("python3 /opt/faas/bootstrap.py")
        );
        assert_eq!(
            parsed.build.as_deref(),
            Some("python3 -I /opt/faas/build.py")
        );
        assert!(parse_runtime_file(Path::new("rt.toml"), "name = ").is_err());
    }
}
