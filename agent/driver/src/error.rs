//! The driver's error type: every variant says which operation on which
//! object failed, so a log line is enough to find the cause.

use tonic::Code;

/// Everything that can go wrong while driving containerd or a registry.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("cannot connect to containerd at {socket}: {source}")]
    Connect {
        socket: String,
        #[source]
        source: tonic::transport::Error,
    },

    /// A containerd RPC answered with an error status.
    #[error("containerd {op} {target}: {} ({:?})", .status.message(), .status.code())]
    Rpc {
        op: &'static str,
        target: String,
        #[source]
        status: tonic::Status,
    },

    #[error("registry: {op} {reference}: {source}")]
    Registry {
        op: &'static str,
        reference: String,
        #[source]
        source: oci_client::errors::OciDistributionError,
    },

    #[error("registry: reading blob {digest} of {reference}: {source}")]
    BlobStream {
        reference: String,
        digest: String,
        #[source]
        source: std::io::Error,
    },

    /// The image is not something this driver can run (bad manifest,
    /// unsupported media type, digest mismatch, no matching platform...).
    #[error("image {reference}: {reason}")]
    Image { reference: String, reason: String },

    /// The caller gave something unusable (bad id, bad reference, bad namespace).
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },

    #[error("building the OCI runtime spec for {id}: {reason}")]
    Spec { id: String, reason: String },

    #[error("waiting for the exit of {id}: {reason}")]
    Wait { id: String, reason: String },

    #[error("timed out after {seconds}s: {what}")]
    Timeout { what: String, seconds: u64 },
}

impl DriverError {
    pub(crate) fn rpc(op: &'static str, target: impl Into<String>, status: tonic::Status) -> Self {
        DriverError::Rpc {
            op,
            target: target.into(),
            status,
        }
    }

    pub(crate) fn image(reference: &str, reason: impl Into<String>) -> Self {
        DriverError::Image {
            reference: reference.to_string(),
            reason: reason.into(),
        }
    }

    pub(crate) fn invalid(what: &'static str, reason: impl Into<String>) -> Self {
        DriverError::Invalid {
            what,
            reason: reason.into(),
        }
    }

    /// The gRPC code when containerd answered with an error.
    pub fn code(&self) -> Option<Code> {
        match self {
            DriverError::Rpc { status, .. } => Some(status.code()),
            _ => None,
        }
    }

    /// True when containerd said the object does not exist.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(Code::NotFound)
    }

    /// True when containerd said the object already exists.
    pub fn is_already_exists(&self) -> bool {
        self.code() == Some(Code::AlreadyExists)
    }
}

/// Maps a NOT_FOUND answer to `Ok(None)`: most tear-down steps treat
/// "already gone" as success.
pub(crate) trait NotFoundOk<T> {
    fn not_found_ok(self) -> Result<Option<T>, DriverError>;
}

impl<T> NotFoundOk<T> for Result<T, DriverError> {
    fn not_found_ok(self) -> Result<Option<T>, DriverError> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
}
