//! What can go wrong, one variant per thing a caller may act on: the
//! configuration, the connection, and the server's gRPC codes (the API
//! uses them precisely, `proto/faas/v1/api.proto`).

use std::path::PathBuf;
use std::time::Duration;

use tonic::{Code, Status};

/// The metadata key of the hint on an admission refusal
/// (RESOURCE_EXHAUSTED): how long to wait before submitting again.
pub const RETRY_AFTER_METADATA: &str = "retry-after-ms";

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ------------------------------------------------------ configuration
    #[error("reading {}", .path.display())]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing {}", .path.display())]
    ParseConfig {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("writing {}", .path.display())]
    WriteConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no context {name:?} in {} (faasctl context ls)", .path.display())]
    NoContext { name: String, path: PathBuf },
    #[error("reading the token file {}", .path.display())]
    ReadToken {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the CA certificate {}", .path.display())]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The token cannot be sent as a header (it must be printable ASCII).
    #[error("{0}")]
    InvalidToken(String),

    // --------------------------------------------------------- connection
    #[error("invalid endpoint {endpoint:?}: {message}")]
    InvalidEndpoint { endpoint: String, message: String },
    #[error("no endpoint given")]
    NoEndpoint,
    /// Every endpoint of the list was tried; why each failed.
    #[error("cannot reach the control plane: {}", .attempts.join("; "))]
    Unreachable { attempts: Vec<String> },

    // ------------------------------------------------- the server's answer
    /// NOT_FOUND: no such function, call, runtime, namespace or secret.
    #[error("NOT_FOUND: {}", .0.message())]
    NotFound(#[source] Status),
    /// INVALID_ARGUMENT (or OUT_OF_RANGE): a bad name, params that are not
    /// JSON, a corrupt archive.
    #[error("INVALID_ARGUMENT: {}", .0.message())]
    InvalidArgument(#[source] Status),
    /// ALREADY_EXISTS.
    #[error("ALREADY_EXISTS: {}", .0.message())]
    AlreadyExists(#[source] Status),
    /// FAILED_PRECONDITION or ABORTED: e.g. a runtime still used, no agent
    /// connected.
    #[error("FAILED_PRECONDITION: {}", .0.message())]
    FailedPrecondition(#[source] Status),
    /// RESOURCE_EXHAUSTED: a size limit, or an admission bound (queued
    /// calls, the submit rate, cluster storage), which carries the time to
    /// wait before trying again.
    #[error("RESOURCE_EXHAUSTED: {}", .status.message())]
    ResourceExhausted {
        #[source]
        status: Status,
        retry_after: Option<Duration>,
    },
    /// UNAUTHENTICATED: no token, or one the cluster does not know.
    #[error("UNAUTHENTICATED: {}", .0.message())]
    Unauthenticated(#[source] Status),
    /// PERMISSION_DENIED: the token's role or namespaces do not allow it.
    #[error("PERMISSION_DENIED: {}", .0.message())]
    PermissionDenied(#[source] Status),
    /// UNAVAILABLE: etcd, the registry or the leader unreachable. With
    /// `retry_safe` nothing was recorded and the request may be sent again
    /// (the client already did, for up to 8 s, on Invoke and Submit).
    #[error("UNAVAILABLE: {}", .status.message())]
    Unavailable {
        #[source]
        status: Status,
        retry_safe: bool,
    },
    /// DEADLINE_EXCEEDED: the RPC deadline passed, or a wait's timeout.
    #[error("DEADLINE_EXCEEDED: {}", .0.message())]
    DeadlineExceeded(#[source] Status),
    /// Any other gRPC status (INTERNAL, UNKNOWN, CANCELLED, ...).
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Rpc(#[source] Status),

    // -------------------------------------------------------------- waits
    /// A WaitCall stream ended before the call was final.
    #[error("the server ended the wait for call {id} {}", match .last_status {
        Some(status) => format!("while it was {status}"),
        None => "without a record".to_string(),
    })]
    WaitEnded {
        id: String,
        /// The last status seen ("running"), None if no record came.
        last_status: Option<String>,
    },
}

impl Error {
    /// The server's status, for the variants that carry one.
    pub fn status(&self) -> Option<&Status> {
        match self {
            Error::NotFound(s)
            | Error::InvalidArgument(s)
            | Error::AlreadyExists(s)
            | Error::FailedPrecondition(s)
            | Error::Unauthenticated(s)
            | Error::PermissionDenied(s)
            | Error::DeadlineExceeded(s)
            | Error::Rpc(s) => Some(s),
            Error::ResourceExhausted { status, .. } | Error::Unavailable { status, .. } => {
                Some(status)
            }
            _ => None,
        }
    }

    /// The gRPC code of a server's answer; None for errors that happened
    /// on this side (configuration, connection, a wait cut short).
    pub fn code(&self) -> Option<Code> {
        self.status().map(Status::code)
    }

    /// Whether sending the same request again cannot record anything
    /// twice: an UNAVAILABLE with the retry-safe mark, an admission refusal
    /// (after `retry_after`), or no connection at all.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Unavailable {
                retry_safe: true,
                ..
            } | Error::ResourceExhausted {
                retry_after: Some(_),
                ..
            } | Error::Unreachable { .. }
        )
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Error {
        match status.code() {
            Code::NotFound => Error::NotFound(status),
            Code::InvalidArgument | Code::OutOfRange => Error::InvalidArgument(status),
            Code::AlreadyExists => Error::AlreadyExists(status),
            Code::FailedPrecondition | Code::Aborted => Error::FailedPrecondition(status),
            Code::ResourceExhausted => {
                let retry_after = status
                    .metadata()
                    .get(RETRY_AFTER_METADATA)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_millis);
                Error::ResourceExhausted {
                    status,
                    retry_after,
                }
            }
            Code::Unauthenticated => Error::Unauthenticated(status),
            Code::PermissionDenied => Error::PermissionDenied(status),
            Code::Unavailable => {
                let retry_safe = status
                    .metadata()
                    .contains_key(faas_proto::RETRY_SAFE_METADATA);
                Error::Unavailable { status, retry_safe }
            }
            Code::DeadlineExceeded => Error::DeadlineExceeded(status),
            _ => Error::Rpc(status),
        }
    }
}

/// The gRPC code as written in the proto and in gRPC docs (NOT_FOUND),
/// which is what users search for; tonic's Display is a sentence.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_become_precise_variants() {
        assert!(matches!(
            Error::from(Status::not_found("function 'x' not found")),
            Error::NotFound(_)
        ));
        let mut refused = Status::resource_exhausted("submit rate");
        refused
            .metadata_mut()
            .insert(RETRY_AFTER_METADATA, "250".parse().unwrap());
        let e = Error::from(refused);
        assert!(
            matches!(e, Error::ResourceExhausted { retry_after: Some(d), .. } if d == Duration::from_millis(250))
        );
        assert!(e.is_retryable());
        assert!(!Error::from(Status::resource_exhausted("too big")).is_retryable());
        let mut safe = Status::unavailable("no leader");
        safe.metadata_mut()
            .insert(faas_proto::RETRY_SAFE_METADATA, "1".parse().unwrap());
        assert!(Error::from(safe).is_retryable());
        let unsafe_ = Error::from(Status::unavailable("etcd"));
        assert!(matches!(
            unsafe_,
            Error::Unavailable {
                retry_safe: false,
                ..
            }
        ));
        assert!(!unsafe_.is_retryable());
        let e = Error::from(Status::internal("oops"));
        assert_eq!(e.to_string(), "INTERNAL: oops");
        assert_eq!(e.code(), Some(Code::Internal));
    }

    #[test]
    fn the_status_is_the_source() {
        // faasctl finds the status in the error's chain to pick its exit code.
        let e = Error::from(Status::permission_denied("invoker"));
        let source = std::error::Error::source(&e).unwrap();
        assert!(source.downcast_ref::<Status>().is_some());
    }
}
