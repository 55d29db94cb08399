//! Deploy-time builds (issue 14) on the real stack: a function's
//! requirements.txt is installed by pip in a build container whose network
//! reaches only the configured package index (a PEP 503 index in a network
//! namespace of the test's own), once per dependency-file digest; the
//! function's own files and its dependencies are byte-compiled once, at
//! deploy (unchecked-hash .pyc in the read-only function directory), so a
//! cold call compiles nothing.

use std::path::Path;

use faas_proto::v1::call_service_client::CallServiceClient;
use faas_proto::v1::{Call, CallStatus, InvokeRequest};
use faas_tests::outside::{npm_tarball, pure_wheel, NpmTarball, Outside, PackageIndex, OUTSIDE};
use faas_tests::{Stack, StackOptions};
use serde_json::{json, Value};

const HANDLER: &str = r#"
import os
import sys

import faasdep
import vendored


def pyc_flags(module):
    # The 4 bytes after the magic number: 0b01 is an unchecked-hash pyc.
    with open(module.__cached__, "rb") as pyc:
        return int.from_bytes(pyc.read(8)[4:8], "little")


def handler(event, context):
    this = sys.modules[__name__]
    return {
        "value": faasdep.VALUE,
        "version": "@VERSION@",
        "pycs": {
            name: {
                "path": m.__cached__,
                "exists": os.path.exists(m.__cached__),
                "flags": pyc_flags(m) if os.path.exists(m.__cached__) else None,
            }
            for name, m in [("handler", this), ("faasdep", faasdep), ("vendored", vendored)]
        },
        "faasdep_file": faasdep.__file__,
    }
"#;

/// Imports a vendored package, counting what CPython compiles meanwhile.
const COUNTING_HANDLER: &str = r#"
import importlib.machinery
import sys


def handler(event, context):
    loader = importlib.machinery.SourceFileLoader
    original = loader.source_to_code
    compiled = []

    def counting(self, data, path, *args, **kwargs):
        compiled.append(str(path))
        return original(self, data, path, *args, **kwargs)

    loader.source_to_code = counting
    try:
        import vendpkg
    finally:
        loader.source_to_code = original
    return {
        "imported": len([m for m in sys.modules if m.split(".")[0] == "vendpkg"]),
        "compiled": compiled,
    }
"#;

fn write_function(dir: &Path, version: &str, requirements: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("handler.py"),
        HANDLER.replace("@VERSION@", version),
    )
    .unwrap();
    std::fs::write(dir.join("vendored.py"), "X = 1\n").unwrap();
    std::fs::write(dir.join("requirements.txt"), requirements).unwrap();
}

/// `faasctl -o json fn deploy`: the function record, or the error output.
fn deploy(stack: &Stack, name: &str, dir: &Path) -> Result<Value, String> {
    deploy_on(stack, name, "python3", dir)
}

