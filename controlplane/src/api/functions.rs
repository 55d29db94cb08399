use faas_proto::v1::function_service_client::FunctionServiceClient;
use faas_proto::v1::function_service_server::FunctionService;
use faas_proto::v1::{
    deploy_function_request, deploy_progress, network_policy, BuildJob, BuildPart,
    DeleteAliasRequest, DeleteAliasResponse, DeleteFunctionRequest, DeleteFunctionResponse,
    DependencyBuild, DeployFunctionRequest, DeployProgress, Function, FunctionAlias,
    GetFunctionRequest, HttpAccess, ListAliasesRequest, ListAliasesResponse,
    ListFunctionVersionsRequest, ListFunctionVersionsResponse, ListFunctionsRequest,
    ListFunctionsResponse, NetworkPolicy, RollbackFunctionRequest, Runtime, RuntimeBundle,
    SecretRef, SetAliasRequest,
};
use std::sync::OnceLock;

use tokio_stream::wrappers::ReceiverStream;

use futures::StreamExt;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use super::{read_package, Api};
use crate::auth::Principal;
use crate::broker::BuildEvent;
use crate::error::{check_name, now_ms, ApiError};
use crate::package::{normalize, PackageError};
use crate::store::Kind;

/// Where a deploy tells its progress (DeployFunctionWithProgress); the
/// final message (the function, or the status) goes there too.
type Progress = tokio::sync::mpsc::Sender<Result<DeployProgress, Status>>;

/// Most build output a deploy relays to its client (the node bounds it
/// too, by its log bound).
const MAX_RELAYED_LOG: usize = 4 << 20;

pub const DEFAULT_HANDLER: &str = "handler.handler";

/// Longest handler setting accepted (Lambda's bound is 128 characters;
/// a path to the module can make it longer here).
const MAX_HANDLER_BYTES: usize = 256;

/// A handler setting travels in the environment file (NUL-separated) and
/// is printed by `fn get`: bounded, without control characters.
pub fn check_handler(what: &str, handler: &str) -> Result<(), ApiError> {
    if handler.len() > MAX_HANDLER_BYTES {
        return Err(ApiError::InvalidArgument(format!(
            "{what} is {} bytes, over the limit of {MAX_HANDLER_BYTES}",
            handler.len()
        )));
    }
    if handler.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ApiError::InvalidArgument(format!(
            "{what} {handler:?} has whitespace or control characters (expected e.g. module.function)"
        )));
    }
    Ok(())
}

/// The /tmp of a function deployed without one (the agent's default too).
pub const DEFAULT_TMP_BYTES: u64 = 64 << 20;

/// The settings an update mask may name (FunctionSpec.update_mask).
const MASKABLE: [&str; 12] = [
    "package",
    "runtime",
    "handler",
    "memory_bytes",
    "timeout_ms",
    "env",
    "secrets",
    "network",
    "http",
    "idempotent",
    "tmp_bytes",
    "layers",
];

/// Completes `spec` from the function's current version for every setting
/// its update mask leaves out (the platform's defaults when there is no
/// current version), so that a deploy or a configuration update changes
/// only what it names. Returns whether a package follows. An empty mask
/// keeps the behaviour from before masks: the spec is the whole function.
pub fn apply_update_mask(
    spec: &mut faas_proto::v1::FunctionSpec,
    current: Option<&Function>,
) -> Result<bool, ApiError> {
    if spec.update_mask.is_empty() {
        return Ok(true);
    }
    let mut named = std::collections::HashSet::new();
    let mut env_names = Vec::new();
    for entry in &spec.update_mask {
        if let Some(name) = entry.strip_prefix("env.") {
            check_env_name(name)?;
            env_names.push(name.to_string());
        } else if MASKABLE.contains(&entry.as_str()) {
            named.insert(entry.as_str());
        } else {
            return Err(ApiError::InvalidArgument(format!(
                "update mask entry {entry:?} is not one of {} or env.<NAME>",
                MASKABLE.join(", ")
            )));
        }
    }
    let keep = |field: &str| !named.contains(field);
    let given_env = std::mem::take(&mut spec.env);
    if let Some(current) = current {
        if keep("runtime") {
            spec.runtime = current.runtime.clone();
        }
        if keep("handler") {
            spec.handler = current.handler.clone();
        }
        if keep("memory_bytes") {
            spec.memory_bytes = current.memory_bytes;
        }
        if keep("tmp_bytes") {
            spec.tmp_bytes = current.tmp_bytes;
        }
        if keep("layers") {
            // The versions it uses, named exactly: a layer published since
            // changes nothing until the function names it again.
            spec.layers = current
                .layers
                .iter()
                .map(|l| format!("{}:{}", l.name, l.version))
                .collect();
        }
        if keep("timeout_ms") {
            spec.timeout_ms = current.timeout_ms;
        }
        if keep("idempotent") {
            spec.idempotent = current.idempotent;
        }
        if keep("secrets") {
            spec.secrets = current.secrets.clone();
        }
        if keep("network") {
            spec.network = current.network.clone();
        }
        if keep("http") {
            spec.http = current.http;
        }
        if keep("env") {
            spec.env = current.env.clone();
        }
    } else if keep("package") {
        return Err(ApiError::NotFound(format!(
            "function {:?} not found: a configuration-only update needs a deployed function (deploy it with a package first)",
            spec.name
        )));
    } else if keep("runtime") {
        return Err(ApiError::InvalidArgument(format!(
            "function {:?} does not exist yet: its first deploy names a runtime",
            spec.name
        )));
    }
    if !keep("env") {
        spec.env = given_env.clone();
    }
    for name in env_names {
        match given_env.get(&name) {
            Some(value) => spec.env.insert(name, value.clone()),
            None => spec.env.remove(&name),
        };
    }
    Ok(named.contains("package"))
}

