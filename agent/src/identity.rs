//! The node's identity: a key made here (it never leaves the node) and the
//! certificate the cluster CA issued for it, kept in `<state dir>/pki`
//! (mode 0700; the key 0600). The first start joins with a join token,
//! pinning the CA by the fingerprint the operator gave; later starts use
//! what is kept. The certificate is renewed at two thirds of its life.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use faas_pki::client::ClientTls;
use faas_proto::v1::node_join_service_client::NodeJoinServiceClient;
use faas_proto::v1::{JoinRequest, JoinResponse, RenewCertificateRequest};
use tracing::{info, warn};

use crate::config::Config;

#[derive(Clone, Debug)]
pub struct Credentials {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The registry's CA as the control plane last gave it: None if this
    /// node never received one (it joined before the control plane sent
    /// them), empty if the registry needs none.
    pub registry_ca_pem: Option<String>,
}

impl Credentials {
    pub fn tls(&self) -> ClientTls {
        ClientTls {
            ca_pem: Some(self.ca_pem.clone()),
            identity: Some((self.cert_pem.clone(), self.key_pem.clone())),
        }
    }

    fn validity(&self) -> Option<(SystemTime, SystemTime)> {
        faas_pki::ca::validity_of(&faas_pki::first_cert_der(&self.cert_pem).ok()?)
    }

    /// How long until two thirds of its life have passed (zero: now, or
    /// unreadable).
    fn renewal_in(&self) -> Duration {
        faas_pki::first_cert_der(&self.cert_pem)
            .ok()
            .and_then(|der| faas_pki::ca::renewal_time(&der))
            .and_then(|at| at.duration_since(SystemTime::now()).ok())
            .unwrap_or(Duration::ZERO)
    }
}

/// The node's credentials, shared with the session (which reconnects with
/// the newest).
#[derive(Clone)]
pub struct Identity {
    current: Arc<RwLock<Credentials>>,
    dir: PathBuf,
}

impl Identity {
    pub fn tls(&self) -> ClientTls {
        self.current.read().expect("poisoned").tls()
    }

    /// The CA to trust for the registry's TLS, if it has one of its own.
    pub fn registry_ca(&self) -> Option<String> {
        self.current
            .read()
            .expect("poisoned")
            .registry_ca_pem
            .clone()
            .filter(|pem| !pem.trim().is_empty())
    }

    /// Loads the kept identity, or joins the cluster.
    pub async fn establish(config: &Config) -> anyhow::Result<Identity> {
        let dir = config.state_dir.join("pki");
        create_private_dir(&dir)?;
        let kept = load(&dir, &config.node)?;
        let credentials = match kept {
            Some(c)
                if c.validity()
                    .is_some_and(|(_, until)| until > SystemTime::now()) =>
            {
                c
            }
            kept => {
                if kept.is_some() {
                    warn!("the kept node certificate has expired; joining again");
                }
                join(config, &dir).await?
            }
        };
        let identity = Identity {
            current: Arc::new(RwLock::new(credentials)),
            dir,
        };
        if identity
            .current
            .read()
            .expect("poisoned")
            .registry_ca_pem
            .is_none()
        {
            // Kept from before the control plane handed out the registry's
            // CA: a renewal brings it. Pulls from a registry behind a CA of
            // its own fail until it does, with a clear TLS error.
            if let Err(e) = identity.renew(&config.control_plane, &config.node).await {
                warn!(error = %e, "fetching the registry's CA with a renewal failed");
            }
        }
        Ok(identity)
    }

