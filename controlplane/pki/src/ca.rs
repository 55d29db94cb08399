//! The cluster CA and what it signs.
//!
//! Certificates name their holder in the common name: `replica:<name>` for
//! a control-plane replica, `node:<name>` for a node agent. The TLS stack
//! checks the chain and the validity period; the control plane then checks
//! the holder (and, for nodes, that the certificate is the node's current
//! one, which is how `faasctl node rm` revokes).

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::PkiError;

/// How long the CA is valid: longer than any cluster is expected to live
/// without an operator rotating it.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates are valid from a little before they are made: clocks of
/// the machines of a cluster differ a little.
const BACKDATE: Duration = Duration::from_secs(300);

const REPLICA_PREFIX: &str = "replica:";
const NODE_PREFIX: &str = "node:";

/// Who a verified peer certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerIdentity {
    Replica(String),
    Node(String),
}

/// A certificate the CA issued; `key_pem` is set when the CA generated the
/// key too (replicas), never for nodes (their key stays on the node).
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: Option<String>,
    pub fingerprint: String,
    /// Unix seconds.
    pub not_after: i64,
}

pub struct ClusterCa {
    cert_pem: String,
    cert_der: Vec<u8>,
    key: KeyPair,
}

impl ClusterCa {
    /// A new CA with a new P-256 key.
    pub fn generate() -> Result<ClusterCa, PkiError> {
        ClusterCa::generate_named("faas cluster CA")
    }

    /// A new CA named `common_name` (etcd's CA is one of its own: see
    /// [`crate::etcd`]).
    pub fn generate_named(common_name: &str) -> Result<ClusterCa, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let (not_before, not_after) = validity(CA_VALIDITY)?;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            key,
        })
    }

    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::Pem(e.to_string()))?;
        let cert_der = crate::first_cert_der(cert_pem)?;
        // Checked here, not at the first signature.
        Issuer::from_ca_cert_der(&cert_der.clone().into(), &key)?;
        Ok(ClusterCa {
            cert_pem: cert_pem.to_string(),
            cert_der,
            key,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// What `faas-agent --ca-hash` pins.
    pub fn fingerprint(&self) -> String {
        crate::fingerprint(&self.cert_der)
    }

    fn issuer(&self) -> Result<Issuer<'_, &KeyPair>, PkiError> {
        Ok(Issuer::from_ca_cert_der(
            &self.cert_der.clone().into(),
            &self.key,
        )?)
    }

    /// A replica's certificate and key: a server certificate for `sans`
    /// (DNS names or IP addresses) that is also a client certificate, with
    /// which the replica forwards requests to the leader.
    pub fn issue_replica(
        &self,
        name: &str,
        sans: &[String],
        ttl: Duration,
    ) -> Result<IssuedCert, PkiError> {
        self.issue_with_key(
            &format!("{REPLICA_PREFIX}{name}"),
            sans,
            &[
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            ttl,
        )
    }

    /// A certificate for `common_name` and `sans` with the given extended
    /// usages, and its new key. The PEM holds the chain up to this CA.
    pub fn issue_with_key(
        &self,
        common_name_: &str,
        sans: &[String],
        usages: &[ExtendedKeyUsagePurpose],
        ttl: Duration,
    ) -> Result<IssuedCert, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(sans.to_vec())?;
        params.distinguished_name = common_name(common_name_);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages.to_vec();
        let (not_before, not_after) = validity(ttl)?;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(IssuedCert {
            cert_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: Some(key.serialize_pem()),
            fingerprint: crate::fingerprint(cert.der()),
            not_after: not_after.unix_timestamp(),
        })
    }

    /// A node's client certificate for the public key of `csr_pem`. Only
    /// the key is taken from the request (its signature proves the node
    /// holds the key); everything else (name, usages, validity) is ours,
    /// whatever the request asks for.
    pub fn issue_node(
        &self,
        node: &str,
        csr_pem: &str,
        ttl: Duration,
    ) -> Result<IssuedCert, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadRequest(e.to_string()))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name(&format!("{NODE_PREFIX}{node}"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.subject_alt_names =
            vec![SanType::DnsName(node.try_into().map_err(|_| {
                PkiError::BadRequest(format!("node name {node:?}"))
            })?)];
        let (not_before, not_after) = validity(ttl)?;
        params.not_before = not_before;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&csr.public_key, &self.issuer()?)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: None,
            fingerprint: crate::fingerprint(cert.der()),
            not_after: not_after.unix_timestamp(),
        })
    }
}

