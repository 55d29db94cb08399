//! `ensure_image`: a client-side pull (containerd 1.6 has no Transfer service)
//! that writes blobs into containerd's content store, unpacks the layers into
//! the snapshotter and records the image, all under one lease.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::images_client::ImagesClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, PrepareSnapshotRequest, RemoveSnapshotRequest, StatSnapshotRequest,
};
use containerd_client::services::v1::{
    AddResourceRequest, ApplyRequest, CreateImageRequest, GetImageRequest, Image, Info,
    InfoRequest, ReadContentRequest, Resource, UpdateImageRequest, UpdateRequest, WriteAction,
    WriteContentRequest, WriteContentResponse,
};
use containerd_client::types::Descriptor;
use futures::{StreamExt, TryStreamExt};
use oci_client::secrets::RegistryAuth;
use oci_client::Reference;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::error::NotFoundOk;
use crate::{Driver, DriverError, ImageInfo};

const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Layer media types containerd's Diff.Apply can unpack (it decompresses
/// server-side according to the media type).
const LAYER_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
];

/// A pull that does not finish within this is abandoned by containerd's GC.
const PULL_LEASE_EXPIRY: Duration = Duration::from_secs(3600);
/// Content.Write messages stay well under gRPC's 16 MiB message limit.
const WRITE_CHUNK: usize = 1 << 20;
/// Attempts when another writer holds the same ingest ref (UNAVAILABLE).
const LOCKED_REF_RETRIES: u32 = 50;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Desc {
    #[serde(default)]
    media_type: String,
    digest: String,
    size: i64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Deserialize)]
struct Platform {
    architecture: String,
    os: String,
}

/// An image manifest or an index: which one is decided by the fields present.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestOrIndex {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Desc>,
    #[serde(default)]
    layers: Vec<Desc>,
    #[serde(default)]
    manifests: Option<Vec<Desc>>,
}

#[derive(Debug, Deserialize)]
struct ImageConfigFile {
    #[serde(default)]
    config: Option<ImageRunConfig>,
    rootfs: RootFs,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ImageRunConfig {
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// A resolved, platform-specific image: what gets written and unpacked.
struct Resolved {
    /// The index the reference points at, if it points at one, and the
    /// position of the chosen manifest in it.
    index: Option<(Blob, usize)>,
    manifest: Blob,
    config: Blob,
    config_file: ImageConfigFile,
    layers: Vec<Desc>,
}

struct Blob {
    media_type: String,
    digest: String,
    bytes: Bytes,
}

impl Blob {
    fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: self.media_type.clone(),
            digest: self.digest.clone(),
            size: self.bytes.len() as i64,
            annotations: HashMap::new(),
        }
    }
}

/// Where the bytes of a blob come from.
enum Source<'a> {
    Memory(&'a Bytes),
    Registry(&'a Reference),
}

fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// `chain(n) = sha256(chain(n-1) + " " + diff_id(n))`, `chain(0) = diff_id(0)`.
pub(crate) fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => sha256_digest(format!("{parent} {diff_id}").as_bytes()),
        };
        chain.push(next);
    }
    chain
}

fn host_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    }
}

fn is_index(media_type: &str, parsed: &ManifestOrIndex) -> bool {
    media_type == MEDIA_OCI_INDEX || media_type == MEDIA_DOCKER_LIST || parsed.manifests.is_some()
}

fn image_info(reference: &str, resolved_manifest: &str, config: &ImageConfigFile) -> ImageInfo {
    let run = config.config.as_ref();
    ImageInfo {
        reference: reference.to_string(),
        manifest_digest: resolved_manifest.to_string(),
        chain_id: chain_ids(&config.rootfs.diff_ids).pop().unwrap_or_default(),
        env: run.and_then(|c| c.env.clone()).unwrap_or_default(),
        working_dir: run
            .and_then(|c| c.working_dir.clone())
            .filter(|w| !w.is_empty()),
    }
}

