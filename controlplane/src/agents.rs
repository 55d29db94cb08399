//! The agents' side of the control plane: one bidirectional stream per node
//! agent (`faas.v1.AgentService/Session`).

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use faas_pki::dispatch::DispatchKey;
use faas_pki::registry::{Access, TokenSigner};
use faas_proto::v1::agent_service_server::AgentService;
use faas_proto::v1::control_message;
use faas_proto::v1::{agent_message, AgentMessage, ControlMessage};
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, info_span, warn, Instrument};

use crate::auth::{Credentials, Principal};
use crate::broker::{BrokerHandle, BuildMessage, Input};
use crate::ledger::is_call_id;

/// Operations buffered per agent before the broker considers it stuck.
const AGENT_QUEUE: usize = 1024;
/// Most spots one agent may offer.
const MAX_SPOTS: u32 = 1024;
/// Largest log chunk an agent may send (it sends at most 64 KiB).
const MAX_LOG_CHUNK: usize = 256 << 10;
/// Largest build output chunk an agent may send (it sends at most 1 MiB).
const MAX_BUILD_CHUNK: usize = 2 << 20;

#[derive(Clone)]
pub struct AgentSessions {
    /// Set once this replica leads (only the leader runs the broker).
    pub broker: watch::Receiver<Option<BrokerHandle>>,
    next_session: Arc<AtomicU64>,
    /// Which certificate each node holds: a session ends when its node's
    /// certificate is revoked.
    credentials: Credentials,
    /// Stamps each call handed to a node, and checks the stamps a node
    /// shows in its hello.
    dispatch_key: DispatchKey,
    /// Mints the nodes' registry tokens (None: anonymous registry).
    signer: Option<Arc<TokenSigner>>,
}

impl AgentSessions {
    pub fn new(
        broker: watch::Receiver<Option<BrokerHandle>>,
        credentials: Credentials,
        dispatch_key: DispatchKey,
        signer: Option<Arc<TokenSigner>>,
    ) -> Self {
        AgentSessions {
            broker,
            next_session: Arc::new(AtomicU64::new(1)),
            credentials,
            dispatch_key,
            signer,
        }
    }
}

/// How long a node's registry token lives, and for how long one is reused
/// for the same repositories (so that minting stays off most dispatches).
const NODE_TOKEN_TTL: Duration = Duration::from_secs(600);
const NODE_TOKEN_REUSE: Duration = Duration::from_secs(300);

/// What the leader adds to each operation on its way to one node: the
/// call's dispatch proof, and a pull-only registry token for the
/// operation's runtime image and function package.
struct Stamper {
    node: String,
    dispatch_key: DispatchKey,
    signer: Option<Arc<TokenSigner>>,
    /// Tokens minted for this node, by the (image, package) references
    /// of the operations they were minted for.
    tokens: HashMap<Vec<String>, (String, Instant)>,
}

impl Stamper {
    fn stamp(&mut self, mut message: ControlMessage) -> ControlMessage {
        if let Some(control_message::Msg::Build(job)) = message.msg.as_mut() {
            // Minted afresh, not kept: builds are rare.
            let image = job.runtime.as_ref().map(|r| r.image.as_str()).unwrap_or("");
            let references = [
                image,
                job.package_repository.as_str(),
                job.deps_repository.as_str(),
            ];
            if let Some(token) = self.mint(&references) {
                job.registry_token = token;
            }
            return message;
        }
        let Some(control_message::Msg::Operation(op)) = message.msg.as_mut() else {
            return message;
        };
        if let Some(call) = op.call.as_mut() {
            call.dispatch_proof = self.dispatch_key.proof(&self.node, &call.call_id);
        }
        if self.signer.is_some() && (op.runtime.is_some() || op.function.is_some()) {
            // Keyed by the references as sent: parsed only to mint. The
            // function's layers are pulled like its package.
            let mut references = vec![
                op.runtime
                    .as_ref()
                    .map(|r| r.image.clone())
                    .unwrap_or_default(),
                op.function
                    .as_ref()
                    .map(|f| f.package_repository.clone())
                    .unwrap_or_default(),
            ];
            if let Some(f) = op.function.as_ref() {
                references.extend(f.layers.iter().map(|l| l.repository.clone()));
            }
            if let Some(token) = self.token(references) {
                op.registry_token = token;
            }
        }
        message
    }