/// The handler a function deployed without one gets: its runtime's own
/// default (Node's is `index.handler`, as on Lambda), else
/// [`DEFAULT_HANDLER`].
pub fn default_handler_of(runtime: &Runtime) -> &str {
    if runtime.default_handler.is_empty() {
        DEFAULT_HANDLER
    } else {
        &runtime.default_handler
    }
}

/// How long a deploy refused for lack of a slot is told to wait: about
/// what checking and storing one package takes.
const DEPLOY_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Deploys this replica checks at once. Each one holds its upload (up to
/// max_package_bytes) and its normalized package in memory and spools the
/// unpacked files to disk: the bound keeps a burst of deploys from taking
/// the control plane's memory and disk. Sized on first use from the
/// settings (one API per process).
fn deploy_slots(size: usize) -> &'static Semaphore {
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    SLOTS.get_or_init(|| Semaphore::new(size))
}

/// A package refused: too big or too many entries is RESOURCE_EXHAUSTED
/// (the message names the limit), a malformed one INVALID_ARGUMENT.
pub(super) fn package_error(what: &str, e: PackageError) -> ApiError {
    if e.is_over_limit() {
        ApiError::ResourceExhausted(format!("invalid {what}: {e}"))
    } else if what == "function package" {
        ApiError::Package(e)
    } else {
        ApiError::InvalidArgument(format!("invalid {what}: {e}"))
    }
}

/// A deploy slot (see [`deploy_slots`]), or RESOURCE_EXHAUSTED with a
/// retry delay: taken before an upload is read, so a refused one costs
/// nothing.
pub(super) fn deploy_slot(
    limits: &crate::config::Limits,
) -> Result<tokio::sync::SemaphorePermit<'static>, ApiError> {
    deploy_slots(limits.package.max_concurrent_deploys())
        .try_acquire()
        .map_err(|_| ApiError::Overloaded {
            message: format!(
                "too many deploys in progress (limit package.max_concurrent_deploys = {}); retry shortly",
                limits.package.max_concurrent_deploys()
            ),
            retry_after: DEPLOY_RETRY_AFTER,
        })
}

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
    // What describes the function to Lambda code, set by the agent (as
    // Lambda reserves them). AWS_REGION, TZ and the logging settings
    // (AWS_LAMBDA_LOG_LEVEL, AWS_LAMBDA_LOG_FORMAT) stay the function's.
    if matches!(
        key,
        "_HANDLER"
            | "LAMBDA_TASK_ROOT"
            | "AWS_LAMBDA_FUNCTION_NAME"
            | "AWS_LAMBDA_FUNCTION_VERSION"
            | "AWS_LAMBDA_FUNCTION_MEMORY_SIZE"
            | "AWS_LAMBDA_LOG_GROUP_NAME"
            | "AWS_LAMBDA_LOG_STREAM_NAME"
            | "AWS_EXECUTION_ENV"
    ) {
        return Err(ApiError::InvalidArgument(format!(
            "environment variable {key:?} is reserved: the platform sets it (see docs/contract.md)"
        )));
    }
    Ok(())
}

/// A variable reaches the call as a C string, through a NUL-separated
/// env file: a NUL would cut the value and start another variable.
fn check_env_value(key: &str, value: &str) -> Result<(), ApiError> {
    if value.contains('\0') {
        return Err(ApiError::InvalidArgument(format!(
            "environment variable {key:?}: its value holds a NUL byte"
        )));
    }
    Ok(())
}

/// A function's network policy, checked as the agent will read it: an
/// allowlist only with egress, each entry well formed and reachable at
/// all. Stored as given (entries trimmed), None for no network.
fn check_network(
    policy: Option<faas_proto::v1::NetworkPolicy>,
) -> Result<Option<faas_proto::v1::NetworkPolicy>, ApiError> {
    use faas_proto::v1::network_policy::Mode;
    let Some(mut policy) = policy else {
        return Ok(None);
    };
    match policy.mode() {
        Mode::None if policy.allow.is_empty() => Ok(None),
        Mode::None => Err(ApiError::InvalidArgument(
            "an allowlist needs egress (--network egress)".into(),
        )),
        Mode::Egress => {
            faas_egress::allow::parse_all(&policy.allow)
                .map_err(|e| ApiError::InvalidArgument(format!("--allow {e}")))?;
            policy.allow = policy.allow.iter().map(|a| a.trim().to_string()).collect();
            Ok(Some(policy))
        }
    }
}

