//! Output folders: what `unlearn run` (and `report`, and `bench`) write their results into.
//!
//! A folder is unlearn's when it holds the marker file [`MARKER`]; anything else that is not empty
//! is refused before a byte is written. The marker is a manifest: which command made the folder,
//! the config its outputs belong to, and every file unlearn wrote there. One process at a time
//! writes into a folder (it holds [`LOCK`], see [`crate::lock`]; a second is refused, naming the
//! first), and when it finishes, the files the manifest lists that it did not write again (an
//! earlier config's models and figures) are removed, so a folder never mixes two studies.
//! Files unlearn did not write are never touched.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::io::write_atomic;
use crate::lock::{HeldLock, LockError, Policy, Timing};

/// The marker and manifest of an output folder.
pub const MARKER: &str = ".unlearn-output";
/// The lock a process writing into the folder holds.
pub const LOCK: &str = ".unlearn-lock";

/// Names inside an output folder that a run writes itself: a `--cache` there would collide.
pub const RUN_OUTPUTS: [&str; 6] = [
    "models",
    "plots",
    "results.json",
    "results.csv",
    "training.csv",
    "report.md",
];

/// Which command made an output folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Producer {
    /// `unlearn run` / `demo` (and `report`, which rewrites a run's reports).
    Run,
    /// `unlearn bench`.
    Bench,
}

impl Producer {
    fn command(self) -> &'static str {
        match self {
            Producer::Run => "unlearn run",
            Producer::Bench => "unlearn bench",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    note: String,
    made_by: Producer,
    unlearn: String,
    /// SHA-256 of the config whose outputs the folder holds (runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config: Option<String>,
    /// Every file unlearn wrote here, relative to the folder.
    files: BTreeSet<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("output folder {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refusing to write into {}: it is not empty and was not made by unlearn (choose a new or empty folder with --out)", path.display())]
    Foreign { path: PathBuf },
    #[error("refusing to write into {}: it holds the output of `{}`, not of `{}` (choose another folder with --out)", path.display(), found.command(), wanted.command())]
    OtherProducer {
        path: PathBuf,
        found: Producer,
        wanted: Producer,
    },
    #[error("output folder {} is in use by another unlearn process: {}; wait for it to finish, or choose another folder with --out", path.display(), crate::lock::describe(holder.as_ref(), path))]
    Busy {
        path: PathBuf,
        holder: Option<crate::lock::Holder>,
    },
    #[error(transparent)]
    Lock(LockError),
}

/// An output folder this process holds: files written through it are recorded in the manifest.
#[derive(Debug)]
pub struct OutputDir {
    path: PathBuf,
    made_by: Producer,
    _lock: HeldLock,
    /// The files the manifest listed when the folder was claimed.
    old: BTreeSet<String>,
    old_config: Option<String>,
    config: Mutex<Option<String>>,
    written: Mutex<BTreeSet<String>>,
}

/// The manifest at `out`: None without a marker; an empty one for a marker of an older version
/// (plain text).
fn read_manifest(out: &Path) -> Option<Manifest> {
    let bytes = std::fs::read(out.join(MARKER)).ok()?;
    Some(serde_json::from_slice(&bytes).unwrap_or(Manifest {
        note: String::new(),
        made_by: Producer::Run,
        unlearn: String::new(),
        config: None,
        files: BTreeSet::new(),
    }))
}

/// Whether `name`, in a folder without a marker, is what a process killed while claiming the
/// folder leaves behind (which does not make the folder foreign).
fn own_leftover(name: &str) -> bool {
    name.starts_with(".write-probe-")
        || (name.starts_with(&format!(".{MARKER}.")) && name.ends_with(".tmp"))
        || name == LOCK
        || name == format!("{LOCK}.takeover")
}

