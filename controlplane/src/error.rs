//! The one place where the control plane's errors become gRPC statuses.

use tonic::Status;

use crate::package::PackageError;
use crate::registry::RegistryError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    ResourceExhausted(String),
    /// Over an admission bound: the client is told which, and when to try
    /// again (`retry-after-ms`).
    #[error("{message}")]
    Overloaded {
        message: String,
        retry_after: std::time::Duration,
    },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A concurrent change won a compare-and-swap: nothing was changed,
    /// and trying again is safe.
    #[error("{0}")]
    Aborted(String),
    #[error("{}", store_message(.0))]
    Store(#[from] StoreError),
    #[error("invalid function package: {0}")]
    Package(#[from] PackageError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Something of the platform's own is broken (a secret that does not
    /// open with this replica's key): not the client's to fix.
    #[error("{0}")]
    Internal(String),
}

impl From<crate::secrets::SecretError> for ApiError {
    fn from(e: crate::secrets::SecretError) -> ApiError {
        use crate::secrets::SecretError;
        match e {
            SecretError::NoKey | SecretError::Missing(_) => {
                ApiError::FailedPrecondition(e.to_string())
            }
            SecretError::Store(s) => ApiError::Store(s),
            SecretError::Seal { .. } => ApiError::Internal(e.to_string()),
        }
    }
}

/// Metadata entry of a RESOURCE_EXHAUSTED answer: milliseconds to wait
/// before trying again.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

/// How long a client is told to wait while etcd's storage is full (the
/// leader reclaims space within seconds when it can).
const STORAGE_FULL_RETRY_AFTER_MS: u64 = 5_000;

fn store_message(e: &StoreError) -> String {
    match e {
        StoreError::NoSpace | StoreError::TooLarge(_) => e.to_string(),
        _ => format!("state store unavailable: {e}"),
    }
}

fn with_retry_after(mut status: Status, ms: u64) -> Status {
    if let Ok(value) = tonic::metadata::MetadataValue::try_from(ms.to_string()) {
        status.metadata_mut().insert(RETRY_AFTER_MS, value);
    }
    status
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        // Messages may quote user data (paths inside a corrupt archive):
        // never send control characters back to a terminal.
        let msg: String = e
            .to_string()
            .chars()
            .map(|c| if c.is_control() && c != '\n' { '?' } else { c })
            .collect();
        match e {
            ApiError::NotFound(_) => Status::not_found(msg),
            ApiError::InvalidArgument(_) | ApiError::Package(_) => Status::invalid_argument(msg),
            ApiError::AlreadyExists(_) => Status::already_exists(msg),
            ApiError::FailedPrecondition(_) => Status::failed_precondition(msg),
            ApiError::PermissionDenied(_) => Status::permission_denied(msg),
            ApiError::ResourceExhausted(_) => Status::resource_exhausted(msg),
            ApiError::Overloaded { retry_after, .. } => with_retry_after(
                Status::resource_exhausted(msg),
                retry_after.as_millis().max(1) as u64,
            ),
            ApiError::Store(StoreError::NoSpace) => {
                with_retry_after(Status::resource_exhausted(msg), STORAGE_FULL_RETRY_AFTER_MS)
            }
            ApiError::Store(StoreError::TooLarge(_)) => Status::resource_exhausted(msg),
            ApiError::Unavailable(_) => {
                // Raised before anything was recorded or forwarded (no
                // leader, not the leader): a client may safely send the
                // same request again. Other UNAVAILABLE answers (etcd or a
                // broken connection mid-request) may follow a write.
                let mut status = Status::unavailable(msg);
                status.metadata_mut().insert(
                    faas_proto::RETRY_SAFE_METADATA,
                    tonic::metadata::MetadataValue::from_static("1"),
                );
                status
            }
            ApiError::DeadlineExceeded(_) => Status::deadline_exceeded(msg),
            ApiError::Aborted(_) => Status::aborted(msg),
            ApiError::Internal(_) => Status::internal(msg),
            ApiError::Store(StoreError::Decode { .. }) => Status::internal(msg),
            ApiError::Store(StoreError::Etcd(_))
            | ApiError::Store(StoreError::TlsFile(..))
            | ApiError::Store(StoreError::Unreachable { .. }) => Status::unavailable(msg),
            ApiError::Registry(RegistryError::BadArchive(_))
            | ApiError::Registry(RegistryError::BadReference(..)) => Status::invalid_argument(msg),
            ApiError::Registry(RegistryError::Token(_))
            | ApiError::Registry(RegistryError::BadCa(_)) => Status::internal(msg),
            ApiError::Registry(RegistryError::Registry(ref inner)) => {
                if inner.to_string().contains("not found") || inner.to_string().contains("404") {
                    Status::not_found(msg)
                } else {
                    Status::unavailable(msg)
                }
            }
        }
    }
}

/// Names of runtimes and functions: 1-63 of [a-z0-9-], not starting with '-'.
pub fn check_name(kind: &str, name: &str) -> Result<(), ApiError> {
    if faas_proto::rules::is_name(name) {
        Ok(())
    } else {
        Err(ApiError::InvalidArgument(format!(
            "invalid {kind} name {name:?}: use {}",
            faas_proto::rules::NAME_RULE
        )))
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Wall-clock time in ms with sub-millisecond precision, for timings.
pub fn now_ms_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_storage_and_overload_say_so_with_a_retry_hint() {
        let full: Status = ApiError::Store(StoreError::NoSpace).into();
        assert_eq!(full.code(), tonic::Code::ResourceExhausted);
        assert!(
            full.message().starts_with("cluster storage is full"),
            "{}",
            full.message()
        );
        assert_eq!(full.metadata().get(RETRY_AFTER_MS).unwrap(), "5000");
        let busy: Status = ApiError::Overloaded {
            message: "too many".into(),
            retry_after: std::time::Duration::from_millis(250),
        }
        .into();
        assert_eq!(busy.code(), tonic::Code::ResourceExhausted);
        assert_eq!(busy.metadata().get(RETRY_AFTER_MS).unwrap(), "250");
        let gone: Status = ApiError::Store(StoreError::Etcd(etcd_client::Error::InvalidArgs(
            "x".into(),
        )))
        .into();
        assert_eq!(gone.code(), tonic::Code::Unavailable);
        assert!(gone.message().starts_with("state store unavailable"));
    }

    #[test]
    fn names() {
        for good in ["a", "python3", "my-fn-2", "0abc"] {
            assert!(check_name("function", good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "A", "a_b", "a/b", "a.b", &"x".repeat(64)] {
            assert!(check_name("function", bad).is_err(), "{bad}");
        }
    }
}
