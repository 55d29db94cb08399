'use strict';
// faas node runtime build step (runtime.toml `build`, runtimes/README.md).
//
// Run once per deploy in a build container of this image, with the
// function's directory (a writable copy of the upload) as the working
// directory. If package.json declares dependencies and $FAAS_DEPS_CACHED is
// not 1, installs exactly what package-lock.json (or npm-shrinkwrap.json)
// pins, as `npm ci --omit=dev --ignore-scripts` would, into
// /faas/deps/node_modules, which the platform merges into the function's
// directory. The images carry no npm (Debian's pulls in 400 packages and a
// compiler): this is a lockfile installer, standard library only.
//
// - Every tarball comes from the configured registry ($NPM_CONFIG_REGISTRY):
//   a lockfile URL on registry.npmjs.org is fetched from there instead (as
//   npm's replace-registry-host does); any other source (git, a file, a link,
//   another host) fails the build, naming the package.
// - Every tarball is checked against the lockfile's integrity (sha512 or
//   sha1) before a byte of it is unpacked.
// - Unpacked without following anything: regular files and directories
//   only, no absolute path, no `..`, inside the package's own directory.
// - Install scripts are not run (prebuilt packages only: the image has no
//   compiler); the packages that have one are named in the log.
//
// Output is the deploy's build log; a non-zero exit fails the deploy.

const crypto = require('crypto');
const fs = require('fs');
const http = require('http');
const https = require('https');
const path = require('path');
const zlib = require('zlib');

// FAAS_TEST_DEPS_DIR: runtimes/test.py runs this outside a container.
const DEPS_DIR = process.env.FAAS_TEST_DEPS_DIR || '/faas/deps';
const NPM_PUBLIC = 'https://registry.npmjs.org/';
// Downloads at once.
const PARALLEL = 8;
// Bounds on what the registry sends (the build's own memory and output
// limits bound the total).
const MAX_TARBALL_BYTES = 256 << 20;
const MAX_REDIRECTS = 5;
const TIMEOUT_MS = 120000;

function log(message) {
  process.stdout.write(`faas build: ${message}\n`);
}

class BuildError extends Error {}

function fail(message) {
  throw new BuildError(message);
}

function readJson(file) {
  let text;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    fail(`reading ${path.basename(file)}: ${e.message}`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    fail(`${path.basename(file)} is not JSON: ${e.message}`);
  }
}

function declaresDependencies(manifest) {
  return ['dependencies', 'optionalDependencies'].some(
    (field) => manifest[field] && Object.keys(manifest[field]).length > 0,
  );
}

// The registry, with one trailing slash.
function registry() {
  const url = process.env.NPM_CONFIG_REGISTRY || NPM_PUBLIC;
  return url.endsWith('/') ? url : `${url}/`;
}

// The package name of a lockfile key: "node_modules/a/node_modules/@s/b" is
// "@s/b".
function nameOf(key) {
  const at = key.lastIndexOf('node_modules/');
  return key.slice(at + 'node_modules/'.length);
}

// Whether the entry is for another platform (an optional native build:
// esbuild's, sharp's), which npm leaves out too.
function otherPlatform(entry) {
  const excludes = (list, value) => {
    if (!Array.isArray(list) || list.length === 0) return false;
    const allowed = list.filter((v) => !String(v).startsWith('!'));
    const denied = list.filter((v) => String(v).startsWith('!')).map((v) => String(v).slice(1));
    if (denied.includes(value)) return true;
    return allowed.length > 0 && !allowed.includes(value);
  };
  return excludes(entry.os, process.platform) || excludes(entry.cpu, process.arch);
}

// Where a package's tarball is fetched from, or a failure naming why not.
function tarballUrl(key, entry) {
  const name = nameOf(key);
  const base = registry();
  const resolved = entry.resolved;
  if (!resolved) {
    // Older lockfiles leave a registry package's URL out: npm's layout.
    const file = name.includes('/') ? name.split('/')[1] : name;
    return `${base}${name}/-/${file}-${entry.version}.tgz`;
  }
  if (resolved.startsWith(base)) return resolved;
  if (resolved.startsWith(NPM_PUBLIC)) return base + resolved.slice(NPM_PUBLIC.length);
  fail(
    `${name}@${entry.version} is resolved from ${resolved}: only the configured registry ` +
      `(${base}) is reachable from a build; vendor it in node_modules instead`,
  );
}

