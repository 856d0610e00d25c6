//! `parapet up`'s role processes, supervised: a role that dies (non-zero exit or a signal: a panic, a dead core,
//! the OOM killer) is started again after a short back-off, each restart logged; more than [`RESTARTS_MAX`] within
//! [`RESTART_WINDOW`] and `up` gives up loudly, stopping everything. A role that exits 0 was told to stop by
//! someone (SIGTERM to its pid): `up` does not fight that, it stops the appliance.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Restarts of one role allowed within [`RESTART_WINDOW`]; the next death ends `up`.
pub const RESTARTS_MAX: usize = 5;
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// Back-off before the first restart within the window; doubled for each further one (0.5, 1, 2, 4, 8 s).
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
/// Longer than a role's own drain deadline, so children exit by themselves.
const STOP_GRACE: Duration = Duration::from_secs(12);

/// One role process (`parapet run -c <config>`, or `-c` per role for co-located roles) and its restart history.
pub struct Role {
    pub name: &'static str,
    configs: Vec<PathBuf>,
    child: Option<Child>,
    /// When it was restarted, within the last [`RESTART_WINDOW`].
    restarts: VecDeque<Instant>,
    /// When a dead role is due to be started again.
    due: Option<Instant>,
}

impl Role {
    pub fn start(name: &'static str, config: &Path) -> Result<Role, String> {
        Role::start_many(name, &[config.to_path_buf()])
    }

    /// One process running the roles of several config files (`parapet run -c A -c B`).
    pub fn start_many(name: &'static str, configs: &[PathBuf]) -> Result<Role, String> {
        let child = spawn(configs)?;
        Ok(Role { name, configs: configs.to_vec(), child: Some(child), restarts: VecDeque::new(), due: None })
    }

    /// Its exit status, if it has exited (reaped: asked once per death).
    fn exited(&mut self) -> Option<ExitStatus> {
        let st = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())?;
        self.child = None;
        Some(st)
    }
}

fn spawn(configs: &[PathBuf]) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("up: cannot find my own binary: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.arg("run");
    for c in configs {
        cmd.arg("-c").arg(c);
    }
    // Every process of `up` but a co-located one shares the locked-memory limit with another.
    let share = if configs.len() > 1 { "1" } else { "2" };
    cmd.env("PARAPET_MEMLOCK_SHARE", share).stdin(Stdio::null());
    // SAFETY: prctl is async-signal-safe; it makes the child stop when `up` dies, even by SIGKILL.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let names: Vec<String> = configs.iter().map(|c| c.display().to_string()).collect();
    cmd.spawn().map_err(|e| format!("up: cannot start {}: {e}", names.join(" + ")))
}

