//! Named contexts, like kubeconfig: where a cluster is, which CA vouches
//! for it and which token to send. Shared with faasctl: kept in
//! `$FAASCTL_CONFIG`, else `$XDG_CONFIG_HOME/faas/config.toml`, else
//! `~/.config/faas/config.toml` (mode 0600: it may hold tokens).
//!
//! ```toml
//! current_context = "local"
//! [contexts.local]
//! endpoint = "https://127.0.0.1:7070"
//! ca_file = "/var/lib/faas-local/pki/ca.crt"
//! token_file = "/var/lib/faas-local/admin.token"   # or: token = "<id>.<secret>"
//! namespace = "team-a"                             # optional; default "default"
//! ```
//!
//! What a client uses is resolved as faasctl does: explicit settings (its
//! flags; `FAAS_ENDPOINT`, `FAAS_TOKEN`, `FAAS_TOKEN_FILE`, `FAAS_CA_FILE`,
//! `FAAS_NAMESPACE`, `FAAS_CONTEXT` in the environment) over the chosen
//! context, over the defaults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Where a client connects when nothing says otherwise (deploy/local/up.sh's
/// cluster).
pub const DEFAULT_ENDPOINT: &str = "https://127.0.0.1:7070";

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, ContextEntry>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ContextEntry {
    /// One endpoint, or several separated by commas (tried in order).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The cluster CA's certificate (PEM file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// A file holding the API token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// The API token itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The namespace commands act on (default: "default").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The contexts file: `$FAASCTL_CONFIG`, else under `$XDG_CONFIG_HOME`,
/// else under `~/.config`.
pub fn config_path() -> PathBuf {
    if let Some(p) = std::env::var_os("FAASCTL_CONFIG") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("faas").join("config.toml")
}

impl ConfigFile {
    /// The file, or an empty one if it does not exist.
    pub fn load(path: &Path) -> Result<ConfigFile> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|source| Error::ParseConfig {
                path: path.to_path_buf(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
            Err(source) => Err(Error::ReadConfig {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Written whole, mode 0600, replacing the old file atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let write_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::WriteConfig { path, source }
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(write_error(dir))?;
        let tmp = dir.join(format!(".config.toml.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(write_error(&tmp))?;
        let text = toml::to_string_pretty(self).map_err(|e| Error::WriteConfig {
            path: path.to_path_buf(),
            source: std::io::Error::other(e),
        })?;
        file.write_all(text.as_bytes()).map_err(write_error(&tmp))?;
        std::fs::rename(&tmp, path).map_err(write_error(path))?;
        Ok(())
    }

    /// The named context, or the current one; None when no context is
    /// chosen at all.
    pub fn select(&self, name: Option<&str>) -> Result<Option<(String, ContextEntry)>> {
        let Some(name) = name.or(self.current_context.as_deref()) else {
            return Ok(None);
        };
        let entry = self
            .contexts
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NoContext {
                name: name.to_string(),
                path: config_path(),
            })?;
        Ok(Some((name.to_string(), entry)))
    }
}

/// What is set explicitly, over the context: faasctl's flags, or the
/// environment ([`Overrides::from_env`]). Empty fields defer to the context.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    /// The contexts file; None: [`config_path`].
    pub config_file: Option<PathBuf>,
    /// The context to use; None: the file's current one.
    pub context: Option<String>,
    pub endpoints: Vec<String>,
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub namespace: Option<String>,
}

impl Overrides {
    /// The variables faasctl reads: `FAAS_CONTEXT`, `FAAS_ENDPOINT`
    /// (comma-separated), `FAAS_TOKEN`, `FAAS_TOKEN_FILE`, `FAAS_CA_FILE`,
    /// `FAAS_NAMESPACE` (empty values count as unset).
    pub fn from_env() -> Overrides {
        Overrides::from_lookup(|name| std::env::var(name).ok())
    }

    /// The same, from any source of variables (tests give a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Overrides {
        let var = |name: &str| lookup(name).filter(|v| !v.is_empty());
        Overrides {
            config_file: None,
            context: var("FAAS_CONTEXT"),
            endpoints: var("FAAS_ENDPOINT")
                .map(|e| e.split(',').map(str::to_string).collect())
                .unwrap_or_default(),
            token: var("FAAS_TOKEN"),
            token_file: var("FAAS_TOKEN_FILE").map(PathBuf::from),
            ca_file: var("FAAS_CA_FILE").map(PathBuf::from),
            namespace: var("FAAS_NAMESPACE"),
        }
    }
}

/// Everything a [`crate::Client`] needs, resolved.
#[derive(Clone, Default)]
pub struct Settings {
    /// Tried in order; the first that accepts a connection is used.
    pub endpoints: Vec<String>,
    /// The cluster CA (PEM) that signed the control plane's certificate.
    pub ca_pem: Option<String>,
    /// The API token ("<id>.<secret>").
    pub token: Option<String>,
    /// The namespace functions and calls are named in.
    pub namespace: String,
    /// Deadline of each RPC; None: no deadline (a synchronous invoke waits
    /// as long as the function may run).
    pub rpc_timeout: Option<Duration>,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("endpoints", &self.endpoints)
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<pem>"))
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("namespace", &self.namespace)
            .field("rpc_timeout", &self.rpc_timeout)
            .finish()
    }
}

/// Settings from `overrides` over the chosen context over the defaults;
/// reads the CA and token files.
pub fn resolve(overrides: &Overrides) -> Result<Settings> {
    let path = overrides.config_file.clone().unwrap_or_else(config_path);
    let file = ConfigFile::load(&path)?;
    let chosen = file
        .select(overrides.context.as_deref())
        .map_err(|e| match e {
            Error::NoContext { name, .. } => Error::NoContext { name, path },
            other => other,
        })?
        .map(|(_, e)| e)
        .unwrap_or_default();
    let endpoints = if !overrides.endpoints.is_empty() {
        overrides.endpoints.clone()
    } else if let Some(e) = &chosen.endpoint {
        e.split(',').map(str::to_string).collect()
    } else {
        vec![DEFAULT_ENDPOINT.to_string()]
    };
    let token = match (&overrides.token, &overrides.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(path)) => Some(read_token(path)?),
        (None, None) => match (&chosen.token, &chosen.token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(path)) => Some(read_token(path)?),
            (None, None) => None,
        },
    };
    let ca_file = overrides.ca_file.as_ref().or(chosen.ca_file.as_ref());
    let ca_pem = ca_file
        .map(|path| {
            std::fs::read_to_string(path).map_err(|source| Error::ReadCa {
                path: path.clone(),
                source,
            })
        })
        .transpose()?;
    let namespace = overrides
        .namespace
        .clone()
        .or(chosen.namespace)
        .unwrap_or_else(|| faas_proto::namespaces::DEFAULT.to_string());
    Ok(Settings {
        endpoints,
        ca_pem,
        token,
        namespace,
        rpc_timeout: None,
    })
}

