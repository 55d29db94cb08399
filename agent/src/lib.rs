//! The faas node agent as a library: the binary parses its configuration
//! and calls [`run`].

#![forbid(unsafe_code)]

pub mod build;
pub mod collect;
pub mod config;
pub mod container;
pub mod egress;
pub mod extract_jail;
pub mod identity;
pub mod ids;
pub mod io_files;
pub mod live_logs;
pub mod metrics;
pub mod packages;
pub mod session;
pub mod spot;
pub mod uids;

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

async fn connect_driver(config: &Config, registry_roots: &[String]) -> anyhow::Result<Driver> {
    let driver_config = DriverConfig {
        registry_roots: registry_roots.to_vec(),
        socket: config.containerd.clone(),
        namespace: config.namespace.clone(),
        insecure_registries: config.insecure_registries.clone(),
        oci_runtime: Some(config.oci_runtime.clone()),
        runtime: config.containerd_runtime.clone(),
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
    // Before anything else: a node that cannot prove who it is has nothing
    // to do.
    let identity = identity::Identity::establish(&config).await?;
    let renewal = tokio::spawn(
        identity
            .clone()
            .keep_renewed(config.control_plane.clone(), config.node.clone()),
    );
    // The registry's CA: the operator's, or the one the control plane
    // handed over with the node's certificate.
    let registry_roots: Vec<String> = match &config.registry_ca {
        Some(path) => vec![std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading the registry CA {}: {e}", path.display()))?],
        None => identity.registry_ca().into_iter().collect(),
    };
    let _metrics_server = match config.metrics_listen {
        Some(addr) => Some(faas_metrics::serve(addr, metrics::registry()).await?.1),
        None => None,
    };
    // Flushed when `run` returns (a clean stop).
    let _tracing = faas_telemetry::Tracing::start_if(
        "faas-agent",
        config.otlp_endpoint.as_deref(),
        vec![
            ("service.version", faas_proto::VERSION.to_string()),
            ("service.instance.id", config.node.clone()),
        ],
    )?;
    let driver = connect_driver(&config, &registry_roots).await?;
    // Whatever an earlier run of this agent left behind goes first.
    let report = driver.cleanup_namespace().await?;
    info!(?report, "cleaned the namespace");
    let spots_dir = config.state_dir.join("spots");
    if spots_dir.exists() {
        // io tmpfs mounts of containers an earlier run left behind.
        for entry in std::fs::read_dir(&spots_dir)?.flatten() {
            container::unmount_io(&entry.path());
            build::unmount_work(&entry.path());
        }
        std::fs::remove_dir_all(&spots_dir)?;
    }
    std::fs::create_dir_all(&spots_dir)?;
    // What calls with egress of an earlier run left (this agent's only).
    let egress = egress::Egress::new(&config.namespace, &config.state_dir);
    egress.cleanup_leftovers().await;
    let packages = packages::Packages::new(
        config.state_dir.join("packages"),
        config.insecure_registries.clone(),
        &registry_roots,
        config.packages,
        extract_jail::Extractor::new(
            &config.namespace,
            &config.state_dir,
            config.packages.extract,
        ),
    )?;

    let (outbound_tx, outbound_rx) = mpsc::unbounded_channel();
    let running: spot::RunningCalls = Default::default();
    let ctx = Arc::new(spot::SpotContext {
        config: config.clone(),
        driver,
        packages: packages.clone(),
        outbound: outbound_tx,
        running: running.clone(),
        teardown_retry: std::sync::Mutex::new(Vec::new()),
        uids: uids::UidPool::new(config.uid_base, config.uid_count),
        egress,
        preloads_over_budget: Default::default(),
        preload_cooldowns: Default::default(),
    });
    // Tear-downs that failed while containerd was away are retried.
    let retrier = {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                ctx.retry_teardowns().await;
            }
        })
    };
    let mut spot_queues = Vec::new();
    let mut spot_tasks = Vec::new();
    for index in 0..config.spots {
        metrics::spot_reported(index, faas_proto::v1::SpotState::Free);
        let (tx, rx) = mpsc::unbounded_channel();
        spot_queues.push(tx);
        spot_tasks.push(tokio::spawn(spot::run_spot(ctx.clone(), index, rx)));
    }
    // The spots hold the only other references: when they end, the
    // outbound channel closes and the session ends after sending the rest.
    let retry_ctx = Arc::downgrade(&ctx);
    let builds = build::spawn(retry_ctx.clone());
    drop(ctx);
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let session = session::Session {
        finished: false,
        config,
        outbound: outbound_rx,
        spots: spot_queues,
        draining: drain_rx,
        running,
        unconfirmed: Default::default(),
        confirm_deadline: None,
        packages,
        identity,
        builds,
        incarnation: uuid::Uuid::now_v7().to_string(),
    };
    let mut session_task = tokio::spawn(session.run_forever());
    tokio::select! {
        _ = &mut session_task => return Ok(()),
        _ = shutdown_signal() => info!("shutting down: finishing running calls, clearing spots"),
    }
    let _ = drain_tx.send(true);
    let drained = tokio::time::timeout(
        Duration::from_secs(60),
        futures::future::join_all(spot_tasks),
    )
    .await;
    if drained.is_err() {
        warn!("spots did not finish within 60 s; leaving their containers to the next start's clean-up");
    }
    retrier.abort();
    renewal.abort();
    if let Some(ctx) = retry_ctx.upgrade() {
        let _ = tokio::time::timeout(Duration::from_secs(10), ctx.retry_teardowns()).await;
    }
    // The session sends the last reports, then waits (up to 10 s) for the
    // leader to confirm the last results recorded.
    if tokio::time::timeout(Duration::from_secs(12), session_task)
        .await
        .is_err()
    {
        warn!("could not send every report before exiting");
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
