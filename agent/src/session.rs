//! The agent's stream to the control plane's leader: hello, then reports
//! out and operations in. Reconnects forever; reports produced while
//! disconnected (call results above all) are kept and sent on the next
//! session.

use std::time::Duration;

use faas_proto::v1::agent_service_client::AgentServiceClient;
use faas_proto::v1::{
    agent_message, control_message, AgentDraining, AgentHello, AgentMessage, CallResult,
    OperationRefused, SpotOperation,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

use crate::config::Config;

pub struct Session {
    /// Set once every spot stopped and every report went out.
    pub finished: bool,
    pub config: Config,
    /// Reports from the spots.
    pub outbound: mpsc::UnboundedReceiver<AgentMessage>,
    /// One queue of operations per spot.
    pub spots: Vec<mpsc::UnboundedSender<SpotOperation>>,
    /// Set when the agent drains: no new operation is taken, the spots'
    /// queues are closed, and the session lives on until every report
    /// (results above all) is sent.
    pub draining: tokio::sync::watch::Receiver<bool>,
    /// Calls the spots are running, with their dispatch proofs (listed in
    /// the hello).
    pub running: crate::spot::RunningCalls,
    /// Results sent but not yet confirmed recorded by the leader, oldest
    /// first: sent again on every new session until confirmed.
    pub unconfirmed: std::collections::VecDeque<CallResult>,
    /// Set once the spots are done and every report went out: until then
    /// the agent waits for the last confirmations, across sessions.
    pub confirm_deadline: Option<tokio::time::Instant>,
    /// The package cache, for the leader's ForgetPackage.
    pub packages: crate::packages::Packages,
    /// The node's certificate, with which every session opens.
    pub identity: crate::identity::Identity,
    /// Deploy-time builds go here (see build.rs).
    pub builds: mpsc::UnboundedSender<faas_proto::v1::BuildJob>,
    /// This process, told in every hello: a call the leader handed to it
    /// that the hello does not list never reached it.
    pub incarnation: String,
}

/// Results kept for confirmation at most (a leader that never confirms,
/// e.g. an older version, must not make the agent grow without bound).
const MAX_UNCONFIRMED: usize = 4096;
/// How long a drained agent waits for its last results to be confirmed.
const DRAIN_CONFIRM_WAIT: Duration = Duration::from_secs(10);

impl Session {
    /// Runs until the agent has drained and every report is sent.
    pub async fn run_forever(mut self) {
        let mut delay = Duration::from_millis(100);
        // A message taken from `outbound` that a broken session failed to send.
        let mut unsent: Option<AgentMessage> = None;
        loop {
            for endpoint in self.config.control_plane.clone() {
                match self.run_once(&endpoint, &mut unsent).await {
                    Ok(()) if self.finished => return,
                    Ok(()) => {
                        info!(%endpoint, "session ended; reconnecting");
                        delay = Duration::from_millis(100);
                    }
                    Err(e) => warn!(%endpoint, error = %e, "control plane session failed"),
                }
                if self
                    .confirm_deadline
                    .is_some_and(|at| tokio::time::Instant::now() >= at)
                {
                    warn!(
                        results = self.unconfirmed.len(),
                        "results not confirmed recorded before exit"
                    );
                    return;
                }
            }
            tokio::time::sleep(delay).await;
            // Capped low: most refusals are a follower saying "not the
            // leader" while a new leader takes over, and every moment
            // without a session is a moment the node takes no work.
            delay = (delay * 2).min(Duration::from_millis(500));
        }
    }

    async fn run_once(
        &mut self,
        endpoint: &str,
        unsent: &mut Option<AgentMessage>,
    ) -> anyhow::Result<()> {
        let channel = faas_pki::client::endpoint(endpoint, &self.identity.tls())?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        let mut client = AgentServiceClient::new(channel).max_decoding_message_size(32 << 20);
        let (tx, rx) = mpsc::channel::<AgentMessage>(256);
        let mut dispatch_proofs: std::collections::HashMap<String, String> = self
            .running
            .lock()
            .expect("poisoned")
            .iter()
            .map(|(id, running)| (id.clone(), running.proof.clone()))
            .collect();
        dispatch_proofs.extend(
            self.unconfirmed
                .iter()
                .map(|r| (r.call_id.clone(), r.dispatch_proof.clone())),
        );
        let running_calls: Vec<String> = dispatch_proofs.keys().cloned().collect();
        tx.send(AgentMessage {
            msg: Some(agent_message::Msg::Hello(AgentHello {
                node: self.config.node.clone(),
                spots: self.config.spots,
                version: faas_proto::VERSION.to_string(),
                running_calls,
                dispatch_proofs,
                incarnation: self.incarnation.clone(),
            })),
        })
        .await?;
        let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
        info!(%endpoint, node = %self.config.node, spots = self.config.spots, "joined the cluster");
        // Results go again from the unconfirmed list below.
        if let Some(message) = unsent.take().filter(|m| !is_result(m)) {
            if let Err(e) = tx.send(message).await {
                *unsent = Some(e.0);
                anyhow::bail!("stream closed");
            }
        }
        if !self.unconfirmed.is_empty() {
            info!(
                results = self.unconfirmed.len(),
                "sending results not confirmed recorded"
            );
        }
        for result in self.unconfirmed.clone() {
            let message = AgentMessage {
                msg: Some(agent_message::Msg::Result(result)),
            };
            if tx.send(message).await.is_err() {
                anyhow::bail!("stream closed");
            }
        }
        if *self.draining.borrow() {
            // Drained while away: no work for this node from the new leader.
            let notice = AgentMessage {
                msg: Some(agent_message::Msg::Draining(AgentDraining {})),
            };
            if tx.send(notice).await.is_err() {
                anyhow::bail!("stream closed");
            }
        }
        loop {
            if self.confirm_deadline.is_some() && self.unconfirmed.is_empty() {
                self.finished = true;
                return Ok(());
            }
            let deadline = self.confirm_deadline;
            let wait_confirmations = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = wait_confirmations => {
                    warn!(results = self.unconfirmed.len(), "results not confirmed recorded before exit");
                    self.finished = true;
                    return Ok(());
                }
                _ = self.draining.changed(), if !self.spots.is_empty() => {
                    if *self.draining.borrow() {
                        info!("draining: no new operations");
                        // Closing the queues ends each spot after its current operation.
                        self.spots.clear();
                        // The leader stops placing work here at once.
                        let notice = AgentMessage {
                            msg: Some(agent_message::Msg::Draining(AgentDraining {})),
                        };
                        if tx.send(notice).await.is_err() {
                            anyhow::bail!("stream closed");
                        }
                    }
                }
                message = self.outbound.recv(), if deadline.is_none() => {
                    let Some(message) = message else {
                        self.confirm_deadline = Some(tokio::time::Instant::now() + DRAIN_CONFIRM_WAIT);
                        continue;
                    };
                    if let Some(agent_message::Msg::Result(result)) = &message.msg {
                        if self.unconfirmed.len() >= MAX_UNCONFIRMED {
                            let dropped = self.unconfirmed.pop_front();
                            warn!(call_id = ?dropped.map(|r| r.call_id), "too many unconfirmed results; forgetting the oldest");
                        }
                        self.unconfirmed.push_back(result.clone());
                    }
                    if let Err(e) = tx.send(message).await {
                        *unsent = Some(e.0);
                        anyhow::bail!("stream closed");
                    }
                }
                control = inbound.message() => {
                    match control? {
                        None => return Ok(()),
                        Some(control) => match control.msg {
                            Some(control_message::Msg::Operation(mut op)) => {
                                match self.spots.get(op.spot as usize) {
                                    Some(spot) => {
                                        crate::spot::register_running(&self.running, &mut op);
                                        if let Err(unsent) = spot.send(op) {
                                            // The spot's task has ended (the agent is stopping).
                                            if let Some(call) = unsent.0.call {
                                                self.running.lock().expect("poisoned").remove(&call.call_id);
                                            }
                                        }
                                    }
                                    None => {
                                        if *self.draining.borrow() {
                                            warn!(spot = op.spot, "draining: operation refused");
                                        } else {
                                            warn!(spot = op.spot, "operation for a spot this agent does not have");
                                        }
                                        // Its call never started: the leader places it elsewhere.
                                        let refused = AgentMessage {
                                            msg: Some(agent_message::Msg::Refused(OperationRefused {
                                                spot: op.spot,
                                                call_id: op.call.map(|c| c.call_id).unwrap_or_default(),
                                            })),
                                        };
                                        if tx.send(refused).await.is_err() {
                                            anyhow::bail!("stream closed");
                                        }
                                    }
                                }
                            }
                            Some(control_message::Msg::Recorded(recorded)) => {
                                self.unconfirmed.retain(|r| r.call_id != recorded.call_id);
                            }
                            Some(control_message::Msg::ForgetPackage(forget)) => {
                                self.packages.forget(&forget.digest);
                            }
                            Some(control_message::Msg::Cancel(cancel)) => {
                                let cancel_notify = self.running.lock().expect("poisoned").get(&cancel.call_id).map(|r| r.cancel.clone());
                                match cancel_notify {
                                    Some(notify) => {
                                        info!(call_id = %cancel.call_id, "call cancelled; killing it");
                                        notify.notify_one();
                                    }
                                    None => debug!(call_id = %cancel.call_id, "cancel of a call not running here; ignored"),
                                }
                            }
                            Some(control_message::Msg::FollowLogs(follow)) => {
                                if let Some(running) = self.running.lock().expect("poisoned").get(&follow.call_id) {
                                    running.follow.notify_one();
                                }
                            }
                            Some(control_message::Msg::Build(job)) => {
                                let refusal = if *self.draining.borrow() {
                                    Some("the node is draining")
                                } else if self.builds.send(job.clone()).is_err() {
                                    Some("the node is stopping")
                                } else {
                                    None
                                };
                                if let Some(why) = refusal {
                                    let done = AgentMessage {
                                        msg: Some(agent_message::Msg::BuildDone(faas_proto::v1::BuildDone {
                                            build_id: job.build_id,
                                            error: format!("{why}: build not run"),
                                            ..Default::default()
                                        })),
                                    };
                                    if tx.send(done).await.is_err() {
                                        anyhow::bail!("stream closed");
                                    }
                                }
                            }
                            None => {}
                        },
                    }
                }
            }
        }
    }
}

fn is_result(message: &AgentMessage) -> bool {
    matches!(message.msg, Some(agent_message::Msg::Result(_)))
}
