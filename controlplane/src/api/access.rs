//! API tokens (`AccessService`), join tokens and node removal (the
//! admin's half of `ClusterService`), and the nodes' join
//! (`NodeJoinService`).

use std::time::Duration;

use faas_pki::Token;
use faas_proto::v1::access_service_server::AccessService;
use faas_proto::v1::node_join_service_server::NodeJoinService;
use faas_proto::v1::{
    ApiToken, CreateJoinTokenRequest, CreateJoinTokenResponse, CreateTokenRequest,
    CreateTokenResponse, DeleteTokenRequest, DeleteTokenResponse, JoinRequest, JoinResponse,
    JoinToken, JoinTokenRecord, ListJoinTokensResponse, ListTokensRequest, ListTokensResponse,
    NodeIdentity, RemoveNodeRequest, RenewCertificateRequest, Role, WhoAmIRequest, WhoAmIResponse,
};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use super::Api;
use crate::auth::Principal;
use crate::error::{now_ms, ApiError};
use crate::store::Kind;

/// Default and longest validity of a join token.
const JOIN_TOKEN_TTL: Duration = Duration::from_secs(3600);
const MAX_JOIN_TOKEN_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The most nodes one join token may join.
const MAX_JOIN_TOKEN_USES: u32 = 1000;
/// Most API tokens a cluster keeps (each is checked from memory).
const MAX_TOKENS: usize = 10_000;
const MAX_DESCRIPTION: usize = 256;
/// Most namespaces one token names.
const MAX_TOKEN_NAMESPACES: usize = 64;

fn check_description(text: &str) -> Result<(), ApiError> {
    if text.len() > MAX_DESCRIPTION || text.chars().any(|c| c.is_control()) {
        return Err(ApiError::InvalidArgument(format!(
            "a description is at most {MAX_DESCRIPTION} bytes of printable text"
        )));
    }
    Ok(())
}

fn expiry(ttl_ms: u64) -> i64 {
    if ttl_ms == 0 {
        0
    } else {
        now_ms().saturating_add(ttl_ms.min(i64::MAX as u64) as i64)
    }
}

#[tonic::async_trait]
impl AccessService for Api {
    async fn create_token(
        &self,
        request: Request<CreateTokenRequest>,
    ) -> Result<Response<CreateTokenResponse>, Status> {
        let req = request.into_inner();
        let role = Role::try_from(req.role).unwrap_or(Role::Unspecified);
        if role == Role::Unspecified {
            return Err(ApiError::InvalidArgument(
                "a token needs a role: admin, developer or invoker".into(),
            )
            .into());
        }
        check_description(&req.description)?;
        let mut namespaces = req.namespaces;
        namespaces.sort();
        namespaces.dedup();
        if namespaces.len() > MAX_TOKEN_NAMESPACES {
            return Err(ApiError::InvalidArgument(format!(
                "a token acts in at most {MAX_TOKEN_NAMESPACES} namespaces (or \"*\": all)"
            ))
            .into());
        }
        for ns in &namespaces {
            if ns != faas_proto::namespaces::ALL {
                crate::error::check_name("namespace", ns)?;
                self.check_namespace_exists(ns)?;
            }
        }
        let count = self
            .store
            .count(Kind::ApiToken)
            .await
            .map_err(ApiError::from)?;
        if count as usize >= MAX_TOKENS {
            return Err(ApiError::ResourceExhausted(format!(
                "the cluster holds {count} API tokens, its limit is {MAX_TOKENS}: delete unused ones"
            ))
            .into());
        }
        let token = Token::generate();
        let record = ApiToken {
            id: token.id.clone(),
            role: role as i32,
            description: req.description,
            created_at_ms: now_ms(),
            expires_at_ms: expiry(req.ttl_ms),
            secret_sha256: token.secret_hash(),
            namespaces,
        };
        if !self
            .store
            .create(Kind::ApiToken, &token.id, &record)
            .await
            .map_err(ApiError::from)?
        {
            return Err(ApiError::Unavailable("token id collision; retry".into()).into());
        }
        self.credentials.put_token(record.clone());
        info!(token_id = %record.id, role = ?role, "API token created");
        Ok(Response::new(CreateTokenResponse {
            token: token.reveal(),
            record: Some(ApiToken {
                secret_sha256: String::new(),
                ..record
            }),
        }))
    }

