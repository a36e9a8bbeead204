//! Forgetting scenarios (docs/reference.md, "Data and scenarios"): which training samples form `D_f`; the rest is `D_r`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::rng::permutation;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ForgetKind {
    /// Every training sample of `class`.
    Class,
    /// `n` (or `fraction` of train) samples drawn uniformly without replacement with `seed`.
    Random,
    /// The indices (positions in the train split) listed in the file at `path`: one per line
    /// (`#` comments allowed) or a JSON array.
    File,
}

/// One forgetting scenario as written in a config.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ForgetSpec {
    /// Name shown in reports (default: `class-<c>`, `random-<n>`, or the file name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub kind: ForgetKind,
    /// `class`: the class to forget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 1_000_000))]
    pub class: Option<usize>,
    /// `random`: how many samples.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000_000))]
    pub n: Option<usize>,
    /// `random`: share of train instead of `n` (the paper: 0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub fraction: Option<f64>,
    /// `random`: seed of the draw.
    #[serde(default)]
    #[schemars(range(max = u64::MAX))]
    pub seed: u64,
    /// `file`: path of the index file, relative to the config file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

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
    #[error("forget set of {n} samples must be non-empty and smaller than the training split ({train} samples), so that the retain set is not empty")]
    Size {
        n: usize,
        train: usize,
        /// The setting that gave the size: `n` or `fraction`.
        field: &'static str,
    },
    #[error("index file {path} lists {n} samples; a forget set must be non-empty and smaller than the training split ({train} samples), so that the retain set is not empty")]
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

