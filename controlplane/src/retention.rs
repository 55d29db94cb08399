//! Call retention: finished calls (and their logs) older than the
//! retention period, or beyond the retention count, are deleted by the
//! leader, oldest first, so etcd does not grow without bound.

use std::time::Duration;

use faas_proto::v1::Call;
use tracing::{info, warn};

use crate::store::{Kind, Store};
use crate::watch::is_final;

/// How calls are kept.
#[derive(Clone, Debug)]
pub struct Retention {
    pub max_age: Duration,
    pub max_count: u64,
    pub every: Duration,
}

/// Age of a call from its (UUIDv7, time-ordered) id.
fn age_of(id: &str, now_ms: u64) -> Option<Duration> {
    let (secs, nanos) = uuid::Uuid::parse_str(id).ok()?.get_timestamp()?.to_unix();
    let created_ms = secs * 1000 + u64::from(nanos) / 1_000_000;
    Some(Duration::from_millis(now_ms.saturating_sub(created_ms)))
}

/// One pass: deletes what the retention allows, oldest first. Returns how
/// many calls were deleted.
pub async fn sweep(store: &Store, retention: &Retention) -> Result<u64, crate::store::StoreError> {
    const BATCH: i64 = 500;
    let now_ms = crate::error::now_ms() as u64;
    let mut deleted = 0u64;
    let mut excess = (store.count(Kind::Call).await? as u64).saturating_sub(retention.max_count);
    loop {
        let oldest: Vec<(String, Call)> = store.list_ascending(Kind::Call, BATCH).await?;
        let mut doomed = Vec::new();
        for (name, call) in &oldest {
            let too_old = age_of(name, now_ms).is_some_and(|age| age > retention.max_age);
            if !(too_old || excess > 0) {
                break;
            }
            // A call still queued or running is never dropped.
            if is_final(call) {
                doomed.push((Kind::Call, name.clone()));
                doomed.push((Kind::Logs, name.clone()));
                excess = excess.saturating_sub(1);
            }
        }
        if doomed.is_empty() {
            return Ok(deleted);
        }
        deleted += doomed.len() as u64 / 2;
        store.delete_many(&doomed).await?;
        if (oldest.len() as i64) < BATCH {
            return Ok(deleted);
        }
    }
}

/// Sweeps forever (while this replica leads).
pub async fn run(store: Store, retention: Retention) {
    loop {
        tokio::time::sleep(retention.every).await;
        match sweep(&store, &retention).await {
            Ok(0) => {}
            Ok(n) => info!(deleted = n, "old calls removed"),
            Err(e) => warn!(error = %e, "call retention sweep failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_come_from_the_ids() {
        let id = uuid::Uuid::now_v7().to_string();
        let now = crate::error::now_ms() as u64;
        let age = age_of(&id, now + 60_000).expect("v7 id");
        assert!(
            age >= Duration::from_secs(59) && age <= Duration::from_secs(61),
            "{age:?}"
        );
        assert_eq!(age_of("not-a-uuid", now), None);
    }
}
