//! Identifiers that arrive from the control plane: checked before anything
//! makes a container id, a host path or a key of them. A call id becomes a
//! container id (`call-<id>`) and a directory under the agent's state; a
//! runtime path becomes a mount destination; a package digest becomes a
//! directory of the package cache. The control plane checks them at its
//! API; the agent does not rely on it.

use faas_proto::v1::SpotOperation;

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
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use faas_proto::v1::{CallAssignment, FunctionBundle, RuntimeBundle};

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
}
