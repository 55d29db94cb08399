//! A discrete-event simulator: a [`Broker`] driving simulated agents on a
//! simulated clock, for testing and comparing policies without I/O.
//!
//! Agents behave as the real ones promise (see the crate's contract): each
//! spot runs its operations one at a time in the order sent, reports
//! `Running`/`Preloading`/`Clearing` when it starts one (a preload's report
//! carries no function, as the I/O side maps it) and `Free`/`Preloaded…`
//! when it ends one. Reports reach the broker at once (no network delay).
//!
//! Every operation is checked when its spot starts it, against what the
//! spot really holds: an execute or preload needs an empty spot, a
//! runtime-preloaded exec the same runtime, a function-preloaded exec the
//! same function name *and version*, a clear a finished preload; an
//! operation for a spot that is gone is a violation too. After every event
//! the broker's view of each idle spot must equal the spot's real state.
//! Violations are collected ([`Sim::violations`]); tests assert none.
//!
//! Durations: a cold start pays runtime load + function load + run; a
//! runtime-preloaded one function load + run; a function-preloaded one the
//! run only. The call's result is out when the run ends; the spot is Free
//! only after the container's tear-down.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use crate::cluster::{
    Broker, Event, FunctionRef, Millis, Operation, PendingCall, SpotId, SpotState,
};
use crate::policy::Policy;

/// xorshift64*: a tiny seeded generator, enough for workloads and jitter.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // Zero is xorshift's fixed point; spread small seeds.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi].
    pub fn between(&mut self, lo: Millis, hi: Millis) -> Millis {
        lo + (self.unit() * (hi.saturating_sub(lo) + 1) as f64) as Millis
    }

    /// Exponentially distributed with the given mean (Poisson gaps).
    pub fn exponential(&mut self, mean_ms: f64) -> f64 {
        -mean_ms * (1.0 - self.unit()).ln()
    }

    /// An index drawn in proportion to the weights.
    pub fn weighted(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().sum();
        let mut x = self.unit() * total;
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len().saturating_sub(1)
    }
}

/// What the simulated agents' work costs.
#[derive(Clone, Debug, PartialEq)]
pub struct Costs {
    /// Starting a container of the runtime (image ready).
    pub runtime_load: Millis,
    /// Placing a function's files and running its dependencies command
    /// (a function may override it).
    pub function_load: Millis,
    /// The function's run (a function may override it).
    pub run: Millis,
    /// Destroying a preloaded container.
    pub clear: Millis,
    /// Destroying a container after its call, before the spot is Free.
    pub teardown: Millis,
    /// Each duration is drawn uniformly within ± this fraction.
    pub jitter: f64,
}

impl Costs {
    /// The hot path this project aims at (DESIGN.md): containerd + runc,
    /// a preloaded function's process already waiting on its input.
    pub fn hot_path() -> Self {
        Costs {
            runtime_load: 80,
            function_load: 30,
            run: 5,
            clear: 40,
            teardown: 50,
            jitter: 0.2,
        }
    }

    /// This project's stack as measured on the mixed workload (docs/bench,
    /// 2-core machine): a container with the runtime ready ≈56 ms after it
    /// is asked for; function loads are per function (python3 ≈18 ms, node
    /// ≈70 ms, see [`scenario::stack_mixed`]).
    pub fn stack() -> Self {
        Costs {
            runtime_load: 56,
            function_load: 18,
            run: 5,
            clear: 30,
            teardown: 40,
            jitter: 0.2,
        }
    }

    /// The thesis's Docker-based prototype (Table 6.1, hello-world Node):
    /// runtime ~1.15 s, function ~1.9 s, a short run, docker rm for clears.
    pub fn thesis() -> Self {
        Costs {
            runtime_load: 1150,
            function_load: 1900,
            run: 60,
            clear: 400,
            teardown: 400,
            jitter: 0.2,
        }
    }
}

/// A function the simulation knows, with its own costs if they differ.
#[derive(Clone, Debug, PartialEq)]
pub struct FunctionSpec {
    pub name: String,
    pub runtime: String,
    pub function_load: Option<Millis>,
    pub run: Option<Millis>,
    /// Of the function load, the part a function preload does after its
    /// spot reports preloaded: on the real stack the agent reports once the
    /// dependencies ran, and the runtime's `run` process then starts and
    /// imports the handler. A call that comes sooner waits for the rest.
    pub unreported_load: Millis,
}

impl FunctionSpec {
    pub fn new(name: &str, runtime: &str) -> Self {
        FunctionSpec {
            name: name.into(),
            runtime: runtime.into(),
            function_load: None,
            run: None,
            unreported_load: 0,
        }
    }
}

/// One call arriving at a time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arrival {
    pub at: Millis,
    pub function: String,
}

/// How a call started.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum StartKind {
    Cold,
    PrewarmRuntime,
    PrewarmFunction,
}

/// What happened to one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallRecord {
    pub id: String,
    pub function: FunctionRef,
    pub arrived_at: Millis,
    /// When its spot started the execute (after any clear queued before it).
    pub started_at: Option<Millis>,
    /// When its result was out (the run ended).
    pub finished_at: Option<Millis>,
    pub start: Option<StartKind>,
    pub spot: Option<SpotId>,
    /// Its node left while it ran or waited on that node.
    pub lost: bool,
}

