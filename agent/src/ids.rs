//! Identifiers that arrive from the control plane: checked before anything
//! makes a container id, a host path or a key of them. A call id becomes a
//! container id (`call-<id>`) and a directory under the agent's state; a
//! runtime path becomes a mount destination; a package digest becomes a
//! directory of the package cache; a secret's name becomes a file under
//! `/faas/secrets`. The control plane checks them at its API; the agent
//! does not rely on it.

use faas_proto::v1::{SecretValue, SpotOperation};

/// Most secrets one function receives (the control plane's bound).
pub const MAX_SECRETS: usize = 64;
/// Largest secret value, bytes (the control plane's bound): with
/// [`MAX_SECRETS`], what a container's io tmpfs grows by stays bounded.
pub const MAX_SECRET_BYTES: usize = 64 << 10;

/// Why an operation from the control plane is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    #[error("call id {0:?} is not a UUID in its canonical form")]
    CallId(String),
    #[error("{kind} name {name:?} does not follow the name rule (1-63 of a-z, 0-9, '-', not starting with '-')")]
    Name { kind: &'static str, name: String },
    #[error("runtime path {0:?} is not a plain absolute path")]
    RuntimePath(String),
    #[error("package digest {0:?} is not sha256:<64 hex digits>")]
    Digest(String),
    // Names only: a secret's value is never part of an error.
    #[error("secret {name:?}: environment variable name {env:?} is not [A-Za-z_][A-Za-z0-9_]* or starts with FAAS_")]
    SecretEnv { name: String, env: String },
    #[error("secret {0:?} is listed twice")]
    DuplicateSecret(String),
    #[error("environment variable {0} is given by two secrets")]
    DuplicateSecretEnv(String),
    #[error("{0} secrets, more than {MAX_SECRETS}")]
    TooManySecrets(usize),
    #[error("secret {name:?} holds {size} bytes, more than {MAX_SECRET_BYTES}")]
    SecretTooLarge { name: String, size: usize },
}

/// A call id: a UUID, hyphenated, lowercase (as the control plane makes
/// them): nothing else reaches a path.
pub fn check_call_id(id: &str) -> Result<(), InvalidId> {
    if faas_proto::rules::is_call_id(id) {
        Ok(())
    } else {
        Err(InvalidId::CallId(id.to_string()))
    }
}

/// The API's rule for runtime and function names ([`faas_proto::rules::is_name`]).
pub fn check_name(kind: &'static str, name: &str) -> Result<(), InvalidId> {
    if faas_proto::rules::is_name(name) {
        Ok(())
    } else {
        Err(InvalidId::Name {
            kind,
            name: name.to_string(),
        })
    }
}

/// A path inside the container: absolute, no `.` or `..` component, no
/// empty component, no NUL, of a sane length.
pub fn check_runtime_path(path: &str) -> Result<(), InvalidId> {
    let ok = path.starts_with('/')
        && path.len() <= 255
        && !path.contains('\0')
        && (path == "/"
            || path[1..]
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".."));
    if ok {
        Ok(())
    } else {
        Err(InvalidId::RuntimePath(path.to_string()))
    }
}

/// `sha256:` and 64 lowercase hex digits.
pub fn check_digest(digest: &str) -> Result<(), InvalidId> {
    match digest.strip_prefix("sha256:") {
        Some(hex)
            if hex.len() == 64
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) =>
        {
            Ok(())
        }
        _ => Err(InvalidId::Digest(digest.to_string())),
    }
}

/// An environment variable a secret may be delivered as: a portable shell
/// name, outside the platform's `FAAS_` variables (which it would shadow).
pub fn is_env_name(env: &str) -> bool {
    let mut bytes = env.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !env.starts_with("FAAS_")
}

/// A function's secrets: names that are safe file names, distinct; env
/// names that are safe variable names, distinct; bounded in count and
/// size (the io tmpfs grows by their size).
pub fn check_secrets(secrets: &[SecretValue]) -> Result<(), InvalidId> {
    if secrets.len() > MAX_SECRETS {
        return Err(InvalidId::TooManySecrets(secrets.len()));
    }
    let mut names = std::collections::HashSet::new();
    let mut envs = std::collections::HashSet::new();
    for secret in secrets {
        // Each becomes a file /faas/secrets/<name>.
        check_name("secret", &secret.name)?;
        if !names.insert(secret.name.as_str()) {
            return Err(InvalidId::DuplicateSecret(secret.name.clone()));
        }
        if !secret.env.is_empty() {
            if !is_env_name(&secret.env) {
                return Err(InvalidId::SecretEnv {
                    name: secret.name.clone(),
                    env: secret.env.clone(),
                });
            }
            if !envs.insert(secret.env.as_str()) {
                return Err(InvalidId::DuplicateSecretEnv(secret.env.clone()));
            }
        }
        if secret.value.len() > MAX_SECRET_BYTES {
            return Err(InvalidId::SecretTooLarge {
                name: secret.name.clone(),
                size: secret.value.len(),
            });
        }
    }
    Ok(())
}

