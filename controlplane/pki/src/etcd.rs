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

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::PathBuf;
use std::time::Duration;

use rcgen::ExtendedKeyUsagePurpose;

use crate::{private_ca, PkiError};

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
    let ca = private_ca::ensure_ca(
        &files.ca_cert(),
        &files.ca_key(),
        "faas etcd CA",
        &mut written,
    )?;
    private_ca::ensure_leaf(
        &ca,
        private_ca::Leaf {
            cert: files.member_cert(),
            key: files.member_key(),
            common_name: "faas etcd member",
            sans: member_sans,
            usages: &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            validity: LEAF_VALIDITY,
        },
        &mut written,
    )?;
    private_ca::ensure_leaf(
        &ca,
        private_ca::Leaf {
            cert: files.client_cert(),
            key: files.client_key(),
            common_name: CLIENT_COMMON_NAME,
            sans: &[],
            usages: &[ExtendedKeyUsagePurpose::ClientAuth],
            validity: LEAF_VALIDITY,
        },
        &mut written,
    )?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::private_ca::{issued_by, sans_of};
    use crate::ClusterCa;

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
