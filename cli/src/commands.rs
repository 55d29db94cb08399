//! One function per verb: build the request, make the RPC, print the reply.

use std::io::Read;

use anyhow::{Context as _, Result};
use faas_client::Channel;
use faas_proto::v1::{
    access_service_client::AccessServiceClient, call_service_client::CallServiceClient,
    cluster_service_client::ClusterServiceClient, deploy_function_request,
    function_service_client::FunctionServiceClient, register_runtime_request,
    runtime_service_client::RuntimeServiceClient, CreateJoinTokenRequest, CreateTokenRequest,
    DeleteFunctionRequest, DeleteJoinTokenRequest, DeleteRuntimeRequest, DeleteTokenRequest,
    DeployFunctionRequest, DrainNodeRequest, FunctionSpec, GetCallStatsRequest, GetFunctionRequest,
    GetRuntimeRequest, ListJoinTokensRequest, ListNodesRequest, ListRuntimesRequest,
    ListTokensRequest, RegisterRuntimeRequest, RemoveNodeRequest, Role, RuntimeSpec, WhoAmIRequest,
};
use faas_proto::v1::{deploy_progress, DeployProgress};
use faas_proto::v1::{
    layer_service_client::LayerServiceClient, publish_layer_request, DeleteLayerRequest, LayerSpec,
    ListLayersRequest, PublishLayerRequest,
};
use faas_proto::v1::{
    namespace_service_client::NamespaceServiceClient, CreateNamespaceRequest,
    DeleteNamespaceRequest, GetNamespaceRequest, ListNamespacesRequest, NamespaceQuota,
    UpdateNamespaceRequest,
};
use faas_proto::v1::{network_policy, HttpAccess, NetworkPolicy};
use faas_proto::v1::{
    secret_service_client::SecretServiceClient, DeleteSecretRequest, GetSecretRequest,
    ListSecretsRequest, PutSecretRequest, SecretRef,
};
use faas_proto::v1::{
    DeleteAliasRequest, ListAliasesRequest, ListFunctionVersionsRequest, RollbackFunctionRequest,
    SetAliasRequest,
};
use serde_json::{json, Value};

use crate::args::{
    duration_to_ms, AliasCmd, CallCmd, Command, DeployArgs, FunctionCmd, HttpArg, InvokeArgs,
    LayerCmd, NamespaceCmd, NetworkArg, NodeCmd, NodeTokenCmd, OutputFormat, QuotaArgs,
    RegisterRuntimeArgs, RoleArg, RuntimeCmd, SecretCmd, TokenCmd, UpdateArgs,
};
use crate::client::{upload_progress, upload_stream, UploadBody, UploadError};
use crate::format;
use crate::output::{self, emit, emit_json, note, BadInput};
use crate::pack::{self, Package};

pub struct Context {
    /// Connects on first use, so local mistakes (a missing source
    /// directory, an unreadable @file) are reported before, and without,
    /// reaching for the network.
    client: faas_client::Client,
    output: OutputFormat,
    /// The namespace functions and calls are named in.
    namespace: String,
}

impl Context {
    pub fn new(client: faas_client::Client, output: OutputFormat) -> Self {
        Context {
            namespace: client.namespace().to_string(),
            client,
            output,
        }
    }

    /// The namespace of a listing: the context's, or every one ("*").
    fn list_namespace(&self, all: bool) -> String {
        if all {
            faas_proto::namespaces::ALL.to_string()
        } else {
            self.namespace.clone()
        }
    }

    async fn secrets(&self) -> Result<SecretServiceClient<Channel>> {
        Ok(self.client.secrets().await?)
    }

    async fn layers(&self) -> Result<LayerServiceClient<Channel>> {
        Ok(self.client.layers().await?)
    }

    async fn namespaces(&self) -> Result<NamespaceServiceClient<Channel>> {
        Ok(self.client.namespaces().await?)
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        self.client.request(message)
    }

    async fn runtimes(&self) -> Result<RuntimeServiceClient<Channel>> {
        Ok(self.client.runtimes().await?)
    }

    async fn functions(&self) -> Result<FunctionServiceClient<Channel>> {
        Ok(self.client.functions().await?)
    }

    async fn calls(&self) -> Result<CallServiceClient<Channel>> {
        Ok(self.client.calls().await?)
    }

    async fn access(&self) -> Result<AccessServiceClient<Channel>> {
        Ok(self.client.access().await?)
    }

    async fn cluster(&self) -> Result<ClusterServiceClient<Channel>> {
        Ok(self.client.cluster().await?)
    }

    fn json(&self) -> bool {
        self.output == OutputFormat::Json
    }

    /// Prints either the JSON value or the table text.
    fn show(&self, json: impl FnOnce() -> Value, table: impl FnOnce() -> String) -> Result<()> {
        if self.json() {
            emit_json(&json())?;
        } else {
            emit(&table())?;
        }
        Ok(())
    }
}

