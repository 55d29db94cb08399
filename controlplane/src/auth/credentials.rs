//! The credentials a replica checks on every request, kept in memory so
//! that no request waits for etcd: API tokens by id and joined nodes by
//! name. Each replica lists them at start, follows etcd's changes, and
//! lists them again every [`RELOAD_EVERY`] (a deletion missed while a watch
//! was broken is caught then). A replica's own writes apply at once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use faas_pki::{ClusterCa, Token};
use faas_proto::v1::{ApiToken, ClusterCaRecord, NodeIdentity, Role};
use tokio::sync::watch;
use tonic::Status;
use tracing::{info, warn};

use crate::error::now_ms;
use crate::store::{Change, Kind, Store, StoreError};

/// How often the caches are rebuilt from a full listing.
const RELOAD_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Credentials {
    inner: Arc<Inner>,
}

struct Inner {
    tokens: RwLock<HashMap<String, ApiToken>>,
    nodes: RwLock<HashMap<String, NodeIdentity>>,
    /// Bumped on every change to the nodes: open sessions check that their
    /// certificate is still their node's.
    nodes_changed: watch::Sender<u64>,
    /// Bumped on every change applied from a watch or a write: a full
    /// listing taken before a change must not undo it.
    changes: std::sync::atomic::AtomicU64,
}

impl Credentials {
    /// Empty caches (tests of pure logic).
    pub fn empty() -> Credentials {
        Credentials {
            inner: Arc::new(Inner {
                tokens: Default::default(),
                nodes: Default::default(),
                nodes_changed: watch::channel(0).0,
                changes: Default::default(),
            }),
        }
    }

    /// Lists both kinds, then keeps them current in the background.
    pub async fn load(store: &Store) -> Result<Credentials, StoreError> {
        let credentials = Credentials::empty();
        credentials.reload(store).await?;
        let (c, s) = (credentials.clone(), store.clone());
        tokio::spawn(async move {
            s.follow::<ApiToken>(Kind::ApiToken, |change| {
                match change {
                    Change::Put(t) => c.put_token(t),
                    Change::Deleted(id) => c.remove_token(&id),
                }
                true
            })
            .await
        });
        let (c, s) = (credentials.clone(), store.clone());
        tokio::spawn(async move {
            s.follow::<NodeIdentity>(Kind::NodeIdentity, |change| {
                match change {
                    Change::Put(n) => c.put_node(n),
                    Change::Deleted(name) => c.remove_node(&name),
                }
                true
            })
            .await
        });
        let (c, s) = (credentials.clone(), store.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(RELOAD_EVERY).await;
                if let Err(e) = c.reload(&s).await {
                    warn!(error = %e, "reloading credentials failed; keeping the last ones");
                }
            }
        });
        Ok(credentials)
    }

    async fn reload(&self, store: &Store) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        let before = self.inner.changes.load(Ordering::SeqCst);
        let tokens: Vec<ApiToken> = store.list(Kind::ApiToken).await?;
        let nodes: Vec<NodeIdentity> = store.list(Kind::NodeIdentity).await?;
        if self.inner.changes.load(Ordering::SeqCst) != before {
            // A change came in while listing: the listing may predate it.
            // The next reload tries again.
            return Ok(());
        }
        *self.inner.tokens.write().expect("poisoned") =
            tokens.into_iter().map(|t| (t.id.clone(), t)).collect();
        let nodes: HashMap<String, NodeIdentity> =
            nodes.into_iter().map(|n| (n.name.clone(), n)).collect();
        let mut current = self.inner.nodes.write().expect("poisoned");
        if *current != nodes {
            *current = nodes;
            self.inner.nodes_changed.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    pub fn put_token(&self, token: ApiToken) {
        self.inner
            .changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner
            .tokens
            .write()
            .expect("poisoned")
            .insert(token.id.clone(), token);
    }

    pub fn remove_token(&self, id: &str) {
        self.inner
            .changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.tokens.write().expect("poisoned").remove(id);
    }

    pub fn put_node(&self, node: NodeIdentity) {
        self.inner
            .changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner
            .nodes
            .write()
            .expect("poisoned")
            .insert(node.name.clone(), node);
        self.inner.nodes_changed.send_modify(|n| *n += 1);
    }

    pub fn remove_node(&self, name: &str) {
        self.inner
            .changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.nodes.write().expect("poisoned").remove(name);
        self.inner.nodes_changed.send_modify(|n| *n += 1);
    }

    pub fn nodes_changed(&self) -> watch::Receiver<u64> {
        self.inner.nodes_changed.subscribe()
    }

    /// The role and namespaces of a valid token.
    pub fn check_token(&self, token: &Token) -> Result<(Role, super::Scope), Status> {
        let tokens = self.inner.tokens.read().expect("poisoned");
        let refused =
            || Status::unauthenticated("the API token is not valid (unknown, revoked or expired)");
        let record = tokens.get(&token.id).ok_or_else(refused)?;
        if !token.matches(&record.secret_sha256) {
            return Err(refused());
        }
        if record.expires_at_ms != 0 && record.expires_at_ms <= now_ms() {
            return Err(refused());
        }
        Ok((record.role(), super::Scope::of(&record.namespaces)))
    }

    /// Whether `cert_der` is the certificate `node` holds now (or the one
    /// it renewed, until that expires).
    pub fn check_node(&self, node: &str, cert_der: &[u8]) -> Result<(), Status> {
        if self.node_accepts(node, &faas_pki::fingerprint(cert_der)) {
            Ok(())
        } else {
            Err(Status::unauthenticated(format!(
                "the certificate of node {node:?} is revoked or replaced (the node was removed, or joined again): join the cluster again"
            )))
        }
    }

    pub fn node_accepts(&self, node: &str, fingerprint: &str) -> bool {
        let nodes = self.inner.nodes.read().expect("poisoned");
        let Some(record) = nodes.get(node) else {
            return false;
        };
        record.cert_sha256 == fingerprint
            || (record.previous_cert_sha256 == fingerprint
                && record.previous_not_after_ms > now_ms())
    }
}

