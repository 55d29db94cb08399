//! `NamespaceService`: tenants and their quotas. An admin creates, updates
//! and deletes them; a developer or invoker reads those its token acts in.

use faas_proto::namespaces::{ALL, DEFAULT};
use faas_proto::v1::namespace_service_server::NamespaceService;
use faas_proto::v1::{
    CreateNamespaceRequest, DeleteNamespaceRequest, DeleteNamespaceResponse, Function,
    GetNamespaceRequest, ListNamespacesRequest, ListNamespacesResponse, Namespace, NamespaceQuota,
    UpdateNamespaceRequest,
};
use tonic::{Request, Response, Status};
use tracing::info;

use super::Api;
use crate::auth::Principal;
use crate::error::{check_name, now_ms, ApiError};
use crate::store::Kind;

/// Most namespaces a cluster keeps (each is held in every replica's
/// memory).
const MAX_NAMESPACES: usize = 10_000;

fn check_quota(quota: &NamespaceQuota) -> Result<(), ApiError> {
    for (field, value) in [
        ("submit_rate", quota.submit_rate),
        ("submit_burst", quota.submit_burst),
    ] {
        if !value.is_finite() || value < 0.0 {
            return Err(ApiError::InvalidArgument(format!(
                "{field} must be a finite number, 0 or more (got {value})"
            )));
        }
    }
    Ok(())
}

fn check_namespace_name(name: &str) -> Result<(), ApiError> {
    if name == ALL {
        return Err(ApiError::InvalidArgument(
            "\"*\" stands for every namespace; it cannot name one".into(),
        ));
    }
    check_name("namespace", name)
}

#[tonic::async_trait]
impl NamespaceService for Api {
    async fn create_namespace(
        &self,
        request: Request<CreateNamespaceRequest>,
    ) -> Result<Response<Namespace>, Status> {
        let req = request.into_inner();
        check_namespace_name(&req.name)?;
        let quota = req.quota.unwrap_or_default();
        check_quota(&quota)?;
        let count = self
            .store
            .count(Kind::Namespace)
            .await
            .map_err(ApiError::from)?;
        if count as usize >= MAX_NAMESPACES {
            return Err(ApiError::ResourceExhausted(format!(
                "the cluster holds {count} namespaces, its limit is {MAX_NAMESPACES}"
            ))
            .into());
        }
        let now = now_ms();
        let namespace = Namespace {
            name: req.name,
            quota: Some(quota),
            created_at_ms: now,
            updated_at_ms: now,
        };
        // "default" exists without a record: creating it gives it a quota.
        let created = self
            .store
            .create(Kind::Namespace, &namespace.name, &namespace)
            .await
            .map_err(ApiError::from)?;
        if !created {
            return Err(ApiError::AlreadyExists(format!(
                "namespace {:?} exists (change its quota with `faasctl namespace set`)",
                namespace.name
            ))
            .into());
        }
        self.tenants.put(namespace.clone());
        info!(namespace = %namespace.name, quota = ?namespace.quota, "namespace created");
        Ok(Response::new(namespace))
    }

    async fn update_namespace(
        &self,
        request: Request<UpdateNamespaceRequest>,
    ) -> Result<Response<Namespace>, Status> {
        let req = request.into_inner();
        check_namespace_name(&req.name)?;
        let quota = req.quota.unwrap_or_default();
        check_quota(&quota)?;
        let stored: Option<Namespace> = self
            .store
            .get(Kind::Namespace, &req.name)
            .await
            .map_err(ApiError::from)?;
        let now = now_ms();
        let namespace = match stored {
            Some(n) => Namespace {
                quota: Some(quota),
                updated_at_ms: now,
                ..n
            },
            None if req.name == DEFAULT => Namespace {
                name: req.name,
                quota: Some(quota),
                created_at_ms: now,
                updated_at_ms: now,
            },
            None => {
                return Err(ApiError::NotFound(format!(
                    "namespace {:?} not found (see `faasctl namespace ls`)",
                    req.name
                ))
                .into())
            }
        };
        self.store
            .put(Kind::Namespace, &namespace.name, &namespace)
            .await
            .map_err(ApiError::from)?;
        self.tenants.put(namespace.clone());
        info!(namespace = %namespace.name, quota = ?namespace.quota, "namespace quota changed");
        Ok(Response::new(namespace))
    }

    async fn get_namespace(
        &self,
        request: Request<GetNamespaceRequest>,
    ) -> Result<Response<Namespace>, Status> {
        let principal = Principal::of(&request);
        let name = request.into_inner().name;
        let name = principal.check_namespace(&name)?;
        self.tenants
            .get(name)
            .map(Response::new)
            .ok_or_else(|| ApiError::NotFound(format!("namespace {name:?} not found")).into())
    }

    async fn list_namespaces(
        &self,
        request: Request<ListNamespacesRequest>,
    ) -> Result<Response<ListNamespacesResponse>, Status> {
        let principal = Principal::of(&request);
        let mut namespaces = self.tenants.list();
        namespaces.retain(|n| principal.acts_in(&n.name));
        Ok(Response::new(ListNamespacesResponse { namespaces }))
    }

    async fn delete_namespace(
        &self,
        request: Request<DeleteNamespaceRequest>,
    ) -> Result<Response<DeleteNamespaceResponse>, Status> {
        let name = request.into_inner().name;
        check_namespace_name(&name)?;
        if name == DEFAULT {
            return Err(ApiError::FailedPrecondition(
                "namespace \"default\" always exists; it cannot be deleted".into(),
            )
            .into());
        }
        let functions: Vec<Function> = self
            .store
            .list(Kind::Function)
            .await
            .map_err(ApiError::from)?;
        let held = functions.iter().filter(|f| f.namespace == name).count();
        if held > 0 {
            return Err(ApiError::FailedPrecondition(format!(
                "namespace {name:?} holds {held} functions: delete them first (faasctl fn ls -n {name})"
            ))
            .into());
        }
        let secrets: Vec<faas_proto::v1::SecretRecord> = self
            .store
            .list(Kind::Secret)
            .await
            .map_err(ApiError::from)?;
        let held = secrets
            .iter()
            .filter(|r| r.meta.as_ref().is_some_and(|m| m.namespace == name))
            .count();
        if held > 0 {
            return Err(ApiError::FailedPrecondition(format!(
                "namespace {name:?} holds {held} secrets: delete them first (faasctl secret ls -n {name})"
            ))
            .into());
        }
        let layers: Vec<faas_proto::v1::Layer> =
            self.store.list(Kind::Layer).await.map_err(ApiError::from)?;
        let held = layers.iter().filter(|l| l.namespace == name).count();
        if held > 0 {
            return Err(ApiError::FailedPrecondition(format!(
                "namespace {name:?} holds {held} layer versions: delete them first (faasctl layer ls -n {name})"
            ))
            .into());
        }
        if !self
            .store
            .delete(Kind::Namespace, &name)
            .await
            .map_err(ApiError::from)?
        {
            return Err(ApiError::NotFound(format!("namespace {name:?} not found")).into());
        }
        self.tenants.remove(&name);
        info!(namespace = %name, "namespace deleted");
        Ok(Response::new(DeleteNamespaceResponse {}))
    }
}
