//! `SecretService`: secrets per namespace, sealed before they reach etcd.
//! No answer carries a value. Replacing a secret makes a new version of
//! every function that references it, so the next call (and the next
//! preload) gets the new value.

use faas_proto::v1::secret_service_server::SecretService;
use faas_proto::v1::{
    DeleteSecretRequest, DeleteSecretResponse, Function, GetSecretRequest, ListSecretsRequest,
    ListSecretsResponse, PutSecretRequest, Secret, SecretRecord,
};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::Api;
use crate::auth::Principal;
use crate::error::{check_name, now_ms, ApiError};
use crate::secrets::{secret_key, MAX_SECRET_BYTES};
use crate::store::Kind;

/// Most secrets one namespace holds.
const MAX_SECRETS_PER_NAMESPACE: usize = 1000;

impl Api {
    /// The functions of `namespace` that reference secret `name`.
    async fn functions_using(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<Function>, ApiError> {
        let functions: Vec<Function> = self.store.list(Kind::Function).await?;
        Ok(functions
            .into_iter()
            .filter(|f| f.namespace_name() == namespace && f.secrets.iter().any(|s| s.name == name))
            .collect())
    }

    /// A new version of each function using a replaced secret, naming the
    /// secret's new version: the next call gets the new value, and
    /// preloads of the old version are cleared like those of an old
    /// deploy. Written over the version read (a deploy in between wins;
    /// it references the secret's current version itself).
    async fn roll_functions(&self, secret: &Secret) -> Result<usize, ApiError> {
        let mut rolled = 0;
        for listed in self
            .functions_using(&secret.namespace, &secret.name)
            .await?
        {
            let key = listed.key();
            let Some((mut function, revision)) = self
                .store
                .get_revision::<Function>(Kind::Function, &key)
                .await?
            else {
                continue;
            };
            for reference in &mut function.secrets {
                if reference.name == secret.name {
                    reference.version = secret.version;
                }
            }
            function.version += 1;
            function.updated_at_ms = now_ms();
            if self
                .store
                .put_function(&key, &function, Some(revision))
                .await?
            {
                rolled += 1;
                info!(function = %key, version = function.version, secret = %secret.name, "function given the secret's new version");
                self.prune_versions(&key, function.version).await;
            } else {
                warn!(function = %key, "function changed while its secret was replaced; left as deployed");
            }
        }
        Ok(rolled)
    }
}

#[tonic::async_trait]
impl SecretService for Api {
    async fn put_secret(
        &self,
        request: Request<PutSecretRequest>,
    ) -> Result<Response<Secret>, Status> {
        let principal = Principal::of(&request);
        let req = request.into_inner();
        let namespace = principal.check_namespace(&req.namespace)?.to_string();
        check_name("secret", &req.name)?;
        self.check_namespace_exists(&namespace)?;
        if req.value.len() > MAX_SECRET_BYTES {
            return Err(ApiError::ResourceExhausted(format!(
                "a secret holds at most {MAX_SECRET_BYTES} bytes; this one is {}",
                req.value.len()
            ))
            .into());
        }
        if !self.secrets.enabled() {
            return Err(ApiError::from(crate::secrets::SecretError::NoKey).into());
        }
        let key = secret_key(&namespace, &req.name);
        let stored = self
            .store
            .get_revision::<SecretRecord>(Kind::Secret, &key)
            .await
            .map_err(ApiError::from)?;
        let now = now_ms();
        let meta = match stored.as_ref().and_then(|(r, _)| r.meta.clone()) {
            Some(_) if !req.replace => {
                return Err(ApiError::AlreadyExists(format!(
                    "secret {:?} exists in namespace {namespace:?} (replace it with --replace)",
                    req.name
                ))
                .into())
            }
            Some(old) => Secret {
                size: req.value.len() as u64,
                version: old.version + 1,
                updated_at_ms: now,
                ..old
            },
            None => {
                let held = self
                    .secrets
                    .list()
                    .iter()
                    .filter(|s| s.namespace == namespace)
                    .count();
                if held >= MAX_SECRETS_PER_NAMESPACE {
                    return Err(ApiError::ResourceExhausted(format!(
                        "namespace {namespace:?} holds {held} secrets, the limit is {MAX_SECRETS_PER_NAMESPACE}"
                    ))
                    .into());
                }
                Secret {
                    name: req.name.clone(),
                    namespace: namespace.clone(),
                    size: req.value.len() as u64,
                    version: 1,
                    created_at_ms: now,
                    updated_at_ms: now,
                }
            }
        };
        let record = self
            .secrets
            .seal(meta.clone(), &req.value)
            .map_err(ApiError::from)?;
        // Over exactly what was read: two replacements at once do not both
        // claim one version.
        let written = match stored {
            Some((_, revision)) => {
                self.store
                    .put_if_mod_revision(Kind::Secret, &key, &record, revision)
                    .await
            }
            None => self.store.create(Kind::Secret, &key, &record).await,
        }
        .map_err(ApiError::from)?;
        if !written {
            return Err(ApiError::Unavailable(
                "the secret changed meanwhile; nothing was written; retry".into(),
            )
            .into());
        }
        self.secrets.put(record);
        info!(%namespace, secret = %meta.name, version = meta.version, size = meta.size, "secret stored");
        if meta.version > 1 {
            self.roll_functions(&meta).await?;
        }
        Ok(Response::new(meta))
    }

