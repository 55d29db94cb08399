//! The broker's pure logic: a model of the cluster's spots and call queue, and
//! the pluggable preload policies that turn events into spot operations.
//!
//! Nothing here does I/O or reads a clock: time comes in as [`Millis`] with
//! each event, so policies are tested with a simulated clock and simulated
//! agents ([`sim`]). The control plane's leader feeds real events in and
//! carries the operations out to the agents.

#![forbid(unsafe_code)]

mod cluster;
pub mod policy;
pub mod sim;

pub use cluster::{
    Broker, Catalog, Cluster, Completed, Event, FunctionRef, Millis, Operation, Outstanding,
    PendingCall, SpotId, SpotState,
};
pub use policy::{policy_by_name, policy_from_config, Policy, PolicyConfig, POLICY_NAMES};
