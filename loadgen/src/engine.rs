//! Running a load: one glommio executor pinned per given CPU, each driving its share of the users and of the
//! rate. Owns the open-loop schedule (operation i of a core is due at start + offset + i / rate_core, sent
//! whether or not earlier ones were answered; latency runs from that due time), the in-flight cap (beyond
//! it an operation is recorded as dropped, never skipped silently), the step protocol of --find-max (cores
//! meet between steps; the last to arrive merges and decides) and the live progress line.
//!
//! A run has one schedule, or (federation) one per partner, each at its share of the rate with its own
//! in-flight cap and tally, so that one partner's backlog neither delays nor drops another's operations.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};

use crate::cli::{bad, Config, ConfigError, Scenario};
use crate::conn::sleep_until;
use crate::scenario::{self, Ctx};
use crate::stats::{self, Outcome, Part, Recorder, StepResult, Tally};

/// Delay between the meeting of the cores and the first due time, so every core starts on time.
const START_DELAY: Duration = Duration::from_millis(50);
/// How often cores publish finished seconds for the progress line.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// Executor io_uring buffer memory (the default 10 MiB exceeds common RLIMIT_MEMLOCK limits).
const IO_MEMORY_BYTES: usize = 2 << 20;

/// What the run produced, merged across cores.
#[derive(Debug)]
pub struct RunResult {
    pub steps: Vec<StepResult>,
    /// Per second since the first measured instant.
    pub seconds: Vec<Tally>,
    pub resumed: u64,
    /// idle: connections still open at the end of the hold.
    pub connections_held: Option<u64>,
}

struct Plan {
    start: Instant,
    rate: f64,
    stop: bool,
}

/// What one core brings to a meeting: its step total, its per-stream totals, and the step's duration.
struct Contribution {
    tally: Tally,
    parts: Vec<Tally>,
    duration_s: f64,
}

#[derive(Default)]
struct Meeting {
    generation: u64,
    arrived: usize,
    contributions: Vec<Contribution>,
    plan: Option<(u64, Arc<Plan>)>,
    /// Rate of the step being run.
    rate: f64,
}

/// State shared by the cores and the main thread. Locks are taken once per second or per step, not per op.
struct Shared {
    cfg: Arc<Config>,
    failed: Mutex<Option<ConfigError>>,
    aborted: AtomicBool,
    meeting: Mutex<Meeting>,
    steps: Mutex<Vec<StepResult>>,
    live: Mutex<Vec<Tally>>,
    clock0: OnceLock<Instant>,
    done: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock means a core panicked; its data is still the best we have.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn abort(&self, e: ConfigError) {
        lock(&self.failed).get_or_insert(e);
        self.aborted.store(true, Ordering::SeqCst);
    }

