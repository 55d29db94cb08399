//! Registry tokens: the OCI registry (distribution 2.8, Debian's
//! docker-registry) takes a request only with a bearer token that a
//! control-plane replica signed, naming the repositories and actions it
//! allows (distribution's token authentication).
//!
//! The replicas sign with one key, kept on disk beside etcd's certificates
//! and made by `faas-controlplane registry-certs`; its self-signed
//! certificate is the registry's `rootcertbundle`. The token names its key
//! by that certificate (`x5c`), which distribution checks against the
//! bundle. Nodes get tokens for the repositories of the operations handed
//! to them, to pull only, for minutes; the control plane mints its own to
//! push and delete.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

use crate::PkiError;

/// The `service` the registry names in its configuration: a token's
/// audience.
pub const SERVICE: &str = "faas-registry";
/// The `issuer` the registry trusts.
pub const ISSUER: &str = "faas-controlplane";
/// How long the signer's certificate is valid (the registry checks the
/// chain at every request).
const SIGNER_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// What a token allows on one repository.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Access {
    pub repository: String,
    pub actions: &'static [&'static str],
}

impl Access {
    pub fn pull(repository: impl Into<String>) -> Access {
        Access {
            repository: repository.into(),
            actions: &["pull"],
        }
    }

    /// Everything the control plane does: push, pull, delete.
    pub fn all(repository: impl Into<String>) -> Access {
        Access {
            repository: repository.into(),
            actions: &["pull", "push", "delete", "*"],
        }
    }
}

pub struct TokenSigner {
    key: EcdsaKeyPair,
    cert_der_b64: String,
    rng: SystemRandom,
}

impl TokenSigner {
    /// A signer from its key (PKCS#8 PEM) and self-signed certificate (PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<TokenSigner, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::Pem(e.to_string()))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key.serialize_der())
            .map_err(|e| PkiError::Pem(format!("token signer key: {e}")))?;
        let cert_der = crate::first_cert_der(cert_pem)?;
        Ok(TokenSigner {
            key,
            cert_der_b64: STANDARD.encode(cert_der),
            rng: SystemRandom::new(),
        })
    }

    /// Reads `token-signer.crt` and `token-signer.key` from `dir`.
    pub fn load(dir: &Path) -> Result<TokenSigner, PkiError> {
        let files = RegistryFiles::new(dir);
        let read = |p: PathBuf| {
            fs::read_to_string(&p)
                .map_err(|e| PkiError::Pem(format!("reading {}: {e}", p.display())))
        };
        TokenSigner::from_pem(&read(files.cert())?, &read(files.key())?)
    }

    /// A token for `subject` allowing `access`, valid `ttl` from now (the
    /// registry allows a minute of clock skew either side).
    pub fn mint(
        &self,
        subject: &str,
        access: &[Access],
        ttl: Duration,
    ) -> Result<String, PkiError> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let header = serde_json::json!({
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [self.cert_der_b64],
        });
        let access: Vec<serde_json::Value> = access
            .iter()
            .map(|a| {
                serde_json::json!({
                    "type": "repository",
                    "name": a.repository,
                    "actions": a.actions,
                })
            })
            .collect();
        let claims = serde_json::json!({
            "iss": ISSUER,
            "sub": subject,
            "aud": SERVICE,
            "exp": now + ttl.as_secs(),
            "nbf": now.saturating_sub(1),
            "iat": now,
            "jti": hex::encode(rand::random::<[u8; 16]>()),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| PkiError::Tls("signing a registry token failed".into()))?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(..)")
    }
}

/// The files of the registry's PKI directory: the token signer, and the
/// registry's TLS (a CA of its own and the server certificate it signs).
pub struct RegistryFiles {
    dir: PathBuf,
}

impl RegistryFiles {
    pub fn new(dir: impl Into<PathBuf>) -> RegistryFiles {
        RegistryFiles { dir: dir.into() }
    }
    /// The registry's `rootcertbundle`.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("token-signer.crt")
    }
    pub fn key(&self) -> PathBuf {
        self.dir.join("token-signer.key")
    }
    /// What the registry's clients trust: the control plane, and the
    /// agents, which receive it when they join.
    pub fn tls_ca(&self) -> PathBuf {
        self.dir.join("tls-ca.crt")
    }
    pub fn tls_ca_key(&self) -> PathBuf {
        self.dir.join("tls-ca.key")
    }
    /// The registry's `http.tls.certificate`.
    pub fn tls_cert(&self) -> PathBuf {
        self.dir.join("tls.crt")
    }
    /// The registry's `http.tls.key`.
    pub fn tls_key(&self) -> PathBuf {
        self.dir.join("tls.key")
    }
}