fn deploy_on(stack: &Stack, name: &str, runtime: &str, dir: &Path) -> Result<Value, String> {
    let out = stack
        .faasctl()
        .args(["-o", "json", "fn", "deploy", name, "--runtime", runtime])
        .arg(dir)
        .output()
        .expect("running faasctl");
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).expect("deploy prints JSON"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

async fn invoke(stack: &Stack, function: &str) -> Value {
    let call: Call = CallServiceClient::new(stack.channel().await)
        .invoke(InvokeRequest {
            function: function.into(),
            params_json: "{}".into(),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("invoking {function}: {e}"))
        .into_inner();
    assert_eq!(call.status(), CallStatus::Succeeded, "{call:#?}");
    serde_json::from_str(&call.result_json).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requirements_are_installed_once_and_everything_is_compiled_at_deploy() {
    let mut outside = Outside::start().expect("the outside network");
    let (wheel, bytes) = pure_wheel(
        "faasdep",
        "1.0",
        &[("faasdep/__init__.py", "VALUE = 'from the index'\n")],
    )
    .unwrap();
    let index = PackageIndex::start(&mut outside, &[(wheel.clone(), bytes)]).unwrap();
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("controlplane.toml");
    std::fs::write(
        &config,
        format!(
            "[build]\nindex_url = \"{}\"\nallow = [\"{}\"]\ntimeout_secs = 120\n",
            index.url(),
            index.allow()
        ),
    )
    .unwrap();
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        controlplane_args: vec!["--config".into(), config.display().to_string()],
        ..Default::default()
    })
    .await
    .expect("starting the stack");

    // First deploy: pip installs from the index, everything is compiled.
    let dir = work.path().join("fn");
    write_function(&dir, "one", "faasdep==1.0\n");
    let first = deploy(&stack, "deps", &dir).unwrap_or_else(|e| panic!("{e}"));
    let build = &first["build"];
    assert_eq!(build["has_dependencies"], true, "{first:#}");
    assert_eq!(build["dependencies_cached"], false, "{first:#}");
    assert!(build["dependencies_digest"]
        .as_str()
        .unwrap()
        .starts_with("sha256:"));
    assert_eq!(index.downloads(&wheel), 1, "{}", index.log());

    let result = invoke(&stack, "deps").await;
    assert_eq!(result["value"], "from the index", "{result:#}");
    assert_eq!(result["version"], "one");
    // Merged into the function's directory, as `sam build` does.
    assert_eq!(result["faasdep_file"], "/var/task/faasdep/__init__.py");
    for module in ["handler", "faasdep", "vendored"] {
        let pyc = &result["pycs"][module];
        // In the read-only function directory: made by the build, never by
        // the call; unchecked-hash, so never recompiled or re-validated.
        assert_eq!(pyc["exists"], true, "{module}: {result:#}");
        assert_eq!(pyc["flags"], 1, "{module}: {result:#}");
        assert!(
            pyc["path"].as_str().unwrap().starts_with("/var/task/"),
            "{module}: {result:#}"
        );
    }

    // New code, same requirements: the dependency layer comes from the
    // cache, nothing is downloaded again, the new code is compiled.
    write_function(&dir, "two", "faasdep==1.0\n");
    let second = deploy(&stack, "deps", &dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(second["build"]["dependencies_cached"], true, "{second:#}");
    assert_eq!(
        second["build"]["dependencies_digest"], build["dependencies_digest"],
        "{second:#}"
    );
    assert_eq!(index.downloads(&wheel), 1, "{}", index.log());
    let result = invoke(&stack, "deps").await;
    assert_eq!(result["version"], "two");
    assert_eq!(result["value"], "from the index");
    assert_eq!(result["pycs"]["handler"]["flags"], 1, "{result:#}");

    // Another function of the namespace with the same requirements shares
    // the layer.
    let other = work.path().join("other");
    write_function(&other, "other", "faasdep==1.0\n");
    let shared = deploy(&stack, "deps-too", &other).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(shared["build"]["dependencies_cached"], true, "{shared:#}");
    assert_eq!(index.downloads(&wheel), 1, "{}", index.log());

    // A requirement the index does not have: the deploy fails with pip's
    // own words, and the function keeps its last version.
    write_function(&dir, "three", "faasdep==1.0\nno-such-dist==9.9\n");
    let err = deploy(&stack, "deps", &dir).expect_err("a failing build fails the deploy");
    assert!(err.contains("the build failed"), "{err}");
    assert!(err.contains("no-such-dist"), "pip's output is shown: {err}");
    assert_eq!(invoke(&stack, "deps").await["version"], "two");

    // The build's network reaches the index and nothing else: the same
    // wheel served from another port of the same host is out of reach.
    let elsewhere = work.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::fs::write(
        elsewhere.join(&wheel),
        pure_wheel(
            "faasdep",
            "1.0",
            &[("faasdep/__init__.py", "VALUE = 'elsewhere'\n")],
        )
        .unwrap()
        .1,
    )
    .unwrap();
    let elsewhere_log = std::fs::File::create(work.path().join("elsewhere.log")).unwrap();
    let args = faas_tests::outside::static_server(OUTSIDE, 8081, &elsewhere.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut server = outside
        .command(&args)
        .stdin(std::process::Stdio::null())
        .stdout(elsewhere_log.try_clone().unwrap())
        .stderr(elsewhere_log)
        .spawn()
        .unwrap();
    // Up once it says so (the host's own connections to the outside may
    // meet the egress ruleset the build loaded: no connect probe here).
    let log_path = work.path().join("elsewhere.log");
    let up = std::time::Instant::now();
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("Serving HTTP")
    {
        assert!(
            up.elapsed() < std::time::Duration::from_secs(10),
            "the second server did not start: {:?}",
            server.try_wait()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    write_function(
        &dir,
        "four",
        &format!("faasdep @ http://{OUTSIDE}:8081/{wheel}\n"),
    );
    let err = deploy(&stack, "deps", &dir).expect_err("only the index is reachable");
    let served = std::fs::read_to_string(work.path().join("elsewhere.log")).unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(err.contains("the build failed"), "{err}");
    assert!(
        !served.contains("GET /"),
        "the build reached past the index: {served}"
    );
    assert_eq!(invoke(&stack, "deps").await["version"], "two");

    // A function without requirements, with a vendored package: compiled
    // at deploy too, so its cold call compiles nothing. The handler counts
    // the compilations CPython does while it imports the package (the
    // loader compiles only when no valid .pyc is there).
    let plain = work.path().join("plain");
    std::fs::create_dir_all(plain.join("vendpkg")).unwrap();
    std::fs::write(plain.join("vendpkg/__init__.py"), "from . import a, b\n").unwrap();
    std::fs::write(
        plain.join("vendpkg/a.py"),
        "A = [i * i for i in range(10)]\n",
    )
    .unwrap();
    std::fs::write(plain.join("vendpkg/b.py"), "def b():\n    return 'b'\n").unwrap();
    std::fs::write(plain.join("handler.py"), COUNTING_HANDLER).unwrap();
    let plain_record = deploy(&stack, "plain", &plain).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        plain_record["build"]["has_dependencies"], false,
        "{plain_record:#}"
    );
    let counted = invoke(&stack, "plain").await;
    assert_eq!(counted["imported"], 3, "{counted:#}");
    assert_eq!(counted["compiled"], json!([]), "{counted:#}");
    // The control: the same package on the same image without a build
    // compiles every module at the call.
    stack.register_unbuilt("python3").await.unwrap();
    stack
        .deploy("plain-unbuilt", "python3-unbuilt", &plain, &[])
        .unwrap();
    let counted = invoke(&stack, "plain-unbuilt").await;
    assert_eq!(
        counted["compiled"].as_array().map(Vec::len),
        Some(3),
        "{counted:#}"
    );
    drop(stack);
}

/// A package-lock.json for `packages` (lockfile key, tarball, extra
/// fields), as npm 7+ writes it against the public registry.
fn package_lock(packages: &[(&str, &NpmTarball, Value)]) -> String {
    let mut entries = serde_json::Map::new();
    entries.insert("".into(), json!({ "name": "fn" }));
    for (key, tarball, extra) in packages {
        let mut entry = json!({
            "version": tarball.version,
            "resolved": tarball.public_url(),
            "integrity": tarball.integrity(),
        });
        if let (Some(entry), Some(extra)) = (entry.as_object_mut(), extra.as_object()) {
            entry.extend(extra.clone());
        }
        entries.insert(key.to_string(), entry);
    }
    json!({ "name": "fn", "lockfileVersion": 3, "requires": true, "packages": entries }).to_string()
}

const NODE_HANDLER: &str = r#"
const wrap = require('wrap');
exports.handler = async () => ({
  wrapped: wrap('x'),
  version: '@VERSION@',
  path: require.resolve('wrap'),
  devInstalled: (() => { try { require.resolve('devtool'); return true; } catch (e) { return false; } })(),
});
"#;

fn write_node_function(dir: &Path, version: &str, lock: Option<&str>) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("index.js"),
        NODE_HANDLER.replace("@VERSION@", version),
    )
    .unwrap();
    std::fs::write(
        dir.join("package.json"),
        json!({
            "name": "fn",
            "dependencies": { "wrap": "^1.0.0" },
            "devDependencies": { "devtool": "^1.0.0" },
        })
        .to_string(),
    )
    .unwrap();
    let lock_path = dir.join("package-lock.json");
    match lock {
        Some(lock) => std::fs::write(lock_path, lock).unwrap(),
        None => {
            let _ = std::fs::remove_file(lock_path);
        }
    }
}

/// Node: package.json's dependencies are installed at deploy from what
/// package-lock.json pins, from the configured registry only, each tarball
/// checked against the lockfile's integrity; once per lockfile digest. A
/// package without dependency files makes no build at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn package_lock_is_installed_once_from_the_registry() {
    let mut outside = Outside::start().expect("the outside network");
    // wrap@1.0.0 needs @faas/pad@2.0.0, nested under it (another
    // version would sit at the top); devtool is a dev dependency.
    let wrap = npm_tarball(
        "wrap",
        "1.0.0",
        &[(
            "index.js",
            "const pad = require('@faas/pad');\nmodule.exports = (s) => '[' + pad(s) + ']';\n",
        )],
    )
    .unwrap();
    let pad = npm_tarball(
        "@faas/pad",
        "2.0.0",
        &[("index.js", "module.exports = (s) => ' ' + s + ' ';\n")],
    )
    .unwrap();
    let devtool =
        npm_tarball("devtool", "1.0.0", &[("index.js", "module.exports = 1;\n")]).unwrap();
    let index = PackageIndex::start_with_npm(
        &mut outside,
        &[],
        &[wrap.clone(), pad.clone(), devtool.clone()],
    )
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("controlplane.toml");
    std::fs::write(
        &config,
        format!(
            "[build]\nnpm_registry = \"{}\"\nallow = [\"{}\"]\ntimeout_secs = 120\n",
            index.npm_url(),
            index.allow()
        ),
    )
    .unwrap();
    let stack = Stack::start(StackOptions {
        runtimes: vec!["node"],
        controlplane_args: vec!["--config".into(), config.display().to_string()],
        ..Default::default()
    })
    .await
    .expect("starting the stack");
    let lock = package_lock(&[
        ("node_modules/wrap", &wrap, json!({})),
        ("node_modules/wrap/node_modules/@faas/pad", &pad, json!({})),
        ("node_modules/devtool", &devtool, json!({ "dev": true })),
    ]);
    let files = |t: &NpmTarball| t.path().rsplit('/').next().unwrap().to_string();

    // First deploy: installed from the registry, dev dependencies left out.
    let dir = work.path().join("fn");
    write_node_function(&dir, "one", Some(&lock));
    let first = deploy_on(&stack, "npmdeps", "node", &dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first["build"]["has_dependencies"], true, "{first:#}");
    assert_eq!(first["build"]["dependencies_cached"], false, "{first:#}");
    assert_eq!(index.downloads(&files(&wrap)), 1, "{}", index.log());
    assert_eq!(index.downloads(&files(&pad)), 1, "{}", index.log());
    assert_eq!(index.downloads(&files(&devtool)), 0, "{}", index.log());
    let result = invoke(&stack, "npmdeps").await;
    assert_eq!(result["wrapped"], "[ x ]", "{result:#}");
    assert_eq!(
        result["path"], "/var/task/node_modules/wrap/index.js",
        "{result:#}"
    );
    assert_eq!(result["devInstalled"], false, "{result:#}");

    // New code, same lockfile: the layer comes from the cache.
    write_node_function(&dir, "two", Some(&lock));
    let second = deploy_on(&stack, "npmdeps", "node", &dir).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(second["build"]["dependencies_cached"], true, "{second:#}");
    assert_eq!(index.downloads(&files(&wrap)), 1, "{}", index.log());
    let result = invoke(&stack, "npmdeps").await;
    assert_eq!(result["version"], "two", "{result:#}");
    assert_eq!(result["wrapped"], "[ x ]", "{result:#}");

    // A tarball that is not what the lockfile pins: refused before it is
    // unpacked; the function keeps its version.
    let forged = package_lock(&[
        (
            "node_modules/wrap",
            &wrap,
            json!({ "integrity": pad.integrity() }),
        ),
        ("node_modules/wrap/node_modules/@faas/pad", &pad, json!({})),
    ]);
    write_node_function(&dir, "three", Some(&forged));
    let err = deploy_on(&stack, "npmdeps", "node", &dir).expect_err("integrity checked");
    assert!(err.contains("the build failed"), "{err}");
    assert!(err.contains("wrap@1.0.0: the tarball's sha512"), "{err}");
    // Another source than the registry: refused, naming it.
    let elsewhere = package_lock(&[(
        "node_modules/wrap",
        &wrap,
        json!({ "resolved": "https://evil.example/wrap/-/wrap-1.0.0.tgz" }),
    )]);
    write_node_function(&dir, "four", Some(&elsewhere));
    let err = deploy_on(&stack, "npmdeps", "node", &dir).expect_err("one registry");
    assert!(err.contains("only the configured registry"), "{err}");
    // Dependencies without a lockfile: refused, saying how to make one.
    write_node_function(&dir, "five", None);
    let err = deploy_on(&stack, "npmdeps", "node", &dir).expect_err("a lockfile is needed");
    assert!(err.contains("npm install --package-lock-only"), "{err}");
    assert_eq!(invoke(&stack, "npmdeps").await["version"], "two");

    // No dependency file: no build container at all.
    let plain = work.path().join("plain");
    std::fs::create_dir_all(&plain).unwrap();
    std::fs::write(
        plain.join("index.js"),
        "exports.handler = async () => ({ plain: true });\n",
    )
    .unwrap();
    let record = deploy_on(&stack, "plain", "node", &plain).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(record["build"], Value::Null, "{record:#}");
    assert_eq!(invoke(&stack, "plain").await["plain"], true);
    drop(stack);
}

/// `faasctl fn deploy` shows the build as it runs: the node, then each
/// line of its output when it is written, not at the end. The build here
/// says one thing, waits 3 s, says another, then does python3's build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_shows_its_build_as_it_runs() {
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        ..Default::default()
    })
    .await
    .expect("starting the stack");
    let (_, archive) = faas_tests::runtime_archives()
        .unwrap()
        .into_iter()
        .find(|(name, _)| name == "python3")
        .expect("the python3 archive");
    stack
        .register_runtime_spec(
            faas_proto::v1::RuntimeSpec {
                name: "slowbuild".into(),
                path: "/var/task".into(),
                run: "python3 -u /opt/faas/bootstrap.py".into(),
                build: "sh -c 'echo step one; sleep 3; echo step two; exec python3 -I /opt/faas/build.py'"
                    .into(),
                replace: true,
                ..Default::default()
            },
            &archive,
        )
        .await
        .unwrap();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("fn");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("handler.py"),
        "def handler(event, context):\n    return 'built'\n",
    )
    .unwrap();

    let mut child = stack
        .faasctl()
        .args(["fn", "deploy", "slow", "--runtime", "slowbuild"])
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Each stderr line with when it came.
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .map(|line| (std::time::Instant::now(), line))
            .collect::<Vec<_>>()
    });
    let out = child.wait_with_output().unwrap();
    let exited = std::time::Instant::now();
    let lines = reader.join().unwrap();
    let text: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    assert!(out.status.success(), "{text:#?}");
    assert!(text.contains(&"building on node-0"), "{text:#?}");
    let at = |wanted: &str| {
        lines
            .iter()
            .find(|(_, line)| line == wanted)
            .map(|(at, _)| *at)
            .unwrap_or_else(|| panic!("no {wanted:?} in {text:#?}"))
    };
    let one = at("build | step one");
    let two = at("build | step two");
    assert!(
        two.duration_since(one) >= std::time::Duration::from_secs(2),
        "the first line came with the second: {text:#?}"
    );
    assert!(
        exited.duration_since(one) >= std::time::Duration::from_secs(2),
        "the first line came at the end: {text:#?}"
    );
    assert!(
        text.iter()
            .any(|l| l.starts_with("build | faas build: compiled")),
        "the build's last lines: {text:#?}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("deployed: version 1"),
        "{out:?}"
    );
    assert_eq!(invoke(&stack, "slow").await, json!("built"));
    drop(stack);
}

