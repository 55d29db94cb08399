//! Leader election through etcd's election API. Only the leader runs the
//! broker; the moment its lease is gone it must stop acting as leader.

use std::time::Duration;

use etcd_client::Client;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::store::StoreError;

pub struct Leadership {
    /// Resolves when the lease behind the leadership is lost.
    pub lost: oneshot::Receiver<()>,
    pub lease_id: i64,
}

/// Blocks until this replica leads `election`.
pub async fn campaign(
    mut client: Client,
    election: &str,
    name: &str,
    ttl: i64,
) -> Result<Leadership, StoreError> {
    let lease_id = client.lease_grant(ttl, None).await?.id();
    let (mut keeper, mut responses) = client.lease_keep_alive(lease_id).await?;
    let (lost_tx, lost_rx) = oneshot::channel();
    let period = Duration::from_millis((ttl as u64 * 1000 / 3).max(300));
    tokio::spawn(async move {
        loop {
            if let Err(e) = keeper.keep_alive().await {
                warn!(error = %e, "leader lease keep-alive failed");
                break;
            }
            match tokio::time::timeout(period, responses.message()).await {
                Ok(Ok(Some(r))) if r.ttl() > 0 => {}
                other => {
                    warn!(?other, "leader lease expired or its stream ended");
                    break;
                }
            }
            tokio::time::sleep(period).await;
        }
        let _ = lost_tx.send(());
    });
    info!(election, name, lease_id, "campaigning for leadership");
    client.campaign(election, name, lease_id).await?;
    info!(name, "this replica leads");
    Ok(Leadership {
        lost: lost_rx,
        lease_id,
    })
}