impl OutputDir {
    /// Makes `out` this process's output folder for `made_by`: creates it, or accepts it when it
    /// is empty or marked as made by the same command (or is an output folder of an older
    /// version, with `state/fingerprint`), and takes its lock. Any other folder, and a folder
    /// another process is writing into, is refused before anything is written into it.
    pub fn claim(out: &Path, made_by: Producer, what: &str) -> Result<OutputDir, OutputError> {
        let io = |source| OutputError::Io {
            path: out.to_path_buf(),
            source,
        };
        if out.exists() {
            if !out.is_dir() {
                return Err(io(std::io::Error::new(
                    std::io::ErrorKind::NotADirectory,
                    "exists and is not a folder",
                )));
            }
            match read_manifest(out) {
                Some(m) if m.made_by != made_by => {
                    return Err(OutputError::OtherProducer {
                        path: out.to_path_buf(),
                        found: m.made_by,
                        wanted: made_by,
                    });
                }
                Some(_) => {}
                None => {
                    let legacy =
                        made_by == Producer::Run && out.join("state").join("fingerprint").is_file();
                    let mut entries = std::fs::read_dir(out)
                        .map_err(io)?
                        .filter_map(|e| e.ok())
                        .filter(|e| !own_leftover(&e.file_name().to_string_lossy()));
                    if entries.next().is_some() && !legacy {
                        return Err(OutputError::Foreign {
                            path: out.to_path_buf(),
                        });
                    }
                }
            }
        }
        crate::io::ensure_writable_dir(out).map_err(io)?;
        let lock = crate::lock::acquire(&out.join(LOCK), what, Policy::Refuse, Timing::from_env())
            .map_err(|e| match e {
                LockError::Held { holder, .. } => OutputError::Busy {
                    path: out.to_path_buf(),
                    holder,
                },
                e => OutputError::Lock(e),
            })?;
        // Read again under the lock: a process that held it may have just finished.
        let manifest = read_manifest(out);
        let dir = OutputDir {
            path: out.to_path_buf(),
            made_by,
            _lock: lock,
            old: manifest
                .as_ref()
                .map(|m| m.files.clone())
                .unwrap_or_default(),
            old_config: manifest.as_ref().and_then(|m| m.config.clone()),
            config: Mutex::new(None),
            written: Mutex::new(BTreeSet::new()),
        };
        dir.save_manifest(dir.old.clone())?;
        Ok(dir)
    }

