//! The platform's OCI registry: runtime images are stored as images, function
//! packages as OCI artifacts with their own media types. Agents fetch both by
//! digest.

use std::collections::HashMap;
use std::io::Read;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use faas_pki::registry::{Access, TokenSigner};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Reference, RegistryOperation};
use sha2::{Digest, Sha256};

/// Media types of a function package artifact.
pub const PACKAGE_ARTIFACT_TYPE: &str = "application/vnd.faas.function.v1";
pub const PACKAGE_CONFIG_MEDIA_TYPE: &str = "application/vnd.faas.function.config.v1+json";
pub const PACKAGE_LAYER_MEDIA_TYPE: &str = "application/vnd.faas.function.package.v1.tar+gzip";

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry: {0}")]
    Registry(#[from] oci_client::errors::OciDistributionError),
    #[error("invalid image reference {0:?}: {1}")]
    BadReference(String, String),
    #[error("invalid image archive: {0}")]
    BadArchive(String),
    #[error("the registry's CA: {0}")]
    BadCa(String),
    #[error("minting a registry token: {0}")]
    Token(#[from] faas_pki::PkiError),
}

/// Removing package versions failed: the registry's HTTP API (the
/// operations oci-client lacks: listing and deleting manifests) answered
/// something unexpected. Only logged: the function's record is what counts.
#[derive(Debug, thiserror::Error)]
#[error("registry {op}: {message}")]
pub struct CleanupError {
    op: &'static str,
    message: String,
}

#[derive(Clone)]
pub struct Registry {
    /// For an anonymous registry.
    client: oci_client::Client,
    protocol: ClientProtocol,
    /// Checked against the registry's certificate, beside the system's
    /// roots.
    roots: Vec<oci_client::client::Certificate>,
    /// For what oci-client does not offer (deleting manifests).
    http: reqwest::Client,
    /// `http://host:port` or `https://host:port`.
    base: String,
    host: String,
    /// Signs the tokens the registry asks for; None for a registry that
    /// takes anonymous requests.
    signer: Option<Arc<TokenSigner>>,
}

/// How long the control plane's own tokens live: one deploy's pushes.
const OWN_TOKEN_TTL: Duration = Duration::from_secs(600);

/// A stored image, pinned by digest.
pub struct PushedImage {
    /// `<host>/<repository>@<digest>`
    pub reference: String,
    pub digest: String,
}

/// The registry repository of a layer's versions (relative to the
/// registry). The namespace is always named: a layer is never shared across
/// namespaces.
pub fn layer_repository(namespace: &str, name: &str) -> String {
    format!("faas/layers/{namespace}/{name}")
}

pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

impl Registry {
    /// `host` is `host:port`, spoken to over plain HTTP if `insecure`,
    /// else over HTTPS trusting `ca_pem` (the registry's own CA) beside the
    /// system's roots.
    pub fn new(
        host: &str,
        insecure: bool,
        signer: Option<Arc<TokenSigner>>,
        ca_pem: Option<&str>,
    ) -> Result<Registry, RegistryError> {
        let protocol = if insecure {
            ClientProtocol::HttpsExcept(vec![host.to_string()])
        } else {
            ClientProtocol::Https
        };
        let mut http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
        let mut roots = Vec::new();
        if let Some(pem) = ca_pem {
            let cert = reqwest::Certificate::from_pem(pem.as_bytes())
                .map_err(|e| RegistryError::BadCa(e.to_string()))?;
            http = http.tls_certs_merge([cert]);
            roots.push(oci_client::client::Certificate {
                encoding: oci_client::client::CertificateEncoding::Pem,
                data: pem.as_bytes().to_vec(),
            });
        }
        Ok(Registry {
            client: oci_client::Client::new(client_config(protocol.clone(), &roots)),
            roots,
            protocol,
            http: http
                .build()
                .map_err(|e| RegistryError::BadCa(e.to_string()))?,
            base: format!("{}://{host}", if insecure { "http" } else { "https" }),
            host: host.to_string(),
            signer,
        })
    }

    /// A token for everything on `repository`, if the registry wants one.
    fn token(&self, repository: &str) -> Result<Option<String>, faas_pki::PkiError> {
        self.signer
            .as_ref()
            .map(|s| {
                s.mint(
                    "faas-controlplane",
                    &[Access::all(repository)],
                    OWN_TOKEN_TTL,
                )
            })
            .transpose()
    }

    /// The oci-client for `reference`'s repository: with a fresh token
    /// when the registry wants one. A client per operation, because
    /// oci-client keeps the first credentials it is given per registry,
    /// and tokens expire.
    async fn client_for(&self, reference: &Reference) -> Result<oci_client::Client, RegistryError> {
        let Some(token) = self.token(reference.repository())? else {
            return Ok(self.client.clone());
        };
        let client = oci_client::Client::new(client_config(self.protocol.clone(), &self.roots));
        let auth = RegistryAuth::Bearer(token);
        for op in [RegistryOperation::Pull, RegistryOperation::Push] {
            client.auth(reference, &auth, op).await?;
        }
        Ok(client)
    }

    /// A raw request with the repository's token, if any.
    fn with_token(
        &self,
        request: reqwest::RequestBuilder,
        repository: &str,
        op: &'static str,
    ) -> Result<reqwest::RequestBuilder, CleanupError> {
        match self.token(repository) {
            Ok(Some(token)) => Ok(request.bearer_auth(token)),
            Ok(None) => Ok(request),
            Err(e) => Err(CleanupError {
                op,
                message: e.to_string(),
            }),
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    fn reference(&self, repository: &str, tag: &str) -> Result<Reference, RegistryError> {
        let s = format!("{}/{repository}:{tag}", self.host);
        s.parse()
            .map_err(|e: oci_client::ParseError| RegistryError::BadReference(s, e.to_string()))
    }

    async fn push_blob_if_missing(
        client: &oci_client::Client,
        reference: &Reference,
        data: Bytes,
        digest: &str,
    ) -> Result<(), RegistryError> {
        if !client.blob_exists(reference, digest).await.unwrap_or(false) {
            client.push_blob(reference, data, digest).await?;
        }
        Ok(())
    }

    /// Stores a normalized function package as an OCI artifact tagged
    /// `v<version>` in `faas/functions/<name>`. Returns the repository and
    /// the digest of the package blob.
    pub async fn push_package(
        &self,
        function: &str,
        version: u64,
        package: Bytes,
    ) -> Result<(String, String), RegistryError> {
        let repository = format!("faas/functions/{function}");
        let reference = self.reference(&repository, &format!("v{version}"))?;
        let digest = sha256_digest(&package);
        let size = package.len() as u64;
        let client = self.client_for(&reference).await?;
        Self::push_blob_if_missing(&client, &reference, package, &digest).await?;
        self.tag_package(function, version, &digest, size).await?;
        Ok((repository, digest))
    }

    /// Gives version `version` of a function its manifest for the package
    /// blob `digest`, already in the function's repository (a new version
    /// with the same package: a configuration-only update).
    pub async fn tag_package(
        &self,
        function: &str,
        version: u64,
        digest: &str,
        size: u64,
    ) -> Result<(), RegistryError> {
        let repository = format!("faas/functions/{function}");
        // One manifest per version, even for the same package: the
        // registry deletes manifests (with every tag on them), so a
        // manifest shared by two versions could not go with the older.
        let annotations = serde_json::json!({
            "dev.faas.function": function,
            "dev.faas.function.version": version.to_string(),
        });
        self.tag_artifact(
            &repository,
            &format!("v{version}"),
            digest,
            size,
            annotations,
        )
        .await
    }

    async fn tag_artifact(
        &self,
        repository: &str,
        tag: &str,
        digest: &str,
        size: u64,
        annotations: serde_json::Value,
    ) -> Result<(), RegistryError> {
        let reference = self.reference(repository, tag)?;
        let client = self.client_for(&reference).await?;
        let config = Bytes::from_static(b"{}");
        let config_digest = sha256_digest(&config);
        Self::push_blob_if_missing(&client, &reference, config.clone(), &config_digest).await?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": PACKAGE_ARTIFACT_TYPE,
            "config": {"mediaType": PACKAGE_CONFIG_MEDIA_TYPE, "digest": config_digest, "size": config.len()},
            "layers": [{"mediaType": PACKAGE_LAYER_MEDIA_TYPE, "digest": digest, "size": size}],
            "annotations": annotations,
        });
        client
            .push_manifest_raw(
                &reference,
                serde_json::to_vec(&manifest).expect("json"),
                OCI_MANIFEST.parse().expect("media type"),
            )
            .await?;
        Ok(())
    }

    /// Stores a package blob in the function's repository without a
    /// manifest (the upload a deploy-time build starts from). Returns the
    /// repository and the blob's digest.
    pub async fn push_package_blob(
        &self,
        function: &str,
        package: Bytes,
    ) -> Result<(String, String), RegistryError> {
        let repository = format!("faas/functions/{function}");
        let reference = self.reference(&repository, "source")?;
        let digest = sha256_digest(&package);
        let client = self.client_for(&reference).await?;
        Self::push_blob_if_missing(&client, &reference, package, &digest).await?;
        Ok((repository, digest))
    }

    /// Stores a layer version's archive, tagged `v<version>` in
    /// `faas/layers/<namespace>/<name>`. Returns the repository and the
    /// digest of the blob.
    pub async fn push_layer(
        &self,
        namespace: &str,
        name: &str,
        version: u64,
        archive: Bytes,
    ) -> Result<(String, String), RegistryError> {
        let repository = layer_repository(namespace, name);
        let reference = self.reference(&repository, &format!("v{version}"))?;
        let digest = sha256_digest(&archive);
        let size = archive.len() as u64;
        let client = self.client_for(&reference).await?;
        Self::push_blob_if_missing(&client, &reference, archive, &digest).await?;
        self.tag_layer(namespace, name, version, &digest, size)
            .await?;
        Ok((repository, digest))
    }

    /// Points a layer's tag `v<version>` at the blob `digest`, already in
    /// its repository.
    pub async fn tag_layer(
        &self,
        namespace: &str,
        name: &str,
        version: u64,
        digest: &str,
        size: u64,
    ) -> Result<(), RegistryError> {
        let annotations = serde_json::json!({
            "dev.faas.layer": format!("{namespace}/{name}"),
            "dev.faas.layer.version": version.to_string(),
        });
        self.tag_artifact(
            &layer_repository(namespace, name),
            &format!("v{version}"),
            digest,
            size,
            annotations,
        )
        .await
    }

    /// Stores a namespace's dependency layer under its build key (64 hex
    /// digits) in `faas/deps/<namespace>`. Returns the repository and the
    /// layer's digest.
    pub async fn push_deps(
        &self,
        namespace: &str,
        key: &str,
        layer: Bytes,
    ) -> Result<(String, String), RegistryError> {
        let repository = format!("faas/deps/{namespace}");
        let reference = self.reference(&repository, key)?;
        let digest = sha256_digest(&layer);
        let size = layer.len() as u64;
        let client = self.client_for(&reference).await?;
        Self::push_blob_if_missing(&client, &reference, layer, &digest).await?;
        let annotations = serde_json::json!({ "dev.faas.deps.key": key });
        self.tag_artifact(&repository, key, &digest, size, annotations)
            .await?;
        Ok((repository, digest))
    }

    /// The dependency layer stored under `key`, if any: its repository and
    /// digest. A registry that cannot answer counts as a miss (the build
    /// installs them again).
    pub async fn find_deps(&self, namespace: &str, key: &str) -> Option<(String, String)> {
        let repository = format!("faas/deps/{namespace}");
        let reference = self.reference(&repository, key).ok()?;
        let client = self.client_for(&reference).await.ok()?;
        let (manifest, _) = client
            .pull_manifest_raw(&reference, &RegistryAuth::Anonymous, &[OCI_MANIFEST])
            .await
            .ok()?;
        let manifest: serde_json::Value = serde_json::from_slice(&manifest).ok()?;
        let digest = manifest["layers"][0]["digest"].as_str()?;
        digest
            .strip_prefix("sha256:")
            .filter(|hex| hex.len() == 64)?;
        Some((repository, digest.to_string()))
    }

    /// Deletes the manifests of a function's package versions: all of them
    /// (`only` None, the function was removed) or those of the versions
    /// `only` names (versions no longer kept). A manifest that a kept tag
    /// also points to (an unchanged package deployed again has the same
    /// manifest) is kept: the registry deletes manifests by digest, with
    /// every tag on them. Returns how many manifests were deleted.
    ///
    /// Blobs are freed only by the registry's offline garbage collection
    /// (`registry garbage-collect`, see docs/operations.md).
    pub async fn remove_package_versions(
        &self,
        function: &str,
        only: Option<&std::collections::BTreeSet<u64>>,
    ) -> Result<usize, CleanupError> {
        self.remove_versions(&format!("faas/functions/{function}"), only)
            .await
    }

    /// Deletes the manifests of a layer's versions, as
    /// [`Registry::remove_package_versions`] does a function's.
    pub async fn remove_layer_versions(
        &self,
        namespace: &str,
        name: &str,
        only: Option<&std::collections::BTreeSet<u64>>,
    ) -> Result<usize, CleanupError> {
        self.remove_versions(&layer_repository(namespace, name), only)
            .await
    }

    async fn remove_versions(
        &self,
        repository: &str,
        only: Option<&std::collections::BTreeSet<u64>>,
    ) -> Result<usize, CleanupError> {
        let tags = self.tags(repository).await?;
        let (doomed, kept) = split_versions(&tags, only);
        let mut keep = std::collections::HashSet::new();
        for tag in &kept {
            if let Some(digest) = self.manifest_digest(repository, tag).await? {
                keep.insert(digest);
            }
        }
        let mut deleted = std::collections::HashSet::new();
        for tag in &doomed {
            let Some(digest) = self.manifest_digest(repository, tag).await? else {
                continue;
            };
            if keep.contains(&digest) || deleted.contains(&digest) {
                continue;
            }
            let url = format!("{}/v2/{repository}/manifests/{digest}", self.base);
            let response = self
                .with_token(self.http.delete(&url), repository, "delete")?
                .send()
                .await
                .map_err(|e| http("delete", e))?;
            match response.status() {
                s if s.is_success() => {}
                // Gone already (a concurrent removal).
                reqwest::StatusCode::NOT_FOUND => {}
                s => {
                    return Err(CleanupError {
                        op: "delete",
                        message: format!(
                            "DELETE {url}: {s} (is storage.delete.enabled set in the registry's configuration?)"
                        ),
                    })
                }
            }
            deleted.insert(digest);
        }
        Ok(deleted.len())
    }

    /// A repository's tags; none if the repository does not exist.
    async fn tags(&self, repository: &str) -> Result<Vec<String>, CleanupError> {
        #[derive(serde::Deserialize)]
        struct Tags {
            #[serde(default)]
            tags: Option<Vec<String>>,
        }
        let url = format!("{}/v2/{repository}/tags/list", self.base);
        let response = self
            .with_token(self.http.get(&url), repository, "list tags")?
            .send()
            .await
            .map_err(|e| http("list tags", e))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        let response = response
            .error_for_status()
            .map_err(|e| http("list tags", e))?;
        let tags: Tags = response.json().await.map_err(|e| http("list tags", e))?;
        Ok(tags.tags.unwrap_or_default())
    }

    /// The digest of the manifest a tag points to, if the tag exists.
    async fn manifest_digest(
        &self,
        repository: &str,
        tag: &str,
    ) -> Result<Option<String>, CleanupError> {
        let url = format!("{}/v2/{repository}/manifests/{tag}", self.base);
        let response = self
            .with_token(self.http.head(&url), repository, "head manifest")?
            .header(
                reqwest::header::ACCEPT,
                format!("{OCI_MANIFEST}, {DOCKER_MANIFEST}"),
            )
            .send()
            .await
            .map_err(|e| http("head manifest", e))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let response = response
            .error_for_status()
            .map_err(|e| http("head manifest", e))?;
        let digest = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| CleanupError {
                op: "head manifest",
                message: format!("{url}: no Docker-Content-Digest header"),
            })?;
        Ok(Some(digest.to_string()))
    }

    /// Looks up an image already in the platform registry (`repo:tag` or
    /// `repo@digest`, relative to the registry) and pins it by digest.
    pub async fn resolve(&self, image_ref: &str) -> Result<PushedImage, RegistryError> {
        let full = if image_ref.starts_with(&format!("{}/", self.host)) {
            image_ref.to_string()
        } else {
            format!("{}/{image_ref}", self.host)
        };
        let reference: Reference = full.parse().map_err(|e: oci_client::ParseError| {
            RegistryError::BadReference(full.clone(), e.to_string())
        })?;
        let digest = self
            .client_for(&reference)
            .await?
            .fetch_manifest_digest(&reference, &RegistryAuth::Anonymous)
            .await?;
        Ok(PushedImage {
            reference: format!("{}/{}@{digest}", self.host, reference.repository()),
            digest,
        })
    }

    /// Imports an image archive (an OCI image layout or a `docker save` tar)
    /// into `faas/runtimes/<name>`.
    pub async fn push_image_archive(
        &self,
        runtime: &str,
        archive: &[u8],
    ) -> Result<PushedImage, RegistryError> {
        let files = read_archive(archive)?;
        let image = if files.contains_key("index.json") {
            oci_layout_image(&files)?
        } else if files.contains_key("manifest.json") {
            docker_save_image(&files)?
        } else {
            return Err(RegistryError::BadArchive(
                "neither an OCI image layout (index.json) nor a docker save archive (manifest.json)".into(),
            ));
        };
        let repository = format!("faas/runtimes/{runtime}");
        let reference = self.reference(&repository, "latest")?;
        let client = self.client_for(&reference).await?;
        for (digest, data) in &image.blobs {
            Self::push_blob_if_missing(&client, &reference, data.clone(), digest).await?;
        }
        let digest = sha256_digest(&image.manifest);
        client
            .push_manifest_raw(
                &reference,
                image.manifest.clone(),
                image.manifest_media_type.parse().map_err(|_| {
                    RegistryError::BadArchive(format!(
                        "bad media type {}",
                        image.manifest_media_type
                    ))
                })?,
            )
            .await?;
        Ok(PushedImage {
            reference: format!("{}/{repository}@{digest}", self.host),
            digest,
        })
    }
}