function checkIntegrity(name, integrity, bytes) {
  if (!integrity) {
    log(`warning: ${name} has no integrity in the lockfile; not checked`);
    return;
  }
  const candidates = integrity.split(/\s+/).filter(Boolean);
  for (const candidate of candidates) {
    const dash = candidate.indexOf('-');
    const algorithm = candidate.slice(0, dash);
    if (!['sha512', 'sha384', 'sha256', 'sha1'].includes(algorithm)) continue;
    const expected = candidate.slice(dash + 1).split('?')[0];
    const got = crypto.createHash(algorithm).update(bytes).digest('base64');
    if (got === expected) return;
    fail(`${name}: the tarball's ${algorithm} is ${got}, the lockfile says ${expected}`);
  }
  fail(`${name}: no integrity this build can check (${integrity})`);
}

function download(url, redirects = 0) {
  return new Promise((resolve, reject) => {
    const client = url.startsWith('https:') ? https : url.startsWith('http:') ? http : null;
    if (!client) {
      reject(new BuildError(`not an http(s) URL: ${url}`));
      return;
    }
    const request = client.get(url, { timeout: TIMEOUT_MS }, (response) => {
      const status = response.statusCode;
      if (status >= 300 && status < 400 && response.headers.location) {
        response.resume();
        if (redirects >= MAX_REDIRECTS) {
          reject(new BuildError(`${url}: too many redirects`));
          return;
        }
        const next = new URL(response.headers.location, url).toString();
        download(next, redirects + 1).then(resolve, reject);
        return;
      }
      if (status !== 200) {
        response.resume();
        reject(new BuildError(`${url}: HTTP ${status}`));
        return;
      }
      const chunks = [];
      let size = 0;
      response.on('data', (chunk) => {
        size += chunk.length;
        if (size > MAX_TARBALL_BYTES) {
          request.destroy(new BuildError(`${url}: over ${MAX_TARBALL_BYTES} bytes`));
          return;
        }
        chunks.push(chunk);
      });
      response.on('end', () => resolve(Buffer.concat(chunks)));
      response.on('error', reject);
    });
    request.on('timeout', () => request.destroy(new BuildError(`${url}: timed out`)));
    request.on('error', (e) => reject(e instanceof BuildError ? e : new BuildError(`${url}: ${e.message}`)));
  });
}

// A tar header field: NUL-terminated text.
function field(header, offset, length) {
  const bytes = header.subarray(offset, offset + length);
  const end = bytes.indexOf(0);
  return bytes.subarray(0, end === -1 ? length : end).toString('utf8');
}

function octal(header, offset, length) {
  const text = field(header, offset, length).trim();
  const value = text === '' ? 0 : parseInt(text, 8);
  if (!Number.isSafeInteger(value) || value < 0) fail(`a tar header has a bad number: ${text}`);
  return value;
}

// The path inside the package of a tarball entry ("package/lib/x.js" is
// "lib/x.js"; npm strips the first component, whatever its name), or null
// for one that may not be written; '' for the top directory itself.
function entryPath(name) {
  const parts = name.split('/').filter((p) => p !== '' && p !== '.');
  if (name.startsWith('/') || parts.some((p) => p === '..' || p.includes('\0'))) return null;
  parts.shift();
  return parts.join('/');
}

// Unpacks a .tgz into `dir`: directories and regular files only.
function unpack(name, tgz, dir) {
  let tar;
  try {
    tar = zlib.gunzipSync(tgz, { maxOutputLength: MAX_TARBALL_BYTES * 4 });
  } catch (e) {
    fail(`${name}: the tarball does not decompress: ${e.message}`);
  }
  fs.mkdirSync(dir, { recursive: true });
  let offset = 0;
  let longName = null;
  let paxPath = null;
  let files = 0;
  let skipped = 0;
  while (offset + 512 <= tar.length) {
    const header = tar.subarray(offset, offset + 512);
    if (header.every((b) => b === 0)) break;
    const size = octal(header, 124, 12);
    const type = String.fromCharCode(header[156] || 48);
    const body = tar.subarray(offset + 512, offset + 512 + size);
    if (body.length !== size) fail(`${name}: the tarball is truncated`);
    offset += 512 + Math.ceil(size / 512) * 512;
    if (type === 'L') {
      longName = field(body, 0, body.length);
      continue;
    }
    if (type === 'x') {
      const match = /(?:^|\n)\d+ path=([^\n]*)\n/.exec(body.toString('utf8'));
      paxPath = match ? match[1] : null;
      continue;
    }
    if (type === 'g') continue;
    const prefix = field(header, 345, 155);
    const plain = prefix ? `${prefix}/${field(header, 0, 100)}` : field(header, 0, 100);
    const full = paxPath || longName || plain;
    paxPath = null;
    longName = null;
    const relative = entryPath(full);
    if (relative === '') continue;
    if (relative === null) {
      skipped += 1;
      continue;
    }
    const target = path.join(dir, relative);
    if (type === '5') {
      fs.mkdirSync(target, { recursive: true });
    } else if (type === '0' || type === '7') {
      fs.mkdirSync(path.dirname(target), { recursive: true });
      // A later entry of the same name replaces the earlier one (as tar
      // does); never through a link: none is ever made here.
      const mode = octal(header, 100, 8) & 0o111 ? 0o755 : 0o644;
      fs.writeFileSync(target, body, { mode, flag: 'w' });
      files += 1;
    } else {
      // Links, devices, FIFOs: npm packages have no use for them.
      skipped += 1;
    }
  }
  return { files, skipped };
}