impl CallRecord {
    /// Time from arrival to the start of its execute.
    pub fn queue_ms(&self) -> Option<Millis> {
        Some(self.started_at? - self.arrived_at)
    }

    /// Time from arrival to its result.
    pub fn latency_ms(&self) -> Option<Millis> {
        Some(self.finished_at? - self.arrived_at)
    }
}

/// Aggregates over a run's calls.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    pub calls: usize,
    pub finished: usize,
    pub lost: usize,
    /// Neither finished nor lost at the end of the run: stranded.
    pub unfinished: usize,
    pub mean_ms: f64,
    pub p50_ms: Millis,
    pub p99_ms: Millis,
    pub max_ms: Millis,
    pub mean_queue_ms: f64,
    pub cold: usize,
    pub prewarm_runtime: usize,
    pub prewarm_function: usize,
}

impl Summary {
    pub fn from_records<'a>(records: impl IntoIterator<Item = &'a CallRecord>) -> Self {
        let mut s = Summary::default();
        let mut latencies = Vec::new();
        let mut queue_total = 0u64;
        for r in records {
            s.calls += 1;
            if r.lost {
                s.lost += 1;
                continue;
            }
            let Some(latency) = r.latency_ms() else {
                s.unfinished += 1;
                continue;
            };
            s.finished += 1;
            latencies.push(latency);
            queue_total += r.queue_ms().unwrap_or(0);
            match r.start {
                Some(StartKind::Cold) => s.cold += 1,
                Some(StartKind::PrewarmRuntime) => s.prewarm_runtime += 1,
                Some(StartKind::PrewarmFunction) => s.prewarm_function += 1,
                None => {}
            }
        }
        if !latencies.is_empty() {
            latencies.sort_unstable();
            let n = latencies.len();
            s.mean_ms = latencies.iter().sum::<u64>() as f64 / n as f64;
            s.mean_queue_ms = queue_total as f64 / n as f64;
            let pct = |p: f64| latencies[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
            s.p50_ms = pct(0.50);
            s.p99_ms = pct(0.99);
            s.max_ms = latencies[n - 1];
        }
        s
    }

    fn rate(&self, n: usize) -> f64 {
        if self.finished == 0 {
            0.0
        } else {
            n as f64 / self.finished as f64
        }
    }

    /// Share of finished calls that started on their preloaded function.
    pub fn function_hit_rate(&self) -> f64 {
        self.rate(self.prewarm_function)
    }

    /// Share of finished calls that started on a preloaded runtime.
    pub fn runtime_hit_rate(&self) -> f64 {
        self.rate(self.prewarm_runtime)
    }

    pub fn cold_rate(&self) -> f64 {
        self.rate(self.cold)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>8.0} {:>6} {:>6} {:>8.0} {:>6.1}% {:>6.1}% {:>6.1}%",
            self.mean_ms,
            self.p50_ms,
            self.p99_ms,
            self.mean_queue_ms,
            100.0 * self.function_hit_rate(),
            100.0 * self.runtime_hit_rate(),
            100.0 * self.cold_rate(),
        )?;
        if self.lost + self.unfinished > 0 {
            write!(f, " lost {} unfinished {}", self.lost, self.unfinished)?;
        }
        Ok(())
    }
}

impl Summary {
    /// Column names matching [`Summary`]'s `Display`.
    pub const HEADER: &'static str = " mean ms    p50    p99  queue ms  fn-hit  rt-hit    cold";
}

/// Where a spot's current operation is.
#[derive(Clone, Debug)]
enum Phase {
    /// A call runs; its result is out at the end.
    Run {
        call_id: String,
    },
    /// The call's container is being destroyed.
    Teardown,
    Preload,
    Clear,
}

#[derive(Debug)]
struct AgentSpot {
    actual: SpotState,
    queue: VecDeque<Operation>,
    current: Option<(Operation, Phase)>,
    /// When its function preload is really done (see
    /// [`FunctionSpec::unreported_load`]).
    warm_at: Millis,
    /// Bumped when the spot is (re)created, so that steps scheduled for an
    /// earlier incarnation are dropped.
    generation: u64,
}

#[derive(Clone, Debug)]
enum SimEvent {
    Arrive(String),
    Step {
        spot: SpotId,
        generation: u64,
    },
    NodeJoin {
        node: String,
        spots: u32,
    },
    NodeLeave {
        node: String,
    },
    /// A new version of the function is registered.
    UpdateFunction(String),
    /// Preloads of this runtime or function name fail (or work again).
    FailPreloads {
        name: String,
        fail: bool,
    },
}

/// The simulation: a broker, its agents, a clock and a schedule.
pub struct Sim {
    broker: Broker,
    costs: Costs,
    rng: Rng,
    now: Millis,
    seq: u64,
    schedule: BTreeMap<(Millis, u64), SimEvent>,
    functions: BTreeMap<String, (FunctionSpec, u64)>,
    agents: BTreeMap<SpotId, AgentSpot>,
    generation: u64,
    calls: BTreeMap<String, CallRecord>,
    next_call: u64,
    reports: VecDeque<Event>,
    failing: BTreeSet<String>,
    violations: Vec<String>,
    sent: BTreeMap<&'static str, usize>,
    tick_ms: Millis,
    last_tick: Millis,
}