impl Driver {
    /// Makes sure `reference` is in containerd's content store and unpacked
    /// into the snapshotter, pulling it if needed.
    ///
    /// Cached: once an image is unpacked, a call costs one `Snapshots.Stat`
    /// (or, after a restart of the agent, `Images.Get` plus reading the
    /// manifest and config from the content store); the registry is not
    /// contacted again, so a tag is resolved once. Pin references by digest.
    /// Concurrent calls for the same reference wait for a single pull.
    pub async fn ensure_image(&self, reference: &str) -> Result<ImageInfo, DriverError> {
        self.ensure_image_with(reference, None).await
    }

    /// [`Driver::ensure_image`] from a registry that wants a bearer token
    /// (`registry_token`, used only if the image must be pulled).
    pub async fn ensure_image_with(
        &self,
        reference: &str,
        registry_token: Option<&str>,
    ) -> Result<ImageInfo, DriverError> {
        let parsed: Reference = reference
            .parse()
            .map_err(|e| DriverError::invalid("image reference", format!("{reference:?}: {e}")))?;
        let name = parsed.whole();

        let lock = {
            let mut locks = self
                .inner
                .image_locks
                .lock()
                .expect("image lock map poisoned");
            Arc::clone(locks.entry(name.clone()).or_default())
        };
        let _single_flight = lock.lock().await;

        let cached = self
            .inner
            .images
            .lock()
            .expect("image cache poisoned")
            .get(&name)
            .cloned();
        if let Some(info) = cached {
            if self.snapshot_exists(&info.chain_id).await? {
                return Ok(info);
            }
            tracing::warn!(image = %name, chain_id = %info.chain_id, "cached image lost its snapshot; pulling again");
        }

        let info = match self.image_from_store(&name).await? {
            Some(info) => info,
            None => {
                if let Some(token) = registry_token {
                    // Replaces the token oci-client holds for this
                    // repository with the one given for this pull.
                    let auth = RegistryAuth::Bearer(token.to_string());
                    self.inner
                        .registry
                        .auth(&parsed, &auth, oci_client::RegistryOperation::Pull)
                        .await
                        .map_err(|source| DriverError::Registry {
                            op: "authorizing",
                            reference: name.clone(),
                            source,
                        })?;
                }
                self.pull_and_unpack(&parsed, &name).await?
            }
        };
        self.inner
            .images
            .lock()
            .expect("image cache poisoned")
            .insert(name, info.clone());
        Ok(info)
    }

    async fn snapshot_exists(&self, key: &str) -> Result<bool, DriverError> {
        let found = SnapshotsClient::new(self.channel())
            .stat(self.request(StatSnapshotRequest {
                snapshotter: self.inner.cfg.snapshotter.clone(),
                key: key.to_string(),
            }))
            .await
            .map_err(|s| DriverError::rpc("Snapshots.Stat", key, s))
            .not_found_ok()?;
        Ok(found.is_some())
    }