/// The cost a build takes off cold calls: jinja2 and markupsafe (vendored
/// from this machine's Python, as a function would vendor them) imported
/// and used by a cold call, on python3 (built at deploy: bytecode) and on
/// the same image without a build. Prints the medians; numbers in
/// docs/benchmarks.md. Run with `cargo test --release -p faas-tests --test
/// builds -- --ignored --nocapture cold_import`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: run by hand"]
async fn cold_import_with_and_without_bytecode() {
    let found = std::process::Command::new("python3")
        .args([
            "-c",
            "import jinja2, markupsafe, os; print(os.path.dirname(jinja2.__file__)); print(os.path.dirname(markupsafe.__file__))",
        ])
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&found.stdout).into_owned();
    let dirs: Vec<&str> = text.lines().collect();
    assert_eq!(
        dirs.len(),
        2,
        "jinja2 and markupsafe are needed here: {text}"
    );
    let work = tempfile::tempdir().unwrap();
    let function = work.path().join("fn");
    std::fs::create_dir_all(&function).unwrap();
    for dir in dirs {
        let status = std::process::Command::new("cp")
            .args(["-r", dir])
            .arg(&function)
            .status()
            .unwrap();
        assert!(status.success());
    }
    // Whatever bytecode the host had is not shipped (as the packer's
    // defaults leave it out).
    std::fs::write(
        function.join("handler.py"),
        "def handler(event, context):\n    import jinja2\n    return jinja2.Template('hello {{ name }}').render(name=event.get('name', 'x'))\n",
    )
    .unwrap();
    let stack = Stack::start(StackOptions {
        runtimes: vec!["python3"],
        policy: Some("no-preload".into()),
        ..Default::default()
    })
    .await
    .expect("starting the stack");
    stack.register_unbuilt("python3").await.unwrap();
    for (name, runtime) in [("built", "python3"), ("unbuilt", "python3-unbuilt")] {
        stack.deploy(name, runtime, &function, &[]).unwrap();
    }
    let mut client = CallServiceClient::new(stack.channel().await);
    for round in 0..2 {
        for name in ["built", "unbuilt"] {
            let mut execution = Vec::new();
            let mut total = Vec::new();
            for _ in 0..10 {
                let call = client
                    .invoke(InvokeRequest {
                        function: name.into(),
                        params_json: r#"{"name":"faas"}"#.into(),
                        ..Default::default()
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(call.status(), CallStatus::Succeeded, "{call:#?}");
                let t = call.timings.unwrap_or_default();
                execution.push(t.execution_ms);
                total.push(t.total_ms);
            }
            let median = |v: &mut Vec<f64>| {
                v.sort_by(|a, b| a.total_cmp(b));
                v[v.len() / 2]
            };
            eprintln!(
                "round {round} {name:8} cold calls: execution median {:.1} ms, total median {:.1} ms",
                median(&mut execution),
                median(&mut total)
            );
        }
    }
}
