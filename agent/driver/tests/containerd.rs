//! Integration tests against a real, private containerd and registry.
//!
//! They run only with `FAAS_DRIVER_IT=1` (as root, with containerd, runc,
//! docker-registry and busybox-static installed): otherwise they print why
//! and return. Everything runs in one test so the latency measurement at the
//! end is not disturbed by other tests running in parallel.
//!
//! `FAAS_DRIVER_IT=1 cargo test -p faas-driver --test containerd -- --nocapture`

#![allow(clippy::print_stdout)]

use std::fs;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use faas_driver::{BindMount, ContainerSpec, Driver, DriverConfig, ExitStatus, ImageInfo, Limits};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::Reference;
use sha2::{Digest, Sha256};

type TestResult<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A namespace (and so cgroup parent) of this test process only.
fn namespace() -> String {
    format!("faas-it-{}", std::process::id())
}

fn enabled() -> bool {
    if std::env::var("FAAS_DRIVER_IT").as_deref() != Ok("1") {
        eprintln!("SKIPPED: containerd integration tests run only with FAAS_DRIVER_IT=1 (as root)");
        return false;
    }
    true
}

fn which(binary: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(binary))
            .find(|p| p.is_file())
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A private containerd and docker-registry in a temp dir; stopped on drop.
struct Stack {
    dir: tempfile::TempDir,
    socket: PathBuf,
    registry: String,
    containerd: Option<Child>,
    registry_process: Option<Child>,
}

impl Stack {
    fn start() -> TestResult<Stack> {
        for binary in [
            "containerd",
            "containerd-shim-runc-v2",
            "runc",
            "docker-registry",
            "busybox",
        ] {
            if which(binary).is_none() {
                return Err(format!("{binary} is not installed").into());
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("faas-driver-it.")
            .tempdir()?;
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("containerd.toml");
        fs::write(
            &config,
            format!(
                "version = 2\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{sock}\"\n\
                 [ttrpc]\n  address = \"{sock}.ttrpc\"\n\
                 [debug]\n  address = \"\"\n",
                sock = socket.display()
            ),
        )?;
        let containerd = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .arg("--root")
            .arg(dir.path().join("root"))
            .arg("--state")
            .arg(dir.path().join("state"))
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("containerd.log"))?)
            .spawn()?;

        let port = free_port();
        let registry = format!("127.0.0.1:{port}");
        let registry_config = dir.path().join("registry.yml");
        fs::write(
            &registry_config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {registry}\n",
                dir.path().join("registry").display()
            ),
        )?;
        let registry_process = Command::new("docker-registry")
            .arg("serve")
            .arg(&registry_config)
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("registry.log"))?)
            .spawn()?;

        let stack = Stack {
            dir,
            socket,
            registry,
            containerd: Some(containerd),
            registry_process: Some(registry_process),
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !(stack.socket.exists() && TcpStream::connect(&stack.registry).is_ok()) {
            if Instant::now() > deadline {
                return Err(format!(
                    "containerd or registry did not come up; logs in {}",
                    stack.dir.path().display()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(stack)
    }

    fn driver_config(&self) -> DriverConfig {
        DriverConfig {
            socket: self.socket.clone(),
            namespace: namespace(),
            insecure_registries: vec![self.registry.clone()],
            ..Default::default()
        }
    }

    fn stop_registry(&mut self) {
        if let Some(mut child) = self.registry_process.take() {
            child.kill().ok();
            child.wait().ok();
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop_registry();
        if let Some(mut child) = self.containerd.take() {
            child.kill().ok();
            child.wait().ok();
        }
        // Shims outlive containerd: end those started for this socket (only
        // left behind if the test failed before its clean-up).
        let needle = self.socket.display().to_string();
        if let Ok(entries) = fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                    continue;
                };
                let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
                if String::from_utf8_lossy(&cmdline).contains(&needle) {
                    Command::new("kill")
                        .arg("-9")
                        .arg(pid.to_string())
                        .status()
                        .ok();
                }
            }
        }
        // Container processes whose shim is gone: everything left in our
        // cgroups (only after a failure), then the cgroups themselves.
        let cgroups = format!("faas/{}", namespace());
        for pid_file in glob_cgroup_procs(&Path::new("/sys/fs/cgroup/pids").join(&cgroups)) {
            for pid in fs::read_to_string(pid_file).unwrap_or_default().lines() {
                Command::new("kill").arg("-9").arg(pid).status().ok();
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        if let Ok(controllers) = fs::read_dir("/sys/fs/cgroup") {
            for controller in controllers.flatten() {
                let ns_dir = controller.path().join(&cgroups);
                for child in fs::read_dir(&ns_dir).into_iter().flatten().flatten() {
                    if child.path().is_dir() {
                        fs::remove_dir(child.path()).ok();
                    }
                }
                fs::remove_dir(&ns_dir).ok();
            }
        }
        // Unmount whatever is still mounted under the temp dir, deepest first.
        let root = self.dir.path().display().to_string();
        let mut mounted: Vec<String> = fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
            .filter(|m| m.starts_with(&root))
            .collect();
        mounted.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounted {
            Command::new("umount").arg("-l").arg(&m).status().ok();
        }
    }
}

fn glob_cgroup_procs(dir: &Path) -> Vec<PathBuf> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("cgroup.procs"))
        .filter(|p| p.exists())
        .collect()
}

fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn tar_layer(build: impl FnOnce(&mut tar::Builder<Vec<u8>>) -> std::io::Result<()>) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    build(&mut builder).expect("tar layer");
    builder.into_inner().expect("tar layer")
}

