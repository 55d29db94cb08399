//! The gRPC contracts of faas, generated from `proto/faas/v1/*.proto`.

/// Package `faas.v1`: the public API and the internal agent stream.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("faas.v1");
}

/// Metadata key the control plane sets on an UNAVAILABLE answer given
/// before anything was recorded (no leader right now, a replica stepping
/// down): the client may send the same request again without risking a
/// duplicate call. Absent on other UNAVAILABLE answers.
pub const RETRY_SAFE_METADATA: &str = "faas-retry-safe";
