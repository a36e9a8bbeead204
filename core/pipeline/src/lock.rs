//! Locks that say who holds them: a stage of the cache being computed, an output folder being
//! written. Each is an OS file lock (released by the kernel when its process dies) on a file that
//! also holds a record of the holder: pid, host, since when, and a heartbeat the holder refreshes
//! while it lives. A process that finds the lock taken reads the record, so it can say whom it
//! waits for (and keep saying it), tell a stopped holder (Ctrl-Z) from a running one, and take
//! over from a holder on another machine whose heartbeat stopped: that holder died without its
//! file system releasing the lock (network file systems can keep a dead client's locks).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    /// Unix seconds when it took the lock.
    pub since: u64,
    /// Unix seconds of its last heartbeat.
    pub beat: u64,
    /// What it is doing, e.g. `unlearn run study.toml`.
    pub what: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("lock {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The lock is taken and the caller does not wait.
    #[error("{}", describe(holder.as_ref(), path))]
    Held {
        path: PathBuf,
        holder: Option<Holder>,
    },
}

/// The settings of the protocol: how often a holder shows it lives, after how long without a
/// heartbeat a holder on another machine counts as dead, how often a waiter says it still
/// waits. `UNLEARN_LOCK_HEARTBEAT_SECS`, `UNLEARN_LOCK_STALE_SECS` and
/// `UNLEARN_LOCK_NOTICE_SECS` override the defaults (10 s, 300 s, 30 s).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat: Duration,
    pub stale: Duration,
    pub notice: Duration,
}

impl Timing {
    pub fn from_env() -> Timing {
        let secs = |name: &str, default: f64| {
            let v = std::env::var(name)
                .ok()
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| v.is_finite() && *v > 0.0)
                .unwrap_or(default);
            Duration::from_secs_f64(v)
        };
        Timing {
            heartbeat: secs("UNLEARN_LOCK_HEARTBEAT_SECS", 10.0),
            stale: secs("UNLEARN_LOCK_STALE_SECS", 300.0),
            notice: secs("UNLEARN_LOCK_NOTICE_SECS", 30.0),
        }
    }
}

/// A lock this process holds; dropping it stops the heartbeat and releases the lock.
#[derive(Debug)]
pub struct HeldLock {
    _file: File,
    stop: Arc<AtomicBool>,
    beat: Option<std::thread::JoinHandle<()>>,
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.beat.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

/// What a caller does when the lock is taken.
pub enum Policy<'a> {
    /// Wait for it, saying whom it waits for through `notify` at once and then every
    /// `Timing::notice`.
    Wait { notify: &'a dyn Fn(&str) },
    /// Give up at once with [`LockError::Held`] (unless the holder is a dead one elsewhere).
    Refuse,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// This machine's name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// The state of a process on this machine: `Some('T')` when stopped, None when it is gone.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) S ...`: comm may hold spaces and parentheses; the state follows the last `)`.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Seconds as `42 s`, `5 min`, `3.1 h`.
fn ago(seconds: u64) -> String {
    match seconds {
        s if s < 90 => format!("{s} s"),
        s if s < 5400 => format!("{} min", s / 60),
        s => format!("{:.1} h", s as f64 / 3600.0),
    }
}

/// One line on who holds a lock: pid, host, what, since when, and whether it is stopped.
pub fn describe(holder: Option<&Holder>, path: &Path) -> String {
    let Some(h) = holder else {
        return format!(
            "{} is held by another process (its holder record is not readable yet)",
            path.display()
        );
    };
    let t = now();
    let mut s = format!(
        "held by pid {} on {} ({}) for {}",
        h.pid,
        h.host,
        h.what,
        ago(t.saturating_sub(h.since))
    );
    if h.host == host_name() {
        if process_state(h.pid) == Some('T') {
            s += &format!(
                "; that process is stopped (Ctrl-Z?): resume it (`fg`, or `kill -CONT {}`) or end it",
                h.pid
            );
        }
    } else {
        s += &format!("; last heartbeat {} ago", ago(t.saturating_sub(h.beat)));
    }
    s
}

/// The record in `file`. The holder rewrites it in place while others read, so a read may catch
/// a write half done: the first JSON value is taken (a longer old record's tail may still follow
/// it), and a read that does not parse is tried again a few times before it counts as unreadable.
fn read_holder(file: &mut File) -> Option<Holder> {
    for attempt in 0..5 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut text = String::new();
        if file.rewind().is_err() || file.read_to_string(&mut text).is_err() {
            continue;
        }
        let mut values = serde_json::Deserializer::from_str(&text).into_iter::<Holder>();
        if let Some(Ok(h)) = values.next() {
            return Some(h);
        }
    }
    None
}

/// Writes the record over the old one in one write, then cuts what is left of a longer old one:
/// a reader never finds the file empty (truncating first would leave that window open).
fn write_holder(file: &mut File, h: &Holder) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(h).expect("holders serialise");
    bytes.push(b'\n');
    file.rewind()?;
    file.write_all(&bytes)?;
    file.set_len(bytes.len() as u64)?;
    file.flush()
}

