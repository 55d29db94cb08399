//! "Outside": a network namespace of the test's own, routed from the host
//! (198.51.100.0/24 over a veth), standing for the world beyond the node:
//! what a call or a build with egress may reach, when its allowlist says
//! so. Processes run inside it (listeners, a package index) and die with it.
//!
//! One at a time per process: the names are the process's (pid), and the
//! addresses are fixed. Needs root (`ip netns`, `ip link`).

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use sha2::{Digest, Sha256};

/// The outside namespace's address.
pub const OUTSIDE: &str = "198.51.100.1";
/// The host's end of the veth (198.51.100.254/24).
pub const HOST_SIDE: &str = "198.51.100.254";

/// The Python that serves inside the namespace (the host's own).
const PYTHON: &str = "/usr/bin/python3";

/// A static file server with http.server's handler and access log, but
/// a plain TCPServer: `python3 -m http.server` asks DNS for its address's
/// name (`getfqdn`) before it listens, and in a namespace whose resolvers
/// are out of reach that takes many seconds. Prints "Serving HTTP" once
/// listening.
const STATIC_SERVER: &str = r#"
import functools, http.server, socketserver, sys
class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[3])
with Server((sys.argv[1], int(sys.argv[2])), handler) as server:
    print("Serving HTTP", flush=True)
    server.serve_forever()
"#;

/// The command line of a static file server of `dir` on `addr:port`
/// (see [`STATIC_SERVER`]); each request is logged to stderr.
pub fn static_server(addr: &str, port: u16, dir: &str) -> Vec<String> {
    [
        PYTHON,
        "-u",
        "-c",
        STATIC_SERVER,
        addr,
        &port.to_string(),
        dir,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn sh(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    ensure!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Set while this process has an `Outside`: a second would take the same
/// names and addresses (and tear down the first's on drop).
static IN_USE: AtomicBool = AtomicBool::new(false);

/// The outside network and what runs in it; removed on drop.
pub struct Outside {
    netns: String,
    veth: String,
    children: Vec<Child>,
}

impl Outside {
    /// The namespace, the veth and the routes; nothing listening yet.
    pub fn start() -> anyhow::Result<Outside> {
        ensure!(
            !IN_USE.swap(true, Ordering::SeqCst),
            "one Outside per process at a time (its names and addresses are fixed)"
        );
        let id = std::process::id();
        // Built first so that a failure part-way removes what was made.
        let outside = Outside {
            netns: format!("ftest-out-{id}"),
            veth: format!("fto{id}"),
            children: Vec::new(),
        };
        let (ns, host_end) = (outside.netns.as_str(), outside.veth.as_str());
        let peer = format!("{host_end}p");
        sh(&["ip", "netns", "add", ns])?;
        sh(&[
            "ip", "link", "add", host_end, "type", "veth", "peer", "name", &peer,
        ])?;
        sh(&["ip", "link", "set", &peer, "netns", ns])?;
        sh(&[
            "ip",
            "addr",
            "add",
            &format!("{HOST_SIDE}/24"),
            "dev",
            host_end,
        ])?;
        sh(&["ip", "link", "set", host_end, "up"])?;
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{OUTSIDE}/24"),
            "dev",
            &peer,
        ])?;
        sh(&["ip", "-n", ns, "link", "set", &peer, "up"])?;
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        sh(&["ip", "-n", ns, "route", "add", "default", "via", HOST_SIDE])?;
        Ok(outside)
    }

    /// The namespace's name (under /run/netns).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// `cmd` (program and arguments) to run inside the namespace; the
    /// caller spawns it and owns the child.
    pub fn command(&self, cmd: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.netns]).args(cmd);
        c
    }

    /// Starts a long-lived `cmd` inside the namespace, its output
    /// discarded; killed when the `Outside` is dropped.
    pub fn spawn_in(&mut self, cmd: &[&str]) -> anyhow::Result<()> {
        let child = self
            .command(cmd)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {cmd:?} in {}", self.netns))?;
        self.children.push(child);
        Ok(())
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.veth])
            .status();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
        IN_USE.store(false, Ordering::SeqCst);
    }
}