fn dir_entry(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_mode(mode);
    h.set_size(0);
    b.append_data(&mut h, path, std::io::empty())
}

/// Pushes a two-layer busybox image (a gzip layer with the static busybox,
/// then a plain tar layer with one file) and returns its digest reference
/// and the expected chain id.
async fn push_busybox(registry: &str) -> TestResult<(String, String)> {
    let busybox = fs::read(which("busybox").ok_or("busybox missing")?)?;
    let base = tar_layer(|b| {
        for d in ["bin/", "etc/", "tmp/", "proc/", "sys/", "dev/", "data/"] {
            dir_entry(b, d, 0o755)?;
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        h.set_size(busybox.len() as u64);
        b.append_data(&mut h, "bin/busybox", busybox.as_slice())?;
        for applet in [
            "sh", "echo", "cat", "sleep", "dd", "id", "touch", "true", "head", "tr",
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            b.append_link(&mut h, format!("bin/{applet}"), "busybox")?;
        }
        Ok(())
    });
    let extra = tar_layer(|b| {
        let content = b"from the second layer\n";
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(content.len() as u64);
        b.append_data(&mut h, "etc/hello", &content[..])
    });
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&base)?;
    let base_gz = gz.finish()?;

    let diff_ids = [sha256_digest(&base), sha256_digest(&extra)];
    let chain_top = sha256_digest(format!("{} {}", diff_ids[0], diff_ids[1]).as_bytes());
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin", "IMAGE_VAR=1"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))?;
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256_digest(&config), "size": config.len()},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
             "digest": sha256_digest(&base_gz), "size": base_gz.len()},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar",
             "digest": sha256_digest(&extra), "size": extra.len()},
        ],
    }))?;

    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let tagged: Reference = format!("{registry}/faas/busybox:it").parse()?;
    for blob in [&config, &base_gz, &extra] {
        client
            .push_blob(&tagged, blob.clone(), &sha256_digest(blob))
            .await?;
    }
    client
        .push_manifest_raw(
            &tagged,
            manifest.clone(),
            "application/vnd.oci.image.manifest.v1+json".parse()?,
        )
        .await?;
    Ok((
        format!("{registry}/faas/busybox@{}", sha256_digest(&manifest)),
        chain_top,
    ))
}

