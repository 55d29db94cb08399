//! Function versions and aliases: the FunctionService methods that list,
//! read and move them, and the pruning after each new version. The rules
//! (qualifiers, weights, what is kept) are in crate::versions.

use std::collections::BTreeSet;

use faas_proto::v1::{
    DeleteAliasRequest, DeleteAliasResponse, Function, FunctionAlias, ListAliasesRequest,
    ListAliasesResponse, ListFunctionVersionsRequest, ListFunctionVersionsResponse,
    RollbackFunctionRequest, SetAliasRequest,
};
use tracing::{info, warn};

use super::Api;
use crate::auth::Principal;
use crate::error::{check_name, now_ms, ApiError};
use crate::store::{alias_name, function_records_prefix, version_name, Kind};
use crate::versions::{self, Qualifier};

/// Most aliases one function has.
const MAX_ALIASES_PER_FUNCTION: usize = 32;

impl Api {
    /// The function `name` of `namespace` as currently deployed, with its
    /// key and its record's revision.
    async fn current_function(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<(String, Function, i64), ApiError> {
        check_name("function", name)?;
        let key = faas_proto::namespaces::function_key(namespace, name);
        let (function, revision) = self
            .store
            .get_versioned::<Function>(Kind::Function, &key)
            .await?
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "function {name:?} not found in namespace {namespace:?}"
                ))
            })?;
        Ok((key, function, revision))
    }

    /// Version `version` of the function `current` is the current record
    /// of: its record, or the current one itself (a function deployed
    /// before versions were kept has no record of its current version).
    async fn function_version(
        &self,
        key: &str,
        current: &Function,
        version: u64,
    ) -> Result<Function, ApiError> {
        if let Some(found) = self
            .store
            .get::<Function>(Kind::FunctionVersion, &version_name(key, version))
            .await?
        {
            return Ok(found);
        }
        if current.version == version {
            return Ok(current.clone());
        }
        Err(ApiError::NotFound(format!(
            "function {:?} has no version {version} (it is at {}; see `faasctl fn versions {}`)",
            current.name, current.version, current.name
        )))
    }

    /// GetFunction with a qualifier: the version it names.
    pub(super) async fn function_at(
        &self,
        namespace: &str,
        name: &str,
        qualifier: &str,
    ) -> Result<Function, ApiError> {
        let qualifier = Qualifier::parse(qualifier)?;
        let (key, current, _) = self.current_function(namespace, name).await?;
        let version = match qualifier {
            Qualifier::Latest => return Ok(current),
            Qualifier::Version(v) => v,
            Qualifier::Alias(alias) => self.alias(&key, name, &alias).await?.version,
        };
        self.function_version(&key, &current, version).await
    }

    async fn alias(&self, key: &str, name: &str, alias: &str) -> Result<FunctionAlias, ApiError> {
        self.store
            .get::<FunctionAlias>(Kind::FunctionAlias, &alias_name(key, alias))
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("function {name:?} has no alias {alias:?}")))
    }

    /// The kept versions of a function, oldest first, the current one last.
    pub(super) async fn list_versions(
        &self,
        principal: &Principal,
        request: ListFunctionVersionsRequest,
    ) -> Result<ListFunctionVersionsResponse, ApiError> {
        let namespace = principal.check_namespace(&request.namespace)?;
        let (key, current, _) = self.current_function(namespace, &request.name).await?;
        let mut versions: Vec<Function> = self
            .store
            .list_under::<Function>(Kind::FunctionVersion, &function_records_prefix(&key))
            .await?
            .into_iter()
            .map(|(_, f, _)| f)
            .filter(|f| f.version < current.version)
            .collect();
        versions.push(current);
        Ok(ListFunctionVersionsResponse { versions })
    }

    /// After a new version was written: deletes the oldest versions past
    /// `limits.max_function_versions`, except those an alias names, with
    /// their package manifests. Failures are logged: the version is made,
    /// and the next one prunes again.
    pub(super) async fn prune_versions(&self, key: &str, current: u64) {
        if let Err(e) = self.try_prune_versions(key, current).await {
            warn!(function = %key, error = %e, "could not prune old function versions");
        }
    }

    async fn try_prune_versions(&self, key: &str, current: u64) -> Result<(), ApiError> {
        let prefix = function_records_prefix(key);
        let kept: BTreeSet<u64> = self
            .store
            .list_under::<Function>(Kind::FunctionVersion, &prefix)
            .await?
            .into_iter()
            .map(|(_, f, _)| f.version)
            .collect();
        let aliases = self
            .store
            .list_under::<FunctionAlias>(Kind::FunctionAlias, &prefix)
            .await?;
        let aliased = versions::aliased(aliases.iter().map(|(_, a, _)| a));
        let doomed = versions::to_prune(
            &kept,
            current,
            self.limits.max_function_versions as usize,
            &aliased,
        );
        if doomed.is_empty() {
            return Ok(());
        }
        let records: Vec<(Kind, String)> = doomed
            .iter()
            .map(|v| (Kind::FunctionVersion, version_name(key, *v)))
            .collect();
        self.store.delete_many(&records).await?;
        let doomed: BTreeSet<u64> = doomed.into_iter().collect();
        // Calls of these versions already queued fetch the blob by digest;
        // blobs stay until the registry's garbage collection.
        match self
            .registry
            .remove_package_versions(key, Some(&doomed))
            .await
        {
            Ok(n) => {
                info!(function = %key, versions = ?doomed, manifests = n, "old function versions removed")
            }
            Err(e) => {
                warn!(function = %key, error = %e, "could not remove old package versions from the registry")
            }
        }
        Ok(())
    }

    /// RollbackFunction: an earlier version's package and configuration
    /// as a new version.
    pub(super) async fn rollback(
        &self,
        principal: &Principal,
        request: RollbackFunctionRequest,
    ) -> Result<Function, ApiError> {
        let namespace = principal.check_namespace(&request.namespace)?.to_string();
        let (key, current, revision) = self.current_function(&namespace, &request.name).await?;
        let target = if request.version == 0 {
            // The newest kept version before the current one.
            let earlier = self
                .store
                .list_under::<Function>(Kind::FunctionVersion, &function_records_prefix(&key))
                .await?
                .into_iter()
                .map(|(_, f, _)| f)
                .rfind(|f| f.version < current.version);
            earlier.ok_or_else(|| {
                ApiError::FailedPrecondition(format!(
                    "function {:?} has no earlier version kept to roll back to (it is at {})",
                    request.name, current.version
                ))
            })?
        } else {
            self.function_version(&key, &current, request.version)
                .await?
        };
        if target.version == current.version {
            return Err(ApiError::FailedPrecondition(format!(
                "version {} is the current version of {:?} already",
                target.version, request.name
            )));
        }
        if self
            .store
            .get::<faas_proto::v1::Runtime>(Kind::Runtime, &target.runtime)
            .await?
            .is_none()
        {
            return Err(ApiError::FailedPrecondition(format!(
                "version {} runs on runtime {:?}, which no longer exists",
                target.version, target.runtime
            )));
        }
        // The secrets as they are now: each must still exist, and calls get
        // its current value.
        let secrets = self
            .check_secret_refs(&namespace, target.secrets.clone(), &target.env)
            .await?;
        let version = current.version + 1;
        self.registry
            .tag_package(&key, version, &target.package_digest, target.package_size)
            .await?;
        let function = Function {
            version,
            secrets,
            created_at_ms: current.created_at_ms,
            updated_at_ms: now_ms(),
            ..target.clone()
        };
        if !self
            .store
            .put_function(&key, &function, Some(revision))
            .await?
        {
            return Err(ApiError::Aborted(format!(
                "function {:?} changed while it was being rolled back; nothing was changed; retry",
                request.name
            )));
        }
        info!(function = %key, version, from = target.version, "function rolled back");
        self.prune_versions(&key, version).await;
        Ok(function)
    }

    pub(super) async fn set_alias(
        &self,
        principal: &Principal,
        request: SetAliasRequest,
    ) -> Result<FunctionAlias, ApiError> {
        let namespace = principal.check_namespace(&request.namespace)?.to_string();
        versions::check_alias_name(&request.alias)?;
        versions::check_routing(
            request.version,
            request.additional_version,
            request.additional_weight,
        )?;
        let (key, current, _) = self.current_function(&namespace, &request.function).await?;
        for version in [request.version, request.additional_version] {
            if version != 0 {
                self.function_version(&key, &current, version).await?;
            }
        }
        let record = alias_name(&key, &request.alias);
        let existing = self
            .store
            .get_versioned::<FunctionAlias>(Kind::FunctionAlias, &record)
            .await?;
        if existing.is_none() {
            let count = self
                .store
                .list_under::<FunctionAlias>(Kind::FunctionAlias, &function_records_prefix(&key))
                .await?
                .len();
            if count >= MAX_ALIASES_PER_FUNCTION {
                return Err(ApiError::ResourceExhausted(format!(
                    "function {:?} has {count} aliases, the most it may have ({MAX_ALIASES_PER_FUNCTION})",
                    request.function
                )));
            }
        }
        let now = now_ms();
        let alias = FunctionAlias {
            name: request.alias.clone(),
            function: request.function.clone(),
            namespace: namespace.clone(),
            version: request.version,
            additional_version: request.additional_version,
            additional_weight: request.additional_weight,
            created_at_ms: existing
                .as_ref()
                .map(|(a, _)| a.created_at_ms)
                .unwrap_or(now),
            updated_at_ms: now,
        };
        let written = match existing {
            Some((_, revision)) => {
                self.store
                    .put_if_mod_revision(Kind::FunctionAlias, &record, &alias, revision)
                    .await?
            }
            None => {
                self.store
                    .create(Kind::FunctionAlias, &record, &alias)
                    .await?
            }
        };
        if !written {
            return Err(ApiError::Aborted(format!(
                "alias {:?} changed while it was being set; retry",
                request.alias
            )));
        }
        // The function may have been deleted meanwhile (with its aliases):
        // an alias must not outlive it.
        if self
            .store
            .get::<Function>(Kind::Function, &key)
            .await?
            .is_none()
        {
            self.store.delete(Kind::FunctionAlias, &record).await?;
            return Err(ApiError::NotFound(format!(
                "function {:?} was deleted while its alias was being set",
                request.function
            )));
        }
        info!(function = %key, alias = %alias.name, version = alias.version, additional_version = alias.additional_version, weight = alias.additional_weight, "alias set");
        Ok(alias)
    }

    pub(super) async fn list_aliases(
        &self,
        principal: &Principal,
        request: ListAliasesRequest,
    ) -> Result<ListAliasesResponse, ApiError> {
        let namespace = principal.check_namespace(&request.namespace)?;
        let (key, _, _) = self.current_function(namespace, &request.function).await?;
        let aliases = self
            .store
            .list_under::<FunctionAlias>(Kind::FunctionAlias, &function_records_prefix(&key))
            .await?
            .into_iter()
            .map(|(_, a, _)| a)
            .collect();
        Ok(ListAliasesResponse { aliases })
    }

    pub(super) async fn delete_alias(
        &self,
        principal: &Principal,
        request: DeleteAliasRequest,
    ) -> Result<DeleteAliasResponse, ApiError> {
        let namespace = principal.check_namespace(&request.namespace)?;
        versions::check_alias_name(&request.alias)?;
        let (key, _, _) = self.current_function(namespace, &request.function).await?;
        if !self
            .store
            .delete(Kind::FunctionAlias, &alias_name(&key, &request.alias))
            .await?
        {
            return Err(ApiError::NotFound(format!(
                "function {:?} has no alias {:?}",
                request.function, request.alias
            )));
        }
        info!(function = %key, alias = %request.alias, "alias deleted");
        Ok(DeleteAliasResponse {})
    }

    /// With the function's record deleted: its versions and aliases.
    pub(super) async fn delete_versions(&self, key: &str) -> Result<(), ApiError> {
        let prefix = function_records_prefix(key);
        self.store
            .delete_under(Kind::FunctionVersion, &prefix)
            .await?;
        self.store
            .delete_under(Kind::FunctionAlias, &prefix)
            .await?;
        Ok(())
    }
}
