//! In-process notification of call status changes, so that a synchronous
//! invoke or a WaitCall learns its call's outcome without polling etcd; and,
//! from the same changes, the leader's count of queued calls (admission
//! control needs the queue depth on every submit, without reading etcd).

use std::collections::HashMap;
use std::sync::Mutex;

use faas_proto::v1::{Call, CallStatus};
use tokio::sync::watch;

pub fn is_final(call: &Call) -> bool {
    call.status().is_final()
}

#[derive(Default)]
pub struct CallWatch {
    // Held only for map operations, never across an await.
    senders: Mutex<HashMap<String, watch::Sender<Call>>>,
    queued: Mutex<QueuedCalls>,
}

/// The calls queued on this leader, by function (its key, see
/// `faas_proto::namespaces`) and by namespace. A call enters when it is
/// accepted (or handed over at a takeover) and leaves with the first
/// change the broker publishes (dispatched, or final); a call queued again
/// (its node was lost) enters again.
#[derive(Default, Debug)]
pub struct QueuedCalls {
    /// Function and params bytes of each queued call.
    by_call: HashMap<String, (String, u64)>,
    by_function: HashMap<String, u64>,
    by_namespace: HashMap<String, u64>,
    /// Params bytes of every queued call: the leader's broker holds them
    /// in memory until the calls run.
    bytes: u64,
}

/// The bounds of the queues (admission settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueBounds {
    pub per_function: u64,
    /// The namespace's quota (max_queued_calls); 0: none.
    pub per_namespace: u64,
    pub total: u64,
    /// Params bytes of all queued calls together.
    pub bytes: u64,
}

/// A queue bound a new call would exceed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueFull {
    Function { queued: u64, max: u64 },
    Namespace { queued: u64, max: u64 },
    Cluster { queued: u64, max: u64 },
    Bytes { queued: u64, max: u64 },
}

impl QueuedCalls {
    pub fn add(&mut self, id: &str, function: &str, bytes: u64) {
        match self
            .by_call
            .insert(id.to_string(), (function.to_string(), bytes))
        {
            None => {
                *self.by_function.entry(function.to_string()).or_default() += 1;
                let namespace = faas_proto::namespaces::split_key(function).0;
                *self.by_namespace.entry(namespace.to_string()).or_default() += 1;
            }
            // Counted already: only its size may have changed.
            Some((_, before)) => self.bytes -= before,
        }
        self.bytes += bytes;
    }

    pub fn remove(&mut self, id: &str) {
        if let Some((function, bytes)) = self.by_call.remove(id) {
            self.bytes -= bytes;
            let namespace = faas_proto::namespaces::split_key(&function).0;
            for (map, key) in [
                (&mut self.by_function, function.as_str()),
                (&mut self.by_namespace, namespace),
            ] {
                if let Some(n) = map.get_mut(key) {
                    *n -= 1;
                    if *n == 0 {
                        map.remove(key);
                    }
                }
            }
        }
    }

    /// Queued calls of `function`, and in all.
    pub fn depth(&self, function: &str) -> (u64, u64) {
        (
            self.by_function.get(function).copied().unwrap_or(0),
            self.by_call.len() as u64,
        )
    }

    /// Queued calls of a namespace.
    pub fn namespace_depth(&self, namespace: &str) -> u64 {
        self.by_namespace.get(namespace).copied().unwrap_or(0)
    }

