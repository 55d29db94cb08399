//! The command line: nouns and verbs (clap derive) and the value parsers
//! that turn human units (`128Mi`, `2s`, `K=V`) into what the API wants.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Long help of the top-level command: the exit codes are part of the
/// interface scripts rely on, so they are documented where users look.
const LONG_ABOUT: &str = "\
faasctl drives a faas cluster through its public gRPC API: register runtimes,
deploy functions, invoke them and inspect calls and nodes.

Results go to stdout (a table, or JSON with -o json); progress and errors go to
stderr, so scripts can rely on stdout.

Exit codes:
  0  success
  1  the call ran and did not succeed (status failed or timeout)
  2  bad input: usage error, unreadable file, or the server said INVALID_ARGUMENT
     (also OUT_OF_RANGE)
  3  not found: the server said NOT_FOUND
  4  the server is unreachable or failed: UNAVAILABLE, DEADLINE_EXCEEDED,
     INTERNAL and any other gRPC error not listed here
  5  conflict: ALREADY_EXISTS, FAILED_PRECONDITION, ABORTED
     (e.g. the runtime exists, or is still used by functions)
  6  refused by a limit: RESOURCE_EXHAUSTED (package or params too large)
  7  not allowed: UNAUTHENTICATED (no or bad token) or PERMISSION_DENIED
     (the token's role may not do it)

Credentials: --endpoint, --token/--token-file and --ca-file (or FAAS_ENDPOINT,
FAAS_TOKEN, FAAS_TOKEN_FILE, FAAS_CA_FILE) override the current context
(`faasctl context`), which deploy/local/up.sh writes for its cluster.";

#[derive(Debug, Parser)]
#[command(name = "faasctl", version = faas_proto::VERSION, about = "The faas command-line tool", long_about = LONG_ABOUT)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Control-plane gRPC endpoint(s); a comma-separated list is tried in
    /// order and the first that connects is used [default: the context's,
    /// else https://127.0.0.1:7070].
    #[arg(long, global = true, env = "FAAS_ENDPOINT", value_delimiter = ',')]
    pub endpoint: Vec<String>,

    /// The context to use (see `faasctl context`) [default: the current
    /// one].
    #[arg(long, global = true, env = "FAAS_CONTEXT")]
    pub context: Option<String>,

    /// API token ("<id>.<secret>") [default: the context's].
    #[arg(long, global = true, env = "FAAS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// File holding the API token [default: the context's].
    #[arg(long, global = true, env = "FAAS_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    /// The cluster CA's certificate (PEM), to verify the control plane
    /// [default: the context's].
    #[arg(long, global = true, env = "FAAS_CA_FILE")]
    pub ca_file: Option<PathBuf>,

    /// Namespace of the functions and calls a command acts on [default:
    /// the context's, else "default"].
    #[arg(short = 'n', long, global = true, env = "FAAS_NAMESPACE")]
    pub namespace: Option<String>,

    /// Output format of read commands.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,

    /// Deadline of each RPC (e.g. 30s, 2m); default none, so a synchronous
    /// invoke waits as long as the function may run.
    #[arg(long, global = true, env = "FAAS_RPC_TIMEOUT", value_parser = parse_duration)]
    pub rpc_timeout: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage runtimes (an OCI image plus how functions run in it).
    #[command(subcommand, visible_alias = "runtimes", visible_alias = "rt")]
    Runtime(RuntimeCmd),
    /// Manage functions.
    #[command(
        subcommand,
        name = "fn",
        visible_alias = "function",
        visible_alias = "functions"
    )]
    Function(FunctionCmd),
    /// Invoke a function (synchronously by default).
    Invoke(InvokeArgs),
    /// Inspect calls (invocations).
    #[command(subcommand, visible_alias = "calls")]
    Call(CallCmd),
    /// Inspect the cluster's nodes and their spots; join tokens.
    #[command(subcommand, visible_alias = "nodes")]
    Node(NodeCmd),
    /// API tokens (cluster admin).
    #[command(subcommand, visible_alias = "tokens")]
    Token(TokenCmd),
    /// Secrets of a namespace, given to the functions that reference them
    /// (`fn deploy --secret`); values are never shown.
    #[command(subcommand, visible_alias = "secrets")]
    Secret(SecretCmd),
    /// Layers of a namespace: shared files (libraries, binaries) mounted
    /// under /opt in the calls of the functions that name them
    /// (`fn deploy --layer`), as Lambda's layers.
    #[command(subcommand, visible_alias = "layers")]
    Layer(LayerCmd),
    /// Namespaces (tenants) and their quotas; creating and changing them
    /// is for cluster admins.
    #[command(subcommand, visible_alias = "namespaces", visible_alias = "ns")]
    Namespace(NamespaceCmd),
    /// Named connection settings, kept in ~/.config/faas/config.toml
    /// (or $FAASCTL_CONFIG).
    #[command(subcommand, visible_alias = "contexts")]
    Context(ContextCmd),
    /// Show the token in use and its role.
    Whoami,
}

