//! Executors per core and the cross-core mesh.
//!
//! Owns: starting one glommio executor per configured CPU (pinned), the full mesh of bounded channels between
//! them, sizing glommio's locked io memory from RLIMIT_MEMLOCK, and `shard_for` (which core owns a key).
//! Does not own: what runs on a core (edge, pool) — they receive a [`Shard`] and build their per-core state.
//!
//! Architecture invariant: cores share no mutable state; the mesh is the only channel between them.
//! Architecture invariant: no process goes on with a dead core ([`watch`]).

pub mod published;
pub mod watch;

use std::future::Future;
use std::io;

use glommio::channels::channel_mesh::{MeshBuilder, Receivers, Senders};
use glommio::{LocalExecutorBuilder, Placement};

/// glommio needs at least this much locked memory per executor (its own docs and our measurements).
pub const IO_MEMORY_MIN: usize = 512 * 1024;
/// glommio's default; more buys nothing for network work.
pub const IO_MEMORY_DEFAULT: usize = 10 * 1024 * 1024;

/// Set once by the process lifecycle (SIGTERM); every core polls it and drains.
static DRAIN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Asks every core of this process to stop accepting and drain.
pub fn request_drain() {
    DRAIN.store(true, std::sync::atomic::Ordering::Release);
}

pub fn draining() -> bool {
    DRAIN.load(std::sync::atomic::Ordering::Acquire)
}

/// Completes when a drain has been requested (polled: a shutdown may take 100 ms to notice, the data path pays
/// nothing).
pub async fn drain_requested() {
    while !draining() {
        glommio::timer::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Waits until `idle()` holds or `timeout` passes; returns whether it held.
pub async fn wait_until(timeout: std::time::Duration, idle: impl Fn() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while !idle() {
        if std::time::Instant::now() >= deadline {
            return false;
        }
        glommio::timer::sleep(std::time::Duration::from_millis(20)).await;
    }
    true
}

/// What a core is handed when its executor starts.
pub struct Shard<M: Send + 'static> {
    pub id: usize,
    pub count: usize,
    pub senders: Senders<M>,
    pub receivers: Receivers<M>,
}

/// Which of `n` cores owns `key` (FNV-1a: stable across processes and releases, unlike `DefaultHasher`).
pub fn shard_for(key: &[u8], n: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    if n == 0 {
        0
    } else {
        (h % n as u64) as usize
    }
}

/// Locked memory available to this process, per executor, or an error telling the operator what to raise.
/// `share` is the number of processes of ours expected to draw on the same per-user limit.
pub fn io_memory_per_executor(executors: usize, share: usize) -> Result<usize, String> {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut rl) };
    if rc != 0 || rl.rlim_cur == libc::RLIM_INFINITY {
        return Ok(IO_MEMORY_DEFAULT);
    }
    let limit = rl.rlim_cur as usize;
    let per = limit / executors.max(1) / share.max(1);
    // Checked even with CAP_IPC_LOCK: in a user namespace (a container's root) the capability does not lift the
    // limit the kernel charges io_uring's rings to, and below it glommio's executors hang at start, silently.
    if per < IO_MEMORY_MIN {
        return Err(format!(
            "RLIMIT_MEMLOCK is {} KiB; {} executor(s) need at least {} KiB each for io_uring: raise it \
             (`ulimit -l {}` in the shell, LimitMEMLOCK= in a systemd unit; see tuning/README.md)",
            limit / 1024,
            executors * share.max(1),
            IO_MEMORY_MIN / 1024,
            executors * share.max(1) * IO_MEMORY_DEFAULT / 1024
        ));
    }
    if has_cap_ipc_lock() {
        return Ok(IO_MEMORY_DEFAULT);
    }
    Ok(per.min(IO_MEMORY_DEFAULT))
}

fn has_cap_ipc_lock() -> bool {
    const CAP_IPC_LOCK: u32 = 14;
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// Starts one executor per entry of `cores`, pinned to that CPU, all joined in one mesh, and runs `body` on each.
/// Returns the join handles; `body` returning ends that executor, which ends the process unless a drain was
/// requested, and a panic on a core ends the process ([`watch`]).
pub fn start<M, F, Fut>(
    name: &'static str,
    cores: &[usize],
    mesh_capacity: usize,
    io_memory: usize,
    body: F,
) -> io::Result<Vec<glommio::ExecutorJoinHandle<()>>>
where
    M: Send + 'static,
    F: Fn(Shard<M>) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = ()> + 'static,
{
    watch::exit_on_panic();
    watch::expect_cores(cores.len());
    let mesh = MeshBuilder::<M, _>::full(cores.len(), mesh_capacity);
    let mut handles = Vec::with_capacity(cores.len());
    for &cpu in cores {
        let mesh = mesh.clone();
        let body = body.clone();
        let count = cores.len();
        let h = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("{name}-{cpu}"))
            .io_memory(io_memory)
            .spawn(move || async move {
                let (senders, receivers) = match mesh.join().await {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::error!("{name} on CPU {cpu}: could not join the mesh: {e}");
                        watch::stopped(name, None);
                        return;
                    }
                };
                let id = senders.peer_id();
                let alive = watch::core_started(name, id);
                body(Shard { id, count, senders, receivers }).await;
                drop(alive);
                watch::stopped(name, Some(id));
            })
            .map_err(|e| io::Error::other(format!("starting executor on CPU {cpu}: {e}")))?;
        handles.push(h);
    }
    Ok(handles)
}

