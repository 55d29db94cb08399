//! Envelope encryption of secrets at rest: each value sealed with a data
//! key of its own (AES-256-GCM, aws-lc-rs), the data key sealed by a
//! key-encryption key (KEK) that never enters etcd. Whoever reads etcd
//! gets ciphertext; whoever holds the KEK file and etcd gets the values.
//!
//! The KEK comes from a [`KeyProvider`]: a file here ([`FileKey`]); a KMS
//! or an HSM is another implementation of the same two calls.

use std::path::Path;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};

use crate::PkiError;

const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The record was wrapped by another key than the provider's.
    #[error("sealed with key {found}, this control plane holds key {held}: give every replica the same --secrets-key-file")]
    WrongKey { found: String, held: String },
    /// Tampered with, moved under another name, or truncated.
    #[error("the sealed value does not open (tampered with, or stored under another name)")]
    Corrupt,
    #[error("the key-encryption key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("no randomness: {0}")]
    Random(String),
}

/// Wraps and unwraps data keys.
pub trait KeyProvider: Send + Sync {
    /// Names the KEK in records (never secret).
    fn key_id(&self) -> &str;
    /// Seals a data key; `aad` binds it to its record.
    fn wrap(&self, data_key: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError>;
    fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError>;
}

/// A value as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub wrapped_key: Vec<u8>,
    pub key_id: String,
}

fn random<const N: usize>() -> Result<[u8; N], SealError> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|e| SealError::Random(e.to_string()))?;
    Ok(bytes)
}

fn aes(key: &[u8]) -> Result<LessSafeKey, SealError> {
    UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| SealError::Corrupt)
}

/// `nonce ‖ ciphertext+tag` of `plain` under `key`.
fn seal_with(key: &[u8], plain: &[u8], aad: &[u8]) -> Result<(Vec<u8>, Vec<u8>), SealError> {
    let nonce = random::<NONCE_LEN>()?;
    let mut data = plain.to_vec();
    aes(key)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut data,
        )
        .map_err(|_| SealError::Corrupt)?;
    Ok((nonce.to_vec(), data))
}

fn open_with(key: &[u8], nonce: &[u8], sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Corrupt)?;
    let mut data = sealed.to_vec();
    let plain = aes(key)?
        .open_in_place(nonce, Aad::from(aad), &mut data)
        .map_err(|_| SealError::Corrupt)?;
    Ok(plain.to_vec())
}

/// Seals `value` for the record named `aad` (e.g. "namespace/name").
pub fn seal(provider: &dyn KeyProvider, value: &[u8], aad: &[u8]) -> Result<Sealed, SealError> {
    let data_key = random::<KEY_LEN>()?;
    let (nonce, ciphertext) = seal_with(&data_key, value, aad)?;
    Ok(Sealed {
        nonce,
        ciphertext,
        wrapped_key: provider.wrap(&data_key, aad)?,
        key_id: provider.key_id().to_string(),
    })
}

/// The value of a record sealed for `aad`.
pub fn open(provider: &dyn KeyProvider, sealed: &Sealed, aad: &[u8]) -> Result<Vec<u8>, SealError> {
    if sealed.key_id != provider.key_id() {
        return Err(SealError::WrongKey {
            found: sealed.key_id.clone(),
            held: provider.key_id().to_string(),
        });
    }
    let data_key = provider.unwrap(&sealed.wrapped_key, aad)?;
    open_with(&data_key, &sealed.nonce, &sealed.ciphertext, aad)
}

/// A KEK kept in a file: 64 hex digits (32 random bytes), mode 0600.
pub struct FileKey {
    key: [u8; KEY_LEN],
    id: String,
}

impl std::fmt::Debug for FileKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileKey").field("id", &self.id).finish()
    }
}

impl FileKey {
    fn from_bytes(key: [u8; KEY_LEN]) -> FileKey {
        use sha2::Digest;
        let id = hex::encode(sha2::Sha256::digest(key))[..16].to_string();
        FileKey { key, id }
    }

    /// Reads the key; refuses a file other users may read.
    pub fn load(path: &Path) -> Result<FileKey, SealError> {
        let bad = |reason: String| SealError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(bad(format!(
                "mode {:o} lets other users read it: chmod 600",
                meta.permissions().mode() & 0o777
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let bytes = hex::decode(text.trim()).map_err(|_| bad("not hex".into()))?;
        let key: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| bad(format!("not {KEY_LEN} bytes (64 hex digits)")))?;
        Ok(FileKey::from_bytes(key))
    }

    /// Makes the key file if it is missing (0600), then reads it.
    pub fn ensure(path: &Path) -> Result<FileKey, PkiError> {
        if crate::files::read_optional(path)?.is_none() {
            let key = random::<KEY_LEN>().map_err(|e| PkiError::Tls(e.to_string()))?;
            crate::files::write_private(path, &format!("{}\n", hex::encode(key)))?;
        }
        FileKey::load(path).map_err(|e| PkiError::Io(std::io::Error::other(e.to_string())))
    }
}

impl KeyProvider for FileKey {
    fn key_id(&self) -> &str {
        &self.id
    }

    fn wrap(&self, data_key: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let (nonce, sealed) = seal_with(&self.key, data_key, aad)?;
        Ok([nonce, sealed].concat())
    }

    fn unwrap(&self, wrapped: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        if wrapped.len() < NONCE_LEN {
            return Err(SealError::Corrupt);
        }
        let (nonce, sealed) = wrapped.split_at(NONCE_LEN);
        open_with(&self.key, nonce, sealed, aad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_with_its_key_and_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        let key = FileKey::ensure(&path).unwrap();
        let again = FileKey::ensure(&path).unwrap();
        assert_eq!(key.key_id(), again.key_id(), "ensure keeps the file");
        let sealed = seal(&key, b"hunter2", b"team-a/db").unwrap();
        assert!(!sealed.ciphertext.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(open(&again, &sealed, b"team-a/db").unwrap(), b"hunter2");
        // Moved under another name: does not open.
        assert!(matches!(
            open(&key, &sealed, b"team-b/db"),
            Err(SealError::Corrupt)
        ));
        // Tampered with: does not open.
        let mut bad = sealed.clone();
        bad.ciphertext[0] ^= 1;
        assert!(matches!(
            open(&key, &bad, b"team-a/db"),
            Err(SealError::Corrupt)
        ));
        // Another key: said so.
        let other = FileKey::ensure(&dir.path().join("other.key")).unwrap();
        assert!(matches!(
            open(&other, &sealed, b"team-a/db"),
            Err(SealError::WrongKey { .. })
        ));
        // Two seals of one value differ (fresh data key and nonce).
        assert_ne!(seal(&key, b"hunter2", b"team-a/db").unwrap(), sealed);
    }

    #[test]
    fn a_key_file_others_may_read_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "00".repeat(32)).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(FileKey::load(&path).is_err());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(FileKey::load(&path).is_ok());
        std::fs::write(&path, "abc").unwrap();
        assert!(FileKey::load(&path).is_err());
    }
}
