//! Persistence in etcd: every object is a protobuf message under a versioned
//! key prefix (`<prefix>/<kind>/<name>`), so the stored form is the public
//! contract itself and needs no second schema.

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, SortOrder, SortTarget, Txn, TxnOp,
    WatchOptions,
};
use prost::Message;

/// The kinds of objects kept in etcd, each under its own key prefix.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Runtime,
    Function,
    Call,
    /// A call's logs, kept apart so that listing calls stays small.
    Logs,
    /// A node drained by an operator (a `Node` record): it stays drained
    /// across agent reconnects and leader changes until undrained.
    Drain,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Runtime => "runtimes",
            Kind::Function => "functions",
            Kind::Call => "calls",
            Kind::Logs => "logs",
            Kind::Drain => "drains",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("corrupt record at {key}: {source}")]
    Decode {
        key: String,
        source: prost::DecodeError,
    },
}

#[derive(Clone)]
pub struct Store {
    /// One client per etcd member: etcd-client's own balancing keeps
    /// sending requests to a dead member, so the store moves to the next
    /// member itself when one stops answering.
    clients: std::sync::Arc<Vec<Client>>,
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// When the store last moved to another member (ms since `epoch`):
    /// a burst of concurrent failures on one dead member moves once, not
    /// once per failed request (which could cycle back to the dead one).
    switched_at_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
    epoch: std::time::Instant,
    prefix: String,
}

/// Failures closer together than this move to the next member only once.
const MEMBER_SWITCH_DAMPING_MS: u64 = 500;