impl Api {
    /// The namespace's quota (all zero: no bound of its own); NOT_FOUND
    /// unless the namespace exists. One lookup, for the submit path.
    pub(super) fn namespace_quota(
        &self,
        namespace: &str,
    ) -> Result<faas_proto::v1::NamespaceQuota, ApiError> {
        match self.tenants.get(namespace) {
            Some(ns) => Ok(ns.quota.unwrap_or_default()),
            None => Err(ApiError::NotFound(format!(
                "namespace {namespace:?} does not exist (an admin creates it: faasctl namespace create {namespace})"
            ))),
        }
    }

    /// NOT_FOUND unless the namespace exists.
    pub(super) fn check_namespace_exists(&self, namespace: &str) -> Result<(), ApiError> {
        self.namespace_quota(namespace).map(|_| ())
    }

    /// The secrets a deploy references, checked (names, env variables that
    /// collide with none of the function's own, each secret existing in
    /// the namespace), each with the secret's current version.
    pub(super) async fn check_secret_refs(
        &self,
        namespace: &str,
        mut refs: Vec<SecretRef>,
        env: &std::collections::HashMap<String, String>,
    ) -> Result<Vec<SecretRef>, ApiError> {
        use crate::secrets::MAX_SECRETS_PER_FUNCTION;
        if refs.len() > MAX_SECRETS_PER_FUNCTION {
            return Err(ApiError::InvalidArgument(format!(
                "a function references at most {MAX_SECRETS_PER_FUNCTION} secrets"
            )));
        }
        let mut names = std::collections::HashSet::new();
        let mut envs = std::collections::HashSet::new();
        for reference in &mut refs {
            check_name("secret", &reference.name)?;
            if !names.insert(reference.name.clone()) {
                return Err(ApiError::InvalidArgument(format!(
                    "secret {:?} is referenced twice",
                    reference.name
                )));
            }
            if !reference.env.is_empty() {
                check_env_name(&reference.env)?;
                if env.contains_key(&reference.env) || !envs.insert(reference.env.clone()) {
                    return Err(ApiError::InvalidArgument(format!(
                        "environment variable {:?} is set twice (by --env or another secret)",
                        reference.env
                    )));
                }
            }
            let key = crate::secrets::secret_key(namespace, &reference.name);
            let stored: Option<faas_proto::v1::SecretRecord> =
                self.store.get(Kind::Secret, &key).await?;
            let Some(meta) = stored.and_then(|r| r.meta) else {
                return Err(ApiError::FailedPrecondition(format!(
                    "secret {:?} does not exist in namespace {namespace:?} (faasctl secret create)",
                    reference.name
                )));
            };
            reference.version = meta.version;
        }
        Ok(refs)
    }

    /// RESOURCE_EXHAUSTED if the namespace holds as many functions as its
    /// quota allows. Two deploys of new functions at once may both pass
    /// the last place: the bound is checked, not reserved.
    /// Sends a deploy this replica cannot build to the leader, the spec
    /// first and then the rest of the upload as it arrives.
    async fn forward_deploy(
        &self,
        metadata: tonic::metadata::MetadataMap,
        first: faas_proto::v1::FunctionSpec,
        rest: Streaming<DeployFunctionRequest>,
        progress: Option<Progress>,
    ) -> Result<Function, Status> {
        let channel = self.leader.channel().await?;
        let head = super::forwarded(Request::from_parts(metadata, Default::default(), ()))?;
        let (metadata, extensions, ()) = head.into_parts();
        // A broken upload ends the forwarded one: the leader refuses the
        // truncated package.
        let rest = rest
            .take_while(|m| std::future::ready(m.is_ok()))
            .filter_map(|m| std::future::ready(m.ok()));
        let messages = futures::stream::once(std::future::ready(DeployFunctionRequest {
            part: Some(deploy_function_request::Part::Spec(first)),
        }))
        .chain(rest);
        let mut client = FunctionServiceClient::new(channel);
        let Some(progress) = progress else {
            return client
                .deploy_function(Request::from_parts(metadata, extensions, messages))
                .await
                .map(Response::into_inner)
                .map_err(super::forward_failed);
        };
        // The leader's progress, relayed; its last message is the outcome.
        let mut events = client
            .deploy_function_with_progress(Request::from_parts(metadata, extensions, messages))
            .await
            .map_err(super::forward_failed)?
            .into_inner();
        while let Some(event) = events.message().await.map_err(super::forward_failed)? {
            match event.event {
                Some(deploy_progress::Event::Function(function)) => return Ok(function),
                Some(event) => {
                    let _ = progress
                        .send(Ok(DeployProgress { event: Some(event) }))
                        .await;
                }
                None => {}
            }
        }
        Err(ApiError::Unavailable(
            "the leader ended the deploy without its outcome; see `faasctl fn get`".into(),
        )
        .into())
    }

