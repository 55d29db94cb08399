//! Deploy-time builds (`Runtime.build`): the settings, the dependency
//! cache's key and the pieces of a build's outcome. Pure: the deploy
//! (api/functions.rs) runs the build through the broker.
//!
//! The cache. A dependency layer is reused only for the same namespace
//! (a build runs the tenant's code, e.g. an sdist's setup.py: its output
//! is trusted by nobody else), runtime image, build command, package index
//! and dependency files, byte for byte. Anything else installs again.

use std::io::Read;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The files that declare a function's dependencies, at the package's
/// root. Their bytes make the cache key; their presence makes a build
/// install (the runtime's build command decides how).
pub const DEPENDENCY_FILES: &[&str] = &[
    "requirements.txt",
    "package.json",
    "package-lock.json",
    "npm-shrinkwrap.json",
];

/// Most bytes of one dependency file read for the key (the package's
/// shape limits bound it anyway).
const MAX_DEPENDENCY_FILE: u64 = 1 << 20;

/// The `[build]` table of the control plane's configuration file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSettings {
    /// The Python package index builds install from (pip's
    /// PIP_INDEX_URL) [default: https://pypi.org/simple/].
    pub index_url: Option<String>,
    /// The npm registry builds fetch Node packages from (NPM_CONFIG_REGISTRY;
    /// a lockfile's registry.npmjs.org URLs are fetched from here)
    /// [default: https://registry.npmjs.org/].
    pub npm_registry: Option<String>,
    /// Where a build's network may go ("HOST:PORT", "IP:PORT",
    /// "CIDR:PORT", as a function's --allow) [default: pypi.org:443,
    /// files.pythonhosted.org:443 (where PyPI serves its files) and
    /// registry.npmjs.org:443].
    pub allow: Option<Vec<String>>,
    /// Longest a build may run [default: 600].
    pub timeout_secs: Option<u64>,
    /// A build container's memory limit [default: 1 GiB].
    pub memory_bytes: Option<u64>,
    /// Most bytes a build may write (its tmpfs, counted in its memory)
    /// and send back [default: 512 MiB].
    pub max_output_bytes: Option<u64>,
}

pub const DEFAULT_INDEX_URL: &str = "https://pypi.org/simple/";
pub const DEFAULT_NPM_REGISTRY: &str = "https://registry.npmjs.org/";
pub const DEFAULT_ALLOW: &[&str] = &[
    "pypi.org:443",
    "files.pythonhosted.org:443",
    "registry.npmjs.org:443",
];

impl BuildSettings {
    pub fn index_url(&self) -> &str {
        self.index_url.as_deref().unwrap_or(DEFAULT_INDEX_URL)
    }

    pub fn npm_registry(&self) -> &str {
        self.npm_registry.as_deref().unwrap_or(DEFAULT_NPM_REGISTRY)
    }

    /// Where builds install from, as one string for the cache key: a
    /// layer installed from one index is not reused for another.
    pub fn sources(&self) -> String {
        format!("pip {}\nnpm {}", self.index_url(), self.npm_registry())
    }

    pub fn allow(&self) -> Vec<String> {
        self.allow
            .clone()
            .unwrap_or_else(|| DEFAULT_ALLOW.iter().map(|s| s.to_string()).collect())
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs.unwrap_or(600))
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes.unwrap_or(1 << 30)
    }

    pub fn max_output_bytes(&self) -> u64 {
        self.max_output_bytes.unwrap_or(512 << 20)
    }

    /// The build's environment: where the package managers find the index.
    pub fn env(&self) -> Vec<(String, String)> {
        let url = self.index_url();
        let mut env = vec![
            ("PIP_INDEX_URL".to_string(), url.to_string()),
            (
                "NPM_CONFIG_REGISTRY".to_string(),
                self.npm_registry().to_string(),
            ),
        ];
        // pip ignores a plain-http index unless told to trust its host.
        if let Some(rest) = url.strip_prefix("http://") {
            let host = rest.split(['/', ':']).next().unwrap_or_default();
            env.push(("PIP_TRUSTED_HOST".to_string(), host.to_string()));
        }
        env
    }
}