/// Waits until every address accepts connections; an exited role or the timeout is an error.
pub fn wait_ready(roles: &mut [Role], addrs: &[SocketAddr], timeout: Duration) -> Result<(), String> {
    let start = Instant::now();
    loop {
        for r in roles.iter_mut() {
            if let Some(st) = r.exited() {
                return Err(format!("up: the {} process failed to start ({st}; see its log above)", r.name));
            }
        }
        if addrs.iter().all(|a| TcpStream::connect_timeout(a, Duration::from_millis(200)).is_ok()) {
            return Ok(());
        }
        if start.elapsed() > timeout {
            return Err(format!("up: edge and pool not accepting on {addrs:?} after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Supervises `roles` until SIGINT, SIGTERM or SIGHUP (Ok, everything stopped) or until a role cannot be kept
/// running (Err, everything stopped). `set` holds the blocked signals, SIGCHLD among them.
pub fn supervise(roles: &mut [Role], set: &libc::sigset_t) -> Result<(), String> {
    loop {
        let now = Instant::now();
        let next_due = roles.iter().filter_map(|r| r.due).min();
        let sig = super::run::wait_signal_timeout(set, next_due.map(|d| d.saturating_duration_since(now)));
        if matches!(sig, Some(s) if s != libc::SIGCHLD) {
            stop(roles);
            return Ok(());
        }
        if let Err(e) = tend(roles, Instant::now()) {
            stop(roles);
            return Err(e);
        }
    }
}

/// Schedules a restart for each role that died, and starts those whose back-off is over.
fn tend(roles: &mut [Role], now: Instant) -> Result<(), String> {
    for r in roles.iter_mut() {
        let Some(st) = r.exited() else { continue };
        if st.success() {
            return Err(format!("up: the {} process stopped (exit 0: told to stop); stopping everything", r.name));
        }
        while r.restarts.front().is_some_and(|t| now.duration_since(*t) > RESTART_WINDOW) {
            r.restarts.pop_front();
        }
        if r.restarts.len() >= RESTARTS_MAX {
            let name = r.name;
            tracing::error!(
                role = name,
                "the {name} process died ({st}) after {RESTARTS_MAX} restarts within {RESTART_WINDOW:?}: \
                 giving up, stopping everything"
            );
            return Err(format!(
                "up: the {name} process keeps dying ({st}; {RESTARTS_MAX} restarts within {RESTART_WINDOW:?}): \
                 gave up (see its log above)"
            ));
        }
        let backoff = backoff(r.restarts.len());
        let (name, nth) = (r.name, r.restarts.len() + 1);
        tracing::error!(
            role = name,
            "the {name} process died ({st}): restarting it in {backoff:?} \
             (restart {nth} of at most {RESTARTS_MAX} within {RESTART_WINDOW:?})"
        );
        r.due = Some(now + backoff);
    }
    for r in roles.iter_mut() {
        if r.due.is_some_and(|d| d <= now) {
            r.due = None;
            r.restarts.push_back(now);
            let child = spawn(&r.configs)?;
            tracing::warn!(role = r.name, pid = child.id(), "restarted the {} process", r.name);
            r.child = Some(child);
        }
    }
    Ok(())
}

/// Back-off before the restart that follows `recent` restarts within the window.
fn backoff(recent: usize) -> Duration {
    BACKOFF_FIRST * (1u32 << recent.min(8))
}

/// SIGTERM to every running role, then waits for them (at most [`STOP_GRACE`]) and kills what is left.
pub fn stop(roles: &mut [Role]) {
    for r in roles.iter_mut() {
        r.due = None;
        if let Some(c) = &r.child {
            // SAFETY: sending a signal to our own child by pid.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    for r in roles.iter_mut() {
        let Some(c) = r.child.as_mut() else { continue };
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        r.child = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_stays_short() {
        let b: Vec<Duration> = (0..RESTARTS_MAX).map(backoff).collect();
        assert_eq!(b.first(), Some(&Duration::from_millis(500)));
        assert!(b.windows(2).all(|w| w[1] == w[0] * 2));
        assert!(b.iter().sum::<Duration>() < RESTART_WINDOW, "the restarts allowed fit in the window");
    }

    /// A child that has exited, not yet reaped (as `tend` finds a role after SIGCHLD).
    fn dead(program: &str, args: &[&str]) -> Option<Child> {
        let c = Command::new(program).args(args).spawn().expect("spawn");
        // SAFETY: waitid on our own child into a zeroed siginfo we own; WNOWAIT leaves it to be reaped.
        unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(libc::P_PID, c.id(), &mut info, libc::WEXITED | libc::WNOWAIT);
        }
        Some(c)
    }

    /// A role that keeps dying is restarted RESTARTS_MAX times within the window, then given up on.
    #[test]
    fn a_dying_role_is_restarted_then_given_up() {
        let t0 = Instant::now();
        let mut roles = [Role {
            name: "pool",
            configs: vec![PathBuf::from("/nonexistent/pool.toml")],
            child: dead("sh", &["-c", "exit 3"]),
            restarts: VecDeque::new(),
            due: None,
        }];
        assert_eq!(tend(&mut roles, t0), Ok(()));
        assert_eq!(roles[0].due, Some(t0 + BACKOFF_FIRST), "restart scheduled after the back-off");
        assert!(roles[0].child.is_none());
        // After RESTARTS_MAX restarts in the last minute, the next death gives up.
        roles[0].due = None;
        roles[0].restarts = (0..RESTARTS_MAX).map(|_| t0).collect();
        roles[0].child = dead("sh", &["-c", "kill -9 $$"]);
        let e = tend(&mut roles, t0 + Duration::from_secs(1)).expect_err("gives up");
        assert!(e.contains("keeps dying"), "{e}");
        // A minute later those restarts no longer count.
        roles[0].child = dead("sh", &["-c", "exit 3"]);
        let later = t0 + RESTART_WINDOW + Duration::from_secs(1);
        assert_eq!(tend(&mut roles, later), Ok(()));
        assert_eq!(roles[0].due, Some(later + BACKOFF_FIRST));
        // An exit 0 is someone's decision, not a crash.
        roles[0].due = None;
        roles[0].child = dead("true", &[]);
        assert!(tend(&mut roles, t0).is_err_and(|e| e.contains("exit 0")));
    }
}
