//! The stage cache: every stage of a run (the dense model, a sparse model, one row of results)
//! is stored under a key that is the SHA-256 of exactly what it depends on, never of a user's
//! label. A changed config recomputes only the stages whose inputs changed; several runs (or
//! studies) can share one cache.
//!
//! Layout: `<cache>/<kind>/<key>/` per entry (its files, with `meta.json` written last), built in
//! a temporary folder and renamed into place, so an entry is complete or absent. A process that
//! computes a stage holds `<cache>/locks/<kind>-<key>.lock` (an OS file lock, released if the
//! process dies), and another process wanting the same stage waits, then reuses it. An entry that
//! cannot be read is named, removed and recomputed; the rest of the cache is kept.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::io::write_atomic;

/// What a cache entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StageKind {
    /// A trained (or imported) dense model, with the weights a pruner rewinds to.
    Dense,
    /// A pruned and retrained model with its mask.
    Sparse,
    /// One evaluated row: a model before or after one unlearner on one forget set.
    Row,
}

impl StageKind {
    pub fn name(self) -> &'static str {
        match self {
            StageKind::Dense => "dense",
            StageKind::Sparse => "sparse",
            StageKind::Row => "row",
        }
    }
}

impl std::fmt::Display for StageKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The SHA-256 (hex) of a stage's inputs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub struct StageKey(pub String);

impl StageKey {
    /// The key of `inputs` for a stage of `kind`: objects are hashed with their keys sorted, so
    /// the order in which a config writes its fields does not matter.
    pub fn of(kind: StageKind, inputs: &Value) -> StageKey {
        let mut h = Sha256::new();
        h.update(kind.name().as_bytes());
        h.update(b"\0");
        h.update(canonical_json(inputs).as_bytes());
        StageKey(hex(&h.finalize()))
    }

    /// The first 12 hex digits (for messages).
    pub fn short(&self) -> &str {
        &self.0[..12.min(self.0.len())]
    }
}

impl std::fmt::Display for StageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub use unlearn_api::io::{file_sha256, hex};

