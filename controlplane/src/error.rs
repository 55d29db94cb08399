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
    ResourceExhausted(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("state store unavailable: {0}")]
    Store(#[from] StoreError),
    #[error("invalid function package: {0}")]
    Package(#[from] PackageError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
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
            ApiError::ResourceExhausted(_) => Status::resource_exhausted(msg),
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
            ApiError::Store(StoreError::Decode { .. }) => Status::internal(msg),
            ApiError::Store(StoreError::Etcd(_)) => Status::unavailable(msg),
            ApiError::Registry(RegistryError::BadArchive(_))
            | ApiError::Registry(RegistryError::BadReference(..)) => Status::invalid_argument(msg),
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
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ApiError::InvalidArgument(format!(
            "invalid {kind} name {name:?}: use 1-63 characters of a-z, 0-9 and '-', not starting with '-'"
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
    fn names() {
        for good in ["a", "python3", "my-fn-2", "0abc"] {
            assert!(check_name("function", good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "A", "a_b", "a/b", "a.b", &"x".repeat(64)] {
            assert!(check_name("function", bad).is_err(), "{bad}");
        }
    }
}
