//! Leader election through etcd's election API. Only the leader runs the
//! broker; the moment its lease may have lapsed it must stop acting as
//! leader.

use std::time::Duration;

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::store::{Store, StoreError};

/// The election key a leader holds and the revision that created it:
/// writes conditional on it are fenced (they fail once another replica may
/// lead, because the key is gone or was created again).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderFence {
    pub key: Vec<u8>,
    pub revision: i64,
}

pub struct Leadership {
    /// Resolves when the lease behind the leadership is (or may be) lost.
    pub lost: oneshot::Receiver<()>,
    pub lease_id: i64,
    /// The election key this replica holds while it leads.
    pub fence: Option<LeaderFence>,
    /// Keeps the lease alive; aborted when leadership ends.
    keeper: JoinHandle<()>,
}

impl Leadership {
    /// Whether the lease was already lost.
    pub fn is_lost(&mut self) -> bool {
        !matches!(
            self.lost.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        )
    }

    /// Ends the leadership: stops renewing and revokes the lease, so that
    /// the next campaign (ours or another replica's) need not wait for it
    /// to expire. Best effort: an unreachable etcd lets it lapse instead.
    pub async fn resign(self, store: &Store) {
        self.keeper.abort();
        revoke(store, self.lease_id).await;
    }
}

/// Revokes a lease through whichever member answers first (a second
/// each).
async fn revoke(store: &Store, lease_id: i64) {
    for offset in 0..store.members() {
        let mut client = store.client_after(offset);
        match tokio::time::timeout(Duration::from_secs(1), client.lease_revoke(lease_id)).await {
            Ok(Ok(_)) => {
                info!(lease_id, "leader lease revoked");
                return;
            }
            Ok(Err(e)) => warn!(lease_id, error = %e, "could not revoke the leader lease here"),
            Err(_) => warn!(lease_id, "revoking the leader lease timed out here"),
        }
    }
    warn!(
        lease_id,
        "the leader lease could not be revoked; it lapses with its TTL"
    );
}

/// Blocks until this replica leads `election`.
pub async fn campaign(
    store: &Store,
    election: &str,
    name: &str,
    ttl_secs: i64,
) -> Result<Leadership, StoreError> {
    let mut client = store.client();
    let lease_id = store.check(client.lease_grant(ttl_secs, None).await)?.id();
    let (lost_tx, lost_rx) = oneshot::channel();
    let ttl = Duration::from_secs(ttl_secs.max(1) as u64);
    let keeper = tokio::spawn(keep_lease(store.clone(), lease_id, ttl, lost_tx));
    info!(election, name, lease_id, "campaigning for leadership");
    let mut leadership = Leadership {
        lost: lost_rx,
        lease_id,
        fence: None,
        keeper,
    };
    let outcome = tokio::select! {
        outcome = client.campaign(election, name, lease_id) => outcome.map(|r| {
            leadership.fence = r.leader().map(|k| LeaderFence {
                key: k.key().to_vec(),
                revision: k.rev(),
            });
        }),
        // The lease lapsed while waiting: the campaign would end as if
        // elected once etcd deletes the key, so it is given up now.
        _ = &mut leadership.lost => Err(etcd_client::Error::LeaseKeepAliveError(
            "the campaign's lease could not be kept alive".into(),
        )),
    };
    match outcome {
        Ok(()) => {
            info!(name, "this replica leads");
            Ok(leadership)
        }
        Err(e) => {
            // A lease kept alive for a campaign that failed would leak.
            let error = store.check::<()>(Err(e)).unwrap_err();
            leadership.resign(store).await;
            Err(error)
        }
    }
}

/// Renews the lease every third of its TTL. A renewal that fails (the etcd
/// member died, or etcd is electing a new Raft leader) is retried through
/// the other members; `lost` fires only when no renewal was confirmed for
/// nearly a TTL, i.e. when the lease may really have expired and another
/// replica may lead.
async fn keep_lease(store: Store, lease_id: i64, ttl: Duration, lost: oneshot::Sender<()>) {
    let period = (ttl / 3).max(Duration::from_millis(300));
    let margin = (ttl / 4).min(Duration::from_millis(500));
    let mut expires = Instant::now() + ttl;
    let mut stream: Option<(LeaseKeeper, LeaseKeepAliveStream)> = None;
    // The member renewals go to, relative to the store's; moved on every
    // failure (the store's own choice is damped for bursts of failures).
    let mut member = 0;
    let mut attempt_timeout = period;
    loop {
        let sent_at = Instant::now();
        let renewal = renew(&store, member, lease_id, &mut stream);
        match tokio::time::timeout(attempt_timeout, renewal).await {
            Ok(Ok(true)) => {
                expires = sent_at + ttl;
                attempt_timeout = period;
                tokio::time::sleep(period).await;
                continue;
            }
            Ok(Ok(false)) => {
                warn!(lease_id, "the leader lease expired");
                break;
            }
            Ok(Err(e)) => warn!(lease_id, error = %e, "renewing the leader lease failed; retrying"),
            Err(_) => warn!(lease_id, "renewing the leader lease timed out; retrying"),
        }
        stream = None;
        member += 1;
        // Retries are quick so that every member gets a chance within
        // the TTL (a member without a Raft leader only answers later).
        attempt_timeout = Duration::from_millis(400);
        if Instant::now() + margin >= expires {
            warn!(
                lease_id,
                "no renewal confirmed for a lease TTL; the lease may have expired"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = lost.send(());
}

/// One renewal; false if etcd says the lease is gone.
async fn renew(
    store: &Store,
    member: usize,
    lease_id: i64,
    stream: &mut Option<(LeaseKeeper, LeaseKeepAliveStream)>,
) -> Result<bool, etcd_client::Error> {
    match stream {
        None => match store.client_after(member).lease_keep_alive(lease_id).await {
            Ok(opened) => {
                // Opening the stream renewed the lease once.
                *stream = Some(opened);
                Ok(true)
            }
            Err(etcd_client::Error::LeaseKeepAliveError(m)) if m.contains("not found") => Ok(false),
            Err(e) => Err(e),
        },
        Some((keeper, responses)) => {
            keeper.keep_alive().await?;
            match responses.message().await? {
                Some(response) => Ok(response.ttl() > 0),
                None => Err(etcd_client::Error::LeaseKeepAliveError(
                    "keep-alive stream ended".into(),
                )),
            }
        }
    }
}