/// The dependency files a normalized package (tar.gz) has at its root,
/// with their bytes, in [`DEPENDENCY_FILES`] order. Blocking.
pub fn dependency_files(package: &[u8]) -> std::io::Result<Vec<(&'static str, Vec<u8>)>> {
    let mut found = Vec::new();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(package));
    for entry in archive.entries()? {
        let entry = entry?;
        let path = entry.path()?.to_string_lossy().into_owned();
        let name = path.trim_start_matches("./");
        if let Some(known) = DEPENDENCY_FILES.iter().find(|f| **f == name) {
            if entry.header().entry_type().is_file() {
                let mut bytes = Vec::new();
                entry.take(MAX_DEPENDENCY_FILE).read_to_end(&mut bytes)?;
                found.push((*known, bytes));
            }
        }
    }
    found.sort_by_key(|(name, _)| DEPENDENCY_FILES.iter().position(|f| f == name));
    Ok(found)
}

/// The dependency cache's key: 64 hex digits (also the layer's tag).
pub fn cache_key(
    namespace: &str,
    image_digest: &str,
    build_command: &str,
    index_url: &str,
    files: &[(&str, Vec<u8>)],
) -> String {
    let mut hash = Sha256::new();
    // Length-prefixed: no two inputs run together into the same bytes.
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    field(b"faas-deps-v1");
    field(namespace.as_bytes());
    field(image_digest.as_bytes());
    field(build_command.as_bytes());
    field(index_url.as_bytes());
    for (name, bytes) in files {
        field(name.as_bytes());
        field(bytes);
    }
    hex::encode(hash.finalize())
}

/// The last `max_lines` lines of a build's log, at most `max_bytes`, for
/// an error message.
pub fn log_tail(log: &[u8], max_lines: usize, max_bytes: usize) -> String {
    let text = String::from_utf8_lossy(log);
    let lines: Vec<&str> = text.lines().collect();
    let mut tail = lines[lines.len().saturating_sub(max_lines)..].join("\n");
    if tail.len() > max_bytes {
        let mut cut = tail.len() - max_bytes;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail = format!("...{}", &tail[cut..]);
    }
    tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(files: &[(&str, &[u8])]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        for (name, data) in files {
            let mut header = tar::Header::new_gnu();
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            tar.append_data(&mut header, name, *data).unwrap();
        }
        tar.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn dependency_files_are_found_at_the_root_only() {
        let found = dependency_files(&package(&[
            ("package.json", b"{}"),
            ("handler.py", b"x"),
            ("sub/requirements.txt", b"no"),
            ("requirements.txt", b"six==1.16.0\n"),
        ]))
        .unwrap();
        assert_eq!(
            found,
            vec![
                ("requirements.txt", b"six==1.16.0\n".to_vec()),
                ("package.json", b"{}".to_vec())
            ]
        );
        assert!(dependency_files(&package(&[("handler.py", b"x")]))
            .unwrap()
            .is_empty());
    }

    #[test]
    fn the_key_changes_with_each_input() {
        let files = vec![("requirements.txt", b"six\n".to_vec())];
        let key = |ns: &str, image: &str, index: &str, files: &[(&str, Vec<u8>)]| {
            cache_key(ns, image, "build", index, files)
        };
        let base = key("a", "sha256:1", "i", &files);
        assert_eq!(base.len(), 64);
        assert_eq!(base, key("a", "sha256:1", "i", &files));
        // Another tenant never shares a layer.
        assert_ne!(base, key("b", "sha256:1", "i", &files));
        assert_ne!(base, key("a", "sha256:2", "i", &files));
        assert_ne!(base, key("a", "sha256:1", "j", &files));
        assert_ne!(
            base,
            key(
                "a",
                "sha256:1",
                "i",
                &[("requirements.txt", b"six\n\n".to_vec())]
            )
        );
        // Fields never run together.
        assert_ne!(key("ab", "c", "i", &files), key("a", "bc", "i", &files));
    }

    #[test]
    fn a_plain_http_index_is_trusted_by_host() {
        let settings = BuildSettings {
            index_url: Some("http://198.51.100.1:8080/simple/".into()),
            ..Default::default()
        };
        let env = settings.env();
        assert!(env.contains(&("PIP_TRUSTED_HOST".into(), "198.51.100.1".into())));
        assert!(!BuildSettings::default()
            .env()
            .iter()
            .any(|(k, _)| k == "PIP_TRUSTED_HOST"));
    }

    #[test]
    fn the_log_tail_is_bounded() {
        let log = b"one\ntwo\nthree\nfour\n";
        assert_eq!(log_tail(log, 2, 100), "three\nfour");
        assert_eq!(log_tail(log, 10, 6), "...e\nfour");
    }
}
