//! The agent's stream to the control plane's leader: hello, then reports
//! out and operations in. Reconnects forever; reports produced while
//! disconnected (call results above all) are kept and sent on the next
//! session.

use std::time::Duration;

use faas_proto::v1::agent_service_client::AgentServiceClient;
use faas_proto::v1::{agent_message, control_message, AgentHello, AgentMessage, SpotOperation};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{info, warn};

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
    /// Calls the spots are running (listed in the hello).
    pub running: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

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
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }

    async fn run_once(
        &mut self,
        endpoint: &str,
        unsent: &mut Option<AgentMessage>,
    ) -> anyhow::Result<()> {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_string())?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect()
            .await?;
        let mut client = AgentServiceClient::new(channel).max_decoding_message_size(32 << 20);
        let (tx, rx) = mpsc::channel::<AgentMessage>(256);
        let running_calls: Vec<String> = self
            .running
            .lock()
            .expect("poisoned")
            .iter()
            .cloned()
            .collect();
        tx.send(AgentMessage {
            msg: Some(agent_message::Msg::Hello(AgentHello {
                node: self.config.node.clone(),
                spots: self.config.spots,
                version: env!("CARGO_PKG_VERSION").to_string(),
                running_calls,
            })),
        })
        .await?;
        let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
        info!(%endpoint, node = %self.config.node, spots = self.config.spots, "joined the cluster");
        if let Some(message) = unsent.take() {
            if let Err(e) = tx.send(message).await {
                *unsent = Some(e.0);
                anyhow::bail!("stream closed");
            }
        }
        loop {
            tokio::select! {
                _ = self.draining.changed(), if !self.spots.is_empty() => {
                    if *self.draining.borrow() {
                        info!("draining: no new operations");
                        // Closing the queues ends each spot after its current operation.
                        self.spots.clear();
                    }
                }
                message = self.outbound.recv() => {
                    let Some(message) = message else {
                        self.finished = true;
                        return Ok(());
                    };
                    if let Err(e) = tx.send(message).await {
                        *unsent = Some(e.0);
                        anyhow::bail!("stream closed");
                    }
                }
                control = inbound.message() => {
                    match control? {
                        None => return Ok(()),
                        Some(control) => match control.msg {
                            Some(control_message::Msg::Operation(op)) => {
                                match self.spots.get(op.spot as usize) {
                                    Some(spot) => { let _ = spot.send(op); }
                                    None if *self.draining.borrow() => warn!(spot = op.spot, "draining: operation refused"),
                                    None => warn!(spot = op.spot, "operation for a spot this agent does not have"),
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
