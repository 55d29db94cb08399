//! Namespaces (tenants) as every replica checks them: which exist, and the
//! quota of each, kept in memory so that no submit waits for etcd (listed
//! at start, followed, listed again every [`RELOAD_EVERY`], like the
//! credentials); and the per-namespace submit rate, a token bucket per
//! namespace on the leader (every submit reaches it, so the rate holds
//! over the whole cluster).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use faas_proto::namespaces::DEFAULT;
use faas_proto::v1::{Namespace, NamespaceQuota};
use tracing::warn;

use crate::api::admission::Bucket;
use crate::store::{Change, Kind, Store, StoreError};

const RELOAD_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone, Default)]
pub struct Tenants {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    namespaces: RwLock<HashMap<String, Namespace>>,
    /// Submit buckets of the namespaces with a rate, by name.
    buckets: Mutex<HashMap<String, Bucket>>,
    /// Bumped on every change from a watch or a write: a listing taken
    /// before one must not undo it.
    changes: std::sync::atomic::AtomicU64,
}

/// The burst of a quota: as set, or twice the rate (at least 1).
pub fn burst_of(quota: &NamespaceQuota) -> f64 {
    if quota.submit_burst > 0.0 {
        quota.submit_burst
    } else {
        (quota.submit_rate * 2.0).max(1.0)
    }
}

impl Tenants {
    /// Lists the namespaces, then keeps them current in the background.
    pub async fn load(store: &Store) -> Result<Tenants, StoreError> {
        let tenants = Tenants::default();
        tenants.reload(store).await?;
        let (t, s) = (tenants.clone(), store.clone());
        tokio::spawn(async move {
            s.follow::<Namespace>(Kind::Namespace, |change| {
                match change {
                    Change::Put(n) => t.put(n),
                    Change::Deleted(name) => t.remove(&name),
                }
                true
            })
            .await
        });
        let (t, s) = (tenants.clone(), store.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RELOAD_EVERY).await;
                if let Err(e) = t.reload(&s).await {
                    warn!(error = %e, "reloading namespaces failed; keeping the last ones");
                }
            }
        });
        Ok(tenants)
    }

    async fn reload(&self, store: &Store) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        let before = self.inner.changes.load(Ordering::SeqCst);
        let listed: Vec<Namespace> = store.list(Kind::Namespace).await?;
        if self.inner.changes.load(Ordering::SeqCst) != before {
            return Ok(());
        }
        *self.inner.namespaces.write().expect("poisoned") =
            listed.into_iter().map(|n| (n.name.clone(), n)).collect();
        Ok(())
    }

    pub fn put(&self, namespace: Namespace) {
        self.inner
            .changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner
            .namespaces
            .write()
            .expect("poisoned")
            .insert(namespace.name.clone(), namespace);
    }

    pub fn remove(&self, name: &str) {
        self.inner
            .changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner
            .namespaces
            .write()
            .expect("poisoned")
            .remove(name);
        self.inner.buckets.lock().expect("poisoned").remove(name);
    }

    /// The namespace's record; "default" exists without one.
    pub fn get(&self, name: &str) -> Option<Namespace> {
        let found = self
            .inner
            .namespaces
            .read()
            .expect("poisoned")
            .get(name)
            .cloned();
        found.or_else(|| {
            (name == DEFAULT).then(|| Namespace {
                name: DEFAULT.into(),
                quota: Some(NamespaceQuota::default()),
                ..Default::default()
            })
        })
    }

    /// Every namespace, "default" included, by name.
    pub fn list(&self) -> Vec<Namespace> {
        let mut all: Vec<Namespace> = self
            .inner
            .namespaces
            .read()
            .expect("poisoned")
            .values()
            .cloned()
            .collect();
        if !all.iter().any(|n| n.name == DEFAULT) {
            all.extend(self.get(DEFAULT));
        }
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The namespace's quota (all zero, no bound, if it has none).
    pub fn quota(&self, name: &str) -> NamespaceQuota {
        self.get(name).and_then(|n| n.quota).unwrap_or_default()
    }

    /// Takes a submit from the namespace's bucket (its `quota` as the
    /// caller read it), or says how long to wait. A namespace without a
    /// rate always passes.
    pub fn admit_submit(
        &self,
        name: &str,
        quota: &NamespaceQuota,
        now: Instant,
    ) -> Result<(), Duration> {
        if quota.submit_rate <= 0.0 {
            return Ok(());
        }
        let burst = burst_of(quota);
        let mut buckets = self.inner.buckets.lock().expect("poisoned");
        buckets
            .entry(name.to_string())
            .or_insert_with(|| Bucket::full(burst, now))
            .take(now, quota.submit_rate, burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace(name: &str, quota: NamespaceQuota) -> Namespace {
        Namespace {
            name: name.into(),
            quota: Some(quota),
            ..Default::default()
        }
    }

    #[test]
    fn default_exists_without_a_record() {
        let t = Tenants::default();
        assert!(t.get("default").is_some());
        assert!(t.get("team-a").is_none());
        assert_eq!(t.quota("default"), NamespaceQuota::default());
        assert_eq!(t.list().len(), 1);
        t.put(namespace("team-a", NamespaceQuota::default()));
        assert!(t.get("team-a").is_some());
        assert_eq!(
            t.list().iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            ["default", "team-a"]
        );
        t.remove("team-a");
        assert!(t.get("team-a").is_none());
    }

    #[test]
    fn each_namespace_has_its_own_submit_rate() {
        let t = Tenants::default();
        let now = Instant::now();
        t.put(namespace(
            "slow",
            NamespaceQuota {
                submit_rate: 1.0,
                submit_burst: 2.0,
                ..Default::default()
            },
        ));
        let slow = t.quota("slow");
        assert!(t.admit_submit("slow", &slow, now).is_ok());
        assert!(t.admit_submit("slow", &slow, now).is_ok());
        let wait = t.admit_submit("slow", &slow, now).unwrap_err();
        assert_eq!(wait, Duration::from_secs(1));
        // No rate: no bound.
        let default = t.quota("default");
        for _ in 0..1000 {
            assert!(t.admit_submit("default", &default, now).is_ok());
        }
        assert!(t
            .admit_submit("slow", &slow, now + Duration::from_secs(1))
            .is_ok());
    }
}