    /// Runs the runtime's build on a node: the package as uploaded goes in,
    /// the package as built comes out (dependencies merged in, bytecode
    /// made). The dependency layer is reused when the cache has it, and
    /// stored when the build made it.
    async fn build_package(
        &self,
        namespace: &str,
        key: &str,
        runtime: &Runtime,
        source: Vec<u8>,
        limits: crate::package::PackageLimits,
        progress: Option<&Progress>,
    ) -> Result<(Vec<u8>, Option<DependencyBuild>), Status> {
        let settings = &self.limits.build;
        let broker = self.broker()?;
        let (files, source) =
            tokio::task::spawn_blocking(move || (crate::build::dependency_files(&source), source))
                .await
                .map_err(|e| Status::internal(format!("reading the package panicked: {e}")))?;
        let files = files.map_err(|e| {
            ApiError::InvalidArgument(format!("reading the package's dependency files: {e}"))
        })?;
        if files.is_empty() && runtime.build_only_with_dependencies {
            // Nothing to install, and nothing else the build does.
            return Ok((source, None));
        }
        let deps_key = (!files.is_empty()).then(|| {
            crate::build::cache_key(
                namespace,
                &runtime.image_digest,
                &runtime.build,
                &settings.sources(),
                &files,
            )
        });
        let cached = match &deps_key {
            Some(k) => self.registry.find_deps(namespace, k).await,
            None => None,
        };
        // Kept for a deploy that goes on without its build (shared, not
        // copied).
        let source = bytes::Bytes::from(source);
        let uploaded = source.clone();
        let (repository, digest) = self
            .registry
            .push_package_blob(key, source)
            .await
            .map_err(ApiError::from)?;
        let host = self.registry.host();
        // The network only to install, and then only to the index.
        let network = (deps_key.is_some() && cached.is_none()).then(|| NetworkPolicy {
            mode: network_policy::Mode::Egress as i32,
            allow: settings.allow(),
        });
        let job = BuildJob {
            build_id: uuid::Uuid::now_v7().simple().to_string(),
            runtime: Some(RuntimeBundle {
                name: runtime.name.clone(),
                image: runtime.image.clone(),
                path: runtime.path.clone(),
                dependencies: runtime.dependencies.clone(),
                run: runtime.run.clone(),
            }),
            command: runtime.build.clone(),
            package_repository: format!("{host}/{repository}"),
            package_digest: digest,
            deps_repository: cached
                .as_ref()
                .map(|(r, _)| format!("{host}/{r}"))
                .unwrap_or_default(),
            deps_digest: cached.as_ref().map(|(_, d)| d.clone()).unwrap_or_default(),
            env: settings.env().into_iter().collect(),
            network,
            timeout_ms: settings.timeout().as_millis() as u64,
            memory_bytes: settings.memory_bytes(),
            max_output_bytes: settings.max_output_bytes(),
            registry_token: String::new(),
            stream_log: progress.is_some(),
        };
        let build_id = job.build_id.clone();
        info!(function = %key, %build_id, cached = cached.is_some(), "build started");
        let mut events = broker.build(job);
        // What comes back is held in memory until checked: never more than
        // twice what the registry may store of a package (the node
        // compresses faster, not as tightly, as the check does).
        let max = settings
            .max_output_bytes()
            .min(limits.max_normalized_bytes.saturating_mul(2));
        let mut node = String::new();
        let (mut package, mut deps) = (Vec::new(), Vec::new());
        // The output relayed so far: BuildDone's log completes it.
        let mut relayed: Vec<u8> = Vec::new();
        let tell = |event: deploy_progress::Event| async move {
            if let Some(progress) = progress {
                let _ = progress
                    .send(Ok(DeployProgress { event: Some(event) }))
                    .await;
            }
        };
        // The image and the package are fetched first: some room for them.
        let wait = settings.timeout() + std::time::Duration::from_secs(120);
        let ended = tokio::time::timeout(wait, async {
            while let Some(event) = events.recv().await {
                match event {
                    BuildEvent::Started { node: n } => {
                        tell(deploy_progress::Event::BuildStartedOn(n.clone())).await;
                        node = n;
                    }
                    BuildEvent::Output(o) if o.part == BuildPart::Log as i32 => {
                        if progress.is_some() && relayed.len() + o.data.len() <= MAX_RELAYED_LOG {
                            relayed.extend_from_slice(&o.data);
                            tell(deploy_progress::Event::BuildLog(o.data)).await;
                        }
                    }
                    BuildEvent::Output(o) => {
                        let into = if o.part == BuildPart::Deps as i32 {
                            &mut deps
                        } else {
                            &mut package
                        };
                        if (into.len() + o.data.len()) as u64 > max {
                            return Err(ApiError::ResourceExhausted(format!(
                                "the build's output archive is over {max} bytes (limits build.max_output_bytes and 2 × package.max_normalized_bytes)"
                            )));
                        }
                        into.extend_from_slice(&o.data);
                    }
                    BuildEvent::Done(done) => {
                        // What the live output missed (its last moments).
                        if progress.is_some() && done.log.starts_with(&relayed) {
                            let rest = done.log[relayed.len()..].to_vec();
                            if !rest.is_empty() {
                                tell(deploy_progress::Event::BuildLog(rest)).await;
                            }
                        }
                        return Ok(Ok(done));
                    }
                    BuildEvent::Lost(why) => return Ok(Err(why)),
                }
            }
            Err(ApiError::Unavailable(
                "the leader stopped during the build; deploy again".into(),
            ))
        })
        .await
        .map_err(|_| {
            ApiError::DeadlineExceeded(format!(
                "no answer from the build within {wait:?} (limit build.timeout_secs)"
            ))
        })??;
        let ended = match ended {
            Ok(done) => done,
            // Without dependencies the build only makes bytecode: a deploy
            // while no node is there goes on without it.
            Err(why) if deps_key.is_none() => {
                warn!(function = %key, %why, "no build ran; the package is stored without bytecode");
                let build = DependencyBuild {
                    skipped: why,
                    ..Default::default()
                };
                return Ok((uploaded.into(), Some(build)));
            }
            Err(why) => {
                return Err(ApiError::Unavailable(format!(
                    "the build of the function's dependencies did not run: {why}"
                ))
                .into())
            }
        };
        if !ended.succeeded {
            let tail = crate::build::log_tail(&ended.log, 40, 8 << 10);
            return Err(ApiError::FailedPrecondition(format!(
                "the build failed on node {node}: {}\n--- build log (last lines) ---\n{tail}",
                ended.error
            ))
            .into());
        }
        // What the build wrote is checked as any upload. A layer is kept
        // only when dependencies were declared and installed here.
        let wants_layer = deps_key.is_some() && cached.is_none();
        let checked = tokio::task::spawn_blocking(move || {
            let package = normalize(&package, limits).map_err(|e| ("package", e))?;
            let deps = if !wants_layer {
                None
            } else {
                Some(normalize(&deps, limits).map_err(|e| ("dependency layer", e))?)
            };
            Ok::<_, (&str, PackageError)>((package, deps))
        })
        .await
        .map_err(|e| Status::internal(format!("package check panicked: {e}")))?;
        let (package, deps) = checked.map_err(|(what, e)| {
            let message = format!("the built {what}: {e}");
            if e.is_over_limit() {
                ApiError::ResourceExhausted(message)
            } else {
                ApiError::FailedPrecondition(message)
            }
        })?;
        let was_cached = cached.is_some();
        let dependencies_digest = match (&deps_key, deps, cached) {
            (_, _, Some((_, digest))) => digest,
            (Some(k), Some(layer), None) => {
                let (_, digest) = self
                    .registry
                    .push_deps(namespace, k, layer.into())
                    .await
                    .map_err(ApiError::from)?;
                digest
            }
            _ => String::new(),
        };
        let build = DependencyBuild {
            has_dependencies: deps_key.is_some(),
            dependencies_cached: was_cached,
            dependencies_digest,
            build_ms: ended.build_ms,
            node,
            skipped: String::new(),
        };
        Ok((package, Some(build)))
    }

