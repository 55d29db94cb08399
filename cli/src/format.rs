//! Rendering API objects: JSON (by hand, since prost types carry no serde)
//! and human tables.
//!
//! JSON conventions: field names as in the proto (snake_case); enums as
//! lower-case strings without their prefix (`CALL_STATUS_SUCCEEDED` →
//! `"succeeded"`); a call's params/result JSON text embedded as parsed JSON
//! under `params`/`result`.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use comfy_table::{presets, CellAlignment, ContentArrangement, Table};
use faas_proto::v1::{
    Call, CallStats, Function, FunctionAlias, GetCallStatsResponse, Layer, ListNodesResponse,
    Namespace, Node, PhaseStats, Runtime, Secret, Spot, SpotState, StartKind, Timings,
};
use serde_json::{json, Value};

pub use faas_client::status_name as call_status_name;

pub fn start_kind_name(value: i32) -> String {
    match StartKind::try_from(value) {
        Ok(kind) => kind.short_name(),
        Err(_) => format!("unknown({value})"),
    }
}

pub fn spot_state_name(value: i32) -> String {
    match SpotState::try_from(value) {
        Ok(state) => state.short_name(),
        Err(_) => format!("unknown({value})"),
    }
}

/// Embeds JSON text as a value; text that is not JSON (which the server
/// should never store) is kept as a string rather than lost.
fn embedded_json(text: &str) -> Value {
    if text.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
}

pub fn runtime_json(runtime: &Runtime) -> Value {
    json!({
        "name": runtime.name,
        "image": runtime.image,
        "path": runtime.path,
        "dependencies": runtime.dependencies,
        "default_handler": runtime.default_handler,
        "run": runtime.run,
        "build": runtime.build,
        "build_only_with_dependencies": runtime.build_only_with_dependencies,
        "image_digest": runtime.image_digest,
        "created_at_ms": runtime.created_at_ms,
    })
}

pub fn function_json(function: &Function) -> Value {
    // Sorted keys: stable output whatever the map's hashing.
    let env: BTreeMap<_, _> = function.env.iter().collect();
    json!({
        "name": function.name,
        "namespace": function.namespace_name(),
        "runtime": function.runtime,
        "handler": function.handler,
        "memory_bytes": function.memory_bytes,
        "tmp_bytes": tmp_bytes_of(function),
        "layers": function
            .layers
            .iter()
            .map(|l| json!({"name": l.name, "version": l.version, "digest": l.digest, "directories": l.directories}))
            .collect::<Vec<_>>(),
        "timeout_ms": function.timeout_ms,
        "idempotent": function.idempotent,
        "env": env,
        "secrets": function
            .secrets
            .iter()
            .map(|s| json!({"name": s.name, "env": s.env, "version": s.version}))
            .collect::<Vec<_>>(),
        "network": match &function.network {
            Some(n) if n.mode() == faas_proto::v1::network_policy::Mode::Egress => {
                json!({"mode": "egress", "allow": n.allow})
            }
            _ => json!({"mode": "none", "allow": []}),
        },
        "http": http_text(function),
        "package_digest": function.package_digest,
        "package_size": function.package_size,
        "build": function.build.as_ref().map(|b| json!({
            "has_dependencies": b.has_dependencies,
            "dependencies_cached": b.dependencies_cached,
            "dependencies_digest": b.dependencies_digest,
            "build_ms": b.build_ms,
            "node": b.node,
            "skipped": b.skipped,
        })),
        "version": function.version,
        "created_at_ms": function.created_at_ms,
        "updated_at_ms": function.updated_at_ms,
    })
}

pub fn timings_json(timings: &Timings) -> Value {
    json!({
        "queue_ms": timings.queue_ms,
        "runtime_load_ms": timings.runtime_load_ms,
        "function_load_ms": timings.function_load_ms,
        "dependencies_ms": timings.dependencies_ms,
        "execution_ms": timings.execution_ms,
        "result_return_ms": timings.result_return_ms,
        "total_ms": timings.total_ms,
        "start_kind": start_kind_name(timings.start_kind),
    })
}

pub fn call_json(call: &Call) -> Value {
    let error = call
        .error
        .as_ref()
        .map(|e| json!({ "reason": e.reason, "message": e.message, "log_tail": e.log_tail }));
    json!({
        "id": call.id,
        "function": call.function,
        "namespace": call.namespace_name(),
        "function_version": call.function_version,
        "alias": call.alias,
        "status": call_status_name(call.status),
        "params": embedded_json(&call.params_json),
        "result": embedded_json(&call.result_json),
        "result_base64": call.result_base64,
        "error": error,
        "timings": call.timings.as_ref().map(timings_json),
        "node": call.node,
        "spot": call.spot,
        "created_at_ms": call.created_at_ms,
        "finished_at_ms": call.finished_at_ms,
        "logs_truncated": call.logs_truncated,
        "policy": call.policy,
        "attempts": call.attempts,
        "traceparent": call.traceparent,
        "client_context": embedded_json(&call.client_context),
    })
}

