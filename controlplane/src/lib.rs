//! The faas control plane as a library: the binary only parses its
//! configuration and calls [`run`].

#![forbid(unsafe_code)]

pub mod agents;
pub mod api;
pub mod auth;
pub mod broker;
pub mod build;
pub mod catalog;
pub mod config;
pub mod error;
pub mod format;
pub mod leader;
pub mod ledger;
pub mod metrics;
pub mod package;
pub mod registry;
pub mod retention;
pub mod secrets;
pub mod store;
pub mod tenants;
pub mod versions;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use faas_proto::v1::{Call, CallError, CallStatus, Function, Runtime};
use tokio::sync::watch as tokio_watch;
use tracing::{error, info, warn};

use crate::broker::{BrokerHandle, CallBundle, Input};
use crate::config::Config;
use crate::store::{Kind, Store};

/// Connects to etcd, retrying for a while so that services may start in any
/// order.
async fn connect_store(config: &Config) -> anyhow::Result<Store> {
    let mut delay = Duration::from_millis(200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match Store::connect(&config.etcd, &config.key_prefix, config.etcd_tls.as_ref()).await {
            Ok(store) => return Ok(store.with_payload_limits(config.limits.payload_limits())),
            Err(e @ store::StoreError::TlsFile(..)) => anyhow::bail!("connecting to etcd: {e}"),
            Err(e) if tokio::time::Instant::now() < deadline => {
                warn!(error = %e, "etcd not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(3));
            }
            Err(e) => anyhow::bail!("connecting to etcd at {:?}: {e}", config.etcd),
        }
    }
}

/// `faas-controlplane etcd-certs`: etcd's PKI in `dir`, its members'
/// certificate for `sans` and the usual local names. Returns the names of
/// the files written.
pub fn etcd_certs(dir: &std::path::Path, sans: &[String]) -> anyhow::Result<Vec<String>> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Some(host) = config::hostname() {
        // A hostname that is no DNS name (rcgen would refuse it) is left out.
        if host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            names.push(host);
        }
    }
    for san in sans {
        if !names.contains(san) {
            names.push(san.clone());
        }
    }
    let files = faas_pki::etcd::EtcdPkiFiles::new(dir);
    Ok(faas_pki::etcd::ensure(&files, &names)?)
}

