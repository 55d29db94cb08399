//! The functions and runtimes calls are accepted against, kept in memory
//! with the etcd revision each was read at. A submit takes them from here
//! and has etcd check, in the transaction that records the call, that
//! they are still current: a copy that is behind fails the compare, is
//! read again and the submit retried. One round trip on the submit path
//! instead of three (function, runtime, call), and no less consistent than
//! reading them first: a call is only ever recorded against the function
//! and runtime etcd holds at that moment.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use faas_proto::v1::{Function, FunctionAlias, Runtime};

/// A record as read from etcd, with its `mod_revision`.
#[derive(Debug)]
pub struct Versioned<T> {
    pub value: Arc<T>,
    pub revision: i64,
}

impl<T> Clone for Versioned<T> {
    fn clone(&self) -> Self {
        Versioned {
            value: self.value.clone(),
            revision: self.revision,
        }
    }
}

/// At most this many records of a kind, and this many bytes of them
/// (encoded), are kept; past either the cache starts over (records are
/// read again as calls need them). A record may be up to etcd's value
/// limit, so the count alone would not bound the memory.
const MAX_ENTRIES: usize = 16 * 1024;
const MAX_BYTES: usize = 64 << 20;

/// One kind's records by key.
pub struct Cache<T> {
    held: RwLock<Held<T>>,
}

struct Held<T> {
    entries: HashMap<String, (Versioned<T>, usize)>,
    bytes: usize,
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Cache {
            held: RwLock::new(Held {
                entries: HashMap::new(),
                bytes: 0,
            }),
        }
    }
}

impl<T: prost::Message> Cache<T> {
    pub fn get(&self, key: &str) -> Option<Versioned<T>> {
        self.held
            .read()
            .expect("poisoned")
            .entries
            .get(key)
            .map(|(v, _)| v.clone())
    }

    pub fn put(&self, key: &str, value: Versioned<T>) {
        let size = key.len() + value.value.encoded_len();
        let mut held = self.held.write().expect("poisoned");
        // A copy read earlier never replaces a newer one.
        if let Some((kept, _)) = held.entries.get(key) {
            if kept.revision > value.revision {
                return;
            }
        }
        if let Some((_, old)) = held.entries.remove(key) {
            held.bytes -= old;
        }
        if held.entries.len() >= MAX_ENTRIES || held.bytes + size > MAX_BYTES {
            held.entries.clear();
            held.bytes = 0;
        }
        held.bytes += size;
        held.entries.insert(key.to_string(), (value, size));
    }

    pub fn forget(&self, key: &str) {
        let mut held = self.held.write().expect("poisoned");
        if let Some((_, size)) = held.entries.remove(key) {
            held.bytes -= size;
        }
    }

    #[cfg(test)]
    fn len(&self) -> (usize, usize) {
        let held = self.held.read().expect("poisoned");
        (held.entries.len(), held.bytes)
    }
}

/// Functions (by namespaced key), their versions and aliases (by record
/// name, see store.rs) and runtimes (by name).
#[derive(Default)]
pub struct Catalog {
    pub functions: Cache<Function>,
    pub versions: Cache<Function>,
    pub aliases: Cache<FunctionAlias>,
    pub runtimes: Cache<Runtime>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(name: &str, revision: i64) -> Versioned<Runtime> {
        Versioned {
            value: Arc::new(Runtime {
                name: name.into(),
                ..Default::default()
            }),
            revision,
        }
    }

    #[test]
    fn a_newer_copy_stays_and_forget_removes() {
        let cache = Cache::default();
        cache.put("python3", v("new", 7));
        cache.put("python3", v("old", 5));
        assert_eq!(cache.get("python3").unwrap().value.name, "new");
        cache.put("python3", v("newer", 9));
        assert_eq!(cache.get("python3").unwrap().revision, 9);
        cache.forget("python3");
        assert!(cache.get("python3").is_none());
    }

    #[test]
    fn the_cache_is_bounded_in_count_and_bytes() {
        let cache = Cache::default();
        for i in 0..MAX_ENTRIES + 10 {
            cache.put(&format!("r{i}"), v("x", 1));
        }
        assert!(cache.len().0 <= MAX_ENTRIES);
        assert!(cache.get(&format!("r{}", MAX_ENTRIES + 9)).is_some());

        let cache = Cache::default();
        let big = "x".repeat(1 << 20);
        for i in 0..100 {
            cache.put(&format!("r{i}"), v(&big, 1));
        }
        let (entries, bytes) = cache.len();
        assert!(bytes <= MAX_BYTES, "{bytes}");
        assert!(entries < 64, "{entries}");
        assert!(cache.get("r99").is_some());
        // Forgetting gives the bytes back.
        cache.forget("r99");
        assert!(cache.len().1 < bytes);
    }
}
