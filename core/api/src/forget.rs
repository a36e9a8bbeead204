//! Forgetting scenarios (docs/reference.md, "Data and scenarios"): which training samples form `D_f`; the rest is `D_r`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::rng::permutation;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ForgetError {
    #[error("`{field}` is required for kind `{kind}`")]
    Missing {
        field: &'static str,
        kind: &'static str,
    },
    #[error("`{field}` does not apply to kind `{kind}`")]
    Extra {
        field: &'static str,
        kind: &'static str,
    },
    #[error("class {class} is outside 0..{classes}")]
    ClassOutOfRange { class: usize, classes: usize },
    #[error("class {class} has no samples in the training split")]
    EmptyClass { class: usize },
    #[error("give either `n` or `fraction` for a random forget set, not both")]
    Ambiguous,
    #[error(
        "forget set of {n} samples must be non-empty and smaller than the training split ({train} samples), so that the retain set is not empty"
    )]
    Size {
        n: usize,
        train: usize,
        /// The setting that gave the size: `n` or `fraction`.
        field: &'static str,
    },
    #[error(
        "index file {path} lists {n} samples; a forget set must be non-empty and smaller than the training split ({train} samples), so that the retain set is not empty"
    )]
    FileSize {
        path: PathBuf,
        n: usize,
        train: usize,
    },
    #[error("cannot read index file {path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error("index file {path}, {location}: `{text}` is not a non-negative integer index")]
    Parse {
        path: PathBuf,
        location: String,
        text: String,
    },
    #[error(
        "index file {path}, {location}: index {index} is outside the training split (0..{train})"
    )]
    OutOfRange {
        path: PathBuf,
        location: String,
        index: usize,
        train: usize,
    },
    #[error("index file {path}: index {index} is listed twice ({first} and {second})")]
    Duplicate {
        path: PathBuf,
        index: usize,
        first: String,
        second: String,
    },
}

impl ForgetError {
    /// The config field the error is about (for path-precise messages).
    pub fn field(&self) -> &'static str {
        match self {
            Self::Missing { field, .. } | Self::Extra { field, .. } => field,
            Self::ClassOutOfRange { .. } | Self::EmptyClass { .. } => "class",
            Self::Ambiguous => "n",
            Self::Size { field, .. } => field,
            _ => "path",
        }
    }
}

/// `D_f` and `D_r` as sorted positions in the train split; together they partition it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ForgetSet {
    pub name: String,
    /// The registered scenario that drew it (`class`, `random`, `file`, `subclass`, or a
    /// plugin's); serialised as that name, as the built-in kinds always were.
    pub kind: String,
    /// The class removed entirely: set only when `forget` is exactly every training sample of
    /// that class (class-wise forgetting; the registry checks it). Class-wise TA leaves it out of
    /// the test set, and some methods treat it specially. Scenarios that forget part of a class
    /// (`subclass`) leave it `None`.
    pub class: Option<usize>,
    pub forget: Vec<usize>,
    pub retain: Vec<usize>,
}

impl ForgetSet {
    /// The set forgetting `forget` (positions in a training split of `train` samples; sorted
    /// here), retaining the rest.
    pub fn from_forget(
        name: String,
        kind: String,
        class: Option<usize>,
        mut forget: Vec<usize>,
        train: usize,
    ) -> Self {
        forget.sort_unstable();
        let mut in_forget = vec![false; train];
        for &i in &forget {
            in_forget[i] = true;
        }
        let retain = (0..train).filter(|&i| !in_forget[i]).collect();
        Self {
            name,
            kind,
            class,
            forget,
            retain,
        }
    }

