//! Call retention: finished calls (and their logs) older than the
//! retention period, or beyond the retention count, are deleted by the
//! leader, oldest first, so etcd does not grow without bound.

use std::time::Duration;

use faas_proto::v1::Call;
use tracing::{info, warn};

use crate::store::{Kind, Order, Store};
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

/// One pass: deletes what the retention allows, oldest first, with what
/// lies beside each call (params, result, logs). Returns how many calls
/// were deleted.
pub async fn sweep(store: &Store, retention: &Retention) -> Result<u64, crate::store::StoreError> {
    /// Calls deleted per round (each round reads the oldest again).
    const BATCH: usize = 500;
    let now_ms = crate::error::now_ms() as u64;
    let mut deleted = 0u64;
    let mut excess = (store.count(Kind::Call).await? as u64).saturating_sub(retention.max_count);
    let mut after: Option<String> = None;
    loop {
        let mut doomed = Vec::new();
        let mut last = None;
        let mut done = true;
        store
            .scan(
                Kind::Call,
                Order::Ascending,
                after.as_deref(),
                |name, call: Call| {
                    let too_old = age_of(&name, now_ms).is_some_and(|age| age > retention.max_age);
                    if !(too_old || excess > 0) {
                        return false;
                    }
                    // A call still queued or running is never dropped.
                    if is_final(&call) {
                        doomed.push(name.clone());
                        excess = excess.saturating_sub(1);
                    }
                    last = Some(name);
                    if doomed.len() == BATCH {
                        done = false;
                        return false;
                    }
                    true
                },
            )
            .await?;
        if !doomed.is_empty() {
            store.delete_calls(&doomed).await?;
            deleted += doomed.len() as u64;
        }
        if done {
            return Ok(deleted);
        }
        // Kept calls (still pending) are passed over next round.
        after = last;
    }
}

/// Deletes expired join tokens (they join nothing, and would pile up);
/// returns how many.
pub async fn sweep_join_tokens(store: &Store) -> Result<u64, crate::store::StoreError> {
    let now_ms = crate::error::now_ms();
    let expired: Vec<(Kind, String)> = store
        .list::<faas_proto::v1::JoinTokenRecord>(Kind::JoinToken)
        .await?
        .into_iter()
        .filter(|t| t.expires_at_ms <= now_ms)
        .map(|t| (Kind::JoinToken, t.id))
        .collect();
    if !expired.is_empty() {
        store.delete_many(&expired).await?;
    }
    Ok(expired.len() as u64)
}

/// How often the leader checks etcd for a NOSPACE alarm (besides being
/// told at once when a write meets it).
const ALARM_CHECK: Duration = Duration::from_secs(10);

/// Sweeps forever (while this replica leads); and when etcd's space quota
/// is reached, reclaims space with no person involved: sweeps, compacts,
/// defragments every member and disarms the alarm. Users meanwhile get
/// RESOURCE_EXHAUSTED "cluster storage is full".
pub async fn run(store: Store, retention: Retention) {
    let mut next_sweep = tokio::time::Instant::now() + retention.every;
    let mut next_alarm_check = tokio::time::Instant::now();
    loop {
        let full = tokio::select! {
            _ = tokio::time::sleep_until(next_sweep) => false,
            _ = tokio::time::sleep_until(next_alarm_check) => {
                next_alarm_check = tokio::time::Instant::now() + ALARM_CHECK;
                match store.nospace_alarms().await {
                    Ok(alarmed) if !alarmed.is_empty() => true,
                    Ok(_) => continue,
                    Err(e) => {
                        warn!(error = %e, "could not read etcd's alarms");
                        continue;
                    }
                }
            }
            _ = store.nospace_seen() => true,
        };
        if !full {
            next_sweep = tokio::time::Instant::now() + retention.every;
            match sweep(&store, &retention).await {
                Ok(0) => {}
                Ok(n) => info!(deleted = n, "old calls removed"),
                Err(e) => warn!(error = %e, "call retention sweep failed"),
            }
            match sweep_join_tokens(&store).await {
                Ok(0) => {}
                Ok(n) => info!(deleted = n, "expired join tokens removed"),
                Err(e) => warn!(error = %e, "join token sweep failed"),
            }
            continue;
        }
        reclaim(&store, &retention).await;
        next_alarm_check = tokio::time::Instant::now() + ALARM_CHECK;
    }
}

/// One attempt at making etcd writable again.
async fn reclaim(store: &Store, retention: &Retention) {
    let alarmed = match store.nospace_alarms().await {
        Ok(a) if a.is_empty() => return,
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "could not read etcd's alarms");
            return;
        }
    };
    warn!(members = ?alarmed, "etcd's space quota is reached: reclaiming space");
    // What retention allows to go goes first, so that compaction frees it.
    match sweep(store, retention).await {
        Ok(n) => info!(deleted = n, "old calls removed to free space"),
        Err(e) => warn!(error = %e, "call retention sweep failed"),
    }
    let started = std::time::Instant::now();
    match store.reclaim_space(&alarmed).await {
        Ok(()) => info!(
            took_ms = started.elapsed().as_millis() as u64,
            "etcd compacted, defragmented and its NOSPACE alarm disarmed"
        ),
        Err(e) => warn!(error = %e, "reclaiming etcd space failed; retrying"),
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