/// A node's new key and a signing request for it (PEM, PEM).
pub fn node_key_and_csr(node: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = common_name(&format!("{NODE_PREFIX}{node}"));
    let csr = params.serialize_request(&key)?;
    Ok((
        key.serialize_pem(),
        csr.pem().map_err(|e| PkiError::Pem(e.to_string()))?,
    ))
}

/// Who a certificate (DER) names, from its common name; None for anything
/// else. Only meaningful for a certificate the TLS stack verified.
pub fn peer_identity(der: &[u8]) -> Option<PeerIdentity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    if let Some(name) = cn.strip_prefix(REPLICA_PREFIX) {
        return Some(PeerIdentity::Replica(name.to_string()));
    }
    cn.strip_prefix(NODE_PREFIX)
        .map(|name| PeerIdentity::Node(name.to_string()))
}

/// The validity period of a certificate (DER): (not before, not after).
pub fn validity_of(der: &[u8]) -> Option<(SystemTime, SystemTime)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let at = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    Some((
        at(cert.validity().not_before.timestamp()),
        at(cert.validity().not_after.timestamp()),
    ))
}

/// When a certificate (DER) should be renewed: at two thirds of the life it
/// was issued for (its backdating not counted).
pub fn renewal_time(der: &[u8]) -> Option<SystemTime> {
    let (from, until) = validity_of(der)?;
    let issued = from + BACKDATE;
    let life = until.duration_since(issued).unwrap_or_default();
    Some(issued + life * 2 / 3)
}

fn common_name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn validity(ttl: Duration) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    let now = OffsetDateTime::now_utc();
    let before = now - BACKDATE;
    let after = now
        + time::Duration::try_from(ttl)
            .map_err(|_| PkiError::BadRequest(format!("validity {ttl:?} too long")))?;
    Ok((before, after))
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, as RFC 5280 wants.
    bytes[0] &= 0x7f;
    SerialNumber::from_slice(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_certificate_names_the_node_whatever_the_request_asks() {
        let ca = ClusterCa::generate().unwrap();
        // A request that asks to be a replica, and a CA.
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["evil".to_string()]).unwrap();
        params.distinguished_name = common_name("replica:leader");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = params.serialize_request(&key).unwrap().pem().unwrap();
        let issued = ca
            .issue_node("n1", &csr, Duration::from_secs(3600))
            .unwrap();
        let der = crate::first_cert_der(&issued.cert_pem).unwrap();
        assert_eq!(peer_identity(&der), Some(PeerIdentity::Node("n1".into())));
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        assert!(!cert.is_ca());
        assert_eq!(issued.fingerprint, crate::fingerprint(&der));
        // Renewed at two thirds of the hour, not of the hour and the
        // backdating.
        let renew = renewal_time(&der).unwrap();
        let in_secs = renew.duration_since(SystemTime::now()).unwrap().as_secs();
        assert!((2390..=2400).contains(&in_secs), "{in_secs}");
    }

    #[test]
    fn a_request_with_a_bad_signature_is_refused() {
        let ca = ClusterCa::generate().unwrap();
        let (_, csr) = node_key_and_csr("n1").unwrap();
        // Flip a byte of the DER inside the PEM.
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(csr.as_bytes())
            .map(|d: rustls::pki_types::CertificateSigningRequestDer<'_>| d.as_ref().to_vec())
            .unwrap();
        let mut bad = der.clone();
        let last = bad.len() - 3;
        bad[last] ^= 0x55;
        let pem = rcgen::CertificateSigningRequestParams::from_der(&bad.into());
        assert!(pem.is_err());
        assert!(ca
            .issue_node("n1", "garbage", Duration::from_secs(60))
            .is_err());
    }

    #[test]
    fn a_ca_survives_its_pem_round_trip() {
        let ca = ClusterCa::generate().unwrap();
        let again = ClusterCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert_eq!(again.fingerprint(), ca.fingerprint());
        let replica = again
            .issue_replica(
                "cp-1",
                &["127.0.0.1".into(), "localhost".into()],
                Duration::from_secs(60),
            )
            .unwrap();
        assert!(replica.cert_pem.ends_with(ca.cert_pem()));
        let der = crate::first_cert_der(&replica.cert_pem).unwrap();
        assert_eq!(
            peer_identity(&der),
            Some(PeerIdentity::Replica("cp-1".into()))
        );
    }
}