    /// Renews the certificate when due; runs forever.
    pub async fn keep_renewed(self, endpoints: Vec<String>, node: String) {
        loop {
            let wait = self.current.read().expect("poisoned").renewal_in();
            if !wait.is_zero() {
                // Checked again at least every minute: the clock may jump.
                tokio::time::sleep(wait.min(Duration::from_secs(60))).await;
                continue;
            }
            match self.renew(&endpoints, &node).await {
                Ok(()) => {
                    info!("node certificate renewed");
                    // Never a loop of renewals, whatever the lifetime.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    warn!(error = %e, "renewing the node certificate failed; retrying");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
            }
        }
    }

    async fn renew(&self, endpoints: &[String], node: &str) -> anyhow::Result<()> {
        let (key_pem, csr_pem) = faas_pki::ca::node_key_and_csr(node)?;
        let tls = self.tls();
        let mut last = None;
        for url in endpoints {
            let attempt = async {
                let response = join_service(url, &tls)
                    .await?
                    .renew_certificate(RenewCertificateRequest {
                        csr_pem: csr_pem.clone(),
                    })
                    .await?
                    .into_inner();
                anyhow::Ok(response)
            };
            match attempt.await {
                Ok(response) => {
                    let credentials = keep(&self.dir, response, key_pem)?;
                    *self.current.write().expect("poisoned") = credentials;
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no control-plane endpoint")))
    }
}

/// Joins through the first endpoint that answers.
async fn join(config: &Config, dir: &Path) -> anyhow::Result<Credentials> {
    let (Some(token), Some(pin)) = (&config.join_token, &config.ca_hash) else {
        anyhow::bail!(
            "this node has not joined the cluster ({} holds no certificate): start it once with \
             --join <token> --ca-hash <sha256:...> (from `faasctl node token create`)",
            dir.display()
        );
    };
    let (key_pem, csr_pem) = faas_pki::ca::node_key_and_csr(&config.node)?;
    let mut failures = Vec::new();
    for url in &config.control_plane {
        let attempt = async {
            let (host, port) = host_port(url)?;
            let ca_pem = faas_pki::pin::fetch_pinned_ca(&host, port, pin).await?;
            let tls = ClientTls {
                ca_pem: Some(ca_pem),
                identity: None,
            };
            let response = join_service(url, &tls)
                .await?
                .join(JoinRequest {
                    token: token.clone(),
                    node: config.node.clone(),
                    csr_pem: csr_pem.clone(),
                })
                .await
                .map_err(|s| anyhow::anyhow!("{}: {}", code_name(s.code()), s.message()))?
                .into_inner();
            anyhow::Ok(response)
        };
        match attempt.await {
            Ok(response) => {
                let credentials = keep(dir, response, key_pem)?;
                info!(node = %config.node, "joined the cluster; node certificate kept");
                return Ok(credentials);
            }
            Err(e) => failures.push(format!("{url}: {e:#}")),
        }
    }
    anyhow::bail!("could not join the cluster: {}", failures.join("; "))
}

/// The join service at `url`, reached with `tls`.
async fn join_service(
    url: &str,
    tls: &ClientTls,
) -> anyhow::Result<NodeJoinServiceClient<tonic::transport::Channel>> {
    let channel = faas_pki::client::endpoint(url, tls)?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(10))
        .connect()
        .await?;
    Ok(NodeJoinServiceClient::new(channel))
}

fn code_name(code: tonic::Code) -> String {
    format!("{code:?}")
}

/// `https://host:port/...` → (host, port).
fn host_port(url: &str) -> anyhow::Result<(String, u16)> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| anyhow::anyhow!("control-plane endpoint {url:?} must be an https:// URL"))?;
    let authority = rest.split('/').next().unwrap_or(rest);
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (h, p) = v6
                .split_once("]:")
                .ok_or_else(|| anyhow::anyhow!("{url:?}: no port"))?;
            (h.to_string(), p)
        }
        None => {
            let (h, p) = authority
                .rsplit_once(':')
                .ok_or_else(|| anyhow::anyhow!("{url:?}: no port"))?;
            (h.to_string(), p)
        }
    };
    Ok((host, port.parse()?))
}

const CA: &str = "ca.crt";
const CERT: &str = "node.crt";
const KEY: &str = "node.key";
/// Empty when the registry needs no CA of its own.
const REGISTRY_CA: &str = "registry-ca.crt";

fn load(dir: &Path, node: &str) -> anyhow::Result<Option<Credentials>> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name));
    let (Ok(ca_pem), Ok(cert_pem), Ok(key_pem)) = (read(CA), read(CERT), read(KEY)) else {
        return Ok(None);
    };
    let der = faas_pki::first_cert_der(&cert_pem)?;
    match faas_pki::ca::peer_identity(&der) {
        Some(faas_pki::PeerIdentity::Node(name)) if name == node => {}
        other => anyhow::bail!(
            "{} holds the identity {other:?}, not node {node:?}: use another --state-dir, or remove it and join again",
            dir.display()
        ),
    }
    Ok(Some(Credentials {
        ca_pem,
        cert_pem,
        key_pem,
        registry_ca_pem: read(REGISTRY_CA).ok(),
    }))
}

/// Writes the new credentials: key first, each file replaced atomically.
fn keep(dir: &Path, response: JoinResponse, key_pem: String) -> anyhow::Result<Credentials> {
    write_private(&dir.join(KEY), &key_pem)?;
    write_private(&dir.join(CA), &response.ca_pem)?;
    write_private(&dir.join(CERT), &response.cert_pem)?;
    write_private(&dir.join(REGISTRY_CA), &response.registry_ca_pem)?;
    Ok(Credentials {
        ca_pem: response.ca_pem,
        cert_pem: response.cert_pem,
        key_pem,
        registry_ca_pem: Some(response.registry_ca_pem),
    })
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(())
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_split_into_host_and_port() {
        assert_eq!(
            host_port("https://127.0.0.1:7070").unwrap(),
            ("127.0.0.1".into(), 7070)
        );
        assert_eq!(
            host_port("https://cp.example:443/").unwrap(),
            ("cp.example".into(), 443)
        );
        assert_eq!(host_port("https://[::1]:9").unwrap(), ("::1".into(), 9));
        assert!(host_port("http://127.0.0.1:7070").is_err());
        assert!(host_port("https://nohost").is_err());
    }
}
