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

use faas_proto::v1::{Function, Runtime};

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

/// At most this many records of a kind are kept; past it the cache starts
/// over (records are read again as calls need them).
const MAX_ENTRIES: usize = 16 * 1024;

/// One kind's records by key.
pub struct Cache<T> {
    entries: RwLock<HashMap<String, Versioned<T>>>,
}

impl<T> Default for Cache<T> {
    fn default() -> Self {
        Cache {
            entries: RwLock::new(HashMap::new()),
        }
    }
}

impl<T> Cache<T> {
    pub fn get(&self, key: &str) -> Option<Versioned<T>> {
        self.entries.read().expect("poisoned").get(key).cloned()
    }

    pub fn put(&self, key: &str, value: Versioned<T>) {
        let mut entries = self.entries.write().expect("poisoned");
        if entries.len() >= MAX_ENTRIES && !entries.contains_key(key) {
            entries.clear();
        }
        // A copy read earlier never replaces a newer one.
        match entries.get(key) {
            Some(held) if held.revision > value.revision => {}
            _ => {
                entries.insert(key.to_string(), value);
            }
        }
    }

    pub fn forget(&self, key: &str) {
        self.entries.write().expect("poisoned").remove(key);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.read().expect("poisoned").len()
    }
}

/// Functions (by namespaced key) and runtimes (by name).
#[derive(Default)]
pub struct Catalog {
    pub functions: Cache<Function>,
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
    fn the_cache_is_bounded() {
        let cache = Cache::default();
        for i in 0..MAX_ENTRIES + 10 {
            cache.put(&format!("r{i}"), v("x", 1));
        }
        assert!(cache.len() <= MAX_ENTRIES);
        assert!(cache.get(&format!("r{}", MAX_ENTRIES + 9)).is_some());
    }
}