/// `faas-controlplane etcd-health`: one attempt, no retries (the caller
/// polls).
pub async fn etcd_health(config: &Config) -> anyhow::Result<bool> {
    let store = Store::connect(&config.etcd, &config.key_prefix, config.etcd_tls.as_ref()).await?;
    Ok(store.has_leader().await?)
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let policy = faas_broker::policy_from_config(&config.policy, &config.policy_config)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "unknown policy {:?}; known: {}",
                config.policy,
                faas_broker::POLICY_NAMES.join(", ")
            )
        })?;
    drop(policy);
    // Up before etcd answers: a scrape then shows this replica is not
    // leading and why its etcd requests fail.
    let _metrics_server = match config.metrics_listen {
        Some(addr) => Some(faas_metrics::serve(addr, metrics::registry()).await?.1),
        None => None,
    };
    // Flushed when `run` returns (a clean stop).
    let _tracing = faas_telemetry::Tracing::start_if(
        "faas-controlplane",
        config.otlp_endpoint.as_deref(),
        vec![
            ("service.version", faas_proto::VERSION.to_string()),
            ("service.instance.id", config.name.clone()),
        ],
    )?;
    let store = connect_store(&config).await?;
    // Before anything reads a record: data of a newer layout is refused
    // (a downgrade would misread it), an older one is migrated.
    format::ensure(&store).await?;
    let signer = match &config.registry_token_dir {
        Some(dir) => Some(Arc::new(faas_pki::registry::TokenSigner::load(dir)?)),
        None => None,
    };
    let registry_ca_pem = match &config.registry_ca {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("reading the registry CA {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let registry = registry::Registry::new(
        &config.registry,
        config.registry_insecure,
        signer.clone(),
        registry_ca_pem.as_deref(),
    )?;
    let secrets_key: Option<Arc<dyn faas_pki::sealing::KeyProvider>> =
        match &config.secrets_key_file {
            Some(path) => Some(Arc::new(faas_pki::sealing::FileKey::load(path)?)),
            None => None,
        };
    let secrets = secrets::Secrets::load(&store, secrets_key).await?;
    let calls = Arc::new(watch::CallWatch::default());
    let (broker_tx, broker_rx) = tokio_watch::channel::<Option<BrokerHandle>>(None);
    // Set on SIGTERM: a leader resigns (revoking its lease, so that another
    // replica takes over at once, not after the TTL) before the server
    // drains.
    let (shutdown_tx, mut shutdown) = tokio_watch::channel(false);

    // Leadership: campaign, then run the broker until the lease is lost.
    let leadership_task = {
        let store = store.clone();
        let calls = calls.clone();
        let config = config.clone();
        let secrets = secrets.clone();
        tokio::spawn(async move {
            let election = format!("{}/election", store.prefix());
            loop {
                let mut leadership = loop {
                    // The election's value is how to reach the leader.
                    let campaign = leader::campaign(
                        &store,
                        &election,
                        &config.advertise,
                        config.leader_ttl_secs,
                    );
                    let outcome = tokio::select! {
                        outcome = campaign => outcome,
                        _ = shutdown.wait_for(|stop| *stop) => return,
                    };
                    match outcome {
                        // A campaign that outlived its lease (etcd deletes
                        // the key, and the wait ends) is not leadership.
                        Ok(mut l) => {
                            if !l.is_lost() {
                                break l;
                            }
                            warn!("elected with a lease already lost; campaigning again");
                            l.resign(&store).await;
                        }
                        Err(e) => {
                            warn!(error = %e, "campaign failed; retrying");
                            store.next_member();
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                    }
                };
                let policy = faas_broker::policy_from_config(&config.policy, &config.policy_config)
                    .expect("checked at start");
                let handle = broker::spawn(
                    faas_broker::Broker::new(policy),
                    store.clone(),
                    calls.clone(),
                    config.registry.clone(),
                    config.calls.clone(),
                    leadership.fence.clone(),
                    secrets.clone(),
                );
                follow_catalog(&store, &handle);
                let sweeper = tokio::spawn(retention::run(store.clone(), config.retention.clone()));
                // Never lead without the pending calls: a call left out
                // would wait forever.
                let mut reloaded = false;
                for attempt in 1..=5 {
                    match requeue_pending(&store, &handle, &config.registry, &calls, &secrets).await
                    {
                        Ok(()) => {
                            reloaded = true;
                            break;
                        }
                        Err(e) => {
                            warn!(attempt, error = %e, "could not reload pending calls; retrying");
                            tokio::time::sleep(Duration::from_millis(300 * attempt)).await;
                        }
                    }
                }
                if !reloaded {
                    error!("pending calls could not be reloaded; giving up leadership");
                    handle.stop();
                    sweeper.abort();
                    leadership.resign(&store).await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                let _ = broker_tx.send(Some(handle.clone()));
                metrics::metrics().leader.set(1);
                metrics::metrics().leader_changes.inc();
                let stopping = tokio::select! {
                    _ = &mut leadership.lost => false,
                    _ = shutdown.wait_for(|stop| *stop) => true,
                };
                // The lease is gone (etcd unreachable, or too slow), or the
                // replica stops: step down at once. The broker stops, which
                // closes the agents' streams; they find whoever leads next,
                // and that leader rebuilds its view from etcd and from the
                // agents.
                if stopping {
                    info!(
                        lease = leadership.lease_id,
                        "shutting down: resigning leadership"
                    );
                } else {
                    error!(
                        lease = leadership.lease_id,
                        "leadership lost; stepping down"
                    );
                }
                let _ = broker_tx.send(None);
                metrics::metrics().leader.set(0);
                handle.stop();
                sweeper.abort();
                // Revoked if etcd still answers, so that the next election
                // need not wait for the lease to expire.
                leadership.resign(&store).await;
                if stopping {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        })
    };

    // Credentials before anything is served: every request is checked.
    let ca = auth::credentials::cluster_ca(&store).await?;
    if let Some(path) = &config.bootstrap_token_file {
        auth::credentials::bootstrap_token(&store, path).await?;
    }
    if let Some(path) = &config.ca_out {
        write_public_file(path, ca.cert_pem())?;
    }
    let credentials = auth::Credentials::load(&store).await?;
    let tenants = tenants::Tenants::load(&store).await?;
    let dispatch_key = faas_pki::dispatch::DispatchKey::from_ca(&ca);
    let names = config.certificate_names();
    let own_cert = ca.issue_replica(&config.name, &names, REPLICA_CERT_TTL)?;
    let own_key = own_cert.key_pem.clone().expect("the CA made the key");
    info!(ca = %ca.fingerprint(), ?names, "TLS certificate issued for this replica");
    let client_tls = faas_pki::client::ClientTls {
        ca_pem: Some(ca.cert_pem().to_string()),
        identity: Some((own_cert.cert_pem.clone(), own_key.clone())),
    };
    let server_tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(
            &own_cert.cert_pem,
            &own_key,
        ))
        .client_ca_root(tonic::transport::Certificate::from_pem(ca.cert_pem()))
        // API clients authenticate with tokens; nodes and replicas with
        // certificates, which the layer requires where it must.
        .client_auth_optional(true)
        .timeout(Duration::from_secs(10));
    let api = api::Api {
        store: store.clone(),
        registry,
        limits: Arc::new(config.limits.clone()),
        calls,
        broker: broker_rx.clone(),
        replica: config.name.clone().into(),
        leader: api::LeaderLink::new(store.clone(), config.advertise.clone(), client_tls),
        credentials: credentials.clone(),
        pki: Arc::new(api::Pki {
            ca,
            node_cert_ttl: config.node_cert_ttl,
            registry_ca_pem,
        }),
        tenants,
        secrets,
        catalog: Default::default(),
    };
    let sessions = agents::AgentSessions::new(broker_rx, credentials.clone(), dispatch_key, signer);
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<faas_proto::v1::call_service_server::CallServiceServer<api::Api>>()
        .await;

    // Reflection lists the public services (and health) to any caller with
    // a token: the schema is the published proto, the agents' is not listed.
    let reflection = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(faas_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health");
        for service in faas_proto::PUBLIC_SERVICES {
            builder = builder.with_service_name(*service);
        }
        builder
    };
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;

    use faas_proto::v1::*;
    let addr = config
        .listen
        .parse()
        .map_err(|e| anyhow::anyhow!("--listen {:?}: {e}", config.listen))?;
    let max_message = 32 << 20;
    info!(%addr, replica = %config.name, policy = %config.policy, "serving");
    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    let serve = tonic::transport::Server::builder()
        .tls_config(server_tls)?
        .tcp_nodelay(true)
        .layer(auth::AuthLayer::new(credentials))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            runtime_service_server::RuntimeServiceServer::new(api.clone())
                .max_decoding_message_size(max_message),
        )
        .add_service(
            function_service_server::FunctionServiceServer::new(api.clone())
                .max_decoding_message_size(max_message),
        )
        .add_service(call_service_server::CallServiceServer::new(api.clone()))
        .add_service(cluster_service_server::ClusterServiceServer::new(
            api.clone(),
        ))
        .add_service(access_service_server::AccessServiceServer::new(api.clone()))
        .add_service(namespace_service_server::NamespaceServiceServer::new(
            api.clone(),
        ))
        .add_service(secret_service_server::SecretServiceServer::new(api.clone()))
        .add_service(
            layer_service_server::LayerServiceServer::new(api.clone())
                .max_decoding_message_size(max_message),
        )
        .add_service(node_join_service_server::NodeJoinServiceServer::new(api))
        .add_service(
            agent_service_server::AgentServiceServer::new(sessions)
                .max_decoding_message_size(max_message),
        )
        .serve_with_shutdown(addr, async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            info!("shutting down");
            // Step down before draining: another replica leads at once, and
            // the agents' streams (which would hold the server open) end
            // with the broker.
            let _ = shutdown_tx.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(3), leadership_task).await;
            let _ = draining_tx.send(());
        });
    // Long waits (WaitCall) may hold connections open: they get a while.
    let drain_limit = async {
        if draining_rx.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_DRAIN).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        served = serve => served?,
        _ = drain_limit => warn!("requests still open {SHUTDOWN_DRAIN:?} after shutdown began; exiting"),
    }
    Ok(())
}

