use faas_proto::v1::function_service_server::FunctionService;
use faas_proto::v1::{
    deploy_function_request, DeleteFunctionRequest, DeleteFunctionResponse, DeployFunctionRequest,
    Function, GetFunctionRequest, ListFunctionsRequest, ListFunctionsResponse, Runtime,
};
use futures::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::info;

use super::{read_upload, Api};
use crate::error::{check_name, now_ms, ApiError};
use crate::package::{normalize, PackageLimits};
use crate::store::Kind;

pub const DEFAULT_HANDLER: &str = "handler.handler";

/// Environment variables the platform sets itself.
fn check_env_name(key: &str) -> Result<(), ApiError> {
    let ok = !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        return Err(ApiError::InvalidArgument(format!(
            "invalid environment variable name {key:?}: use letters, digits and '_', not starting with a digit"
        )));
    }
    if key.starts_with("FAAS_") {
        return Err(ApiError::InvalidArgument(format!(
            "environment variable {key:?}: the FAAS_ prefix is reserved for the platform"
        )));
    }
    Ok(())
}

#[tonic::async_trait]
impl FunctionService for Api {
    async fn deploy_function(
        &self,
        request: Request<Streaming<DeployFunctionRequest>>,
    ) -> Result<Response<Function>, Status> {
        let mut stream = request.into_inner();
        let spec = match stream.next().await {
            Some(Ok(DeployFunctionRequest {
                part: Some(deploy_function_request::Part::Spec(spec)),
            })) => spec,
            Some(Err(e)) => return Err(e),
            _ => {
                return Err(ApiError::InvalidArgument(
                    "the first message must carry the function spec".into(),
                )
                .into())
            }
        };
        check_name("function", &spec.name)?;
        let limits = &self.limits;
        if spec.memory_bytes != 0
            && !(16 << 20..=limits.max_memory_bytes).contains(&spec.memory_bytes)
        {
            return Err(ApiError::InvalidArgument(format!(
                "memory {} bytes is outside the allowed range 16 MiB..{} bytes",
                spec.memory_bytes, limits.max_memory_bytes
            ))
            .into());
        }
        let max_timeout_ms = limits.max_timeout.as_millis() as u64;
        if spec.timeout_ms > max_timeout_ms {
            return Err(ApiError::InvalidArgument(format!(
                "timeout {} ms is over the maximum of {max_timeout_ms} ms",
                spec.timeout_ms
            ))
            .into());
        }
        for key in spec.env.keys() {
            check_env_name(key)?;
        }
        super::check_env_bytes(&spec.env, limits.max_env_bytes)?;
        let runtime: Option<Runtime> = self
            .store
            .get(Kind::Runtime, &spec.runtime)
            .await
            .map_err(ApiError::from)?;
        if runtime.is_none() {
            return Err(ApiError::NotFound(format!(
                "runtime {:?} not found (see `faasctl runtime ls`)",
                spec.runtime
            ))
            .into());
        }
        let upload = read_upload(
            &mut stream,
            limits.max_package_bytes,
            "function package",
            |m| match m.part {
                Some(deploy_function_request::Part::Chunk(c)) => Some(c),
                _ => None,
            },
            |head| crate::package::check_format(head).map_err(ApiError::from),
        )
        .await?;
        let package_limits = PackageLimits {
            max_unpacked_bytes: limits.max_package_bytes * 4,
            max_entries: 20_000,
        };
        let package = tokio::task::spawn_blocking(move || normalize(&upload, package_limits))
            .await
            .map_err(|e| Status::internal(format!("package check panicked: {e}")))?
            .map_err(ApiError::from)?;
        let existing: Option<Function> = self
            .store
            .get(Kind::Function, &spec.name)
            .await
            .map_err(ApiError::from)?;
        let version = existing.as_ref().map(|f| f.version + 1).unwrap_or(1);
        let package_size = package.len() as u64;
        let (_repository, digest) = self
            .registry
            .push_package(&spec.name, version, package.into())
            .await
            .map_err(ApiError::from)?;
        let now = now_ms();
        let function = Function {
            name: spec.name.clone(),
            runtime: spec.runtime,
            handler: if spec.handler.is_empty() {
                DEFAULT_HANDLER.into()
            } else {
                spec.handler
            },
            memory_bytes: if spec.memory_bytes == 0 {
                limits.default_memory_bytes
            } else {
                spec.memory_bytes
            },
            timeout_ms: if spec.timeout_ms == 0 {
                limits.default_timeout.as_millis() as u64
            } else {
                spec.timeout_ms
            },
            env: spec.env,
            idempotent: spec.idempotent,
            package_digest: digest,
            package_size,
            version,
            created_at_ms: existing.as_ref().map(|f| f.created_at_ms).unwrap_or(now),
            updated_at_ms: now,
        };
        self.store
            .put(Kind::Function, &function.name, &function)
            .await
            .map_err(ApiError::from)?;
        info!(function = %function.name, version, digest = %function.package_digest, "function deployed");
        Ok(Response::new(function))
    }

    async fn get_function(
        &self,
        request: Request<GetFunctionRequest>,
    ) -> Result<Response<Function>, Status> {
        let name = request.into_inner().name;
        let function: Option<Function> = self
            .store
            .get(Kind::Function, &name)
            .await
            .map_err(ApiError::from)?;
        function
            .map(Response::new)
            .ok_or_else(|| ApiError::NotFound(format!("function {name:?} not found")).into())
    }

    async fn list_functions(
        &self,
        request: Request<ListFunctionsRequest>,
    ) -> Result<Response<ListFunctionsResponse>, Status> {
        let runtime = request.into_inner().runtime;
        let mut functions: Vec<Function> = self
            .store
            .list(Kind::Function)
            .await
            .map_err(ApiError::from)?;
        if !runtime.is_empty() {
            functions.retain(|f| f.runtime == runtime);
        }
        Ok(Response::new(ListFunctionsResponse { functions }))
    }

    async fn delete_function(
        &self,
        request: Request<DeleteFunctionRequest>,
    ) -> Result<Response<DeleteFunctionResponse>, Status> {
        let name = request.into_inner().name;
        if !self
            .store
            .delete(Kind::Function, &name)
            .await
            .map_err(ApiError::from)?
        {
            return Err(ApiError::NotFound(format!("function {name:?} not found")).into());
        }
        info!(function = %name, "function deleted");
        Ok(Response::new(DeleteFunctionResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names() {
        assert!(check_env_name("API_KEY").is_ok());
        assert!(check_env_name("FAAS_INPUT").is_err());
        assert!(check_env_name("1X").is_err());
        assert!(check_env_name("A=B").is_err());
    }
}