/// The operation's name, as counted by [`Sim::sent`].
pub fn kind_name(op: &Operation) -> &'static str {
    match op {
        Operation::ExecuteNoPreload { .. } => "ExecuteNoPreload",
        Operation::ExecRuntimePreloaded { .. } => "ExecRuntimePreloaded",
        Operation::ExecFunctionPreloaded { .. } => "ExecFunctionPreloaded",
        Operation::PreloadRuntime { .. } => "PreloadRuntime",
        Operation::PreloadFunction { .. } => "PreloadFunction",
        Operation::ClearSpot { .. } => "ClearSpot",
    }
}

impl Sim {
    /// A simulation with no nodes yet; jitter draws come from `seed`.
    pub fn new(policy: Box<dyn Policy>, costs: Costs, seed: u64) -> Self {
        Sim {
            broker: Broker::new(policy),
            costs,
            rng: Rng::new(seed ^ 0x5151),
            now: 0,
            seq: 0,
            schedule: BTreeMap::new(),
            functions: BTreeMap::new(),
            agents: BTreeMap::new(),
            generation: 0,
            calls: BTreeMap::new(),
            next_call: 0,
            reports: VecDeque::new(),
            failing: BTreeSet::new(),
            violations: Vec::new(),
            sent: BTreeMap::new(),
            tick_ms: 1000,
            last_tick: 0,
        }
    }

