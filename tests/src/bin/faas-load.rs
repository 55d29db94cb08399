//! faas-load: a steady load of calls against a running cluster, for tests
//! that disturb it (tests/machines/cluster.sh restarts services, powers
//! machines off and upgrades them while it runs). Every call is submitted
//! (async) to the first replica that accepts it, retried on the others as
//! faasctl does (for 8 s); once acknowledged, it is
//! followed until it is final, through any replica. At the end, every
//! acknowledged call must be final: one that no replica knows is *lost*,
//! one still queued or running after the drain is *stuck*.
//!
//!   faas-load --endpoints URL,URL --ca FILE --token-file FILE --function NAME
//!             [--rate 4] [--params JSON] [--stop-file FILE] [--drain 180]
//!             [--log FILE] [--events FILE]
//!
//! It submits `--rate` calls a second (each with the object `--params`
//! and its number as "seq") until `--stop-file` exists (or for
//! ever), waits up to `--drain` seconds for the calls still open, writes
//! every submit and outcome to `--log` (JSON lines), and prints a report:
//! calls by outcome, the longest gap between acknowledgements and between
//! completions, and, for each line `START_MS END_MS LABEL` of `--events`
//! (epoch ms, written by whoever disturbed the cluster), the gaps and
//! refusals seen from START to 10 s past END. Exits 1 if a call was lost or
//! stuck, 2 on bad arguments.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use faas_proto::v1::call_service_client::CallServiceClient;
use faas_proto::v1::{CallStatus, GetCallRequest, InvokeRequest};
use faas_tests::bench::Series;
use faas_tests::{Channel, ClientAuth};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// A submit or a poll gives up on a replica after this long.
const RPC_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a submit is retried on the replicas (faasctl's budget).
const SUBMIT_RETRY_FOR: Duration = Duration::from_secs(8);
/// How often an open call is polled.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// An event's window runs on this long after its end: a service back up
/// is not yet a cluster serving again.
const EVENT_TAIL_MS: i64 = 10_000;

struct Args {
    endpoints: Vec<String>,
    ca: PathBuf,
    token_file: PathBuf,
    function: String,
    rate: f64,
    stop_file: Option<PathBuf>,
    drain: Duration,
    log: Option<PathBuf>,
    events: Option<PathBuf>,
    params: serde_json::Map<String, serde_json::Value>,
}

fn usage() -> ! {
    eprintln!(
        "usage: faas-load --endpoints URL,URL --ca FILE --token-file FILE --function NAME \
         [--rate 4] [--params JSON] [--stop-file FILE] [--drain 180] [--log FILE] [--events FILE]"
    );
    std::process::exit(2)
}

fn parse_args() -> anyhow::Result<Args> {
    let mut endpoints = Vec::new();
    let (mut ca, mut token_file, mut function) = (None, None, None);
    let mut args = Args {
        endpoints: Vec::new(),
        ca: PathBuf::new(),
        token_file: PathBuf::new(),
        function: String::new(),
        rate: 4.0,
        stop_file: None,
        drain: Duration::from_secs(180),
        log: None,
        events: None,
        params: serde_json::Map::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--endpoints" => {
                endpoints = value()?.split(',').map(str::to_string).collect();
            }
            "--ca" => ca = Some(PathBuf::from(value()?)),
            "--token-file" => token_file = Some(PathBuf::from(value()?)),
            "--function" => function = Some(value()?),
            "--rate" => args.rate = value()?.parse()?,
            "--stop-file" => args.stop_file = Some(PathBuf::from(value()?)),
            "--drain" => args.drain = Duration::from_secs(value()?.parse()?),
            "--log" => args.log = Some(PathBuf::from(value()?)),
            "--events" => args.events = Some(PathBuf::from(value()?)),
            "--params" => {
                args.params =
                    serde_json::from_str(&value()?).context("--params must be a JSON object")?
            }
            "-h" | "--help" => usage(),
            other => bail!("unknown argument {other}"),
        }
    }
    let (Some(ca), Some(token_file), Some(function)) = (ca, token_file, function) else {
        usage()
    };
    if endpoints.is_empty() || !(args.rate > 0.0 && args.rate <= 1000.0) {
        usage()
    }
    args.endpoints = endpoints;
    args.ca = ca;
    args.token_file = token_file;
    args.function = function;
    Ok(args)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What happened, one JSON line each in the log.