/// Validity of the registry's server certificate; [`ensure_tls`] renews it
/// at two thirds of it (the registry reads it at start: restart it after).
pub const TLS_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// Makes the registry's TLS CA and its server certificate for `sans` (the
/// names and addresses clients reach it by) where missing or due; returns
/// the names of the files written.
pub fn ensure_tls(dir: &Path, sans: &[String]) -> Result<Vec<String>, PkiError> {
    if sans.is_empty() {
        return Err(PkiError::BadRequest(
            "the registry's certificate needs at least one name or address".into(),
        ));
    }
    private_dir(dir)?;
    let files = RegistryFiles::new(dir);
    let mut written = Vec::new();
    let ca = crate::private_ca::ensure_ca(
        &files.tls_ca(),
        &files.tls_ca_key(),
        "faas registry CA",
        &mut written,
    )?;
    crate::private_ca::ensure_leaf(
        &ca,
        crate::private_ca::Leaf {
            cert: files.tls_cert(),
            key: files.tls_key(),
            common_name: "faas registry",
            sans,
            usages: &[rcgen::ExtendedKeyUsagePurpose::ServerAuth],
            validity: TLS_VALIDITY,
        },
        &mut written,
    )?;
    Ok(written)
}

fn private_dir(dir: &Path) -> Result<(), PkiError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    Ok(())
}

/// Makes the signer's key and certificate in `dir` if missing; returns the
/// names of the files written.
pub fn ensure_signer(dir: &Path) -> Result<Vec<String>, PkiError> {
    private_dir(dir)?;
    let files = RegistryFiles::new(dir);
    match (files.cert().exists(), files.key().exists()) {
        (true, true) => {
            // Checked now rather than at the first deploy.
            TokenSigner::load(dir)?;
            return Ok(Vec::new());
        }
        (false, false) => {}
        _ => {
            return Err(PkiError::Pem(format!(
                "{} holds only one of token-signer.crt and token-signer.key",
                dir.display()
            )))
        }
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "faas registry token signer");
    params.distinguished_name = dn;
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now
        + time::Duration::try_from(SIGNER_VALIDITY)
            .map_err(|_| PkiError::BadRequest("validity".into()))?;
    let cert = params.self_signed(&key)?;
    crate::files::write_private(&files.key(), &key.serialize_pem())?;
    crate::files::write_public(&files.cert(), &cert.pem())?;
    Ok(vec!["token-signer.crt".into()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_gets_a_server_certificate_of_its_own_ca() {
        let dir = tempfile::tempdir().unwrap();
        let sans = vec!["127.0.0.1".to_string()];
        assert_eq!(
            ensure_tls(dir.path(), &sans).unwrap(),
            ["tls-ca.crt", "tls.crt"]
        );
        assert!(ensure_tls(dir.path(), &sans).unwrap().is_empty());
        let files = RegistryFiles::new(dir.path());
        let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(files.tls_key()), 0o600);
        assert_eq!(mode(files.tls_ca_key()), 0o600);
        let ca = crate::ClusterCa::from_pem(
            &fs::read_to_string(files.tls_ca()).unwrap(),
            &fs::read_to_string(files.tls_ca_key()).unwrap(),
        )
        .unwrap();
        let der = crate::first_cert_der(&fs::read_to_string(files.tls_cert()).unwrap()).unwrap();
        assert!(crate::private_ca::issued_by(&der, &ca));
        assert!(!crate::private_ca::issued_by(
            &der,
            &crate::ClusterCa::generate().unwrap()
        ));
        // A new address: only the server certificate is re-issued.
        let more = vec!["127.0.0.1".to_string(), "10.1.2.3".to_string()];
        assert_eq!(ensure_tls(dir.path(), &more).unwrap(), ["tls.crt"]);
        assert!(ensure_tls(dir.path(), &[]).is_err());
    }

    #[test]
    fn a_token_carries_its_claims_and_a_valid_signature() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ensure_signer(dir.path()).unwrap(), ["token-signer.crt"]);
        assert!(ensure_signer(dir.path()).unwrap().is_empty());
        let signer = TokenSigner::load(dir.path()).unwrap();
        let token = signer
            .mint(
                "node:n1",
                &[Access::pull("faas/functions/f")],
                Duration::from_secs(300),
            )
            .unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["aud"], SERVICE);
        assert_eq!(claims["iss"], ISSUER);
        assert_eq!(claims["access"][0]["name"], "faas/functions/f");
        assert_eq!(claims["access"][0]["actions"], serde_json::json!(["pull"]));

        // The signature checks with the certificate's public key.
        let cert_pem = fs::read_to_string(RegistryFiles::new(dir.path()).cert()).unwrap();
        let der = crate::first_cert_der(&cert_pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let public = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
            cert.public_key().subject_public_key.data.as_ref(),
        );
        let signature = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let input = format!("{}.{}", parts[0], parts[1]);
        assert!(public.verify(input.as_bytes(), &signature).is_ok());
        assert!(public.verify(b"other", &signature).is_err());
    }
}