fn phase_json(p: Option<&PhaseStats>) -> Value {
    let p = p.copied().unwrap_or_default();
    json!({ "mean_ms": p.mean_ms, "p50_ms": p.p50_ms, "p99_ms": p.p99_ms, "max_ms": p.max_ms })
}

fn call_stats_json(s: &CallStats) -> Value {
    json!({
        "function": s.function,
        "policy": s.policy,
        "calls": s.calls,
        "succeeded": s.succeeded,
        "failed": s.failed,
        "timed_out": s.timed_out,
        "start_kinds": {
            "cold": s.cold,
            "prewarm_runtime": s.prewarm_runtime,
            "prewarm_function": s.prewarm_function,
        },
        "phases": {
            "queue": phase_json(s.queue.as_ref()),
            "runtime_load": phase_json(s.runtime_load.as_ref()),
            "function_load": phase_json(s.function_load.as_ref()),
            "dependencies": phase_json(s.dependencies.as_ref()),
            "execution": phase_json(s.execution.as_ref()),
            "result_return": phase_json(s.result_return.as_ref()),
            "total": phase_json(s.total.as_ref()),
        },
    })
}

pub fn stats_json(response: &GetCallStatsResponse) -> Value {
    json!({
        "policy": response.policy,
        "overall": response.overall.as_ref().map(call_stats_json),
        "groups": response.groups.iter().map(call_stats_json).collect::<Vec<_>>(),
    })
}

pub fn stats_table(response: &GetCallStatsResponse) -> String {
    let mut table = new_table(&[
        "FUNCTION",
        "POLICY",
        "CALLS",
        "OK",
        "COLD",
        "PRE-RT",
        "PRE-FN",
        "QUEUE P50",
        "TOTAL MEAN",
        "TOTAL P50",
        "TOTAL P99",
    ]);
    let rows = response.groups.iter().chain(response.overall.iter());
    for s in rows {
        let total = s.total.unwrap_or_default();
        let queue = s.queue.unwrap_or_default();
        add_row(
            &mut table,
            vec![
                if s.function.is_empty() {
                    "(all)".to_string()
                } else {
                    s.function.clone()
                },
                if s.policy.is_empty() {
                    "-".to_string()
                } else {
                    s.policy.clone()
                },
                s.calls.to_string(),
                s.succeeded.to_string(),
                s.cold.to_string(),
                s.prewarm_runtime.to_string(),
                s.prewarm_function.to_string(),
                float_ms(queue.p50_ms),
                float_ms(total.mean_ms),
                float_ms(total.p50_ms),
                float_ms(total.p99_ms),
            ],
        );
    }
    right_align(&mut table, &[2, 3, 4, 5, 6, 7, 8, 9, 10]);
    format!("{}\npolicy now: {}", render(table), response.policy)
}

pub fn spot_json(spot: &Spot) -> Value {
    json!({
        "index": spot.index,
        "state": spot_state_name(spot.state),
        "runtime": spot.runtime,
        "function": spot.function,
        "call_id": spot.call_id,
    })
}

pub fn node_json(node: &Node) -> Value {
    json!({
        "name": node.name,
        "connected": node.connected,
        "connected_at_ms": node.connected_at_ms,
        "draining": node.draining,
        "version": node.version,
        "spots": node.spots.iter().map(spot_json).collect::<Vec<_>>(),
    })
}

pub fn node_drained(node: &Node) -> String {
    if node.draining {
        format!(
            "node {:?} draining: it finishes what it runs and takes no new work",
            node.name
        )
    } else {
        format!("node {:?} back in the pool", node.name)
    }
}

pub fn nodes_json(response: &ListNodesResponse) -> Value {
    json!({
        "nodes": response.nodes.iter().map(node_json).collect::<Vec<_>>(),
        "policy": response.policy,
        "leader": response.leader,
        "version": response.replica_version,
    })
}

// ------------------------------------------------------------------ tables

fn new_table(header: &[&str]) -> Table {
    let mut table = Table::new();
    // Borderless columns like kubectl/faas-cli: easy to read and to grep/awk.
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().copied());
    table
}