impl Store {
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Store, StoreError> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(std::time::Duration::from_secs(5))
            .with_timeout(std::time::Duration::from_secs(10))
            .with_keep_alive(
                std::time::Duration::from_secs(5),
                std::time::Duration::from_secs(5),
            );
        let mut clients = Vec::new();
        let mut last_error = None;
        for endpoint in endpoints {
            match Client::connect([endpoint], Some(options.clone())).await {
                Ok(c) => clients.push(c),
                Err(e) => {
                    tracing::warn!(%endpoint, error = %e, "etcd member not reachable");
                    last_error = Some(e);
                }
            }
        }
        if clients.is_empty() {
            return Err(last_error.map(StoreError::from).unwrap_or_else(|| {
                StoreError::Etcd(etcd_client::Error::InvalidArgs(
                    "no etcd endpoint given".into(),
                ))
            }));
        }
        Ok(Store {
            clients: std::sync::Arc::new(clients),
            current: Default::default(),
            switched_at_ms: Default::default(),
            epoch: std::time::Instant::now(),
            prefix: prefix.trim_end_matches('/').to_string(),
        })
    }

    /// A client of the etcd member in use.
    pub fn client(&self) -> Client {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed) % self.clients.len();
        self.clients[i].clone()
    }

    /// How many etcd members the store knows.
    pub fn members(&self) -> usize {
        self.clients.len()
    }

    /// The client of the member `offset` places after the one in use, for
    /// callers that must try every member in turn (lease renewal).
    pub fn client_after(&self, offset: usize) -> Client {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed) + offset;
        self.clients[i % self.clients.len()].clone()
    }

    /// Moves to the next etcd member (after an error of a call made with
    /// [`Store::client`] directly), unless another failure just did.
    pub fn next_member(&self) -> bool {
        use std::sync::atomic::Ordering;
        if self.clients.len() < 2 {
            return false;
        }
        let now = self.epoch.elapsed().as_millis() as u64 + MEMBER_SWITCH_DAMPING_MS;
        let last = self.switched_at_ms.load(Ordering::Relaxed);
        if now < last + MEMBER_SWITCH_DAMPING_MS
            || self
                .switched_at_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        self.current.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Passes a result through; on an error that says the member is gone
    /// (transport, unavailable, timeout), the next call goes to the next
    /// member.
    pub fn check<T>(&self, result: Result<T, etcd_client::Error>) -> Result<T, StoreError> {
        if let Err(e) = &result {
            let gone = match e {
                etcd_client::Error::TransportError(_) => true,
                etcd_client::Error::GRpcStatus(s) => matches!(
                    s.code(),
                    tonic::Code::Unavailable
                        | tonic::Code::DeadlineExceeded
                        | tonic::Code::Cancelled
                        | tonic::Code::Unknown
                ),
                _ => false,
            };
            if gone && self.next_member() {
                let member =
                    self.current.load(std::sync::atomic::Ordering::Relaxed) % self.clients.len();
                tracing::warn!(error = %e, member, "etcd member not answering; moving to the next");
            }
        }
        Ok(result?)
    }

    /// The key prefix everything lives under (e.g. `/faas/v1`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn key(&self, kind: Kind, name: &str) -> String {
        format!("{}/{}/{}", self.prefix, kind.dir(), name)
    }

    fn dir(&self, kind: Kind) -> String {
        format!("{}/{}/", self.prefix, kind.dir())
    }

    pub async fn get<M: Message + Default>(
        &self,
        kind: Kind,
        name: &str,
    ) -> Result<Option<M>, StoreError> {
        let key = self.key(kind, name);
        let resp = self.check(self.client().get(key.as_str(), None).await)?;
        match resp.kvs().first() {
            None => Ok(None),
            Some(kv) => decode(&key, kv.value()).map(Some),
        }
    }

    pub async fn put<M: Message>(
        &self,
        kind: Kind,
        name: &str,
        value: &M,
    ) -> Result<(), StoreError> {
        self.check(
            self.client()
                .put(self.key(kind, name), value.encode_to_vec(), None)
                .await,
        )?;
        Ok(())
    }

    /// Writes several objects in one transaction (one Raft commit).
    pub async fn put_many(&self, items: Vec<(Kind, String, Vec<u8>)>) -> Result<(), StoreError> {
        let ops: Vec<TxnOp> = items
            .into_iter()
            .map(|(kind, name, value)| TxnOp::put(self.key(kind, &name), value, None))
            .collect();
        self.check(self.client().txn(Txn::new().and_then(ops)).await)?;
        Ok(())
    }

    /// Creates the object; false if one of that name already exists.
    pub async fn create<M: Message>(
        &self,
        kind: Kind,
        name: &str,
        value: &M,
    ) -> Result<bool, StoreError> {
        let key = self.key(kind, name);
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.as_str(), value.encode_to_vec(), None)]);
        Ok(self.check(self.client().txn(txn).await)?.succeeded())
    }

    /// Writes the object only while `fence` (a key and its create revision:
    /// the leader's election key) still exists as it was; false otherwise.
    pub async fn put_fenced<M: Message>(
        &self,
        kind: Kind,
        name: &str,
        value: &M,
        fence: &crate::leader::LeaderFence,
    ) -> Result<bool, StoreError> {
        let key = self.key(kind, name);
        let txn = Txn::new()
            .when([Compare::create_revision(
                fence.key.clone(),
                CompareOp::Equal,
                fence.revision,
            )])
            .and_then([TxnOp::put(key.as_str(), value.encode_to_vec(), None)]);
        Ok(self.check(self.client().txn(txn).await)?.succeeded())
    }

    /// Writes the object only if its key is at `version` (1: written once);
    /// false if it was changed since.
    pub async fn put_if_version<M: Message>(
        &self,
        kind: Kind,
        name: &str,
        value: &M,
        version: i64,
    ) -> Result<bool, StoreError> {
        let key = self.key(kind, name);
        let txn = Txn::new()
            .when([Compare::version(key.as_str(), CompareOp::Equal, version)])
            .and_then([TxnOp::put(key.as_str(), value.encode_to_vec(), None)]);
        Ok(self.check(self.client().txn(txn).await)?.succeeded())
    }

    /// Up to `limit` objects of a kind in ascending key order (oldest calls
    /// first), with their names.
    pub async fn list_ascending<M: Message + Default>(
        &self,
        kind: Kind,
        limit: i64,
    ) -> Result<Vec<(String, M)>, StoreError> {
        let dir = self.dir(kind);
        let opts = GetOptions::new().with_prefix().with_limit(limit);
        let resp = self.check(self.client().get(dir.as_str(), Some(opts)).await)?;
        resp.kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).to_string();
                let name = key.strip_prefix(&dir).unwrap_or(&key).to_string();
                decode(&key, kv.value()).map(|m| (name, m))
            })
            .collect()
    }

    /// How many objects of a kind there are.
    pub async fn count(&self, kind: Kind) -> Result<i64, StoreError> {
        let dir = self.dir(kind);
        let opts = GetOptions::new().with_prefix().with_count_only();
        Ok(self
            .check(self.client().get(dir.as_str(), Some(opts)).await)?
            .count())
    }

    /// Deletes several objects in one transaction.
    pub async fn delete_many(&self, items: &[(Kind, String)]) -> Result<(), StoreError> {
        let ops: Vec<TxnOp> = items
            .iter()
            .map(|(kind, name)| TxnOp::delete(self.key(*kind, name), None))
            .collect();
        self.check(self.client().txn(Txn::new().and_then(ops)).await)?;
        Ok(())
    }

    /// Deletes the object; false if it did not exist.
    pub async fn delete(&self, kind: Kind, name: &str) -> Result<bool, StoreError> {
        let resp = self.check(self.client().delete(self.key(kind, name), None).await)?;
        Ok(resp.deleted() > 0)
    }

    /// Every object of a kind, in key order.
    pub async fn list<M: Message + Default>(&self, kind: Kind) -> Result<Vec<M>, StoreError> {
        let dir = self.dir(kind);
        let resp = self.check(
            self.client()
                .get(dir.as_str(), Some(GetOptions::new().with_prefix()))
                .await,
        )?;
        resp.kvs()
            .iter()
            .map(|kv| decode(&String::from_utf8_lossy(kv.key()), kv.value()))
            .collect()
    }

    /// Up to `limit` objects of a kind in descending key order, starting
    /// strictly below `before` (a name) if given. Returns the objects with
    /// their names.
    pub async fn list_descending<M: Message + Default>(
        &self,
        kind: Kind,
        before: Option<&str>,
        limit: i64,
    ) -> Result<Vec<(String, M)>, StoreError> {
        let dir = self.dir(kind);
        let mut opts = GetOptions::new()
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(limit);
        opts = match before {
            Some(name) => opts.with_range(format!("{dir}{name}")),
            None => opts.with_prefix(),
        };
        let resp = self.check(self.client().get(dir.as_str(), Some(opts)).await)?;
        resp.kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).to_string();
                let name = key.strip_prefix(&dir).unwrap_or(&key).to_string();
                decode(&key, kv.value()).map(|m| (name, m))
            })
            .collect()
    }
}