pub async fn run(ctx: &Context, command: Command) -> Result<()> {
    match command {
        Command::Runtime(cmd) => runtime(ctx, cmd).await,
        Command::Function(cmd) => function(ctx, cmd).await,
        Command::Invoke(args) => invoke(ctx, args).await,
        Command::Call(cmd) => call(ctx, cmd).await,
        Command::Token(cmd) => token(ctx, cmd).await,
        Command::Namespace(cmd) => namespace(ctx, cmd).await,
        Command::Secret(cmd) => secret(ctx, cmd).await,
        Command::Layer(cmd) => layer(ctx, cmd).await,
        Command::Whoami => {
            let me = ctx
                .access()
                .await?
                .who_am_i(ctx.request(WhoAmIRequest {}))
                .await?
                .into_inner();
            let role = me.role().short_name();
            let namespaces = me.namespaces.join(",");
            ctx.show(
                || json!({"token_id": me.token_id, "role": role, "namespaces": me.namespaces}),
                || {
                    format!(
                        "token {}  role {role}  namespaces {namespaces}\n",
                        me.token_id
                    )
                },
            )
        }
        Command::Context(_) => unreachable!("handled before connecting"),
        Command::Node(NodeCmd::Token(NodeTokenCmd::Ls)) => {
            let reply = ctx
                .cluster()
                .await?
                .list_join_tokens(ctx.request(ListJoinTokensRequest {}))
                .await?
                .into_inner();
            ctx.show(
                || {
                    Value::Array(
                        reply
                            .tokens
                            .iter()
                            .map(|t| {
                                json!({
                                    "id": t.id,
                                    "description": t.description,
                                    "created_at_ms": t.created_at_ms,
                                    "expires_at_ms": t.expires_at_ms,
                                    "uses_left": t.uses_left,
                                })
                            })
                            .collect(),
                    )
                },
                || {
                    let mut text = String::from("ID\tUSES LEFT\tEXPIRES\tDESCRIPTION\n");
                    for t in &reply.tokens {
                        let uses = match t.uses_left {
                            0 => "unbounded".to_string(),
                            n => n.to_string(),
                        };
                        text.push_str(&format!(
                            "{}\t{uses}\t{}\t{}\n",
                            t.id,
                            format::time_text(t.expires_at_ms),
                            t.description
                        ));
                    }
                    text
                },
            )
        }
        Command::Node(NodeCmd::Token(NodeTokenCmd::Rm { id })) => {
            ctx.cluster()
                .await?
                .delete_join_token(ctx.request(DeleteJoinTokenRequest { id: id.clone() }))
                .await?;
            note(&format!("join token {id} revoked"));
            Ok(())
        }
        Command::Node(NodeCmd::Token(NodeTokenCmd::Create {
            ttl,
            description,
            uses,
        })) => {
            let reply = ctx
                .cluster()
                .await?
                .create_join_token(ctx.request(CreateJoinTokenRequest {
                    ttl_ms: ttl.map(duration_to_ms).unwrap_or(0),
                    description,
                    uses,
                }))
                .await?
                .into_inner();
            let expires = format::time_text(reply.expires_at_ms);
            ctx.show(
                || json!({"token": reply.token, "ca_hash": reply.ca_hash, "expires_at_ms": reply.expires_at_ms}),
                || {
                    format!(
                        "{}\n\njoin {uses} node(s) with it until {expires} (through the environment: a command line is visible to every local user):\n  FAAS_JOIN_TOKEN={} FAAS_CA_HASH={} faas-agent --control-plane {} --node <name>\n",
                        reply.token,
                        reply.token,
                        reply.ca_hash,
                        ctx.client.endpoints().join(",")
                    )
                },
            )
        }
        Command::Node(NodeCmd::Rm { name }) => {
            ctx.cluster()
                .await?
                .remove_node(ctx.request(RemoveNodeRequest { name: name.clone() }))
                .await?;
            note(&format!(
                "node {name:?} removed; its certificate is revoked"
            ));
            Ok(())
        }
        Command::Node(cmd @ (NodeCmd::Drain { .. } | NodeCmd::Undrain { .. })) => {
            let (name, undrain) = match cmd {
                NodeCmd::Drain { name } => (name, false),
                NodeCmd::Undrain { name } => (name, true),
                _ => unreachable!("matched above"),
            };
            let node = ctx
                .cluster()
                .await?
                .drain_node(ctx.request(DrainNodeRequest { name, undrain }))
                .await?
                .into_inner();
            ctx.show(|| format::node_json(&node), || format::node_drained(&node))
        }
        Command::Node(NodeCmd::Ls) => {
            let reply = ctx
                .cluster()
                .await?
                .list_nodes(ctx.request(ListNodesRequest {}))
                .await?
                .into_inner();
            ctx.show(
                || format::nodes_json(&reply),
                || format::nodes_table(&reply),
            )
        }
    }
}

// ------------------------------------------------------------------ tokens

async fn token(ctx: &Context, cmd: TokenCmd) -> Result<()> {
    let mut access = ctx.access().await?;
    match cmd {
        TokenCmd::Create {
            role,
            description,
            ttl,
            namespaces,
        } => {
            let role = match role {
                RoleArg::Admin => Role::Admin,
                RoleArg::Developer => Role::Developer,
                RoleArg::Invoker => Role::Invoker,
                RoleArg::PublicInvoker => Role::PublicInvoker,
            };
            let reply = access
                .create_token(ctx.request(CreateTokenRequest {
                    role: role as i32,
                    description,
                    ttl_ms: ttl.map(duration_to_ms).unwrap_or(0),
                    namespaces,
                }))
                .await?
                .into_inner();
            let record = reply.record.unwrap_or_default();
            ctx.show(
                || json!({"token": reply.token, "id": record.id, "role": role.short_name(), "namespaces": record.namespaces, "expires_at_ms": record.expires_at_ms}),
                || format!("{}\n", reply.token),
            )
        }
        TokenCmd::Ls => {
            let reply = access
                .list_tokens(ctx.request(ListTokensRequest {}))
                .await?
                .into_inner();
            ctx.show(
                || {
                    Value::Array(
                        reply
                            .tokens
                            .iter()
                            .map(|t| {
                                json!({
                                    "id": t.id,
                                    "role": t.role().short_name(),
                                    "namespaces": t.namespaces,
                                    "description": t.description,
                                    "created_at_ms": t.created_at_ms,
                                    "expires_at_ms": t.expires_at_ms,
                                })
                            })
                            .collect(),
                    )
                },
                || {
                    let mut text = String::from("ID\tROLE\tNAMESPACES\tEXPIRES\tDESCRIPTION\n");
                    for t in &reply.tokens {
                        let expires = if t.expires_at_ms == 0 {
                            "never".to_string()
                        } else {
                            format::time_text(t.expires_at_ms)
                        };
                        let namespaces = match (t.role(), t.namespaces.is_empty()) {
                            (Role::Admin, _) => "*".to_string(),
                            (_, true) => faas_proto::namespaces::DEFAULT.to_string(),
                            _ => t.namespaces.join(","),
                        };
                        text.push_str(&format!(
                            "{}\t{}\t{namespaces}\t{expires}\t{}\n",
                            t.id,
                            t.role().short_name(),
                            t.description
                        ));
                    }
                    text
                },
            )
        }
        TokenCmd::Rm { id } => {
            access
                .delete_token(ctx.request(DeleteTokenRequest { id: id.clone() }))
                .await?;
            note(&format!("token {id} revoked"));
            Ok(())
        }
    }
}

