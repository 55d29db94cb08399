//! The faas node agent as a library: the binary parses its configuration
//! and calls [`run`].

#![forbid(unsafe_code)]

pub mod config;
pub mod packages;
pub mod session;
pub mod spot;

use std::sync::Arc;
use std::time::Duration;

use faas_driver::{Driver, DriverConfig};
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::config::Config;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn connect_driver(config: &Config) -> anyhow::Result<Driver> {
    let driver_config = DriverConfig {
        socket: config.containerd.clone(),
        namespace: config.namespace.clone(),
        insecure_registries: config.insecure_registries.clone(),
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match Driver::connect(driver_config.clone()).await {
            Ok(d) => return Ok(d),
            Err(e) if tokio::time::Instant::now() < deadline => {
                warn!(error = %e, "containerd not reachable yet; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => anyhow::bail!("connecting to containerd: {e}"),
        }
    }
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let driver = connect_driver(&config).await?;
    // Whatever an earlier run of this agent left behind goes first.
    let report = driver.cleanup_namespace().await?;
    info!(?report, "cleaned the namespace");
    let spots_dir = config.state_dir.join("spots");
    if spots_dir.exists() {
        std::fs::remove_dir_all(&spots_dir)?;
    }
    std::fs::create_dir_all(&spots_dir)?;
    let packages = packages::Packages::new(
        config.state_dir.join("packages"),
        config.insecure_registries.clone(),
    )?;

    let (outbound_tx, outbound_rx) = mpsc::unbounded_channel();
    let ctx = Arc::new(spot::SpotContext {
        config: config.clone(),
        driver,
        packages,
        outbound: outbound_tx,
    });
    let mut spot_queues = Vec::new();
    for index in 0..config.spots {
        let (tx, rx) = mpsc::unbounded_channel();
        spot_queues.push(tx);
        tokio::spawn(spot::run_spot(ctx.clone(), index, rx));
    }
    let session = session::Session {
        config,
        outbound: outbound_rx,
        spots: spot_queues,
    };
    tokio::select! {
        _ = session.run_forever() => {}
        _ = shutdown_signal() => info!("shutting down"),
    }
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