/// JSON with every object's keys sorted, recursively.
pub fn canonical_json(v: &Value) -> String {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", Value::from(k.as_str()), canonical_json(&m[k])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(a) => {
            let items: Vec<String> = a.iter().map(canonical_json).collect();
            format!("[{}]", items.join(","))
        }
        other => other.to_string(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A stage cache in a folder.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

/// Held while a stage is computed; dropping it releases the lock.
#[derive(Debug)]
pub struct StageLock {
    _file: File,
}

impl Cache {
    /// Opens (creating if needed) the cache in `dir`.
    pub fn open(dir: &Path) -> Result<Cache, CacheError> {
        for sub in ["dense", "sparse", "row", "locks"] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).map_err(io_at(&d))?;
        }
        Ok(Cache {
            dir: dir.to_path_buf(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The folder of an entry (it exists only once the entry is complete).
    pub fn entry(&self, kind: StageKind, key: &StageKey) -> PathBuf {
        self.dir.join(kind.name()).join(&key.0)
    }

    /// Where the training loops of a stage being computed keep their mid-training state (see
    /// `train::StageScope`), so a killed run resumes there; removed once the entry is stored.
    pub fn partial(&self, kind: StageKind, key: &StageKey) -> PathBuf {
        self.dir.join("partial").join(format!("{kind}-{key}"))
    }

    /// Removes a stage's mid-training state (its entry is stored).
    pub fn drop_partial(&self, kind: StageKind, key: &StageKey) {
        let _ = std::fs::remove_dir_all(self.partial(kind, key));
    }

    /// Whether a complete entry is there (its `meta.json` is written last).
    pub fn contains(&self, kind: StageKind, key: &StageKey) -> bool {
        self.entry(kind, key).join("meta.json").is_file()
    }

    /// Waits for, then holds, the lock of one stage.
    pub fn lock(&self, kind: StageKind, key: &StageKey) -> Result<StageLock, CacheError> {
        let path = self.dir.join("locks").join(format!("{kind}-{key}.lock"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_at(&path))?;
        file.lock().map_err(io_at(&path))?;
        Ok(StageLock { _file: file })
    }

    /// An entry's `meta.json`, or None when there is no complete entry. A `meta.json` that does
    /// not parse is an error naming the entry (the caller discards it and recomputes).
    pub fn meta<T: DeserializeOwned>(
        &self,
        kind: StageKind,
        key: &StageKey,
    ) -> Result<Option<T>, String> {
        let path = self.entry(kind, key).join("meta.json");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Removes an entry that could not be read.
    pub fn discard(&self, kind: StageKind, key: &StageKey) -> Result<(), CacheError> {
        let dir = self.entry(kind, key);
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_at(&dir)(e)),
            _ => Ok(()),
        }
    }

    /// Writes an entry: `write` fills a fresh temporary folder, then `meta` is written into it
    /// and the folder renamed into place (replacing an older entry of the same key).
    pub fn put<E: From<CacheError>>(
        &self,
        kind: StageKind,
        key: &StageKey,
        meta: &impl Serialize,
        write: impl FnOnce(&Path) -> Result<(), E>,
    ) -> Result<(), E> {
        let tmp = self
            .dir
            .join(kind.name())
            .join(format!(".tmp-{}-{}", key.0, std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| E::from(io_at(&tmp)(e)))?;
        let result = write(&tmp).and_then(|()| {
            let bytes = serde_json::to_vec_pretty(meta).expect("stage metadata serialises");
            let path = tmp.join("meta.json");
            write_atomic(&path, &bytes).map_err(|e| E::from(io_at(&path)(e)))?;
            let dest = self.entry(kind, key);
            self.discard(kind, key)?;
            std::fs::rename(&tmp, &dest).map_err(|e| E::from(io_at(&dest)(e)))
        });
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_ignore_field_order_and_see_every_value() {
        let a = serde_json::json!({"lr": 0.1, "epochs": 3, "nested": {"b": 1, "a": [1, 2]}});
        let b = serde_json::json!({"nested": {"a": [1, 2], "b": 1}, "epochs": 3, "lr": 0.1});
        assert_eq!(
            StageKey::of(StageKind::Row, &a),
            StageKey::of(StageKind::Row, &b)
        );
        let c = serde_json::json!({"nested": {"a": [2, 1], "b": 1}, "epochs": 3, "lr": 0.1});
        assert_ne!(
            StageKey::of(StageKind::Row, &a),
            StageKey::of(StageKind::Row, &c)
        );
        assert_ne!(
            StageKey::of(StageKind::Row, &a),
            StageKey::of(StageKind::Dense, &a)
        );
        // Labels are not hashed because they are never part of the inputs; strings that
        // sanitise alike stay distinct.
        let k = |s: &str| StageKey::of(StageKind::Row, &serde_json::json!({ "x": s }));
        assert_ne!(k("a/b"), k("a_b"));
        assert_ne!(k("ФТ"), k("ГА"));
        assert_eq!(k("x").0.len(), 64);
    }

    #[test]
    fn entries_are_complete_or_absent_and_corrupt_ones_are_discarded() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::open(d.path()).unwrap();
        let key = StageKey::of(StageKind::Dense, &serde_json::json!({"seed": 1}));
        assert!(!cache.contains(StageKind::Dense, &key));
        assert_eq!(cache.meta::<u32>(StageKind::Dense, &key), Ok(None));
        // A failed write leaves nothing behind.
        let r: Result<(), CacheError> = cache.put(StageKind::Dense, &key, &7u32, |dir: &Path| {
            std::fs::write(dir.join("model"), b"half").unwrap();
            Err(CacheError::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::other("interrupted"),
            })
        });
        assert!(r.is_err());
        assert!(!cache.contains(StageKind::Dense, &key));
        assert_eq!(
            std::fs::read_dir(d.path().join("dense")).unwrap().count(),
            0
        );
        // A complete one.
        cache
            .put::<CacheError>(StageKind::Dense, &key, &7u32, |dir| {
                std::fs::write(dir.join("model"), b"weights").unwrap();
                Ok(())
            })
            .unwrap();
        assert_eq!(cache.meta::<u32>(StageKind::Dense, &key), Ok(Some(7)));
        let entry = cache.entry(StageKind::Dense, &key);
        assert_eq!(std::fs::read(entry.join("model")).unwrap(), b"weights");
        // Corrupt metadata is an error naming the file; discarding removes the entry only.
        std::fs::write(entry.join("meta.json"), b"{not json").unwrap();
        let e = cache.meta::<u32>(StageKind::Dense, &key).unwrap_err();
        assert!(e.contains(&key.0) && e.contains("meta.json"), "{e}");
        cache.discard(StageKind::Dense, &key).unwrap();
        assert!(!entry.exists());
        assert!(d.path().join("row").exists());
    }

    #[test]
    fn a_stage_lock_excludes_a_second_holder_until_dropped() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::open(d.path()).unwrap();
        let key = StageKey::of(StageKind::Row, &serde_json::json!(1));
        let held = cache.lock(StageKind::Row, &key).unwrap();
        let path = d.path().join("locks").join(format!("row-{key}.lock"));
        let other = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        assert!(other.try_lock().is_err(), "locked while held");
        drop(held);
        assert!(other.try_lock().is_ok(), "free once dropped");
    }
}