    /// Makes `out` a folder of `made_by` without writing into it (what `unlearn stage` does
    /// before it puts the default cache there, so that the run assembling the stages accepts the
    /// folder): nothing to do when it already is one, refused when it is another command's or a
    /// foreign one. One another process is claiming right now is that process's.
    pub fn mark(out: &Path, made_by: Producer, what: &str) -> Result<(), OutputError> {
        match read_manifest(out) {
            Some(m) if m.made_by == made_by => Ok(()),
            _ => match OutputDir::claim(out, made_by, what) {
                Ok(_) | Err(OutputError::Busy { .. }) => Ok(()),
                Err(e) => Err(e),
            },
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks, before any work, that what stands at the names the command will write is of the
    /// right kind: each of `folders` a folder (or absent), each of `files` not a folder.
    pub fn check_layout(&self, folders: &[&str], files: &[&str]) -> Result<(), OutputError> {
        let wrong = |name: &str, what: &str| OutputError::Io {
            path: self.path.join(name),
            source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, what.to_string()),
        };
        for name in folders {
            let p = self.path.join(name);
            if p.exists() && !p.is_dir() {
                return Err(wrong(
                    name,
                    &format!("{} exists and is not a folder", p.display()),
                ));
            }
        }
        for name in files {
            if self.path.join(name).is_dir() {
                return Err(wrong(
                    name,
                    "is a folder, where unlearn writes a file: move it away",
                ));
            }
        }
        Ok(())
    }

    /// Records the config the outputs belong to; true when the folder held another config's.
    pub fn set_config(&self, digest: &str) -> bool {
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = Some(digest.to_string());
        self.old_config.as_deref().is_some_and(|c| c != digest)
    }

    fn save_manifest(&self, files: BTreeSet<String>) -> Result<(), OutputError> {
        let manifest = Manifest {
            note: format!(
                "This folder holds the output of `{}`; unlearn writes into it and lists here what it wrote.",
                self.made_by.command()
            ),
            made_by: self.made_by,
            unlearn: env!("CARGO_PKG_VERSION").into(),
            config: self
                .config
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .or(self.old_config.clone()),
            files,
        };
        let path = self.path.join(MARKER);
        let bytes = serde_json::to_vec_pretty(&manifest).expect("manifests serialise");
        write_atomic(&path, &bytes).map_err(|source| OutputError::Io { path, source })
    }

    /// Notes that `rel` (a path relative to the folder) is about to be written: the manifest
    /// lists it before it exists, so an interrupted run's files are known to the next one.
    pub fn record(&self, rel: &str) -> Result<(), OutputError> {
        let all = {
            let mut w = self.written.lock().unwrap_or_else(|p| p.into_inner());
            if !w.insert(rel.to_string()) {
                return Ok(());
            }
            self.old.union(&w).cloned().collect()
        };
        self.save_manifest(all)
    }

    /// The folder `rel` inside the output folder, created if needed (an error that says so
    /// when something that is not a folder stands there).
    pub fn folder(&self, rel: &str) -> Result<PathBuf, OutputError> {
        let path = self.path.join(rel);
        crate::io::ensure_dir(&path).map_err(|source| OutputError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(path)
    }

    /// Writes `bytes` to `rel` atomically, recorded.
    pub fn write(&self, rel: &str, bytes: &[u8]) -> Result<(), OutputError> {
        self.record(rel)?;
        let path = self.path.join(rel);
        if let Some(dir) = path.parent() {
            crate::io::ensure_dir(dir).map_err(|source| OutputError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        write_atomic(&path, bytes).map_err(|source| OutputError::Io { path, source })
    }

    /// Ends the writing: files the manifest listed that this process did not write are removed
    /// (with the folders they leave empty), and the manifest lists exactly what it wrote.
    /// Returns the files removed.
    pub fn finish(self) -> Result<Vec<String>, OutputError> {
        let written = self
            .written
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut removed = Vec::new();
        for rel in self.old.difference(&written) {
            // Only plain relative paths inside the folder, and only files.
            let safe = Path::new(rel)
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
            let path = self.path.join(rel);
            if safe && path.is_file() && std::fs::remove_file(&path).is_ok() {
                removed.push(rel.clone());
                let mut dir = path.parent();
                while let Some(d) = dir.filter(|d| *d != self.path) {
                    if std::fs::remove_dir(d).is_err() {
                        break;
                    }
                    dir = d.parent();
                }
            }
        }
        self.save_manifest(written)?;
        Ok(removed)
    }
}

/// A `--cache` inside `out` where a run writes its own outputs (`<out>/models`, ...), which would
/// mix the two: the name it collides with.
pub fn cache_collision(out: &Path, cache: &Path) -> Option<&'static str> {
    let abs = |p: &Path| {
        std::path::absolute(p)
            .map(|p| {
                p.components().fold(PathBuf::new(), |mut acc, c| {
                    match c {
                        std::path::Component::ParentDir => {
                            acc.pop();
                        }
                        std::path::Component::CurDir => {}
                        c => acc.push(c),
                    }
                    acc
                })
            })
            .unwrap_or_else(|_| p.to_path_buf())
    };
    let (out, cache) = (abs(out), abs(cache));
    if cache == out {
        return Some(".");
    }
    let first = cache.strip_prefix(&out).ok()?.components().next()?;
    let first = first.as_os_str().to_str()?;
    RUN_OUTPUTS
        .iter()
        .chain([MARKER, LOCK].iter())
        .find(|n| **n == first)
        .copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_claimed_once_and_replaced_outputs_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("o");
        let a = OutputDir::claim(&out, Producer::Run, "run a").unwrap();
        assert!(!a.set_config("A"));
        // A second process is refused while the first holds the folder, naming it.
        let e = OutputDir::claim(&out, Producer::Run, "run b").unwrap_err();
        assert!(matches!(e, OutputError::Busy { .. }), "{e}");
        assert!(e.to_string().contains("run a"), "{e}");
        a.write("results.json", b"A").unwrap();
        a.write("models/seed-1/dense.safetensors", b"A").unwrap();
        a.write("plots/a.png", b"A").unwrap();
        assert!(a.finish().unwrap().is_empty());
        // Another config: what it does not write again goes, the user's own file stays.
        std::fs::write(out.join("notes.txt"), b"mine").unwrap();
        let b = OutputDir::claim(&out, Producer::Run, "run b").unwrap();
        assert!(b.set_config("B"), "another config's folder");
        b.write("results.json", b"B").unwrap();
        b.write("models/dense.safetensors", b"B").unwrap();
        let mut removed = b.finish().unwrap();
        removed.sort();
        assert_eq!(removed, ["models/seed-1/dense.safetensors", "plots/a.png"]);
        assert!(!out.join("models/seed-1").exists() && !out.join("plots").exists());
        assert_eq!(std::fs::read(out.join("notes.txt")).unwrap(), b"mine");
        assert_eq!(std::fs::read(out.join("results.json")).unwrap(), b"B");
        // A file recorded by an interrupted process is known to the next one.
        let c = OutputDir::claim(&out, Producer::Run, "run c").unwrap();
        c.write("models/extra.safetensors", b"C").unwrap();
        drop(c);
        let m = read_manifest(&out).unwrap();
        assert!(m.files.contains("models/extra.safetensors"));
        let d2 = OutputDir::claim(&out, Producer::Run, "run d").unwrap();
        d2.write("results.json", b"D").unwrap();
        assert!(
            d2.finish()
                .unwrap()
                .contains(&"models/extra.safetensors".to_string())
        );
    }

    #[test]
    fn foreign_folders_and_other_commands_folders_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let mine = d.path().join("mine");
        std::fs::create_dir(&mine).unwrap();
        std::fs::write(mine.join("bench.md"), b"my notes").unwrap();
        for p in [Producer::Run, Producer::Bench] {
            let e = OutputDir::claim(&mine, p, "x").unwrap_err();
            assert!(matches!(e, OutputError::Foreign { .. }), "{e}");
        }
        assert_eq!(
            std::fs::read_dir(&mine).unwrap().count(),
            1,
            "nothing written"
        );
        let run = d.path().join("run");
        OutputDir::claim(&run, Producer::Run, "x")
            .unwrap()
            .finish()
            .unwrap();
        let e = OutputDir::claim(&run, Producer::Bench, "x").unwrap_err();
        assert!(
            e.to_string()
                .contains("`unlearn run`, not of `unlearn bench`"),
            "{e}"
        );
        let file = d.path().join("file");
        std::fs::write(&file, b"").unwrap();
        let e = OutputDir::claim(&file, Producer::Run, "x").unwrap_err();
        assert!(e.to_string().contains("is not a folder"), "{e}");
    }

    #[test]
    fn a_cache_where_a_run_writes_its_outputs_is_a_collision() {
        let o = Path::new("runs/o");
        assert_eq!(
            cache_collision(o, Path::new("runs/o/models")),
            Some("models")
        );
        assert_eq!(
            cache_collision(o, Path::new("runs/o/./plots/x")),
            Some("plots")
        );
        assert_eq!(cache_collision(o, Path::new("runs/o")), Some("."));
        assert_eq!(cache_collision(o, Path::new("runs/o/cache")), None);
        assert_eq!(cache_collision(o, Path::new("runs/other/models")), None);
        assert_eq!(
            cache_collision(o, Path::new("runs/x/../o/results.json")),
            Some("results.json")
        );
    }
}