/// Waits until `addr` accepts a TCP connection (from the host: the
/// outside network is routed).
pub fn wait_listening(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                bail!("{addr} not listening after {timeout:?}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The port the package index serves on, in the outside namespace.
pub const INDEX_PORT: u16 = 8080;

/// A PEP 503 "simple" package index in the outside namespace, serving
/// the wheels it was given (`python3 -m http.server`), with its access
/// log. The server dies with the index (or the `Outside`, if first).
pub struct PackageIndex {
    server: Child,
    log: PathBuf,
    // Removed after the server is killed (fields drop after `drop`).
    _dir: tempfile::TempDir,
}

impl PackageIndex {
    /// Writes the index (`simple/`, `simple/<project>/`, the files under
    /// `packages/`) for `wheels` (file name, contents) and serves it on
    /// 198.51.100.1:8080; returns once the server answers.
    pub fn start(
        outside: &mut Outside,
        wheels: &[(String, Vec<u8>)],
    ) -> anyhow::Result<PackageIndex> {
        PackageIndex::start_with_npm(outside, wheels, &[])
    }

    /// As [`PackageIndex::start`], also serving npm `tarballs` (from
    /// [`npm_tarball`]) as a registry does, under `npm/`
    /// ([`PackageIndex::npm_url`]): `npm/<name>/-/<file>-<version>.tgz`.
    pub fn start_with_npm(
        outside: &mut Outside,
        wheels: &[(String, Vec<u8>)],
        tarballs: &[NpmTarball],
    ) -> anyhow::Result<PackageIndex> {
        let dir = tempfile::Builder::new().prefix("faas-index-").tempdir()?;
        let root = dir.path();
        std::fs::create_dir_all(root.join("packages"))?;
        for tarball in tarballs {
            let file = root.join("npm").join(tarball.path());
            std::fs::create_dir_all(file.parent().context("a tarball's directory")?)?;
            std::fs::write(file, &tarball.bytes)?;
        }
        // Project (normalized) -> its files' links, in a stable order.
        let mut projects = std::collections::BTreeMap::<String, Vec<String>>::new();
        for (name, bytes) in wheels {
            ensure!(
                name.ends_with(".whl") && !name.contains('/') && name.contains('-'),
                "not a wheel file name: {name}"
            );
            std::fs::write(root.join("packages").join(name), bytes)?;
            let project = normalize(name.split('-').next().unwrap_or_default());
            let digest = hex::encode(Sha256::digest(bytes));
            projects.entry(project).or_default().push(format!(
                "<a href=\"/packages/{name}#sha256={digest}\">{name}</a><br/>"
            ));
        }
        let page = |title: &str, links: &[String]| {
            format!(
                "<!DOCTYPE html>\n<html><head><meta name=\"pypi:repository-version\" content=\"1.0\">\
                 <title>{title}</title></head><body>\n{}\n</body></html>\n",
                links.join("\n")
            )
        };
        let simple = root.join("simple");
        std::fs::create_dir_all(&simple)?;
        let top: Vec<String> = projects
            .keys()
            .map(|p| format!("<a href=\"/simple/{p}/\">{p}</a><br/>"))
            .collect();
        std::fs::write(simple.join("index.html"), page("Simple index", &top))?;
        for (project, links) in &projects {
            std::fs::create_dir_all(simple.join(project))?;
            std::fs::write(
                simple.join(project).join("index.html"),
                page(&format!("Links for {project}"), links),
            )?;
        }

        // http.server logs each request to stderr, a line each.
        let log = root.join("access.log");
        let log_file = std::fs::File::create(&log)?;
        let root_str = root.to_str().context("index path")?;
        let args = static_server(OUTSIDE, INDEX_PORT, root_str);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = outside
            .command(&args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting the package index")?;
        let mut index = PackageIndex {
            server,
            log,
            _dir: dir,
        };
        let addr = SocketAddr::new(OUTSIDE.parse()?, INDEX_PORT);
        if let Err(e) = wait_listening(addr, Duration::from_secs(15)) {
            let exited = index.server.try_wait()?;
            bail!(
                "the package index: {e} (server: {exited:?}): {}",
                std::fs::read_to_string(&index.log).unwrap_or_default()
            );
        }
        Ok(index)
    }

    /// The index's URL, for `pip --index-url`.
    pub fn url(&self) -> String {
        format!("http://{OUTSIDE}:{INDEX_PORT}/simple/")
    }

    /// The npm registry's URL (`[build] npm_registry`).
    pub fn npm_url(&self) -> String {
        format!("http://{OUTSIDE}:{INDEX_PORT}/npm/")
    }

    /// The address to allow (`--allow`) for the index to be reachable.
    pub fn allow(&self) -> String {
        format!("{OUTSIDE}:{INDEX_PORT}")
    }

    /// The server's access log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many GET requests the server has had for the file `filename`
    /// (whatever its directory, query or fragment).
    pub fn downloads(&self, filename: &str) -> usize {
        self.log()
            .lines()
            .filter_map(|line| line.split_once("\"GET ").map(|(_, rest)| rest))
            .filter_map(|rest| rest.split(' ').next())
            .map(|path| path.split(['?', '#']).next().unwrap_or(path))
            .filter(|path| path.rsplit('/').next() == Some(filename))
            .count()
    }
}

impl Drop for PackageIndex {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// A project name as PEP 503 normalizes it: runs of `-`, `_`, `.` become
/// one `-`, lowercase.
pub fn normalize(project: &str) -> String {
    let mut out = String::new();
    let mut sep = false;
    for c in project.chars() {
        if matches!(c, '-' | '_' | '.') {
            sep = true;
        } else {
            if sep && !out.is_empty() {
                out.push('-');
            }
            sep = false;
            out.push(c.to_ascii_lowercase());
        }
    }
    out
}

/// URL-safe base64 without padding, as a wheel's RECORD writes hashes.
fn b64_urlsafe_nopad(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// An npm package tarball as a registry serves it.
#[derive(Clone, Debug)]
pub struct NpmTarball {
    pub name: String,
    pub version: String,
    pub bytes: Vec<u8>,
}

impl NpmTarball {
    /// Where a registry serves it: `<name>/-/<unscoped name>-<version>.tgz`.
    pub fn path(&self) -> String {
        let file = self.name.rsplit('/').next().unwrap_or(&self.name);
        format!("{}/-/{file}-{}.tgz", self.name, self.version)
    }

    /// The URL a package-lock.json made against the public registry has.
    pub fn public_url(&self) -> String {
        format!("https://registry.npmjs.org/{}", self.path())
    }

    /// The lockfile's `integrity`: `sha512-<base64>`.
    pub fn integrity(&self) -> String {
        let url_safe = b64_urlsafe_nopad(&sha2::Sha512::digest(&self.bytes));
        let mut standard: String = url_safe
            .chars()
            .map(|c| match c {
                '-' => '+',
                '_' => '/',
                c => c,
            })
            .collect();
        while !standard.len().is_multiple_of(4) {
            standard.push('=');
        }
        format!("sha512-{standard}")
    }
}

/// An npm package tarball of `name` `version` holding `files` (path in the
/// package, contents) and a package.json, under `package/` as `npm pack`
/// makes them.
pub fn npm_tarball(
    name: &str,
    version: &str,
    files: &[(&str, &str)],
) -> anyhow::Result<NpmTarball> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let manifest = serde_json::json!({ "name": name, "version": version }).to_string();
    let mut entries: Vec<(&str, &str)> = vec![("package.json", manifest.as_str())];
    entries.extend_from_slice(files);
    for (path, body) in entries {
        ensure!(
            !path.starts_with('/') && !path.contains(".."),
            "bad path {path}"
        );
        let mut header = tar::Header::new_ustar();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, format!("package/{path}"), body.as_bytes())?;
    }
    let bytes = tar.into_inner()?.finish()?;
    Ok(NpmTarball {
        name: name.to_string(),
        version: version.to_string(),
        bytes,
    })
}

/// A pure-Python wheel (`py3-none-any`) of `project` `version` holding
/// `files` (path in the wheel, contents), with its METADATA, WHEEL and
/// RECORD (sha256 and size of each file). Returns (file name, bytes).
pub fn pure_wheel(
    project: &str,
    version: &str,
    files: &[(&str, &str)],
) -> anyhow::Result<(String, Vec<u8>)> {
    ensure!(!normalize(project).is_empty(), "no project name");
    ensure!(
        !version.is_empty() && !version.contains(['-', '/', ' ']),
        "bad version {version:?}"
    );
    // The wheel's escaped name: the normalized one, `_` for `-`.
    let dist = normalize(project).replace('-', "_");
    let dist_info = format!("{dist}-{version}.dist-info");
    let metadata = format!("Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n");
    let wheel =
        "Wheel-Version: 1.0\nGenerator: faas-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n";
    let mut entries: Vec<(String, &[u8])> = files
        .iter()
        .map(|(path, body)| (path.to_string(), body.as_bytes()))
        .collect();
    entries.push((format!("{dist_info}/METADATA"), metadata.as_bytes()));
    entries.push((format!("{dist_info}/WHEEL"), wheel.as_bytes()));
    let mut record = String::new();
    for (path, body) in &entries {
        ensure!(
            !path.starts_with('/') && !path.contains(',') && !path.contains(".."),
            "bad path in a wheel: {path}"
        );
        record.push_str(&format!(
            "{path},sha256={},{}\n",
            b64_urlsafe_nopad(&Sha256::digest(body)),
            body.len()
        ));
    }
    let record_path = format!("{dist_info}/RECORD");
    record.push_str(&format!("{record_path},,\n"));
    entries.push((record_path, record.as_bytes()));

    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o644);
    for (path, body) in &entries {
        zip.start_file(path.as_str(), options)?;
        zip.write_all(body)?;
    }
    let bytes = zip.finish()?.into_inner();
    Ok((format!("{dist}-{version}-py3-none-any.whl"), bytes))
}

/// Checks a wheel as an installer would read it, with the host's Python
/// (`zipfile`): every file in RECORD present with its hash and size, and
/// nothing in the archive that RECORD leaves out.
pub fn check_wheel(path: &Path) -> anyhow::Result<()> {
    const CHECK: &str = r#"
import base64, csv, hashlib, io, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
assert z.testzip() is None, "corrupt member"
names = set(z.namelist())
record = [n for n in names if n.endswith(".dist-info/RECORD")]
assert len(record) == 1, record
rows = list(csv.reader(io.TextIOWrapper(z.open(record[0]), "utf-8")))
listed = {row[0] for row in rows}
assert listed == names, (listed ^ names)
for path, digest, size in rows:
    if path == record[0]:
        assert digest == "" and size == "", (path, digest, size)
        continue
    data = z.read(path)
    algo, _, value = digest.partition("=")
    assert algo == "sha256", digest
    want = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    assert value == want, (path, value, want)
    assert int(size) == len(data), (path, size, len(data))
print("ok", len(rows))
"#;
    let out = Command::new(PYTHON)
        .args(["-c", CHECK])
        .arg(path)
        .output()?;
    ensure!(
        out.status.success(),
        "wheel {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        for (input, want) in [
            (&b""[..], ""),
            (b"f", "Zg"),
            (b"fo", "Zm8"),
            (b"foo", "Zm9v"),
            (b"\xfb\xff", "-_8"),
        ] {
            assert_eq!(b64_urlsafe_nopad(input), want);
        }
    }

    #[test]
    fn names_normalize() {
        assert_eq!(normalize("Foo.Bar__baz"), "foo-bar-baz");
        assert_eq!(normalize("faas_dep"), "faas-dep");
    }
}
