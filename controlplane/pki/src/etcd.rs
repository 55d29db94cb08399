//! etcd's certificates: etcd holds everything the cluster trusts (the
//! cluster CA's key, the hashes of API tokens, node identities), so only
//! the control plane may talk to it, and only over mutual TLS.
//!
//! etcd gets a CA of its own, never the cluster CA: the cluster CA signs
//! every node's certificate, and a node must not be an etcd client. The
//! CA signs two certificates:
//!
//! - `member.crt`: the members' server certificate, also their client
//!   certificate on the peer connections (`--peer-client-cert-auth`);
//! - `client.crt`: the control plane's client certificate (common name
//!   `faas-controlplane`, which etcd's RBAC can name if it is turned on).
//!
//! [`ensure`] makes what is missing and renews what is due, so a deploy
//! script can run it at every start. Keys are 0600 and the directory 0700.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::ExtendedKeyUsagePurpose;

use crate::files::{read_optional, write_private, write_public};
use crate::{ClusterCa, PkiError};

/// Validity of the member and client certificates; [`ensure`] renews them
/// at two thirds of it.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

/// The common name of the control plane's client certificate.
pub const CLIENT_COMMON_NAME: &str = "faas-controlplane";

/// The files of an etcd PKI directory.
#[derive(Debug, Clone)]
pub struct EtcdPkiFiles {
    pub dir: PathBuf,
}

impl EtcdPkiFiles {
    pub fn new(dir: impl Into<PathBuf>) -> EtcdPkiFiles {
        EtcdPkiFiles { dir: dir.into() }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    pub fn member_cert(&self) -> PathBuf {
        self.dir.join("member.crt")
    }
    pub fn member_key(&self) -> PathBuf {
        self.dir.join("member.key")
    }
    pub fn client_cert(&self) -> PathBuf {
        self.dir.join("client.crt")
    }
    pub fn client_key(&self) -> PathBuf {
        self.dir.join("client.key")
    }
}

/// Makes the CA, the member certificate (for `member_sans`, DNS names or
/// IP addresses) and the client certificate where missing; re-issues a
/// certificate past two thirds of its life, or a member certificate that
/// lacks one of `member_sans`. Returns the names of the files written.
pub fn ensure(files: &EtcdPkiFiles, member_sans: &[String]) -> Result<Vec<String>, PkiError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&files.dir)?;
    fs::set_permissions(&files.dir, fs::Permissions::from_mode(0o700))?;
    let mut written = Vec::new();
    let ca = match (
        read_optional(&files.ca_cert())?,
        read_optional(&files.ca_key())?,
    ) {
        (Some(cert), Some(key)) => ClusterCa::from_pem(&cert, &key)?,
        (None, None) => {
            let ca = ClusterCa::generate_named("faas etcd CA")?;
            write_private(&files.ca_key(), &ca.key_pem())?;
            write_public(&files.ca_cert(), ca.cert_pem())?;
            written.push("ca.crt".to_string());
            ca
        }
        _ => {
            return Err(PkiError::Pem(format!(
                "{} holds only one of ca.crt and ca.key",
                files.dir.display()
            )))
        }
    };
    let sans: BTreeSet<String> = member_sans.iter().cloned().collect();
    let member_due = match pair_due(&files.member_cert(), &files.member_key(), &ca)? {
        Some(der) => !sans.is_subset(&sans_of(&der)),
        None => true,
    };
    if member_due {
        let issued = ca.issue_with_key(
            "faas etcd member",
            member_sans,
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            LEAF_VALIDITY,
        )?;
        install(files.member_cert(), files.member_key(), &issued)?;
        written.push("member.crt".to_string());
    }
    let client_due = pair_due(&files.client_cert(), &files.client_key(), &ca)?.is_none();
    if client_due {
        let issued = ca.issue_with_key(
            CLIENT_COMMON_NAME,
            &[],
            &[ExtendedKeyUsagePurpose::ClientAuth],
            LEAF_VALIDITY,
        )?;
        install(files.client_cert(), files.client_key(), &issued)?;
        written.push("client.crt".to_string());
    }
    Ok(written)
}

/// The DER of the certificate at `cert` if it can stay; None if it must
/// be (re-)issued: missing, unreadable, past its renewal time, not issued
/// by `ca` (the CA was replaced) or not for the key at `key`.
fn pair_due(cert: &Path, key: &Path, ca: &ClusterCa) -> Result<Option<Vec<u8>>, PkiError> {
    let (Some(cert_pem), Some(key_pem)) = (read_optional(cert)?, read_optional(key)?) else {
        return Ok(None);
    };
    let Ok(der) = crate::first_cert_der(&cert_pem) else {
        return Ok(None);
    };
    let renew = crate::ca::renewal_time(&der).unwrap_or(SystemTime::UNIX_EPOCH);
    let fresh = renew > SystemTime::now() && issued_by(&der, ca) && for_key(&der, &key_pem);
    Ok(fresh.then_some(der))
}

