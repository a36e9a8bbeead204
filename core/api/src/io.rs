//! Atomic file writes: a reader (or a resumed run) never sees a half-written file.

use std::fs::File;
use std::io::Write;

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Writes `bytes` to a temporary file beside `path`, syncs it, then renames it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = tmp_path(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Runs `write` on a temporary path beside `path`, then renames it over `path`.
pub fn write_atomic_with<E: From<std::io::Error>>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E> {
    let tmp = tmp_path(path);
    match write(&tmp) {
        Ok(()) => std::fs::rename(&tmp, path).map_err(E::from),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Creates `dir` and proves it is writable, before any work is done. A path that exists but is
/// not a folder (or lies below a file) is an error that says so, rather than the OS's "File
/// exists".
pub fn ensure_writable_dir(dir: &Path) -> std::io::Result<()> {
    ensure_dir(dir)?;
    let probe = dir.join(format!(".write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"")?;
    std::fs::remove_file(&probe)
}

/// Creates `dir` (and its parents) unless it is a folder already. A path that is a file, or lies
/// below one, is an `ErrorKind::NotADirectory` error naming the part that is not a folder.
pub fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    let not_a_folder = |p: &Path| {
        std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            format!("{} exists and is not a folder", p.display()),
        )
    };
    match std::fs::create_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) => {
            // The first ancestor (or the path itself) that exists but is no folder.
            let blocker = dir
                .ancestors()
                .find(|a| a.exists() && !a.is_dir() && !a.as_os_str().is_empty());
            match blocker {
                Some(b) => Err(not_a_folder(b)),
                None => Err(e),
            }
        }
    }
}

/// Serde for an `f64` that may be NaN (an accuracy on an empty split): written as `null`, read
/// back from `null` as NaN, so a file the program wrote can always be read again.
pub mod nan_as_null {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else {
            s.serialize_none()
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 (hex) of a file's content.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut h = Sha256::new();
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(hex(&h.finalize()));
        }
        h.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temporaries() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        let e: Result<(), std::io::Error> =
            write_atomic_with(&p, |_| Err(std::io::Error::other("boom")));
        assert!(e.is_err());
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
    }

    #[test]
    fn unwritable_directory_is_an_error() {
        // A path below a regular file can never be a directory.
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("file");
        std::fs::write(&f, b"").unwrap();
        assert!(ensure_writable_dir(&f.join("out")).is_err());
        // The file itself, and a path below it: "is not a folder", naming the file.
        for p in [f.clone(), f.join("out").join("deeper")] {
            let e = ensure_writable_dir(&p).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::NotADirectory, "{e}");
            assert_eq!(
                e.to_string(),
                format!("{} exists and is not a folder", f.display())
            );
        }
    }

    #[test]
    fn nan_is_written_as_null_and_read_back() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct A {
            #[serde(with = "nan_as_null")]
            x: f64,
        }
        assert_eq!(
            serde_json::to_string(&A { x: f64::NAN }).unwrap(),
            r#"{"x":null}"#
        );
        assert!(
            serde_json::from_str::<A>(r#"{"x":null}"#)
                .unwrap()
                .x
                .is_nan()
        );
        assert_eq!(serde_json::from_str::<A>(r#"{"x":0.25}"#).unwrap().x, 0.25);
    }
}