fn client_config(
    protocol: ClientProtocol,
    roots: &[oci_client::client::Certificate],
) -> ClientConfig {
    ClientConfig {
        protocol,
        use_monolithic_push: true,
        extra_root_certificates: roots.to_vec(),
        ..Default::default()
    }
}

fn http(op: &'static str, e: reqwest::Error) -> CleanupError {
    CleanupError {
        op,
        message: e.to_string(),
    }
}

/// Splits a function repository's tags into those to delete and those to
/// keep. Only `v<N>` tags are the platform's; anything else is kept.
fn split_versions(
    tags: &[String],
    only: Option<&std::collections::BTreeSet<u64>>,
) -> (Vec<String>, Vec<String>) {
    tags.iter().cloned().partition(|tag| {
        let version = tag.strip_prefix('v').and_then(|v| v.parse::<u64>().ok());
        match (version, only) {
            (Some(_), None) => true,
            (Some(v), Some(only)) => only.contains(&v),
            (None, _) => false,
        }
    })
}

struct ArchiveImage {
    manifest: Bytes,
    manifest_media_type: String,
    /// digest → content, config and layers.
    blobs: Vec<(String, Bytes)>,
}

fn read_archive(archive: &[u8]) -> Result<HashMap<String, Bytes>, RegistryError> {
    let mut files = HashMap::new();
    let mut tar = tar::Archive::new(archive);
    let entries = tar
        .entries()
        .map_err(|e| RegistryError::BadArchive(format!("not a tar: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| RegistryError::BadArchive(format!("tar: {e}")))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| RegistryError::BadArchive(e.to_string()))?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let mut data = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut data)
            .map_err(|e| RegistryError::BadArchive(format!("{path}: {e}")))?;
        files.insert(path, Bytes::from(data));
    }
    if files.is_empty() {
        return Err(RegistryError::BadArchive(
            "empty or not a tar archive".into(),
        ));
    }
    Ok(files)
}

fn blob<'a>(files: &'a HashMap<String, Bytes>, digest: &str) -> Result<&'a Bytes, RegistryError> {
    let (algo, hex) = digest
        .split_once(':')
        .ok_or_else(|| RegistryError::BadArchive(format!("bad digest {digest}")))?;
    let data = files.get(&format!("blobs/{algo}/{hex}")).ok_or_else(|| {
        RegistryError::BadArchive(format!("blob {digest} missing from the layout"))
    })?;
    if algo == "sha256" && sha256_digest(data) != digest {
        return Err(RegistryError::BadArchive(format!(
            "blob {digest} does not match its digest"
        )));
    }
    Ok(data)
}

