//! Who may do what: every request passes [`AuthLayer`] before it reaches a
//! service. The layer authenticates (an API token in `authorization:
//! Bearer`, or the TLS client certificate of a node) and authorizes by the
//! method's row of [`access_of`]; a method without a row is refused. The
//! principal it found travels in the request's extensions, where handlers
//! that filter by owner (an invoker's own calls) read it.

pub mod credentials;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use faas_pki::PeerIdentity;
use faas_proto::v1::Role;

use crate::error::ApiError;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

pub use credentials::Credentials;

/// Who sent a request, once proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// An API token, by id, with the namespaces it acts in (see
    /// [`Scope`]).
    Token {
        id: String,
        role: Role,
        scope: Scope,
    },
    /// A node, by the certificate it presented (checked against its
    /// current record).
    Node(String),
    /// Nobody proved anything: only public methods.
    Anonymous,
}

impl Principal {
    /// The principal of a request that passed the layer.
    pub fn of<T>(request: &tonic::Request<T>) -> Principal {
        request
            .extensions()
            .get::<Principal>()
            .cloned()
            .unwrap_or(Principal::Anonymous)
    }

    /// The token id whose calls the principal may read; None: any call (a
    /// developer or an admin). Anyone else reads no call: no token id is
    /// "-".
    pub fn call_owner_filter(&self) -> Option<&str> {
        match self {
            Principal::Token {
                role: Role::Admin | Role::Developer,
                ..
            } => None,
            Principal::Token { id, .. } => Some(id),
            _ => Some("-"),
        }
    }

    /// A public-invoker token (the HTTP gateway's, for requests without a
    /// token of their own): public functions only.
    pub fn is_public_invoker(&self) -> bool {
        matches!(
            self,
            Principal::Token {
                role: Role::PublicInvoker,
                ..
            }
        )
    }

    pub fn token_id(&self) -> &str {
        match self {
            Principal::Token { id, .. } => id,
            _ => "",
        }
    }

    /// Whether the principal acts in `namespace` (an admin acts in all).
    pub fn acts_in(&self, namespace: &str) -> bool {
        match self {
            Principal::Token {
                role: Role::Admin, ..
            } => true,
            Principal::Token { scope, .. } => scope.contains(namespace),
            _ => false,
        }
    }

    /// `namespace` (empty: "default") if the principal acts in it; else
    /// PERMISSION_DENIED naming the namespaces it does act in.
    pub fn check_namespace<'a>(&self, namespace: &'a str) -> Result<&'a str, ApiError> {
        let namespace = faas_proto::namespaces::or_default(namespace);
        if self.acts_in(namespace) {
            return Ok(namespace);
        }
        let scope = match self {
            Principal::Token { scope, .. } => scope.to_string(),
            _ => "none".into(),
        };
        Err(ApiError::PermissionDenied(format!(
            "this token does not act in namespace {namespace:?} (its namespaces: {scope})"
        )))
    }

    /// Which namespaces a listing for `requested` covers: None for every
    /// namespace the principal acts in ("*"), or one namespace (checked).
    pub fn list_scope(&self, requested: &str) -> Result<Option<String>, ApiError> {
        if requested == faas_proto::namespaces::ALL {
            return Ok(None);
        }
        self.check_namespace(requested)
            .map(|ns| Some(ns.to_string()))
    }

    /// Whether a record of `namespace` belongs in a listing of `scope`
    /// (see [`Principal::list_scope`]).
    pub fn lists(&self, scope: &Option<String>, namespace: &str) -> bool {
        let namespace = faas_proto::namespaces::or_default(namespace);
        match scope {
            Some(ns) => ns == namespace,
            None => self.acts_in(namespace),
        }
    }
}

/// The namespaces a developer or invoker token acts in: those listed, all
/// of them for "*", "default" for an empty list (tokens made before
/// namespaces).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope(std::sync::Arc<[String]>);

impl Scope {
    pub fn of(namespaces: &[String]) -> Scope {
        if namespaces.is_empty() {
            Scope(vec![faas_proto::namespaces::DEFAULT.to_string()].into())
        } else {
            Scope(namespaces.into())
        }
    }