// ---------------------------------------------------------------- runtimes

async fn runtime(ctx: &Context, cmd: RuntimeCmd) -> Result<()> {
    match cmd {
        RuntimeCmd::Register(args) => register_runtime(ctx, args).await,
        RuntimeCmd::Ls => {
            let reply = ctx
                .runtimes()
                .await?
                .list_runtimes(ctx.request(ListRuntimesRequest {}))
                .await?;
            let runtimes = reply.into_inner().runtimes;
            ctx.show(
                || Value::Array(runtimes.iter().map(format::runtime_json).collect()),
                || format::runtimes_table(&runtimes),
            )
        }
        RuntimeCmd::Get { name } => {
            let rt = ctx
                .runtimes()
                .await?
                .get_runtime(ctx.request(GetRuntimeRequest { name }))
                .await?
                .into_inner();
            ctx.show(
                || format::runtime_json(&rt),
                || format::runtime_details(&rt),
            )
        }
        RuntimeCmd::Rm { name } => {
            ctx.runtimes()
                .await?
                .delete_runtime(ctx.request(DeleteRuntimeRequest { name: name.clone() }))
                .await?;
            ctx.show(
                || json!({ "deleted": name }),
                || format!("runtime \"{name}\" deleted"),
            )
        }
    }
}

/// The spec from the command line, completed by the --file definition for
/// whatever the command line leaves out.
pub fn runtime_spec(
    args: &RegisterRuntimeArgs,
    file: Option<pack::RuntimeFile>,
) -> Result<RuntimeSpec, BadInput> {
    let file = file.unwrap_or_default();
    let pick = |flag: &Option<String>, from_file: Option<String>| flag.clone().or(from_file);
    let missing = |what: &str| {
        BadInput(format!(
            "runtime {what} missing: give it as a flag or in --file"
        ))
    };
    Ok(RuntimeSpec {
        name: pick(&args.name, file.name).ok_or_else(|| missing("name"))?,
        path: pick(&args.path, file.path).ok_or_else(|| missing("path"))?,
        run: pick(&args.run, file.run).ok_or_else(|| missing("run command"))?,
        dependencies: pick(&args.dependencies, file.dependencies).unwrap_or_default(),
        default_handler: pick(&args.default_handler, file.default_handler).unwrap_or_default(),
        build: pick(&args.build, file.build).unwrap_or_default(),
        build_only_with_dependencies: args.build_only_with_dependencies
            || file.build_only_with_dependencies.unwrap_or(false),
        image_ref: args.image_ref.clone().unwrap_or_default(),
        replace: args.replace,
    })
}

async fn register_runtime(ctx: &Context, args: RegisterRuntimeArgs) -> Result<()> {
    let file = args
        .file
        .as_deref()
        .map(pack::read_runtime_file)
        .transpose()?;
    let spec = runtime_spec(&args, file)?;
    let body = match &args.archive {
        Some(path) => {
            let size = std::fs::metadata(path)
                .map_err(|e| BadInput(format!("cannot read archive {}: {e}", path.display())))?
                .len();
            UploadBody::File {
                path: path.clone(),
                size,
            }
        }
        None => UploadBody::Memory(Vec::new()),
    };
    let name = spec.name.clone();
    let progress = upload_progress(body.size(), &format!("uploading {name}"));
    let first = RegisterRuntimeRequest {
        part: Some(register_runtime_request::Part::Spec(spec)),
    };
    let read_error = UploadError::default();
    let stream = upload_stream(
        first,
        body,
        |chunk| RegisterRuntimeRequest {
            part: Some(register_runtime_request::Part::Chunk(chunk)),
        },
        progress.clone(),
        read_error.clone(),
    );
    let reply = ctx
        .runtimes()
        .await?
        .register_runtime(ctx.request(stream))
        .await;
    progress.finish_and_clear();
    take_read_error(&read_error)?;
    let rt = reply?.into_inner();
    ctx.show(
        || format::runtime_json(&rt),
        || format::runtime_registered(&rt),
    )
}

fn take_read_error(slot: &UploadError) -> Result<(), BadInput> {
    match slot.lock().unwrap_or_else(|p| p.into_inner()).take() {
        Some(e) => Err(BadInput(format!("reading the upload failed: {e}"))),
        None => Ok(()),
    }
}

// ----------------------------------------------------------------- secrets

async fn secret(ctx: &Context, cmd: SecretCmd) -> Result<()> {
    let mut client = ctx.secrets().await?;
    match cmd {
        SecretCmd::Create {
            name,
            from_file,
            from_literal,
            from_stdin,
            replace,
        } => {
            let value = match (from_file, from_literal) {
                (Some(path), _) => std::fs::read(&path).map_err(|e| {
                    BadInput(format!(
                        "cannot read the secret from {}: {e}",
                        path.display()
                    ))
                })?,
                (None, Some(text)) => text.into_bytes(),
                (None, None) => {
                    debug_assert!(from_stdin);
                    let mut bytes = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut bytes)
                        .map_err(|e| BadInput(format!("cannot read the secret from stdin: {e}")))?;
                    bytes
                }
            };
            let secret = client
                .put_secret(ctx.request(PutSecretRequest {
                    name,
                    namespace: ctx.namespace.clone(),
                    value,
                    replace,
                }))
                .await?
                .into_inner();
            ctx.show(
                || format::secret_json(&secret),
                || format::secret_details(&secret),
            )
        }
        SecretCmd::Ls { all_namespaces } => {
            let list = client
                .list_secrets(ctx.request(ListSecretsRequest {
                    namespace: ctx.list_namespace(all_namespaces),
                }))
                .await?
                .into_inner()
                .secrets;
            ctx.show(
                || Value::Array(list.iter().map(format::secret_json).collect()),
                || format::secrets_table(&list),
            )
        }
        SecretCmd::Get { name } => {
            let secret = client
                .get_secret(ctx.request(GetSecretRequest {
                    name,
                    namespace: ctx.namespace.clone(),
                }))
                .await?
                .into_inner();
            ctx.show(
                || format::secret_json(&secret),
                || format::secret_details(&secret),
            )
        }
        SecretCmd::Rm { name } => {
            client
                .delete_secret(ctx.request(DeleteSecretRequest {
                    name: name.clone(),
                    namespace: ctx.namespace.clone(),
                }))
                .await?;
            ctx.show(
                || json!({ "deleted": name }),
                || format!("secret \"{name}\" deleted"),
            )
        }
    }
}