#[derive(Debug, Clone)]
enum Event {
    /// A replica acknowledged call `id` (`seq`: the submit's number).
    Ack {
        t: i64,
        seq: u64,
        id: String,
        replica: usize,
        ms: u64,
    },
    /// No replica acknowledged submit `seq`; the last error.
    Refused { t: i64, seq: u64, error: String },
    /// Call `id` ended.
    Final {
        t: i64,
        id: String,
        status: String,
        error: String,
        total_ms: u64,
    },
    /// Call `id` is not final after the drain (`status` as last seen), or
    /// no replica knows it (`status` "lost").
    Open { t: i64, id: String, status: String },
}

impl Event {
    fn json(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Event::Ack {
                t,
                seq,
                id,
                replica,
                ms,
            } => {
                json!({"kind": "ack", "t": t, "seq": seq, "id": id, "replica": replica, "submit_ms": ms})
            }
            Event::Refused { t, seq, error } => {
                json!({"kind": "refused", "t": t, "seq": seq, "error": error})
            }
            Event::Final {
                t,
                id,
                status,
                error,
                total_ms,
            } => {
                json!({"kind": "final", "t": t, "id": id, "status": status, "error": error, "total_ms": total_ms})
            }
            Event::Open { t, id, status } => {
                json!({"kind": "open", "t": t, "id": id, "status": status})
            }
        }
    }
}

struct Client {
    channels: Vec<Channel>,
}

impl Client {
    /// Submits to the replicas in turn from `first`, as faasctl does: a
    /// replica that cannot be reached or answers UNAVAILABLE (no leader for
    /// a moment, shutting down) or not in time is left for the next, for up
    /// to [`SUBMIT_RETRY_FOR`]. (A submit that timed out may have been
    /// recorded: its call then runs unacknowledged, which the report does
    /// not count, and the retry is a call of its own.) (replica, call id),
    /// or the last error.
    async fn submit(
        &self,
        first: usize,
        function: &str,
        params: &str,
    ) -> Result<(usize, String), String> {
        let deadline = Instant::now() + SUBMIT_RETRY_FOR;
        let mut last = String::new();
        for attempt in 0usize.. {
            let i = (first + attempt) % self.channels.len();
            let reply = CallServiceClient::new(self.channels[i].clone())
                .submit(InvokeRequest {
                    function: function.into(),
                    params_json: params.into(),
                    ..Default::default()
                })
                .await;
            match reply {
                Ok(r) => return Ok((i, r.into_inner().call_id)),
                Err(s) => {
                    last = format!("replica {i}: {:?} {}", s.code(), s.message());
                    let retry = matches!(
                        s.code(),
                        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                    );
                    if !retry || Instant::now() >= deadline {
                        break;
                    }
                    if attempt + 1 >= self.channels.len() {
                        tokio::time::sleep(Duration::from_millis(100 * (attempt as u64).min(5)))
                            .await;
                    }
                }
            }
        }
        Err(last)
    }

    /// The call as the first replica that answers sees it; `Ok(None)` if
    /// every replica that answered says it does not exist.
    async fn get(&self, id: &str) -> Result<Option<faas_proto::v1::Call>, String> {
        let mut not_found = 0;
        let mut last = String::new();
        for ch in &self.channels {
            match CallServiceClient::new(ch.clone())
                .get_call(GetCallRequest { id: id.into() })
                .await
            {
                Ok(c) => return Ok(Some(c.into_inner())),
                Err(s) if s.code() == tonic::Code::NotFound => not_found += 1,
                Err(s) => last = format!("{:?} {}", s.code(), s.message()),
            }
        }
        if not_found > 0 {
            Ok(None)
        } else {
            Err(last)
        }
    }
}

fn is_final(s: CallStatus) -> bool {
    s.is_final()
}

