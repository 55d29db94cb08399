//! The gRPC contracts of faas, generated from `proto/faas/v1/*.proto`.

/// Package `faas.v1`: the public API and the internal agent stream.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("faas.v1");
}

/// Metadata key the control plane sets on an UNAVAILABLE answer given
/// before anything was recorded (no leader right now, a replica stepping
/// down): the client may send the same request again without risking a
/// duplicate call. Absent on other UNAVAILABLE answers.
pub const RETRY_SAFE_METADATA: &str = "faas-retry-safe";

/// The identifier rules of the contract, one home for both ends: the
/// control plane checks them at its API, the agent again before an
/// identifier touches a host path or a container id.
pub mod rules {
    /// Runtime and function names: 1-63 of `[a-z0-9-]`, not starting with
    /// '-' (a DNS label's alphabet: safe in paths, container ids and keys).
    pub fn is_name(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 63
            && !name.starts_with('-')
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    }

    /// What [`is_name`] requires, in words for error messages.
    pub const NAME_RULE: &str = "1-63 characters of a-z, 0-9 and '-', not starting with '-'";

    /// Call ids: a UUID, hyphenated and lowercase, as the control plane
    /// makes them.
    pub fn is_call_id(id: &str) -> bool {
        uuid::Uuid::try_parse(id).is_ok_and(|u| u.hyphenated().to_string() == id)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn names() {
            for ok in ["a", "hello-2", "0", &"x".repeat(63)] {
                assert!(is_name(ok), "{ok}");
            }
            for bad in [
                "",
                "-a",
                "A",
                "a_b",
                "a/b",
                "..",
                "a.b",
                &"x".repeat(64),
                "é",
            ] {
                assert!(!is_name(bad), "{bad}");
            }
        }

        #[test]
        fn call_ids() {
            assert!(is_call_id(&uuid::Uuid::now_v7().to_string()));
            for bad in [
                "",
                "../../../../x",
                "x",
                "0190C7C2-5A4B-7C3D-8E9F-0123456789AB",
                "0190c7c25a4b7c3d8e9f0123456789ab",
                "{0190c7c2-5a4b-7c3d-8e9f-0123456789ab}",
                "urn:uuid:0190c7c2-5a4b-7c3d-8e9f-0123456789ab",
                "0190c7c2-5a4b-7c3d-8e9f-0123456789ab/..",
                "0190c7c2-5a4b-7c3d-8e9f-0123456789ab\n",
            ] {
                assert!(!is_call_id(bad), "{bad}");
            }
        }
    }
}
