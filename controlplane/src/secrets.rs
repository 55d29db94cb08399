//! Secrets as the control plane holds them: sealed records in etcd
//! (`faas_pki::sealing`), a copy of the records on every replica (listed at
//! start, followed, listed again every [`RELOAD_EVERY`]), and the values
//! opened on demand, when a call or a preload needs them, kept opened per
//! (secret, version) so the hot path decrypts once per rotation.
//!
//! A function's references carry the secret version current when that
//! version of the function was made; a call gets that version or a newer
//! one. A replica whose copy is older than a reference reads etcd (a call)
//! or skips the preload (the watch catches up).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use faas_pki::sealing::{self, KeyProvider, SealError, Sealed};
use faas_proto::namespaces::function_key;
use faas_proto::v1::{Function, Secret, SecretRecord, SecretValue};
use tracing::warn;

use crate::store::{Change, Kind, Store, StoreError};

const RELOAD_EVERY: Duration = Duration::from_secs(10);
/// Largest value a secret may hold.
pub const MAX_SECRET_BYTES: usize = 64 << 10;
/// Most secrets one function references.
pub const MAX_SECRETS_PER_FUNCTION: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("this cluster keeps no secrets: the control plane has no key-encryption key (--secrets-key-file; deploy/local/up.sh sets one)")]
    NoKey,
    #[error("secret {0:?} does not exist in the function's namespace")]
    Missing(String),
    #[error("secret {name:?}: {source}")]
    Seal { name: String, source: SealError },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The etcd name of a secret (as a function's key: bare in "default").
pub fn secret_key(namespace: &str, name: &str) -> String {
    function_key(namespace, name)
}

/// Opened values by (secret key, version).
type Opened = HashMap<(String, u64), Arc<Vec<u8>>>;

#[derive(Clone, Default)]
pub struct Secrets {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    key: Option<Arc<dyn KeyProvider>>,
    records: RwLock<HashMap<String, SecretRecord>>,
    opened: Mutex<Opened>,
    changes: std::sync::atomic::AtomicU64,
}

fn sealed_of(record: &SecretRecord) -> Sealed {
    Sealed {
        nonce: record.nonce.clone(),
        ciphertext: record.ciphertext.clone(),
        wrapped_key: record.wrapped_key.clone(),
        key_id: record.key_id.clone(),
    }
}

impl Secrets {
    /// Secrets with `key` (None: the cluster keeps none), not following
    /// etcd (tests of pure logic).
    pub fn with_key(key: Option<Arc<dyn KeyProvider>>) -> Secrets {
        Secrets {
            inner: Arc::new(Inner {
                key,
                ..Default::default()
            }),
        }
    }

    /// Lists the records, then keeps them current in the background.
    pub async fn load(
        store: &Store,
        key: Option<Arc<dyn KeyProvider>>,
    ) -> Result<Secrets, StoreError> {
        let secrets = Secrets::with_key(key);
        secrets.reload(store).await?;
        let (t, s) = (secrets.clone(), store.clone());
        tokio::spawn(async move {
            s.follow::<SecretRecord>(Kind::Secret, |change| {
                match change {
                    Change::Put(r) => t.put(r),
                    Change::Deleted(key) => t.remove(&key),
                }
                true
            })
            .await
        });
        let (t, s) = (secrets.clone(), store.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RELOAD_EVERY).await;
                if let Err(e) = t.reload(&s).await {
                    warn!(error = %e, "reloading secrets failed; keeping the last ones");
                }
            }
        });
        Ok(secrets)
    }

    async fn reload(&self, store: &Store) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        let before = self.inner.changes.load(Ordering::SeqCst);
        let listed: Vec<SecretRecord> = store.list(Kind::Secret).await?;
        if self.inner.changes.load(Ordering::SeqCst) != before {
            return Ok(());
        }
        let records: HashMap<String, SecretRecord> = listed
            .into_iter()
            .filter_map(|r| {
                let meta = r.meta.as_ref()?;
                Some((secret_key(&meta.namespace, &meta.name), r))
            })
            .collect();
        self.forget_opened(|k| !records.contains_key(k));
        *self.inner.records.write().expect("poisoned") = records;
        Ok(())
    }

    fn forget_opened(&self, gone: impl Fn(&str) -> bool) {
        self.inner
            .opened
            .lock()
            .expect("poisoned")
            .retain(|(k, _), _| !gone(k));
    }

    /// Takes a record in (from a write here or the watch); an older
    /// version than the one held is ignored.
    pub fn put(&self, record: SecretRecord) {
        let Some(meta) = record.meta.as_ref() else {
            return;
        };
        self.inner
            .changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let key = secret_key(&meta.namespace, &meta.name);
        let mut records = self.inner.records.write().expect("poisoned");
        let newer = records
            .get(&key)
            .and_then(|r| r.meta.as_ref())
            .is_none_or(|held| held.version <= meta.version);
        if newer {
            let version = meta.version;
            records.insert(key.clone(), record);
            drop(records);
            // Older versions' values are no longer handed out.
            self.inner
                .opened
                .lock()
                .expect("poisoned")
                .retain(|(k, v), _| *k != key || *v >= version);
        }
    }

    pub fn remove(&self, key: &str) {
        self.inner
            .changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.records.write().expect("poisoned").remove(key);
        self.forget_opened(|k| k == key);
    }

    fn key(&self) -> Result<&dyn KeyProvider, SecretError> {
        self.inner.key.as_deref().ok_or(SecretError::NoKey)
    }

    /// Whether this control plane can keep secrets.
    pub fn enabled(&self) -> bool {
        self.inner.key.is_some()
    }

    /// Seals a value into a record for `meta`.
    pub fn seal(&self, meta: Secret, value: &[u8]) -> Result<SecretRecord, SecretError> {
        let key = self.key()?;
        let aad = secret_key(&meta.namespace, &meta.name);
        let sealed =
            sealing::seal(key, value, aad.as_bytes()).map_err(|source| SecretError::Seal {
                name: meta.name.clone(),
                source,
            })?;
        Ok(SecretRecord {
            meta: Some(meta),
            nonce: sealed.nonce,
            ciphertext: sealed.ciphertext,
            wrapped_key: sealed.wrapped_key,
            key_id: sealed.key_id,
        })
    }

    /// The held record of a secret.
    pub fn get(&self, namespace: &str, name: &str) -> Option<SecretRecord> {
        self.inner
            .records
            .read()
            .expect("poisoned")
            .get(&secret_key(namespace, name))
            .cloned()
    }

    /// The metadata of every secret held.
    pub fn list(&self) -> Vec<Secret> {
        let mut all: Vec<Secret> = self
            .inner
            .records
            .read()
            .expect("poisoned")
            .values()
            .filter_map(|r| r.meta.clone())
            .collect();
        all.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        all
    }

    /// The value of a record, opened once per version.
    fn open(&self, record: &SecretRecord) -> Result<Arc<Vec<u8>>, SecretError> {
        let meta = record.meta.clone().unwrap_or_default();
        let key = secret_key(&meta.namespace, &meta.name);
        let cache_key = (key.clone(), meta.version);
        if let Some(v) = self.inner.opened.lock().expect("poisoned").get(&cache_key) {
            return Ok(v.clone());
        }
        let value =
            sealing::open(self.key()?, &sealed_of(record), key.as_bytes()).map_err(|source| {
                SecretError::Seal {
                    name: meta.name.clone(),
                    source,
                }
            })?;
        let value = Arc::new(value);
        self.inner
            .opened
            .lock()
            .expect("poisoned")
            .insert(cache_key, value.clone());
        Ok(value)
    }

    /// The values a call of `function` receives, from the records held
    /// here; None if a held record is older than the function's reference
    /// (this replica has not seen the rotation yet).
    pub fn resolve_held(
        &self,
        function: &Function,
    ) -> Result<Option<Vec<SecretValue>>, SecretError> {
        let mut values = Vec::with_capacity(function.secrets.len());
        for reference in &function.secrets {
            let Some(record) = self.get(function.namespace_name(), &reference.name) else {
                return Err(SecretError::Missing(reference.name.clone()));
            };
            let version = record.meta.as_ref().map_or(0, |m| m.version);
            if version < reference.version {
                return Ok(None);
            }
            values.push(SecretValue {
                name: reference.name.clone(),
                value: self.open(&record)?.to_vec(),
                env: reference.env.clone(),
            });
        }
        Ok(Some(values))
    }

    /// As [`Secrets::resolve_held`], reading etcd for the records held here
    /// that are older than the function's references.
    pub async fn resolve(
        &self,
        store: &Store,
        function: &Function,
    ) -> Result<Vec<SecretValue>, SecretError> {
        if function.secrets.is_empty() {
            return Ok(Vec::new());
        }
        if let Some(values) = self.resolve_held(function)? {
            return Ok(values);
        }
        for reference in &function.secrets {
            let key = secret_key(function.namespace_name(), &reference.name);
            match store.get::<SecretRecord>(Kind::Secret, &key).await? {
                Some(record) => self.put(record),
                None => return Err(SecretError::Missing(reference.name.clone())),
            }
        }
        self.resolve_held(function)?
            .ok_or_else(|| SecretError::Missing(function.secrets[0].name.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use faas_proto::v1::SecretRef;

    fn secrets() -> (Secrets, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let key = faas_pki::sealing::FileKey::ensure(&dir.path().join("k")).unwrap();
        (Secrets::with_key(Some(Arc::new(key))), dir)
    }

    fn meta(namespace: &str, name: &str, version: u64) -> Secret {
        Secret {
            name: name.into(),
            namespace: namespace.into(),
            version,
            ..Default::default()
        }
    }

    fn function(namespace: &str, refs: &[(&str, u64)]) -> Function {
        Function {
            name: "f".into(),
            namespace: namespace.into(),
            secrets: refs
                .iter()
                .map(|(n, v)| SecretRef {
                    name: n.to_string(),
                    env: "DB".into(),
                    version: *v,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_function_gets_its_namespaces_secret_at_its_version_or_newer() {
        let (s, _dir) = secrets();
        s.put(s.seal(meta("team-a", "db", 1), b"one").unwrap());
        s.put(s.seal(meta("team-b", "db", 1), b"other").unwrap());
        let got = s
            .resolve_held(&function("team-a", &[("db", 1)]))
            .unwrap()
            .unwrap();
        assert_eq!(got[0].value, b"one");
        assert_eq!(got[0].env, "DB");
        // The function was made at version 2: this copy is behind.
        assert!(s
            .resolve_held(&function("team-a", &[("db", 2)]))
            .unwrap()
            .is_none());
        s.put(s.seal(meta("team-a", "db", 2), b"two").unwrap());
        // An older record arriving late does not go back.
        s.put(s.seal(meta("team-a", "db", 1), b"one").unwrap());
        for version in [1, 2] {
            let got = s
                .resolve_held(&function("team-a", &[("db", version)]))
                .unwrap()
                .unwrap();
            assert_eq!(got[0].value, b"two");
        }
        assert!(matches!(
            s.resolve_held(&function("team-c", &[("db", 1)])),
            Err(SecretError::Missing(_))
        ));
        s.remove("team-a/db");
        assert!(s.resolve_held(&function("team-a", &[("db", 1)])).is_err());
    }

    #[test]
    fn a_record_moved_to_another_namespace_does_not_open() {
        let (s, _dir) = secrets();
        let mut record = s.seal(meta("team-a", "db", 1), b"one").unwrap();
        record.meta = Some(meta("team-b", "db", 1));
        s.put(record);
        assert!(matches!(
            s.resolve_held(&function("team-b", &[("db", 1)])),
            Err(SecretError::Seal { .. })
        ));
    }

    #[test]
    fn without_a_key_there_are_no_secrets() {
        let s = Secrets::with_key(None);
        assert!(matches!(
            s.seal(meta("default", "db", 1), b"x"),
            Err(SecretError::NoKey)
        ));
    }
}