fn for_key(der: &[u8], key_pem: &str) -> bool {
    let Ok(key) = rcgen::KeyPair::from_pem(key_pem) else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    rcgen::PublicKeyData::der_bytes(&key) == cert.public_key().subject_public_key.data.as_ref()
}

fn issued_by(der: &[u8], ca: &ClusterCa) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let Ok(ca_der) = crate::first_cert_der(ca.cert_pem()) else {
        return false;
    };
    let Ok((_, ca_cert)) = x509_parser::parse_x509_certificate(&ca_der) else {
        return false;
    };
    cert.verify_signature(Some(ca_cert.public_key())).is_ok()
}

/// DNS names and IP addresses a certificate is for.
fn sans_of(der: &[u8]) -> BTreeSet<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return BTreeSet::new();
    };
    let Ok(Some(ext)) = cert.subject_alternative_name() else {
        return BTreeSet::new();
    };
    ext.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_string()),
            GeneralName::IPAddress(bytes) => match bytes.len() {
                4 => <[u8; 4]>::try_from(*bytes)
                    .ok()
                    .map(|b| std::net::IpAddr::from(b).to_string()),
                16 => <[u8; 16]>::try_from(*bytes)
                    .ok()
                    .map(|b| std::net::IpAddr::from(b).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn install(cert: PathBuf, key: PathBuf, issued: &crate::IssuedCert) -> Result<(), PkiError> {
    let key_pem = issued
        .key_pem
        .as_deref()
        .ok_or_else(|| PkiError::Pem("issued without a key".into()))?;
    // Two renames: a crash between them leaves a certificate that does
    // not match its key, which the next run re-issues (see `pair_due`).
    write_private(&key, key_pem)?;
    write_public(&cert, &issued.cert_pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ensure_makes_everything_once_and_reissues_for_a_new_name() {
        let dir = tempfile::tempdir().unwrap();
        let files = EtcdPkiFiles::new(dir.path().join("etcd"));
        let sans = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let written = ensure(&files, &sans).unwrap();
        assert_eq!(written, ["ca.crt", "member.crt", "client.crt"]);
        let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(files.dir.clone()), 0o700);
        assert_eq!(mode(files.ca_key()), 0o600);
        assert_eq!(mode(files.member_key()), 0o600);
        assert_eq!(mode(files.client_key()), 0o600);

        // Nothing to do the second time.
        assert!(ensure(&files, &sans).unwrap().is_empty());
        // A name the member certificate lacks: only it is re-issued.
        let more = vec!["127.0.0.1".to_string(), "10.0.0.7".to_string()];
        assert_eq!(ensure(&files, &more).unwrap(), ["member.crt"]);
        let der = crate::first_cert_der(&fs::read_to_string(files.member_cert()).unwrap()).unwrap();
        assert!(sans_of(&der).contains("10.0.0.7"));

        // A key that is not the certificate's (a crash between the two
        // renames): the pair is re-issued.
        fs::copy(files.client_key(), files.member_key()).unwrap();
        assert_eq!(ensure(&files, &more).unwrap(), ["member.crt"]);

        // A replaced CA: both leaves are re-issued by the new one.
        fs::remove_file(files.ca_cert()).unwrap();
        fs::remove_file(files.ca_key()).unwrap();
        assert_eq!(
            ensure(&files, &more).unwrap(),
            ["ca.crt", "member.crt", "client.crt"]
        );
    }

    #[test]
    fn the_client_certificate_is_not_signed_by_the_cluster_ca() {
        let dir = tempfile::tempdir().unwrap();
        let files = EtcdPkiFiles::new(dir.path());
        ensure(&files, &["127.0.0.1".to_string()]).unwrap();
        let etcd_ca = ClusterCa::from_pem(
            &fs::read_to_string(files.ca_cert()).unwrap(),
            &fs::read_to_string(files.ca_key()).unwrap(),
        )
        .unwrap();
        let cluster_ca = ClusterCa::generate().unwrap();
        let client =
            crate::first_cert_der(&fs::read_to_string(files.client_cert()).unwrap()).unwrap();
        assert!(issued_by(&client, &etcd_ca));
        assert!(!issued_by(&client, &cluster_ca));
    }
}