    async fn list_tokens(
        &self,
        _request: Request<ListTokensRequest>,
    ) -> Result<Response<ListTokensResponse>, Status> {
        let mut tokens: Vec<ApiToken> = self
            .store
            .list(Kind::ApiToken)
            .await
            .map_err(ApiError::from)?;
        for t in &mut tokens {
            t.secret_sha256.clear();
        }
        tokens.sort_by_key(|t| t.created_at_ms);
        Ok(Response::new(ListTokensResponse { tokens }))
    }

    async fn delete_token(
        &self,
        request: Request<DeleteTokenRequest>,
    ) -> Result<Response<DeleteTokenResponse>, Status> {
        let id = request.into_inner().id;
        if !faas_pki::token::is_token_id(&id) {
            return Err(ApiError::InvalidArgument(format!(
                "invalid token id {id:?}: 16 lowercase hex digits (the part before the dot)"
            ))
            .into());
        }
        if !self
            .store
            .delete(Kind::ApiToken, &id)
            .await
            .map_err(ApiError::from)?
        {
            return Err(ApiError::NotFound(format!("no API token {id:?}")).into());
        }
        self.credentials.remove_token(&id);
        info!(token_id = %id, "API token deleted");
        Ok(Response::new(DeleteTokenResponse {}))
    }

    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIResponse>, Status> {
        match Principal::of(&request) {
            Principal::Token { id, role, scope } => Ok(Response::new(WhoAmIResponse {
                token_id: id,
                role: role as i32,
                namespaces: if role == Role::Admin {
                    vec![faas_proto::namespaces::ALL.to_string()]
                } else {
                    scope.names().to_vec()
                },
            })),
            _ => Err(Status::unauthenticated("no API token")),
        }
    }
}

impl Api {
    pub(super) async fn create_join_token(
        &self,
        req: CreateJoinTokenRequest,
    ) -> Result<CreateJoinTokenResponse, ApiError> {
        check_description(&req.description)?;
        let ttl = match req.ttl_ms {
            0 => JOIN_TOKEN_TTL,
            ms => Duration::from_millis(ms),
        };
        if ttl > MAX_JOIN_TOKEN_TTL {
            return Err(ApiError::InvalidArgument(format!(
                "a join token is valid at most {}",
                humantime::format_duration(MAX_JOIN_TOKEN_TTL)
            )));
        }
        let uses = match req.uses {
            0 => 1,
            n if n > MAX_JOIN_TOKEN_USES => {
                return Err(ApiError::InvalidArgument(format!(
                    "a join token joins at most {MAX_JOIN_TOKEN_USES} nodes"
                )))
            }
            n => n,
        };
        let token = Token::generate();
        let record = JoinTokenRecord {
            id: token.id.clone(),
            secret_sha256: token.secret_hash(),
            expires_at_ms: now_ms() + ttl.as_millis() as i64,
            description: req.description,
            created_at_ms: now_ms(),
            uses_left: uses,
        };
        if !self
            .store
            .create(Kind::JoinToken, &token.id, &record)
            .await?
        {
            return Err(ApiError::Unavailable("token id collision; retry".into()));
        }
        info!(token_id = %record.id, ttl = %humantime::format_duration(ttl), uses, "join token created");
        Ok(CreateJoinTokenResponse {
            token: token.reveal(),
            ca_hash: self.pki.ca.fingerprint(),
            expires_at_ms: record.expires_at_ms,
        })
    }

    pub(super) async fn list_join_tokens(&self) -> Result<ListJoinTokensResponse, ApiError> {
        let now = now_ms();
        let tokens = self
            .store
            .list::<JoinTokenRecord>(Kind::JoinToken)
            .await?
            .into_iter()
            .filter(|t| t.expires_at_ms > now)
            .map(|t| JoinToken {
                id: t.id,
                description: t.description,
                created_at_ms: t.created_at_ms,
                expires_at_ms: t.expires_at_ms,
                uses_left: t.uses_left,
            })
            .collect();
        Ok(ListJoinTokensResponse { tokens })
    }

