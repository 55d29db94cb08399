//! The gRPC contracts of faas, generated from `proto/faas/v1/*.proto`.

/// Package `faas.v1`: the public API and the internal agent stream.
#[allow(clippy::all, missing_docs)]
pub mod v1 {
    tonic::include_proto!("faas.v1");
}

/// The encoded `FileDescriptorSet` of every `faas.v1` file, served by the
/// control plane's gRPC reflection (which lists only the public services).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("faas_descriptor");

/// The services a client may call, as gRPC reflection lists them (the
/// agents' services are for nodes only and are not listed).
pub const PUBLIC_SERVICES: &[&str] = &[
    "faas.v1.RuntimeService",
    "faas.v1.FunctionService",
    "faas.v1.CallService",
    "faas.v1.ClusterService",
    "faas.v1.AccessService",
    "faas.v1.NamespaceService",
    "faas.v1.SecretService",
];

impl v1::CallStatus {
    /// Whether a call with this status has ended (its record changes no
    /// more). One list for every process and client that waits on calls.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            v1::CallStatus::Succeeded
                | v1::CallStatus::Failed
                | v1::CallStatus::Timeout
                | v1::CallStatus::Cancelled
        )
    }

    /// The status as users read it: "succeeded", "cancelled" (the proto
    /// name without its prefix, lowercase). Used in messages and metrics.
    pub fn short_name(self) -> String {
        short_name(self.as_str_name(), "CALL_STATUS_")
    }
}

impl v1::StartKind {
    /// The start kind as users read it: "cold", "prewarm_runtime".
    pub fn short_name(self) -> String {
        short_name(self.as_str_name(), "START_KIND_")
    }
}

impl v1::SpotState {
    /// The state as users read it: "free", "preloaded_function".
    pub fn short_name(self) -> String {
        short_name(self.as_str_name(), "SPOT_STATE_")
    }
}

/// `CALL_STATUS_SUCCEEDED` with prefix `CALL_STATUS_` → `succeeded`.
fn short_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix)
        .unwrap_or(full)
        .to_ascii_lowercase()
}

/// Secret values are never printed, whatever prints the messages that
/// carry them.
impl v1::Role {
    /// The role as users write it (`faasctl token create --role`, error
    /// messages): "admin", "developer", "invoker", "public-invoker".
    pub fn short_name(self) -> &'static str {
        match self {
            v1::Role::Admin => "admin",
            v1::Role::Developer => "developer",
            v1::Role::Invoker => "invoker",
            v1::Role::PublicInvoker => "public-invoker",
            v1::Role::Unspecified => "unspecified",
        }
    }
}

impl std::fmt::Debug for v1::SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValue")
            .field("name", &self.name)
            .field("value", &format_args!("<{} bytes>", self.value.len()))
            .field("env", &self.env)
            .finish()
    }
}

impl std::fmt::Debug for v1::PutSecretRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutSecretRequest")
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("value", &format_args!("<{} bytes>", self.value.len()))
            .field("replace", &self.replace)
            .finish()
    }
}

#[cfg(test)]
mod redaction_tests {
    #[test]
    fn secret_values_are_not_printed() {
        let v = super::v1::SecretValue {
            name: "db".into(),
            value: b"hunter2".to_vec(),
            env: "DB".into(),
        };
        let bundle = super::v1::FunctionBundle {
            secrets: vec![v],
            ..Default::default()
        };
        let text = format!("{bundle:?}");
        assert!(text.contains("db") && text.contains("<7 bytes>"), "{text}");
        assert!(
            !text.contains("hunter2") && !text.contains("104, 117"),
            "{text}"
        );
    }
}

/// Metadata key the control plane sets on an UNAVAILABLE answer given
/// before anything was recorded (no leader right now, a replica stepping
/// down): the client may send the same request again without risking a
/// duplicate call. Absent on other UNAVAILABLE answers.
pub const RETRY_SAFE_METADATA: &str = "faas-retry-safe";

/// The version of faas these binaries belong to: `FAAS_VERSION` at build
/// time (deploy/release.sh sets the release's, e.g. `0.1.0+3f2a9c1`), else
/// the crate's. Agents report it in their hello; `faasctl node ls` shows it.
pub const VERSION: &str = match option_env!("FAAS_VERSION") {
    Some(version) => version,
    None => env!("CARGO_PKG_VERSION"),
};

/// Namespaces (tenants): the rules that name a function across them.
///
/// A function is known inside the platform (etcd key, registry repository,
/// the broker's catalog, the agent's bundle) by its *key*: its bare name in
/// the "default" namespace, as before namespaces existed (so older records
/// need no migration), and `namespace/name` elsewhere. Names cannot hold
/// '/', so no two functions share a key.
pub mod namespaces {
    /// The namespace of requests and records that name none.
    pub const DEFAULT: &str = "default";
    /// In list requests: every namespace the caller may read.
    pub const ALL: &str = "*";

    /// `namespace`, or "default" when empty.
    pub fn or_default(namespace: &str) -> &str {
        if namespace.is_empty() {
            DEFAULT
        } else {
            namespace
        }
    }

    /// The key of function `name` in `namespace`.
    pub fn function_key(namespace: &str, name: &str) -> String {
        match or_default(namespace) {
            DEFAULT => name.to_string(),
            ns => format!("{ns}/{name}"),
        }
    }

    /// (namespace, name) of a function key.
    pub fn split_key(key: &str) -> (&str, &str) {
        key.split_once('/').unwrap_or((DEFAULT, key))
    }

    /// A function key whose parts follow the name rule.
    pub fn is_function_key(key: &str) -> bool {
        match key.split_once('/') {
            Some((ns, name)) => {
                ns != DEFAULT && super::rules::is_name(ns) && super::rules::is_name(name)
            }
            None => super::rules::is_name(key),
        }
    }

    impl super::v1::Function {
        /// The function's key (see the module's documentation).
        pub fn key(&self) -> String {
            function_key(&self.namespace, &self.name)
        }

        pub fn namespace_name(&self) -> &str {
            or_default(&self.namespace)
        }
    }

    impl super::v1::Call {
        /// The key of the call's function.
        pub fn function_key(&self) -> String {
            function_key(&self.namespace, &self.function)
        }

        pub fn namespace_name(&self) -> &str {
            or_default(&self.namespace)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn keys() {
            assert_eq!(function_key("", "hello"), "hello");
            assert_eq!(function_key("default", "hello"), "hello");
            assert_eq!(function_key("team-a", "hello"), "team-a/hello");
            assert_eq!(split_key("team-a/hello"), ("team-a", "hello"));
            assert_eq!(split_key("hello"), ("default", "hello"));
            assert!(is_function_key("hello"));
            assert!(is_function_key("team-a/hello"));
            for bad in ["default/hello", "a/b/c", "../x", "a/", "/a", "A/b", ""] {
                assert!(!is_function_key(bad), "{bad}");
            }
        }
    }
}

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

    /// A layer's top-level directory (see `Layer.directories`): a plain
    /// name mounted at /opt/<name>. "faas" is where the runtimes keep
    /// their bootstraps.
    pub fn is_layer_directory(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 64
            && !name.starts_with('.')
            && name != "faas"
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
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