impl ForgetSpec {
    /// Checks the fields that must (not) be present for the kind.
    fn check_fields(&self) -> Result<(), ForgetError> {
        let (kind, needs, forbids): (&'static str, &[&'static str], &[&'static str]) =
            match self.kind {
                ForgetKind::Class => ("class", &["class"], &["n", "fraction", "path"]),
                ForgetKind::Random => ("random", &[], &["class", "path"]),
                ForgetKind::File => ("file", &["path"], &["class", "n", "fraction"]),
            };
        let present = |f: &str| match f {
            "class" => self.class.is_some(),
            "n" => self.n.is_some(),
            "fraction" => self.fraction.is_some(),
            _ => self.path.is_some(),
        };
        if let Some(field) = needs.iter().find(|f| !present(f)) {
            return Err(ForgetError::Missing { field, kind });
        }
        if let Some(field) = forbids.iter().find(|f| present(f)) {
            return Err(ForgetError::Extra { field, kind });
        }
        if self.kind == ForgetKind::Random {
            match (self.n, self.fraction) {
                (Some(_), Some(_)) => return Err(ForgetError::Ambiguous),
                (None, None) => return Err(ForgetError::Missing { field: "n", kind }),
                _ => {}
            }
        }
        Ok(())
    }

    /// The forget set over a train split with these labels. `base_dir` resolves relative paths.
    /// (The typed form of the built-in scenarios; a config names any registered scenario, see
    /// [`crate::scenario`].)
    pub fn resolve(
        &self,
        train_labels: &[i64],
        classes: usize,
        base_dir: &Path,
    ) -> Result<ForgetSet, ForgetError> {
        self.check_fields()?;
        let train = train_labels.len();
        let (name, class, forget) = match self.kind {
            ForgetKind::Class => select_class(self.class.expect("checked"), train_labels, classes)?,
            ForgetKind::Random => select_random(self.n, self.fraction, self.seed, train)?,
            ForgetKind::File => select_file(self.path.as_ref().expect("checked"), base_dir, train)?,
        };
        Ok(ForgetSet::from_forget(
            self.name.clone().unwrap_or(name),
            self.kind.name().to_string(),
            class,
            forget,
            train,
        ))
    }
}

impl ForgetKind {
    /// The scenario's registered name (`class`, `random`, `file`).
    pub fn name(self) -> &'static str {
        match self {
            ForgetKind::Class => "class",
            ForgetKind::Random => "random",
            ForgetKind::File => "file",
        }
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
            })
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

    fn labels() -> Vec<i64> {
        (0..100).map(|i| (i % 4) as i64).collect()
    }

    fn spec(kind: ForgetKind) -> ForgetSpec {
        ForgetSpec {
            name: None,
            kind,
            class: None,
            n: None,
            fraction: None,
            seed: 0,
            path: None,
        }
    }

    fn assert_partition(s: &ForgetSet, train: usize) {
        let mut all = [s.forget.clone(), s.retain.clone()].concat();
        all.sort();
        assert_eq!(all, (0..train).collect::<Vec<_>>());
    }

    #[test]
    fn class_wise_takes_exactly_the_class() {
        let s = ForgetSpec {
            class: Some(2),
            ..spec(ForgetKind::Class)
        }
        .resolve(&labels(), 4, Path::new("."))
        .unwrap();
        assert_eq!(
            s.forget,
            (0..100).filter(|i| i % 4 == 2).collect::<Vec<_>>()
        );
        assert_partition(&s, 100);
        assert_eq!(s.name, "class-2");
        let e = ForgetSpec {
            class: Some(4),
            ..spec(ForgetKind::Class)
        }
        .resolve(&labels(), 4, Path::new("."));
        assert_eq!(
            e,
            Err(ForgetError::ClassOutOfRange {
                class: 4,
                classes: 4
            })
        );
    }

    #[test]
    fn random_is_seeded_sized_and_partitions() {
        let r = ForgetSpec {
            n: Some(10),
            seed: 3,
            ..spec(ForgetKind::Random)
        };
        let a = r.resolve(&labels(), 4, Path::new(".")).unwrap();
        assert_eq!(a.forget.len(), 10);
        assert_partition(&a, 100);
        assert_eq!(a, r.resolve(&labels(), 4, Path::new(".")).unwrap());
        let b = ForgetSpec {
            seed: 4,
            ..r.clone()
        }
        .resolve(&labels(), 4, Path::new("."))
        .unwrap();
        assert_ne!(a.forget, b.forget);
        let f = ForgetSpec {
            fraction: Some(0.1),
            n: None,
            ..r.clone()
        }
        .resolve(&labels(), 4, Path::new("."))
        .unwrap();
        assert_eq!(f.forget.len(), 10);
        assert_ne!(a.hash(), b.hash());
        for n in [0, 100, 101] {
            let e = ForgetSpec {
                n: Some(n),
                ..r.clone()
            }
            .resolve(&labels(), 4, Path::new("."));
            assert_eq!(
                e,
                Err(ForgetError::Size {
                    n,
                    train: 100,
                    field: "n"
                })
            );
        }
        let e = ForgetSpec {
            fraction: Some(0.1),
            ..r
        }
        .resolve(&labels(), 4, Path::new("."));
        assert_eq!(e, Err(ForgetError::Ambiguous));
    }

    #[test]
    fn index_files_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text).unwrap();
            ForgetSpec {
                path: Some(name.into()),
                ..spec(ForgetKind::File)
            }
            .resolve(&labels(), 4, dir.path())
        };
        let ok = write("ok.txt", "# forget these\n5\n\n1 # and this\n").unwrap();
        assert_eq!(ok.forget, vec![1, 5]);
        assert_partition(&ok, 100);
        assert_eq!(write("ok.json", "[7, 3]").unwrap().forget, vec![3, 7]);
        let e = write("range.txt", "1\n100\n").unwrap_err().to_string();
        assert!(
            e.contains("line 2") && e.contains("index 100") && e.contains("0..100"),
            "{e}"
        );
        let e = write("dup.json", "[4, 2, 4]").unwrap_err().to_string();
        assert!(
            e.contains("listed twice") && e.contains("element 0") && e.contains("element 2"),
            "{e}"
        );
        let e = write("neg.txt", "-1\n").unwrap_err().to_string();
        assert!(e.contains("`-1`"), "{e}");
        let e = ForgetSpec {
            path: Some("missing.txt".into()),
            ..spec(ForgetKind::File)
        }
        .resolve(&labels(), 4, dir.path())
        .unwrap_err()
        .to_string();
        assert!(e.contains("missing.txt"), "{e}");
    }

    #[test]
    fn fields_must_fit_the_kind() {
        let e = spec(ForgetKind::Class).resolve(&labels(), 4, Path::new("."));
        assert_eq!(
            e,
            Err(ForgetError::Missing {
                field: "class",
                kind: "class"
            })
        );
        let e = ForgetSpec {
            class: Some(1),
            n: Some(3),
            ..spec(ForgetKind::Class)
        }
        .resolve(&labels(), 4, Path::new("."));
        assert_eq!(
            e,
            Err(ForgetError::Extra {
                field: "n",
                kind: "class"
            })
        );
    }
}
