//! The agents' side of the control plane: one bidirectional stream per node
//! agent (`faas.v1.AgentService/Session`).

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use faas_pki::dispatch::DispatchKey;
use faas_proto::v1::agent_service_server::AgentService;
use faas_proto::v1::{agent_message, AgentMessage, ControlMessage};
use faas_proto::v1::{control_message, SpotOperation};
use futures::{Stream, StreamExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, info_span, warn, Instrument};

use crate::auth::{Credentials, Principal};
use crate::broker::{BrokerHandle, Input};
use crate::ledger::is_call_id;

/// Operations buffered per agent before the broker considers it stuck.
const AGENT_QUEUE: usize = 1024;
/// Most spots one agent may offer.
const MAX_SPOTS: u32 = 1024;

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
}

impl AgentSessions {
    pub fn new(
        broker: watch::Receiver<Option<BrokerHandle>>,
        credentials: Credentials,
        dispatch_key: DispatchKey,
    ) -> Self {
        AgentSessions {
            broker,
            next_session: Arc::new(AtomicU64::new(1)),
            credentials,
            dispatch_key,
        }
    }
}

/// Stamps the call of an operation with its proof of dispatch to `node`.
fn stamp(key: &DispatchKey, node: &str, mut message: ControlMessage) -> ControlMessage {
    if let Some(control_message::Msg::Operation(SpotOperation {
        call: Some(call), ..
    })) = message.msg.as_mut()
    {
        call.dispatch_proof = key.proof(node, &call.call_id);
    }
    message
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
            proven,
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
        let key = self.dispatch_key.clone();
        let outbound =
            ReceiverStream::new(rx).map(move |message| message.map(|m| stamp(&key, &certified, m)));
        Ok(Response::new(Box::pin(outbound)))
    }
}
