//! Dispatch proofs: the leader stamps every call it hands to a node with
//! an HMAC of (node, call id), and a node that reconnects, to a new leader
//! perhaps, shows it for each call it says it runs. A call still recorded
//! QUEUED (its leader died between handing it out and recording it
//! RUNNING) is taken as running on that node only with its proof: a node
//! cannot claim, and then forge the result of, a call it was never given.
//!
//! The key is derived from the cluster CA's key, which every replica
//! holds, so a proof made by one leader checks on the next.

use aws_lc_rs::hmac;
use sha2::Digest;

use crate::ClusterCa;

#[derive(Clone)]
pub struct DispatchKey(hmac::Key);

impl DispatchKey {
    pub fn from_ca(ca: &ClusterCa) -> DispatchKey {
        let mut seed = sha2::Sha256::new();
        seed.update(b"faas dispatch proof v1\0");
        seed.update(ca.key_pem().as_bytes());
        DispatchKey(hmac::Key::new(hmac::HMAC_SHA256, &seed.finalize()))
    }

    /// The proof that `call_id` was handed to `node` (hex).
    pub fn proof(&self, node: &str, call_id: &str) -> String {
        hex::encode(hmac::sign(&self.0, &message(node, call_id)).as_ref())
    }

    /// Whether `proof` is [`DispatchKey::proof`] of (node, call id), in
    /// constant time.
    pub fn verify(&self, node: &str, call_id: &str, proof: &str) -> bool {
        let Ok(tag) = hex::decode(proof) else {
            return false;
        };
        hmac::verify(&self.0, &message(node, call_id), &tag).is_ok()
    }
}

impl std::fmt::Debug for DispatchKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DispatchKey(..)")
    }
}

/// Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
fn message(node: &str, call_id: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + node.len() + call_id.len());
    m.extend_from_slice(&(node.len() as u64).to_be_bytes());
    m.extend_from_slice(node.as_bytes());
    m.extend_from_slice(call_id.as_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_checks_only_for_its_node_call_and_cluster() {
        let ca = ClusterCa::generate().unwrap();
        let key = DispatchKey::from_ca(&ca);
        let proof = key.proof("n1", "call-1");
        assert!(key.verify("n1", "call-1", &proof));
        // Another replica of the same cluster (same CA) agrees.
        let again = ClusterCa::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert!(DispatchKey::from_ca(&again).verify("n1", "call-1", &proof));
        assert!(!key.verify("n2", "call-1", &proof));
        assert!(!key.verify("n1", "call-2", &proof));
        assert!(!key.verify("n1", "call-1", ""));
        assert!(!key.verify("n1", "call-1", "zz"));
        let other = DispatchKey::from_ca(&ClusterCa::generate().unwrap());
        assert!(!other.verify("n1", "call-1", &proof));
    }
}