fn right_align(table: &mut Table, columns: &[usize]) {
    for &index in columns {
        if let Some(column) = table.column_mut(index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
}

/// Adds a row, escaping control characters in each cell before the
/// table measures it (names, handlers, results are not faasctl's text;
/// escaping after rendering would misalign the columns).
fn add_row(table: &mut Table, cells: Vec<String>) {
    table.add_row(
        cells
            .into_iter()
            .map(|cell| crate::output::escape_controls(&cell).into_owned()),
    );
}

/// Tables put a space of padding on both sides; trim it so the first
/// column starts at the margin and lines carry no trailing blanks.
fn render(table: Table) -> String {
    table
        .lines()
        .map(|line| {
            let line = line.trim_end();
            line.strip_prefix(' ').unwrap_or(line).to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Epoch ms as an RFC 3339 UTC time to the second; "-" when unset.
pub fn time_text(epoch_ms: i64) -> String {
    if epoch_ms <= 0 {
        return "-".into();
    }
    let time = UNIX_EPOCH + Duration::from_millis(epoch_ms as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// Bytes in the largest binary unit that divides them exactly (128Mi),
/// A function's /tmp: records from before the setting have 0, the
/// platform's 64 MiB.
fn tmp_bytes_of(f: &Function) -> u64 {
    match f.tmp_bytes {
        0 => 64 << 20,
        bytes => bytes,
    }
}

/// else with one decimal (1.5Mi): memory limits round-trip with --memory.
pub fn bytes_text(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    if bytes == 0 {
        return "0".into();
    }
    for (suffix, size) in UNITS {
        if bytes >= size {
            if bytes % size == 0 {
                return format!("{}{suffix}", bytes / size);
            }
            return format!("{:.1}{suffix}", bytes as f64 / size as f64);
        }
    }
    format!("{bytes}B")
}

/// Milliseconds as a humantime duration ("2s", "1m 30s", "250ms").
pub fn ms_text(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

fn float_ms(ms: f64) -> String {
    format!("{ms:.1}")
}

fn or_dash(text: &str) -> &str {
    if text.is_empty() {
        "-"
    } else {
        text
    }
}

/// A digest shortened the way registries show them (sha256:0123456789ab).
fn short_digest(digest: &str) -> String {
    match digest.split_once(':') {
        Some((algo, hex)) if hex.len() > 12 => format!("{algo}:{}", &hex[..12]),
        _ => or_dash(digest).to_string(),
    }
}

pub fn runtimes_table(runtimes: &[Runtime]) -> String {
    let mut table = new_table(&["NAME", "PATH", "RUN", "DEPENDENCIES", "DIGEST", "CREATED"]);
    for rt in runtimes {
        add_row(
            &mut table,
            vec![
                rt.name.clone(),
                rt.path.clone(),
                rt.run.clone(),
                or_dash(&rt.dependencies).to_string(),
                short_digest(&rt.image_digest),
                time_text(rt.created_at_ms),
            ],
        );
    }
    render(table)
}

/// A vertical key/value table for one object.
fn details(rows: Vec<(&str, String)>) -> String {
    let mut table = Table::new();
    table
        .load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled);
    for (key, value) in rows {
        add_row(&mut table, vec![format!("{key}:"), value]);
    }
    render(table)
}

pub fn runtime_details(rt: &Runtime) -> String {
    details(vec![
        ("name", rt.name.clone()),
        ("image", rt.image.clone()),
        ("image digest", or_dash(&rt.image_digest).to_string()),
        ("path", rt.path.clone()),
        ("dependencies", or_dash(&rt.dependencies).to_string()),
        ("run", rt.run.clone()),
        ("created", time_text(rt.created_at_ms)),
    ])
}

/// The one line a deploy prints: what now runs, like `kubectl apply`.
pub fn function_deployed(f: &Function) -> String {
    let built = match &f.build {
        Some(b) if !b.skipped.is_empty() => format!("; not built, no bytecode ({})", b.skipped),
        Some(b) => format!(
            "; built in {:.1} s on {}{}",
            b.build_ms / 1000.0,
            b.node,
            match (b.has_dependencies, b.dependencies_cached) {
                (false, _) => "",
                (true, false) => ", dependencies installed",
                (true, true) => ", dependencies from the cache",
            }
        ),
        None => String::new(),
    };
    format!(
        "function \"{}\" deployed: version {}, runtime {}, package {} ({}){built}",
        f.name,
        f.version,
        f.runtime,
        short_digest(&f.package_digest),
        bytes_text(f.package_size)
    )
}

/// After `fn update`: a new version with the same package (nothing was
/// built).
pub fn function_updated(f: &Function) -> String {
    format!(
        "function \"{}\" updated: version {}, memory {}, timeout {}, same package {}",
        f.name,
        f.version,
        bytes_text(f.memory_bytes),
        ms_text(f.timeout_ms),
        short_digest(&f.package_digest),
    )
}

pub fn runtime_registered(rt: &Runtime) -> String {
    format!("runtime \"{}\" registered: {}", rt.name, rt.image)
}

/// With `namespaces`, a first column names each function's namespace
/// (a listing of every namespace).
pub fn functions_table(functions: &[Function], namespaces: bool) -> String {
    let mut header = vec![
        "NAME", "RUNTIME", "HANDLER", "MEMORY", "TIMEOUT", "VERSION", "SIZE", "UPDATED",
    ];
    if namespaces {
        header.insert(0, "NAMESPACE");
    }
    let mut table = new_table(&header);
    for f in functions {
        let mut row = vec![
            f.name.clone(),
            f.runtime.clone(),
            f.handler.clone(),
            bytes_text(f.memory_bytes),
            ms_text(f.timeout_ms),
            f.version.to_string(),
            bytes_text(f.package_size),
            time_text(f.updated_at_ms),
        ];
        if namespaces {
            row.insert(0, f.namespace_name().to_string());
        }
        add_row(&mut table, row);
    }
    let shift = usize::from(namespaces);
    right_align(&mut table, &[3 + shift, 4 + shift, 5 + shift, 6 + shift]);
    render(table)
}

/// A function's kept versions, with the aliases that point to each.
pub fn versions_table(versions: &[Function], aliases: &[FunctionAlias]) -> String {
    let mut table = new_table(&[
        "VERSION", "PACKAGE", "MEMORY", "TIMEOUT", "UPDATED", "ALIASES",
    ]);
    let current = versions.iter().map(|f| f.version).max().unwrap_or(0);
    for f in versions {
        let mut names: Vec<String> = aliases
            .iter()
            .filter_map(|a| {
                if a.version == f.version {
                    Some(a.name.clone())
                } else if a.additional_version == f.version {
                    Some(format!("{} ({:.0}%)", a.name, a.additional_weight * 100.0))
                } else {
                    None
                }
            })
            .collect();
        if f.version == current {
            names.insert(0, "latest".into());
        }
        let digest = f.package_digest.trim_start_matches("sha256:");
        add_row(
            &mut table,
            vec![
                f.version.to_string(),
                digest.chars().take(12).collect(),
                bytes_text(f.memory_bytes),
                ms_text(f.timeout_ms),
                time_text(f.updated_at_ms),
                names.join(", "),
            ],
        );
    }
    right_align(&mut table, &[0, 2, 3]);
    render(table)
}

/// Where an alias sends calls, in words.
pub fn alias_routing(a: &FunctionAlias) -> String {
    if a.additional_version == 0 {
        format!("version {}", a.version)
    } else {
        format!(
            "version {} ({:.0}% of calls), version {} ({:.0}%)",
            a.version,
            (1.0 - a.additional_weight) * 100.0,
            a.additional_version,
            a.additional_weight * 100.0
        )
    }
}

pub fn alias_json(a: &FunctionAlias) -> Value {
    json!({
        "name": a.name,
        "function": a.function,
        "namespace": faas_proto::namespaces::or_default(&a.namespace),
        "version": a.version,
        "additional_version": a.additional_version,
        "additional_weight": a.additional_weight,
        "created_at_ms": a.created_at_ms,
        "updated_at_ms": a.updated_at_ms,
    })
}

pub fn aliases_table(aliases: &[FunctionAlias]) -> String {
    let mut table = new_table(&["ALIAS", "ROUTES TO", "UPDATED"]);
    for a in aliases {
        add_row(
            &mut table,
            vec![a.name.clone(), alias_routing(a), time_text(a.updated_at_ms)],
        );
    }
    render(table)
}

/// A function's secrets as `name` or `name:VAR` (names only, never values).
fn secrets_text(f: &Function) -> String {
    if f.secrets.is_empty() {
        return "-".into();
    }
    f.secrets
        .iter()
        .map(|s| {
            if s.env.is_empty() {
                s.name.clone()
            } else {
                format!("{}:{}", s.name, s.env)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn layers_text(f: &Function) -> String {
    if f.layers.is_empty() {
        return "-".into();
    }
    f.layers
        .iter()
        .map(|l| format!("{}:{}", l.name, l.version))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn layer_json(l: &Layer) -> Value {
    json!({
        "name": l.name,
        "namespace": l.namespace,
        "version": l.version,
        "description": l.description,
        "digest": l.digest,
        "size": l.size,
        "directories": l.directories,
        "created_at_ms": l.created_at_ms,
    })
}

fn layer_dirs_text(l: &Layer) -> String {
    l.directories
        .iter()
        .map(|d| format!("/opt/{d}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn layer_published(l: &Layer) -> String {
    format!(
        "layer {}:{} published ({}, mounted at {})",
        l.name,
        l.version,
        bytes_text(l.size),
        layer_dirs_text(l)
    )
}

pub fn layers_table(list: &[Layer]) -> String {
    let mut table = new_table(&[
        "NAME",
        "VERSION",
        "SIZE",
        "MOUNTS",
        "DESCRIPTION",
        "CREATED",
    ]);
    for l in list {
        add_row(
            &mut table,
            vec![
                l.name.clone(),
                l.version.to_string(),
                bytes_text(l.size),
                layer_dirs_text(l),
                or_dash(&l.description).to_string(),
                time_text(l.created_at_ms),
            ],
        );
    }
    render(table)
}

pub fn secret_json(s: &Secret) -> Value {
    json!({
        "name": s.name,
        "namespace": s.namespace,
        "size": s.size,
        "version": s.version,
        "created_at_ms": s.created_at_ms,
        "updated_at_ms": s.updated_at_ms,
    })
}

pub fn secret_details(s: &Secret) -> String {
    details(vec![
        ("name", s.name.clone()),
        ("namespace", s.namespace.clone()),
        ("size", bytes_text(s.size)),
        ("version", s.version.to_string()),
        ("updated", time_text(s.updated_at_ms)),
    ])
}

pub fn secrets_table(list: &[Secret]) -> String {
    let mut table = new_table(&["NAMESPACE", "NAME", "SIZE", "VERSION", "UPDATED"]);
    for s in list {
        add_row(
            &mut table,
            vec![
                s.namespace.clone(),
                s.name.clone(),
                bytes_text(s.size),
                s.version.to_string(),
                time_text(s.updated_at_ms),
            ],
        );
    }
    render(table)
}

fn quota_text(n: u64) -> String {
    if n == 0 {
        "-".into()
    } else {
        n.to_string()
    }
}

fn rate_text(ns: &Namespace) -> String {
    let quota = ns.quota.unwrap_or_default();
    if quota.submit_rate <= 0.0 {
        return "-".into();
    }
    let burst = if quota.submit_burst > 0.0 {
        quota.submit_burst
    } else {
        (quota.submit_rate * 2.0).max(1.0)
    };
    format!("{}/s (burst {burst})", quota.submit_rate)
}

pub fn namespace_json(ns: &Namespace) -> Value {
    let quota = ns.quota.unwrap_or_default();
    json!({
        "name": ns.name,
        "quota": {
            "max_functions": quota.max_functions,
            "max_queued_calls": quota.max_queued_calls,
            "max_concurrent_calls": quota.max_concurrent_calls,
            "submit_rate": quota.submit_rate,
            "submit_burst": quota.submit_burst,
        },
        "created_at_ms": ns.created_at_ms,
        "updated_at_ms": ns.updated_at_ms,
    })
}

pub fn namespace_details(ns: &Namespace) -> String {
    let quota = ns.quota.unwrap_or_default();
    details(vec![
        ("name", ns.name.clone()),
        ("max functions", quota_text(quota.max_functions)),
        ("max queued calls", quota_text(quota.max_queued_calls)),
        (
            "max concurrent calls",
            quota_text(quota.max_concurrent_calls),
        ),
        ("submit rate", rate_text(ns)),
    ])
}

pub fn namespaces_table(list: &[Namespace]) -> String {
    let mut table = new_table(&["NAME", "FUNCTIONS", "QUEUED", "CONCURRENT", "SUBMIT RATE"]);
    for ns in list {
        let quota = ns.quota.unwrap_or_default();
        add_row(
            &mut table,
            vec![
                ns.name.clone(),
                quota_text(quota.max_functions),
                quota_text(quota.max_queued_calls),
                quota_text(quota.max_concurrent_calls),
                rate_text(ns),
            ],
        );
    }
    render(table)
}

/// Who may call the function through the HTTP gateway.
fn http_text(f: &Function) -> &'static str {
    match f.http() {
        faas_proto::v1::HttpAccess::Public => "public",
        _ => "private",
    }
}

fn network_text(f: &Function) -> String {
    match &f.network {
        Some(n) if n.mode() == faas_proto::v1::network_policy::Mode::Egress => {
            if n.allow.is_empty() {
                "egress (any public address)".into()
            } else {
                format!("egress to {}", n.allow.join(" "))
            }
        }
        _ => "none".into(),
    }
}

pub fn function_details(f: &Function) -> String {
    let env: BTreeMap<_, _> = f.env.iter().collect();
    let env_text = if env.is_empty() {
        "-".to_string()
    } else {
        env.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    details(vec![
        ("name", f.name.clone()),
        ("runtime", f.runtime.clone()),
        ("handler", f.handler.clone()),
        ("memory", bytes_text(f.memory_bytes)),
        ("/tmp", bytes_text(tmp_bytes_of(f))),
        ("timeout", ms_text(f.timeout_ms)),
        ("idempotent", if f.idempotent { "yes" } else { "no" }.into()),
        ("env", env_text),
        ("secrets", secrets_text(f)),
        ("layers", layers_text(f)),
        ("network", network_text(f)),
        ("http", http_text(f).into()),
        ("version", f.version.to_string()),
        (
            "package",
            format!(
                "{} ({})",
                or_dash(&f.package_digest),
                bytes_text(f.package_size)
            ),
        ),
        ("created", time_text(f.created_at_ms)),
        ("updated", time_text(f.updated_at_ms)),
    ])
}

fn where_text(call: &Call) -> String {
    if call.node.is_empty() {
        "-".into()
    } else {
        format!("{}/{}", call.node, call.spot)
    }
}

/// With `namespaces`, the function column names its namespace too.
pub fn calls_table(calls: &[Call], namespaces: bool) -> String {
    let mut table = new_table(&[
        "ID",
        "FUNCTION",
        "STATUS",
        "START",
        "TOTAL MS",
        "NODE/SPOT",
        "CREATED",
    ]);
    for call in calls {
        let (start, total) = match &call.timings {
            Some(t) => (start_kind_name(t.start_kind), float_ms(t.total_ms)),
            None => ("-".into(), "-".into()),
        };
        add_row(
            &mut table,
            vec![
                call.id.clone(),
                if namespaces {
                    format!("{}/{}", call.namespace_name(), call.function)
                } else {
                    call.function.clone()
                },
                call_status_name(call.status),
                start,
                total,
                where_text(call),
                time_text(call.created_at_ms),
            ],
        );
    }
    right_align(&mut table, &[4]);
    render(table)
}

/// JSON text shown on one line in a table.
fn compact_json(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(value) => value.to_string(),
        Err(_) => text.to_string(),
    }
}

pub fn call_details(call: &Call) -> String {
    let mut rows = vec![
        ("id", call.id.clone()),
        (
            "function",
            if call.alias.is_empty() {
                format!("{} (version {})", call.function, call.function_version)
            } else {
                format!(
                    "{} (version {}, through alias {})",
                    call.function, call.function_version, call.alias
                )
            },
        ),
        ("status", call_status_name(call.status)),
        ("params", compact_json(&call.params_json)),
    ];
    if !call.result_json.is_empty() {
        rows.push(("result", compact_json(&call.result_json)));
    }
    if let Some(error) = &call.error {
        rows.push(("error", format!("{}: {}", error.reason, error.message)));
    }
    rows.push(("node/spot", where_text(call)));
    // The trace id, to look the call up in a tracing backend.
    if let Some(trace) = call.traceparent.split('-').nth(1) {
        rows.push(("trace", trace.to_string()));
    }
    if let Some(t) = &call.timings {
        rows.push(("start", start_kind_name(t.start_kind)));
        rows.push((
            "timings ms",
            format!(
                "queue {} | runtime load {} | function load {} | dependencies {} | execution {} | result return {} | total {}",
                float_ms(t.queue_ms),
                float_ms(t.runtime_load_ms),
                float_ms(t.function_load_ms),
                float_ms(t.dependencies_ms),
                float_ms(t.execution_ms),
                float_ms(t.result_return_ms),
                float_ms(t.total_ms),
            ),
        ));
    }
    rows.push(("created", time_text(call.created_at_ms)));
    rows.push(("finished", time_text(call.finished_at_ms)));
    if call.logs_truncated {
        rows.push(("logs", "truncated at the platform's limit".into()));
    }
    details(rows)
}

/// "4 spots: 2 free, 1 preloaded_runtime python3, 1 running" — the spots
/// grouped by state and, where loaded, by what they hold.
pub fn spots_summary(spots: &[Spot]) -> String {
    if spots.is_empty() {
        return "0 spots".into();
    }
    let mut groups: BTreeMap<(i32, String), usize> = BTreeMap::new();
    for spot in spots {
        let holds = if !spot.function.is_empty() {
            spot.function.clone()
        } else {
            spot.runtime.clone()
        };
        *groups.entry((spot.state, holds)).or_default() += 1;
    }
    let parts: Vec<String> = groups
        .into_iter()
        .map(|((state, holds), count)| {
            let state = spot_state_name(state);
            if holds.is_empty() {
                format!("{count} {state}")
            } else {
                format!("{count} {state} {holds}")
            }
        })
        .collect();
    let noun = if spots.len() == 1 { "spot" } else { "spots" };
    format!("{} {noun}: {}", spots.len(), parts.join(", "))
}

pub fn nodes_table(response: &ListNodesResponse) -> String {
    let mut table = new_table(&["NODE", "CONNECTED", "VERSION", "SPOTS"]);
    for node in &response.nodes {
        add_row(
            &mut table,
            vec![
                node.name.clone(),
                match (node.connected, node.draining) {
                    (true, true) => "yes (draining)",
                    (true, false) => "yes",
                    (false, _) => "no",
                }
                .to_string(),
                or_dash(&node.version).to_string(),
                spots_summary(&node.spots),
            ],
        );
    }
    let mut text = render(table);
    text.push_str(&format!(
        "\npolicy: {}  leader: {}  version: {}",
        or_dash(&response.policy),
        or_dash(&response.leader),
        or_dash(&response.replica_version)
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use faas_proto::v1::{CallError, CallStatus};

    fn sample_call() -> Call {
        Call {
            id: "01J0CALL".into(),
            function: "hello".into(),
            function_version: 3,
            params_json: r#"{"name":"ana"}"#.into(),
            status: CallStatus::Succeeded as i32,
            result_json: r#"{"greeting":"hello ana"}"#.into(),
            result_base64: false,
            agent_incarnation: String::new(),
            error: None,
            timings: Some(Timings {
                queue_ms: 0.5,
                runtime_load_ms: 0.0,
                function_load_ms: 0.0,
                dependencies_ms: 0.0,
                execution_ms: 12.25,
                result_return_ms: 0.75,
                total_ms: 13.5,
                start_kind: StartKind::PrewarmFunction as i32,
            }),
            node: "node-a".into(),
            spot: 2,
            created_at_ms: 1_700_000_000_000,
            finished_at_ms: 1_700_000_000_014,
            logs_truncated: false,
            policy: String::new(),
            attempts: 1,
            owner: String::new(),
            namespace: String::new(),
            traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
            client_context: String::new(),
            alias: String::new(),
        }
    }

    #[test]
    fn an_update_says_updated_and_names_no_build() {
        let f = Function {
            name: "hello".into(),
            version: 4,
            memory_bytes: 256 << 20,
            timeout_ms: 3000,
            package_digest: format!("sha256:{}", "ab".repeat(32)),
            build: Some(faas_proto::v1::DependencyBuild {
                build_ms: 900.0,
                node: "node-0".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let line = function_updated(&f);
        assert!(
            line.starts_with("function \"hello\" updated: version 4"),
            "{line}"
        );
        assert!(line.contains("256 MiB") || line.contains("256Mi"), "{line}");
        assert!(!line.contains("built"), "{line}");
        let alias = FunctionAlias {
            name: "live".into(),
            version: 2,
            additional_version: 3,
            additional_weight: 0.1,
            ..Default::default()
        };
        assert_eq!(
            alias_routing(&alias),
            "version 2 (90% of calls), version 3 (10%)"
        );
        let table = versions_table(
            &[
                Function {
                    version: 2,
                    ..f.clone()
                },
                Function {
                    version: 3,
                    ..f.clone()
                },
            ],
            &[alias],
        );
        assert!(table.contains("live (10%)"), "{table}");
        assert!(table.contains("latest"), "{table}");
    }

    #[test]
    fn enum_names_lose_their_prefix() {
        assert_eq!(call_status_name(CallStatus::Succeeded as i32), "succeeded");
        assert_eq!(call_status_name(CallStatus::Timeout as i32), "timeout");
        assert_eq!(call_status_name(99), "unknown(99)");
        assert_eq!(
            start_kind_name(StartKind::PrewarmFunction as i32),
            "prewarm_function"
        );
        assert_eq!(
            spot_state_name(SpotState::PreloadedRuntime as i32),
            "preloaded_runtime"
        );
    }

    #[test]
    fn call_record_json() {
        let value = call_json(&sample_call());
        assert_eq!(value["id"], "01J0CALL");
        assert_eq!(value["status"], "succeeded");
        assert_eq!(value["params"], json!({"name": "ana"}));
        assert_eq!(value["result"]["greeting"], "hello ana");
        assert_eq!(value["timings"]["total_ms"], 13.5);
        assert_eq!(value["timings"]["start_kind"], "prewarm_function");
        assert_eq!(value["error"], Value::Null);
        assert_eq!(value["spot"], 2);

        let mut failed = sample_call();
        failed.status = CallStatus::Failed as i32;
        failed.result_json.clear();
        failed.timings = None;
        failed.error = Some(CallError {
            reason: "error".into(),
            message: "RuntimeError: boom".into(),
            log_tail: "Traceback".into(),
        });
        let value = call_json(&failed);
        assert_eq!(value["status"], "failed");
        assert_eq!(value["result"], Value::Null);
        assert_eq!(value["timings"], Value::Null);
        assert_eq!(value["error"]["reason"], "error");
        assert_eq!(value["error"]["log_tail"], "Traceback");
    }

    #[test]
    fn not_json_text_is_kept_as_string() {
        let mut call = sample_call();
        call.params_json = "{oops".into();
        assert_eq!(call_json(&call)["params"], "{oops");
    }

    #[test]
    fn function_json_env_is_an_object() {
        let mut f = Function {
            name: "f".into(),
            memory_bytes: 128 << 20,
            ..Default::default()
        };
        f.env.insert("B".into(), "2".into());
        f.env.insert("A".into(), "1".into());
        let value = function_json(&f);
        assert_eq!(value["env"], json!({"A": "1", "B": "2"}));
        assert_eq!(value["memory_bytes"], 134_217_728u64);
        let text = value.to_string();
        assert!(
            text.find("\"A\"") < text.find("\"B\""),
            "sorted env: {text}"
        );
    }

    #[test]
    fn nodes_json_has_spots_policy_leader() {
        let response = ListNodesResponse {
            nodes: vec![Node {
                name: "n1".into(),
                connected: true,
                spots: vec![Spot {
                    index: 0,
                    state: SpotState::PreloadedRuntime as i32,
                    runtime: "python3".into(),
                    ..Default::default()
                }],
                connected_at_ms: 1,
                draining: false,
                version: "0.1.0+3f2a9c1".into(),
            }],
            policy: "preload-runtime".into(),
            leader: "cp-1".into(),
            replica_version: "0.1.0+3f2a9c1".into(),
        };
        let value = nodes_json(&response);
        assert_eq!(value["nodes"][0]["spots"][0]["state"], "preloaded_runtime");
        assert_eq!(value["policy"], "preload-runtime");
        assert_eq!(value["leader"], "cp-1");
        assert_eq!(value["nodes"][0]["version"], "0.1.0+3f2a9c1");
        let table = nodes_table(&response);
        assert!(table.starts_with("NODE"), "{table}");
        assert!(table.contains("VERSION"), "{table}");
        assert!(
            table
                .lines()
                .nth(1)
                .is_some_and(|row| row.contains("0.1.0+3f2a9c1")),
            "{table}"
        );
        assert!(
            table.contains("1 spot: 1 preloaded_runtime python3"),
            "{table}"
        );
        assert!(
            table.contains("policy: preload-runtime  leader: cp-1  version: 0.1.0+3f2a9c1"),
            "{table}"
        );
    }

    #[test]
    fn spot_summary_groups() {
        let spot = |state: SpotState, runtime: &str, function: &str| Spot {
            state: state as i32,
            runtime: runtime.into(),
            function: function.into(),
            ..Default::default()
        };
        let spots = vec![
            spot(SpotState::Free, "", ""),
            spot(SpotState::Running, "node", "f"),
            spot(SpotState::Free, "", ""),
            spot(SpotState::PreloadedRuntime, "python3", ""),
        ];
        assert_eq!(
            spots_summary(&spots),
            "4 spots: 2 free, 1 preloaded_runtime python3, 1 running f"
        );
        assert_eq!(spots_summary(&[]), "0 spots");
    }

    #[test]
    fn mutation_lines() {
        let f = Function {
            name: "f".into(),
            runtime: "python3".into(),
            version: 2,
            package_digest: "sha256:7195ca488ca8811428766fb5".into(),
            package_size: 181,
            ..Default::default()
        };
        assert_eq!(
            function_deployed(&f),
            "function \"f\" deployed: version 2, runtime python3, package sha256:7195ca488ca8 (181B)"
        );
    }

    #[test]
    fn human_units() {
        assert_eq!(bytes_text(128 << 20), "128Mi");
        assert_eq!(bytes_text(1 << 30), "1Gi");
        assert_eq!(bytes_text(1536 * 1024), "1.5Mi");
        assert_eq!(bytes_text(100), "100B");
        assert_eq!(bytes_text(0), "0");
        assert_eq!(ms_text(2000), "2s");
        assert_eq!(ms_text(0), "-");
        assert_eq!(time_text(0), "-");
        assert_eq!(time_text(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(
            short_digest("sha256:0123456789abcdef"),
            "sha256:0123456789ab"
        );
    }

    #[test]
    fn tables_are_aligned_without_margins() {
        let calls = vec![sample_call()];
        let table = calls_table(&calls, false);
        let lines: Vec<_> = table.lines().collect();
        assert_eq!(lines.len(), 2, "{table}");
        assert!(lines[0].starts_with("ID"), "{table}");
        assert!(lines[1].starts_with("01J0CALL"), "{table}");
        assert!(lines[1].contains("prewarm_function"));
        assert!(lines[1].contains("node-a/2"));
        assert!(lines.iter().all(|l| !l.ends_with(' ')));

        let details = call_details(&sample_call());
        assert!(details.contains("status:"), "{details}");
        assert!(details.contains(r#"{"greeting":"hello ana"}"#), "{details}");
        assert!(details.contains("total 13.5"), "{details}");
    }

    /// Names and results are not faasctl's text: an OSC 52 clipboard write
    /// or a CSI sequence in them is shown escaped, and the columns stay
    /// aligned (the cells are escaped before the table measures them).
    #[test]
    fn table_cells_are_escaped_before_alignment() {
        let mut call = sample_call();
        call.function = "f\u{1b}]52;c;aGk=\u{7}".into();
        call.node = "n\u{1b}[2J\u{9b}H".into();
        let table = calls_table(&[call.clone()], false);
        assert!(
            !table.chars().any(|c| c.is_control() && c != '\n'),
            "{table}"
        );
        assert!(table.contains("f\\x1b]52;c;aGk=\\x07"), "{table}");
        assert!(table.contains("n\\x1b[2J\\u{9b}H/2"), "{table}");
        let lines: Vec<_> = table.lines().collect();
        let status_column = |line: &str| line.find("STATUS").or_else(|| line.find("succeeded"));
        assert_eq!(status_column(lines[0]), status_column(lines[1]), "{table}");

        call.result_json = "\"\u{1b}]52;c;aGk=\u{7}\"".into();
        let details = call_details(&call);
        assert!(
            !details.chars().any(|c| c.is_control() && c != '\n'),
            "{details}"
        );
    }
}
