//! The gRPC contracts of faas, generated from `proto/faas/v1/*.proto`.

/// Package `faas.v1`: the public API and the internal agent stream.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("faas.v1");
}