    async fn check_function_quota(&self, namespace: &str) -> Result<(), ApiError> {
        let max = self.tenants.quota(namespace).max_functions;
        if max == 0 {
            return Ok(());
        }
        let functions: Vec<Function> = self.store.list(Kind::Function).await?;
        let held = functions
            .iter()
            .filter(|f| f.namespace_name() == namespace)
            .count() as u64;
        if held >= max {
            return Err(ApiError::ResourceExhausted(format!(
                "namespace {namespace:?} holds {held} functions, its quota (max_functions) is {max}: delete one, or ask an admin to raise it"
            )));
        }
        Ok(())
    }
}

impl Api {
    /// A deploy (DeployFunction), telling its progress to `progress` if
    /// given (DeployFunctionWithProgress).
    async fn deploy(
        &self,
        request: Request<Streaming<DeployFunctionRequest>>,
        progress: Option<Progress>,
    ) -> Result<Function, Status> {
        let principal = Principal::of(&request);
        // Kept to forward the deploy to the leader, if it needs a build.
        let metadata = request.metadata().clone();
        let mut stream = request.into_inner();
        let mut spec = match stream.next().await {
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
        let first = spec.clone();
        let namespace = principal.check_namespace(&spec.namespace)?.to_string();
        self.check_namespace_exists(&namespace)?;
        let key = faas_proto::namespaces::function_key(&namespace, &spec.name);
        let limits = &self.limits;
        // Taken before the upload is read: a refused deploy costs nothing.
        let _slot = deploy_slot(limits)?;
        // Read with its revision: the new version is written only over
        // this one (a concurrent deploy of the same function would make a
        // second, different record of the same version number).
        let (existing, existing_revision) = match self
            .store
            .get_versioned::<Function>(Kind::Function, &key)
            .await
            .map_err(ApiError::from)?
        {
            Some((function, revision)) => (Some(function), revision),
            // etcd compares a missing key's revision as 0.
            None => (None, 0),
        };
        let with_package = apply_update_mask(&mut spec, existing.as_ref())?;
        if spec.memory_bytes != 0
            && !(16 << 20..=limits.max_memory_bytes).contains(&spec.memory_bytes)
        {
            return Err(ApiError::InvalidArgument(format!(
                "memory {} bytes is outside the allowed range 16 MiB..{} bytes",
                spec.memory_bytes, limits.max_memory_bytes
            ))
            .into());
        }
        if spec.tmp_bytes != 0 && !(1 << 20..=limits.max_tmp_bytes).contains(&spec.tmp_bytes) {
            return Err(ApiError::InvalidArgument(format!(
                "/tmp of {} bytes is outside the allowed range 1 MiB..{} bytes (the control plane's max_tmp_bytes)",
                spec.tmp_bytes, limits.max_tmp_bytes
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
        check_handler("handler", &spec.handler)?;
        for (key, value) in &spec.env {
            check_env_name(key)?;
            check_env_value(key, value)?;
        }
        super::check_env_bytes(&spec.env, limits.max_env_bytes)?;
        let network = check_network(spec.network.take())?;
        let http = match HttpAccess::try_from(spec.http) {
            Ok(HttpAccess::Public) => HttpAccess::Public,
            Ok(HttpAccess::Private | HttpAccess::Unspecified) => HttpAccess::Private,
            Err(_) => {
                return Err(ApiError::InvalidArgument(format!(
                    "http access {} is not one of private or public",
                    spec.http
                ))
                .into())
            }
        };
        let secrets = self
            .check_secret_refs(&namespace, std::mem::take(&mut spec.secrets), &spec.env)
            .await?;
        let layers = self.resolve_layers(&namespace, &spec.layers).await?;
        let runtime: Option<Runtime> = self
            .store
            .get(Kind::Runtime, &spec.runtime)
            .await
            .map_err(ApiError::from)?;
        let Some(runtime) = runtime else {
            return Err(ApiError::NotFound(format!(
                "runtime {:?} not found (see `faasctl runtime ls`)",
                spec.runtime
            ))
            .into());
        };
        let builds = with_package && !runtime.build.trim().is_empty();
        if builds && self.broker().is_err() {
            // Builds run on the nodes, whose streams end at the leader.
            drop(_slot);
            return self.forward_deploy(metadata, first, stream, progress).await;
        }
        if existing.is_none() {
            self.check_function_quota(&namespace).await?;
        }
        let version = existing.as_ref().map(|f| f.version + 1).unwrap_or(1);
        // What the build did; a configuration-only update keeps the
        // current version's (a new package sets it below).
        let mut built = if with_package {
            None
        } else {
            existing.as_ref().and_then(|f| f.build.clone())
        };
        let (digest, package_size) = match (&existing, with_package) {
            (_, true) => {
                let package = read_package(&mut stream, limits, "function package", |m| {
                    match m.part {
                        Some(deploy_function_request::Part::Chunk(c)) => Some(c),
                        _ => None,
                    }
                })
                .await?;
                let package_limits = limits.package.limits(limits.max_package_bytes);
                let package = if builds {
                    let (package, build) = self
                        .build_package(
                            &namespace,
                            &key,
                            &runtime,
                            package,
                            package_limits,
                            progress.as_ref(),
                        )
                        .await?;
                    built = build;
                    package
                } else {
                    package
                };
                let package_size = package.len() as u64;
                let (_repository, digest) = self
                    .registry
                    .push_package(&key, version, package.into())
                    .await
                    .map_err(ApiError::from)?;
                (digest, package_size)
            }
            (Some(current), false) => {
                // The same package under the new version's own manifest
                // (the older version's goes below).
                self.registry
                    .tag_package(
                        &key,
                        version,
                        &current.package_digest,
                        current.package_size,
                    )
                    .await
                    .map_err(ApiError::from)?;
                (current.package_digest.clone(), current.package_size)
            }
            (None, false) => {
                return Err(ApiError::NotFound(format!(
                    "function {:?} not found in namespace {namespace:?}: a configuration-only update needs a deployed function (deploy it with a package first)",
                    spec.name
                ))
                .into())
            }
        };
        let now = now_ms();
        let function = Function {
            name: spec.name.clone(),
            runtime: spec.runtime,
            handler: if spec.handler.is_empty() {
                default_handler_of(&runtime).into()
            } else {
                spec.handler
            },
            memory_bytes: if spec.memory_bytes == 0 {
                limits.default_memory_bytes
            } else {
                spec.memory_bytes
            },
            tmp_bytes: if spec.tmp_bytes == 0 {
                DEFAULT_TMP_BYTES
            } else {
                spec.tmp_bytes
            },
            timeout_ms: if spec.timeout_ms == 0 {
                limits.default_timeout.as_millis() as u64
            } else {
                spec.timeout_ms
            },
            env: spec.env,
            idempotent: spec.idempotent,
            network,
            http: http as i32,
            package_digest: digest,
            package_size,
            version,
            created_at_ms: existing.as_ref().map(|f| f.created_at_ms).unwrap_or(now),
            updated_at_ms: now,
            namespace,
            secrets,
            build: built,
            layers,
        };
        // The current record and the version's own, together, over the
        // version read.
        if !self
            .store
            .put_function(&key, &function, Some(existing_revision))
            .await
            .map_err(ApiError::from)?
        {
            // This deploy tagged the version number the winner also took:
            // the tag goes back to the winner's package (best effort; the
            // record names its blob by digest either way).
            if let Ok(Some(winner)) = self.store.get::<Function>(Kind::Function, &key).await {
                if winner.version == version {
                    let _ = self
                        .registry
                        .tag_package(&key, version, &winner.package_digest, winner.package_size)
                        .await;
                }
            }
            return Err(ApiError::Aborted(format!(
                "function {:?} was changed by another deploy while this one ran; this one was not applied: retry",
                function.name
            ))
            .into());
        }
        info!(function = %key, version, digest = %function.package_digest, "function deployed");
        self.prune_versions(&key, version).await;
        Ok(function)
    }
}

#[tonic::async_trait]
impl FunctionService for Api {
    async fn deploy_function(
        &self,
        request: Request<Streaming<DeployFunctionRequest>>,
    ) -> Result<Response<Function>, Status> {
        self.deploy(request, None).await.map(Response::new)
    }

    type DeployFunctionWithProgressStream = ReceiverStream<Result<DeployProgress, Status>>;

    async fn deploy_function_with_progress(
        &self,
        request: Request<Streaming<DeployFunctionRequest>>,
    ) -> Result<Response<Self::DeployFunctionWithProgressStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let api = self.clone();
        // Runs to its end even if the client goes: a deploy is applied
        // whole or not at all, whoever still listens.
        tokio::spawn(async move {
            let outcome = api.deploy(request, Some(tx.clone())).await;
            let last = outcome.map(|function| DeployProgress {
                event: Some(deploy_progress::Event::Function(function)),
            });
            let _ = tx.send(last).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_function(
        &self,
        request: Request<GetFunctionRequest>,
    ) -> Result<Response<Function>, Status> {
        let principal = Principal::of(&request);
        let GetFunctionRequest {
            name,
            namespace,
            qualifier,
        } = request.into_inner();
        let namespace = principal.check_namespace(&namespace)?;
        if !qualifier.is_empty() {
            return Ok(Response::new(
                self.function_at(namespace, &name, &qualifier).await?,
            ));
        }
        let key = faas_proto::namespaces::function_key(namespace, &name);
        let function: Option<Function> = self
            .store
            .get(Kind::Function, &key)
            .await
            .map_err(ApiError::from)?;
        function.map(Response::new).ok_or_else(|| {
            ApiError::NotFound(format!(
                "function {name:?} not found in namespace {namespace:?}"
            ))
            .into()
        })
    }

    async fn list_functions(
        &self,
        request: Request<ListFunctionsRequest>,
    ) -> Result<Response<ListFunctionsResponse>, Status> {
        let principal = Principal::of(&request);
        let ListFunctionsRequest { runtime, namespace } = request.into_inner();
        let scope = principal.list_scope(&namespace)?;
        let mut functions: Vec<Function> = self
            .store
            .list(Kind::Function)
            .await
            .map_err(ApiError::from)?;
        functions.retain(|f| {
            principal.lists(&scope, &f.namespace) && (runtime.is_empty() || f.runtime == runtime)
        });
        Ok(Response::new(ListFunctionsResponse { functions }))
    }

    async fn delete_function(
        &self,
        request: Request<DeleteFunctionRequest>,
    ) -> Result<Response<DeleteFunctionResponse>, Status> {
        let principal = Principal::of(&request);
        let DeleteFunctionRequest { name, namespace } = request.into_inner();
        let namespace = principal.check_namespace(&namespace)?;
        let key = faas_proto::namespaces::function_key(namespace, &name);
        if !self
            .store
            .delete(Kind::Function, &key)
            .await
            .map_err(ApiError::from)?
        {
            return Err(ApiError::NotFound(format!(
                "function {name:?} not found in namespace {namespace:?}"
            ))
            .into());
        }
        info!(function = %key, "function deleted");
        // Its versions and aliases: a function of the same name deployed
        // later starts again at version 1, with none.
        if let Err(e) = self.delete_versions(&key).await {
            warn!(function = %key, error = %e, "could not delete the function's versions and aliases");
        }
        // The record is gone, which is what the caller asked: a registry
        // that fails here leaves manifests behind, logged, not an error.
        match self.registry.remove_package_versions(&key, None).await {
            Ok(n) => {
                info!(function = %key, removed = n, "package versions removed from the registry")
            }
            Err(e) => {
                warn!(function = %key, error = %e, "could not remove the package from the registry")
            }
        }
        Ok(Response::new(DeleteFunctionResponse {}))
    }

    async fn list_function_versions(
        &self,
        request: Request<ListFunctionVersionsRequest>,
    ) -> Result<Response<ListFunctionVersionsResponse>, Status> {
        let principal = Principal::of(&request);
        Ok(Response::new(
            self.list_versions(&principal, request.into_inner()).await?,
        ))
    }

    async fn rollback_function(
        &self,
        request: Request<RollbackFunctionRequest>,
    ) -> Result<Response<Function>, Status> {
        let principal = Principal::of(&request);
        Ok(Response::new(
            self.rollback(&principal, request.into_inner()).await?,
        ))
    }

    async fn set_alias(
        &self,
        request: Request<SetAliasRequest>,
    ) -> Result<Response<FunctionAlias>, Status> {
        let principal = Principal::of(&request);
        Ok(Response::new(
            Api::set_alias(self, &principal, request.into_inner()).await?,
        ))
    }

    async fn list_aliases(
        &self,
        request: Request<ListAliasesRequest>,
    ) -> Result<Response<ListAliasesResponse>, Status> {
        let principal = Principal::of(&request);
        Ok(Response::new(
            Api::list_aliases(self, &principal, request.into_inner()).await?,
        ))
    }

    async fn delete_alias(
        &self,
        request: Request<DeleteAliasRequest>,
    ) -> Result<Response<DeleteAliasResponse>, Status> {
        let principal = Principal::of(&request);
        Ok(Response::new(
            Api::delete_alias(self, &principal, request.into_inner()).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current() -> Function {
        Function {
            name: "f".into(),
            runtime: "python3".into(),
            handler: "app.main".into(),
            memory_bytes: 256 << 20,
            timeout_ms: 9000,
            env: [("A".into(), "1".into()), ("B".into(), "2".into())].into(),
            idempotent: true,
            http: HttpAccess::Public as i32,
            package_digest: "sha256:aa".into(),
            ..Default::default()
        }
    }

    fn masked(mask: &[&str]) -> faas_proto::v1::FunctionSpec {
        faas_proto::v1::FunctionSpec {
            name: "f".into(),
            update_mask: mask.iter().map(|m| m.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn an_update_mask_changes_only_what_it_names() {
        // A configuration-only update of the memory: everything else kept.
        let mut spec = masked(&["memory_bytes"]);
        spec.memory_bytes = 512 << 20;
        assert!(!apply_update_mask(&mut spec, Some(&current())).unwrap());
        assert_eq!(spec.memory_bytes, 512 << 20);
        assert_eq!(spec.timeout_ms, 9000);
        assert_eq!(spec.handler, "app.main");
        assert_eq!(spec.runtime, "python3");
        assert!(spec.idempotent);
        assert_eq!(spec.http, HttpAccess::Public as i32);
        assert_eq!(spec.env, current().env);

        // A new package keeps the configuration.
        let mut spec = masked(&["package", "runtime"]);
        spec.runtime = "python3".into();
        assert!(apply_update_mask(&mut spec, Some(&current())).unwrap());
        assert_eq!(spec.timeout_ms, 9000);

        // env.NAME sets or removes one variable; "env" replaces them all.
        let mut spec = masked(&["env.B", "env.C"]);
        spec.env = [("C".into(), "3".into())].into();
        apply_update_mask(&mut spec, Some(&current())).unwrap();
        assert_eq!(
            spec.env,
            [("A".to_string(), "1".to_string()), ("C".into(), "3".into())].into()
        );
        let mut spec = masked(&["env"]);
        spec.env = [("Z".into(), "9".into())].into();
        apply_update_mask(&mut spec, Some(&current())).unwrap();
        assert_eq!(spec.env, [("Z".to_string(), "9".to_string())].into());

        // Turning idempotent off is possible only by naming it.
        let mut spec = masked(&["idempotent"]);
        apply_update_mask(&mut spec, Some(&current())).unwrap();
        assert!(!spec.idempotent);

        // An empty mask: the spec is the whole function, as before.
        let mut spec = masked(&[]);
        assert!(apply_update_mask(&mut spec, Some(&current())).unwrap());
        assert_eq!(spec.timeout_ms, 0);

        // Refused: an unknown entry, a bad variable name, a new function
        // without its runtime.
        assert!(apply_update_mask(&mut masked(&["memory"]), None).is_err());
        assert!(apply_update_mask(&mut masked(&["env.1X"]), None).is_err());
        assert!(apply_update_mask(&mut masked(&["package"]), None).is_err());
        assert!(matches!(
            apply_update_mask(&mut masked(&["memory_bytes"]), None),
            Err(ApiError::NotFound(_))
        ));
        assert!(apply_update_mask(&mut masked(&["package", "runtime"]), None).unwrap());
    }

    #[test]
    fn env_names() {
        assert!(check_env_name("API_KEY").is_ok());
        assert!(check_env_name("FAAS_INPUT").is_err());
        assert!(check_env_name("AWS_LAMBDA_FUNCTION_NAME").is_err());
        assert!(check_env_name("_HANDLER").is_err());
        assert!(check_env_name("AWS_REGION").is_ok());
        assert!(check_env_name("AWS_LAMBDA_LOG_LEVEL").is_ok());
        assert!(check_env_name("1X").is_err());
        assert!(check_env_name("A=B").is_err());
        assert!(check_env_value("A", "plain value, with = and newlines\n").is_ok());
        assert!(check_env_value("A", "cut\0OTHER=injected").is_err());
    }
}