// ------------------------------------------------------------------ layers

/// `NAME` or `NAME:VERSION` (0: every version).
fn parse_layer_version(text: &str) -> Result<(String, u64), BadInput> {
    match text.split_once(':') {
        None => Ok((text.to_string(), 0)),
        Some((name, version)) => match version.parse::<u64>() {
            Ok(v) if v > 0 => Ok((name.to_string(), v)),
            _ => Err(BadInput(format!(
                "invalid layer {text:?}: expected NAME or NAME:VERSION (a version from 1)"
            ))),
        },
    }
}

async fn layer(ctx: &Context, cmd: LayerCmd) -> Result<()> {
    match cmd {
        LayerCmd::Publish {
            name,
            source,
            description,
        } => {
            let body = upload_body(&source)?;
            let progress = upload_progress(body.size(), &format!("uploading layer {name}"));
            let first = PublishLayerRequest {
                part: Some(publish_layer_request::Part::Spec(LayerSpec {
                    name: name.clone(),
                    namespace: ctx.namespace.clone(),
                    description,
                })),
            };
            let read_error = UploadError::default();
            let stream = upload_stream(
                first,
                body,
                |chunk| PublishLayerRequest {
                    part: Some(publish_layer_request::Part::Chunk(chunk)),
                },
                progress.clone(),
                read_error.clone(),
            );
            let reply = ctx.layers().await?.publish_layer(ctx.request(stream)).await;
            progress.finish_and_clear();
            take_read_error(&read_error)?;
            let layer = reply
                .with_context(|| format!("publish layer {name}"))?
                .into_inner();
            ctx.show(
                || format::layer_json(&layer),
                || format::layer_published(&layer),
            )
        }
        LayerCmd::Ls { name } => {
            let list = ctx
                .layers()
                .await?
                .list_layers(ctx.request(ListLayersRequest {
                    namespace: ctx.namespace.clone(),
                    name: name.unwrap_or_default(),
                }))
                .await?
                .into_inner()
                .layers;
            ctx.show(
                || Value::Array(list.iter().map(format::layer_json).collect()),
                || format::layers_table(&list),
            )
        }
        LayerCmd::Rm { layer } => {
            let (name, version) = parse_layer_version(&layer)?;
            ctx.layers()
                .await?
                .delete_layer(ctx.request(DeleteLayerRequest {
                    name: name.clone(),
                    namespace: ctx.namespace.clone(),
                    version,
                }))
                .await?;
            ctx.show(
                || json!({ "deleted": layer }),
                || match version {
                    0 => format!("layer \"{name}\" deleted (every version)"),
                    v => format!("layer \"{name}\" version {v} deleted"),
                },
            )
        }
    }
}

// -------------------------------------------------------------- namespaces

/// `quota` with the bounds given on the command line put over it.
pub fn apply_quota(mut quota: NamespaceQuota, args: &QuotaArgs) -> NamespaceQuota {
    if let Some(n) = args.max_functions {
        quota.max_functions = n;
    }
    if let Some(n) = args.max_queued {
        quota.max_queued_calls = n;
    }
    if let Some(n) = args.max_concurrent {
        quota.max_concurrent_calls = n;
    }
    if let Some(r) = args.submit_rate {
        quota.submit_rate = r;
    }
    if let Some(b) = args.submit_burst {
        quota.submit_burst = b;
    }
    quota
}

async fn namespace(ctx: &Context, cmd: NamespaceCmd) -> Result<()> {
    let mut client = ctx.namespaces().await?;
    match cmd {
        NamespaceCmd::Create { name, quota } => {
            let ns = client
                .create_namespace(ctx.request(CreateNamespaceRequest {
                    name,
                    quota: Some(apply_quota(NamespaceQuota::default(), &quota)),
                }))
                .await?
                .into_inner();
            ctx.show(
                || format::namespace_json(&ns),
                || format::namespace_details(&ns),
            )
        }
        NamespaceCmd::Set { name, quota } => {
            let current = client
                .get_namespace(ctx.request(GetNamespaceRequest { name: name.clone() }))
                .await?
                .into_inner();
            let ns = client
                .update_namespace(ctx.request(UpdateNamespaceRequest {
                    name,
                    quota: Some(apply_quota(current.quota.unwrap_or_default(), &quota)),
                }))
                .await?
                .into_inner();
            ctx.show(
                || format::namespace_json(&ns),
                || format::namespace_details(&ns),
            )
        }
        NamespaceCmd::Get { name } => {
            let ns = client
                .get_namespace(ctx.request(GetNamespaceRequest { name }))
                .await?
                .into_inner();
            ctx.show(
                || format::namespace_json(&ns),
                || format::namespace_details(&ns),
            )
        }
        NamespaceCmd::Ls => {
            let list = client
                .list_namespaces(ctx.request(ListNamespacesRequest {}))
                .await?
                .into_inner()
                .namespaces;
            ctx.show(
                || Value::Array(list.iter().map(format::namespace_json).collect()),
                || format::namespaces_table(&list),
            )
        }
        NamespaceCmd::Rm { name } => {
            client
                .delete_namespace(ctx.request(DeleteNamespaceRequest { name: name.clone() }))
                .await?;
            ctx.show(
                || json!({ "deleted": name }),
                || format!("namespace \"{name}\" deleted"),
            )
        }
    }
}

// --------------------------------------------------------------- functions

