//! Named contexts, like kubeconfig: where a cluster is, which CA vouches
//! for it and which token to send. Kept in `$FAASCTL_CONFIG`, else
//! `$XDG_CONFIG_HOME/faas/config.toml`, else `~/.config/faas/config.toml`
//! (mode 0600: it may hold tokens).
//!
//! ```toml
//! current_context = "local"
//! [contexts.local]
//! endpoint = "https://127.0.0.1:7070"
//! ca_file = "/var/lib/faas-local/pki/ca.crt"
//! token_file = "/var/lib/faas-local/admin.token"   # or: token = "<id>.<secret>"
//! namespace = "team-a"                             # optional; default "default"
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::args::{ContextCmd, GlobalArgs, OutputFormat};

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
            Ok(text) => {
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Written whole, mode 0600, replacing the old file atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = dir.join(format!(".config.toml.{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        file.write_all(toml::to_string_pretty(self)?.as_bytes())?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// The named context, or the current one; None when no context is
    /// chosen at all.
    pub fn select(&self, name: Option<&str>) -> Result<Option<(String, ContextEntry)>> {
        let Some(name) = name.or(self.current_context.as_deref()) else {
            return Ok(None);
        };
        let entry = self.contexts.get(name).cloned().ok_or_else(|| {
            anyhow::anyhow!(
                "no context {name:?} in {} (faasctl context ls)",
                config_path().display()
            )
        })?;
        Ok(Some((name.to_string(), entry)))
    }
}

/// Where to connect, with what, and in which namespace: flags (and their
/// env) over the context.
pub struct Resolved {
    pub endpoints: Vec<String>,
    pub credentials: crate::client::Credentials,
    pub namespace: String,
}

pub fn resolve(global: &GlobalArgs) -> Result<Resolved> {
    let file = ConfigFile::load(&config_path())?;
    let chosen = file
        .select(global.context.as_deref())?
        .map(|(_, e)| e)
        .unwrap_or_default();
    let endpoints = if !global.endpoint.is_empty() {
        global.endpoint.clone()
    } else if let Some(e) = &chosen.endpoint {
        e.split(',').map(str::to_string).collect()
    } else {
        vec![DEFAULT_ENDPOINT.to_string()]
    };
    let token = match (&global.token, &global.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(path)) => Some(read_token(path)?),
        (None, None) => match (&chosen.token, &chosen.token_file) {
            (Some(t), _) => Some(t.clone()),
            (None, Some(path)) => Some(read_token(path)?),
            (None, None) => None,
        },
    };
    let ca_file = global.ca_file.as_ref().or(chosen.ca_file.as_ref());
    let ca_pem = ca_file
        .map(|path| {
            std::fs::read_to_string(path)
                .with_context(|| format!("reading the CA certificate {}", path.display()))
        })
        .transpose()?;
    let namespace = global
        .namespace
        .clone()
        .or(chosen.namespace)
        .unwrap_or_else(|| faas_proto::namespaces::DEFAULT.to_string());
    Ok(Resolved {
        endpoints,
        credentials: crate::client::Credentials {
            tls: faas_pki::client::ClientTls {
                ca_pem,
                identity: None,
            },
            bearer: faas_pki::client::Bearer::new(token.as_deref())
                .map_err(|e| crate::output::BadInput(e.to_string()))?,
        },
        namespace,
    })
}

const DEFAULT_ENDPOINT: &str = "https://127.0.0.1:7070";

fn read_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    Ok(text.trim().to_string())
}

/// `faasctl context ...`: local, no cluster needed.
pub fn run(cmd: ContextCmd, global: &GlobalArgs) -> Result<()> {
    let path = config_path();
    let mut file = ConfigFile::load(&path)?;
    match cmd {
        ContextCmd::Ls => {
            let current = file.current_context.as_deref();
            if global.output == OutputFormat::Json {
                let list: Vec<serde_json::Value> = file
                    .contexts
                    .iter()
                    .map(|(name, e)| {
                        serde_json::json!({
                            "name": name,
                            "current": Some(name.as_str()) == current,
                            "endpoint": e.endpoint,
                            "ca_file": e.ca_file,
                            "token_file": e.token_file,
                            "has_token": e.token.is_some(),
                            "namespace": e.namespace,
                        })
                    })
                    .collect();
                crate::output::emit_json(&serde_json::Value::Array(list))?;
            } else {
                let mut text = String::new();
                for (name, e) in &file.contexts {
                    let mark = if Some(name.as_str()) == current {
                        "*"
                    } else {
                        " "
                    };
                    text.push_str(&format!(
                        "{mark} {name}\t{}\n",
                        e.endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT)
                    ));
                }
                crate::output::emit(&text)?;
            }
            Ok(())
        }
        ContextCmd::Use { name } => {
            if !file.contexts.contains_key(&name) {
                return Err(crate::output::BadInput(format!(
                    "no context {name:?} in {} (faasctl context ls)",
                    path.display()
                ))
                .into());
            }
            file.current_context = Some(name);
            file.save(&path)
        }
        ContextCmd::Set { name } => {
            let entry = file.contexts.entry(name.clone()).or_default();
            if !global.endpoint.is_empty() {
                entry.endpoint = Some(global.endpoint.join(","));
            }
            if let Some(ca) = &global.ca_file {
                entry.ca_file = Some(absolute(ca)?);
            }
            if let Some(t) = &global.token_file {
                entry.token_file = Some(absolute(t)?);
                entry.token = None;
            }
            if let Some(t) = &global.token {
                entry.token = Some(t.clone());
                entry.token_file = None;
            }
            if let Some(ns) = &global.namespace {
                entry.namespace = Some(ns.clone());
            }
            file.current_context = Some(name.clone());
            file.save(&path)?;
            crate::output::note(&format!(
                "context {name:?} saved in {} and made current",
                path.display()
            ));
            Ok(())
        }
        ContextCmd::Rm { name } => {
            if file.contexts.remove(&name).is_none() {
                return Err(crate::output::BadInput(format!("no context {name:?}")).into());
            }
            if file.current_context.as_deref() == Some(name.as_str()) {
                file.current_context = None;
            }
            file.save(&path)
        }
    }
}

fn absolute(path: &Path) -> Result<PathBuf> {
    Ok(std::path::absolute(path)?)
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
}