fn read_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::ReadToken {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(text.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faas/config.toml");
        assert!(ConfigFile::load(&path).unwrap().contexts.is_empty());
        let mut file = ConfigFile::default();
        let entry = ContextEntry {
            endpoint: Some("https://cp:7070".into()),
            ca_file: Some("/ca.crt".into()),
            token_file: None,
            token: Some("t".into()),
            namespace: Some("team-a".into()),
        };
        file.contexts.insert("prod".into(), entry.clone());
        file.current_context = Some("prod".into());
        file.save(&path).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = ConfigFile::load(&path).unwrap();
        assert_eq!(again.select(None).unwrap(), Some(("prod".into(), entry)));
        assert!(again.select(Some("nope")).is_err());
    }

    #[test]
    fn overrides_win_over_the_context() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, "PEM").unwrap();
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, "id.secret\n").unwrap();
        std::fs::write(
            &path,
            format!(
                "current_context = \"a\"\n[contexts.a]\nendpoint = \"https://a:1,https://b:2\"\nca_file = {:?}\ntoken_file = {:?}\nnamespace = \"web\"\n[contexts.b]\n",
                ca, token_file
            ),
        )
        .unwrap();
        let base = Overrides {
            config_file: Some(path.clone()),
            ..Overrides::default()
        };
        let s = resolve(&base).unwrap();
        assert_eq!(s.endpoints, ["https://a:1", "https://b:2"]);
        assert_eq!(s.ca_pem.as_deref(), Some("PEM"));
        assert_eq!(s.token.as_deref(), Some("id.secret"), "trimmed");
        assert_eq!(s.namespace, "web");

        let env = Overrides::from_lookup(|name| match name {
            "FAAS_ENDPOINT" => Some("c:3,d:4".into()),
            "FAAS_TOKEN" => Some("x.y".into()),
            "FAAS_NAMESPACE" => Some(String::new()),
            _ => None,
        });
        let s = resolve(&Overrides {
            config_file: Some(path.clone()),
            ..env
        })
        .unwrap();
        assert_eq!(s.endpoints, ["c:3", "d:4"]);
        assert_eq!(s.token.as_deref(), Some("x.y"));
        assert_eq!(s.namespace, "web", "an empty variable is unset");

        let s = resolve(&Overrides {
            context: Some("b".into()),
            ..base.clone()
        })
        .unwrap();
        assert_eq!(s.endpoints, [DEFAULT_ENDPOINT]);
        assert_eq!((s.token, s.namespace.as_str()), (None, "default"));

        let err = resolve(&Overrides {
            context: Some("nope".into()),
            ..base
        })
        .unwrap_err();
        assert!(
            matches!(err, Error::NoContext { path: ref p, .. } if *p == path),
            "{err}"
        );
    }
}