    async fn get_secret(
        &self,
        request: Request<GetSecretRequest>,
    ) -> Result<Response<Secret>, Status> {
        let principal = Principal::of(&request);
        let req = request.into_inner();
        let namespace = principal.check_namespace(&req.namespace)?;
        let key = secret_key(namespace, &req.name);
        let stored: Option<SecretRecord> = self
            .store
            .get(Kind::Secret, &key)
            .await
            .map_err(ApiError::from)?;
        stored
            .and_then(|r| r.meta)
            .map(Response::new)
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "secret {:?} not found in namespace {namespace:?}",
                    req.name
                ))
                .into()
            })
    }

    async fn list_secrets(
        &self,
        request: Request<ListSecretsRequest>,
    ) -> Result<Response<ListSecretsResponse>, Status> {
        let principal = Principal::of(&request);
        let scope = principal.list_scope(&request.get_ref().namespace)?;
        let records: Vec<SecretRecord> = self
            .store
            .list(Kind::Secret)
            .await
            .map_err(ApiError::from)?;
        let mut secrets: Vec<Secret> = records
            .into_iter()
            .filter_map(|r| r.meta)
            .filter(|s| principal.lists(&scope, &s.namespace))
            .collect();
        secrets.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        Ok(Response::new(ListSecretsResponse { secrets }))
    }

    async fn delete_secret(
        &self,
        request: Request<DeleteSecretRequest>,
    ) -> Result<Response<DeleteSecretResponse>, Status> {
        let principal = Principal::of(&request);
        let req = request.into_inner();
        let namespace = principal.check_namespace(&req.namespace)?.to_string();
        let using = self.functions_using(&namespace, &req.name).await?;
        if !using.is_empty() {
            let names: Vec<&str> = using.iter().map(|f| f.name.as_str()).collect();
            return Err(ApiError::FailedPrecondition(format!(
                "secret {:?} is used by functions {}: deploy them without it first",
                req.name,
                names.join(", ")
            ))
            .into());
        }
        let key = secret_key(&namespace, &req.name);
        if !self
            .store
            .delete(Kind::Secret, &key)
            .await
            .map_err(ApiError::from)?
        {
            return Err(ApiError::NotFound(format!(
                "secret {:?} not found in namespace {namespace:?}",
                req.name
            ))
            .into());
        }
        self.secrets.remove(&key);
        info!(%namespace, secret = %req.name, "secret deleted");
        Ok(Response::new(DeleteSecretResponse {}))
    }
}