function lockfile(root) {
  for (const name of ['npm-shrinkwrap.json', 'package-lock.json']) {
    const file = path.join(root, name);
    if (fs.existsSync(file)) return { name, lock: readJson(file) };
  }
  return null;
}

// The packages to install: [key, entry] for each lockfile entry under
// node_modules that a production install on this platform has.
function packagesOf(lockName, lock) {
  if (!lock.packages || typeof lock.packages !== 'object') {
    fail(
      `${lockName} has lockfileVersion ${lock.lockfileVersion}, without "packages": ` +
        'make it with npm 7 or later (npm install --package-lock-only)',
    );
  }
  const wanted = [];
  let dev = 0;
  let foreign = 0;
  for (const [key, entry] of Object.entries(lock.packages)) {
    if (key === '' || !key.startsWith('node_modules/')) continue;
    if (entry.dev || entry.devOptional) {
      dev += 1;
      continue;
    }
    if (entry.inBundle) continue;
    if (entry.optional && otherPlatform(entry)) {
      foreign += 1;
      continue;
    }
    if (entry.link) {
      fail(`${nameOf(key)} is a link (a workspace or file: dependency): vendor it in node_modules instead`);
    }
    if (!entry.version) fail(`${nameOf(key)} has no version in ${lockName}`);
    const parts = key.split('/');
    if (parts.includes('..') || parts.includes('.') || parts.includes('')) {
      fail(`${lockName} has a package path that leaves node_modules: ${key}`);
    }
    wanted.push([key, entry]);
  }
  return { wanted, dev, foreign };
}

async function install(root, lockName, lock) {
  const started = Date.now();
  const { wanted, dev, foreign } = packagesOf(lockName, lock);
  log(
    `installing ${wanted.length} packages from ${lockName} (${dev} dev, ${foreign} for other platforms left out) ` +
      `from ${registry()}`,
  );
  const sources = wanted.map(([key, entry]) => [key, entry, tarballUrl(key, entry)]);
  let next = 0;
  let bytes = 0;
  const scripts = [];
  async function worker() {
    while (next < sources.length) {
      const [key, entry, url] = sources[next];
      next += 1;
      const name = `${nameOf(key)}@${entry.version}`;
      const tgz = await download(url);
      checkIntegrity(name, entry.integrity, tgz);
      bytes += tgz.length;
      const { skipped } = unpack(name, tgz, path.join(DEPS_DIR, key));
      if (skipped > 0) log(`${name}: ${skipped} entries that are not files or directories left out`);
      if (entry.hasInstallScript) scripts.push(name);
    }
  }
  await Promise.all(Array.from({ length: Math.min(PARALLEL, sources.length) }, worker));
  if (scripts.length > 0) {
    log(`install scripts not run (no compiler here; prebuilt packages only): ${scripts.sort().join(', ')}`);
  }
  log(`installed ${wanted.length} packages (${bytes} bytes) in ${Date.now() - started} ms`);
}

async function main() {
  const root = process.env.LAMBDA_TASK_ROOT || process.cwd();
  const manifestFile = path.join(root, 'package.json');
  if (!fs.existsSync(manifestFile)) {
    log('no package.json, nothing to install');
    return;
  }
  const manifest = readJson(manifestFile);
  if (!declaresDependencies(manifest)) {
    log('package.json declares no dependencies, nothing to install');
    return;
  }
  if (process.env.FAAS_DEPS_CACHED === '1') {
    log('dependencies cached, not installing');
    return;
  }
  const found = lockfile(root);
  if (!found) {
    fail(
      'package.json declares dependencies but there is no package-lock.json: faas installs exactly ' +
        'what a lockfile pins (as npm ci does); make one with `npm install --package-lock-only` and deploy it',
    );
  }
  if (fs.existsSync(path.join(root, 'node_modules'))) {
    // The package's own files would win over the installed ones file by
    // file: a mix of two trees. What was vendored is what runs.
    log('node_modules is in the package: not installing (leave it out to install from the lockfile)');
    return;
  }
  await install(root, found.name, found.lock);
}

main().then(
  () => process.exit(0),
  (e) => {
    process.stderr.write(`faas build: error: ${e instanceof BuildError ? e.message : e.stack || e}\n`);
    process.exit(1);
  },
);