/// Takes the lock at `path` (creating the file), for `what`, under `policy`.
pub fn acquire(
    path: &Path,
    what: &str,
    policy: Policy<'_>,
    timing: Timing,
) -> Result<HeldLock, LockError> {
    let io = |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    };
    let started = std::time::Instant::now();
    let mut last_notice: Option<std::time::Instant> = None;
    loop {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {
                // A waiter may have taken over a dead holder's lock by replacing the file after
                // this process opened it: then this lock guards nothing; start again.
                if !same_file(&file, path) {
                    continue;
                }
                let me = Holder {
                    pid: std::process::id(),
                    host: host_name(),
                    since: now(),
                    beat: now(),
                    what: what.to_string(),
                };
                write_holder(&mut file, &me).map_err(io)?;
                let stop = Arc::new(AtomicBool::new(false));
                let beat = heartbeat(file.try_clone().map_err(io)?, me, stop.clone(), timing);
                return Ok(HeldLock {
                    _file: file,
                    stop,
                    beat: Some(beat),
                });
            }
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let holder = read_holder(&mut file);
        if is_dead_elsewhere(holder.as_ref(), &file, timing) && take_over(path, &file)? {
            if let Policy::Wait { notify } = &policy {
                notify(&format!(
                    "{}: taking over the lock from {}, which stopped beating (dead?)",
                    path.display(),
                    describe(holder.as_ref(), path)
                ));
            }
            continue;
        }
        match &policy {
            Policy::Refuse => {
                return Err(LockError::Held {
                    path: path.to_path_buf(),
                    holder,
                });
            }
            Policy::Wait { notify } => {
                if last_notice.is_none_or(|t| t.elapsed() >= timing.notice) {
                    let waited = started.elapsed().as_secs();
                    notify(&format!(
                        "waiting{}: {}",
                        if waited > 0 {
                            format!(" ({})", ago(waited))
                        } else {
                            String::new()
                        },
                        describe(holder.as_ref(), path)
                    ));
                    last_notice = Some(std::time::Instant::now());
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

/// Whether `file` (open) is still the file at `path`.
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// A holder on another machine whose heartbeat is older than `timing.stale` (without a readable
/// record, the file's last change stands for the heartbeat). A holder on this machine is never
/// dead while it holds the lock: the kernel releases the locks of a process that ends.
fn is_dead_elsewhere(holder: Option<&Holder>, file: &File, timing: Timing) -> bool {
    let beat = match holder {
        Some(h) if h.host == host_name() => return false,
        Some(h) => h.beat,
        None => file
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(now(), |d| d.as_secs()),
    };
    now().saturating_sub(beat) > timing.stale.as_secs()
}

/// Removes a dead holder's lock file so that a new one can be taken, under a second lock so that
/// two waiters do not both remove files (the second would remove the first's new one). Returns
/// whether it did.
fn take_over(path: &Path, stale: &File) -> Result<bool, LockError> {
    let io = |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    };
    let guard_path = PathBuf::from(format!("{}.takeover", path.display()));
    let guard = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&guard_path)
        .map_err(io)?;
    guard.lock().map_err(io)?;
    // Still the same dead holder's file (no other waiter replaced it meanwhile)?
    let removed = same_file(stale, path) && std::fs::remove_file(path).is_ok();
    Ok(removed)
}

/// Refreshes the holder's heartbeat every `timing.heartbeat` until `stop`.
fn heartbeat(
    mut file: File,
    mut me: Holder,
    stop: Arc<AtomicBool>,
    timing: Timing,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        loop {
            std::thread::park_timeout(timing.heartbeat);
            if stop.load(Ordering::Relaxed) {
                return;
            }
            me.beat = now();
            let _ = write_holder(&mut file, &me);
        }
    })
}