    /// Params bytes of all queued calls.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Adds the call (`bytes` of params) unless a bound would be exceeded.
    pub fn try_add(
        &mut self,
        id: &str,
        function: &str,
        bytes: u64,
        bounds: QueueBounds,
    ) -> Result<(), QueueFull> {
        let (mine, total) = self.depth(function);
        if mine >= bounds.per_function {
            return Err(QueueFull::Function {
                queued: mine,
                max: bounds.per_function,
            });
        }
        let namespace = faas_proto::namespaces::split_key(function).0;
        let ours = self.namespace_depth(namespace);
        if bounds.per_namespace > 0 && ours >= bounds.per_namespace {
            return Err(QueueFull::Namespace {
                queued: ours,
                max: bounds.per_namespace,
            });
        }
        if total >= bounds.total {
            return Err(QueueFull::Cluster {
                queued: total,
                max: bounds.total,
            });
        }
        if self.bytes.saturating_add(bytes) > bounds.bytes {
            return Err(QueueFull::Bytes {
                queued: self.bytes,
                max: bounds.bytes,
            });
        }
        self.add(id, function, bytes);
        Ok(())
    }
}

impl CallWatch {
    /// Subscribes to changes of `call` (given as currently known).
    pub fn subscribe(&self, call: &Call) -> watch::Receiver<Call> {
        let mut senders = self.senders.lock().expect("poisoned");
        senders
            .entry(call.id.clone())
            .or_insert_with(|| watch::channel(call.clone()).0)
            .subscribe()
    }

    /// Publishes a new state of a call to its subscribers, if any. A final
    /// state is the last: the channel is then dropped (receivers keep it).
    pub fn publish(&self, call: &Call) {
        {
            let mut queued = self.queued.lock().expect("poisoned");
            if call.status() == CallStatus::Queued {
                queued.add(
                    &call.id,
                    &call.function_key(),
                    call.params_json.len() as u64,
                );
            } else {
                queued.remove(&call.id);
            }
        }
        let mut senders = self.senders.lock().expect("poisoned");
        if is_final(call) {
            if let Some(tx) = senders.remove(&call.id) {
                tx.send_replace(call.clone());
            }
        } else if let Some(tx) = senders.get(&call.id) {
            tx.send_replace(call.clone());
        }
    }

    /// Forgets a subscription that nobody waits on any more.
    pub fn forget_if_unused(&self, id: &str) {
        let mut senders = self.senders.lock().expect("poisoned");
        if senders.get(id).is_some_and(|tx| tx.receiver_count() == 0) {
            senders.remove(id);
        }
    }
}

impl CallWatch {
    /// Counts a new call as queued unless a bound would be exceeded.
    pub fn try_queue(&self, call: &Call, bounds: QueueBounds) -> Result<(), QueueFull> {
        self.queued.lock().expect("poisoned").try_add(
            &call.id,
            &call.function_key(),
            call.params_json.len() as u64,
            bounds,
        )
    }

    /// Stops counting a call as queued (it was not recorded after all).
    pub fn unqueue(&self, id: &str) {
        self.queued.lock().expect("poisoned").remove(id);
    }

