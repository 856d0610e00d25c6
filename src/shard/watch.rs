//! No process goes on with a dead core.
//!
//! A core is one executor thread; when it dies the process must not keep serving with the cores left (its flows,
//! bindings and mesh peers are gone, and every message for it is lost). So:
//! - any panic ends the process at once ([`exit_on_panic`]): glommio closes a task whose poll panics and lets the
//!   panic unwind out of the executor, which ends that thread only; the hook runs first, on the panicking thread,
//!   logs which core it was, and exits with [`PANIC_EXIT_CODE`] (release builds also have `panic = "abort"`);
//! - a core whose body returns before a drain was asked for ends the process too ([`stopped`]);
//! - each core beats once a second, and `/health` answers 503 when a core stopped or has not beaten for
//!   [`STALL`] ([`health`]), so a core stuck in a loop is not reported "ok" either.
//!
//! Debug builds only: `POST /debug/panic?core=N` on the management listener makes core N panic inside a spawned
//! task, the way the end-to-end tests kill one core on purpose ([`request_panic`]).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Exit status of a process ended by a panic (the status Rust gives a panicking main thread).
pub const PANIC_EXIT_CODE: i32 = 101;
/// Exit status of a process one of whose cores stopped without a panic.
pub const CORE_STOPPED_EXIT_CODE: i32 = 70;
/// How often a core beats.
const BEAT: Duration = Duration::from_secs(1);
/// A core that has not beaten for this long is reported unresponsive by `/health` (generous: a loaded machine
/// may delay a timer by a second or two, and a false alarm would have an orchestrator restart a healthy process).
pub const STALL: Duration = Duration::from_secs(10);

thread_local! {
    /// The role and core id this executor thread runs (None on other threads).
    static CORE: Cell<Option<(&'static str, usize)>> = const { Cell::new(None) };
}

/// One core's liveness, written by that core, read by `/health`.
struct Beat {
    role: &'static str,
    id: usize,
    /// Milliseconds since [`epoch`] at the last beat.
    last_ms: AtomicU64,
    stopped: AtomicBool,
}

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

fn beats() -> &'static Mutex<Vec<Arc<Beat>>> {
    static BEATS: Mutex<Vec<Arc<Beat>>> = Mutex::new(Vec::new());
    &BEATS
}

/// Cores started by [`super::start`] in this process, whether or not they have begun running yet.
static EXPECTED: AtomicUsize = AtomicUsize::new(0);

pub(super) fn expect_cores(n: usize) {
    EXPECTED.fetch_add(n, Ordering::AcqRel);
}

/// The role and core id of the calling thread, when it is an executor.
pub fn current_core() -> Option<(&'static str, usize)> {
    CORE.with(Cell::get)
}

/// Installs (once per process) the panic hook that ends the process when any thread panics.
///
/// Any thread, not only the executors: the management thread or the store thread dying would leave the process
/// serving without metrics or without its store, just as silently.
pub fn exit_on_panic() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            match current_core() {
                Some((role, core)) => {
                    tracing::error!(
                        role,
                        core,
                        "{role} core {core} panicked: {info}; exiting: a process does not go on with a dead core"
                    )
                }
                None => {
                    let t = std::thread::current();
                    let thread = t.name().unwrap_or("unnamed");
                    tracing::error!(thread, "thread {thread} panicked: {info}; exiting")
                }
            }
            // The standard report (location, backtrace when RUST_BACKTRACE is set) on stderr.
            default(info);
            // _exit, not exit: the other cores are still running, and exit's atexit handlers and stdio flushing
            // must not race them; our logs are already written (stderr is unbuffered).
            // SAFETY: _exit only ends the process; it touches no Rust state.
            unsafe { libc::_exit(PANIC_EXIT_CODE) }
        }));
    });
}

/// Marks the calling executor thread as `role`'s core `id` and starts its heartbeat (a task of its own, so that a
/// core whose tasks stop being scheduled stops beating). Returns the guard to keep for the core's lifetime.
pub(super) fn core_started(role: &'static str, id: usize) -> CoreGuard {
    CORE.with(|c| c.set(Some((role, id))));
    let beat = Arc::new(Beat { role, id, last_ms: AtomicU64::new(now_ms()), stopped: AtomicBool::new(false) });
    if let Ok(mut b) = beats().lock() {
        b.push(beat.clone());
    }
    let task_beat = beat.clone();
    glommio::spawn_local(async move {
        loop {
            glommio::timer::sleep(BEAT).await;
            task_beat.last_ms.store(now_ms(), Ordering::Relaxed);
            #[cfg(debug_assertions)]
            if PANIC_CORE.load(Ordering::Acquire) == task_beat.id {
                panic!(
                    "{} core {}: panic requested through POST /debug/panic (debug build)",
                    task_beat.role, task_beat.id
                );
            }
        }
    })
    .detach();
    CoreGuard(beat)
}