async fn function(ctx: &Context, cmd: FunctionCmd) -> Result<()> {
    match cmd {
        FunctionCmd::Deploy(args) => deploy(ctx, args).await,
        FunctionCmd::Update(args) => update(ctx, args).await,
        FunctionCmd::Ls {
            runtime,
            all_namespaces,
        } => {
            let functions = ctx
                .client
                .with_namespace(ctx.list_namespace(all_namespaces))
                .list_functions(runtime.as_deref())
                .await?;
            ctx.show(
                || Value::Array(functions.iter().map(format::function_json).collect()),
                || format::functions_table(&functions, all_namespaces),
            )
        }
        FunctionCmd::Get { name } => {
            // NAME:QUALIFIER, as invoke takes it.
            let (name, qualifier) = name.split_once(':').unwrap_or((&name, ""));
            let f = ctx
                .functions()
                .await?
                .get_function(ctx.request(GetFunctionRequest {
                    name: name.to_string(),
                    namespace: ctx.namespace.clone(),
                    qualifier: qualifier.to_string(),
                }))
                .await?
                .into_inner();
            ctx.show(
                || format::function_json(&f),
                || format::function_details(&f),
            )
        }
        FunctionCmd::Versions { name } => {
            let mut functions = ctx.functions().await?;
            let versions = functions
                .list_function_versions(ctx.request(ListFunctionVersionsRequest {
                    name: name.clone(),
                    namespace: ctx.namespace.clone(),
                }))
                .await?
                .into_inner()
                .versions;
            let aliases = aliases_of(ctx, &mut functions, name).await?;
            ctx.show(
                || Value::Array(versions.iter().map(format::function_json).collect()),
                || format::versions_table(&versions, &aliases),
            )
        }
        FunctionCmd::Rollback { name, version } => {
            let f = ctx
                .functions()
                .await?
                .rollback_function(ctx.request(RollbackFunctionRequest {
                    name,
                    namespace: ctx.namespace.clone(),
                    version: version.unwrap_or(0),
                }))
                .await?
                .into_inner();
            ctx.show(
                || format::function_json(&f),
                || {
                    format!(
                        "function \"{}\" rolled back: version {} runs the package and configuration of an earlier version (digest {})",
                        f.name, f.version, f.package_digest
                    )
                },
            )
        }
        FunctionCmd::Alias(cmd) => alias(ctx, cmd).await,
        FunctionCmd::Logs { name, follow, last } => function_logs(ctx, &name, follow, last).await,
        FunctionCmd::Rm { name } => {
            ctx.functions()
                .await?
                .delete_function(ctx.request(DeleteFunctionRequest {
                    name: name.clone(),
                    namespace: ctx.namespace.clone(),
                }))
                .await?;
            ctx.show(
                || json!({ "deleted": name }),
                || format!("function \"{name}\" deleted"),
            )
        }
    }
}

async fn aliases_of(
    ctx: &Context,
    functions: &mut FunctionServiceClient<Channel>,
    name: String,
) -> Result<Vec<faas_proto::v1::FunctionAlias>> {
    Ok(functions
        .list_aliases(ctx.request(ListAliasesRequest {
            function: name,
            namespace: ctx.namespace.clone(),
        }))
        .await?
        .into_inner()
        .aliases)
}

async fn alias(ctx: &Context, cmd: AliasCmd) -> Result<()> {
    let mut functions = ctx.functions().await?;
    match cmd {
        AliasCmd::Set {
            name,
            alias,
            version,
            weight,
        } => {
            let (additional_version, additional_weight) = weight.unwrap_or((0, 0.0));
            let a = functions
                .set_alias(ctx.request(SetAliasRequest {
                    function: name,
                    namespace: ctx.namespace.clone(),
                    alias,
                    version,
                    additional_version,
                    additional_weight,
                }))
                .await?
                .into_inner();
            ctx.show(
                || format::alias_json(&a),
                || {
                    format!(
                        "alias \"{}\" of \"{}\": {}",
                        a.name,
                        a.function,
                        format::alias_routing(&a)
                    )
                },
            )
        }
        AliasCmd::Ls { name } => {
            let aliases = aliases_of(ctx, &mut functions, name).await?;
            ctx.show(
                || Value::Array(aliases.iter().map(format::alias_json).collect()),
                || format::aliases_table(&aliases),
            )
        }
        AliasCmd::Rm { name, alias } => {
            functions
                .delete_alias(ctx.request(DeleteAliasRequest {
                    function: name.clone(),
                    namespace: ctx.namespace.clone(),
                    alias: alias.clone(),
                }))
                .await?;
            ctx.show(
                || json!({ "deleted": alias, "function": name }),
                || format!("alias \"{alias}\" of \"{name}\" deleted"),
            )
        }
    }
}

/// How a call is named in `fn logs` lines: the end of its id (ids begin
/// with their time, so calls of one moment share a beginning).
fn call_tag(id: &str) -> &str {
    &id[id.len().saturating_sub(8)..]
}

