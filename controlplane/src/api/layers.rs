//! `LayerService`: Lambda's layers. A layer version is an archive of
//! directories (python/, nodejs/, bin/, lib/, ...) published once, stored
//! in the registry beside function packages, and mounted read-only at
//! /opt/<directory> in the calls of every function version that names it.
//! Versions never change; a function version records the ones it uses, so
//! publishing a new version changes no function until it is redeployed.

use std::collections::{BTreeMap, BTreeSet};

use faas_proto::v1::layer_service_server::LayerService;
use faas_proto::v1::{
    publish_layer_request, DeleteLayerRequest, DeleteLayerResponse, Function, Layer, LayerRef,
    ListLayersRequest, ListLayersResponse, PublishLayerRequest,
};
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use super::{read_package, Api};
use crate::auth::Principal;
use crate::error::{check_name, now_ms, ApiError};
use crate::store::{function_records_prefix, version_name, Kind};
use faas_proto::rules::is_layer_directory;

/// Most layers one function uses: Lambda's limit.
pub const MAX_LAYERS_PER_FUNCTION: usize = 5;
/// Most layer versions one namespace holds (all layers together).
const MAX_LAYER_VERSIONS_PER_NAMESPACE: usize = 500;
/// Most top-level directories in one layer: each is a mount per call.
const MAX_LAYER_DIRECTORIES: usize = 16;
const MAX_DESCRIPTION_CHARS: usize = 256;

/// The key of a layer: its namespace always named.
pub fn layer_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// A layer as a function names it: "NAME" (its latest version) or
/// "NAME:VERSION".
fn parse_reference(reference: &str) -> Result<(&str, Option<u64>), ApiError> {
    let (name, version) = match reference.split_once(':') {
        None => (reference, None),
        Some((name, version)) => match version.parse::<u64>() {
            Ok(v) if v > 0 => (name, Some(v)),
            _ => {
                return Err(ApiError::InvalidArgument(format!(
                    "layer {reference:?}: the version after ':' must be a number from 1 (NAME or NAME:VERSION)"
                )))
            }
        },
    };
    check_name("layer", name)?;
    Ok((name, version))
}

/// Two layers that both have a directory would hide one another's at
/// /opt/<directory> (Lambda merges them file by file; faas mounts each
/// directory as it is): the deploy is refused, naming both.
fn check_disjoint(layers: &[LayerRef]) -> Result<(), ApiError> {
    let mut owners: BTreeMap<&str, &LayerRef> = BTreeMap::new();
    for layer in layers {
        for dir in &layer.directories {
            if let Some(other) = owners.insert(dir, layer) {
                return Err(ApiError::InvalidArgument(format!(
                    "layers {}:{} and {}:{} both have {dir}/: each layer directory is mounted whole at /opt/{dir}, so one would hide the other; publish them as one layer",
                    other.name, other.version, layer.name, layer.version
                )));
            }
        }
    }
    Ok(())
}

impl Api {
    /// A layer's versions, oldest first.
    async fn layer_versions(&self, namespace: &str, name: &str) -> Result<Vec<Layer>, ApiError> {
        let prefix = function_records_prefix(&layer_key(namespace, name));
        Ok(self
            .store
            .list_under::<Layer>(Kind::Layer, &prefix)
            .await?
            .into_iter()
            .map(|(_, layer, _)| layer)
            .collect())
    }

    /// The layers a deploy names, resolved to versions (a bare name: the
    /// latest), in order, each existing in the namespace, their directories
    /// disjoint.
    pub(super) async fn resolve_layers(
        &self,
        namespace: &str,
        references: &[String],
    ) -> Result<Vec<LayerRef>, ApiError> {
        if references.len() > MAX_LAYERS_PER_FUNCTION {
            return Err(ApiError::InvalidArgument(format!(
                "a function uses at most {MAX_LAYERS_PER_FUNCTION} layers; {} were named",
                references.len()
            )));
        }
        let mut resolved: Vec<LayerRef> = Vec::new();
        for reference in references {
            let (name, version) = parse_reference(reference)?;
            if resolved.iter().any(|l| l.name == name) {
                return Err(ApiError::InvalidArgument(format!(
                    "layer {name:?} is named twice"
                )));
            }
            let layer = match version {
                Some(version) => {
                    self.store
                        .get::<Layer>(
                            Kind::Layer,
                            &version_name(&layer_key(namespace, name), version),
                        )
                        .await?
                }
                None => self.layer_versions(namespace, name).await?.pop(),
            };
            let Some(layer) = layer else {
                return Err(ApiError::FailedPrecondition(format!(
                    "layer {reference:?} does not exist in namespace {namespace:?} (faasctl layer ls; faasctl layer publish)"
                )));
            };
            resolved.push(LayerRef {
                name: layer.name,
                version: layer.version,
                digest: layer.digest,
                directories: layer.directories,
            });
        }
        check_disjoint(&resolved)?;
        Ok(resolved)
    }
}