/// An executor running two roles' cores ([`super::start_pair`]): the panic hook names both.
pub(super) fn name_thread(a: &'static str, b: &'static str, id: usize) {
    let both: &'static str = match (a, b) {
        ("edge", "pool") => "edge+pool",
        ("pool", "edge") => "pool+edge",
        // Leaks one short string per executor thread started, once: names are static in the hook's table.
        _ => Box::leak(format!("{a}+{b}").into_boxed_str()),
    };
    CORE.with(|c| c.set(Some((both, id))));
}

/// Marks its core stopped when the executor's body ends (normally or not).
pub(super) struct CoreGuard(Arc<Beat>);

impl Drop for CoreGuard {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::Release);
    }
}

/// A core's body returned (or, `core` = None, an executor could not join the mesh): fine during a drain; otherwise
/// the core is gone and so must the process be.
pub(super) fn stopped(role: &'static str, core: Option<usize>) {
    if super::draining() {
        return;
    }
    let core = core.map_or_else(|| "(before joining the mesh)".to_string(), |id| id.to_string());
    tracing::error!(
        role,
        core,
        "{role} core {core} stopped on its own; exiting: a process does not go on with a dead core"
    );
    // SAFETY: as in the panic hook.
    unsafe { libc::_exit(CORE_STOPPED_EXIT_CODE) }
}

/// Ends the process when its cores have not all started within `deadline` (checked on a thread of its own):
/// an executor that cannot set up io_uring (locked memory exhausted: RLIMIT_MEMLOCK is charged per user, so other
/// processes of the same user count) blocks the others' start for good, and a process must fail, not hang.
pub fn fail_unless_started(deadline: Duration) {
    let spawned = std::thread::Builder::new().name("start-watch".into()).spawn(move || {
        let t0 = Instant::now();
        loop {
            let (running, expected) = (beats().lock().map_or(0, |b| b.len()), EXPECTED.load(Ordering::Acquire));
            if running >= expected {
                return;
            }
            if t0.elapsed() >= deadline {
                tracing::error!(
                    "only {running} of {expected} cores started within {deadline:?}: exiting. Most likely io_uring \
                     could not lock its memory: RLIMIT_MEMLOCK is {} KiB and is shared by every process of this \
                     user (raise it: `ulimit -l`, LimitMEMLOCK=; `parapet doctor -c FILE` checks it)",
                    memlock_kib()
                );
                // SAFETY: as in the panic hook.
                unsafe { libc::_exit(CORE_STOPPED_EXIT_CODE) }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("start watch not running: {e}");
    }
}

fn memlock_kib() -> u64 {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) } != 0 {
        return 0;
    }
    rl.rlim_cur / 1024
}

/// `/health`: Ok when every core started in this process is running and beating; else why not.
pub fn health() -> Result<(), String> {
    if super::draining() {
        return Err("draining".into());
    }
    let Ok(beats) = beats().lock() else { return Err("core table unavailable".into()) };
    judge(&beats, EXPECTED.load(Ordering::Acquire), now_ms())
}

fn judge(beats: &[Arc<Beat>], expected: usize, now_ms: u64) -> Result<(), String> {
    if beats.len() < expected {
        return Err(format!("starting: {} of {expected} cores running", beats.len()));
    }
    let mut bad = Vec::new();
    for b in beats {
        let quiet = now_ms.saturating_sub(b.last_ms.load(Ordering::Relaxed));
        if b.stopped.load(Ordering::Acquire) {
            bad.push(format!("{} core {} stopped", b.role, b.id));
        } else if quiet > STALL.as_millis() as u64 {
            bad.push(format!("{} core {} unresponsive for {} s", b.role, b.id, quiet / 1000));
        }
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad.join("; "))
    }
}

/// Debug builds: the core whose heartbeat is to panic (usize::MAX: none).
#[cfg(debug_assertions)]
static PANIC_CORE: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Debug builds only: makes core `id` (of every role in this process) panic at its next beat, inside a spawned
/// task. How the end-to-end tests kill one core; release builds have no such door.
#[cfg(debug_assertions)]
pub fn request_panic(id: usize) {
    PANIC_CORE.store(id, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_reports_a_missing_stopped_or_silent_core() {
        let beat = |id, last_ms| {
            Arc::new(Beat { role: "edge", id, last_ms: AtomicU64::new(last_ms), stopped: AtomicBool::new(false) })
        };
        let cores = vec![beat(0, 1_000), beat(1, 1_000)];
        assert_eq!(judge(&cores, 2, 2_000), Ok(()));
        assert_eq!(judge(&cores[..1], 2, 2_000), Err("starting: 1 of 2 cores running".to_string()));
        let silent = 1_000 + STALL.as_millis() as u64 + 1_000;
        assert_eq!(judge(&cores, 2, silent).map_err(|e| e.contains("unresponsive")), Err(true));
        let guard = CoreGuard(cores[1].clone());
        drop(guard);
        assert_eq!(judge(&cores, 2, 2_000), Err("edge core 1 stopped".to_string()));
    }
}