    /// A pull token for the repositories of an image, a package and its
    /// layers (any may be empty), reused within NODE_TOKEN_REUSE.
    fn token(&mut self, references: Vec<String>) -> Option<String> {
        if let Some((token, at)) = self.tokens.get(&references) {
            if at.elapsed() < NODE_TOKEN_REUSE {
                return Some(token.clone());
            }
        }
        let token = self.mint(&references.iter().map(String::as_str).collect::<Vec<_>>())?;
        // Bounded: a node sees few distinct runtime/function pairs within
        // the reuse window.
        if self.tokens.len() >= 1024 {
            self.tokens.clear();
        }
        self.tokens
            .insert(references, (token.clone(), Instant::now()));
        Some(token)
    }

    /// A new pull token for the repositories of `references` (image or
    /// repository references; empty ones are skipped); None without a
    /// signer, a repository, or when minting fails (logged: the message
    /// goes without, and the agent's pull is refused).
    fn mint(&self, references: &[&str]) -> Option<String> {
        let signer = self.signer.as_ref()?;
        let mut repositories: Vec<String> = references
            .iter()
            .copied()
            .filter_map(repository_of)
            .collect();
        repositories.sort();
        repositories.dedup();
        if repositories.is_empty() {
            return None;
        }
        let access: Vec<Access> = repositories.iter().map(Access::pull).collect();
        signer
            .mint(&format!("node:{}", self.node), &access, NODE_TOKEN_TTL)
            .map_err(
                |e| warn!(error = %e, "minting a registry token failed; the message goes without"),
            )
            .ok()
    }
}

/// The repository of an image or package reference
/// (`host/repository[:tag][@digest]`); None if it does not parse.
fn repository_of(reference: &str) -> Option<String> {
    let parsed: oci_client::Reference = reference.parse().ok()?;
    Some(parsed.repository().to_string())
}

