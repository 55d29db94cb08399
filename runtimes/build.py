#!/usr/bin/env python3
"""Builds the runtime images of runtimes/<name>/ as OCI image archives.

usage: build.py [NAME...]   (default: every runtimes/*/runtime.toml)

For each runtime prints "<name> <archive path>". An archive is an OCI image
layout in a plain tar (oci-layout, index.json, blobs/sha256/...) holding one
gzip layer. Archives are cached in ${FAAS_CACHE_DIR:-/var/cache/faas}/runtimes/
under a key hashing the runtime's directory and this script, so an unchanged
runtime is not rebuilt. Builds are reproducible for a given set of Debian
package versions: fixed SOURCE_DATE_EPOCH, sorted entries, clamped mtimes,
numeric owners, gzip without names or times.

Standard library only (Python 3.11+ for tomllib); needs root and mmdebstrap.
"""

import datetime
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib

RUNTIMES_DIR = os.path.dirname(os.path.abspath(__file__))
# 2025-01-01T00:00:00Z. Part of the cache key through this file.
SOURCE_DATE_EPOCH = 1735689600
# /opt/bin last, as on Lambda: the binaries of a function's layers.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/opt/bin"
MIRRORS = {
    "debian": os.environ.get("FAAS_DEBIAN_MIRROR", "http://deb.debian.org/debian"),
    "security": os.environ.get("FAAS_DEBIAN_SECURITY_MIRROR", "http://deb.debian.org/debian-security"),
}
# The user every function runs as (nobody:nogroup).
RUN_AS = "65534:65534"
# Trimmed from every image: nothing at run time reads them.
TRIM = ["usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
        "usr/share/bug", "etc/apt", "var/lib/apt", "var/cache/apt", "var/log/apt", "var/cache/ldconfig",
        "etc/hostname", "etc/resolv.conf"]
# Mount points the platform uses; present so a strictly read-only root works.
MOUNT_POINTS = ["proc", "sys", "dev", "tmp", "var/task", "faas/io", "faas/bin"]

MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def log(message):
    print(f"runtimes/build: {message}", file=sys.stderr, flush=True)


class BuildError(Exception):
    pass


def load_runtime(name):
    directory = os.path.join(RUNTIMES_DIR, name)
    spec_path = os.path.join(directory, "runtime.toml")
    try:
        with open(spec_path, "rb") as spec_file:
            spec = tomllib.load(spec_file)
    except FileNotFoundError:
        raise BuildError(f"no runtime {name!r}: {spec_path} does not exist") from None
    for key in ("name", "path", "run"):
        if not isinstance(spec.get(key), str) or not spec[key]:
            raise BuildError(f"{spec_path}: '{key}' must be a non-empty string")
    if spec["name"] != name:
        raise BuildError(f"{spec_path}: name {spec['name']!r} differs from its directory {name!r}")
    image = spec.get("image") or {}
    if not image.get("packages"):
        raise BuildError(f"{spec_path}: [image] packages is required")
    return directory, spec


def referenced_files(directory, spec):
    """The files the recipe names outside its own directory (a runtime may
    share another's bootstrap: "../python3/bootstrap.py")."""
    image = spec.get("image") or {}
    sources = list((image.get("files") or {}).values())
    if image.get("customize"):
        sources.append(image["customize"])
    outside = []
    for source in sources:
        full = os.path.normpath(os.path.join(directory, source))
        if os.path.relpath(full, directory).startswith(".."):
            outside.append((os.path.relpath(full, RUNTIMES_DIR), full))
    return outside