#[tonic::async_trait]
impl LayerService for Api {
    async fn publish_layer(
        &self,
        request: Request<Streaming<PublishLayerRequest>>,
    ) -> Result<Response<Layer>, Status> {
        let principal = Principal::of(&request);
        let mut stream = request.into_inner();
        let spec = match futures::StreamExt::next(&mut stream).await {
            Some(Ok(PublishLayerRequest {
                part: Some(publish_layer_request::Part::Spec(spec)),
            })) => spec,
            Some(Err(e)) => return Err(e),
            _ => {
                return Err(ApiError::InvalidArgument(
                    "the first message must carry the layer spec".into(),
                )
                .into())
            }
        };
        check_name("layer", &spec.name)?;
        let namespace = principal.check_namespace(&spec.namespace)?.to_string();
        self.check_namespace_exists(&namespace)?;
        if spec.description.chars().count() > MAX_DESCRIPTION_CHARS
            || spec.description.chars().any(char::is_control)
        {
            return Err(ApiError::InvalidArgument(format!(
                "a layer's description is at most {MAX_DESCRIPTION_CHARS} characters, without control characters"
            ))
            .into());
        }
        let held = self
            .store
            .list_under::<Layer>(Kind::Layer, &format!("{namespace}/"))
            .await
            .map_err(ApiError::from)?
            .len();
        if held >= MAX_LAYER_VERSIONS_PER_NAMESPACE {
            return Err(ApiError::ResourceExhausted(format!(
                "namespace {namespace:?} holds {held} layer versions, the limit is {MAX_LAYER_VERSIONS_PER_NAMESPACE}: delete some (faasctl layer rm)"
            ))
            .into());
        }
        let _slot = super::functions::deploy_slot(&self.limits)?;
        let archive = read_package(
            &mut stream,
            &self.limits,
            "layer archive",
            |m: PublishLayerRequest| match m.part {
                Some(publish_layer_request::Part::Chunk(c)) => Some(c),
                _ => None,
            },
        )
        .await?;
        let (archive, (directories, others)) = tokio::task::spawn_blocking(move || {
            let top = crate::package::top_level(&archive).map_err(|e| {
                ApiError::Internal(format!("reading the normalized layer archive: {e}"))
            })?;
            Ok::<_, ApiError>((archive, top))
        })
        .await
        .map_err(|e| Status::internal(format!("layer check panicked: {e}")))??;
        if !others.is_empty() {
            return Err(ApiError::InvalidArgument(format!(
                "a layer's top level holds only directories (python/, nodejs/, bin/, lib/, ...), each mounted at /opt/<directory>; this one also has {others:?}"
            ))
            .into());
        }
        if let Some(bad) = directories.iter().find(|d| !is_layer_directory(d)) {
            return Err(ApiError::InvalidArgument(format!(
                "layer directory {bad:?} cannot be mounted at /opt: use letters, digits, '-', '_' or '.', not a leading '.', and not \"faas\" (the runtimes' own)"
            ))
            .into());
        }
        if directories.len() > MAX_LAYER_DIRECTORIES {
            return Err(ApiError::InvalidArgument(format!(
                "a layer has at most {MAX_LAYER_DIRECTORIES} top-level directories; this one has {}",
                directories.len()
            ))
            .into());
        }
        let key = layer_key(&namespace, &spec.name);
        let version = self
            .layer_versions(&namespace, &spec.name)
            .await?
            .last()
            .map(|l| l.version + 1)
            .unwrap_or(1);
        let size = archive.len() as u64;
        let (_repository, digest) = self
            .registry
            .push_layer(&namespace, &spec.name, version, archive.into())
            .await
            .map_err(ApiError::from)?;
        let layer = Layer {
            name: spec.name,
            namespace,
            version,
            description: spec.description,
            digest,
            size,
            directories,
            created_at_ms: now_ms(),
        };
        if !self
            .store
            .create(Kind::Layer, &version_name(&key, version), &layer)
            .await
            .map_err(ApiError::from)?
        {
            // The tag goes back to the winner's blob (best effort), so that
            // the registry's garbage collection keeps what the record names.
            if let Ok(Some(winner)) = self
                .store
                .get::<Layer>(Kind::Layer, &version_name(&key, version))
                .await
            {
                let _ = self
                    .registry
                    .tag_layer(
                        &winner.namespace,
                        &winner.name,
                        version,
                        &winner.digest,
                        winner.size,
                    )
                    .await;
            }
            return Err(ApiError::Aborted(format!(
                "layer {:?} got version {version} from another publish at the same time; this one was not recorded: retry",
                layer.name
            ))
            .into());
        }
        info!(layer = %key, version, digest = %layer.digest, "layer published");
        Ok(Response::new(layer))
    }