fn json(data: &[u8], what: &str) -> Result<serde_json::Value, RegistryError> {
    serde_json::from_slice(data).map_err(|e| RegistryError::BadArchive(format!("{what}: {e}")))
}

fn oci_layout_image(files: &HashMap<String, Bytes>) -> Result<ArchiveImage, RegistryError> {
    let mut index = json(&files["index.json"], "index.json")?;
    // Follow nested indexes down to one manifest, preferring linux/amd64.
    loop {
        let manifests = index["manifests"]
            .as_array()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| RegistryError::BadArchive("index has no manifests".into()))?;
        let chosen = manifests
            .iter()
            .find(|m| m["platform"]["architecture"] == "amd64" && m["platform"]["os"] == "linux")
            .unwrap_or(&manifests[0])
            .clone();
        let digest = chosen["digest"]
            .as_str()
            .ok_or_else(|| RegistryError::BadArchive("manifest entry without digest".into()))?;
        let data = blob(files, digest)?.clone();
        let media_type = chosen["mediaType"]
            .as_str()
            .unwrap_or(OCI_MANIFEST)
            .to_string();
        if media_type == OCI_INDEX || media_type == DOCKER_LIST {
            index = json(&data, "nested index")?;
            continue;
        }
        let manifest = json(&data, "manifest")?;
        let mut blobs = Vec::new();
        let config_digest = manifest["config"]["digest"]
            .as_str()
            .ok_or_else(|| RegistryError::BadArchive("manifest without config".into()))?;
        blobs.push((
            config_digest.to_string(),
            blob(files, config_digest)?.clone(),
        ));
        for layer in manifest["layers"].as_array().into_iter().flatten() {
            let d = layer["digest"]
                .as_str()
                .ok_or_else(|| RegistryError::BadArchive("layer without digest".into()))?;
            blobs.push((d.to_string(), blob(files, d)?.clone()));
        }
        let media_type = manifest["mediaType"]
            .as_str()
            .unwrap_or(&media_type)
            .to_string();
        return Ok(ArchiveImage {
            manifest: data,
            manifest_media_type: if media_type == DOCKER_MANIFEST {
                DOCKER_MANIFEST.into()
            } else {
                media_type
            },
            blobs,
        });
    }
}