/// `fn logs NAME [-f]`: the latest ended calls' logs, then (following)
/// the output of every call of the function that runs, line by line.
async fn function_logs(ctx: &Context, name: &str, follow: bool, last: u32) -> Result<()> {
    use futures::StreamExt;
    // Its latest calls, newest first (what `fn logs` looks at each time).
    let latest = faas_client::CallFilter {
        function: Some(name.to_string()),
        status: None,
        limit: 100,
    };
    let recent = ctx.client.list_calls(&latest).await?;
    let mut seen: std::collections::HashSet<String> = Default::default();
    let mut ended: Vec<_> = recent
        .iter()
        .filter(|c| c.status().is_final())
        .take(last as usize)
        .collect();
    ended.reverse();
    for call in ended {
        let logs = ctx.client.logs(&call.id).await?;
        let mut lines = output::Utf8Pieces::default();
        emit_tagged(call_tag(&call.id), &lines.push(&logs.logs))?;
        emit_tagged(call_tag(&call.id), &lines.finish())?;
    }
    if !follow {
        return Ok(());
    }
    seen.extend(
        recent
            .iter()
            .filter(|c| c.status().is_final())
            .map(|c| c.id.clone()),
    );
    // Followers send whole lines here; one printer keeps them apart.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(String, Vec<u8>)>(256);
    let mut poll = tokio::time::interval(std::time::Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            Some((tag, line)) = rx.recv() => emit_tagged(&tag, &line)?,
            _ = poll.tick() => {
                let calls = ctx.client.list_calls(&latest).await?;
                for call in calls {
                    if !seen.insert(call.id.clone()) {
                        continue;
                    }
                    let client = ctx.client.clone();
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let tag = call_tag(&call.id).to_string();
                        let mut pieces = std::pin::pin!(client.follow_logs(&call.id));
                        let mut text = output::Utf8Pieces::default();
                        let mut line = Vec::new();
                        while let Some(Ok(piece)) = pieces.next().await {
                            line.extend(text.push(&piece.logs));
                            while let Some(end) = line.iter().position(|b| *b == b'\n') {
                                let rest = line.split_off(end + 1);
                                let whole = std::mem::replace(&mut line, rest);
                                if tx.send((tag.clone(), whole)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        line.extend(text.finish());
                        if !line.is_empty() {
                            let _ = tx.send((tag, line)).await;
                        }
                    });
                }
            }
        }
    }
}

/// Prints `text` with every line prefixed by `tag`.
fn emit_tagged(tag: &str, text: &[u8]) -> std::io::Result<()> {
    if text.is_empty() {
        return Ok(());
    }
    let mut out = Vec::new();
    for line in text.split_inclusive(|b| *b == b'\n') {
        out.extend_from_slice(tag.as_bytes());
        out.extend_from_slice(b" | ");
        out.extend_from_slice(line);
    }
    if !out.ends_with(b"\n") {
        out.push(b'\n');
    }
    output::emit_logs(&out)
}

pub fn function_spec(args: &DeployArgs, namespace: &str) -> FunctionSpec {
    // Named in the update mask: what this deploy sets. The rest keeps the
    // function's current values (the platform's defaults for a new one).
    let mut mask = vec!["package", "runtime"];
    let given = [
        ("handler", args.handler.is_some()),
        ("memory_bytes", args.memory.is_some()),
        ("tmp_bytes", args.tmp_size.is_some()),
        ("timeout_ms", args.timeout.is_some()),
        ("env", !args.env.is_empty()),
        ("idempotent", args.idempotent),
        ("secrets", !args.secrets.is_empty()),
        ("network", args.network.is_some() || !args.allow.is_empty()),
        ("http", args.http.is_some()),
        ("layers", !args.layers.is_empty()),
    ];
    mask.extend(given.iter().filter(|(_, set)| *set).map(|(name, _)| *name));
    FunctionSpec {
        namespace: namespace.to_string(),
        name: args.name.clone(),
        runtime: args.runtime.clone(),
        handler: args.handler.clone().unwrap_or_default(),
        memory_bytes: args.memory.unwrap_or(0),
        tmp_bytes: args.tmp_size.unwrap_or(0),
        timeout_ms: args.timeout.map(duration_to_ms).unwrap_or(0),
        env: args.env.iter().cloned().collect(),
        idempotent: args.idempotent,
        secrets: args
            .secrets
            .iter()
            .map(|(name, env)| SecretRef {
                name: name.clone(),
                env: env.clone(),
                version: 0,
            })
            .collect(),
        network: match args.network.unwrap_or(NetworkArg::None) {
            NetworkArg::None if args.allow.is_empty() => None,
            NetworkArg::None => Some(NetworkPolicy {
                mode: network_policy::Mode::None as i32,
                allow: args.allow.clone(),
            }),
            NetworkArg::Egress => Some(NetworkPolicy {
                mode: network_policy::Mode::Egress as i32,
                allow: args.allow.clone(),
            }),
        },
        http: http_access(args.http.unwrap_or(HttpArg::Private)) as i32,
        layers: args.layers.clone(),
        update_mask: mask.into_iter().map(String::from).collect(),
    }
}

fn http_access(arg: HttpArg) -> HttpAccess {
    match arg {
        HttpArg::Private => HttpAccess::Private,
        HttpArg::Public => HttpAccess::Public,
    }
}

/// A configuration-only update: the mask names what changes, no package.
pub fn update_spec(args: &UpdateArgs, namespace: &str) -> Result<FunctionSpec, BadInput> {
    let mut mask: Vec<String> = [
        ("handler", args.handler.is_some()),
        ("memory_bytes", args.memory.is_some()),
        ("tmp_bytes", args.tmp_size.is_some()),
        ("timeout_ms", args.timeout.is_some()),
        ("idempotent", args.idempotent.is_some()),
        ("http", args.http.is_some()),
        ("layers", !args.layers.is_empty() || args.no_layers),
    ]
    .iter()
    .filter(|(_, set)| *set)
    .map(|(name, _)| name.to_string())
    .collect();
    for (name, _) in &args.env {
        mask.push(format!("env.{name}"));
    }
    for name in &args.unset_env {
        if args.env.iter().any(|(set, _)| set == name) {
            return Err(BadInput(format!("--env and --unset-env both name {name}")));
        }
        mask.push(format!("env.{name}"));
    }
    if mask.is_empty() {
        return Err(BadInput(
            "nothing to update: give --handler, --memory, --tmp-size, --timeout, --env, --unset-env, --idempotent, --http, --layer or --no-layers".into(),
        ));
    }
    Ok(FunctionSpec {
        namespace: namespace.to_string(),
        name: args.name.clone(),
        handler: args.handler.clone().unwrap_or_default(),
        memory_bytes: args.memory.unwrap_or(0),
        tmp_bytes: args.tmp_size.unwrap_or(0),
        timeout_ms: args.timeout.map(duration_to_ms).unwrap_or(0),
        env: args.env.iter().cloned().collect(),
        idempotent: args.idempotent.unwrap_or(false),
        http: args
            .http
            .map(http_access)
            .unwrap_or(HttpAccess::Unspecified) as i32,
        layers: args.layers.clone(),
        update_mask: mask,
        ..Default::default()
    })
}