/// [`start`] for a role whose cores all run `run` with the same shared settings.
pub fn start_role<M, S, F, Fut>(
    name: &'static str,
    cores: &[usize],
    mesh_capacity: usize,
    io_memory: usize,
    settings: std::sync::Arc<S>,
    run: F,
) -> io::Result<Vec<glommio::ExecutorJoinHandle<()>>>
where
    M: Send + 'static,
    S: Send + Sync + 'static,
    F: Fn(Shard<M>, std::sync::Arc<S>) -> Fut + Send + Clone + 'static,
    Fut: Future<Output = ()> + 'static,
{
    start(name, cores, mesh_capacity, io_memory, move |shard| run(shard, settings.clone()))
}

/// Starts one executor per entry of `cores`, pinned to that CPU, each running two roles: `a`'s core and `b`'s
/// core share the thread (co-located roles, e.g. the edge and the pool in one process), each role with its own
/// mesh and body. Everything [`start`] guarantees holds for each role: a body returning before a drain, or a panic,
/// ends the process. Roles on one thread can reach each other without a socket ([`crate::net::local`]).
#[allow(clippy::too_many_arguments)]
pub fn start_pair<A, B, FA, FB, FutA, FutB>(
    names: (&'static str, &'static str),
    cores: &[usize],
    mesh_capacity: (usize, usize),
    io_memory: usize,
    body_a: FA,
    body_b: FB,
) -> io::Result<Vec<glommio::ExecutorJoinHandle<()>>>
where
    A: Send + 'static,
    B: Send + 'static,
    FA: Fn(Shard<A>) -> FutA + Send + Clone + 'static,
    FB: Fn(Shard<B>) -> FutB + Send + Clone + 'static,
    FutA: Future<Output = ()> + 'static,
    FutB: Future<Output = ()> + 'static,
{
    watch::exit_on_panic();
    // Two roles per executor, each beating on its own.
    watch::expect_cores(2 * cores.len());
    let (name_a, name_b) = names;
    let mesh_a = MeshBuilder::<A, _>::full(cores.len(), mesh_capacity.0);
    let mesh_b = MeshBuilder::<B, _>::full(cores.len(), mesh_capacity.1);
    let mut handles = Vec::with_capacity(cores.len());
    for &cpu in cores {
        let (mesh_a, mesh_b) = (mesh_a.clone(), mesh_b.clone());
        let (body_a, body_b) = (body_a.clone(), body_b.clone());
        let count = cores.len();
        let h = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("{name_a}+{name_b}-{cpu}"))
            .io_memory(io_memory)
            .spawn(move || async move {
                // Every executor joins the meshes in the same order, so none waits on another joining the other.
                let joined = match mesh_a.join().await {
                    Ok(a) => mesh_b.join().await.map(|b| (a, b)),
                    Err(e) => Err(e),
                };
                let ((sa, ra), (sb, rb)) = match joined {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::error!("{name_a}+{name_b} on CPU {cpu}: could not join the meshes: {e}");
                        watch::stopped(name_a, None);
                        return;
                    }
                };
                let (id_a, id_b) = (sa.peer_id(), sb.peer_id());
                let alive_a = watch::core_started(name_a, id_a);
                let alive_b = watch::core_started(name_b, id_b);
                watch::name_thread(name_a, name_b, id_a);
                // Each body sets up (its listeners offered on this thread) before its first await, and connections
                // are made in tasks of their own: both roles serve before either's first connection looks.
                let task_b = glommio::spawn_local(async move {
                    body_b(Shard { id: id_b, count, senders: sb, receivers: rb }).await;
                    drop(alive_b);
                    watch::stopped(name_b, Some(id_b));
                });
                body_a(Shard { id: id_a, count, senders: sa, receivers: ra }).await;
                drop(alive_a);
                watch::stopped(name_a, Some(id_a));
                task_b.await;
            })
            .map_err(|e| io::Error::other(format!("starting executor on CPU {cpu}: {e}")))?;
        handles.push(h);
    }
    Ok(handles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_for_is_stable_and_in_range() {
        assert_eq!(shard_for(b"alice@example.com", 2), shard_for(b"alice@example.com", 2));
        for n in 1..8 {
            assert!(shard_for(b"bob@example.com", n) < n);
        }
        assert_eq!(shard_for(b"x", 0), 0);
    }
}