    async fn list_layers(
        &self,
        request: Request<ListLayersRequest>,
    ) -> Result<Response<ListLayersResponse>, Status> {
        let principal = Principal::of(&request);
        let req = request.into_inner();
        let namespace = principal.check_namespace(&req.namespace)?.to_string();
        let layers = if req.name.is_empty() {
            // The latest version of each: records are in name, then
            // version, order.
            let mut latest: BTreeMap<String, Layer> = BTreeMap::new();
            for (_, layer, _) in self
                .store
                .list_under::<Layer>(Kind::Layer, &format!("{namespace}/"))
                .await
                .map_err(ApiError::from)?
            {
                latest.insert(layer.name.clone(), layer);
            }
            latest.into_values().collect()
        } else {
            check_name("layer", &req.name)?;
            let versions = self.layer_versions(&namespace, &req.name).await?;
            if versions.is_empty() {
                return Err(ApiError::NotFound(format!(
                    "layer {:?} not found in namespace {namespace:?}",
                    req.name
                ))
                .into());
            }
            versions
        };
        Ok(Response::new(ListLayersResponse { layers }))
    }

    async fn delete_layer(
        &self,
        request: Request<DeleteLayerRequest>,
    ) -> Result<Response<DeleteLayerResponse>, Status> {
        let principal = Principal::of(&request);
        let req = request.into_inner();
        let namespace = principal.check_namespace(&req.namespace)?.to_string();
        check_name("layer", &req.name)?;
        let doomed: BTreeSet<u64> = self
            .layer_versions(&namespace, &req.name)
            .await?
            .into_iter()
            .map(|l| l.version)
            .filter(|v| req.version == 0 || *v == req.version)
            .collect();
        if doomed.is_empty() {
            let what = match req.version {
                0 => format!("layer {:?}", req.name),
                v => format!("layer {:?} version {v}", req.name),
            };
            return Err(
                ApiError::NotFound(format!("{what} not found in namespace {namespace:?}")).into(),
            );
        }
        // Every kept version of every function may run again (a rollback,
        // an alias): none may lose a layer it names.
        let versions: Vec<Function> = self
            .store
            .list(Kind::FunctionVersion)
            .await
            .map_err(ApiError::from)?;
        let users: BTreeSet<String> = versions
            .iter()
            .filter(|f| f.namespace_name() == namespace)
            .filter(|f| {
                f.layers
                    .iter()
                    .any(|l| l.name == req.name && doomed.contains(&l.version))
            })
            .map(|f| format!("{}:{}", f.name, f.version))
            .collect();
        if !users.is_empty() {
            return Err(ApiError::FailedPrecondition(format!(
                "function versions {users:?} use it: deploy them without it first (versions no longer kept release it)"
            ))
            .into());
        }
        let key = layer_key(&namespace, &req.name);
        let records: Vec<(Kind, String)> = doomed
            .iter()
            .map(|v| (Kind::Layer, version_name(&key, *v)))
            .collect();
        self.store
            .delete_many(&records)
            .await
            .map_err(ApiError::from)?;
        info!(layer = %key, versions = ?doomed, "layer versions deleted");
        let only = (req.version != 0).then_some(&doomed);
        if let Err(e) = self
            .registry
            .remove_layer_versions(&namespace, &req.name, only)
            .await
        {
            warn!(layer = %key, error = %e, "could not remove the layer's versions from the registry");
        }
        Ok(Response::new(DeleteLayerResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_name_a_version_or_the_latest() {
        assert_eq!(parse_reference("numpy").unwrap(), ("numpy", None));
        assert_eq!(parse_reference("numpy:3").unwrap(), ("numpy", Some(3)));
        for bad in ["numpy:0", "numpy:", "numpy:x", ":1", "Bad Name", "a:1:2"] {
            assert!(parse_reference(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn layer_directories_are_plain_names_and_not_the_platforms() {
        for good in ["python", "nodejs", "bin", "lib", "extensions", "my-data.v2"] {
            assert!(is_layer_directory(good), "{good}");
        }
        for bad in ["faas", ".hidden", "..", "", "a/b", "sp ace", "a\nb"] {
            assert!(!is_layer_directory(bad), "{bad:?}");
        }
    }

    #[test]
    fn layers_sharing_a_directory_are_refused() {
        let layer = |name: &str, dirs: &[&str]| LayerRef {
            name: name.into(),
            version: 1,
            digest: String::new(),
            directories: dirs.iter().map(|d| d.to_string()).collect(),
        };
        assert!(check_disjoint(&[layer("a", &["python"]), layer("b", &["nodejs", "bin"])]).is_ok());
        let err = check_disjoint(&[layer("a", &["python", "bin"]), layer("b", &["bin"])])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a:1") && err.contains("b:1") && err.contains("bin/"),
            "{err}"
        );
    }
}