/// A replica's certificate is made at each start; it outlives any run.
const REPLICA_CERT_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Writes a file others may read (the CA's certificate), atomically.
fn write_public_file(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    // A new file of a name nobody can guess: never one a symlink planted in
    // the directory points to.
    let mut tmp = tempfile::Builder::new()
        .prefix(".faas-ca.")
        .tempfile_in(dir)
        .map_err(|e| anyhow::anyhow!("writing next to {}: {e}", path.display()))?;
    use std::io::Write;
    tmp.write_all(text.as_bytes())?;
    use std::os::unix::fs::PermissionsExt;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(path)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    Ok(())
}

/// How long a stopping replica lets open requests finish.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(5);

/// Feeds the broker the registered runtimes and functions, then every
/// change to them, so that policies know what can be preloaded; and the
/// nodes operators drained.
fn follow_catalog(store: &Store, broker: &BrokerHandle) {
    let (s, b) = (store.clone(), broker.clone());
    tokio::spawn(async move {
        s.follow::<faas_proto::v1::Node>(Kind::Drain, |change| {
            b.send(match change {
                store::Change::Put(node) => Input::DrainRecorded {
                    node: node.name,
                    drained: true,
                },
                store::Change::Deleted(node) => Input::DrainRecorded {
                    node,
                    drained: false,
                },
            })
        })
        .await
    });
    let (s, b) = (store.clone(), broker.clone());
    tokio::spawn(async move {
        s.follow::<Runtime>(Kind::Runtime, |change| {
            b.send(match change {
                store::Change::Put(r) => Input::RuntimeChanged(r),
                store::Change::Deleted(name) => Input::RuntimeRemoved(name),
            })
        })
        .await
    });
    let (s, b) = (store.clone(), broker.clone());
    tokio::spawn(async move {
        s.follow::<faas_proto::v1::Namespace>(Kind::Namespace, |change| {
            b.send(match change {
                store::Change::Put(n) => Input::Concurrency {
                    limit: n.quota.map_or(0, |q| q.max_concurrent_calls),
                    namespace: n.name,
                },
                store::Change::Deleted(namespace) => Input::Concurrency {
                    namespace,
                    limit: 0,
                },
            })
        })
        .await
    });
    let (s, b) = (store.clone(), broker.clone());
    tokio::spawn(follow_alias_targets(s, b));
    let (s, b) = (store.clone(), broker.clone());
    tokio::spawn(async move {
        s.follow::<Function>(Kind::Function, |change| {
            b.send(match change {
                store::Change::Put(f) => Input::FunctionChanged(Box::new(f)),
                store::Change::Deleted(name) => Input::FunctionRemoved(name),
            })
        })
        .await
    });
}

/// Tells the broker, for each function whose aliases change, the records
/// of the earlier versions they name (preloads follow aliases). The watch
/// names the function; its aliases and versions are read off the watch's
/// callback, a function's changes coalesced while a read runs.
async fn follow_alias_targets(store: Store, broker: BrokerHandle) {
    let (changed_tx, mut changed) = tokio::sync::mpsc::unbounded_channel::<String>();
    let watched = store.clone();
    tokio::spawn(async move {
        watched
            .follow::<faas_proto::v1::FunctionAlias>(Kind::FunctionAlias, |change| {
                let key = match change {
                    store::Change::Put(alias) => {
                        faas_proto::namespaces::function_key(&alias.namespace, &alias.function)
                    }
                    store::Change::Deleted(name) => match name.rsplit_once('@') {
                        Some((key, _)) => key.to_string(),
                        None => return true,
                    },
                };
                changed_tx.send(key).is_ok()
            })
            .await
    });
    while let Some(first) = changed.recv().await {
        let mut keys = std::collections::BTreeSet::from([first]);
        while let Ok(more) = changed.try_recv() {
            keys.insert(more);
        }
        for key in keys {
            match alias_targets(&store, &key).await {
                Ok(versions) => {
                    if !broker.send(broker::Input::AliasTargets { key, versions }) {
                        return;
                    }
                }
                // Preloads of the aliased versions wait for the next
                // change; calls through the aliases run all the same.
                Err(e) => warn!(function = %key, error = %e, "reading a function's aliases failed"),
            }
        }
    }
}

/// The records of the versions `key`'s aliases name (the current one
/// too, if named: it stays served after the next deploy).
async fn alias_targets(store: &Store, key: &str) -> Result<Vec<Function>, store::StoreError> {
    let prefix = store::function_records_prefix(key);
    let aliases: Vec<(String, faas_proto::v1::FunctionAlias, i64)> =
        store.list_under(Kind::FunctionAlias, &prefix).await?;
    let mut versions = Vec::new();
    for version in versions::aliased(aliases.iter().map(|(_, a, _)| a)) {
        let record: Option<Function> = store
            .get(Kind::FunctionVersion, &store::version_name(key, version))
            .await?;
        versions.extend(record);
    }
    Ok(versions)
}

/// How long a new leader waits before running the calls recorded as
/// queued: time for the agents to reconnect and report what they run, so
/// that a call handed out by the previous leader an instant before it died
/// (still recorded QUEUED) is not run a second time.
const REQUEUE_SETTLE: Duration = Duration::from_secs(1);

/// On taking over, hands the broker every call recorded as queued (calls
/// acknowledged before a restart still run) and every call recorded as
/// running (its result is awaited from its node, not run again).
async fn requeue_pending(
    store: &Store,
    broker: &BrokerHandle,
    registry_host: &str,
    watch: &watch::CallWatch,
    secrets: &secrets::Secrets,
) -> Result<(), store::StoreError> {
    let calls: Vec<Call> = store.pending_calls().await?;
    // Admission counts the queued calls from here on.
    watch.reset_queued(&calls);
    // Everything is read first and handed over at the end: a failed
    // attempt, retried, hands no call over twice.
    let mut adopted = Vec::new();
    let mut queued = Vec::new();
    // By the name of the record read: the function's current one, or a
    // version's.
    let mut catalog: std::collections::HashMap<String, Option<(Function, Runtime)>> =
        Default::default();
    // The secret values of each function version, or why there are none.
    let mut resolved: std::collections::HashMap<
        String,
        Result<Vec<faas_proto::v1::SecretValue>, String>,
    > = Default::default();
    for mut call in calls
        .into_iter()
        .filter(|c| matches!(c.status(), CallStatus::Queued | CallStatus::Running))
    {
        let function_key = call.function_key();
        if !catalog.contains_key(&function_key) {
            let function: Option<Function> = store.get(Kind::Function, &function_key).await?;
            let runtime: Option<Runtime> = match &function {
                Some(f) => store.get(Kind::Runtime, &f.runtime).await?,
                None => None,
            };
            catalog.insert(function_key.clone(), function.zip(runtime));
        }
        // A call of an earlier version (invoked as NAME:VERSION or through
        // an alias, or accepted just before a deploy) runs that version,
        // from its record.
        let key = match &catalog[&function_key] {
            Some((f, _)) if f.version == call.function_version => function_key,
            _ => {
                let name = store::version_name(&function_key, call.function_version);
                if !catalog.contains_key(&name) {
                    let function: Option<Function> =
                        store.get(Kind::FunctionVersion, &name).await?;
                    let runtime: Option<Runtime> = match &function {
                        Some(f) => store.get(Kind::Runtime, &f.runtime).await?,
                        None => None,
                    };
                    catalog.insert(name.clone(), function.zip(runtime));
                }
                name
            }
        };
        let current = catalog[&key]
            .as_ref()
            .filter(|(f, _)| f.version == call.function_version);
        if let Some((f, _)) = current {
            if !resolved.contains_key(&key) {
                let values = match secrets.resolve(store, f).await {
                    Ok(values) => Ok(values),
                    Err(secrets::SecretError::Store(e)) => return Err(e),
                    Err(e) => Err(e.to_string()),
                };
                resolved.insert(key.clone(), values);
            }
        }
        let secret_error = current.and_then(|_| resolved[&key].as_ref().err().cloned());
        let current = current.and_then(|(f, r)| {
            let values = resolved[&key].as_ref().ok()?.clone();
            Some(Arc::new(CallBundle::new(
                r.clone(),
                f.clone(),
                registry_host,
                values,
            )))
        });
        if call.status() == CallStatus::Running {
            // It ran under an earlier leader: wait for its result from its
            // node rather than run it again. Without the function's current
            // version it cannot be run again if its node is lost.
            let bundle = current.unwrap_or_else(|| {
                Arc::new(CallBundle::new(
                    Runtime::default(),
                    Function::default(),
                    registry_host,
                    Vec::new(),
                ))
            });
            adopted.push(Input::Adopt { call, bundle });
            continue;
        }
        match current {
            Some(bundle) => {
                let accepted_at_ms = call.created_at_ms as f64;
                queued.push(Input::CallArrived {
                    call,
                    bundle,
                    accepted_at_ms,
                });
            }
            None => {
                call.status = CallStatus::Failed as i32;
                call.error = Some(CallError {
                    reason: "platform".into(),
                    message: secret_error.unwrap_or_else(|| {
                        "the function, or the version the call names, was removed before the call could run".into()
                    }),
                    log_tail: String::new(),
                });
                call.finished_at_ms = error::now_ms();
                store.put(Kind::Call, &call.id.clone(), &call).await?;
                watch.unqueue(&call.id);
            }
        }
    }
    if !adopted.is_empty() || !queued.is_empty() {
        info!(
            running = adopted.len(),
            queued = queued.len(),
            "pending calls handed to the broker"
        );
    }
    for input in adopted {
        broker.send(input);
    }
    if !queued.is_empty() {
        let broker = broker.clone();
        tokio::spawn(async move {
            tokio::time::sleep(REQUEUE_SETTLE).await;
            for input in queued {
                broker.send(input);
            }
        });
    }
    Ok(())
}
