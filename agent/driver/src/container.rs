//! Container lifecycle: create → start (exit subscribed first) → kill →
//! destroy, plus the start-up clean-up of a namespace and an inventory.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    Kind, ListSnapshotsRequest, PrepareSnapshotRequest,
};
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    AbortRequest, Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, GetRequest, KillRequest, ListContainersRequest, ListRequest,
    ListStatusesRequest, ListTasksRequest, StartRequest, UpdateTaskRequest, WaitRequest,
};
use containerd_client::types::v1::Status as TaskStatus;

use crate::error::NotFoundOk;
use crate::{container_lease, spec, timestamp_to_system_time, validate_identifier};
use crate::{ContainerSpec, Driver, DriverError};

const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const LINUX_RESOURCES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources";
/// A container's lease only has to outlive the gap between Snapshots.Prepare
/// and Containers.Create (after that the container record holds the
/// snapshot); the expiry is a safety net should the agent die in between.
const CONTAINER_LEASE_EXPIRY: Duration = Duration::from_secs(3600);
/// How long destroy waits for a SIGKILLed task to be reported stopped.
const KILL_WAIT: Duration = Duration::from_secs(10);
const SIGKILL: u32 = 9;
/// Exit code of a process killed by SIGKILL (128 + 9), what the OOM killer sends.
const EXIT_SIGKILL: u32 = 137;
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How a container's init process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitStatus {
    /// Exit code; 128 + n when killed by signal n.
    pub code: u32,
    pub exited_at: Option<SystemTime>,
    /// The kernel's OOM killer killed a process of the container, read from
    /// the memory cgroup (`memory.oom_control` on cgroup v1, `memory.events`
    /// on v2) before the task is deleted.
    pub oom_killed: bool,
}

/// Resolves to the exit of a started task. Dropping it does not stop the
/// container (destroy does).
pub struct ExitWaiter {
    id: String,
    handle: tokio::task::JoinHandle<Result<ExitStatus, DriverError>>,
}

impl ExitWaiter {
    /// The container this waiter belongs to.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub async fn wait(self) -> Result<ExitStatus, DriverError> {
        match self.handle.await {
            Ok(result) => result,
            Err(join) => Err(DriverError::Wait {
                id: self.id,
                reason: join.to_string(),
            }),
        }
    }
}

/// How far a `create` got, so that a failure undoes exactly that.
#[derive(Debug, Default, Clone, Copy)]
struct CreateProgress {
    snapshot: bool,
    container: bool,
}

/// What [`Driver::cleanup_namespace`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    pub tasks: usize,
    pub containers: usize,
    pub snapshots: usize,
    pub leases: usize,
    /// Unfinished content ingests (interrupted pulls) aborted.
    pub ingests: usize,
}

/// Everything of ours that containerd holds in the namespace.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    pub containers: Vec<String>,
    pub tasks: Vec<String>,
    /// Active (writable) snapshots: container roots and unfinished unpacks.
    /// Committed image layers are not listed.
    pub active_snapshots: Vec<String>,
    pub leases: Vec<String>,
}

impl Driver {
    /// Creates the container and its task, not started. On failure whatever
    /// was created is torn down again.
    pub async fn create(&self, spec: &ContainerSpec) -> Result<(), DriverError> {
        validate_identifier("container id", &spec.id)?;
        if spec.image.chain_id.is_empty() {
            return Err(DriverError::invalid(
                "image",
                format!(
                    "{}: no chain id (call ensure_image first)",
                    spec.image.reference
                ),
            ));
        }
        let oci_spec = spec::build(spec, &self.inner.cfg.namespace)?;
        let spec_json = serde_json::to_vec(&oci_spec).map_err(|e| DriverError::Spec {
            id: spec.id.clone(),
            reason: e.to_string(),
        })?;

        let lease = container_lease(&spec.id);
        // ALREADY_EXISTS here means the id is in use: fail without touching it.
        self.create_lease(&lease, CONTAINER_LEASE_EXPIRY).await?;
        let mut progress = CreateProgress::default();
        let created = self
            .create_under_lease(spec, spec_json, &lease, &mut progress)
            .await;
        if let Err(e) = &created {
            tracing::warn!(id = %spec.id, error = %e, ?progress, "container creation failed; undoing it");
            if let Err(undo) = self.undo_create(&spec.id, &lease, progress).await {
                tracing::warn!(id = %spec.id, error = %undo, "undoing a failed create");
            }
        }
        created
    }

