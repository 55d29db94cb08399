//! A private CA kept in files, and the leaf certificates it signs: etcd's
//! (see [`crate::etcd`]) and the registry's TLS (see [`crate::registry`]).
//! Each service that only the platform talks to gets a CA of its own,
//! never the cluster CA, so that holding one service's key proves nothing
//! to another.
//!
//! Everything here is idempotent: made where missing, re-issued where due,
//! so a deploy script can run it at every start.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::ExtendedKeyUsagePurpose;

use crate::files::{read_optional, write_private, write_public};
use crate::{ClusterCa, PkiError};

/// The CA at `cert`/`key`, made (and its certificate's file name pushed
/// on `written`) if both are missing.
pub(crate) fn ensure_ca(
    cert: &Path,
    key: &Path,
    common_name: &str,
    written: &mut Vec<String>,
) -> Result<ClusterCa, PkiError> {
    match (read_optional(cert)?, read_optional(key)?) {
        (Some(cert), Some(key)) => ClusterCa::from_pem(&cert, &key),
        (None, None) => {
            let ca = ClusterCa::generate_named(common_name)?;
            write_private(key, &ca.key_pem())?;
            write_public(cert, ca.cert_pem())?;
            written.push(file_name(cert));
            Ok(ca)
        }
        _ => Err(PkiError::Pem(format!(
            "only one of {} and {} exists",
            cert.display(),
            key.display()
        ))),
    }
}

/// A leaf certificate and its key, as files.
pub(crate) struct Leaf<'a> {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub common_name: &'a str,
    /// DNS names or IP addresses.
    pub sans: &'a [String],
    pub usages: &'a [ExtendedKeyUsagePurpose],
    pub validity: Duration,
}

/// Issues `leaf` if missing, past two thirds of its life, not issued by
/// `ca`, not for its key, or lacking one of its names; pushes the
/// certificate's file name on `written` when it does.
pub(crate) fn ensure_leaf(
    ca: &ClusterCa,
    leaf: Leaf<'_>,
    written: &mut Vec<String>,
) -> Result<(), PkiError> {
    let wanted: BTreeSet<String> = leaf.sans.iter().cloned().collect();
    let fresh =
        pair_due(&leaf.cert, &leaf.key, ca)?.is_some_and(|der| wanted.is_subset(&sans_of(&der)));
    if fresh {
        return Ok(());
    }
    let issued = ca.issue_with_key(leaf.common_name, leaf.sans, leaf.usages, leaf.validity)?;
    install(&leaf.cert, &leaf.key, &issued)?;
    written.push(file_name(&leaf.cert));
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
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

pub(crate) fn issued_by(der: &[u8], ca: &ClusterCa) -> bool {
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
pub(crate) fn sans_of(der: &[u8]) -> BTreeSet<String> {
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

fn install(cert: &Path, key: &Path, issued: &crate::IssuedCert) -> Result<(), PkiError> {
    let key_pem = issued
        .key_pem
        .as_deref()
        .ok_or_else(|| PkiError::Pem("issued without a key".into()))?;
    // Two renames: a crash between them leaves a certificate that does
    // not match its key, which the next run re-issues (see `pair_due`).
    write_private(key, key_pem)?;
    write_public(cert, &issued.cert_pem)
}
