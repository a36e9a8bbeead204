//! Trying a plugin library in a child process before this one loads it. Opening a library runs
//! the dynamic loader over it and the library's own code: a damaged file (cut short, bytes
//! flipped) can kill the process that does it (SIGBUS on a page past the end of a truncated file,
//! SIGSEGV, the loader's own abort), and a broken file on the plugin path must cost one error
//! naming it, never the process. The child loads the library as the host would and exits; the
//! host loads it only when the child survived.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use unlearn_pipeline::plugin::host::{PluginError, load};

/// The hidden first argument that makes the binary a probe child (`unlearn <arg> <library>`).
const PROBE_ARG: &str = "__probe-plugin";

/// A library that takes longer than this to load is not loaded.
const PATIENCE: Duration = Duration::from_secs(60);

/// In a probe child started by [`probe`] (exec'd): load the library, exit 0 if that returned at
/// all (the host reports the load's own errors when it loads it). None in a normal run.
pub fn child_main() -> Option<ExitCode> {
    let mut args = std::env::args_os().skip(1);
    if args.next()? != PROBE_ARG {
        return None;
    }
    let path = args.next()?;
    let _ = load(Path::new(&path));
    Some(ExitCode::SUCCESS)
}

/// Tries `path` in a child process: Ok when loading it there returned (successfully or with an
/// error the host will report), a [`PluginError::Crashed`] when the child died, exited otherwise
/// or hung.
pub fn probe(path: &Path) -> Result<(), PluginError> {
    let crashed = |how: String| PluginError::Crashed {
        path: path.to_path_buf(),
        how,
    };
    let outcome = if single_threaded() {
        by_fork(path)
    } else {
        by_exec(path)
    };
    match outcome {
        Outcome::Returned => Ok(()),
        Outcome::Signal(sig) => Err(crashed(format!(
            "killed the process that tried it with signal {sig} ({})",
            signal_name(sig)
        ))),
        Outcome::Exit(code) => Err(crashed(format!(
            "made the process that tried it exit with status {code} (the dynamic loader gave up on it)"
        ))),
        Outcome::Hung => Err(crashed(format!(
            "did not finish within {} s",
            PATIENCE.as_secs()
        ))),
        Outcome::NotStarted(e) => Err(crashed(format!(
            "could not be tried in a child process ({e})"
        ))),
    }
}

enum Outcome {
    Returned,
    Signal(i32),
    Exit(i32),
    Hung,
    NotStarted(String),
}

/// Whether this process has one thread: then `fork` copies all there is, and the child may do
/// anything (no lock held by another thread is left locked in it).
fn single_threaded() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse::<u32>().ok())
        })
        == Some(1)
}

/// Forks: the child has this process's libraries already (libtorch included), so trying a plugin
/// costs milliseconds rather than a new process's start.
fn by_fork(path: &Path) -> Outcome {
    // SAFETY: this process is single-threaded (checked by the caller), so the child is a full
    // copy; it only loads the library and leaves with `_exit`, running no destructors or
    // at-exit handlers of the parent's state.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Outcome::NotStarted(std::io::Error::last_os_error().to_string());
    }
    if pid == 0 {
        // The loader's own complaints about a damaged file would read as this run's: the
        // parent reports the outcome.
        // SAFETY: plain descriptor calls in the child.
        unsafe {
            let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
            if null >= 0 {
                libc::dup2(null, 1);
                libc::dup2(null, 2);
            }
        }
        let _ = std::panic::catch_unwind(|| load(path));
        // SAFETY: ends the forked child at once, running no destructor of the parent's state.
        unsafe { libc::_exit(0) };
    }
    let started = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: waiting on our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return if libc::WIFSIGNALED(status) {
                Outcome::Signal(libc::WTERMSIG(status))
            } else if libc::WEXITSTATUS(status) == 0 {
                Outcome::Returned
            } else {
                Outcome::Exit(libc::WEXITSTATUS(status))
            };
        }
        if r < 0 {
            return Outcome::NotStarted(std::io::Error::last_os_error().to_string());
        }
        if started.elapsed() > PATIENCE {
            // SAFETY: our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return Outcome::Hung;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs this binary again as a probe child (when threads make `fork` unsafe).
fn by_exec(path: &Path) -> Outcome {
    use std::os::unix::process::ExitStatusExt;
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => return Outcome::NotStarted(e.to_string()),
    };
    let mut child = match std::process::Command::new(exe)
        .arg(PROBE_ARG)
        .arg(path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => return Outcome::NotStarted(e.to_string()),
    };
    let started = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => {
                return match (status.code(), status.signal()) {
                    (Some(0), _) => Outcome::Returned,
                    (_, Some(sig)) => Outcome::Signal(sig),
                    (Some(code), _) => Outcome::Exit(code),
                    (None, None) => Outcome::Exit(-1),
                };
            }
            Ok(None) if started.elapsed() > PATIENCE => {
                let _ = child.kill();
                let _ = child.wait();
                return Outcome::Hung;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Outcome::NotStarted(e.to_string()),
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGBUS => "SIGBUS, a bus error: typically a file cut short",
        libc::SIGSEGV => "SIGSEGV, a segmentation fault",
        libc::SIGABRT => "SIGABRT, an abort",
        libc::SIGILL => "SIGILL, an illegal instruction",
        libc::SIGFPE => "SIGFPE, an arithmetic fault",
        libc::SIGKILL => "SIGKILL",
        _ => "a fatal signal",
    }
}