    pub fn contains(&self, namespace: &str) -> bool {
        self.0
            .iter()
            .any(|n| n == faas_proto::namespaces::ALL || n == namespace)
    }

    pub fn names(&self) -> &[String] {
        &self.0
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

/// What a method needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone: health checks, and the join (which checks its own token).
    Public,
    /// An API token of this role or a more powerful one.
    AtLeast(Role),
    /// A node's certificate.
    Node,
}

/// The access table: one row per method of the API. Anything not listed is
/// refused, so a new RPC is closed until it gets a row here.
pub fn access_of(path: &str) -> Option<Access> {
    use Access::*;
    use Role::*;
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    Some(match (service, method) {
        ("grpc.health.v1.Health", "Check" | "Watch") => Public,
        // The API's schema, to anyone with a token (grpcurl tries v1, then
        // v1alpha).
        (
            "grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection",
            "ServerReflectionInfo",
        ) => AtLeast(Invoker),
        ("faas.v1.NodeJoinService", "Join") => Public,
        ("faas.v1.NodeJoinService", "RenewCertificate") => Node,
        ("faas.v1.AgentService", "Session") => Node,
        ("faas.v1.RuntimeService", "RegisterRuntime" | "DeleteRuntime") => AtLeast(Admin),
        ("faas.v1.RuntimeService", "GetRuntime" | "ListRuntimes") => AtLeast(Developer),
        (
            "faas.v1.FunctionService",
            "DeployFunction"
            | "DeployFunctionWithProgress"
            | "GetFunction"
            | "ListFunctions"
            | "DeleteFunction"
            | "ListFunctionVersions"
            | "RollbackFunction"
            | "SetAlias"
            | "ListAliases"
            | "DeleteAlias",
        ) => AtLeast(Developer),
        // A public invoker only for public functions (checked on accept).
        ("faas.v1.CallService", "Invoke" | "Submit") => AtLeast(PublicInvoker),
        (
            "faas.v1.CallService",
            "GetCall" | "WaitCall" | "ListCalls" | "GetCallLogs" | "CancelCall" | "FollowCallLogs",
        ) => AtLeast(Invoker),
        ("faas.v1.CallService", "GetCallStats") => AtLeast(Developer),
        (
            "faas.v1.ClusterService",
            "ListNodes" | "DrainNode" | "CreateJoinToken" | "ListJoinTokens" | "DeleteJoinToken"
            | "RemoveNode",
        ) => AtLeast(Admin),
        ("faas.v1.AccessService", "CreateToken" | "ListTokens" | "DeleteToken") => AtLeast(Admin),
        ("faas.v1.AccessService", "WhoAmI") => AtLeast(Invoker),
        ("faas.v1.NamespaceService", "CreateNamespace" | "UpdateNamespace" | "DeleteNamespace") => {
            AtLeast(Admin)
        }
        ("faas.v1.NamespaceService", "GetNamespace" | "ListNamespaces") => AtLeast(Invoker),
        ("faas.v1.SecretService", "PutSecret" | "GetSecret" | "ListSecrets" | "DeleteSecret") => {
            AtLeast(Developer)
        }
        ("faas.v1.LayerService", "PublishLayer" | "ListLayers" | "DeleteLayer") => {
            AtLeast(Developer)
        }
        _ => return None,
    })
}

/// Whether `have` may do what needs `need`.
pub fn role_allows(have: Role, need: Role) -> bool {
    let rank = |r: Role| match r {
        Role::Admin => 4,
        Role::Developer => 3,
        Role::Invoker => 2,
        Role::PublicInvoker => 1,
        Role::Unspecified => 0,
    };
    rank(have) > 0 && rank(have) >= rank(need)
}

/// The metadata a follower sets on what it forwards to the leader; honoured
/// only from a replica's certificate (a client setting it is ignored).
pub use crate::api::FORWARDED;

/// Decides one request: the principal, or the status to answer with.
pub fn authorize(
    credentials: &Credentials,
    path: &str,
    headers: &http::HeaderMap,
    peer_cert: Option<&[u8]>,
) -> Result<(Principal, bool), Status> {
    let peer = peer_cert.and_then(faas_pki::ca::peer_identity);
    let from_replica = matches!(peer, Some(PeerIdentity::Replica(_)));
    let Some(access) = access_of(path) else {
        return Err(Status::permission_denied(format!(
            "{path} is not part of the faas API"
        )));
    };
    match access {
        Access::Public => Ok((Principal::Anonymous, from_replica)),
        Access::Node => match (peer, peer_cert) {
            (Some(PeerIdentity::Node(node)), Some(der)) => {
                credentials.check_node(&node, der)?;
                Ok((Principal::Node(node), false))
            }
            _ => Err(Status::unauthenticated(
                "this method needs a node certificate issued by the cluster (faas-agent --join)",
            )),
        },
        Access::AtLeast(need) => {
            let token = bearer_token(headers)?;
            let (role, scope) = credentials.check_token(&token)?;
            if !role_allows(role, need) {
                return Err(Status::permission_denied(format!(
                    "{path} needs the {} role or above; this token is {}",
                    need.short_name(),
                    role.short_name()
                )));
            }
            Ok((
                Principal::Token {
                    id: token.id.clone(),
                    role,
                    scope,
                },
                from_replica,
            ))
        }
    }
}

fn bearer_token(headers: &http::HeaderMap) -> Result<faas_pki::Token, Status> {
    let value = headers
        .get(faas_pki::client::AUTHORIZATION)
        .ok_or_else(|| {
            Status::unauthenticated(
                "no credentials: send an API token (authorization: Bearer <token>; faasctl: a context, --token or FAAS_TOKEN)",
            )
        })?
        .to_str()
        .map_err(|_| Status::unauthenticated("the authorization header is not text"))?;
    let token = value.strip_prefix("Bearer ").ok_or_else(|| {
        Status::unauthenticated("the authorization header is not 'Bearer <token>'")
    })?;
    faas_pki::Token::parse(token).map_err(|e| Status::unauthenticated(e.to_string()))
}

/// The tower layer that applies [`authorize`] to every request.
#[derive(Clone)]
pub struct AuthLayer {
    credentials: Credentials,
}

impl AuthLayer {
    pub fn new(credentials: Credentials) -> AuthLayer {
        AuthLayer { credentials }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Auth<S> {
        Auth {
            inner,
            credentials: self.credentials.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Auth<S> {
    inner: S,
    credentials: Credentials,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<S, B, R> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let certs = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|info| info.peer_certs());
        let leaf = certs.as_ref().and_then(|c| c.first()).map(|c| c.as_ref());
        let decided = authorize(
            &self.credentials,
            request.uri().path(),
            request.headers(),
            leaf,
        );
        match decided {
            Ok((principal, from_replica)) => {
                if !from_replica {
                    // Only a replica may say a request was forwarded (which
                    // exempts it from the per-client submit rate).
                    request.headers_mut().remove(FORWARDED);
                }
                request.extensions_mut().insert(principal);
                Box::pin(self.inner.call(request))
            }
            Err(status) => {
                tracing::debug!(path = %request.uri().path(), code = ?status.code(), "request refused");
                let response = status.into_http::<R>();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_of_the_api_has_a_row() {
        // The services' method paths, as tonic generates them.
        let methods = [
            "/faas.v1.RuntimeService/RegisterRuntime",
            "/faas.v1.RuntimeService/GetRuntime",
            "/faas.v1.RuntimeService/ListRuntimes",
            "/faas.v1.RuntimeService/DeleteRuntime",
            "/faas.v1.FunctionService/DeployFunction",
            "/faas.v1.FunctionService/DeployFunctionWithProgress",
            "/faas.v1.FunctionService/GetFunction",
            "/faas.v1.FunctionService/ListFunctions",
            "/faas.v1.FunctionService/DeleteFunction",
            "/faas.v1.FunctionService/ListFunctionVersions",
            "/faas.v1.FunctionService/RollbackFunction",
            "/faas.v1.FunctionService/SetAlias",
            "/faas.v1.FunctionService/ListAliases",
            "/faas.v1.FunctionService/DeleteAlias",
            "/faas.v1.CallService/Invoke",
            "/faas.v1.CallService/Submit",
            "/faas.v1.CallService/GetCall",
            "/faas.v1.CallService/WaitCall",
            "/faas.v1.CallService/ListCalls",
            "/faas.v1.CallService/GetCallLogs",
            "/faas.v1.CallService/GetCallStats",
            "/faas.v1.CallService/CancelCall",
            "/faas.v1.CallService/FollowCallLogs",
            "/faas.v1.ClusterService/ListNodes",
            "/faas.v1.ClusterService/DrainNode",
            "/faas.v1.ClusterService/CreateJoinToken",
            "/faas.v1.ClusterService/ListJoinTokens",
            "/faas.v1.ClusterService/DeleteJoinToken",
            "/faas.v1.ClusterService/RemoveNode",
            "/faas.v1.AccessService/CreateToken",
            "/faas.v1.AccessService/ListTokens",
            "/faas.v1.AccessService/DeleteToken",
            "/faas.v1.AccessService/WhoAmI",
            "/faas.v1.NamespaceService/CreateNamespace",
            "/faas.v1.NamespaceService/UpdateNamespace",
            "/faas.v1.NamespaceService/GetNamespace",
            "/faas.v1.NamespaceService/ListNamespaces",
            "/faas.v1.NamespaceService/DeleteNamespace",
            "/faas.v1.SecretService/PutSecret",
            "/faas.v1.SecretService/GetSecret",
            "/faas.v1.SecretService/ListSecrets",
            "/faas.v1.SecretService/DeleteSecret",
            "/faas.v1.LayerService/PublishLayer",
            "/faas.v1.LayerService/ListLayers",
            "/faas.v1.LayerService/DeleteLayer",
            "/faas.v1.AgentService/Session",
            "/faas.v1.NodeJoinService/Join",
            "/faas.v1.NodeJoinService/RenewCertificate",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ];
        for m in methods {
            assert!(access_of(m).is_some(), "{m} has no access row");
        }
        assert_eq!(access_of("/faas.v1.CallService/Nope"), None);
        assert_eq!(access_of("garbage"), None);
    }

    #[test]
    fn a_token_acts_only_in_its_namespaces() {
        let token = |role, namespaces: &[&str]| Principal::Token {
            id: "t".into(),
            role,
            scope: Scope::of(&namespaces.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
        };
        let dev = token(Role::Developer, &["team-a"]);
        assert!(dev.acts_in("team-a"));
        assert!(!dev.acts_in("team-b"));
        assert!(!dev.acts_in("default"));
        assert!(matches!(
            dev.check_namespace("team-b"),
            Err(ApiError::PermissionDenied(_))
        ));
        assert!(dev.check_namespace("").is_err(), "empty is default");
        // Tokens made before namespaces act in "default".
        let old = token(Role::Invoker, &[]);
        assert_eq!(old.check_namespace("").unwrap(), "default");
        assert!(!old.acts_in("team-a"));
        let all = token(Role::Invoker, &["*"]);
        assert!(all.acts_in("team-a") && all.acts_in("default"));
        assert!(token(Role::Admin, &["team-a"]).acts_in("team-z"));
        assert!(!Principal::Anonymous.acts_in("default"));
        // Listings: one namespace, or every namespace it acts in.
        assert_eq!(dev.list_scope("*").unwrap(), None);
        assert!(dev.lists(&None, "team-a") && !dev.lists(&None, "default"));
        assert!(dev.list_scope("default").is_err());
        let one = dev.list_scope("team-a").unwrap();
        assert!(dev.lists(&one, "team-a") && !dev.lists(&one, "team-b"));
    }

    #[test]
    fn roles_are_ordered() {
        assert!(role_allows(Role::Admin, Role::Invoker));
        assert!(role_allows(Role::Developer, Role::Developer));
        assert!(!role_allows(Role::Developer, Role::Admin));
        assert!(!role_allows(Role::Invoker, Role::Developer));
        assert!(!role_allows(Role::Unspecified, Role::Invoker));
    }
}