/// Follows call `id` until it is final or `until`; reports either.
async fn follow(
    client: Arc<Client>,
    id: String,
    until: Arc<Mutex<Option<Instant>>>,
    tx: mpsc::UnboundedSender<Event>,
) {
    let mut last_status = "unknown".to_string();
    let mut unknown_since: Option<Instant> = None;
    loop {
        match client.get(&id).await {
            Ok(Some(call)) => {
                unknown_since = None;
                last_status = format!("{:?}", call.status());
                if is_final(call.status()) {
                    let total_ms = call
                        .timings
                        .as_ref()
                        .map(|t| t.total_ms.round() as u64)
                        .unwrap_or(0);
                    let error = call
                        .error
                        .as_ref()
                        .map(|e| format!("{}: {}", e.reason, e.message))
                        .unwrap_or_default();
                    let _ = tx.send(Event::Final {
                        t: now_ms(),
                        id,
                        status: last_status,
                        error,
                        total_ms,
                    });
                    return;
                }
            }
            // Not found right after a failover can be a replica behind;
            // lost only if it stays so.
            Ok(None) => {
                let since = *unknown_since.get_or_insert_with(Instant::now);
                if since.elapsed() > Duration::from_secs(30) {
                    let _ = tx.send(Event::Open {
                        t: now_ms(),
                        id,
                        status: "lost".into(),
                    });
                    return;
                }
            }
            Err(_) => {}
        }
        let deadline = *until.lock().expect("not poisoned");
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = tx.send(Event::Open {
                t: now_ms(),
                id,
                status: last_status,
            });
            return;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let auth = ClientAuth {
        ca_pem: std::fs::read_to_string(&args.ca)
            .with_context(|| format!("reading {}", args.ca.display()))?,
        token: std::fs::read_to_string(&args.token_file)
            .with_context(|| format!("reading {}", args.token_file.display()))?
            .trim()
            .to_string(),
    };
    let channels = args
        .endpoints
        .iter()
        .map(|u| auth.channel_with(u, Some(&auth.token), Some(RPC_TIMEOUT)))
        .collect();
    let client = Arc::new(Client { channels });
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let drain_until: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));

    // The writer: every event into the log as it happens (a crash of this
    // program still leaves what it saw), and into memory for the report.
    let log_path = args.log.clone();
    let writer = tokio::spawn(async move {
        let mut log = log_path.map(|p| std::fs::File::create(p).map(std::io::BufWriter::new));
        let mut events = Vec::new();
        while let Some(e) = rx.recv().await {
            if let Some(Ok(f)) = log.as_mut() {
                let _ = writeln!(f, "{}", e.json());
                let _ = f.flush();
            }
            events.push(e);
        }
        events
    });

    let started = now_ms();
    let period = Duration::from_secs_f64(1.0 / args.rate);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut followers = Vec::new();
    let mut submits = Vec::new();
    let mut seq: u64 = 0;
    loop {
        tick.tick().await;
        if args.stop_file.as_ref().is_some_and(|f| f.exists()) {
            break;
        }
        seq += 1;
        let (client, tx, until) = (client.clone(), tx.clone(), drain_until.clone());
        let function = args.function.clone();
        let params = args.params.clone();
        let first = seq as usize % args.endpoints.len();
        // Each submit on its own task: a replica that hangs delays only the
        // submits sent to it, not the schedule.
        submits.push(tokio::spawn(async move {
            let mut params = params.clone();
            params.insert("seq".into(), seq.into());
            let params = serde_json::Value::Object(params).to_string();
            let t0 = Instant::now();
            match client.submit(first, &function, &params).await {
                Ok((replica, id)) => {
                    let ms = t0.elapsed().as_millis() as u64;
                    let _ = tx.send(Event::Ack {
                        t: now_ms(),
                        seq,
                        id: id.clone(),
                        replica,
                        ms,
                    });
                    Some(tokio::spawn(follow(client, id, until, tx)))
                }
                Err(error) => {
                    let _ = tx.send(Event::Refused {
                        t: now_ms(),
                        seq,
                        error,
                    });
                    None
                }
            }
        }));
    }
    for s in submits {
        if let Ok(Some(f)) = s.await {
            followers.push(f);
        }
    }
    *drain_until.lock().expect("not poisoned") = Some(Instant::now() + args.drain);
    for f in followers {
        let _ = f.await;
    }
    drop(tx);
    let events = writer.await?;
    let events_file = match &args.events {
        Some(p) => std::fs::read_to_string(p).unwrap_or_default(),
        None => String::new(),
    };
    let (text, bad) = report(&events, started, now_ms(), &events_file);
    // A program's report, not a service's log.
    #[allow(clippy::print_stdout)]
    {
        print!("{text}");
    }
    std::process::exit(if bad { 1 } else { 0 })
}

/// The longest gap between consecutive times in `ts` (sorted) within
/// [from, to], counting from `from` and to `to` when nothing happened there.
fn longest_gap(ts: &[i64], from: i64, to: i64) -> i64 {
    let mut prev = from;
    let mut gap = 0;
    for &t in ts.iter().filter(|&&t| t >= from && t <= to) {
        gap = gap.max(t - prev);
        prev = t;
    }
    gap.max(to - prev)
}

