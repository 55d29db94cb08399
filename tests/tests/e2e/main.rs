//! The end-to-end suite: every test here starts a private stack (etcd,
//! the registry, containerd, a control plane and agents) through the
//! faas-tests harness and drives it as a user would.
//!
//! One binary, not one per file: each test binary links the whole client
//! stack again (about 20 s of a 2-core machine's build each), and in one
//! process the test threads stay busy until the last test instead of
//! idling at the end of every file. The tests here share nothing but the
//! machine and may run side by side; those that need the host alone
//! (attacks, egress, faults, isolation, builds: fixed addresses, host-wide
//! measurements) stay binaries of their own, which cargo runs one after
//! another.
//!
//! Run one file's tests: `cargo test --release -p faas-tests --test e2e -- invoke::`.

mod access;
mod agent_boundary;
mod cancel;
mod clients;
mod cluster;
mod conformance;
mod deadlines;
mod failover;
mod follow_logs;
mod gateway;
mod invoke;
mod metrics;
mod packages;
mod policies;
mod secrets;
mod state;
mod tenants;
mod tracing;
mod versions;
