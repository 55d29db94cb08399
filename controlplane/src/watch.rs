//! In-process notification of call status changes, so that a synchronous
//! invoke or a WaitCall learns its call's outcome without polling etcd.

use std::collections::HashMap;
use std::sync::Mutex;

use faas_proto::v1::{Call, CallStatus};
use tokio::sync::watch;

pub fn is_final(call: &Call) -> bool {
    matches!(
        call.status(),
        CallStatus::Succeeded | CallStatus::Failed | CallStatus::Timeout
    )
}

#[derive(Default)]
pub struct CallWatch {
    // Held only for map operations, never across an await.
    senders: Mutex<HashMap<String, watch::Sender<Call>>>,
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