    pub fn now(&self) -> Millis {
        self.now
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Every call so far, by id (ids sort in arrival order).
    pub fn calls(&self) -> impl Iterator<Item = &CallRecord> {
        self.calls.values()
    }

    pub fn call(&self, id: &str) -> Option<&CallRecord> {
        self.calls.get(id)
    }

    pub fn summary(&self) -> Summary {
        Summary::from_records(self.calls.values())
    }

    /// Contract and consistency violations seen so far.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// How many operations of each kind ([`kind_name`]) the broker sent.
    pub fn sent(&self, kind: &str) -> usize {
        self.sent.get(kind).copied().unwrap_or(0)
    }

    /// Every spot and what it really holds.
    pub fn spots(&self) -> impl Iterator<Item = (&SpotId, &SpotState)> {
        self.agents.iter().map(|(id, a)| (id, &a.actual))
    }

    /// What a spot really holds (None: no such spot).
    pub fn actual(&self, spot: &SpotId) -> Option<&SpotState> {
        self.agents.get(spot).map(|a| &a.actual)
    }

    /// Registers a runtime now (the catalog the I/O side sends at start).
    pub fn register_runtime(&mut self, name: &str) {
        self.feed(Event::RuntimeRegistered { name: name.into() });
    }

    /// Registers a function now, at version 1.
    pub fn register_function(&mut self, spec: FunctionSpec) {
        let function = FunctionRef {
            name: spec.name.clone(),
            version: 1,
            runtime: spec.runtime.clone(),
        };
        self.functions.insert(spec.name.clone(), (spec, 1));
        self.feed(Event::FunctionRegistered { function });
    }

    /// Feeds the broker an event of the I/O side now (e.g. a catalog
    /// removal), and carries out what it decides.
    pub fn inject(&mut self, event: Event) {
        if let Event::FunctionRemoved { name } = &event {
            self.functions.remove(name);
        }
        self.feed(event);
    }

    /// A node with `spots` spots joins now.
    pub fn join_node(&mut self, node: &str, spots: u32) {
        self.node_join(node, spots);
        self.pump();
    }

    fn at(&mut self, at: Millis, event: SimEvent) {
        self.seq += 1;
        self.schedule.insert((at.max(self.now), self.seq), event);
    }

    pub fn schedule_arrivals(&mut self, arrivals: &[Arrival]) {
        for a in arrivals {
            self.at(a.at, SimEvent::Arrive(a.function.clone()));
        }
    }

    pub fn schedule_node_join(&mut self, at: Millis, node: &str, spots: u32) {
        self.at(
            at,
            SimEvent::NodeJoin {
                node: node.into(),
                spots,
            },
        );
    }

    pub fn schedule_node_leave(&mut self, at: Millis, node: &str) {
        self.at(at, SimEvent::NodeLeave { node: node.into() });
    }

    pub fn schedule_function_update(&mut self, at: Millis, name: &str) {
        self.at(at, SimEvent::UpdateFunction(name.into()));
    }

    /// From `at`, preloads of the runtime or function `name` fail (the
    /// agent reports Free) until told otherwise.
    pub fn schedule_preload_failures(&mut self, at: Millis, name: &str, fail: bool) {
        self.at(
            at,
            SimEvent::FailPreloads {
                name: name.into(),
                fail,
            },
        );
    }

    /// Runs every scheduled event up to `until`, ticking the broker every
    /// second, and leaves the clock there.
    pub fn run_until(&mut self, until: Millis) {
        loop {
            let next_tick = self.last_tick + self.tick_ms;
            let next = self.schedule.keys().next().copied();
            match next {
                Some((t, seq)) if t <= until && t < next_tick => {
                    let event = self.schedule.remove(&(t, seq)).expect("just seen");
                    self.now = t;
                    self.process(event);
                }
                _ if next_tick <= until => {
                    self.now = next_tick;
                    self.last_tick = next_tick;
                    self.feed(Event::Tick);
                }
                _ => break,
            }
        }
        self.now = until;
    }

    /// Runs until every call has finished or been lost and nothing but ticks
    /// is left, or `limit` is reached.
    pub fn run_to_completion(&mut self, limit: Millis) {
        while self.now < limit {
            let step = (self.now + 1000).min(limit);
            self.run_until(step);
            let settled = self.schedule.is_empty()
                && self
                    .calls
                    .values()
                    .all(|c| c.lost || c.finished_at.is_some());
            if settled {
                break;
            }
        }
    }

    fn process(&mut self, event: SimEvent) {
        match event {
            SimEvent::Arrive(name) => {
                self.arrive(&name);
            }
            SimEvent::Step { spot, generation } => {
                if self
                    .agents
                    .get(&spot)
                    .is_some_and(|a| a.generation == generation)
                {
                    self.step(&spot);
                }
            }
            SimEvent::NodeJoin { node, spots } => self.node_join(&node, spots),
            SimEvent::NodeLeave { node } => self.node_leave(&node),
            SimEvent::UpdateFunction(name) => {
                if let Some((spec, version)) = self.functions.get_mut(&name) {
                    *version += 1;
                    let function = FunctionRef {
                        name: spec.name.clone(),
                        version: *version,
                        runtime: spec.runtime.clone(),
                    };
                    self.reports
                        .push_back(Event::FunctionRegistered { function });
                }
            }
            SimEvent::FailPreloads { name, fail } => {
                if fail {
                    self.failing.insert(name);
                } else {
                    self.failing.remove(&name);
                }
            }
        }
        self.pump();
    }

    /// A call arrives now for the function's current version; returns its id.
    pub fn arrive(&mut self, name: &str) -> String {
        let Some((spec, version)) = self.functions.get(name) else {
            self.violations.push(format!(
                "{}: workload calls unknown function {name}",
                self.now
            ));
            return String::new();
        };
        self.next_call += 1;
        let id = format!("c{:06}", self.next_call);
        let function = FunctionRef {
            name: spec.name.clone(),
            version: *version,
            runtime: spec.runtime.clone(),
        };
        self.calls.insert(
            id.clone(),
            CallRecord {
                id: id.clone(),
                function: function.clone(),
                arrived_at: self.now,
                started_at: None,
                finished_at: None,
                start: None,
                spot: None,
                lost: false,
            },
        );
        self.feed(Event::CallArrived(PendingCall {
            id: id.clone(),
            function,
            arrived_at: self.now,
        }));
        id
    }

    fn node_join(&mut self, node: &str, spots: u32) {
        self.drop_node(node);
        self.generation += 1;
        for index in 0..spots {
            self.agents.insert(
                SpotId {
                    node: node.into(),
                    index,
                },
                AgentSpot {
                    actual: SpotState::Free,
                    queue: VecDeque::new(),
                    current: None,
                    warm_at: 0,
                    generation: self.generation,
                },
            );
        }
        self.reports.push_back(Event::NodeJoined {
            node: node.into(),
            spots,
        });
    }

    fn node_leave(&mut self, node: &str) {
        self.drop_node(node);
        self.reports
            .push_back(Event::NodeLeft { node: node.into() });
    }

    /// Removes a node's spots; the calls running or queued there are lost
    /// (the I/O side fails them).
    fn drop_node(&mut self, node: &str) {
        let gone: Vec<SpotId> = self
            .agents
            .keys()
            .filter(|s| s.node == node)
            .cloned()
            .collect();
        for spot in gone {
            let agent = self.agents.remove(&spot).expect("listed");
            let mut call_ids: Vec<String> = agent
                .queue
                .iter()
                .filter_map(|op| op.call().map(|c| c.id.clone()))
                .collect();
            if let Some((_, Phase::Run { call_id })) = &agent.current {
                call_ids.push(call_id.clone());
            }
            for id in call_ids {
                if let Some(r) = self.calls.get_mut(&id) {
                    r.lost = true;
                }
            }
        }
    }

    fn feed(&mut self, event: Event) {
        self.reports.push_back(event);
        self.pump();
    }

    /// Delivers pending events to the broker and carries its operations out,
    /// until nothing is pending; then checks the view.
    fn pump(&mut self) {
        while let Some(event) = self.reports.pop_front() {
            let ops = self.broker.handle(event, self.now);
            for op in ops {
                self.dispatch(op);
            }
        }
        self.check_view();
    }

    fn check_view(&mut self) {
        for (spot, agent) in &self.agents {
            if agent.current.is_some() || !agent.queue.is_empty() {
                continue;
            }
            let view = self.broker.cluster().spot(spot);
            if view != Some(&agent.actual) {
                self.violations.push(format!(
                    "{}: broker sees {spot} as {view:?}, it is {:?}",
                    self.now, agent.actual
                ));
            }
        }
    }

    fn dispatch(&mut self, op: Operation) {
        *self.sent.entry(kind_name(&op)).or_insert(0) += 1;
        let spot = op.spot().clone();
        let Some(agent) = self.agents.get_mut(&spot) else {
            self.violations
                .push(format!("{}: operation for a gone spot: {op:?}", self.now));
            return;
        };
        agent.queue.push_back(op);
        if agent.current.is_none() {
            self.start_next(&spot);
        }
    }

    fn jittered(&mut self, ms: Millis) -> Millis {
        let j = self.costs.jitter;
        let factor = 1.0 + j * (2.0 * self.rng.unit() - 1.0);
        (ms as f64 * factor).round().max(1.0) as Millis
    }

    fn function_costs(&self, name: &str) -> (Millis, Millis) {
        let spec = self.functions.get(name).map(|(s, _)| s);
        (
            spec.and_then(|s| s.function_load)
                .unwrap_or(self.costs.function_load),
            spec.and_then(|s| s.run).unwrap_or(self.costs.run),
        )
    }

    fn report(&mut self, spot: &SpotId, state: SpotState) {
        self.reports.push_back(Event::SpotReported {
            spot: spot.clone(),
            state,
        });
    }

    fn schedule_step(&mut self, spot: &SpotId, after: Millis) {
        let generation = self.agents[spot].generation;
        let at = self.now + after;
        self.at(
            at,
            SimEvent::Step {
                spot: spot.clone(),
                generation,
            },
        );
    }

    /// Whether the op may start on a spot really holding `actual`.
    fn check(&self, op: &Operation, actual: &SpotState) -> Result<(), String> {
        let ok = match (op, actual) {
            (
                Operation::ExecuteNoPreload { .. }
                | Operation::PreloadRuntime { .. }
                | Operation::PreloadFunction { .. },
                SpotState::Free,
            ) => true,
            (
                Operation::ExecRuntimePreloaded { call, .. },
                SpotState::PreloadedRuntime { runtime },
            ) => call.function.runtime == *runtime,
            (
                Operation::ExecFunctionPreloaded { call, .. },
                SpotState::PreloadedFunction { function },
            ) => {
                // The version that runs must be the call's, which is the
                // current one when it arrived.
                let current = self.functions.get(&call.function.name).map(|(_, v)| *v);
                call.function == *function
                    && current.is_some_and(|v| v >= function.version)
                    && self
                        .calls
                        .get(&call.id)
                        .is_some_and(|r| r.function == *function)
            }
            (Operation::ClearSpot { .. }, s) => s.is_preloaded(),
            _ => false,
        };
        let repeated = op
            .call()
            .and_then(|c| self.calls.get(&c.id))
            .is_some_and(|r| r.started_at.is_some());
        if repeated {
            return Err(format!("call executed twice: {op:?}"));
        }
        if ok {
            Ok(())
        } else {
            Err(format!("{op:?} on a spot holding {actual:?}"))
        }
    }

    fn start_next(&mut self, spot: &SpotId) {
        let agent = self.agents.get_mut(spot).expect("caller checked");
        let Some(op) = agent.queue.pop_front() else {
            return;
        };
        let actual = agent.actual.clone();
        if let Err(e) = self.check(&op, &actual) {
            self.violations.push(format!("{}: {spot}: {e}", self.now));
            // A real agent refuses it and says what it holds.
            self.report(spot, actual);
            self.start_next(spot);
            return;
        }
        // The part of a function preload done after its report.
        let mut unreported = 0;
        let (duration, state, report, phase) = match &op {
            Operation::ExecuteNoPreload { call, .. }
            | Operation::ExecRuntimePreloaded { call, .. }
            | Operation::ExecFunctionPreloaded { call, .. } => {
                let (function_load, run) = self.function_costs(&call.function.name);
                let (kind, cost) = match &op {
                    Operation::ExecuteNoPreload { .. } => (
                        StartKind::Cold,
                        self.costs.runtime_load + function_load + run,
                    ),
                    Operation::ExecRuntimePreloaded { .. } => {
                        (StartKind::PrewarmRuntime, function_load + run)
                    }
                    _ => (
                        StartKind::PrewarmFunction,
                        run + self.agents[spot].warm_at.saturating_sub(self.now),
                    ),
                };
                if let Some(r) = self.calls.get_mut(&call.id) {
                    r.started_at = Some(self.now);
                    r.start = Some(kind);
                    r.spot = Some(spot.clone());
                }
                let running = SpotState::Running {
                    call_id: call.id.clone(),
                };
                (
                    cost,
                    running.clone(),
                    running,
                    Phase::Run {
                        call_id: call.id.clone(),
                    },
                )
            }
            Operation::PreloadRuntime { runtime, .. } => (
                self.costs.runtime_load,
                SpotState::Preloading {
                    runtime: runtime.clone(),
                    function: None,
                },
                SpotState::Preloading {
                    runtime: runtime.clone(),
                    function: None,
                },
                Phase::Preload,
            ),
            Operation::PreloadFunction { function, .. } => (
                {
                    let total = self.costs.runtime_load + self.function_costs(&function.name).0;
                    unreported = self
                        .functions
                        .get(&function.name)
                        .map_or(0, |(s, _)| s.unreported_load)
                        .min(total.saturating_sub(1));
                    total - unreported
                },
                SpotState::Preloading {
                    runtime: function.runtime.clone(),
                    function: Some(function.clone()),
                },
                // The I/O side's report of a preload names no function.
                SpotState::Preloading {
                    runtime: function.runtime.clone(),
                    function: None,
                },
                Phase::Preload,
            ),
            Operation::ClearSpot { .. } => (
                self.costs.clear,
                SpotState::Clearing,
                SpotState::Clearing,
                Phase::Clear,
            ),
        };
        let duration = self.jittered(duration);
        let now = self.now;
        let agent = self.agents.get_mut(spot).expect("caller checked");
        if matches!(op, Operation::PreloadFunction { .. }) {
            agent.warm_at = now + duration + unreported;
        }
        agent.actual = state;
        agent.current = Some((op, phase));
        self.report(spot, report);
        self.schedule_step(spot, duration);
    }

    /// The current phase of the spot's operation ends.
    fn step(&mut self, spot: &SpotId) {
        let agent = self.agents.get_mut(spot).expect("caller checked");
        let Some((op, phase)) = agent.current.take() else {
            return;
        };
        match phase {
            Phase::Run { call_id } => {
                if let Some(r) = self.calls.get_mut(&call_id) {
                    r.finished_at = Some(self.now);
                }
                agent.current = Some((op, Phase::Teardown));
                let teardown = self.jittered(self.costs.teardown);
                self.schedule_step(spot, teardown);
                return;
            }
            Phase::Teardown | Phase::Clear => {
                agent.actual = SpotState::Free;
            }
            Phase::Preload => {
                agent.actual = match op {
                    Operation::PreloadRuntime { runtime, .. }
                        if !self.failing.contains(&runtime) =>
                    {
                        SpotState::PreloadedRuntime { runtime }
                    }
                    Operation::PreloadFunction { function, .. }
                        if !self.failing.contains(&function.name)
                            && !self.failing.contains(&function.runtime) =>
                    {
                        SpotState::PreloadedFunction { function }
                    }
                    _ => SpotState::Free,
                };
            }
        }
        let state = agent.actual.clone();
        self.report(spot, state);
        self.start_next(spot);
    }
}

/// Call patterns, each from its own seeded generator.
pub mod workload {
    use super::{Arrival, Rng};
    use crate::cluster::Millis;