    /// Removes what a failed `create` made, and only that.
    async fn undo_create(
        &self,
        id: &str,
        lease: &str,
        progress: CreateProgress,
    ) -> Result<(), DriverError> {
        if progress.container {
            ContainersClient::new(self.channel())
                .delete(self.request(DeleteContainerRequest { id: id.to_string() }))
                .await
                .map_err(|s| DriverError::rpc("Containers.Delete", id, s))
                .not_found_ok()?;
        }
        if progress.snapshot {
            self.remove_snapshot(id).await.not_found_ok()?;
        }
        self.delete_lease(lease).await.not_found_ok()?;
        Ok(())
    }

    async fn create_under_lease(
        &self,
        spec: &ContainerSpec,
        spec_json: Vec<u8>,
        lease: &str,
        progress: &mut CreateProgress,
    ) -> Result<(), DriverError> {
        let cfg = &self.inner.cfg;
        let id = &spec.id;
        // A writable layer although the root is mounted read-only: runc needs
        // to create mount points (/faas/io, ...) in it.
        let mounts = SnapshotsClient::new(self.channel())
            .prepare(self.leased(
                PrepareSnapshotRequest {
                    snapshotter: cfg.snapshotter.clone(),
                    key: id.clone(),
                    parent: spec.image.chain_id.clone(),
                    labels: HashMap::new(),
                },
                lease,
            )?)
            .await
            .map_err(|s| DriverError::rpc("Snapshots.Prepare", id, s))?
            .into_inner()
            .mounts;
        progress.snapshot = true;

        let container = Container {
            id: id.clone(),
            image: spec.image.reference.clone(),
            runtime: Some(Runtime {
                name: cfg.runtime.clone(),
                options: cfg.oci_runtime.as_deref().map(runc_options),
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.to_string(),
                value: spec_json,
            }),
            snapshotter: cfg.snapshotter.clone(),
            snapshot_key: id.clone(),
            ..Default::default()
        };
        ContainersClient::new(self.channel())
            .create(self.leased(
                CreateContainerRequest {
                    container: Some(container),
                },
                lease,
            )?)
            .await
            .map_err(|s| DriverError::rpc("Containers.Create", id, s))?;
        progress.container = true;

        let stdio = stdio_uri(&spec.stdio_path)?;
        TasksClient::new(self.channel())
            .create(self.request(CreateTaskRequest {
                container_id: id.clone(),
                rootfs: mounts,
                stdin: String::new(),
                stdout: stdio.clone(),
                stderr: stdio,
                terminal: false,
                ..Default::default()
            }))
            .await
            .map_err(|s| DriverError::rpc("Tasks.Create", id, s))?;
        Ok(())
    }