/// The cluster CA: the one in etcd, or a new one if this is the first
/// replica of the cluster (two first replicas agree: only one create wins).
pub async fn cluster_ca(store: &Store) -> anyhow::Result<ClusterCa> {
    const KEY: &str = "ca";
    if let Some(record) = store.get::<ClusterCaRecord>(Kind::Pki, KEY).await? {
        return Ok(ClusterCa::from_pem(&record.cert_pem, &record.key_pem)?);
    }
    let ca = ClusterCa::generate()?;
    let record = ClusterCaRecord {
        cert_pem: ca.cert_pem().to_string(),
        key_pem: ca.key_pem(),
        created_at_ms: now_ms(),
    };
    if store.create(Kind::Pki, KEY, &record).await? {
        info!(ca = %ca.fingerprint(), "created the cluster CA");
        return Ok(ca);
    }
    let record: ClusterCaRecord = store
        .get(Kind::Pki, KEY)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the cluster CA vanished while it was being created"))?;
    Ok(ClusterCa::from_pem(&record.cert_pem, &record.key_pem)?)
}

/// Registers the admin token in `path` (made, mode 0600, if the file does
/// not exist): how a new cluster gets its first credentials. A token of
/// that id registered with another secret is an error, never overwritten.
pub async fn bootstrap_token(store: &Store, path: &Path) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let token = match std::fs::read_to_string(path) {
        Ok(text) => Token::parse(&text)
            .map_err(|e| anyhow::anyhow!("bootstrap token file {}: {e}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let token = Token::generate();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .map_err(|e| anyhow::anyhow!("creating {}: {e}", path.display()))?;
            writeln!(file, "{}", token.reveal())?;
            info!(path = %path.display(), token_id = %token.id, "wrote a new bootstrap admin token");
            token
        }
        Err(e) => anyhow::bail!("reading {}: {e}", path.display()),
    };
    let record = ApiToken {
        id: token.id.clone(),
        role: Role::Admin as i32,
        description: "bootstrap admin (--bootstrap-token-file)".into(),
        created_at_ms: now_ms(),
        expires_at_ms: 0,
        secret_sha256: token.secret_hash(),
        namespaces: Vec::new(),
    };
    if !store.create(Kind::ApiToken, &token.id, &record).await? {
        let stored: Option<ApiToken> = store.get(Kind::ApiToken, &token.id).await?;
        if stored.is_some_and(|s| s.secret_sha256 != record.secret_sha256) {
            anyhow::bail!(
                "the bootstrap token in {} has the id of another token with a different secret",
                path.display()
            );
        }
    }
    Ok(())
}