    /// A call every `interval` ms from `start`.
    pub fn fixed_interval(
        function: &str,
        start: Millis,
        interval: Millis,
        count: usize,
    ) -> Vec<Arrival> {
        (0..count)
            .map(|i| Arrival {
                at: start + i as Millis * interval,
                function: function.into(),
            })
            .collect()
    }

    /// Calls separated by gaps drawn uniformly from `[min, max]` ms.
    pub fn uniform_interval(
        function: &str,
        start: Millis,
        min: Millis,
        max: Millis,
        count: usize,
        seed: u64,
    ) -> Vec<Arrival> {
        let mut rng = Rng::new(seed);
        let mut at = start;
        (0..count)
            .map(|_| {
                let a = Arrival {
                    at,
                    function: function.into(),
                };
                at += rng.between(min, max);
                a
            })
            .collect()
    }

    /// A Poisson stream of `rate_per_s` calls per second over `duration`
    /// ms, each for a function drawn by weight.
    pub fn poisson_mix(
        functions: &[(&str, f64)],
        start: Millis,
        rate_per_s: f64,
        duration: Millis,
        seed: u64,
    ) -> Vec<Arrival> {
        let mut rng = Rng::new(seed);
        let weights: Vec<f64> = functions.iter().map(|(_, w)| *w).collect();
        let mut out = Vec::new();
        let mut t = start as f64;
        loop {
            t += rng.exponential(1000.0 / rate_per_s);
            if t >= (start + duration) as f64 {
                return out;
            }
            let i = rng.weighted(&weights);
            out.push(Arrival {
                at: t as Millis,
                function: functions[i].0.into(),
            });
        }
    }