    /// An image recorded by an earlier run: rebuilt from containerd's content
    /// store, without the registry. `None` if anything is missing.
    async fn image_from_store(&self, name: &str) -> Result<Option<ImageInfo>, DriverError> {
        let image = ImagesClient::new(self.channel())
            .get(self.request(GetImageRequest {
                name: name.to_string(),
            }))
            .await
            .map_err(|s| DriverError::rpc("Images.Get", name, s))
            .not_found_ok()?;
        let Some(target) = image
            .and_then(|i| i.into_inner().image)
            .and_then(|i| i.target)
        else {
            return Ok(None);
        };
        let Some(top) = self.read_content(&target.digest).await.not_found_ok()? else {
            return Ok(None);
        };
        let parsed: ManifestOrIndex = serde_json::from_slice(&top)
            .map_err(|e| DriverError::image(name, format!("stored manifest: {e}")))?;
        let (manifest_digest, manifest) = if is_index(&target.media_type, &parsed) {
            let chosen = select_platform(name, parsed.manifests.as_deref().unwrap_or_default())?;
            let Some(bytes) = self.read_content(&chosen.digest).await.not_found_ok()? else {
                return Ok(None);
            };
            let manifest: ManifestOrIndex = serde_json::from_slice(&bytes)
                .map_err(|e| DriverError::image(name, format!("stored manifest: {e}")))?;
            (chosen.digest.clone(), manifest)
        } else {
            (target.digest.clone(), parsed)
        };
        let Some(config_desc) = manifest.config else {
            return Ok(None);
        };
        let Some(config) = self
            .read_content(&config_desc.digest)
            .await
            .not_found_ok()?
        else {
            return Ok(None);
        };
        let config: ImageConfigFile = serde_json::from_slice(&config)
            .map_err(|e| DriverError::image(name, format!("stored config: {e}")))?;
        let info = image_info(name, &manifest_digest, &config);
        if info.chain_id.is_empty() || !self.snapshot_exists(&info.chain_id).await? {
            return Ok(None);
        }
        tracing::debug!(image = %name, "image found in containerd's store");
        Ok(Some(info))
    }