    /// Starts a created task. The exit is subscribed to (Tasks.Wait in a
    /// spawned task) before Tasks.Start, so a very short process cannot exit
    /// unseen; containerd also keeps the exit of a task until it is deleted.
    pub async fn start(&self, id: &str) -> Result<ExitWaiter, DriverError> {
        let (subscribed_tx, subscribed_rx) = tokio::sync::oneshot::channel();
        let driver = self.clone();
        let waited_id = id.to_string();
        let handle = tokio::spawn(async move {
            let mut tasks = TasksClient::new(driver.channel());
            let wait = tasks.wait(driver.request(WaitRequest {
                container_id: waited_id.clone(),
                exec_id: String::new(),
            }));
            // Poll the call once: its request is then queued on the channel
            // (which keeps order) before Start's.
            let mut wait = std::pin::pin!(wait);
            let first = futures::poll!(wait.as_mut());
            let _ = subscribed_tx.send(());
            let response = match first {
                std::task::Poll::Ready(r) => r,
                std::task::Poll::Pending => wait.await,
            }
            .map_err(|s| DriverError::rpc("Tasks.Wait", &waited_id, s))?
            .into_inner();
            let oom_killed = driver.oom_killed(&waited_id, response.exit_status).await;
            Ok(ExitStatus {
                code: response.exit_status,
                exited_at: response
                    .exited_at
                    .as_ref()
                    .and_then(timestamp_to_system_time),
                oom_killed,
            })
        });
        let _ = subscribed_rx.await;
        let started = TasksClient::new(self.channel())
            .start(self.request(StartRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
            .map_err(|s| DriverError::rpc("Tasks.Start", id, s));
        if let Err(e) = started {
            handle.abort();
            return Err(e);
        }
        Ok(ExitWaiter {
            id: id.to_string(),
            handle,
        })
    }

    /// Changes the memory limit (and memory+swap, so still no swap) of a
    /// running container: a runtime-preloaded spot learns its function's
    /// limit only when the call arrives.
    pub async fn update_memory(&self, id: &str, memory_bytes: u64) -> Result<(), DriverError> {
        let limit = i64::try_from(memory_bytes)
            .map_err(|e| DriverError::invalid("memory", e.to_string()))?;
        // runc refuses a memory limit above the current memory+swap limit:
        // raise swap first when growing by sending both at once.
        let resources = serde_json::json!({"memory": {"limit": limit, "swap": limit}});
        TasksClient::new(self.channel())
            .update(self.request(UpdateTaskRequest {
                container_id: id.to_string(),
                resources: Some(prost_types::Any {
                    type_url: LINUX_RESOURCES_TYPE_URL.to_string(),
                    value: serde_json::to_vec(&resources).expect("json"),
                }),
                annotations: Default::default(),
            }))
            .await
            .map_err(|s| DriverError::rpc("Tasks.Update", id, s))?;
        Ok(())
    }

    /// Sends `signal` to the container's init process. A task that does not
    /// exist (or has already exited) is not an error.
    pub async fn kill(&self, id: &str, signal: u32) -> Result<(), DriverError> {
        self.kill_task(id, signal, false).await
    }

    async fn kill_task(&self, id: &str, signal: u32, all: bool) -> Result<(), DriverError> {
        TasksClient::new(self.channel())
            .kill(self.request(KillRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
                signal,
                all,
            }))
            .await
            .map_err(|s| DriverError::rpc("Tasks.Kill", id, s))
            .not_found_ok()?;
        Ok(())
    }

    /// Tears everything of container `id` down: task (SIGKILL first if it is
    /// alive), container, snapshot, lease. Idempotent: what is already gone
    /// is skipped.
    pub async fn destroy(&self, id: &str) -> Result<(), DriverError> {
        validate_identifier("container id", id)?;
        self.stop_and_delete_task(id).await?;
        ContainersClient::new(self.channel())
            .delete(self.request(DeleteContainerRequest { id: id.to_string() }))
            .await
            .map_err(|s| DriverError::rpc("Containers.Delete", id, s))
            .not_found_ok()?;
        // The snapshot goes before the lease that protects it (notes).
        self.remove_snapshot(id).await.not_found_ok()?;
        self.delete_lease(&container_lease(id))
            .await
            .not_found_ok()?;
        Ok(())
    }

    /// Kills the task if it is not stopped, waits until it is, deletes it.
    /// Returns whether there was a task.
    async fn stop_and_delete_task(&self, id: &str) -> Result<bool, DriverError> {
        let tasks = TasksClient::new(self.channel());
        let task = tasks
            .clone()
            .get(self.request(GetRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
            .map_err(|s| DriverError::rpc("Tasks.Get", id, s))
            .not_found_ok()?
            .and_then(|r| r.into_inner().process);
        let Some(process) = task else {
            return Ok(false);
        };
        if process.status() != TaskStatus::Stopped {
            // all = true: every process of the container, not only its init.
            self.kill_task(id, SIGKILL, true).await?;
            let waited = tokio::time::timeout(
                KILL_WAIT,
                tasks.clone().wait(self.request(WaitRequest {
                    container_id: id.to_string(),
                    exec_id: String::new(),
                })),
            )
            .await
            .map_err(|_| DriverError::Timeout {
                what: format!("task {id} to stop after SIGKILL"),
                seconds: KILL_WAIT.as_secs(),
            })?;
            waited
                .map_err(|s| DriverError::rpc("Tasks.Wait", id, s))
                .not_found_ok()?;
        }
        tasks
            .clone()
            .delete(self.request(DeleteTaskRequest {
                container_id: id.to_string(),
            }))
            .await
            .map_err(|s| DriverError::rpc("Tasks.Delete", id, s))
            .not_found_ok()?;
        Ok(true)
    }

    /// Ids of the containers in our namespace.
    pub async fn list_containers(&self) -> Result<Vec<String>, DriverError> {
        let containers = ContainersClient::new(self.channel())
            .list(self.request(ListContainersRequest { filters: vec![] }))
            .await
            .map_err(|s| DriverError::rpc("Containers.List", &self.inner.cfg.namespace, s))?
            .into_inner()
            .containers;
        Ok(containers.into_iter().map(|c| c.id).collect())
    }

    /// Ids of the tasks in our namespace.
    pub async fn list_tasks(&self) -> Result<Vec<String>, DriverError> {
        let tasks = TasksClient::new(self.channel())
            .list(self.request(ListTasksRequest {
                filter: String::new(),
            }))
            .await
            .map_err(|s| DriverError::rpc("Tasks.List", &self.inner.cfg.namespace, s))?
            .into_inner()
            .tasks;
        // containerd 1.6 fills in `id` (the init process's id, which is the
        // container id) but not `container_id`.
        Ok(tasks
            .into_iter()
            .map(|t| {
                if t.container_id.is_empty() {
                    t.id
                } else {
                    t.container_id
                }
            })
            .collect())
    }

    /// Keys of the active (writable) snapshots in our namespace.
    pub async fn list_active_snapshots(&self) -> Result<Vec<String>, DriverError> {
        let ns = &self.inner.cfg.namespace;
        let mut stream = SnapshotsClient::new(self.channel())
            .list(self.request(ListSnapshotsRequest {
                snapshotter: self.inner.cfg.snapshotter.clone(),
                filters: vec![],
            }))
            .await
            .map_err(|s| DriverError::rpc("Snapshots.List", ns, s))?
            .into_inner();
        let mut keys = Vec::new();
        while let Some(page) = stream
            .message()
            .await
            .map_err(|s| DriverError::rpc("Snapshots.List", ns, s))?
        {
            keys.extend(
                page.info
                    .into_iter()
                    .filter(|i| i.kind() != Kind::Committed)
                    .map(|i| i.name),
            );
        }
        Ok(keys)
    }

    /// Ids of the leases in our namespace.
    pub async fn list_leases(&self) -> Result<Vec<String>, DriverError> {
        let leases = LeasesClient::new(self.channel())
            .list(self.request(ListRequest { filters: vec![] }))
            .await
            .map_err(|s| DriverError::rpc("Leases.List", &self.inner.cfg.namespace, s))?
            .into_inner()
            .leases;
        Ok(leases.into_iter().map(|l| l.id).collect())
    }

    /// Containers, tasks, active snapshots and leases in our namespace.
    pub async fn inventory(&self) -> Result<Inventory, DriverError> {
        Ok(Inventory {
            containers: self.list_containers().await?,
            tasks: self.list_tasks().await?,
            active_snapshots: self.list_active_snapshots().await?,
            leases: self.list_leases().await?,
        })
    }

    /// Start-up hygiene: removes every task (killed first), container,
    /// active snapshot, lease and unfinished ingest left in our namespace by
    /// an earlier run. Committed image layers are kept: images still
    /// reference them (they are the image cache) and containerd's GC removes
    /// those no image references once the leases are gone.
    pub async fn cleanup_namespace(&self) -> Result<CleanupReport, DriverError> {
        let mut report = CleanupReport::default();
        let tasks = self.list_tasks().await?;
        let containers = self.list_containers().await?;
        // SIGKILL them all first so that they die in parallel.
        for id in &tasks {
            self.kill_task(id, SIGKILL, true).await?;
        }
        for id in &tasks {
            if self.stop_and_delete_task(id).await? {
                report.tasks += 1;
            }
        }
        for id in &containers {
            // Containers.Delete does not refuse a container whose task is
            // alive: make sure there is none (a task List may have missed).
            if self.stop_and_delete_task(id).await? {
                report.tasks += 1;
            }
            if ContainersClient::new(self.channel())
                .delete(self.request(DeleteContainerRequest { id: id.clone() }))
                .await
                .map_err(|s| DriverError::rpc("Containers.Delete", id, s))
                .not_found_ok()?
                .is_some()
            {
                report.containers += 1;
            }
        }
        for key in self.list_active_snapshots().await? {
            if self.remove_snapshot(&key).await.not_found_ok()?.is_some() {
                report.snapshots += 1;
            }
        }
        for lease in self.list_leases().await? {
            if self.delete_lease(&lease).await.not_found_ok()?.is_some() {
                report.leases += 1;
            }
        }
        let ingests = ContentClient::new(self.channel())
            .list_statuses(self.request(ListStatusesRequest { filters: vec![] }))
            .await
            .map_err(|s| DriverError::rpc("Content.ListStatuses", &self.inner.cfg.namespace, s))?
            .into_inner()
            .statuses;
        for ingest in ingests {
            ContentClient::new(self.channel())
                .abort(self.request(AbortRequest {
                    r#ref: ingest.r#ref.clone(),
                }))
                .await
                .map_err(|s| DriverError::rpc("Content.Abort", &ingest.r#ref, s))
                .not_found_ok()?;
            report.ingests += 1;
        }
        tracing::info!(?report, namespace = %self.inner.cfg.namespace, "namespace cleaned up");
        Ok(report)
    }

    /// Whether the kernel OOM-killed a process of the container, read from
    /// its memory cgroup (still there until the task is deleted). Falls back
    /// to "killed by SIGKILL" when the cgroup cannot be read.
    async fn oom_killed(&self, id: &str, exit_code: u32) -> bool {
        let cgroup = spec::cgroup_path(&self.inner.cfg.namespace, id);
        let relative = cgroup.trim_start_matches('/');
        let v1 = Path::new(CGROUP_ROOT)
            .join("memory")
            .join(relative)
            .join("memory.oom_control");
        let v2 = Path::new(CGROUP_ROOT).join(relative).join("memory.events");
        for file in [v1, v2] {
            if let Some(count) = read_oom_kill_count(&file).await {
                return count > 0;
            }
        }
        tracing::debug!(%id, "memory cgroup unreadable; guessing OOM from the exit code");
        exit_code == EXIT_SIGKILL
    }
}

impl Driver {
    /// CPU time the container's processes used so far, read from its
    /// cgroup: `cpuacct.usage` on cgroup v1 (hybrid hosts), `usage_usec` of
    /// `cpu.stat` on v2. `None` when neither can be read.
    pub async fn cpu_usage(&self, id: &str) -> Option<Duration> {
        let cgroup = spec::cgroup_path(&self.inner.cfg.namespace, id);
        let relative = cgroup.trim_start_matches('/').to_string();
        tokio::task::spawn_blocking(move || read_cpu_usage(Path::new(CGROUP_ROOT), &relative))
            .await
            .ok()
            .flatten()
    }
}

/// [`Driver::cpu_usage`] under the cgroup mount `root`.
fn read_cpu_usage(root: &Path, relative: &str) -> Option<Duration> {
    // The v1 controller is mounted alone or with cpu, depending on the host.
    for controller in ["cpuacct", "cpu,cpuacct"] {
        let file = root.join(controller).join(relative).join("cpuacct.usage");
        if let Ok(text) = std::fs::read_to_string(file) {
            if let Ok(ns) = text.trim().parse::<u64>() {
                return Some(Duration::from_nanos(ns));
            }
        }
    }
    let text = std::fs::read_to_string(root.join(relative).join("cpu.stat")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|n| n.trim().parse().ok())
        .map(Duration::from_micros)
}

/// The `oom_kill N` line of a cgroup v1 `memory.oom_control` or a v2
/// `memory.events` file.
async fn read_oom_kill_count(file: &PathBuf) -> Option<u64> {
    let text = tokio::fs::read_to_string(file).await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
}

/// The shim's stdio argument: an existing path (a FIFO or a regular file) is
/// given bare and opened as is; a missing one as `file://`, so that the shim
/// creates it.
fn stdio_uri(path: &Path) -> Result<String, DriverError> {
    if !path.is_absolute() {
        return Err(DriverError::invalid(
            "stdio path",
            format!("{} is not absolute", path.display()),
        ));
    }
    let text = path
        .to_str()
        .ok_or_else(|| DriverError::invalid("stdio path", format!("{path:?} is not UTF-8")))?;
    Ok(if path.exists() {
        text.to_string()
    } else {
        format!("file://{text}")
    })
}

/// `containerd.runc.v1.Options` (containerd's `api/types/runc/options/oci.proto`),
/// the fields this driver sets. containerd-client does not compile that file.
#[derive(Clone, PartialEq, prost::Message)]
struct RuncOptions {
    /// The OCI runtime binary the shim runs instead of `runc`.
    #[prost(string, tag = "6")]
    binary_name: String,
}

/// The runc shim's options naming `binary` as its OCI runtime. The type URL
/// is the bare message name: that is how containerd's typeurl registers it.
fn runc_options(binary: &str) -> prost_types::Any {
    prost_types::Any {
        type_url: "containerd.runc.v1.Options".into(),
        value: prost::Message::encode_to_vec(&RuncOptions {
            binary_name: binary.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_usage_reads_v1_then_v2() {
        let root = std::env::temp_dir().join(format!("faas-cgroup-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let rel = "faas/faas/c1";
        assert_eq!(read_cpu_usage(&root, rel), None);
        std::fs::create_dir_all(root.join(rel)).unwrap();
        std::fs::write(
            root.join(rel).join("cpu.stat"),
            "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n",
        )
        .unwrap();
        assert_eq!(
            read_cpu_usage(&root, rel),
            Some(Duration::from_millis(2500))
        );
        let v1 = root.join("cpu,cpuacct").join(rel);
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("cpuacct.usage"), "1500000000\n").unwrap();
        assert_eq!(
            read_cpu_usage(&root, rel),
            Some(Duration::from_millis(1500))
        );
        std::fs::remove_dir_all(&root).unwrap();
    }
}