    /// `count` bursts, one every `every` ms from `start`, each of `size`
    /// calls spread uniformly over `spread` ms.
    pub fn bursts(
        function: &str,
        start: Millis,
        every: Millis,
        size: usize,
        spread: Millis,
        count: usize,
        seed: u64,
    ) -> Vec<Arrival> {
        let mut rng = Rng::new(seed);
        let mut out = Vec::new();
        for b in 0..count {
            let base = start + b as Millis * every;
            for _ in 0..size {
                out.push(Arrival {
                    at: base + rng.between(0, spread),
                    function: function.into(),
                });
            }
        }
        out.sort_by_key(|a| a.at);
        out
    }
}

/// The scenarios the policies are compared on (4 nodes × 4 spots, as in the
/// thesis's experiments).
pub mod scenario {
    use super::{workload, Arrival, Costs, FunctionSpec, Rng, Sim, Summary};
    use crate::cluster::Millis;
    use crate::policy::Policy;

    /// A named call pattern over a catalog.
    pub struct Scenario {
        pub name: String,
        pub runtimes: Vec<&'static str>,
        pub functions: Vec<FunctionSpec>,
        pub arrivals: Vec<Arrival>,
        /// Nodes, and spots on each.
        pub layout: (u32, u32),
    }

    /// The thesis's constant load: one function, a call every 0.25 s.
    pub fn interval(seed: u64) -> Scenario {
        let _ = seed;
        Scenario {
            layout: (4, 4),
            name: "interval-0.25s".into(),
            runtimes: vec!["node"],
            functions: vec![FunctionSpec::new("hello", "node")],
            arrivals: workload::fixed_interval("hello", 1000, 250, 400),
        }
    }