def cache_key(directory, spec):
    """Hash of every file of the runtime directory, the files its recipe
    names elsewhere, and this script."""
    digest = hashlib.sha256()
    files = [(os.path.relpath(os.path.join(root, f), directory), os.path.join(root, f))
             for root, _dirs, names in os.walk(directory) for f in names]
    files.extend(("<shared>/" + relative, full) for relative, full in referenced_files(directory, spec))
    files.append(("<build.py>", os.path.abspath(__file__)))
    for relative, full in sorted(files):
        with open(full, "rb") as content:
            data = content.read()
        digest.update(f"{relative}\0{len(data)}\0{os.stat(full).st_mode & 0o111:o}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:20]


def run(command, **kwargs):
    log("$ " + " ".join(command))
    result = subprocess.run(command, **kwargs)
    if result.returncode != 0:
        raise BuildError(f"{command[0]} failed with exit code {result.returncode}")


def make_rootfs(directory, spec, rootfs, env):
    image = spec["image"]
    suite = image.get("suite", "bookworm")
    sources = [
        f"deb {MIRRORS['debian']} {suite} main",
        f"deb {MIRRORS['debian']} {suite}-updates main",
        f"deb {MIRRORS['security']} {suite}-security main",
    ]
    # extract: unpack exactly the packages and their dependencies, no
    # maintainer scripts, no Essential set, no dpkg database.
    run(["mmdebstrap", "--quiet", "--mode=root", "--variant=extract",
         "--include=" + ",".join(image["packages"]), suite, rootfs, *sources], env=env)

    # Merged /usr: from trixie on, packages ship only /usr/bin, /usr/lib...
    # and the /lib64 -> usr/lib64 links (the dynamic loader's path) come
    # from base-files, which an extract does not unpack.
    for top in ("bin", "sbin", "lib", "lib64"):
        link = os.path.join(rootfs, top)
        if not os.path.lexists(link) and os.path.isdir(os.path.join(rootfs, "usr", top)):
            os.symlink(f"usr/{top}", link)

    for relative in TRIM:
        target = os.path.join(rootfs, relative)
        if os.path.isdir(target) and not os.path.islink(target):
            shutil.rmtree(target)
        elif os.path.lexists(target):
            os.unlink(target)
    # Device nodes: the container runtime provides /dev; a layer holds none.
    for entry in os.listdir(os.path.join(rootfs, "dev")):
        target = os.path.join(rootfs, "dev", entry)
        shutil.rmtree(target) if os.path.isdir(target) and not os.path.islink(target) else os.unlink(target)
    for relative in MOUNT_POINTS + [spec["path"].lstrip("/")]:
        os.makedirs(os.path.join(rootfs, relative), exist_ok=True)
    os.chmod(os.path.join(rootfs, "tmp"), 0o1777)
    # No package ran its scripts, so there are no accounts: root and nobody.
    with open(os.path.join(rootfs, "etc/passwd"), "w") as passwd:
        passwd.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n")
    with open(os.path.join(rootfs, "etc/group"), "w") as group:
        group.write("root:x:0:\nnogroup:x:65534:\n")

    for destination, source in sorted((image.get("files") or {}).items()):
        target = os.path.join(rootfs, destination.lstrip("/"))
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(directory, source), target)
        os.chmod(target, 0o755 if os.access(os.path.join(directory, source), os.X_OK) else 0o644)

    if image.get("customize"):
        run([os.path.join(directory, image["customize"]), rootfs], env=env)

    # The image runs as nobody: everything must be readable (and directories
    # and executables traversable/executable) by others.
    for root, dirs, files in os.walk(rootfs):
        for name in dirs + files:
            path = os.path.join(root, name)
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                continue
            mode = stat.S_IMODE(info.st_mode)
            wanted = mode | stat.S_IROTH
            if stat.S_ISDIR(info.st_mode) or mode & stat.S_IXUSR:
                wanted |= stat.S_IXOTH
            if wanted != mode:
                os.chmod(path, wanted)