    /// SHA-256 of the sorted forget indices (one decimal per line), recorded with results.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        for i in &self.forget {
            h.update(format!("{i}\n").as_bytes());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A default name, the class removed entirely (class-wise only), and the forget positions.
pub(crate) type Selected = (String, Option<usize>, Vec<usize>);

/// Class-wise forgetting: every training sample of class `c`.
pub(crate) fn select_class(
    c: usize,
    train_labels: &[i64],
    classes: usize,
) -> Result<Selected, ForgetError> {
    if c >= classes {
        return Err(ForgetError::ClassOutOfRange { class: c, classes });
    }
    let f: Vec<usize> = (0..train_labels.len())
        .filter(|&i| train_labels[i] == c as i64)
        .collect();
    if f.is_empty() {
        return Err(ForgetError::EmptyClass { class: c });
    }
    Ok((format!("class-{c}"), Some(c), f))
}

/// Random forgetting: `n` (or `fraction` of train) positions of a seeded permutation.
pub(crate) fn select_random(
    n: Option<usize>,
    fraction: Option<f64>,
    seed: u64,
    train: usize,
) -> Result<Selected, ForgetError> {
    let n = match (n, fraction) {
        (Some(_), Some(_)) => return Err(ForgetError::Ambiguous),
        (Some(n), _) => n,
        (_, Some(f)) => (f * train as f64).round() as usize,
        (None, None) => {
            return Err(ForgetError::Missing {
                field: "n",
                kind: "random",
            });
        }
    };
    if n == 0 || n >= train {
        let field = if fraction.is_some() { "fraction" } else { "n" };
        return Err(ForgetError::Size { n, train, field });
    }
    let mut f = permutation(train, seed, "forget");
    f.truncate(n);
    Ok((format!("random-{n}"), None, f))
}

/// The positions listed in an index file (relative to `base_dir`).
pub(crate) fn select_file(
    path: &Path,
    base_dir: &Path,
    train: usize,
) -> Result<Selected, ForgetError> {
    let path = base_dir.join(path);
    let f = read_index_file(&path, train)?;
    if f.is_empty() || f.len() >= train {
        return Err(ForgetError::FileSize {
            path,
            n: f.len(),
            train,
        });
    }
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
    Ok((format!("file-{}", stem.unwrap_or_default()), None, f))
}

/// Reads and validates an index file: every index within `0..train`, none twice.
pub fn read_index_file(path: &Path, train: usize) -> Result<Vec<usize>, ForgetError> {
    let text = std::fs::read_to_string(path).map_err(|e| ForgetError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    // (location, text) pairs, so errors can point at a line or a JSON position.
    let items: Vec<(String, String)> = if text.trim_start().starts_with('[') {
        let values: Vec<serde_json::Value> =
            serde_json::from_str(&text).map_err(|e| ForgetError::Io {
                path: path.to_path_buf(),
                message: format!("not a JSON array: {e}"),
            })?;
        values
            .iter()
            .enumerate()
            .map(|(k, v)| (format!("element {k}"), v.to_string()))
            .collect()
    } else {
        text.lines()
            .enumerate()
            .map(|(k, l)| {
                (
                    format!("line {}", k + 1),
                    l.split('#').next().unwrap_or("").trim().to_string(),
                )
            })
            .filter(|(_, t)| !t.is_empty())
            .collect()
    };
    let mut seen: HashMap<usize, String> = HashMap::new();
    let mut out = Vec::with_capacity(items.len());
    for (location, t) in items {
        let index: usize = t.parse().map_err(|_| ForgetError::Parse {
            path: path.to_path_buf(),
            location: location.clone(),
            text: t.clone(),
        })?;
        if index >= train {
            return Err(ForgetError::OutOfRange {
                path: path.to_path_buf(),
                location,
                index,
                train,
            });
        }
        if let Some(first) = seen.insert(index, location.clone()) {
            return Err(ForgetError::Duplicate {
                path: path.to_path_buf(),
                index,
                first,
                second: location,
            });
        }
        out.push(index);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels() -> Vec<i64> {
        (0..100).map(|i| (i % 4) as i64).collect()
    }

    /// The forget set of a built-in scenario, as a config's `[[forget]]` entry selects it.
    fn resolve(kind: &str, settings: serde_json::Value, base: &Path) -> Result<ForgetSet, String> {
        crate::scenario::resolve_named(kind, &settings, &labels(), 4, base)
    }

    fn assert_partition(s: &ForgetSet, train: usize) {
        let mut all = [s.forget.clone(), s.retain.clone()].concat();
        all.sort();
        assert_eq!(all, (0..train).collect::<Vec<_>>());
    }

    #[test]
    fn class_wise_takes_exactly_the_class() {
        let here = Path::new(".");
        let s = resolve("class", json!({"class": 2}), here).unwrap();
        assert_eq!(
            s.forget,
            (0..100).filter(|i| i % 4 == 2).collect::<Vec<_>>()
        );
        assert_partition(&s, 100);
        assert_eq!(s.name, "class-2");
        assert_eq!(
            select_class(4, &labels(), 4),
            Err(ForgetError::ClassOutOfRange {
                class: 4,
                classes: 4
            })
        );
        let e = resolve("class", json!({"class": 4}), here).unwrap_err();
        assert!(e.contains("class 4 is outside 0..4"), "{e}");
    }

    #[test]
    fn random_is_seeded_sized_and_partitions() {
        let here = Path::new(".");
        let a = resolve("random", json!({"n": 10, "seed": 3}), here).unwrap();
        assert_eq!(a.forget.len(), 10);
        assert_partition(&a, 100);
        assert_eq!(
            a,
            resolve("random", json!({"n": 10, "seed": 3}), here).unwrap()
        );
        let b = resolve("random", json!({"n": 10, "seed": 4}), here).unwrap();
        assert_ne!(a.forget, b.forget);
        let f = resolve("random", json!({"fraction": 0.1, "seed": 3}), here).unwrap();
        assert_eq!(f.forget.len(), 10);
        assert_ne!(a.hash(), b.hash());
        for n in [0, 100, 101] {
            assert_eq!(
                select_random(Some(n), None, 3, 100),
                Err(ForgetError::Size {
                    n,
                    train: 100,
                    field: "n"
                })
            );
        }
        assert_eq!(
            select_random(Some(10), Some(0.1), 3, 100),
            Err(ForgetError::Ambiguous)
        );
        assert!(resolve("random", json!({"n": 10, "fraction": 0.1}), here).is_err());
    }

    #[test]
    fn index_files_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).unwrap();
            resolve("file", json!({ "path": name }), dir.path())
        };
        let ok = write("ok.txt", "# forget these\n5\n\n1 # and this\n").unwrap();
        assert_eq!(ok.forget, vec![1, 5]);
        assert_partition(&ok, 100);
        assert_eq!(write("ok.json", "[7, 3]").unwrap().forget, vec![3, 7]);
        let e = write("range.txt", "1\n100\n").unwrap_err();
        assert!(
            e.contains("line 2") && e.contains("index 100") && e.contains("0..100"),
            "{e}"
        );
        let e = write("dup.json", "[4, 2, 4]").unwrap_err();
        assert!(
            e.contains("listed twice") && e.contains("element 0") && e.contains("element 2"),
            "{e}"
        );
        let e = write("neg.txt", "-1\n").unwrap_err();
        assert!(e.contains("`-1`"), "{e}");
        let e = resolve("file", json!({"path": "missing.txt"}), dir.path()).unwrap_err();
        assert!(e.contains("missing.txt"), "{e}");
    }

    #[test]
    fn fields_must_fit_the_kind() {
        let here = Path::new(".");
        assert!(resolve("class", json!({}), here).is_err());
        let e = resolve("class", json!({"class": 1, "n": 3}), here).unwrap_err();
        assert!(e.contains("`n`"), "{e}");
    }
}