/// Pushes an OCI index (linux/amd64 → the manifest of `reference`, plus an
/// arm64 entry that must be skipped) under a tag; returns the tag reference.
async fn push_index(registry: &str, reference: &str) -> TestResult<String> {
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let pinned: Reference = reference.parse()?;
    let (manifest, digest) = client
        .pull_manifest_raw(
            &pinned,
            &oci_client::secrets::RegistryAuth::Anonymous,
            &["application/vnd.oci.image.manifest.v1+json"],
        )
        .await?;
    // A stand-in for another platform's manifest (the registry checks that
    // an index only names manifests it has).
    let mut other: serde_json::Value = serde_json::from_slice(&manifest)?;
    other["annotations"] = serde_json::json!({"stand-in": "arm64"});
    let other = serde_json::to_vec(&other)?;
    let other_digest = sha256_digest(&other);
    client
        .push_manifest_raw(
            &format!("{registry}/faas/busybox:arm64").parse()?,
            other.clone(),
            "application/vnd.oci.image.manifest.v1+json".parse()?,
        )
        .await?;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": other_digest,
             "size": other.len(), "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json",
             "digest": digest, "size": manifest.len(),
             "platform": {"architecture": "amd64", "os": "linux"}},
        ],
    }))?;
    let tagged: Reference = format!("{registry}/faas/busybox:multi").parse()?;
    client
        .push_manifest_raw(
            &tagged,
            index,
            "application/vnd.oci.image.index.v1+json".parse()?,
        )
        .await?;
    Ok(tagged.whole())
}

/// Runs containerd's garbage collector now: deleting a lease with
/// `sync = true` waits for a collection.
async fn force_gc(stack: &Stack) -> TestResult {
    use containerd_client::services::v1::leases_client::LeasesClient;
    use containerd_client::services::v1::{CreateRequest, DeleteRequest};
    let channel = containerd_client::connect(&stack.socket).await?;
    let mut leases = LeasesClient::new(channel);
    let mut create = tonic::Request::new(CreateRequest {
        id: "force-gc".into(),
        labels: Default::default(),
    });
    create
        .metadata_mut()
        .insert("containerd-namespace", namespace().parse()?);
    leases.create(create).await?;
    let mut delete = tonic::Request::new(DeleteRequest {
        id: "force-gc".into(),
        sync: true,
    });
    delete
        .metadata_mut()
        .insert("containerd-namespace", namespace().parse()?);
    leases.delete(delete).await?;
    Ok(())
}