#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// Create an API token; it is printed once.
    Create {
        /// admin, developer or invoker.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// What the token is for.
        #[arg(long, default_value = "")]
        description: String,
        /// Lifetime (e.g. 30d); default: no expiry.
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// Namespaces a developer or invoker token acts in, comma-separated
        /// ("*": all) [default: "default" only]. Admin tokens act in all.
        #[arg(long, value_delimiter = ',')]
        namespaces: Vec<String>,
    },
    /// List API tokens (ids and roles, never secrets).
    #[command(visible_alias = "list")]
    Ls,
    /// Revoke an API token by id (the part before the dot).
    #[command(visible_alias = "delete")]
    Rm { id: String },
}

#[derive(Debug, Subcommand)]
pub enum SecretCmd {
    /// Create a secret (in --namespace); with --replace, rotate one: every
    /// function using it gets a new version, and the next call the new
    /// value.
    #[command(group(clap::ArgGroup::new("source").required(true).args(["from_file", "from_literal", "from_stdin"])))]
    Create {
        name: String,
        /// Read the value from this file (as is, bytes).
        #[arg(long)]
        from_file: Option<PathBuf>,
        /// The value itself (visible in the shell's history and to local
        /// users while faasctl runs: prefer --from-file or --from-stdin).
        #[arg(long)]
        from_literal: Option<String>,
        /// Read the value from stdin.
        #[arg(long)]
        from_stdin: bool,
        /// Replace an existing secret of the name.
        #[arg(long)]
        replace: bool,
    },
    /// List secrets (names, sizes, versions; never values).
    #[command(visible_alias = "list")]
    Ls {
        /// Every namespace the token acts in.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Show one secret's name, size and version.
    Get { name: String },
    /// Delete a secret (refused while functions use it).
    #[command(visible_alias = "delete")]
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
pub enum LayerCmd {
    /// Publish a new version of a layer (version 1 creates it). SOURCE is
    /// a directory (packed here), a .zip or a .tar.gz whose top level holds
    /// only directories, each mounted read-only at /opt/<directory>:
    /// python/ and nodejs/node_modules/ are on the runtimes' import paths,
    /// bin/ on PATH, lib/ on LD_LIBRARY_PATH.
    Publish {
        name: String,
        source: PathBuf,
        /// What the layer holds.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List layers (each one's latest version), or one layer's versions.
    #[command(visible_alias = "list")]
    Ls { name: Option<String> },
    /// Delete a layer's version (NAME:VERSION) or all its versions
    /// (NAME); refused while a kept function version uses one.
    #[command(visible_alias = "delete")]
    Rm { layer: String },
}

#[derive(Debug, Subcommand)]
pub enum NamespaceCmd {
    /// Create a namespace, with a quota if given.
    Create {
        name: String,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// Change a namespace's quota: the bounds given replace the current
    /// ones (0 lifts a bound), the others stay.
    Set {
        name: String,
        #[command(flatten)]
        quota: QuotaArgs,
    },
    /// Show one namespace and its quota.
    Get { name: String },
    /// List the namespaces (those the token acts in).
    #[command(visible_alias = "list")]
    Ls,
    /// Delete a namespace (refused while it holds functions).
    #[command(visible_alias = "delete")]
    Rm { name: String },
}

/// A namespace's quota; 0 (or not given at create) means no bound of its
/// own (the cluster's bounds still hold).
#[derive(Debug, Args, Default, Clone)]
pub struct QuotaArgs {
    /// Functions the namespace may hold.
    #[arg(long)]
    pub max_functions: Option<u64>,
    /// Calls accepted and not yet running.
    #[arg(long)]
    pub max_queued: Option<u64>,
    /// Calls running at once; more wait queued.
    #[arg(long)]
    pub max_concurrent: Option<u64>,
    /// Submits (invokes) per second over the whole cluster.
    #[arg(long)]
    pub submit_rate: Option<f64>,
    /// Submits at once after a quiet period [default: twice the rate].
    #[arg(long)]
    pub submit_burst: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    Admin,
    Developer,
    Invoker,
    /// Invokes public functions only (the HTTP gateway's token for
    /// requests without one).
    PublicInvoker,
}

#[derive(Debug, Subcommand)]
pub enum ContextCmd {
    /// List contexts; the current one is marked.
    #[command(visible_alias = "list")]
    Ls,
    /// Make a context the current one.
    Use { name: String },
    /// Create or update a context from the global flags given with it
    /// (--endpoint, --ca-file, --token-file, --token, --namespace), and
    /// make it current.
    Set { name: String },
    /// Remove a context.
    #[command(visible_alias = "delete")]
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
pub enum NodeTokenCmd {
    /// Create a join token and print how a node joins with it.
    Create {
        /// How long the token may be used (default 1h, at most 7d).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        /// What the token is for.
        #[arg(long, default_value = "")]
        description: String,
        /// How many nodes may join with it (at most 1000).
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
    /// List the join tokens still valid (ids, never secrets).
    #[command(visible_alias = "list")]
    Ls,
    /// Revoke a join token by id (the part before the dot); nodes that
    /// joined with it stay.
    #[command(visible_alias = "delete")]
    Rm { id: String },
}

#[derive(Debug, Subcommand)]
pub enum RuntimeCmd {
    /// Register a runtime, uploading its image archive or naming an image
    /// already in the platform registry.
    Register(RegisterRuntimeArgs),
    /// List runtimes.
    #[command(visible_alias = "list")]
    Ls,
    /// Show one runtime.
    Get { name: String },
    /// Delete a runtime (refused while functions use it).
    #[command(visible_alias = "delete")]
    Rm { name: String },
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("image").required(true).args(["archive", "image_ref"])))]
pub struct RegisterRuntimeArgs {
    /// Runtime name (e.g. python3). Optional with --file.
    #[arg(required_unless_present = "file")]
    pub name: Option<String>,
    /// TOML file with top-level keys name, path, dependencies, run; flags
    /// given on the command line override its values.
    #[arg(long, short = 'f')]
    pub file: Option<PathBuf>,
    /// Directory inside the container where the function's files go.
    #[arg(long, required_unless_present = "file")]
    pub path: Option<String>,
    /// Command that executes the function.
    #[arg(long, required_unless_present = "file")]
    pub run: Option<String>,
    /// Command that installs a function's dependencies when it is loaded.
    #[arg(long)]
    pub dependencies: Option<String>,
    /// The handler of functions deployed without --handler [default:
    /// handler.handler].
    #[arg(long)]
    pub default_handler: Option<String>,
    /// Command run once per deploy in a build container (installs the
    /// function's declared dependencies, byte-compiles it) [default: none].
    #[arg(long)]
    pub build: Option<String>,
    /// Run the build only for packages with a dependency file
    /// (requirements.txt, package.json, ...); others are stored as uploaded.
    #[arg(long)]
    pub build_only_with_dependencies: bool,
    /// Image archive to upload (OCI image layout or `docker save` tar).
    #[arg(long)]
    pub archive: Option<PathBuf>,
    /// Image already in the platform registry ("repo:tag" or "repo@digest").
    #[arg(long)]
    pub image_ref: Option<String>,
    /// Replace an existing runtime of the same name.
    #[arg(long)]
    pub replace: bool,
}

#[derive(Debug, Subcommand)]
pub enum FunctionCmd {
    /// Create a function, or update it (new version) if it exists: on an
    /// existing function, the settings not given keep their values.
    Deploy(DeployArgs),
    /// Change a function's configuration without a new upload (a new
    /// version with the same package); what is not given is kept.
    Update(UpdateArgs),
    /// List functions.
    #[command(visible_alias = "list")]
    Ls {
        /// Only functions on this runtime.
        #[arg(long)]
        runtime: Option<String>,
        /// Every namespace the token acts in, not only --namespace's.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Show one function: NAME (the current version), NAME:VERSION or
    /// NAME:ALIAS.
    Get { name: String },
    /// List the versions kept of a function (every deploy or update makes
    /// one), oldest first, with the aliases on each.
    Versions { name: String },
    /// Make an earlier version's package and configuration the current
    /// version again (as a new version).
    Rollback {
        name: String,
        /// The version to go back to [default: the one before the current].
        #[arg(long = "to")]
        version: Option<u64>,
    },
    /// Names for versions: invoke NAME:ALIAS to run the version it points
    /// to; move it to switch every later call (and the preloads).
    #[command(subcommand)]
    Alias(AliasCmd),
    /// Delete a function.
    #[command(visible_alias = "delete")]
    Rm { name: String },
    /// Print the logs of a function's latest calls, each line prefixed with
    /// the end of its call's id; with -f, follow every call it runs from
    /// now on (until interrupted).
    Logs {
        name: String,
        /// Follow: stream the output of its running and queued calls, and
        /// of every call that comes, as it is written.
        #[arg(short, long)]
        follow: bool,
        /// How many of its latest ended calls to print first.
        #[arg(long, default_value_t = 5)]
        last: u32,
    },
}

#[derive(Debug, Subcommand)]
pub enum AliasCmd {
    /// Create an alias, or move it: ALIAS sends calls to VERSION; with
    /// --weight V=W, version V gets the share W (0 < W < 1) of them.
    Set {
        /// Function name.
        name: String,
        /// Alias name (not all digits, not "latest").
        alias: String,
        version: u64,
        /// A second version and its share of the calls, VERSION=WEIGHT
        /// (e.g. 3=0.1: a canary of version 3 with a tenth of the calls).
        #[arg(long, value_parser = parse_weight)]
        weight: Option<(u64, f64)>,
    },
    /// List a function's aliases.
    #[command(visible_alias = "list")]
    Ls { name: String },
    /// Delete an alias.
    #[command(visible_alias = "delete")]
    Rm { name: String, alias: String },
}

/// Parses `VERSION=WEIGHT`.
pub fn parse_weight(text: &str) -> Result<(u64, f64), String> {
    let bad = || format!("invalid --weight {text:?}: expected VERSION=WEIGHT, e.g. 3=0.1");
    let (version, weight) = text.split_once('=').ok_or_else(bad)?;
    let version: u64 = version.trim().parse().map_err(|_| bad())?;
    let weight: f64 = weight.trim().parse().map_err(|_| bad())?;
    if version == 0 || !(weight > 0.0 && weight < 1.0) {
        return Err(format!(
            "invalid --weight {text:?}: the version counts from 1, the weight is between 0 and 1 (exclusive)"
        ));
    }
    Ok((version, weight))
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Function name.
    pub name: String,
    /// Source: a directory (packed here into a tar.gz), a .zip or a .tar.gz.
    pub source: PathBuf,
    /// Runtime to run on.
    #[arg(long)]
    pub runtime: String,
    /// Handler setting passed to the runtime (default: handler.handler).
    #[arg(long)]
    pub handler: Option<String>,
    /// Memory limit per call: 128Mi, 1Gi, 512M or bytes (default: platform's).
    #[arg(long, value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// Size of each call's /tmp, like Lambda's ephemeral storage: 512Mi or
    /// bytes, up to the platform's max_tmp_bytes (512 MiB by default).
    /// Memory-backed: past 64Mi it is added to the call's memory limit
    /// [default: 64Mi].
    #[arg(long, value_parser = parse_memory)]
    pub tmp_size: Option<u64>,
    /// Wall-time limit per call: 2s, 500ms, 1m (default: platform's).
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Environment variable for the function, K=V (repeatable).
    #[arg(long = "env", short = 'e', value_parser = parse_env_pair)]
    pub env: Vec<(String, String)>,
    /// The function is safe to run twice: a call lost with its node is run
    /// again elsewhere instead of failing with node_lost.
    #[arg(long)]
    pub idempotent: bool,
    /// A secret of the namespace each call receives as the file
    /// /faas/secrets/NAME, and with NAME:VAR also as the environment
    /// variable VAR (repeatable).
    #[arg(long = "secret", value_parser = parse_secret_ref)]
    pub secrets: Vec<(String, String)>,
    /// What each call may reach over the network: none (the default), or
    /// egress (a route out, DNS, never the node or another call).
    #[arg(long, value_enum)]
    pub network: Option<NetworkArg>,
    /// With --network egress, the only destinations: CIDR:PORT, IP:PORT or
    /// HOST:PORT, a port or a range (repeatable) [default: any public
    /// address].
    #[arg(long = "allow")]
    pub allow: Vec<String>,
    /// Who may call it through the HTTP gateway: private (requests with
    /// an API token) or public (also requests without one, like a Lambda
    /// function URL with auth NONE) [default: private].
    #[arg(long, value_enum)]
    pub http: Option<HttpArg>,
    /// A layer of the namespace, NAME (its latest version) or NAME:VERSION,
    /// mounted under /opt (repeatable, in order, at most 5).
    #[arg(long = "layer")]
    pub layers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    /// Function name.
    pub name: String,
    /// Handler setting passed to the runtime.
    #[arg(long)]
    pub handler: Option<String>,
    /// Memory limit per call: 128Mi, 1Gi, 512M or bytes.
    #[arg(long, value_parser = parse_memory)]
    pub memory: Option<u64>,
    /// Size of each call's /tmp: 512Mi or bytes (see fn deploy --tmp-size).
    #[arg(long, value_parser = parse_memory)]
    pub tmp_size: Option<u64>,
    /// Wall-time limit per call: 2s, 500ms, 1m.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Set this environment variable, K=V (repeatable); the others are kept.
    #[arg(long = "env", short = 'e', value_parser = parse_env_pair)]
    pub env: Vec<(String, String)>,
    /// Remove this environment variable (repeatable).
    #[arg(long = "unset-env", value_name = "NAME")]
    pub unset_env: Vec<String>,
    /// Whether a call lost with its node may be run again elsewhere.
    #[arg(long)]
    pub idempotent: Option<bool>,
    /// Who may call it through the HTTP gateway.
    #[arg(long, value_enum)]
    pub http: Option<HttpArg>,
    /// Use these layers instead of the current ones: NAME or NAME:VERSION
    /// (repeatable, in order).
    #[arg(long = "layer", conflicts_with = "no_layers")]
    pub layers: Vec<String>,
    /// Use no layers any more.
    #[arg(long)]
    pub no_layers: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum HttpArg {
    Private,
    Public,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NetworkArg {
    None,
    Egress,
}

/// Parses `NAME` or `NAME:ENV_VAR`.
pub fn parse_secret_ref(text: &str) -> Result<(String, String), String> {
    let (name, env) = text.split_once(':').unwrap_or((text, ""));
    if name.is_empty() {
        return Err(format!(
            "invalid --secret {text:?}: expected NAME or NAME:ENV_VAR"
        ));
    }
    Ok((name.to_string(), env.to_string()))
}

#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// Function name.
    pub function: String,
    /// Input JSON: inline text, @FILE, or - for stdin. Default {}. Sent as
    /// is: the server validates it.
    #[arg(long, short = 'd')]
    pub data: Option<String>,
    /// Submit and print the call id instead of waiting for the result.
    #[arg(long = "async")]
    pub asynchronous: bool,
    /// Lambda's client context, a JSON object the function reads as
    /// context.client_context (Python) or context.clientContext (Node):
    /// inline text or @FILE.
    #[arg(long)]
    pub client_context: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum CallCmd {
    /// Show one call record.
    Get { id: String },
    /// Wait for a call to finish and show its record.
    Wait {
        id: String,
        /// Give up after this long (exit 4, DEADLINE_EXCEEDED). Default: no limit.
        #[arg(long, value_parser = parse_duration)]
        timeout: Option<Duration>,
    },
    /// List calls, newest first.
    #[command(visible_alias = "list")]
    Ls {
        /// Only calls of this function.
        #[arg(long)]
        function: Option<String>,
        /// Only calls with this status.
        #[arg(long, value_enum)]
        status: Option<StatusFilter>,
        /// At most this many records.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Every namespace the token acts in, not only --namespace's.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Print a call's logs (its stdout and stderr) as they were written.
    Logs {
        id: String,
        /// Follow: print output as the call writes it, until it ends (a
        /// queued call's once it runs).
        #[arg(short, long)]
        follow: bool,
    },
    /// Cancel a call: queued, it never runs; running, its container is
    /// killed. Shows the record (status cancelled); fails if it has ended.
    Cancel { id: String },
    /// Timing statistics of recent calls, per function and broker policy.
    Stats {
        /// Only calls of this function.
        #[arg(long)]
        function: Option<String>,
        /// How many of the most recent finished calls to aggregate.
        #[arg(long, default_value_t = 1000)]
        last: u32,
        /// Every namespace the token acts in, not only --namespace's.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFilter {
    Queued,
    Running,
    Succeeded,
    Failed,
    Timeout,
    Cancelled,
}

impl StatusFilter {
    pub fn to_proto(self) -> faas_proto::v1::CallStatus {
        use faas_proto::v1::CallStatus;
        match self {
            StatusFilter::Queued => CallStatus::Queued,
            StatusFilter::Running => CallStatus::Running,
            StatusFilter::Succeeded => CallStatus::Succeeded,
            StatusFilter::Failed => CallStatus::Failed,
            StatusFilter::Timeout => CallStatus::Timeout,
            StatusFilter::Cancelled => CallStatus::Cancelled,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// List nodes with a summary of their spots.
    #[command(visible_alias = "list")]
    Ls,
    /// Drain a node: it finishes the calls it runs and takes no new work.
    Drain { name: String },
    /// Take a drained node back into the pool.
    Undrain { name: String },
    /// Join tokens, with which new nodes join the cluster.
    #[command(subcommand)]
    Token(NodeTokenCmd),
    /// Remove a node: its certificate is revoked and its session ends.
    #[command(visible_alias = "delete")]
    Rm { name: String },
}

/// Parses a memory size: plain bytes, binary suffixes (Ki, Mi, Gi, Ti, as
/// Kubernetes and OpenFaaS write them) or decimal ones (K/k, M, G, T), with
/// an optional trailing `B` ("512MB", "1GiB").
pub fn parse_memory(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "invalid memory size {text:?}: expected e.g. 128Mi, 1Gi, 512M or bytes"
        ));
    }
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("invalid memory size {text:?}: number too large"))?;
    let unit = unit.trim();
    let unit = unit.strip_suffix(['B', 'b']).unwrap_or(unit);
    let multiplier: u64 = match unit {
        "" => 1,
        "Ki" | "ki" => 1 << 10,
        "Mi" | "mi" => 1 << 20,
        "Gi" | "gi" => 1 << 30,
        "Ti" | "ti" => 1 << 40,
        "K" | "k" => 1_000,
        "M" | "m" => 1_000_000,
        "G" | "g" => 1_000_000_000,
        "T" | "t" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "invalid memory size {text:?}: unknown unit {unit:?} (use Ki, Mi, Gi, K, M, G)"
            ))
        }
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("invalid memory size {text:?}: too large"))
}

/// Parses a human duration ("2s", "500ms", "1m 30s") with humantime.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("invalid duration {text:?}: {e} (e.g. 2s, 500ms, 1m)"))
}

/// Parses `KEY=VALUE`; the value may contain `=` and may be empty.
pub fn parse_env_pair(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("invalid --env {text:?}: expected KEY=VALUE"))?;
    if key.is_empty() {
        return Err(format!("invalid --env {text:?}: empty key"));
    }
    Ok((key.to_string(), value.to_string()))
}

/// Millisecond count of a duration, for the API's `*_ms` fields; a
/// non-zero duration under 1 ms rounds up so it never reads as "default".
pub fn duration_to_ms(duration: Duration) -> u64 {
    let ms = duration.as_millis();
    if ms == 0 && !duration.is_zero() {
        1
    } else {
        u64::try_from(ms).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn memory_units() {
        assert_eq!(parse_memory("128Mi"), Ok(128 << 20));
        assert_eq!(parse_memory("1Gi"), Ok(1 << 30));
        assert_eq!(parse_memory("1GiB"), Ok(1 << 30));
        assert_eq!(parse_memory("512M"), Ok(512_000_000));
        assert_eq!(parse_memory("512MB"), Ok(512_000_000));
        assert_eq!(parse_memory("64k"), Ok(64_000));
        assert_eq!(parse_memory("134217728"), Ok(134_217_728));
        assert!(parse_memory("Mi").is_err());
        assert!(parse_memory("12Xi").is_err());
        assert!(parse_memory("-1").is_err());
        assert!(parse_memory("99999999999999Ti").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("2").is_err());
        assert_eq!(duration_to_ms(Duration::from_micros(10)), 1);
        assert_eq!(duration_to_ms(Duration::ZERO), 0);
        assert_eq!(duration_to_ms(Duration::from_secs(2)), 2000);
    }

    #[test]
    fn env_pairs() {
        assert_eq!(parse_env_pair("A=b"), Ok(("A".into(), "b".into())));
        assert_eq!(parse_env_pair("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert_eq!(parse_env_pair("A="), Ok(("A".into(), String::new())));
        assert!(parse_env_pair("A").is_err());
        assert!(parse_env_pair("=b").is_err());
    }

    #[test]
    fn smoke_command_lines_parse() {
        let parse = |line: &str| Cli::try_parse_from(line.split_whitespace());
        let cli = parse(
            "faasctl fn deploy smoke-slow --runtime python3 --timeout 2s --memory 128Mi ./dir",
        )
        .unwrap();
        match cli.command {
            Command::Function(FunctionCmd::Deploy(d)) => {
                assert_eq!(d.timeout, Some(Duration::from_secs(2)));
                assert_eq!(d.memory, Some(128 << 20));
                assert_eq!(d.source, PathBuf::from("./dir"));
            }
            other => panic!("unexpected {other:?}"),
        }
        let cli = parse("faasctl invoke smoke-py --async --data {} -o json").unwrap();
        assert_eq!(cli.global.output, OutputFormat::Json);
        assert!(matches!(
            cli.command,
            Command::Invoke(InvokeArgs {
                asynchronous: true,
                ..
            })
        ));
        let cli = parse("faasctl --endpoint http://a:1,http://b:2 node ls").unwrap();
        assert_eq!(cli.global.endpoint, vec!["http://a:1", "http://b:2"]);
        assert!(parse("faasctl call wait ID --timeout 5s -o json").is_ok());
        assert!(parse("faasctl call ls --status failed --limit 3 --function f").is_ok());
        assert!(parse("faasctl runtime register --file rt.toml --archive img.tar").is_ok());
        assert!(parse("faasctl runtime register py --path /p --run r --image-ref x:1").is_ok());
        // An image is mandatory, and only one kind of it.
        assert!(parse("faasctl runtime register py --path /p --run r").is_err());
        assert!(
            parse("faasctl runtime register py --path /p --run r --image-ref x --archive a")
                .is_err()
        );
        // Without --file, name/path/run are required.
        assert!(parse("faasctl runtime register py --image-ref x").is_err());
    }
}