fn report(events: &[Event], started: i64, ended: i64, events_file: &str) -> (String, bool) {
    let mut acks = Vec::new();
    let mut finals = Vec::new();
    let mut refused = Vec::new();
    let mut by_outcome: BTreeMap<String, u64> = BTreeMap::new();
    let mut open = Vec::new();
    let mut totals = Vec::new();
    let mut submit_ms = Vec::new();
    for e in events {
        match e {
            Event::Ack { t, ms, .. } => {
                acks.push(*t);
                submit_ms.push(*ms);
            }
            Event::Refused { t, .. } => refused.push(*t),
            Event::Final {
                t,
                status,
                error,
                total_ms,
                ..
            } => {
                finals.push(*t);
                totals.push(*total_ms);
                let key = if error.is_empty() {
                    status.clone()
                } else {
                    format!("{status} ({})", error.split(':').next().unwrap_or(""))
                };
                *by_outcome.entry(key).or_default() += 1;
            }
            Event::Open { id, status, .. } => open.push(format!("{id} ({status})")),
        }
    }
    acks.sort_unstable();
    finals.sort_unstable();
    refused.sort_unstable();
    let last_ack = acks.last().copied().unwrap_or(started);
    let mut out = String::new();
    let _ = writeln!(out, "faas-load report");
    let _ = writeln!(
        out,
        "  duration            {:.1} s",
        (ended - started) as f64 / 1000.0
    );
    let _ = writeln!(out, "  submits             {}", acks.len() + refused.len());
    let _ = writeln!(out, "  acknowledged        {}", acks.len());
    let _ = writeln!(out, "  refused (8 s tried) {}", refused.len());
    for (k, n) in &by_outcome {
        let _ = writeln!(out, "  final {k:<14} {n}");
    }
    let lost = open.iter().filter(|o| o.ends_with("(lost)")).count();
    let _ = writeln!(out, "  lost                {lost}");
    let _ = writeln!(out, "  stuck               {}", open.len() - lost);
    for o in &open {
        let _ = writeln!(out, "    open: {o}");
    }
    for (label, samples) in [("submit latency", &submit_ms), ("call total", &totals)] {
        let series = Series::new(samples.iter().map(|&ms| ms as f64).collect());
        // 0 with no samples, as before a call was acknowledged.
        let q = |p| {
            if series.is_empty() {
                0.0
            } else {
                series.pct(p)
            }
        };
        let _ = writeln!(
            out,
            "  {label:<19} p50 {} ms, p99 {} ms, max {} ms",
            q(50.0),
            q(99.0),
            q(100.0)
        );
    }
    let _ = writeln!(
        out,
        "  longest gap         between acks {} ms, between completions {} ms",
        longest_gap(&acks, started, last_ack),
        longest_gap(&finals, started, finals.last().copied().unwrap_or(started)),
    );
    let lines: Vec<&str> = events_file
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    if !lines.is_empty() {
        let _ = writeln!(
            out,
            "  per event (from its start to {} s past its end):",
            EVENT_TAIL_MS / 1000
        );
        let _ = writeln!(
            out,
            "    {:<44} {:>8} {:>10} {:>10} {:>8}",
            "event", "took ms", "ack gap", "done gap", "refused"
        );
        for l in lines {
            let mut f = l.splitn(3, ' ');
            let (Some(Ok(s)), Some(Ok(e)), Some(label)) = (
                f.next().map(str::parse::<i64>),
                f.next().map(str::parse::<i64>),
                f.next(),
            ) else {
                continue;
            };
            let to = (e + EVENT_TAIL_MS).min(last_ack);
            let n_refused = refused
                .iter()
                .filter(|&&t| t >= s && t <= e + EVENT_TAIL_MS)
                .count();
            let _ = writeln!(
                out,
                "    {:<44} {:>8} {:>10} {:>10} {:>8}",
                label,
                e - s,
                longest_gap(&acks, s, to.max(s)),
                longest_gap(
                    &finals,
                    s,
                    (e + EVENT_TAIL_MS)
                        .min(finals.last().copied().unwrap_or(s))
                        .max(s)
                ),
                n_refused
            );
        }
    }
    (out, !open.is_empty())
}
