//! Preload policies (thesis 5.1.6). A new policy is one file implementing
//! [`Policy`] plus a line in [`policy_by_name`].

use crate::cluster::{Cluster, Event, Millis, Operation};

mod no_preload;

pub use no_preload::NoPreload;

/// A broker heuristic: sees every event, answers with spot operations.
///
/// The cluster view already reflects the event when `decide` runs; the
/// policy may take calls out of the queue or put them in, and must only
/// target spots whose state allows the operation (a Free spot for an execute
/// or a preload, a preloaded spot for the matching exec or a clear).
pub trait Policy: Send {
    fn name(&self) -> &'static str;
    fn decide(&mut self, cluster: &mut Cluster, event: &Event, now: Millis) -> Vec<Operation>;
}

/// Names accepted by [`policy_by_name`].
pub const POLICY_NAMES: &[&str] = &["no-preload"];

pub fn policy_by_name(name: &str) -> Option<Box<dyn Policy>> {
    match name {
        "no-preload" => Some(Box::new(NoPreload)),
        _ => None,
    }
}