    /// Waits for all cores at `generation`; the last to arrive merges `contribution`s and plans what follows.
    async fn meet(&self, generation: u64, contribution: Option<Contribution>) -> Result<Arc<Plan>, ()> {
        {
            let mut m = lock(&self.meeting);
            if let Some(c) = contribution {
                m.contributions.push(c);
            }
            m.arrived += 1;
            if m.arrived == self.cfg.cores.len() {
                let contributions = std::mem::take(&mut m.contributions);
                let plan = self.plan(&mut m, contributions);
                m.arrived = 0;
                m.generation = generation + 1;
                m.plan = Some((generation, Arc::new(plan)));
            }
        }
        loop {
            if self.aborted.load(Ordering::SeqCst) {
                return Err(());
            }
            if let Some((g, p)) = &lock(&self.meeting).plan {
                if *g == generation {
                    return Ok(Arc::clone(p));
                }
            }
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Plans the next step; `m.rate` is the rate of the step that just ended (if any).
    fn plan(&self, m: &mut Meeting, contributions: Vec<Contribution>) -> Plan {
        let start = Instant::now() + START_DELAY;
        if contributions.is_empty() {
            m.rate = self.cfg.rate;
            return Plan { start, rate: m.rate, stop: false };
        }
        let mut tally = Tally::default();
        let mut duration_s: f64 = 0.0;
        let mut parts: Vec<Part> = self
            .cfg
            .partners
            .iter()
            .map(|p| Part { name: p.domain.clone(), target_rate: m.rate * p.share, tally: Tally::default() })
            .collect();
        for c in &contributions {
            tally.add(&c.tally);
            duration_s = duration_s.max(c.duration_s);
            for (part, t) in parts.iter_mut().zip(&c.parts) {
                part.tally.add(t);
            }
        }
        let mut steps = lock(&self.steps);
        let mut r = StepResult { target_rate: m.rate, duration_s, tally, held: true, parts };
        if self.cfg.find_max.is_some() {
            r.held = r.meets_slo(self.cfg.slo_p99_ms);
        }
        let stop = self.cfg.find_max.is_none() || !r.held || steps.len() + 1 >= self.cfg.steps_max;
        steps.push(r);
        m.rate = self.cfg.find_max.map_or(m.rate, |s| s.next(m.rate));
        Plan { start, rate: m.rate, stop }
    }
}

/// Per-core recording, shared by the op tasks of that core.
struct Core {
    ctx: Ctx,
    rec: RefCell<Recorder>,
    /// Per stream (see `shares`): operations sent and not yet finished, and (federation) the step's tally.
    in_flight: Vec<Cell<usize>>,
    parts: RefCell<Vec<Tally>>,
    clock0: Cell<Option<Instant>>,
    published: Cell<usize>,
    /// idle: the connections opened and held.
    idle_conns: RefCell<Vec<Rc<crate::conn::SipConn>>>,
}

/// The streams of a run, as shares of the rate: one per federation partner, else one.
fn shares(cfg: &Config) -> Vec<f64> {
    if cfg.partners.is_empty() {
        vec![1.0]
    } else {
        cfg.partners.iter().map(|p| p.share).collect()
    }
}

impl Core {
    fn record(&self, outcome: Outcome, due: Instant, stream: usize) {
        let Some(c0) = self.clock0.get() else { return };
        let now = Instant::now();
        if due < c0 {
            return; // warm-up
        }
        let at = now.saturating_duration_since(c0).as_secs() as usize;
        let latency = now.saturating_duration_since(due);
        self.rec.borrow_mut().record(outcome, latency, at);
        if let Some(t) = self.parts.borrow_mut().get_mut(stream) {
            t.record(outcome, latency);
        }
    }

    /// Adds finished seconds (all when `all`) to the shared per-second tallies.
    fn publish(&self, shared: &Shared, all: bool) {
        let Some(c0) = self.clock0.get() else { return };
        let now_s = Instant::now().saturating_duration_since(c0).as_secs() as usize;
        let rec = self.rec.borrow();
        let upto = if all { rec.seconds.len() } else { now_s.min(rec.seconds.len()) };
        let from = self.published.get();
        if upto <= from {
            return;
        }
        stats::add_seconds_at(&mut lock(&shared.live), rec.seconds.get(from..upto).unwrap_or(&[]), from);
        self.published.set(upto);
    }
}

/// Runs the configured scenario to completion. Err: a configuration problem, in one sentence.
pub fn run(cfg: Config) -> Result<RunResult, ConfigError> {
    raise_fd_limit();
    let cfg = Arc::new(cfg);
    let shared = Arc::new(Shared {
        cfg: Arc::clone(&cfg),
        failed: Mutex::new(None),
        aborted: AtomicBool::new(false),
        meeting: Mutex::new(Meeting::default()),
        steps: Mutex::new(Vec::new()),
        live: Mutex::new(Vec::new()),
        clock0: OnceLock::new(),
        done: AtomicUsize::new(0),
    });
    let mut handles = Vec::new();
    for (k, &cpu) in cfg.cores.iter().enumerate() {
        let sh = Arc::clone(&shared);
        let h = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("loadgen-{k}"))
            .io_memory(IO_MEMORY_BYTES)
            .spawn(move || async move {
                let out = core_main(Arc::clone(&sh), k).await;
                sh.done.fetch_add(1, Ordering::SeqCst);
                out
            })
            .map_err(|e| bad(format!("Cannot start an executor on CPU {cpu}: {e}.")))?;
        handles.push(h);
    }
    progress_loop(&shared);
    let mut resumed = 0;
    let mut held: Option<u64> = None;
    for h in handles {
        match h.join() {
            Ok(Some((r, hc))) => {
                resumed += r;
                if let Some(n) = hc {
                    *held.get_or_insert(0) += n;
                }
            }
            Ok(None) => {}
            Err(e) => shared.abort(bad(format!("An executor failed: {e}."))),
        }
    }
    if let Some(e) = lock(&shared.failed).take() {
        return Err(e);
    }
    let steps = std::mem::take(&mut *lock(&shared.steps));
    let seconds = std::mem::take(&mut *lock(&shared.live));
    Ok(RunResult { steps, seconds, resumed, connections_held: held })
}

fn progress_loop(shared: &Shared) {
    let mut printed = 0usize;
    while shared.done.load(Ordering::SeqCst) < shared.cfg.cores.len() {
        std::thread::sleep(Duration::from_millis(100));
        let Some(c0) = shared.clock0.get() else { continue };
        let elapsed = Instant::now().saturating_duration_since(*c0);
        while elapsed >= Duration::from_secs(printed as u64 + 1) + 2 * PUBLISH_EVERY {
            let live = lock(&shared.live);
            if let Some(t) = live.get(printed) {
                eprintln!("{}", progress_line(printed, t));
            }
            printed += 1;
        }
    }
    // The last seconds, published when the cores finished.
    let live = lock(&shared.live);
    for (i, t) in live.iter().enumerate().skip(printed) {
        eprintln!("{}", progress_line(i, t));
    }
}

pub fn progress_line(second: usize, t: &Tally) -> String {
    let l = t.latency();
    format!(
        "[{:>4}s] {:>8} ops/s  p50 {:>8.3} ms  p99 {:>8.3} ms  errors {}  timeouts {}  dropped {}",
        second + 1,
        t.completed(),
        l.p50,
        l.p99,
        t.error_count(),
        t.timeouts,
        t.dropped
    )
}

/// One core: setup, then steps until the plan says stop. Returns (resumed handshakes, idle connections held).
async fn core_main(shared: Arc<Shared>, k: usize) -> Option<(u64, Option<u64>)> {
    let cfg = Arc::clone(&shared.cfg);
    let mut ctx = match Ctx::new(Arc::clone(&cfg), k) {
        Ok(c) => c,
        Err(e) => {
            shared.abort(e);
            return None;
        }
    };
    if cfg.scenario != Scenario::Idle {
        if let Err(e) = scenario::setup(&mut ctx, cfg.scenario).await {
            shared.abort(e);
            return None;
        }
    }
    let streams = shares(&cfg).len();
    let core = Rc::new(Core {
        ctx,
        rec: RefCell::new(Recorder::default()),
        in_flight: (0..streams).map(|_| Cell::new(0)).collect(),
        parts: RefCell::new(Vec::new()),
        clock0: Cell::new(None),
        published: Cell::new(0),
        idle_conns: RefCell::new(Vec::new()),
    });
    let publisher = {
        let (core, shared) = (Rc::clone(&core), Arc::clone(&shared));
        glommio::spawn_local(async move {
            loop {
                glommio::timer::sleep(PUBLISH_EVERY).await;
                core.publish(&shared, false);
            }
        })
    };
    let mut generation = 0;
    let mut plan = shared.meet(generation, None).await.ok()?;
    let mut first = true;
    let mut held = None;
    loop {
        let measure_from = if first && cfg.scenario != Scenario::Idle { plan.start + cfg.warmup } else { plan.start };
        if first {
            let c0 = *shared.clock0.get_or_init(|| measure_from);
            core.clock0.set(Some(c0));
        }
        first = false;
        core.rec.borrow_mut().total = Tally::default();
        *core.parts.borrow_mut() = cfg.partners.iter().map(|_| Tally::default()).collect();
        let elapsed = if cfg.scenario == Scenario::Idle {
            sleep_until(plan.start).await;
            let t0 = Instant::now();
            idle(&core, &shared).await?;
            let setup = t0.elapsed();
            sleep_until(Instant::now() + cfg.duration).await;
            held = Some(core.idle_conns.borrow().iter().filter(|c| c.is_alive()).count() as u64);
            setup.as_secs_f64()
        } else {
            schedule(&core, &plan, measure_from).await;
            cfg.duration.as_secs_f64()
        };
        core.publish(&shared, true);
        let tally = core.rec.borrow().total.clone();
        let parts = core.parts.borrow().clone();
        generation += 1;
        plan = shared.meet(generation, Some(Contribution { tally, parts, duration_s: elapsed })).await.ok()?;
        if plan.stop {
            break;
        }
    }
    drop(publisher);
    for c in core.ctx.conns.iter().chain(core.ctx.partners.iter()).chain(core.idle_conns.borrow().iter()) {
        c.close();
    }
    Some((core.ctx.resumed.get(), held))
}

/// The open loop of one step: this core's share of `plan.rate` from `plan.start` until the measured window
/// [measure_from, measure_from + duration) ends, one loop per stream, then waits for what is in flight (bounded by
/// the timeout).
async fn schedule(core: &Rc<Core>, plan: &Plan, measure_from: Instant) {
    let cfg = &core.ctx.cfg;
    let end = measure_from + cfg.duration;
    // presence: NOTIFYs received by this core's watchers during [measure_from, end).
    let notify_counter = (cfg.scenario == Scenario::Presence).then(|| {
        let c = Rc::clone(core);
        glommio::spawn_local(async move {
            let sum = || c.ctx.conns.iter().map(|x| x.notifies.get()).sum::<u64>();
            sleep_until(measure_from).await;
            let first = sum();
            sleep_until(end).await;
            sum().saturating_sub(first)
        })
    });
    let loops: Vec<_> = shares(cfg)
        .into_iter()
        .enumerate()
        .map(|(k, share)| stream_loop(core, plan, end, k, plan.rate * share))
        .collect();
    scenario::join_all(loops).await;
    let drain_until = Instant::now() + cfg.timeout + Duration::from_secs(1);
    while core.in_flight.iter().any(|n| n.get() > 0) && Instant::now() < drain_until {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    if let Some(t) = notify_counter {
        let n = t.await;
        core.rec.borrow_mut().total.notifies = n;
    }
}

/// Stream `k` of this core at `rate` (all cores together) until `end`: each operation is spawned at its due time
/// unless the stream's in-flight cap is reached, which records it as dropped.
async fn stream_loop(core: &Rc<Core>, plan: &Plan, end: Instant, k: usize, rate: f64) {
    let cfg = &core.ctx.cfg;
    let n = cfg.cores.len();
    let interval = Duration::from_secs_f64(n as f64 / rate);
    let offset = interval.mul_f64(core.ctx.core_index as f64 / n as f64);
    let cap = (cfg.in_flight_max() / n).max(1);
    let Some(in_flight) = core.in_flight.get(k) else { return };
    let mut i: u64 = 0;
    loop {
        let due = plan.start + offset + interval.mul_f64(i as f64);
        if due >= end {
            break;
        }
        if due > Instant::now() + Duration::from_micros(50) {
            sleep_until(due).await;
        } else if i.is_multiple_of(64) {
            glommio::yield_if_needed().await;
        }
        if in_flight.get() >= cap {
            core.record(Outcome::Dropped, due, k);
        } else {
            in_flight.set(in_flight.get() + 1);
            let c = Rc::clone(core);
            glommio::spawn_local(async move {
                let o = op(&c, i, due, k).await;
                c.record(o, due, k);
                if let Some(f) = c.in_flight.get(k) {
                    f.set(f.get().saturating_sub(1));
                }
            })
            .detach();
        }
        i += 1;
    }
}

/// Operation `i` of this core's stream `stream`, due at `due`.
async fn op(core: &Core, i: u64, due: Instant, stream: usize) -> Outcome {
    let ctx = &core.ctx;
    let deadline = due + ctx.cfg.timeout;
    let conns = &ctx.conns;
    let len = conns.len().max(1) as u64;
    let pick = |j: u64| conns.get((j % len) as usize);
    let source = (i as usize).wrapping_mul(ctx.cfg.cores.len()) + ctx.core_index;
    let measured = core.clock0.get().is_some_and(|c0| due >= c0);
    match ctx.cfg.scenario {
        Scenario::Register => match pick(i) {
            Some(c) => scenario::register_op(ctx, c, false, deadline).await,
            None => Outcome::Transport,
        },
        Scenario::Im => match (pick(i), pick(i + 1)) {
            (Some(a), Some(b)) => scenario::message_op(ctx, a, b, deadline).await,
            _ => Outcome::Transport,
        },
        Scenario::Handshake => scenario::handshake_op(ctx, source, ctx.cfg.resume, measured, deadline).await,
        Scenario::Mix => match (i % 10, pick(i / 10 * 7 + i % 10), pick(i / 10 * 7 + i % 10 + 1)) {
            (0..=6, Some(a), Some(b)) => scenario::message_op(ctx, a, b, deadline).await,
            (7 | 8, Some(a), _) => scenario::register_op(ctx, a, true, deadline).await,
            (9, _, _) => scenario::handshake_op(ctx, source, false, measured, deadline).await,
            _ => Outcome::Transport,
        },
        Scenario::Presence => {
            let np = ctx.presentities.max(1) as u64;
            match (ctx.presentities > 0).then(|| pick(i % np)).flatten() {
                Some(c) => scenario::publish_op(ctx, c, (i / np).is_multiple_of(2), i / np, deadline).await,
                None => Outcome::Transport,
            }
        }
        Scenario::Federation => match pick(i) {
            Some(to) => scenario::federation_op(ctx, stream, to, deadline).await,
            None => Outcome::Transport,
        },
        Scenario::Idle => Outcome::Transport,
    }
}

/// idle: open and register this core's users (at most SETUP_IN_FLIGHT_MAX at a time), recording each as an
/// operation timed from its own start. The first user's rejection is a configuration error.
async fn idle(core: &Rc<Core>, shared: &Shared) -> Option<()> {
    let users: Vec<usize> = core.ctx.my_users().collect();
    let mut conns = Vec::with_capacity(users.len());
    for chunk in users.chunks(scenario::SETUP_IN_FLIGHT_MAX) {
        let futs: Vec<_> = chunk
            .iter()
            .map(|&u| async move {
                let t = Instant::now();
                (u, t, scenario::setup_user(&core.ctx, u, true).await)
            })
            .collect();
        for (u, t, r) in scenario::join_all(futs).await {
            match r {
                Ok(c) => {
                    core.record(Outcome::Ok, t, 0);
                    conns.push(c);
                }
                Err(e) if u == 0 => {
                    shared.abort(e);
                    return None;
                }
                Err(_) => core.record(Outcome::Transport, t, 0),
            }
        }
    }
    core.idle_conns.replace(conns);
    Some(())
}

fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit on a stack struct; failure only leaves the limit as it was.
    unsafe {
        let mut l = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}