    /// The thesis's random load: one function, gaps of 0.1–0.4 s.
    pub fn random(seed: u64) -> Scenario {
        random_gaps(seed, 100, 400)
    }

    /// 400 calls of one function with gaps drawn from `[min, max]` ms (the
    /// thesis's random load scaled to other costs).
    pub fn random_gaps(seed: u64, min: Millis, max: Millis) -> Scenario {
        let fmt = |ms: Millis| {
            if ms >= 100 {
                format!("{}", ms as f64 / 1000.0)
            } else {
                format!("{ms}ms")
            }
        };
        Scenario {
            layout: (4, 4),
            name: format!(
                "random-{}-{}{}",
                fmt(min),
                fmt(max),
                if min >= 100 { "s" } else { "" }
            ),
            runtimes: vec!["node"],
            functions: vec![FunctionSpec::new("hello", "node")],
            arrivals: workload::uniform_interval("hello", 1000, min, max, 400, seed),
        }
    }

    /// Eight functions over two runtimes with Zipf-like popularity (a
    /// Poisson stream of `rate_per_s`), plus bursts of a mid-popularity
    /// function and a shift of the hot set halfway through.
    pub fn mixed(seed: u64, rate_per_s: f64) -> Scenario {
        let names = [
            "py-a", "js-b", "py-c", "js-d", "py-e", "js-f", "py-g", "js-h",
        ];
        let functions = names
            .iter()
            .map(|n| {
                FunctionSpec::new(
                    n,
                    if n.starts_with("py") {
                        "python3"
                    } else {
                        "node"
                    },
                )
            })
            .collect();
        let zipf = |order: &[usize]| -> Vec<(&'static str, f64)> {
            order
                .iter()
                .enumerate()
                .map(|(rank, &i)| (names[i], 1.0 / (rank + 1) as f64))
                .collect()
        };
        let half: Millis = 60_000;
        let mut arrivals = workload::poisson_mix(
            &zipf(&[0, 1, 2, 3, 4, 5, 6, 7]),
            1000,
            rate_per_s,
            half,
            seed,
        );
        arrivals.extend(workload::poisson_mix(
            &zipf(&[3, 2, 1, 0, 7, 6, 5, 4]),
            1000 + half,
            rate_per_s,
            half,
            seed.wrapping_add(1),
        ));
        let burst_size = (rate_per_s * 3.0).round().max(4.0) as usize;
        arrivals.extend(workload::bursts(
            "py-e",
            10_000,
            20_000,
            burst_size,
            600,
            6,
            seed.wrapping_add(2),
        ));
        arrivals.sort_by_key(|a| a.at);
        Scenario {
            layout: (4, 4),
            name: format!("mixed-{rate_per_s}/s"),
            runtimes: vec!["python3", "node"],
            functions,
            arrivals,
        }
    }

    /// faas-workload's `mixed` workload on the real stack (one node, 4
    /// spots): six functions, four on python3 and two on node, with shares
    /// of 35/20/10/5 % and 20/10 %, gaps of 0.1–0.4 s; `calls` calls. Use it
    /// with [`Costs::stack`].
    pub fn stack_mixed(seed: u64, calls: usize) -> Scenario {
        const MIX: [(&str, &str, f64); 6] = [
            ("mix-py-a", "python3", 0.35),
            ("mix-py-b", "python3", 0.20),
            ("mix-py-c", "python3", 0.10),
            ("mix-py-d", "python3", 0.05),
            ("mix-node-a", "node", 0.20),
            ("mix-node-b", "node", 0.10),
        ];
        let functions = MIX
            .iter()
            .map(|(name, runtime, _)| {
                let (load, run) = if *runtime == "node" {
                    (70, 10)
                } else {
                    (18, 5)
                };
                FunctionSpec {
                    function_load: Some(load),
                    run: Some(run),
                    // The runtime's process starts and imports the handler
                    // after the agent reports the preload.
                    unreported_load: load,
                    ..FunctionSpec::new(name, runtime)
                }
            })
            .collect();
        let shares: Vec<f64> = MIX.iter().map(|m| m.2).collect();
        let mut rng = Rng::new(seed);
        let mut at = 1000;
        let arrivals = (0..calls)
            .map(|_| {
                at += rng.between(100, 400);
                Arrival {
                    at,
                    function: MIX[rng.weighted(&shares)].0.into(),
                }
            })
            .collect();
        Scenario {
            name: "stack-mixed".into(),
            runtimes: vec!["python3", "node"],
            functions,
            arrivals,
            layout: (1, 4),
        }
    }