    async fn read_content(&self, digest: &str) -> Result<Bytes, DriverError> {
        let mut stream = ContentClient::new(self.channel())
            .read(self.request(ReadContentRequest {
                digest: digest.to_string(),
                offset: 0,
                size: 0,
            }))
            .await
            .map_err(|s| DriverError::rpc("Content.Read", digest, s))?
            .into_inner();
        let mut out = BytesMut::new();
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|s| DriverError::rpc("Content.Read", digest, s))?
        {
            out.extend_from_slice(&chunk.data);
        }
        Ok(out.freeze())
    }

    async fn pull_and_unpack(
        &self,
        reference: &Reference,
        name: &str,
    ) -> Result<ImageInfo, DriverError> {
        let started = std::time::Instant::now();
        let lease = format!("faas-pull-{}", uuid::Uuid::now_v7().simple());
        self.create_lease(&lease, PULL_LEASE_EXPIRY).await?;
        let result = self.pull_under_lease(reference, name, &lease).await;
        // The image record (or nothing, on failure) now owns what was pulled.
        if let Err(e) = self.delete_lease(&lease).await {
            tracing::warn!(%lease, error = %e, "could not delete the pull lease; it expires by itself");
        }
        if let Ok(info) = &result {
            tracing::info!(image = %name, chain_id = %info.chain_id, elapsed_ms = started.elapsed().as_millis() as u64, "image pulled and unpacked");
        }
        result
    }

    async fn pull_under_lease(
        &self,
        reference: &Reference,
        name: &str,
        lease: &str,
    ) -> Result<ImageInfo, DriverError> {
        let resolved = self.resolve(reference, name).await?;
        let diff_ids = &resolved.config_file.rootfs.diff_ids;

        self.write_blob(
            lease,
            &resolved.config.descriptor(),
            HashMap::new(),
            Source::Memory(&resolved.config.bytes),
        )
        .await?;
        for (layer, diff_id) in resolved.layers.iter().zip(diff_ids) {
            let descriptor = Descriptor {
                media_type: layer.media_type.clone(),
                digest: layer.digest.clone(),
                size: layer.size,
                annotations: HashMap::new(),
            };
            let labels =
                HashMap::from([("containerd.io/uncompressed".to_string(), diff_id.clone())]);
            self.write_blob(lease, &descriptor, labels, Source::Registry(reference))
                .await?;
        }

        // Parents after children, each labelled so that containerd's GC
        // follows the references down to the blobs.
        let mut manifest_labels = HashMap::from([(
            "containerd.io/gc.ref.content.config".to_string(),
            resolved.config.digest.clone(),
        )]);
        for (i, layer) in resolved.layers.iter().enumerate() {
            manifest_labels.insert(
                format!("containerd.io/gc.ref.content.l.{i}"),
                layer.digest.clone(),
            );
        }
        self.write_blob(
            lease,
            &resolved.manifest.descriptor(),
            manifest_labels,
            Source::Memory(&resolved.manifest.bytes),
        )
        .await?;
        let target = match &resolved.index {
            Some((index, position)) => {
                let labels = HashMap::from([(
                    format!("containerd.io/gc.ref.content.m.{position}"),
                    resolved.manifest.digest.clone(),
                )]);
                self.write_blob(
                    lease,
                    &index.descriptor(),
                    labels,
                    Source::Memory(&index.bytes),
                )
                .await?;
                index.descriptor()
            }
            None => resolved.manifest.descriptor(),
        };

        let chain_id = self.unpack(name, lease, &resolved.layers, diff_ids).await?;

        // The config keeps the unpacked chain alive for as long as the image
        // record keeps the config alive.
        let snapshot_label = format!(
            "containerd.io/gc.ref.snapshot.{}",
            self.inner.cfg.snapshotter
        );
        ContentClient::new(self.channel())
            .update(self.leased(
                UpdateRequest {
                    info: Some(Info {
                        digest: resolved.config.digest.clone(),
                        labels: HashMap::from([(snapshot_label.clone(), chain_id.clone())]),
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask {
                        paths: vec![format!("labels.{snapshot_label}")],
                    }),
                },
                lease,
            )?)
            .await
            .map_err(|s| DriverError::rpc("Content.Update", &resolved.config.digest, s))?;

        self.record_image(name, target, lease).await?;
        Ok(image_info(
            name,
            &resolved.manifest.digest,
            &resolved.config_file,
        ))
    }

    /// Fetches the manifest (through the index if there is one) and config
    /// from the registry and checks that the image is something we can unpack.
    async fn resolve(&self, reference: &Reference, name: &str) -> Result<Resolved, DriverError> {
        let registry = &self.inner.registry;
        let accepted = [
            MEDIA_OCI_INDEX,
            MEDIA_OCI_MANIFEST,
            MEDIA_DOCKER_LIST,
            MEDIA_DOCKER_MANIFEST,
        ];
        let (top_bytes, top_digest) = registry
            .pull_manifest_raw(reference, &RegistryAuth::Anonymous, &accepted)
            .await
            .map_err(|source| DriverError::Registry {
                op: "pulling manifest",
                reference: name.to_string(),
                source,
            })?;
        let top_digest = verify_digest(name, &top_bytes, &top_digest)?;
        if let Some(pinned) = reference.digest() {
            if pinned != top_digest {
                return Err(DriverError::image(
                    name,
                    format!("registry served {top_digest} for a reference pinned to {pinned}"),
                ));
            }
        }
        let top: ManifestOrIndex = serde_json::from_slice(&top_bytes)
            .map_err(|e| DriverError::image(name, format!("manifest: {e}")))?;
        let top_media = top.media_type.clone().unwrap_or_default();

        let (index, manifest_blob, manifest) = if is_index(&top_media, &top) {
            let manifests = top.manifests.as_deref().unwrap_or_default();
            let chosen = select_platform(name, manifests)?;
            let position = manifests
                .iter()
                .position(|m| m.digest == chosen.digest)
                .unwrap_or(0);
            let child = reference.clone_with_digest(chosen.digest.clone());
            let (bytes, digest) = registry
                .pull_manifest_raw(&child, &RegistryAuth::Anonymous, &accepted)
                .await
                .map_err(|source| DriverError::Registry {
                    op: "pulling platform manifest",
                    reference: child.whole(),
                    source,
                })?;
            let digest = verify_digest(name, &bytes, &digest)?;
            if digest != chosen.digest {
                return Err(DriverError::image(
                    name,
                    format!("index lists {} but registry served {digest}", chosen.digest),
                ));
            }
            let manifest: ManifestOrIndex = serde_json::from_slice(&bytes)
                .map_err(|e| DriverError::image(name, format!("platform manifest: {e}")))?;
            let media_type = manifest
                .media_type
                .clone()
                .unwrap_or_else(|| chosen.media_type.clone());
            let index_media = if top_media.is_empty() {
                MEDIA_OCI_INDEX.to_string()
            } else {
                top_media
            };
            (
                Some((
                    Blob {
                        media_type: index_media,
                        digest: top_digest,
                        bytes: top_bytes,
                    },
                    position,
                )),
                Blob {
                    media_type,
                    digest,
                    bytes,
                },
                manifest,
            )
        } else {
            let media_type = if top_media.is_empty() {
                MEDIA_OCI_MANIFEST.to_string()
            } else {
                top_media
            };
            let blob = Blob {
                media_type,
                digest: top_digest,
                bytes: top_bytes,
            };
            (None, blob, top)
        };

        let config_desc = manifest
            .config
            .ok_or_else(|| DriverError::image(name, "manifest has no config"))?;
        let mut config_bytes = Vec::with_capacity(config_desc.size.max(0) as usize);
        registry
            .pull_blob(reference, config_desc.digest.as_str(), &mut config_bytes)
            .await
            .map_err(|source| DriverError::Registry {
                op: "pulling config",
                reference: name.to_string(),
                source,
            })?;
        let config_bytes = Bytes::from(config_bytes);
        verify_digest(name, &config_bytes, &config_desc.digest)?;
        let config_file: ImageConfigFile = serde_json::from_slice(&config_bytes)
            .map_err(|e| DriverError::image(name, format!("config: {e}")))?;

        if config_file.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(DriverError::image(
                name,
                format!(
                    "manifest has {} layers but the config lists {} diff ids",
                    manifest.layers.len(),
                    config_file.rootfs.diff_ids.len()
                ),
            ));
        }
        if config_file.rootfs.diff_ids.is_empty() {
            return Err(DriverError::image(name, "image has no layers"));
        }
        if let Some(layer) = manifest
            .layers
            .iter()
            .find(|l| !LAYER_MEDIA_TYPES.contains(&l.media_type.as_str()))
        {
            return Err(DriverError::image(
                name,
                format!(
                    "layer {} has unsupported media type {:?}",
                    layer.digest, layer.media_type
                ),
            ));
        }
        Ok(Resolved {
            index,
            manifest: manifest_blob,
            config: Blob {
                media_type: if config_desc.media_type.is_empty() {
                    "application/vnd.oci.image.config.v1+json".to_string()
                } else {
                    config_desc.media_type
                },
                digest: config_desc.digest,
                bytes: config_bytes,
            },
            config_file,
            layers: manifest.layers,
        })
    }

    /// Puts one blob into the content store under `lease`: a no-op (beyond
    /// adding it to the lease) if containerd already has it.
    async fn write_blob(
        &self,
        lease: &str,
        descriptor: &Descriptor,
        labels: HashMap<String, String>,
        source: Source<'_>,
    ) -> Result<(), DriverError> {
        let digest = &descriptor.digest;
        let existing = ContentClient::new(self.channel())
            .info(self.request(InfoRequest {
                digest: digest.clone(),
            }))
            .await
            .map_err(|s| DriverError::rpc("Content.Info", digest, s))
            .not_found_ok()?;
        if existing.is_some() {
            // Already there, maybe unreferenced: the lease keeps GC away from
            // it until the image record references it.
            self.add_to_lease(lease, digest, "content").await?;
            if !labels.is_empty() {
                self.label_content(lease, digest, labels).await?;
            }
            return Ok(());
        }

        let ingest_ref = format!("faas-{}", digest.replace(':', "-"));
        let mut attempt = 0;
        loop {
            match self
                .write_blob_once(lease, &ingest_ref, descriptor, &labels, &source)
                .await
            {
                Ok(()) => return Ok(()),
                Err(e) if e.is_already_exists() => return Ok(()),
                // Another writer holds the ref (a concurrent pull of an image
                // sharing this layer): wait for it, then find the blob there.
                Err(e) if e.code() == Some(Code::Unavailable) && attempt < LOCKED_REF_RETRIES => {
                    attempt += 1;
                    tracing::debug!(%digest, attempt, "ingest ref locked by another writer; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt.min(10))))
                        .await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn write_blob_once(
        &self,
        lease: &str,
        ingest_ref: &str,
        descriptor: &Descriptor,
        labels: &HashMap<String, String>,
        source: &Source<'_>,
    ) -> Result<(), DriverError> {
        let digest = &descriptor.digest;
        let total = descriptor.size;
        let rpc_err = |s| DriverError::rpc("Content.Write", digest, s);
        let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(2);
        // The first message opens the writer; it must be queued before the
        // call, because containerd sends no response headers until then.
        let stat = WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: ingest_ref.to_string(),
            total,
            expected: digest.clone(),
            ..Default::default()
        };
        tx.send(stat).await.expect("receiver alive");
        let mut responses = ContentClient::new(self.channel())
            .write(self.leased(ReceiverStream::new(rx), lease)?)
            .await
            .map_err(rpc_err)?
            .into_inner();
        let status = next_write_response(&mut responses, digest).await?;

        // Resume an interrupted ingest where it stopped.
        let mut offset = if status.offset > 0 && status.offset <= total {
            status.offset
        } else {
            0
        };
        if offset < total {
            let mut stream: futures::stream::BoxStream<'_, Result<Bytes, DriverError>> =
                match source {
                    Source::Memory(bytes) => {
                        futures::stream::iter([Ok(bytes.slice(offset as usize..))]).boxed()
                    }
                    Source::Registry(reference) => {
                        self.registry_blob_stream(reference, descriptor, &mut offset)
                            .await?
                    }
                };
            let mut pending = BytesMut::with_capacity(WRITE_CHUNK);
            loop {
                let chunk = stream.try_next().await?;
                if let Some(chunk) = &chunk {
                    pending.extend_from_slice(chunk);
                }
                let finished = chunk.is_none();
                while pending.len() >= WRITE_CHUNK || (finished && !pending.is_empty()) {
                    let n = pending.len().min(WRITE_CHUNK);
                    let data = pending.split_to(n).freeze();
                    let write = WriteContentRequest {
                        action: WriteAction::Write as i32,
                        r#ref: ingest_ref.to_string(),
                        total,
                        expected: digest.clone(),
                        offset,
                        data: data.to_vec(),
                        ..Default::default()
                    };
                    if tx.send(write).await.is_err() {
                        // containerd closed the stream: its status says why.
                        next_write_response(&mut responses, digest).await?;
                    }
                    let written = next_write_response(&mut responses, digest).await?;
                    offset = written.offset;
                }
                if finished {
                    break;
                }
            }
        }
        let commit = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: ingest_ref.to_string(),
            total,
            expected: digest.clone(),
            offset,
            labels: labels.clone(),
            ..Default::default()
        };
        if tx.send(commit).await.is_err() {
            next_write_response(&mut responses, digest).await?;
        }
        let committed = next_write_response(&mut responses, digest).await?;
        if !committed.digest.is_empty() && &committed.digest != digest {
            return Err(DriverError::image(
                digest,
                format!("containerd committed {} instead", committed.digest),
            ));
        }
        Ok(())
    }

    /// A layer's bytes from the registry, from `offset` if the registry honours
    /// ranges (otherwise from 0, and `offset` is reset to 0).
    async fn registry_blob_stream<'a>(
        &self,
        reference: &'a Reference,
        descriptor: &Descriptor,
        offset: &mut i64,
    ) -> Result<futures::stream::BoxStream<'a, Result<Bytes, DriverError>>, DriverError> {
        let registry = &self.inner.registry;
        let digest = descriptor.digest.clone();
        let registry_err = |source| DriverError::Registry {
            op: "pulling layer",
            reference: reference.whole(),
            source,
        };
        let stream = if *offset > 0 {
            match registry
                .pull_blob_stream_partial(reference, digest.as_str(), *offset as u64, None)
                .await
                .map_err(registry_err)?
            {
                oci_client::client::BlobResponse::Partial(s) => s,
                oci_client::client::BlobResponse::Full(s) => {
                    *offset = 0;
                    s
                }
            }
        } else {
            registry
                .pull_blob_stream(reference, digest.as_str())
                .await
                .map_err(registry_err)?
        };
        let whole = reference.whole();
        Ok(stream
            .map_err(move |source| DriverError::BlobStream {
                reference: whole.clone(),
                digest: digest.clone(),
                source,
            })
            .boxed())
    }

    async fn add_to_lease(&self, lease: &str, id: &str, kind: &str) -> Result<(), DriverError> {
        LeasesClient::new(self.channel())
            .add_resource(self.request(AddResourceRequest {
                id: lease.to_string(),
                resource: Some(Resource {
                    id: id.to_string(),
                    r#type: kind.to_string(),
                }),
            }))
            .await
            .map_err(|s| DriverError::rpc("Leases.AddResource", id, s))?;
        Ok(())
    }

    async fn label_content(
        &self,
        lease: &str,
        digest: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), DriverError> {
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        ContentClient::new(self.channel())
            .update(self.leased(
                UpdateRequest {
                    info: Some(Info {
                        digest: digest.to_string(),
                        labels,
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask { paths }),
                },
                lease,
            )?)
            .await
            .map_err(|s| DriverError::rpc("Content.Update", digest, s))?;
        Ok(())
    }

    /// Applies the layers one by one into committed snapshots named by their
    /// chain ids, skipping those already there. Returns the top chain id.
    async fn unpack(
        &self,
        name: &str,
        lease: &str,
        layers: &[Desc],
        diff_ids: &[String],
    ) -> Result<String, DriverError> {
        let snapshotter = &self.inner.cfg.snapshotter;
        let snapshot_resource = format!("snapshots/{snapshotter}");
        let chain = chain_ids(diff_ids);
        let mut parent = String::new();
        for ((layer, diff_id), chain_id) in layers.iter().zip(diff_ids).zip(&chain) {
            if self.snapshot_exists(chain_id).await? {
                self.add_to_lease(lease, chain_id, &snapshot_resource)
                    .await?;
                parent = chain_id.clone();
                continue;
            }
            let key = format!("extract-{} {chain_id}", uuid::Uuid::now_v7().simple());
            let mounts = SnapshotsClient::new(self.channel())
                .prepare(self.leased(
                    PrepareSnapshotRequest {
                        snapshotter: snapshotter.clone(),
                        key: key.clone(),
                        parent: parent.clone(),
                        labels: HashMap::new(),
                    },
                    lease,
                )?)
                .await
                .map_err(|s| DriverError::rpc("Snapshots.Prepare", &key, s))?
                .into_inner()
                .mounts;
            let applied = self
                .apply_and_commit(lease, layer, diff_id, chain_id, &key, mounts)
                .await;
            if let Err(e) = applied {
                self.remove_snapshot(&key).await.ok();
                return Err(match e {
                    DriverError::Image { reason, .. } => DriverError::image(name, reason),
                    other => other,
                });
            }
            parent = chain_id.clone();
        }
        Ok(parent)
    }

    async fn apply_and_commit(
        &self,
        lease: &str,
        layer: &Desc,
        diff_id: &str,
        chain_id: &str,
        key: &str,
        mounts: Vec<containerd_client::types::Mount>,
    ) -> Result<(), DriverError> {
        let applied = DiffClient::new(self.channel())
            .apply(self.leased(
                ApplyRequest {
                    diff: Some(Descriptor {
                        media_type: layer.media_type.clone(),
                        digest: layer.digest.clone(),
                        size: layer.size,
                        annotations: HashMap::new(),
                    }),
                    mounts,
                    payloads: HashMap::new(),
                    sync_fs: false,
                },
                lease,
            )?)
            .await
            .map_err(|s| DriverError::rpc("Diff.Apply", &layer.digest, s))?
            .into_inner()
            .applied
            .map(|d| d.digest)
            .unwrap_or_default();
        if applied != diff_id {
            return Err(DriverError::image(
                "",
                format!(
                    "layer {} unpacked to {applied}, but the config says {diff_id}",
                    layer.digest
                ),
            ));
        }
        let committed = SnapshotsClient::new(self.channel())
            .commit(self.leased(
                CommitSnapshotRequest {
                    snapshotter: self.inner.cfg.snapshotter.clone(),
                    name: chain_id.to_string(),
                    key: key.to_string(),
                    labels: HashMap::new(),
                },
                lease,
            )?)
            .await;
        match committed {
            Ok(_) => Ok(()),
            // A concurrent unpack of the same layer won: its snapshot serves.
            Err(s) if s.code() == Code::AlreadyExists => {
                self.remove_snapshot(key).await.ok();
                Ok(())
            }
            Err(s) => Err(DriverError::rpc("Snapshots.Commit", chain_id, s)),
        }
    }

    pub(crate) async fn remove_snapshot(&self, key: &str) -> Result<(), DriverError> {
        SnapshotsClient::new(self.channel())
            .remove(self.request(RemoveSnapshotRequest {
                snapshotter: self.inner.cfg.snapshotter.clone(),
                key: key.to_string(),
            }))
            .await
            .map_err(|s| DriverError::rpc("Snapshots.Remove", key, s))?;
        Ok(())
    }

    async fn record_image(
        &self,
        name: &str,
        target: Descriptor,
        lease: &str,
    ) -> Result<(), DriverError> {
        let image = Image {
            name: name.to_string(),
            labels: HashMap::new(),
            target: Some(target),
            created_at: None,
            updated_at: None,
        };
        let created = ImagesClient::new(self.channel())
            .create(self.leased(
                CreateImageRequest {
                    image: Some(image.clone()),
                    source_date_epoch: None,
                },
                lease,
            )?)
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                ImagesClient::new(self.channel())
                    .update(self.leased(
                        UpdateImageRequest {
                            image: Some(image),
                            update_mask: None,
                            source_date_epoch: None,
                        },
                        lease,
                    )?)
                    .await
                    .map_err(|s| DriverError::rpc("Images.Update", name, s))?;
                Ok(())
            }
            Err(s) => Err(DriverError::rpc("Images.Create", name, s)),
        }
    }
}

