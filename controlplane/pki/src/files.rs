//! Credential files: written beside and renamed over, keys 0600.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::PkiError;

pub(crate) fn read_optional(path: &Path) -> Result<Option<String>, PkiError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn write_private(path: &Path, text: &str) -> Result<(), PkiError> {
    write_atomically(path, text, 0o600)
}

pub(crate) fn write_public(path: &Path, text: &str) -> Result<(), PkiError> {
    write_atomically(path, text, 0o644)
}

/// Written beside and renamed over: a reader sees the old file or the new
/// one, never half of one.
fn write_atomically(path: &Path, text: &str, mode: u32) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    Ok(())
}
