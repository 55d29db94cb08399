//! Opt-in egress for calls, as pure logic (no I/O), so every rule is
//! unit-tested apart from the kernel:
//!
//! - [`allow`]: the allowlist a function is deployed with
//!   (`--allow CIDR:PORT|HOST:PORT`), parsed and checked the same way by
//!   the control plane (at deploy) and the agent (at each call);
//! - [`rules`]: the nftables ruleset the agent loads once (two tables of
//!   its own) and the elements it adds and deletes per call;
//! - [`cni`]: the configuration handed to the CNI bridge plugin and what
//!   the agent reads back from its result;
//! - [`resolv`]: the resolvers a call may ask, and its `resolv.conf`.
//!
//! The design, and the checks that every rule here is needed (56 of them,
//! run by hand on a real kernel), are in `docs/design/egress.md`.

#![forbid(unsafe_code)]

pub mod allow;
pub mod cni;
pub mod net;
pub mod resolv;
pub mod rules;

pub use allow::{Allow, AllowError, Destination, PortRange};
pub use net::Ipv4Net;