    pub(super) async fn delete_join_token(&self, id: &str) -> Result<(), ApiError> {
        crate::error::check_name("join token id", id)?;
        if !self.store.delete(Kind::JoinToken, id).await? {
            return Err(ApiError::NotFound(format!("no join token {id:?}")));
        }
        info!(token_id = %id, "join token revoked");
        Ok(())
    }

    /// Takes one use of a join token (deleting it with its last one) and
    /// returns the record as it was, or None if it cannot join: unknown, wrong secret, expired or used up.
    /// Taken before the node is certified, so that concurrent joins never
    /// exceed the bound; [`Api::return_join_use`] gives it back if the
    /// join then fails.
    async fn take_join_use(&self, token: &Token) -> Result<Option<JoinTokenRecord>, ApiError> {
        for _ in 0..16 {
            let Some((record, revision)) = self
                .store
                .get_revision::<JoinTokenRecord>(Kind::JoinToken, &token.id)
                .await?
            else {
                return Ok(None);
            };
            if !token.matches(&record.secret_sha256) || record.expires_at_ms <= now_ms() {
                return Ok(None);
            }
            let taken = match record.uses_left {
                // No bound (a record from before bounds).
                0 => true,
                1 => {
                    self.store
                        .delete_if_mod_revision(Kind::JoinToken, &token.id, revision)
                        .await?
                }
                n => {
                    let less = JoinTokenRecord {
                        uses_left: n - 1,
                        ..record.clone()
                    };
                    self.store
                        .put_if_mod_revision(Kind::JoinToken, &token.id, &less, revision)
                        .await?
                }
            };
            if taken {
                return Ok(Some(record));
            }
        }
        Err(ApiError::Unavailable(
            "the join token is in use by other joins; retry".into(),
        ))
    }

