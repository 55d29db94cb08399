//! `faasctl context`: named contexts, like kubeconfig (where a cluster
//! is, which CA vouches for it, which token to send), kept in the file
//! faas-client reads (`faas_client::config`): `$FAASCTL_CONFIG`, else
//! `$XDG_CONFIG_HOME/faas/config.toml`, else `~/.config/faas/config.toml`.

use std::path::{Path, PathBuf};

use anyhow::Result;
use faas_client::config::{config_path, ConfigFile, Overrides, DEFAULT_ENDPOINT};

use crate::args::{ContextCmd, GlobalArgs, OutputFormat};

/// The client faasctl's flags (and their env) and the chosen context
/// describe; it connects on its first request.
pub fn client(global: &GlobalArgs) -> Result<faas_client::Client> {
    let overrides = Overrides {
        config_file: None,
        context: global.context.clone(),
        endpoints: global.endpoint.clone(),
        token: global.token.clone(),
        token_file: global.token_file.clone(),
        ca_file: global.ca_file.clone(),
        namespace: global.namespace.clone(),
    };
    let mut settings = faas_client::config::resolve(&overrides)?;
    settings.rpc_timeout = global.rpc_timeout;
    faas_client::Client::new(settings).map_err(|e| match e {
        faas_client::Error::InvalidToken(message) => crate::output::BadInput(message).into(),
        other => other.into(),
    })
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
            Ok(file.save(&path)?)
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
            Ok(file.save(&path)?)
        }
    }
}

fn absolute(path: &Path) -> Result<PathBuf> {
    Ok(std::path::absolute(path)?)
}