fn spec(id: &str, image: &ImageInfo, args: &[&str], stdio: &Path) -> ContainerSpec {
    ContainerSpec {
        id: id.into(),
        image: image.clone(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: vec!["CALL_VAR=2".into()],
        cwd: "/".into(),
        hostname: id.into(),
        mounts: vec![],
        stdio_path: stdio.to_path_buf(),
        limits: Limits {
            memory_bytes: 64 << 20,
            cpu_millis: 1000,
            pids: 64,
            tmp_bytes: 16 << 20,
        },
        uid: TEST_UID,
        gid: TEST_UID,
        network_namespace: None,
    }
}

/// The uid the test's containers run as: not a host account, not 65534.
const TEST_UID: u32 = 200_077;

/// create → start → wait → destroy; returns the exit and the output.
async fn run(driver: &Driver, spec: &ContainerSpec) -> TestResult<(ExitStatus, String)> {
    driver.create(spec).await?;
    let exit = driver.start(&spec.id).await?.wait().await?;
    driver.destroy(&spec.id).await?;
    // Only a regular file can be read back here (a FIFO belongs to its reader).
    let output = if spec.stdio_path.is_file() {
        fs::read_to_string(&spec.stdio_path)?
    } else {
        String::new()
    };
    Ok((exit, output))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn driver_against_real_containerd() -> TestResult {
    if !enabled() {
        return Ok(());
    }
    let mut stack = Stack::start()?;
    let driver = Driver::connect(stack.driver_config()).await?;
    // A hang must end as a failure that still cleans up, not as a stuck run.
    let result = match tokio::time::timeout(
        Duration::from_secs(300),
        scenarios(&mut stack, &driver),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err("scenarios did not finish within 300 s".into()),
    };
    // Clean up even after a failure, so that no shim or mount outlives us.
    let cleanup = driver.cleanup_namespace().await;
    if result.is_err() {
        eprintln!(
            "logs: {}",
            fs::read_to_string(stack.dir.path().join("containerd.log"))
                .unwrap_or_default()
                .lines()
                .rev()
                .take(30)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    result?;
    cleanup?;
    Ok(())
}

async fn scenarios(stack: &mut Stack, driver: &Driver) -> TestResult {
    let work = stack.dir.path().join("work");
    fs::create_dir_all(&work)?;

    // A fresh namespace has nothing to clean.
    let report = driver.cleanup_namespace().await?;
    assert_eq!(report, Default::default(), "fresh namespace");

    // --- images -----------------------------------------------------------
    let (reference, chain_top) = push_busybox(&stack.registry).await?;
    let t = Instant::now();
    let concurrent =
        futures::future::join_all((0..3).map(|_| driver.ensure_image(&reference))).await;
    let first_pull = t.elapsed();
    let image = concurrent[0].as_ref().map_err(|e| e.to_string())?.clone();
    for other in &concurrent {
        assert_eq!(other.as_ref().map_err(|e| e.to_string())?, &image);
    }
    assert_eq!(image.chain_id, chain_top, "chain id of the top layer");
    assert_eq!(
        image.env,
        vec!["PATH=/bin".to_string(), "IMAGE_VAR=1".to_string()]
    );
    let t = Instant::now();
    let again = driver.ensure_image(&reference).await?;
    let cached = t.elapsed();
    assert_eq!(again, image);
    // The pull lease is gone: the image record holds the content now.
    assert!(driver.list_leases().await?.is_empty(), "pull lease left");

    // An OCI index naming the manifest, pulled by tag: the platform's
    // manifest is chosen, and its layers are already there.
    let by_tag = push_index(&stack.registry, &reference).await?;
    let through_index = driver.ensure_image(&by_tag).await?;
    assert_eq!(through_index.manifest_digest, image.manifest_digest);
    assert_eq!(through_index.chain_id, image.chain_id);

    // After a garbage collection, an agent restart (a new Driver) and with
    // the registry gone, both images are found in containerd's store: the GC
    // labels hold everything.
    force_gc(stack).await?;
    stack.stop_registry();
    let restarted = Driver::connect(stack.driver_config()).await?;
    let t = Instant::now();
    let from_store = restarted.ensure_image(&reference).await?;
    let store_lookup = t.elapsed();
    assert_eq!(from_store, image);
    assert_eq!(restarted.ensure_image(&by_tag).await?, through_index);
    println!(
        "ensure_image: first pull+unpack (3 concurrent callers) {:.1} ms, cached {:.2} ms, from containerd's store after restart {:.1} ms",
        ms(first_pull),
        ms(cached),
        ms(store_lookup)
    );

    // --- echo to a regular file -------------------------------------------
    let out = work.join("echo.log");
    fs::write(&out, "")?;
    let (exit, output) = run(driver, &spec("echo-1", &image, &["/bin/echo", "hi"], &out)).await?;
    assert_eq!(exit.code, 0);
    assert!(!exit.oom_killed);
    assert!(exit.exited_at.is_some());
    assert_eq!(output, "hi\n");

    // A stdio path that does not exist yet is created by the shim.
    let fresh = work.join("fresh.log");
    let (exit, output) = run(
        driver,
        &spec("echo-2", &image, &["/bin/echo", "created"], &fresh),
    )
    .await?;
    assert_eq!((exit.code, output.as_str()), (0, "created\n"));

    // A FIFO the caller reads, as the agent does.
    let fifo = work.join("echo.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status()?;
    assert!(made.success(), "mkfifo");
    let reader_path = fifo.clone();
    let reader = std::thread::spawn(move || fs::read_to_string(reader_path));
    let (exit, _) = run(
        driver,
        &spec("echo-3", &image, &["/bin/echo", "through a fifo"], &fifo),
    )
    .await?;
    assert_eq!(exit.code, 0);
    assert_eq!(reader.join().expect("reader thread")?, "through a fifo\n");

    // --- identity, env, read-only root, bind mounts -----------------------
    let input = work.join("in");
    let output_dir = work.join("out");
    fs::create_dir_all(&input)?;
    fs::create_dir_all(&output_dir)?;
    fs::write(input.join("marker"), "marker-content\n")?;
    std::os::unix::fs::chown(&output_dir, Some(TEST_UID), Some(TEST_UID))?;
    fs::set_permissions(&output_dir, fs::Permissions::from_mode(0o755))?;
    let log = work.join("mounts.log");
    fs::write(&log, "")?;
    let script = "id -u; id -g; echo $IMAGE_VAR$CALL_VAR; cat /etc/hello; cat /in/marker; \
                  echo written > /out/result; \
                  touch /rootfile 2>/dev/null && echo root-writable || echo root-readonly; \
                  touch /in/x 2>/dev/null && echo in-writable || echo in-readonly; \
                  echo t > /tmp/t && echo tmp-writable; \
                  cat /proc/self/status | grep CapEff; hostname";
    let mut mounts_spec = spec("mounts-1", &image, &["/bin/sh", "-c", script], &log);
    mounts_spec.mounts = vec![
        BindMount {
            source: input.clone(),
            destination: "/in".into(),
            readonly: true,
        },
        BindMount {
            source: output_dir.clone(),
            destination: "/out".into(),
            readonly: false,
        },
    ];
    let (exit, output) = run(driver, &mounts_spec).await?;
    assert_eq!(exit.code, 0, "output: {output}");
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(
        lines[..8],
        [
            "200077",
            "200077",
            "12",
            "from the second layer",
            "marker-content",
            "root-readonly",
            "in-readonly",
            "tmp-writable"
        ],
        "output: {output}"
    );
    assert!(
        output.contains("CapEff:\t0000000000000000"),
        "output: {output}"
    );
    assert!(
        output.trim_end().ends_with("mounts-1"),
        "hostname; output: {output}"
    );
    assert_eq!(fs::read_to_string(output_dir.join("result"))?, "written\n");

    // --- OOM --------------------------------------------------------------
    let oom_log = work.join("oom.log");
    fs::write(&oom_log, "")?;
    let mut oom_spec = spec(
        "oom-1",
        &image,
        &[
            "/bin/dd",
            "if=/dev/zero",
            "of=/tmp/fill",
            "bs=1M",
            "count=48",
        ],
        &oom_log,
    );
    oom_spec.limits.memory_bytes = 16 << 20;
    oom_spec.limits.tmp_bytes = 64 << 20;
    let (exit, output) = run(driver, &oom_spec).await?;
    println!(
        "oom container: exit {} oom_killed {} output {:?}",
        exit.code, exit.oom_killed, output
    );
    assert!(
        exit.oom_killed,
        "expected an OOM kill: {exit:?}, output {output}"
    );
    // The same without a memory squeeze is not an OOM.
    let mut no_oom = oom_spec.clone();
    no_oom.id = "oom-2".into();
    no_oom.limits.memory_bytes = 128 << 20;
    let (exit, _) = run(driver, &no_oom).await?;
    assert_eq!((exit.code, exit.oom_killed), (0, false));

    // --- kill, destroy ----------------------------------------------------
    let sleep_log = work.join("sleep.log");
    fs::write(&sleep_log, "")?;
    let sleeper = spec("sleep-1", &image, &["/bin/sleep", "100"], &sleep_log);
    driver.create(&sleeper).await?;
    let waiter = driver.start("sleep-1").await?;
    let t = Instant::now();
    driver.kill("sleep-1", 9).await?;
    let exit = tokio::time::timeout(Duration::from_secs(10), waiter.wait()).await??;
    assert_eq!((exit.code, exit.oom_killed), (137, false));
    assert!(t.elapsed() < Duration::from_secs(5));
    driver.kill("sleep-1", 9).await?; // exited: still fine
    driver.destroy("sleep-1").await?;
    driver.destroy("sleep-1").await?; // idempotent
    driver.kill("never-existed", 9).await?;
    driver.destroy("never-existed").await?;

    // destroy of a running container, and of a created-but-never-started one.
    let running = spec("sleep-2", &image, &["/bin/sleep", "100"], &sleep_log);
    driver.create(&running).await?;
    let _waiter = driver.start("sleep-2").await?;
    let t = Instant::now();
    driver.destroy("sleep-2").await?;
    println!("destroy of a running sleep: {:.1} ms", ms(t.elapsed()));
    let created = spec("sleep-3", &image, &["/bin/sleep", "100"], &sleep_log);
    driver.create(&created).await?;
    driver.destroy("sleep-3").await?;

    // A failed create leaves nothing behind.
    let mut broken = spec("broken-1", &image, &["/bin/true"], &sleep_log);
    broken.image.chain_id =
        "sha256:0000000000000000000000000000000000000000000000000000000000000000".into();
    let err = driver
        .create(&broken)
        .await
        .expect_err("missing parent snapshot");
    println!("create with a missing image snapshot fails as expected: {err}");
    assert!(driver
        .create(&spec("bad/id", &image, &["/bin/true"], &sleep_log))
        .await
        .is_err());
    // Creating an id that is in use fails and leaves the running one alone.
    let busy = spec("busy-1", &image, &["/bin/sleep", "100"], &sleep_log);
    driver.create(&busy).await?;
    let busy_waiter = driver.start("busy-1").await?;
    assert!(driver.create(&busy).await.is_err(), "duplicate id");
    assert_eq!(driver.list_tasks().await?, vec!["busy-1".to_string()]);
    driver.destroy("busy-1").await?;
    assert_eq!(busy_waiter.wait().await?.code, 137);

    assert_nothing_left(driver).await?;

    // --- latency ----------------------------------------------------------
    let mut created_ms = Vec::new();
    let mut exited_ms = Vec::new();
    let mut destroyed_ms = Vec::new();
    for i in 0..22 {
        let out = work.join(format!("bench-{i}.log"));
        fs::write(&out, "")?;
        let s = spec(&format!("bench-{i}"), &image, &["/bin/echo", "hi"], &out);
        let t = Instant::now();
        driver.create(&s).await?;
        let c = t.elapsed();
        let exit = driver.start(&s.id).await?.wait().await?;
        let e = t.elapsed();
        driver.destroy(&s.id).await?;
        let d = t.elapsed();
        assert_eq!(exit.code, 0);
        assert_eq!(fs::read_to_string(&out)?, "hi\n");
        if i >= 2 {
            // The first two warm caches up.
            created_ms.push(ms(c));
            exited_ms.push(ms(e));
            destroyed_ms.push(ms(d));
        }
    }
    println!(
        "echo container, median of {}: created {:.1} ms, exited {:.1} ms, destroyed {:.1} ms (notes: ~70 / ~87 / ~120 ms)",
        created_ms.len(),
        median(created_ms),
        median(exited_ms),
        median(destroyed_ms)
    );

    // A second namespace clean-up after leaving things behind on purpose.
    let leftover = spec("leftover-1", &image, &["/bin/sleep", "100"], &sleep_log);
    driver.create(&leftover).await?;
    let _running = driver.start("leftover-1").await?;
    let created_only = spec("leftover-2", &image, &["/bin/true"], &sleep_log);
    driver.create(&created_only).await?;
    let report = driver.cleanup_namespace().await?;
    assert_eq!(
        (report.tasks, report.containers, report.leases),
        (2, 2, 2),
        "{report:?}"
    );
    assert_nothing_left(driver).await?;
    Ok(())
}

async fn assert_nothing_left(driver: &Driver) -> TestResult {
    let inventory = driver.inventory().await?;
    assert_eq!(inventory, Default::default(), "left behind: {inventory:?}");
    Ok(())
}