    /// Starts counting afresh from the calls a new leader found queued.
    pub fn reset_queued<'a>(&self, calls: impl IntoIterator<Item = &'a Call>) {
        let mut queued = self.queued.lock().expect("poisoned");
        *queued = QueuedCalls::default();
        for call in calls {
            if call.status() == CallStatus::Queued {
                queued.add(
                    &call.id,
                    &call.function_key(),
                    call.params_json.len() as u64,
                );
            }
        }
    }

    /// Queued calls of `function`, and in all.
    pub fn queue_depth(&self, function: &str) -> (u64, u64) {
        self.queued.lock().expect("poisoned").depth(function)
    }

    /// Params bytes of all queued calls.
    pub fn queued_bytes(&self) -> u64 {
        self.queued.lock().expect("poisoned").bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str, function: &str, status: CallStatus) -> Call {
        Call {
            id: id.into(),
            function: function.into(),
            status: status as i32,
            ..Default::default()
        }
    }

    #[test]
    fn queue_bounds_per_function_and_in_all() {
        let mut q = QueuedCalls::default();
        let bounds = QueueBounds {
            per_function: 2,
            per_namespace: 0,
            total: 3,
            bytes: 100,
        };
        assert_eq!(q.try_add("1", "a", 10, bounds), Ok(()));
        assert_eq!(q.try_add("2", "a", 10, bounds), Ok(()));
        assert_eq!(
            q.try_add("3", "a", 10, bounds),
            Err(QueueFull::Function { queued: 2, max: 2 })
        );
        assert_eq!(q.try_add("3", "b", 10, bounds), Ok(()));
        assert_eq!(
            q.try_add("4", "c", 10, bounds),
            Err(QueueFull::Cluster { queued: 3, max: 3 })
        );
        q.remove("1");
        q.remove("1");
        assert_eq!(q.depth("a"), (1, 2));
        assert_eq!(q.bytes(), 20);
        // Adding the same call twice counts it once.
        q.add("2", "a", 10);
        assert_eq!(q.depth("a"), (1, 2));
        assert_eq!(q.bytes(), 20);
    }

    #[test]
    fn a_namespace_has_its_own_queue_bound() {
        let mut q = QueuedCalls::default();
        let bounds = QueueBounds {
            per_function: 100,
            per_namespace: 2,
            total: 100,
            bytes: 1000,
        };
        assert_eq!(q.try_add("1", "team-a/f", 1, bounds), Ok(()));
        assert_eq!(q.try_add("2", "team-a/g", 1, bounds), Ok(()));
        assert_eq!(
            q.try_add("3", "team-a/f", 1, bounds),
            Err(QueueFull::Namespace { queued: 2, max: 2 })
        );
        // Same function name, other namespaces: their own counts.
        assert_eq!(q.try_add("3", "team-b/f", 1, bounds), Ok(()));
        assert_eq!(q.try_add("4", "f", 1, bounds), Ok(()));
        assert_eq!(q.depth("f"), (1, 4));
        assert_eq!(q.namespace_depth("default"), 1);
        q.remove("1");
        assert_eq!(q.namespace_depth("team-a"), 1);
        assert_eq!(q.try_add("5", "team-a/f", 1, bounds), Ok(()));
    }

    #[test]
    fn queued_params_are_bounded_in_bytes() {
        let mut q = QueuedCalls::default();
        let bounds = QueueBounds {
            per_function: 100,
            per_namespace: 0,
            total: 100,
            bytes: 100,
        };
        assert_eq!(q.try_add("1", "a", 60, bounds), Ok(()));
        assert_eq!(
            q.try_add("2", "a", 41, bounds),
            Err(QueueFull::Bytes {
                queued: 60,
                max: 100
            })
        );
        assert_eq!(q.try_add("2", "a", 40, bounds), Ok(()));
        q.remove("1");
        assert_eq!(q.bytes(), 40);
        assert_eq!(q.try_add("3", "b", 60, bounds), Ok(()));
    }

    #[test]
    fn published_changes_keep_the_count() {
        let watch = CallWatch::default();
        let queued = call("1", "f", CallStatus::Queued);
        let bounds = QueueBounds {
            per_function: 10,
            per_namespace: 0,
            total: 10,
            bytes: 1 << 20,
        };
        assert!(watch.try_queue(&queued, bounds).is_ok());
        assert_eq!(watch.queue_depth("f"), (1, 1));
        watch.publish(&call("1", "f", CallStatus::Running));
        assert_eq!(watch.queue_depth("f"), (0, 0));
        // Queued again after its node was lost, then finished.
        watch.publish(&call("1", "f", CallStatus::Queued));
        assert_eq!(watch.queue_depth("f"), (1, 1));
        watch.publish(&call("1", "f", CallStatus::Succeeded));
        assert_eq!(watch.queue_depth("f"), (0, 0));
        // A takeover counts what it found.
        watch.reset_queued(&[
            call("2", "f", CallStatus::Queued),
            call("3", "g", CallStatus::Running),
        ]);
        assert_eq!(watch.queue_depth("f"), (1, 1));
        watch.unqueue("2");
        assert_eq!(watch.queue_depth("f"), (0, 0));
    }
}