fn docker_save_image(files: &HashMap<String, Bytes>) -> Result<ArchiveImage, RegistryError> {
    let list = json(&files["manifest.json"], "manifest.json")?;
    let entry = list
        .as_array()
        .and_then(|a| a.first())
        .ok_or_else(|| RegistryError::BadArchive("manifest.json lists no image".into()))?;
    let file = |key: &str| -> Result<&Bytes, RegistryError> {
        files
            .get(key)
            .ok_or_else(|| RegistryError::BadArchive(format!("{key} missing from the archive")))
    };
    let config_path = entry["Config"]
        .as_str()
        .ok_or_else(|| RegistryError::BadArchive("manifest.json entry without Config".into()))?;
    let config = file(config_path)?.clone();
    let config_digest = sha256_digest(&config);
    let mut blobs = vec![(config_digest.clone(), config.clone())];
    let mut layers = Vec::new();
    for layer in entry["Layers"].as_array().into_iter().flatten() {
        let path = layer
            .as_str()
            .ok_or_else(|| RegistryError::BadArchive("bad Layers entry".into()))?;
        let data = file(path)?.clone();
        let digest = sha256_digest(&data);
        // docker save layers are uncompressed tars unless gzip magic says otherwise.
        let media_type = if data.starts_with(&[0x1f, 0x8b]) {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        } else {
            "application/vnd.oci.image.layer.v1.tar"
        };
        layers.push(
            serde_json::json!({"mediaType": media_type, "digest": digest, "size": data.len()}),
        );
        blobs.push((digest, data));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config.len()},
        "layers": layers,
    });
    Ok(ArchiveImage {
        manifest: Bytes::from(serde_json::to_vec(&manifest).expect("json")),
        manifest_media_type: OCI_MANIFEST.into(),
        blobs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_to_remove() {
        let tags: Vec<String> = ["v1", "v2", "v10", "latest", "vx"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (doomed, kept) = split_versions(&tags, Some(&[1, 10].into()));
        assert_eq!(doomed, vec!["v1", "v10"]);
        assert_eq!(kept, vec!["v2", "latest", "vx"]);
        let (doomed, kept) = split_versions(&tags, None);
        assert_eq!(doomed, vec!["v1", "v2", "v10"]);
        assert_eq!(kept, vec!["latest", "vx"]);
    }
}