type ControlStream = Pin<Box<dyn Stream<Item = Result<ControlMessage, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for AgentSessions {
    type SessionStream = ControlStream;

    async fn session(
        &self,
        request: Request<Streaming<AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let Some(broker) = self.broker.borrow().clone() else {
            return Err(Status::unavailable(
                "this control-plane replica is not the leader; connect to the leader",
            ));
        };
        // The layer let only a node's current certificate through; the node
        // is who the certificate names.
        let Principal::Node(certified) = Principal::of(&request) else {
            return Err(Status::unauthenticated(
                "an agent session needs a node certificate",
            ));
        };
        let fingerprint = request
            .peer_certs()
            .and_then(|certs| certs.first().map(|c| faas_pki::fingerprint(c.as_ref())))
            .unwrap_or_default();
        let mut inbound = request.into_inner();
        let hello = match inbound.next().await {
            Some(Ok(AgentMessage {
                msg: Some(agent_message::Msg::Hello(hello)),
            })) => hello,
            Some(Err(e)) => return Err(e),
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of an agent session must be a hello",
                ))
            }
        };
        if hello.node != certified {
            warn!(node = ?hello.node, %certified, "agent hello refused: not the node of its certificate");
            return Err(Status::permission_denied(format!(
                "this certificate is node {certified:?}'s; a hello may name only that node"
            )));
        }
        if hello.spots == 0 || hello.spots > MAX_SPOTS {
            return Err(Status::invalid_argument(format!(
                "hello needs between 1 and {MAX_SPOTS} spots"
            )));
        }
        // Everything from the stream is checked before it reaches a key:
        // an id that is not a call id is dropped, never looked up.
        let (running_calls, malformed): (Vec<String>, Vec<String>) = hello
            .running_calls
            .iter()
            .cloned()
            .partition(|id| is_call_id(id));
        if !malformed.is_empty() {
            warn!(node = %hello.node, ?malformed, "hello lists malformed call ids; ignored");
        }
        // The calls this node shows a proof for: only those may be taken
        // as running here if still recorded QUEUED.
        let proven: HashSet<String> = running_calls
            .iter()
            .filter(|id| {
                hello
                    .dispatch_proofs
                    .get(*id)
                    .is_some_and(|proof| self.dispatch_key.verify(&certified, id, proof))
            })
            .cloned()
            .collect();
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let node = hello.node.clone();
        let (tx, rx) = mpsc::channel(AGENT_QUEUE);
        broker.send(Input::AgentConnected {
            node: node.clone(),
            spots: hello.spots,
            session,
            tx,
            running_calls,
            // Only compared, never a key: bounded so that it stays cheap.
            incarnation: hello.incarnation.chars().take(64).collect(),
            proven,
            version: shown_version(&hello.version),
        });
        let span = info_span!("agent", %node, session);
        let credentials = self.credentials.clone();
        let mut nodes_changed = credentials.nodes_changed();
        tokio::spawn(
            async move {
                info!(version = %hello.version, spots = hello.spots, "session open");
                loop {
                    let message = tokio::select! {
                        message = inbound.next() => message,
                        changed = nodes_changed.changed() => {
                            if changed.is_ok() && credentials.node_accepts(&node, &fingerprint) {
                                continue;
                            }
                            warn!("the node's certificate was revoked; closing its session");
                            break;
                        }
                    };
                    let Some(message) = message else { break };
                    let input = match message {
                        Ok(AgentMessage {
                            msg: Some(agent_message::Msg::Spot(report)),
                        }) => Input::Spot {
                            node: node.clone(),
                            session,
                            report,
                        },
                        Ok(AgentMessage {
                            msg: Some(agent_message::Msg::Result(result)),
                        }) if !is_call_id(&result.call_id) => {
                            warn!(call_id = ?result.call_id, "result with a malformed call id; refused");
                            continue;
                        }
                        Ok(AgentMessage {
                            msg: Some(agent_message::Msg::Result(result)),
                        }) => Input::Result {
                            node: node.clone(),
                            session,
                            result: Box::new(result),
                        },
                        Ok(AgentMessage {
                            msg: Some(agent_message::Msg::Log(chunk)),
                        }) if !is_call_id(&chunk.call_id) || chunk.data.len() > MAX_LOG_CHUNK => {
                            warn!(call_id = ?chunk.call_id, bytes = chunk.data.len(), "malformed log chunk; dropped");
                            continue;
                        }
                        Ok(AgentMessage {
                            msg: Some(agent_message::Msg::Log(chunk)),
                        }) => Input::Log {
                            node: node.clone(),
                            session,
                            chunk,
                        },
                        Ok(AgentMessage {
                            msg: Some(agent_message::Msg::Draining(_)),
                        }) => Input::AgentDraining {
                            node: node.clone(),
                            session,
                        },
                        Ok(AgentMessage {
                            msg: Some(agent_message::Msg::Refused(refused)),
                        }) if !refused.call_id.is_empty() && !is_call_id(&refused.call_id) => {
                            warn!(call_id = ?refused.call_id, "refusal with a malformed call id; ignored");
                            continue;
                        }
                        Ok(AgentMessage {
                            msg: Some(agent_message::Msg::Refused(refused)),
                        }) => Input::Refused {
                            node: node.clone(),
                            session,
                            call_id: refused.call_id,
                        },
                        Ok(AgentMessage {
                            msg: Some(agent_message::Msg::BuildOutput(output)),
                        }) if output.data.len() > MAX_BUILD_CHUNK => {
                            warn!(build_id = ?output.build_id, bytes = output.data.len(), "build output chunk over the bound; dropped");
                            continue;
                        }
                        Ok(AgentMessage {
                            msg: Some(agent_message::Msg::BuildOutput(output)),
                        }) => Input::BuildMessage {
                            node: node.clone(),
                            session,
                            message: BuildMessage::Output(output),
                        },
                        Ok(AgentMessage {
                            msg: Some(agent_message::Msg::BuildDone(done)),
                        }) => Input::BuildMessage {
                            node: node.clone(),
                            session,
                            message: BuildMessage::Done(done),
                        },
                        Ok(other) => {
                            warn!(?other, "unexpected message from agent; ignored");
                            continue;
                        }
                        Err(e) => {
                            warn!(error = %e, "agent stream broke");
                            break;
                        }
                    };
                    if !broker.send(input) {
                        break;
                    }
                }
                info!("session closed");
                broker.send(Input::AgentDisconnected { node, session });
            }
            .instrument(span),
        );
        let mut stamper = Stamper {
            node: certified,
            dispatch_key: self.dispatch_key.clone(),
            signer: self.signer.clone(),
            tokens: HashMap::new(),
        };
        let outbound =
            ReceiverStream::new(rx).map(move |message| message.map(|m| stamper.stamp(m)));
        Ok(Response::new(Box::pin(outbound)))
    }
}

