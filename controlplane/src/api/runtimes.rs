use faas_proto::v1::runtime_service_server::RuntimeService;
use faas_proto::v1::{
    register_runtime_request, DeleteRuntimeRequest, DeleteRuntimeResponse, Function,
    GetRuntimeRequest, ListRuntimesRequest, ListRuntimesResponse, RegisterRuntimeRequest, Runtime,
};
use futures::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::info;

use super::{read_upload, Api};
use crate::error::{check_name, now_ms, ApiError};
use crate::store::Kind;

/// Most bytes of a runtime's build command.
const MAX_BUILD_COMMAND: usize = 4096;

/// A build command runs as `exec <command>` in a shell: any text, but
/// bounded and without NUL or control characters other than tab.
fn check_build_command(command: &str) -> Result<(), ApiError> {
    if command.len() > MAX_BUILD_COMMAND {
        return Err(ApiError::InvalidArgument(format!(
            "the runtime's build command is {} bytes, over the limit of {MAX_BUILD_COMMAND}",
            command.len()
        )));
    }
    if command.chars().any(|c| c.is_control() && c != '\t') {
        return Err(ApiError::InvalidArgument(
            "the runtime's build command has control characters".into(),
        ));
    }
    Ok(())
}

/// Image archives this replica takes in at once: an upload is held in
/// memory (up to max_image_bytes) while its blobs are pushed, so two at a
/// time would double the worst case. Registrations are rare (an operator's
/// act); a second one waits its turn.
static IMAGE_UPLOAD: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// How long a registration refused for a busy upload slot is told to wait.
const IMAGE_UPLOAD_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

#[tonic::async_trait]
impl RuntimeService for Api {
    async fn register_runtime(
        &self,
        request: Request<Streaming<RegisterRuntimeRequest>>,
    ) -> Result<Response<Runtime>, Status> {
        let mut stream = request.into_inner();
        let spec = match stream.next().await {
            Some(Ok(RegisterRuntimeRequest {
                part: Some(register_runtime_request::Part::Spec(spec)),
            })) => spec,
            Some(Err(e)) => return Err(e),
            _ => {
                return Err(ApiError::InvalidArgument(
                    "the first message must carry the runtime spec".into(),
                )
                .into())
            }
        };
        check_name("runtime", &spec.name)?;
        if !spec.path.starts_with('/') || spec.path == "/" {
            return Err(ApiError::InvalidArgument(format!(
                "runtime path {:?} must be an absolute directory other than /",
                spec.path
            ))
            .into());
        }
        if spec.run.trim().is_empty() {
            return Err(ApiError::InvalidArgument("runtime run command is empty".into()).into());
        }
        super::functions::check_handler("default handler", &spec.default_handler)?;
        check_build_command(&spec.build)?;
        let existing: Option<Runtime> = self
            .store
            .get(Kind::Runtime, &spec.name)
            .await
            .map_err(ApiError::from)?;
        if existing.is_some() && !spec.replace {
            return Err(ApiError::AlreadyExists(format!(
                "runtime {:?} already exists (use replace to update it)",
                spec.name
            ))
            .into());
        }
        // Taken before the upload is read (a reference needs no upload).
        let _slot = if spec.image_ref.is_empty() {
            Some(IMAGE_UPLOAD.try_acquire().map_err(|_| ApiError::Overloaded {
                message: "another runtime image archive is being registered on this replica; retry shortly".into(),
                retry_after: IMAGE_UPLOAD_RETRY_AFTER,
            })?)
        } else {
            None
        };
        let archive = read_upload(
            &mut stream,
            self.limits.max_image_bytes,
            "image archive",
            |m| match m.part {
                Some(register_runtime_request::Part::Chunk(c)) => Some(c),
                _ => None,
            },
            |head| {
                // Both accepted forms are plain tar files: "ustar" at 257.
                if head.len() >= 262 && &head[257..262] == b"ustar" {
                    Ok(())
                } else {
                    Err(ApiError::InvalidArgument(
                        "the image archive is not a tar file (expected an OCI image layout or `docker save` output)"
                            .into(),
                    ))
                }
            },
        )
        .await?;
        let image = match (spec.image_ref.is_empty(), archive.is_empty()) {
            (false, true) => self
                .registry
                .resolve(&spec.image_ref)
                .await
                .map_err(ApiError::from)?,
            (true, false) => self
                .registry
                .push_image_archive(&spec.name, &archive)
                .await
                .map_err(ApiError::from)?,
            (false, false) => {
                return Err(ApiError::InvalidArgument(
                    "give either an image reference or an image archive, not both".into(),
                )
                .into())
            }
            (true, true) => {
                return Err(ApiError::InvalidArgument(
                    "no image: give an image archive or an image reference".into(),
                )
                .into())
            }
        };
        let runtime = Runtime {
            name: spec.name.clone(),
            image: image.reference,
            path: spec.path.trim_end_matches('/').to_string(),
            dependencies: spec.dependencies,
            run: spec.run,
            image_digest: image.digest,
            created_at_ms: existing.map(|r| r.created_at_ms).unwrap_or_else(now_ms),
            default_handler: spec.default_handler,
            build: spec.build,
            build_only_with_dependencies: spec.build_only_with_dependencies,
        };
        self.store
            .put(Kind::Runtime, &runtime.name, &runtime)
            .await
            .map_err(ApiError::from)?;
        info!(runtime = %runtime.name, image = %runtime.image, "runtime registered");
        Ok(Response::new(runtime))
    }

    async fn get_runtime(
        &self,
        request: Request<GetRuntimeRequest>,
    ) -> Result<Response<Runtime>, Status> {
        let name = request.into_inner().name;
        let runtime: Option<Runtime> = self
            .store
            .get(Kind::Runtime, &name)
            .await
            .map_err(ApiError::from)?;
        runtime
            .map(Response::new)
            .ok_or_else(|| ApiError::NotFound(format!("runtime {name:?} not found")).into())
    }

    async fn list_runtimes(
        &self,
        _request: Request<ListRuntimesRequest>,
    ) -> Result<Response<ListRuntimesResponse>, Status> {
        let runtimes = self
            .store
            .list(Kind::Runtime)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(ListRuntimesResponse { runtimes }))
    }

    async fn delete_runtime(
        &self,
        request: Request<DeleteRuntimeRequest>,
    ) -> Result<Response<DeleteRuntimeResponse>, Status> {
        let name = request.into_inner().name;
        let functions: Vec<Function> = self
            .store
            .list(Kind::Function)
            .await
            .map_err(ApiError::from)?;
        let users: Vec<&str> = functions
            .iter()
            .filter(|f| f.runtime == name)
            .map(|f| f.name.as_str())
            .collect();
        if !users.is_empty() {
            return Err(ApiError::FailedPrecondition(format!(
                "runtime {name:?} is used by functions: {}; delete them first",
                users.join(", ")
            ))
            .into());
        }
        if !self
            .store
            .delete(Kind::Runtime, &name)
            .await
            .map_err(ApiError::from)?
        {
            return Err(ApiError::NotFound(format!("runtime {name:?} not found")).into());
        }
        info!(runtime = %name, "runtime deleted");
        Ok(Response::new(DeleteRuntimeResponse {}))
    }
}