/// The holder of the lock at `path`, if it is taken (without taking it).
pub fn holder(path: &Path) -> Option<Option<Holder>> {
    let mut file = std::fs::OpenOptions::new().read(true).open(path).ok()?;
    match file.try_lock_shared() {
        Ok(()) => None,
        Err(_) => Some(read_holder(&mut file)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn fast() -> Timing {
        Timing {
            heartbeat: Duration::from_millis(100),
            stale: Duration::from_secs(2),
            notice: Duration::from_millis(300),
        }
    }

    #[test]
    fn a_lock_records_its_holder_and_beats() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.lock");
        let held = acquire(&p, "unlearn run a.toml", Policy::Refuse, fast()).unwrap();
        let h = holder(&p).unwrap().unwrap();
        assert_eq!(
            (h.pid, h.host.as_str(), h.what.as_str()),
            (
                std::process::id(),
                host_name().as_str(),
                "unlearn run a.toml"
            )
        );
        // A second taker is refused with the holder named.
        let e = acquire(&p, "b", Policy::Refuse, fast()).unwrap_err();
        let m = e.to_string();
        assert!(
            m.contains(&format!("pid {}", std::process::id())) && m.contains("unlearn run a.toml"),
            "{m}"
        );
        drop(held);
        assert!(holder(&p).is_none(), "released once dropped");
        acquire(&p, "b", Policy::Refuse, fast()).unwrap();
    }

    /// The heartbeat rewrites the record while others read it: no read may find it missing.
    #[test]
    fn a_record_being_rewritten_is_always_readable() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.lock");
        let busy = Timing {
            heartbeat: Duration::from_micros(200),
            ..fast()
        };
        let _held = acquire(&p, "a run that beats often", Policy::Refuse, busy).unwrap();
        for i in 0..3000 {
            let h = holder(&p).expect("the lock is taken");
            assert!(h.is_some(), "read {i} found no readable record");
        }
    }

    /// A waiter says whom it waits for at once and keeps saying it, then gets the lock when the
    /// holder lets go.
    #[test]
    fn a_waiter_names_the_holder_and_keeps_saying_it() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.lock");
        let held = acquire(&p, "the first run", Policy::Refuse, fast()).unwrap();
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(1100));
            drop(held);
        });
        let said = RefCell::new(Vec::<String>::new());
        let notify = |m: &str| said.borrow_mut().push(m.to_string());
        let t0 = std::time::Instant::now();
        acquire(&p, "second", Policy::Wait { notify: &notify }, fast()).unwrap();
        release.join().unwrap();
        assert!(t0.elapsed() >= Duration::from_millis(1000));
        let said = said.into_inner();
        assert!(said.len() >= 3, "{said:?}");
        assert!(said.iter().all(|m| m.contains("the first run")), "{said:?}");
    }

    /// A holder on another machine whose heartbeat stopped is taken over (once stale); one whose
    /// heartbeat is fresh is waited for.
    #[test]
    fn a_dead_holder_elsewhere_is_taken_over() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.lock");
        // The "other machine": a lock held here (the file system still holds it) with a record
        // that names another host.
        let mut stuck = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        stuck.lock().unwrap();
        let mut elsewhere = Holder {
            pid: 4242,
            host: "node-17.cluster".into(),
            since: now() - 3600,
            beat: now(),
            what: "unlearn run study.toml".into(),
        };
        write_holder(&mut stuck, &elsewhere).unwrap();
        // Fresh heartbeat: refused, naming the host and the heartbeat.
        let m = acquire(&p, "me", Policy::Refuse, fast())
            .unwrap_err()
            .to_string();
        assert!(
            m.contains("node-17.cluster") && m.contains("last heartbeat"),
            "{m}"
        );
        // Stale: taken over, and said so.
        elsewhere.beat = now() - 600;
        write_holder(&mut stuck, &elsewhere).unwrap();
        let said = RefCell::new(Vec::<String>::new());
        let notify = |m: &str| said.borrow_mut().push(m.to_string());
        let got = acquire(&p, "me", Policy::Wait { notify: &notify }, fast()).unwrap();
        let said = said.into_inner();
        assert!(said.iter().any(|m| m.contains("taking over")), "{said:?}");
        assert_eq!(holder(&p).unwrap().unwrap().what, "me");
        drop(got);
        drop(stuck);
    }

    #[test]
    fn process_states_are_read_from_proc() {
        assert!(matches!(process_state(std::process::id()), Some('R' | 'S')));
        assert_eq!(process_state(u32::MAX - 1), None);
    }
}
