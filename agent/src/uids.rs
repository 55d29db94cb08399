//! A host uid per container. Kernel limits kept per uid (inotify instances
//! and watches, user keyrings, RLIMIT_NPROC, pending signals, ...) and
//! file ownership are then never shared between two calls: one call that
//! takes every inotify instance of its uid leaves the others theirs.
//!
//! The pool hands out uids from `[base, base + count)` (the agent's
//! `uid_base`/`uid_count` settings: a range no host account uses), never
//! one a live container holds, and in rotation: a uid just released is
//! the last to come again, so whatever the kernel still keeps for it (a
//! keyring, a socket in TIME_WAIT) has time to go. The gid is the uid.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("every uid of the pool ({count} from {base}) is held by a live container")]
pub struct PoolExhausted {
    pub base: u32,
    pub count: u32,
}

#[derive(Debug)]
struct State {
    /// Offset of the next uid to try.
    next: u32,
    in_use: HashSet<u32>,
}

/// The agent's pool of container uids.
#[derive(Debug)]
pub struct UidPool {
    base: u32,
    count: u32,
    state: Mutex<State>,
}

/// A uid held by one container until dropped (after its tear-down).
#[derive(Debug)]
pub struct UidLease {
    uid: u32,
    pool: Arc<UidPool>,
}

impl UidLease {
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// The container's gid: the same number.
    pub fn gid(&self) -> u32 {
        self.uid
    }
}

impl Drop for UidLease {
    fn drop(&mut self) {
        self.pool
            .state
            .lock()
            .expect("poisoned")
            .in_use
            .remove(&self.uid);
    }
}

impl UidPool {
    /// `count` uids from `base`; the range must hold neither root nor the
    /// overflow ids and fit in a uid_t (checked by the configuration).
    pub fn new(base: u32, count: u32) -> Arc<UidPool> {
        assert!(count > 0 && base > 0 && base.checked_add(count).is_some());
        Arc::new(UidPool {
            base,
            count,
            state: Mutex::new(State {
                next: 0,
                in_use: HashSet::new(),
            }),
        })
    }

    /// The next free uid in rotation.
    pub fn allocate(self: &Arc<Self>) -> Result<UidLease, PoolExhausted> {
        let mut state = self.state.lock().expect("poisoned");
        // At most as many taken as live containers: the scan is short.
        for step in 0..self.count {
            let offset = (state.next + step) % self.count;
            let uid = self.base + offset;
            if state.in_use.insert(uid) {
                state.next = (offset + 1) % self.count;
                return Ok(UidLease {
                    uid,
                    pool: self.clone(),
                });
            }
        }
        Err(PoolExhausted {
            base: self.base,
            count: self.count,
        })
    }

    /// Uids held now.
    pub fn in_use(&self) -> usize {
        self.state.lock().expect("poisoned").in_use.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_out_distinct_uids_in_rotation() {
        let pool = UidPool::new(200_000, 4);
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        assert_eq!((a.uid(), b.uid()), (200_000, 200_001));
        assert_eq!(a.gid(), a.uid());
        drop(a);
        // Not reused right away: the rotation goes on.
        let c = pool.allocate().unwrap();
        assert_eq!(c.uid(), 200_002);
        let d = pool.allocate().unwrap();
        assert_eq!(d.uid(), 200_003);
        // Wraps around, skipping what live containers hold (b, c, d).
        let e = pool.allocate().unwrap();
        assert_eq!(e.uid(), 200_000);
        assert_eq!(
            pool.allocate().unwrap_err(),
            PoolExhausted {
                base: 200_000,
                count: 4
            }
        );
        drop(c);
        assert_eq!(pool.allocate().unwrap().uid(), 200_002);
        assert_eq!(pool.in_use(), 3);
        drop((b, d, e));
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn concurrent_leases_never_share_a_uid() {
        let pool = UidPool::new(300_000, 64);
        let leases: Vec<_> = (0..64).map(|_| pool.allocate().unwrap()).collect();
        let uids: HashSet<u32> = leases.iter().map(UidLease::uid).collect();
        assert_eq!(uids.len(), 64);
        assert!(uids.iter().all(|u| (300_000..300_064).contains(u)));
    }
}