    /// Gives back a use taken by a join that then failed (a taken name, a
    /// bad request). Best effort: a token revoked or swept meanwhile stays
    /// gone.
    async fn return_join_use(&self, token: &Token, record: JoinTokenRecord) {
        if record.uses_left == 0 {
            return;
        }
        for _ in 0..16 {
            let result = match self
                .store
                .get_revision::<JoinTokenRecord>(Kind::JoinToken, &token.id)
                .await
            {
                Ok(Some((now, revision))) => {
                    let back = JoinTokenRecord {
                        uses_left: now.uses_left + 1,
                        ..now
                    };
                    self.store
                        .put_if_mod_revision(Kind::JoinToken, &token.id, &back, revision)
                        .await
                }
                // Its last use was taken: the record comes back as it was.
                Ok(None) => {
                    let back = JoinTokenRecord {
                        uses_left: 1,
                        ..record.clone()
                    };
                    self.store.create(Kind::JoinToken, &token.id, &back).await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(true) => return,
                Ok(false) => continue,
                Err(e) => {
                    warn!(token_id = %token.id, error = %e, "giving a join token's use back failed");
                    return;
                }
            }
        }
    }

    pub(super) async fn remove_node(&self, req: RemoveNodeRequest) -> Result<(), ApiError> {
        crate::error::check_name("node", &req.name)?;
        if !self.store.delete(Kind::NodeIdentity, &req.name).await? {
            return Err(ApiError::NotFound(format!(
                "no node {:?} has joined",
                req.name
            )));
        }
        self.credentials.remove_node(&req.name);
        info!(node = %req.name, "node removed; its certificate is revoked");
        Ok(())
    }

    /// The certificate for `node`'s key, recorded as the node's current
    /// one (the one it replaces stays valid until it expires). `existing`
    /// is the record being renewed and its revision: the write happens only
    /// if the record is still that one (a node removed, or removed and
    /// joined again, meanwhile is not brought back or overwritten).
    async fn certify(
        &self,
        node: &str,
        csr_pem: &str,
        join_token_id: Option<String>,
        existing: Option<(NodeIdentity, i64)>,
    ) -> Result<JoinResponse, ApiError> {
        if csr_pem.len() > 16 << 10 {
            return Err(ApiError::InvalidArgument(
                "the certificate request is over 16 KiB".into(),
            ));
        }
        let issued = self
            .pki
            .ca
            .issue_node(node, csr_pem, self.pki.node_cert_ttl)
            .map_err(|e| ApiError::InvalidArgument(e.to_string()))?;
        let not_after_ms = issued.not_after.saturating_mul(1000);
        let record = match existing.as_ref().map(|(old, _)| old) {
            Some(old) => NodeIdentity {
                cert_sha256: issued.fingerprint.clone(),
                not_after_ms,
                previous_cert_sha256: old.cert_sha256.clone(),
                previous_not_after_ms: old.not_after_ms,
                ..old.clone()
            },
            None => NodeIdentity {
                name: node.to_string(),
                cert_sha256: issued.fingerprint.clone(),
                not_after_ms,
                joined_at_ms: now_ms(),
                join_token_id: join_token_id.unwrap_or_default(),
                ..Default::default()
            },
        };
        let written = match &existing {
            // A name is taken once: a second join under it is refused.
            None => self.store.create(Kind::NodeIdentity, node, &record).await?,
            Some((_, revision)) => {
                if !self
                    .store
                    .put_if_mod_revision(Kind::NodeIdentity, node, &record, *revision)
                    .await?
                {
                    return Err(ApiError::FailedPrecondition(format!(
                        "node {node:?} was removed or renewed meanwhile; not renewed"
                    )));
                }
                true
            }
        };
        if !written {
            return Err(ApiError::AlreadyExists(format!(
                "a node named {node:?} has joined already; an admin removes it first (faasctl node rm {node})"
            )));
        }
        self.credentials.put_node(record);
        Ok(JoinResponse {
            cert_pem: issued.cert_pem,
            ca_pem: self.pki.ca.cert_pem().to_string(),
            not_after_ms,
            registry_ca_pem: self.pki.registry_ca_pem.clone().unwrap_or_default(),
        })
    }
}

#[tonic::async_trait]
impl NodeJoinService for Api {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let req = request.into_inner();
        let refused =
            || Status::unauthenticated("the join token is not valid (unknown or expired)");
        let token = Token::parse(&req.token).map_err(|_| refused())?;
        crate::error::check_name("node", &req.node)?;
        let Some(record) = self.take_join_use(&token).await? else {
            warn!(node = %req.node, token_id = %token.id, "join refused: bad, expired or used-up token");
            return Err(refused());
        };
        let response = match self
            .certify(&req.node, &req.csr_pem, Some(token.id.clone()), None)
            .await
        {
            Ok(response) => response,
            Err(e) => {
                self.return_join_use(&token, record).await;
                return Err(e.into());
            }
        };
        info!(node = %req.node, token_id = %token.id, "node joined");
        Ok(Response::new(response))
    }

    async fn renew_certificate(
        &self,
        request: Request<RenewCertificateRequest>,
    ) -> Result<Response<JoinResponse>, Status> {
        let Principal::Node(node) = Principal::of(&request) else {
            return Err(Status::unauthenticated(
                "renewal needs the node's certificate",
            ));
        };
        // Read from etcd, not the cache: the record as it is now; and only
        // the node's current certificate renews (a replaced one, still
        // valid for the sessions it opened, does not).
        let presented = request
            .peer_certs()
            .and_then(|c| c.first().map(|d| faas_pki::fingerprint(d.as_ref())))
            .unwrap_or_default();
        let existing: (NodeIdentity, i64) = self
            .store
            .get_revision(Kind::NodeIdentity, &node)
            .await
            .map_err(ApiError::from)?
            .filter(|(record, _): &(NodeIdentity, i64)| record.cert_sha256 == presented)
            .ok_or_else(|| {
                Status::unauthenticated(format!(
                    "node {node:?} was removed, or this is not its current certificate: join again"
                ))
            })?;
        let response = self
            .certify(&node, &request.into_inner().csr_pem, None, Some(existing))
            .await?;
        info!(%node, "node certificate renewed");
        Ok(Response::new(response))
    }
}