/// A change to an object of a watched kind.
#[derive(Debug)]
pub enum Change<M> {
    Put(M),
    Deleted(String),
}

impl Store {
    /// Every object of a kind, then every later change, delivered to `f`
    /// in order; re-lists after a broken or compacted watch. Runs until `f`
    /// returns false.
    pub async fn follow<M: Message + Default>(
        &self,
        kind: Kind,
        mut f: impl FnMut(Change<M>) -> bool,
    ) {
        let dir = self.dir(kind);
        loop {
            let listed = self.check(
                self.client()
                    .get(dir.as_str(), Some(GetOptions::new().with_prefix()))
                    .await,
            );
            let resp = match listed {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, kind = ?kind, "listing for a watch failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            };
            let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            for kv in resp.kvs() {
                if let Ok(m) = decode(&String::from_utf8_lossy(kv.key()), kv.value()) {
                    if !f(Change::Put(m)) {
                        return;
                    }
                }
            }
            let options = WatchOptions::new()
                .with_prefix()
                .with_start_revision(revision + 1);
            let mut stream =
                match self.check(self.client().watch(dir.as_str(), Some(options)).await) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, kind = ?kind, "watch failed; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        continue;
                    }
                };
            loop {
                match stream.message().await {
                    Ok(Some(resp)) if resp.canceled() || resp.compact_revision() > 0 => break,
                    Ok(Some(resp)) => {
                        for event in resp.events() {
                            let Some(kv) = event.kv() else { continue };
                            let key = String::from_utf8_lossy(kv.key()).to_string();
                            let change = match event.event_type() {
                                EventType::Put => match decode(&key, kv.value()) {
                                    Ok(m) => Change::Put(m),
                                    Err(_) => continue,
                                },
                                EventType::Delete => Change::Deleted(
                                    key.strip_prefix(&dir).unwrap_or(&key).to_string(),
                                ),
                            };
                            if !f(change) {
                                return;
                            }
                        }
                    }
                    Ok(None) | Err(_) => break,
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

fn decode<M: Message + Default>(key: &str, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|source| StoreError::Decode {
        key: key.to_string(),
        source,
    })
}