/// Checks every identifier of an operation that reaches a path, a
/// container id or a mount.
pub fn check_operation(op: &SpotOperation) -> Result<(), InvalidId> {
    if let Some(call) = &op.call {
        check_call_id(&call.call_id)?;
    }
    if let Some(runtime) = &op.runtime {
        check_name("runtime", &runtime.name)?;
        check_runtime_path(&runtime.path)?;
    }
    if let Some(function) = &op.function {
        // A function outside "default" is named `namespace/name`.
        if !faas_proto::namespaces::is_function_key(&function.name) {
            return Err(InvalidId::Name {
                kind: "function",
                name: function.name.clone(),
            });
        }
        check_digest(&function.package_digest)?;
        check_secrets(&function.secrets)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use faas_proto::v1::{CallAssignment, FunctionBundle, RuntimeBundle, SecretValue};

    const ID: &str = "0190c7c2-5a4b-7c3d-8e9f-0123456789ab";
    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn call_ids_are_canonical_uuids() {
        // The rule itself is tested in faas_proto::rules.
        assert!(check_call_id(ID).is_ok());
        let bad = "0190c7c2-5a4b-7c3d-8e9f-0123456789ab/..";
        assert_eq!(check_call_id(bad), Err(InvalidId::CallId(bad.to_string())));
    }

    #[test]
    fn names_follow_the_api_rule() {
        // The rule itself is tested in faas_proto::rules.
        assert!(check_name("function", "hello-2").is_ok());
        assert_eq!(
            check_name("runtime", ".."),
            Err(InvalidId::Name {
                kind: "runtime",
                name: "..".into()
            })
        );
    }

    #[test]
    fn runtime_paths_are_plain() {
        for good in ["/var/task", "/", "/opt/fn-1"] {
            assert!(check_runtime_path(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "var/task",
            "/var/../etc",
            "/var//task",
            "/var/task/",
            "/./x",
            "/a\0b",
        ] {
            assert!(check_runtime_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn digests_are_sha256() {
        assert!(check_digest(DIGEST).is_ok());
        for bad in [
            "",
            "sha256:",
            "sha256:../../x",
            &DIGEST.to_uppercase(),
            &DIGEST[..70],
        ] {
            assert!(check_digest(bad).is_err(), "{bad:?}");
        }
    }

    fn op() -> SpotOperation {
        SpotOperation {
            spot: 0,
            runtime: Some(RuntimeBundle {
                name: "python3".into(),
                path: "/var/task".into(),
                ..Default::default()
            }),
            function: Some(FunctionBundle {
                name: "hello".into(),
                package_digest: DIGEST.into(),
                ..Default::default()
            }),
            call: Some(CallAssignment {
                call_id: ID.into(),
                ..Default::default()
            }),
            kind: 1,
            ..Default::default()
        }
    }

    #[test]
    fn operations_are_checked_whole() {
        assert!(check_operation(&op()).is_ok());
        let mut bad = op();
        bad.call.as_mut().unwrap().call_id = "../../../../x".into();
        assert!(matches!(check_operation(&bad), Err(InvalidId::CallId(_))));
        let mut bad = op();
        bad.runtime.as_mut().unwrap().name = "../rt".into();
        assert!(matches!(
            check_operation(&bad),
            Err(InvalidId::Name {
                kind: "runtime",
                ..
            })
        ));
        let mut bad = op();
        bad.function.as_mut().unwrap().name = "Fn".into();
        assert!(matches!(
            check_operation(&bad),
            Err(InvalidId::Name {
                kind: "function",
                ..
            })
        ));
        for key in ["team-a/../x", "a/b/c", "default/f"] {
            let mut bad = op();
            bad.function.as_mut().unwrap().name = key.into();
            assert!(check_operation(&bad).is_err(), "{key}");
        }
        let mut namespaced = op();
        namespaced.function.as_mut().unwrap().name = "team-a/f".into();
        assert!(check_operation(&namespaced).is_ok());
        let mut bad = op();
        bad.function.as_mut().unwrap().package_digest = "sha256:../../x".into();
        assert!(matches!(check_operation(&bad), Err(InvalidId::Digest(_))));
        let mut bad = op();
        bad.runtime.as_mut().unwrap().path = "/var/../../etc".into();
        assert!(matches!(
            check_operation(&bad),
            Err(InvalidId::RuntimePath(_))
        ));
        // A clear-spot has nothing to check.
        assert!(check_operation(&SpotOperation::default()).is_ok());
    }

    fn secret(name: &str, env: &str, value: &[u8]) -> SecretValue {
        SecretValue {
            name: name.into(),
            env: env.into(),
            value: value.to_vec(),
        }
    }

    #[test]
    fn env_names_are_portable_and_not_the_platforms() {
        for good in ["API_KEY", "_x", "a1", "Db_Password_2"] {
            assert!(is_env_name(good), "{good}");
        }
        for bad in [
            "",
            "1A",
            "A-B",
            "A B",
            "A=B",
            "A\0",
            "É",
            "FAAS_HANDLER",
            "FAAS_",
        ] {
            assert!(!is_env_name(bad), "{bad:?}");
        }
        // Only the platform's own prefix is reserved.
        assert!(is_env_name("FAAS"));
        assert!(is_env_name("faas_x"));
    }

    #[test]
    fn secrets_are_checked() {
        let ok = [
            secret("db-password", "DB_PASSWORD", b"hunter2"),
            secret("tls-key", "", &[0, 255, 10]),
            secret("empty", "", b""),
            secret("big", "", &vec![7; MAX_SECRET_BYTES]),
        ];
        assert!(check_secrets(&ok).is_ok());
        assert!(check_secrets(&[]).is_ok());
        // A name is a file name under /faas/secrets.
        for bad in ["", "..", ".", "a/b", "../x", "A", "-a", &"a".repeat(64)] {
            assert!(
                matches!(
                    check_secrets(&[secret(bad, "", b"v")]),
                    Err(InvalidId::Name { kind: "secret", .. })
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            check_secrets(&[secret("a", "", b"1"), secret("a", "", b"2")]),
            Err(InvalidId::DuplicateSecret("a".into()))
        );
        assert_eq!(
            check_secrets(&[secret("a", "K", b"1"), secret("b", "K", b"2")]),
            Err(InvalidId::DuplicateSecretEnv("K".into()))
        );
        assert!(matches!(
            check_secrets(&[secret("a", "FAAS_HANDLER", b"x")]),
            Err(InvalidId::SecretEnv { .. })
        ));
        assert!(matches!(
            check_secrets(&[secret("a", "A=B", b"x")]),
            Err(InvalidId::SecretEnv { .. })
        ));
        assert_eq!(
            check_secrets(&[secret("big", "", &vec![7; MAX_SECRET_BYTES + 1])]),
            Err(InvalidId::SecretTooLarge {
                name: "big".into(),
                size: MAX_SECRET_BYTES + 1
            })
        );
        let many: Vec<SecretValue> = (0..=MAX_SECRETS)
            .map(|i| secret(&format!("s{i}"), "", b"v"))
            .collect();
        assert_eq!(
            check_secrets(&many),
            Err(InvalidId::TooManySecrets(MAX_SECRETS + 1))
        );
        assert!(check_secrets(&many[..MAX_SECRETS]).is_ok());
    }

    #[test]
    fn secret_errors_never_hold_a_value() {
        let value = b"s3cr3t-value";
        for secrets in [
            vec![secret("a", "1BAD", value)],
            vec![secret("a", "K", value), secret("a", "L", value)],
            vec![secret("a", "K", value), secret("b", "K", value)],
            vec![secret("a", "", &[b'x'; MAX_SECRET_BYTES + 1])],
        ] {
            let message = check_secrets(&secrets).unwrap_err().to_string();
            assert!(!message.contains("s3cr3t"), "{message}");
            assert!(!message.contains("xxxx"), "{message}");
        }
    }

    #[test]
    fn operations_check_their_secrets() {
        let mut good = op();
        good.function.as_mut().unwrap().secrets = vec![secret("a", "A", b"v")];
        assert!(check_operation(&good).is_ok());
        let mut bad = op();
        bad.function.as_mut().unwrap().secrets = vec![secret("../../etc/passwd", "", b"v")];
        assert!(matches!(
            check_operation(&bad),
            Err(InvalidId::Name { kind: "secret", .. })
        ));
    }
}