def write_layer(rootfs, layer_tar):
    """Writes the rootfs as a sorted, clamped, numeric-owner tar."""
    with tarfile.open(layer_tar, "w", format=tarfile.PAX_FORMAT) as tar:
        paths = []
        for root, dirs, files in os.walk(rootfs):
            dirs.sort()
            for name in dirs + files:
                paths.append(os.path.join(root, name))
        for path in sorted(paths, key=lambda p: os.path.relpath(p, rootfs).split(os.sep)):
            info = tar.gettarinfo(path, arcname=os.path.relpath(path, rootfs))
            if info is None:  # sockets
                continue
            info.mtime = min(int(info.mtime), SOURCE_DATE_EPOCH)
            info.uname = info.gname = ""
            info.pax_headers = {}
            if info.isreg():
                with open(path, "rb") as content:
                    tar.addfile(info, content)
            else:
                tar.addfile(info)


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as content:
        for chunk in iter(lambda: content.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def canonical_json(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def add_bytes(tar, name, data, mode=0o644):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = SOURCE_DATE_EPOCH
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def pack_image(name, spec, key, rootfs, work, archive):
    layer_tar = os.path.join(work, "layer.tar")
    layer_gz = os.path.join(work, "layer.tar.gz")
    write_layer(rootfs, layer_tar)
    diff_id = "sha256:" + sha256_file(layer_tar)
    with open(layer_tar, "rb") as source, open(layer_gz, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=6, mtime=0) as compressed:
            shutil.copyfileobj(source, compressed, 1 << 20)
    os.unlink(layer_tar)
    layer_digest = "sha256:" + sha256_file(layer_gz)
    layer_size = os.path.getsize(layer_gz)

    image = spec["image"]
    created = datetime.datetime.fromtimestamp(SOURCE_DATE_EPOCH, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    config = canonical_json({
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": RUN_AS,
            "Env": ["PATH=" + DEFAULT_PATH, "LANG=C.UTF-8", "HOME=/tmp", *image.get("env", [])],
            "WorkingDir": spec["path"],
            "Labels": {
                "dev.faas.runtime.name": name,
                "dev.faas.runtime.path": spec["path"],
                "dev.faas.runtime.key": key,
            },
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{
            "created": created,
            "created_by": f"runtimes/build.sh: mmdebstrap --variant=extract {image.get('suite', 'bookworm')} "
                          + ",".join(image["packages"]),
        }],
    })
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = canonical_json({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": MEDIA_LAYER, "digest": layer_digest, "size": layer_size}],
        "annotations": {"org.opencontainers.image.created": created},
    })
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    index = canonical_json({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": manifest_digest,
            "size": len(manifest),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"org.opencontainers.image.ref.name": f"faas/runtimes/{name}:{key}"},
        }],
    })

    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        blobs = sorted([
            (config_digest, config), (manifest_digest, manifest),
        ])
        add_bytes(tar, "oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"}))
        add_bytes(tar, "index.json", index)
        entries = [(d, data) for d, data in blobs] + [(layer_digest, None)]
        for digest, data in sorted(entries, key=lambda e: e[0]):
            blob_name = "blobs/sha256/" + digest.split(":", 1)[1]
            if data is not None:
                add_bytes(tar, blob_name, data)
            else:
                info = tarfile.TarInfo(blob_name)
                info.size = layer_size
                info.mtime = SOURCE_DATE_EPOCH
                info.mode = 0o644
                with open(layer_gz, "rb") as content:
                    tar.addfile(info, content)
    return manifest_digest, layer_size


def build(name, cache_dir):
    directory, spec = load_runtime(name)
    key = cache_key(directory, spec)
    archive = os.path.join(cache_dir, f"{name}-{key}.tar")
    if os.path.exists(archive):
        return archive
    if os.geteuid() != 0:
        raise BuildError("building a runtime image needs root (mmdebstrap --mode=root, chroot)")
    started = time.monotonic()
    work = tempfile.mkdtemp(prefix=f".build-{name}-", dir=cache_dir)
    try:
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(SOURCE_DATE_EPOCH), LC_ALL="C.UTF-8")
        rootfs = os.path.join(work, "rootfs")
        make_rootfs(directory, spec, rootfs, env)
        partial = os.path.join(work, "image.tar")
        manifest_digest, layer_size = pack_image(name, spec, key, rootfs, work, partial)
        os.rename(partial, archive)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"{name}: built in {time.monotonic() - started:.1f}s, layer {layer_size / 1e6:.1f} MB gzip, "
        f"manifest {manifest_digest}")
    return archive


def main(argv):
    names = argv or sorted(entry for entry in os.listdir(RUNTIMES_DIR)
                           if os.path.isfile(os.path.join(RUNTIMES_DIR, entry, "runtime.toml")))
    cache_dir = os.path.join(os.environ.get("FAAS_CACHE_DIR", "/var/cache/faas"), "runtimes")
    os.makedirs(cache_dir, exist_ok=True)
    for name in names:
        try:
            archive = build(name, cache_dir)
        except BuildError as error:
            log(f"{name}: {error}")
            return 1
        print(f"{name} {archive}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