async fn update(ctx: &Context, args: UpdateArgs) -> Result<()> {
    let spec = update_spec(&args, &ctx.namespace)?;
    let first = DeployFunctionRequest {
        part: Some(deploy_function_request::Part::Spec(spec)),
    };
    let f = ctx
        .functions()
        .await?
        .deploy_function(ctx.request(tokio_stream::iter([first])))
        .await
        .with_context(|| format!("update {}", args.name))?
        .into_inner();
    ctx.show(
        || format::function_json(&f),
        || format::function_updated(&f),
    )
}

/// What an upload sends: the archive as is, or the directory packed here
/// (with a note of what was packed or skipped).
fn upload_body(source: &std::path::Path) -> Result<UploadBody> {
    let package = pack::prepare_source(source)?;
    Ok(match package {
        Package::File { path, size, kind } => {
            note(&format!(
                "sending {} as is ({kind}, {})",
                path.display(),
                format::bytes_text(size)
            ));
            UploadBody::File { path, size }
        }
        Package::Packed {
            bytes,
            files,
            skipped,
        } => {
            for path in &skipped {
                note(&format!(
                    "warning: skipped {} (not a regular file or directory)",
                    path.display()
                ));
            }
            let noun = if files == 1 { "file" } else { "files" };
            note(&format!(
                "packed {} ({files} {noun}, {})",
                source.display(),
                format::bytes_text(bytes.len() as u64)
            ));
            UploadBody::Memory(bytes)
        }
    })
}

/// A build's output as it comes, in chunks: shown a whole line at a time,
/// each marked as the build's.
#[derive(Default)]
struct BuildLogLines {
    partial: Vec<u8>,
}

impl BuildLogLines {
    fn push(&mut self, bytes: &[u8]) {
        self.partial.extend_from_slice(bytes);
        while let Some(at) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=at).collect();
            Self::show(&line[..line.len() - 1]);
        }
    }

    fn finish(&mut self) {
        if !self.partial.is_empty() {
            Self::show(&std::mem::take(&mut self.partial));
        }
    }

    fn show(line: &[u8]) {
        note(&format!("build | {}", String::from_utf8_lossy(line)));
    }
}

async fn deploy(ctx: &Context, args: DeployArgs) -> Result<()> {
    let body = upload_body(&args.source)?;
    let progress = upload_progress(body.size(), &format!("uploading {}", args.name));
    let first = DeployFunctionRequest {
        part: Some(deploy_function_request::Part::Spec(function_spec(
            &args,
            &ctx.namespace,
        ))),
    };
    let read_error = UploadError::default();
    let stream = upload_stream(
        first,
        body,
        |chunk| DeployFunctionRequest {
            part: Some(deploy_function_request::Part::Chunk(chunk)),
        },
        progress.clone(),
        read_error.clone(),
    );
    // The deploy tells what it does (the build's node and output) as it
    // goes: shown on stderr, line by line, once the upload is done.
    let reply = ctx
        .functions()
        .await?
        .deploy_function_with_progress(ctx.request(stream))
        .await;
    let mut build_log = BuildLogLines::default();
    let outcome = match reply {
        Err(status) => Err(status),
        Ok(events) => {
            let mut events = events.into_inner();
            loop {
                match events.message().await {
                    Ok(Some(DeployProgress { event: Some(event) })) => {
                        progress.finish_and_clear();
                        match event {
                            deploy_progress::Event::BuildStartedOn(node) => {
                                note(&format!("building on {node}"));
                            }
                            deploy_progress::Event::BuildLog(bytes) => build_log.push(&bytes),
                            deploy_progress::Event::Function(f) => break Ok(f),
                        }
                    }
                    Ok(Some(DeployProgress { event: None })) => {}
                    Ok(None) => {
                        break Err(tonic::Status::unavailable(
                            "the deploy ended without its outcome; see `faasctl fn get`",
                        ))
                    }
                    Err(status) => break Err(status),
                }
            }
        }
    };
    build_log.finish();
    progress.finish_and_clear();
    take_read_error(&read_error)?;
    let f = outcome.with_context(|| format!("deploy {}", args.name))?;
    ctx.show(
        || format::function_json(&f),
        || format::function_deployed(&f),
    )
}

// ------------------------------------------------------------------- calls

/// The params text: inline, `@file` or `-` (stdin); sent as is so the
/// server's validation is the only one.
pub fn read_params(
    data: Option<&str>,
    stdin: impl FnOnce() -> std::io::Result<String>,
) -> Result<String, BadInput> {
    match data {
        None => Ok("{}".to_string()),
        Some("-") => {
            stdin().map_err(|e| BadInput(format!("cannot read the input from stdin: {e}")))
        }
        Some(text) => match text.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| BadInput(format!("cannot read the input from {path}: {e}"))),
            None => Ok(text.to_string()),
        },
    }
}

/// A flag's value given inline or as @FILE.
fn read_inline_or_file(text: &str) -> Result<String, BadInput> {
    match text.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).map_err(|e| BadInput(format!("cannot read {path}: {e}")))
        }
        None => Ok(text.to_string()),
    }
}

fn read_stdin() -> std::io::Result<String> {
    let mut text = String::new();
    std::io::stdin().read_to_string(&mut text)?;
    Ok(text)
}

async fn invoke(ctx: &Context, args: InvokeArgs) -> Result<()> {
    let params_json = read_params(args.data.as_deref(), read_stdin)?;
    let options = faas_client::CallOptions {
        client_context: args
            .client_context
            .as_deref()
            .map(read_inline_or_file)
            .transpose()?,
    };
    if args.asynchronous {
        let id = ctx
            .client
            .submit_with(&args.function, params_json, &options)
            .await?;
        return ctx.show(|| json!({ "call_id": id }), || id.clone());
    }
    let call = ctx
        .client
        .invoke_with(&args.function, params_json, &options)
        .await?;
    if ctx.json() {
        emit_json(&format::call_json(&call))?;
    } else if call.status == faas_proto::v1::CallStatus::Succeeded as i32 {
        if call.result_base64 {
            output::emit_bytes_result(&call.result_json)?;
        } else {
            emit(&output::pretty_json_text(&call.result_json))?;
        }
    }
    output::check_succeeded(&call)
}