/// An agent's version as `faasctl node ls` shows it: what its hello said,
/// printable characters only and at most [`MAX_VERSION_CHARS`] of them (the
/// node is authenticated, not trusted to write a sane string).
fn shown_version(reported: &str) -> String {
    reported
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(MAX_VERSION_CHARS)
        .collect()
}

/// Longest agent version kept (a semver with build metadata fits).
const MAX_VERSION_CHARS: usize = 64;

#[cfg(test)]
mod tests {
    use faas_proto::v1::{CallAssignment, FunctionBundle, RuntimeBundle, SpotOperation};

    use super::*;

    fn operation(with_bundles: bool) -> ControlMessage {
        let mut op = SpotOperation {
            call: Some(CallAssignment {
                call_id: "c1".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        if with_bundles {
            op.runtime = Some(RuntimeBundle {
                image: "127.0.0.1:5000/faas/runtimes/python3@sha256:00".into(),
                ..Default::default()
            });
            op.function = Some(FunctionBundle {
                package_repository: "127.0.0.1:5000/faas/functions/f".into(),
                ..Default::default()
            });
        }
        ControlMessage {
            msg: Some(control_message::Msg::Operation(op)),
        }
    }

    fn op(message: ControlMessage) -> SpotOperation {
        match message.msg {
            Some(control_message::Msg::Operation(op)) => op,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn operations_leave_with_their_proof_and_a_pull_token() {
        let ca = faas_pki::ClusterCa::generate().unwrap();
        let dir = tempfile::tempdir().unwrap();
        faas_pki::registry::ensure_signer(dir.path()).unwrap();
        let mut stamper = Stamper {
            node: "n1".into(),
            dispatch_key: DispatchKey::from_ca(&ca),
            signer: Some(Arc::new(TokenSigner::load(dir.path()).unwrap())),
            tokens: HashMap::new(),
        };
        let first = op(stamper.stamp(operation(true)));
        let proof = &first.call.as_ref().unwrap().dispatch_proof;
        assert!(DispatchKey::from_ca(&ca).verify("n1", "c1", proof));
        assert!(!DispatchKey::from_ca(&ca).verify("n2", "c1", proof));
        assert!(!first.registry_token.is_empty());
        // Reused for the same repositories, within the reuse window.
        let second = op(stamper.stamp(operation(true)));
        assert_eq!(second.registry_token, first.registry_token);
        // Nothing to pull, no token.
        assert!(op(stamper.stamp(operation(false)))
            .registry_token
            .is_empty());
        // An anonymous registry: no token.
        stamper.signer = None;
        stamper.tokens.clear();
        assert!(op(stamper.stamp(operation(true))).registry_token.is_empty());
    }

    #[test]
    fn a_reported_version_is_shown_printable_and_bounded() {
        assert_eq!(shown_version("0.1.0+3f2a9c1"), "0.1.0+3f2a9c1");
        assert_eq!(shown_version("0.1\n\u{1b}[31m.0 x"), "0.1[31m.0x");
        assert_eq!(shown_version(&"9".repeat(1000)).len(), MAX_VERSION_CHARS);
    }
}
