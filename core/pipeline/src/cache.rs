//! The stage cache: every stage of a run (the dense model, a sparse model, one row of results)
//! is stored under a key that is the SHA-256 of exactly what it depends on, never of a user's
//! label. A changed config recomputes only the stages whose inputs changed; several runs (or
//! studies) can share one cache.
//!
//! Layout: `<cache>/<kind>/<key>/` per entry (its files, with `meta.json` written last), built in
//! a temporary folder and renamed into place, so an entry is complete or absent. `meta.json`
//! seals the entry: it records the entry's kind and full key and the SHA-256 of each of its
//! files, and a digest of all that, so a reader detects a damaged file, a damaged `meta.json`
//! and an entry moved under another key alike. A process that computes a stage holds
//! `<cache>/locks/<kind>-<key>.lock` (an OS file lock, released if the process dies, with a
//! record of its holder, see [`crate::lock`]), and another process wanting the same stage waits,
//! saying whom for, then reuses it. An entry that cannot be read or fails its seal is named,
//! removed and recomputed; the rest of the cache is kept.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
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
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
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
pub type StageLock = crate::lock::HeldLock;

/// The sealed form of `meta.json` (see the module docs).
#[derive(Debug, Serialize, serde::Deserialize)]
struct Sealed {
    kind: String,
    key: String,
    /// File name -> SHA-256 of its content, for every file of the entry but `meta.json`.
    files: BTreeMap<String, String>,
    meta: Value,
    /// SHA-256 of the canonical JSON of the four fields above.
    seal: String,
}

fn seal_of(kind: &str, key: &str, files: &BTreeMap<String, String>, meta: &Value) -> String {
    let v = serde_json::json!({"kind": kind, "key": key, "files": files, "meta": meta});
    hex(&Sha256::digest(canonical_json(&v).as_bytes()))
}

/// `value` sealed to one entry (its key) as JSON bytes: what [`open_sealed`] reads back. For
/// files added to an entry after it was stored (a model's accuracies).
pub fn seal_json(key: &StageKey, value: &Value) -> Vec<u8> {
    let seal = seal_of("extra", &key.0, &BTreeMap::new(), value);
    serde_json::to_vec(&serde_json::json!({"key": key.0, "value": value, "seal": seal}))
        .expect("JSON serialises")
}

/// The value of [`seal_json`]'s bytes, if they are intact and belong to `key`.
pub fn open_sealed(key: &StageKey, bytes: &[u8]) -> Option<Value> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let value = v.get("value")?.clone();
    let ok = v.get("key")?.as_str()? == key.0
        && v.get("seal")?.as_str()? == seal_of("extra", &key.0, &BTreeMap::new(), &value);
    ok.then_some(value)
}

impl Cache {
    /// Opens (creating if needed) the cache in `dir`.
    pub fn open(dir: &Path) -> Result<Cache, CacheError> {
        for sub in ["dense", "sparse", "row", "locks"] {
            let d = dir.join(sub);
            crate::io::ensure_dir(&d).map_err(io_at(&d))?;
        }
        Ok(Cache {
            dir: dir.to_path_buf(),
        })
    }