async fn call(ctx: &Context, cmd: CallCmd) -> Result<()> {
    match cmd {
        CallCmd::Get { id } => {
            let call = ctx.client.get_call(&id).await?;
            ctx.show(|| format::call_json(&call), || format::call_details(&call))
        }
        CallCmd::Cancel { id } => {
            let call = ctx.client.cancel(&id).await?;
            ctx.show(|| format::call_json(&call), || format::call_details(&call))
        }
        CallCmd::Wait { id, timeout } => {
            let call = ctx.client.wait(&id, timeout).await?;
            ctx.show(|| format::call_json(&call), || format::call_details(&call))?;
            output::check_succeeded(&call)
        }
        CallCmd::Ls {
            function,
            status,
            limit,
            all_namespaces,
        } => {
            let filter = faas_client::CallFilter {
                function,
                status: status.map(|s| s.to_proto()),
                limit,
            };
            let calls = ctx
                .client
                .with_namespace(ctx.list_namespace(all_namespaces))
                .list_calls(&filter)
                .await?;
            ctx.show(
                || Value::Array(calls.iter().map(format::call_json).collect()),
                || format::calls_table(&calls, all_namespaces),
            )
        }
        CallCmd::Stats {
            function,
            last,
            all_namespaces,
        } => {
            let stats = ctx
                .calls()
                .await?
                .get_call_stats(ctx.request(GetCallStatsRequest {
                    function: function.unwrap_or_default(),
                    last,
                    namespace: ctx.list_namespace(all_namespaces),
                }))
                .await?
                .into_inner();
            ctx.show(
                || format::stats_json(&stats),
                || format::stats_table(&stats),
            )
        }
        CallCmd::Logs { id, follow: true } => {
            use futures::StreamExt;
            let mut pieces = std::pin::pin!(ctx.client.follow_logs(&id));
            let mut text = output::Utf8Pieces::default();
            let mut truncated = false;
            while let Some(piece) = pieces.next().await {
                let piece = piece?;
                truncated |= piece.truncated;
                output::emit_logs(&text.push(&piece.logs))?;
            }
            output::emit_logs(&text.finish())?;
            if truncated {
                note("note: the logs were cut at the platform's limit");
            }
            Ok(())
        }
        CallCmd::Logs { id, follow: false } => {
            let logs = ctx.client.logs(&id).await?;
            output::emit_logs(&logs.logs)?;
            if logs.truncated {
                note("note: the logs were cut at the platform's limit");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Cli;
    use clap::Parser;

    fn register_args(line: &str) -> RegisterRuntimeArgs {
        match Cli::try_parse_from(line.split_whitespace())
            .unwrap()
            .command
        {
            Command::Runtime(RuntimeCmd::Register(args)) => args,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn runtime_spec_from_file_with_overrides() {
        let file = pack::RuntimeFile {
            name: Some("python3".into()),
            path: Some("/var/task".into()),
            dependencies: Some("pip install".into()),
            run: Some("python3 boot.py".into()),
            default_handler: Some("main.handler".into()),
            build: Some("python3 build.py".into()),
            build_only_with_dependencies: Some(true),
        };
        let args =
            register_args("faasctl runtime register --file rt.toml --archive a.tar --run other");
        let spec = runtime_spec(&args, Some(file)).unwrap();
        assert_eq!(spec.name, "python3");
        assert_eq!(spec.path, "/var/task");
        assert_eq!(spec.dependencies, "pip install");
        assert_eq!(spec.default_handler, "main.handler");
        assert_eq!(spec.build, "python3 build.py");
        assert!(spec.build_only_with_dependencies);
        assert_eq!(spec.run, "other", "the flag wins over the file");
        assert_eq!(spec.image_ref, "");

        let args =
            register_args("faasctl runtime register --file rt.toml --image-ref x:1 --replace");
        let err = runtime_spec(&args, Some(pack::RuntimeFile::default())).unwrap_err();
        assert!(err.0.contains("name"), "{err}");

        let args = register_args(
            "faasctl runtime register node --path /p --run r --image-ref faas/node:1 --replace",
        );
        let spec = runtime_spec(&args, None).unwrap();
        assert_eq!(
            (spec.name.as_str(), spec.image_ref.as_str(), spec.replace),
            ("node", "faas/node:1", true)
        );
    }

    #[test]
    fn function_spec_units() {
        let cli = Cli::try_parse_from(
            "faasctl fn deploy f --runtime python3 --timeout 2s --memory 128Mi -e A=1 --env B=x=y dir"
                .split_whitespace(),
        )
        .unwrap();
        let Command::Function(FunctionCmd::Deploy(args)) = cli.command else {
            panic!()
        };
        let spec = function_spec(&args, "team-a");
        assert_eq!(spec.namespace, "team-a");
        assert_eq!(spec.timeout_ms, 2000);
        assert_eq!(spec.memory_bytes, 128 << 20);
        assert_eq!(spec.handler, "");
        assert_eq!(spec.env.get("B").map(String::as_str), Some("x=y"));
        assert_eq!(spec.env.len(), 2);
    }

    #[test]
    fn params_sources() {
        let no_stdin = || -> std::io::Result<String> { panic!("stdin must not be read") };
        assert_eq!(read_params(None, no_stdin).unwrap(), "{}");
        assert_eq!(
            read_params(Some("{oops"), no_stdin).unwrap(),
            "{oops",
            "sent as is"
        );
        assert_eq!(
            read_params(Some("-"), || Ok("{\"a\":1}\n".into())).unwrap(),
            "{\"a\":1}\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.json");
        std::fs::write(&path, "[1]").unwrap();
        assert_eq!(
            read_params(Some(&format!("@{}", path.display())), no_stdin).unwrap(),
            "[1]"
        );
        assert!(read_params(Some("@/nonexistent/in.json"), no_stdin).is_err());
    }
}