    /// Runs the scenario under the policy on its nodes and spots.
    pub fn run(policy: Box<dyn Policy>, scenario: &Scenario, costs: &Costs, seed: u64) -> Sim {
        let mut sim = Sim::new(policy, costs.clone(), seed);
        for r in &scenario.runtimes {
            sim.register_runtime(r);
        }
        for f in &scenario.functions {
            sim.register_function(f.clone());
        }
        for n in 0..scenario.layout.0 {
            sim.join_node(&format!("n{n}"), scenario.layout.1);
        }
        sim.schedule_arrivals(&scenario.arrivals);
        let last = scenario.arrivals.last().map_or(0, |a| a.at);
        sim.run_to_completion(last + 600_000);
        sim
    }

    /// Runs the scenario and summarises it, with any violations.
    pub fn summarise(
        policy: Box<dyn Policy>,
        scenario: &Scenario,
        costs: &Costs,
        seed: u64,
    ) -> (Summary, Vec<String>) {
        let sim = run(policy, scenario, costs, seed);
        (sim.summary(), sim.violations().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::NoPreload;

    fn spot() -> SpotId {
        SpotId {
            node: "n".into(),
            index: 0,
        }
    }

    #[test]
    fn the_checker_refuses_what_agents_refuse() {
        let mut sim = Sim::new(Box::new(NoPreload), Costs::hot_path(), 1);
        sim.register_runtime("A");
        sim.register_function(FunctionSpec::new("f", "A"));
        let id = sim.arrive("f");
        let call = PendingCall {
            id: id.clone(),
            function: sim.call(&id).expect("arrived").function.clone(),
            arrived_at: 0,
        };
        let v1 = call.function.clone();
        let v0 = FunctionRef {
            version: 0,
            ..v1.clone()
        };
        let exec_fn = Operation::ExecFunctionPreloaded {
            spot: spot(),
            call: call.clone(),
        };
        let exec_rt = Operation::ExecRuntimePreloaded {
            spot: spot(),
            call: call.clone(),
        };
        let preloaded = |f: &FunctionRef| SpotState::PreloadedFunction {
            function: f.clone(),
        };
        assert!(sim.check(&exec_fn, &preloaded(&v1)).is_ok());
        // An older version preloaded must never run.
        assert!(sim.check(&exec_fn, &preloaded(&v0)).is_err());
        assert!(sim.check(&exec_fn, &SpotState::Free).is_err());
        assert!(sim
            .check(
                &exec_rt,
                &SpotState::PreloadedRuntime {
                    runtime: "A".into()
                }
            )
            .is_ok());
        assert!(sim
            .check(
                &exec_rt,
                &SpotState::PreloadedRuntime {
                    runtime: "B".into()
                }
            )
            .is_err());
        let cold = Operation::ExecuteNoPreload { spot: spot(), call };
        assert!(sim.check(&cold, &SpotState::Free).is_ok());
        assert!(sim
            .check(
                &cold,
                &SpotState::PreloadedRuntime {
                    runtime: "A".into()
                }
            )
            .is_err());
        let preload = Operation::PreloadRuntime {
            spot: spot(),
            runtime: "A".into(),
        };
        assert!(sim.check(&preload, &SpotState::Free).is_ok());
        assert!(sim.check(&preload, &preloaded(&v1)).is_err());
        let clear = Operation::ClearSpot { spot: spot() };
        assert!(sim.check(&clear, &preloaded(&v1)).is_ok());
        assert!(sim.check(&clear, &SpotState::Free).is_err());
    }

    #[test]
    fn an_operation_for_a_gone_spot_is_a_violation() {
        let mut sim = Sim::new(Box::new(NoPreload), Costs::hot_path(), 1);
        sim.dispatch(Operation::ClearSpot { spot: spot() });
        assert_eq!(sim.violations().len(), 1);
    }

    #[test]
    fn rng_is_seeded_and_in_range() {
        let mut a = Rng::new(3);
        let mut b = Rng::new(3);
        for _ in 0..1000 {
            let x = a.between(100, 400);
            assert_eq!(x, b.between(100, 400));
            assert!((100..=400).contains(&x));
            let u = a.unit();
            assert!((0.0..1.0).contains(&u));
            b.unit();
        }
    }

    #[test]
    fn summary_percentiles() {
        let records: Vec<CallRecord> = (1..=100)
            .map(|i| CallRecord {
                id: format!("c{i}"),
                function: FunctionRef {
                    name: "f".into(),
                    version: 1,
                    runtime: "A".into(),
                },
                arrived_at: 0,
                started_at: Some(0),
                finished_at: Some(i),
                start: Some(StartKind::Cold),
                spot: None,
                lost: false,
            })
            .collect();
        let s = Summary::from_records(&records);
        assert_eq!((s.p50_ms, s.p99_ms, s.max_ms), (50, 99, 100));
        assert!((s.mean_ms - 50.5).abs() < 1e-9);
        assert_eq!(s.cold_rate(), 1.0);
    }
}
