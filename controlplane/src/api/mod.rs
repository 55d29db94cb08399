//! The public gRPC API (`faas.v1`): validation, persistence, and hand-off of
//! calls to the broker.

mod calls;
mod cluster;
mod functions;
mod runtimes;
mod stats;

use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::watch;
use tonic::Streaming;

use crate::broker::BrokerHandle;
use crate::config::Limits;
use crate::error::ApiError;
use crate::registry::Registry;
use crate::store::Store;
use crate::watch::CallWatch;

/// Shared by every service; cheap to clone.
#[derive(Clone)]
pub struct Api {
    pub store: Store,
    pub registry: Registry,
    pub limits: Arc<Limits>,
    pub calls: Arc<CallWatch>,
    /// Set while this replica leads and runs the broker.
    pub broker: watch::Receiver<Option<BrokerHandle>>,
    pub replica: Arc<str>,
}

impl Api {
    fn broker(&self) -> Result<BrokerHandle, ApiError> {
        self.broker.borrow().clone().ok_or_else(|| {
            ApiError::Unavailable(
                "this control-plane replica does not lead the cluster (yet); retry or use the leader".into(),
            )
        })
    }
}

/// Reads a client stream made of a header message followed by chunks of
/// bytes, refusing more than `limit` bytes in total. `check_head` sees the
/// first bytes (at least 512 or the whole upload if shorter) as soon as
/// they arrive, so that an upload of the wrong kind is refused before the
/// rest of it is read.
async fn read_upload<M>(
    stream: &mut Streaming<M>,
    limit: u64,
    what: &str,
    chunk_of: impl Fn(M) -> Option<Vec<u8>>,
    check_head: impl Fn(&[u8]) -> Result<(), ApiError>,
) -> Result<Vec<u8>, ApiError>
where
    M: Send + 'static,
{
    const HEAD: usize = 512;
    let mut data = Vec::new();
    let mut head_checked = false;
    while let Some(message) = stream.next().await {
        let message =
            message.map_err(|e| ApiError::InvalidArgument(format!("upload interrupted: {e}")))?;
        let Some(chunk) = chunk_of(message) else {
            return Err(ApiError::InvalidArgument(format!(
                "only chunks of the {what} may follow the first message"
            )));
        };
        if data.len() as u64 + chunk.len() as u64 > limit {
            return Err(ApiError::ResourceExhausted(format!(
                "{what} is larger than the limit of {limit} bytes"
            )));
        }
        data.extend_from_slice(&chunk);
        if !head_checked && data.len() >= HEAD {
            check_head(&data)?;
            head_checked = true;
        }
    }
    if !head_checked && !data.is_empty() {
        check_head(&data)?;
    }
    Ok(data)
}