/// The next answer on a Content.Write stream; one comes for every request.
async fn next_write_response(
    responses: &mut tonic::Streaming<WriteContentResponse>,
    digest: &str,
) -> Result<WriteContentResponse, DriverError> {
    responses
        .message()
        .await
        .map_err(|s| DriverError::rpc("Content.Write", digest, s))?
        .ok_or_else(|| {
            DriverError::rpc(
                "Content.Write",
                digest,
                tonic::Status::unknown("stream ended before the answer"),
            )
        })
}

fn verify_digest(name: &str, bytes: &[u8], claimed: &str) -> Result<String, DriverError> {
    let actual = sha256_digest(bytes);
    if !claimed.is_empty() && claimed != actual {
        return Err(DriverError::image(
            name,
            format!("content digest {actual} does not match {claimed}"),
        ));
    }
    Ok(actual)
}

fn select_platform<'a>(name: &str, manifests: &'a [Desc]) -> Result<&'a Desc, DriverError> {
    let arch = host_architecture();
    manifests
        .iter()
        .find(|m| {
            m.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        })
        .ok_or_else(|| {
            DriverError::image(name, format!("no manifest for linux/{arch} in the index"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_oci_rule() {
        let a = "sha256:aaaa".to_string();
        let b = "sha256:bbbb".to_string();
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        assert_eq!(chain[1], sha256_digest(b"sha256:aaaa sha256:bbbb"));
    }
}