    /// The cache in `dir` for reading only: nothing is created (`run --dry-run` writes nothing),
    /// and a folder that does not exist is an empty cache.
    pub fn peek(dir: &Path) -> Cache {
        Cache {
            dir: dir.to_path_buf(),
        }
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

    /// The lock file of one stage.
    pub fn lock_path(&self, kind: StageKind, key: &StageKey) -> PathBuf {
        self.dir.join("locks").join(format!("{kind}-{key}.lock"))
    }

    /// Waits for, then holds, the lock of one stage (`label` names it in messages, `what` names
    /// this process to others, e.g. `unlearn run study.toml`). While another process holds it,
    /// `notify` hears who (pid, host, what, since when) at once and then every half minute.
    pub fn lock(
        &self,
        kind: StageKind,
        key: &StageKey,
        label: &str,
        what: &str,
        notify: &dyn Fn(&str),
    ) -> Result<StageLock, CacheError> {
        let path = self.lock_path(kind, key);
        let waiting = |m: &str| notify(&format!("stage {label}: {m}"));
        Ok(crate::lock::acquire(
            &path,
            what,
            crate::lock::Policy::Wait { notify: &waiting },
            crate::lock::Timing::from_env(),
        )?)
    }

    /// The lock of one stage if no other process holds it, else None (a worker then leaves the
    /// stage to its holder).
    pub fn try_lock(
        &self,
        kind: StageKind,
        key: &StageKey,
        what: &str,
    ) -> Result<Option<StageLock>, CacheError> {
        match crate::lock::acquire(
            &self.lock_path(kind, key),
            what,
            crate::lock::Policy::Refuse,
            crate::lock::Timing::from_env(),
        ) {
            Ok(held) => Ok(Some(held)),
            Err(crate::lock::LockError::Held { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// An entry's metadata, or None when there is no complete entry. The entry's seal is
    /// checked first: its kind and key, the digest of `meta.json` and of every file it lists.
    /// Anything that does not hold is an error naming the entry and what failed (the caller
    /// discards it and recomputes).
    pub fn meta<T: DeserializeOwned>(
        &self,
        kind: StageKind,
        key: &StageKey,
    ) -> Result<Option<T>, String> {
        self.read_meta(kind, key, true)
    }

    /// An entry's metadata without checking its files (for `--dry-run`'s estimates, which must
    /// not read every model in the cache); `meta.json`'s own seal is still checked.
    pub fn peek_meta<T: DeserializeOwned>(&self, kind: StageKind, key: &StageKey) -> Option<T> {
        self.read_meta(kind, key, false).ok().flatten()
    }

    fn read_meta<T: DeserializeOwned>(
        &self,
        kind: StageKind,
        key: &StageKey,
        check_files: bool,
    ) -> Result<Option<T>, String> {
        let dir = self.entry(kind, key);
        let path = dir.join("meta.json");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let bad = |why: String| format!("{}: {why}", path.display());
        let sealed: Sealed = serde_json::from_slice(&bytes).map_err(|e| {
            bad(format!(
                "not a sealed entry ({e}); entries written before unlearn recorded digests are recomputed once"
            ))
        })?;
        if sealed.kind != kind.name() || sealed.key != key.0 {
            return Err(bad(format!(
                "it records the entry {}/{}, not this one: it was moved or copied here",
                sealed.kind,
                &sealed.key[..12.min(sealed.key.len())]
            )));
        }
        if seal_of(&sealed.kind, &sealed.key, &sealed.files, &sealed.meta) != sealed.seal {
            return Err(bad("its content does not match its seal (damaged)".into()));
        }
        if check_files {
            for (name, want) in &sealed.files {
                let file = dir.join(name);
                match file_sha256(&file) {
                    Ok(got) if &got == want => {}
                    Ok(_) => {
                        return Err(format!(
                            "{}: its content does not match the digest in meta.json (damaged)",
                            file.display()
                        ));
                    }
                    Err(e) => return Err(format!("{}: {e}", file.display())),
                }
            }
        }
        serde_json::from_value(sealed.meta)
            .map(Some)
            .map_err(|e| bad(e.to_string()))
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
            let files = digests(&tmp).map_err(|e| E::from(io_at(&tmp)(e)))?;
            let meta = serde_json::to_value(meta).expect("stage metadata serialises");
            let sealed = Sealed {
                kind: kind.name().into(),
                key: key.0.clone(),
                seal: seal_of(kind.name(), &key.0, &files, &meta),
                files,
                meta,
            };
            let bytes = serde_json::to_vec_pretty(&sealed).expect("stage metadata serialises");
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

/// SHA-256 of every file in `dir` (an entry being written: files only, no folders).
fn digests(dir: &Path) -> std::io::Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_file() {
            let name = e.file_name().to_string_lossy().into_owned();
            out.insert(name, file_sha256(&e.path())?);
        }
    }
    Ok(out)
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

    /// Every file of an entry, and its metadata, is sealed: a flipped bit anywhere, or the entry
    /// moved under another key, is an error naming what failed; the intact entry reads.
    #[test]
    fn damaged_or_moved_entries_fail_their_seal() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::open(d.path()).unwrap();
        let key = StageKey::of(StageKind::Dense, &serde_json::json!({"seed": 1}));
        let meta = serde_json::json!({"train_seconds": 12.5, "ta": 99.38});
        cache
            .put::<CacheError>(StageKind::Dense, &key, &meta, |dir| {
                std::fs::write(dir.join("model.safetensors"), vec![7u8; 4096]).unwrap();
                std::fs::write(dir.join("rewind.safetensors"), b"rewind").unwrap();
                Ok(())
            })
            .unwrap();
        let read = || cache.meta::<Value>(StageKind::Dense, &key);
        assert_eq!(read(), Ok(Some(meta.clone())));
        let entry = cache.entry(StageKind::Dense, &key);
        let flip = |file: &str, at: usize| {
            let p = entry.join(file);
            let mut b = std::fs::read(&p).unwrap();
            b[at] ^= 0x04;
            std::fs::write(&p, b).unwrap();
        };
        // A weight byte: the file is named.
        flip("model.safetensors", 2000);
        let e = read().unwrap_err();
        assert!(
            e.contains("model.safetensors") && e.contains("damaged"),
            "{e}"
        );
        flip("model.safetensors", 2000);
        assert_eq!(read(), Ok(Some(meta.clone())));
        // A recorded number, still valid JSON (99.38 -> 99.78): the seal fails.
        let m = entry.join("meta.json");
        let text = std::fs::read_to_string(&m).unwrap();
        std::fs::write(&m, text.replace("99.38", "99.78")).unwrap();
        let e = read().unwrap_err();
        assert!(e.contains("meta.json") && e.contains("seal"), "{e}");
        std::fs::write(&m, &text).unwrap();
        // peek_meta does not read the files, but still checks meta.json.
        flip("rewind.safetensors", 1);
        assert_eq!(
            cache.peek_meta::<Value>(StageKind::Dense, &key),
            Some(meta.clone())
        );
        assert!(read().unwrap_err().contains("rewind.safetensors"));
        flip("rewind.safetensors", 1);
        // The entry copied under another key (or kind) says so.
        let other = StageKey::of(StageKind::Dense, &serde_json::json!({"seed": 2}));
        let copy = cache.entry(StageKind::Dense, &other);
        std::fs::create_dir_all(&copy).unwrap();
        for f in ["model.safetensors", "rewind.safetensors", "meta.json"] {
            std::fs::copy(entry.join(f), copy.join(f)).unwrap();
        }
        let e = cache.meta::<Value>(StageKind::Dense, &other).unwrap_err();
        assert!(e.contains("moved or copied"), "{e}");
        // A file added after sealing is no part of the entry; one sealed to a key reads back.
        let extra = seal_json(&key, &serde_json::json!({"train": 90.5}));
        assert_eq!(
            open_sealed(&key, &extra),
            Some(serde_json::json!({"train": 90.5}))
        );
        assert_eq!(open_sealed(&other, &extra), None);
        let tampered = String::from_utf8(extra).unwrap().replace("90.5", "95.5");
        assert_eq!(open_sealed(&key, tampered.as_bytes()), None);
        // Nothing is created by a read-only view of a missing cache.
        let missing = d.path().join("nowhere");
        assert_eq!(
            Cache::peek(&missing).meta::<Value>(StageKind::Row, &key),
            Ok(None)
        );
        assert!(!missing.exists());
    }

    #[test]
    fn a_stage_lock_excludes_a_second_holder_until_dropped() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::open(d.path()).unwrap();
        let key = StageKey::of(StageKind::Row, &serde_json::json!(1));
        let held = cache
            .lock(StageKind::Row, &key, "x", "test", &|_| {})
            .unwrap();
        let path = d.path().join("locks").join(format!("row-{key}.lock"));
        let other = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        assert!(other.try_lock().is_err(), "locked while held");
        drop(held);
        assert!(other.try_lock().is_ok(), "free once dropped");
    }
}
