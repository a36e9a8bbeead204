//! Property-based fuzzing of the config readers: TOML and JSON text (mutated example configs,
//! deep nesting, random bytes) through `read_config_file`, and config values edited at random
//! places through `plan`, which checks them against the schema and the registry and resolves the
//! forget sets. Each call must return `Ok` or `Err`, never panic or abort. The budget: see
//! `unlearn-api/tests/support/fuzz.rs` and docs/fuzzing.md.

use std::path::Path;

use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Value, json};

use unlearn_pipeline::config::{plan, read_config_file};
use unlearn_pipeline::registry::Registry;

#[path = "../../api/tests/support/fuzz.rs"]
mod harness;
use harness::{Bytes, bytes_input, fuzz};

/// A digits config with every built-in forget scenario (one reads `idx.txt`).
fn seed_config() -> Value {
    json!({
        "seeds": [0, 1],
        "data": {"dataset": "digits", "split": {"test_fraction": 0.2, "val_fraction": 0.1, "seed": 0}},
        "model": {"arch": "small-cnn"},
        "train": {"epochs": 2, "lr": 0.05, "batch_size": 64, "milestones": [1]},
        "forget": [
            {"kind": "class", "class": 3},
            {"kind": "random", "n": 100, "seed": 7},
            {"kind": "random", "fraction": 0.1},
            {"kind": "subclass", "class": 2, "fraction": 0.5},
            {"kind": "file", "path": "idx.txt", "name": "listed"}
        ]
    })
}

/// The method sections (attack, prune, unlearn). The methods live in plugin crates, so this
/// crate's registry does not know them: the config does not plan, but every section is still
/// checked (issues are collected, not returned at the first).
fn methods_config() -> Value {
    json!({
        "data": {"dataset": "digits"},
        "train": {"epochs": 1, "milestones": []},
        "attack": {"method": "BadNets", "n": 10, "size": 2, "target": 0, "seed": 0},
        "prune": {"method": "OMP", "sparsity": [0.5, 0.9], "rewind_epoch": 1},
        "unlearn": [
            {"method": "retrain", "epochs": 1},
            {"method": "FT", "epochs": 1, "lr": 0.03}
        ],
        "forget": [{"kind": "poisoned"}]
    })
}

/// A synthetic-data config: its sizes (samples, channels, side) and the subset come from the
/// config, so they are where a config asks for absurd allocations.
fn synthetic_config() -> Value {
    json!({
        "data": {
            "dataset": "synthetic",
            "synthetic": {"samples": 40, "classes": 4, "channels": 1, "size": 4, "noise": 1.0},
            "subset": {"per_class": 5, "seed": 1},
            "split": {"test_fraction": 0.25, "val_fraction": 0.0}
        },
        "model": {"arch": "small-cnn"},
        "train": {"epochs": 1, "milestones": []},
        "forget": [{"kind": "random", "n": 3}]
    })
}

fn registry() -> Registry {
    Registry::builtin().unwrap()
}

/// A fresh folder holding the index file the seed config names.
fn base_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("idx.txt"), "3\n1\n40\n# c\n7\n").unwrap();
    dir
}

/// Reads the file as a user's config is read, then plans it.
fn read_and_plan(path: &Path, registry: &Registry, base: &Path) {
    if let Ok(raw) = read_config_file(path) {
        let _ = plan(&raw, registry, base);
    }
}

/// Text deeply nested in brackets or tables (recursive parsers overflow their stack).
#[derive(Debug, Clone)]
enum Nested {
    TomlArrays(usize),
    TomlInline(usize),
    TomlDottedKey(usize),
    JsonArrays(usize),
    JsonObjects(usize),
}

fn nested() -> impl Strategy<Value = Nested> {
    let depth = prop_oneof![Just(64usize), Just(200), Just(5_000), Just(100_000)];
    prop_oneof![
        depth.clone().prop_map(Nested::TomlArrays),
        depth.clone().prop_map(Nested::TomlInline),
        depth.clone().prop_map(Nested::TomlDottedKey),
        depth.clone().prop_map(Nested::JsonArrays),
        depth.prop_map(Nested::JsonObjects),
    ]
}

impl Nested {
    /// (text, is JSON)
    fn text(&self) -> (String, bool) {
        match *self {
            Nested::TomlArrays(n) => (format!("seeds = {}{}", "[".repeat(n), "]".repeat(n)), false),
            Nested::TomlInline(n) => (
                format!("data = {}{}", "{a = ".repeat(n), "}".repeat(n)),
                false,
            ),
            Nested::TomlDottedKey(n) => (format!("{} = 1", vec!["a"; n].join(".")), false),
            Nested::JsonArrays(n) => (
                format!("{{\"seeds\": {}{}}}", "[".repeat(n), "]".repeat(n)),
                true,
            ),
            Nested::JsonObjects(n) => (format!("{}1{}", "{\"a\": ".repeat(n), "}".repeat(n)), true),
        }
    }
}

#[derive(Debug, Clone)]
enum Text {
    Mutated {
        example: usize,
        json: bool,
        bytes: Bytes,
    },
    Nested(Nested),
}

/// The example configs of the repository, as TOML, and the seed config.
fn examples() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut texts: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect();
    texts.sort();
    texts.push(toml::to_string(&seed_config()).unwrap());
    texts.push(toml::to_string(&synthetic_config()).unwrap());
    texts
}

#[test]
fn fuzz_config_text() {
    let dir = base_dir();
    let registry = registry();
    let tomls = examples();
    let jsons: Vec<String> = tomls
        .iter()
        .map(|t| {
            let v: Value = toml::from_str(t).unwrap();
            serde_json::to_string_pretty(&v).unwrap()
        })
        .collect();
    let n = tomls.len();
    let text = prop_oneof![
        6 => (0..n, any::<bool>(), bytes_input())
            .prop_map(|(example, json, bytes)| Text::Mutated { example, json, bytes }),
        1 => nested().prop_map(Text::Nested),
    ];
    fuzz("config_text", text, |t| {
        let (bytes, json) = match t {
            Text::Mutated {
                example,
                json,
                bytes,
            } => {
                let seed = if *json {
                    &jsons[*example]
                } else {
                    &tomls[*example]
                };
                (bytes.of(seed.as_bytes()), *json)
            }
            Text::Nested(n) => {
                let (s, json) = n.text();
                (s.into_bytes(), json)
            }
        };
        let path = dir
            .path()
            .join(if json { "config.json" } else { "config.toml" });
        std::fs::write(&path, bytes).unwrap();
        read_and_plan(&path, &registry, dir.path());
    });
}

/// Values a user may put anywhere in a config.
fn odd_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(null)),
        Just(json!(true)),
        Just(json!(0)),
        Just(json!(1)),
        Just(json!(-1)),
        Just(json!(2)),
        Just(json!(0.5)),
        Just(json!(-0.5)),
        Just(json!(1.0)),
        Just(json!(1e300)),
        Just(json!(-1e300)),
        Just(json!(5e-324)),
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(i64::MAX)),
        Just(json!(1797)),
        Just(json!(1_000_000_000_000u64)),
        Just(json!("")),
        Just(json!("digits")),
        Just(json!("../../..")),
        Just(json!("/")),
        Just(json!("idx.txt")),
        Just(json!([])),
        Just(json!({})),
        Just(json!([0, 0])),
        Just(json!([1e300, -1])),
        Just(json!({"kind": "file", "path": "/"})),
        Just(json!({"kind": "random", "n": u64::MAX})),
        Just(json!({"kind": "class", "class": u64::MAX})),
        Just(json!({"method": "OMP", "sparsity": 1.0})),
        Just(json!({"samples": 1_000_000_000_000u64, "size": 256, "channels": 4})),
        Just(json!({"per_class": u64::MAX})),
        "\\PC{0,8}".prop_map(Value::String),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
    ]
}

/// One edit of a config value: at the `Index`-th node (in document order), replace it, remove
/// it from its parent, or wrap it in a list.
#[derive(Debug, Clone)]
enum Edit {
    Replace(Index, Value),
    Remove(Index),
    Wrap(Index),
    /// Adds a key to the `Index`-th object (an unknown field, or a known one in the wrong place).
    AddKey(Index, String, Value),
}

fn edit() -> impl Strategy<Value = Edit> {
    let key = prop_oneof![
        Just("epochs".to_string()),
        Just("n".to_string()),
        Just("class".to_string()),
        Just("fraction".to_string()),
        Just("path".to_string()),
        Just("kind".to_string()),
        Just("method".to_string()),
        Just("sparsity".to_string()),
        Just("seed".to_string()),
        Just("samples".to_string()),
        Just("size".to_string()),
        Just("channels".to_string()),
        Just("per_class".to_string()),
        Just("checkpoint".to_string()),
        Just("unknown".to_string()),
    ];
    prop_oneof![
        4 => (any::<Index>(), odd_value()).prop_map(|(i, v)| Edit::Replace(i, v)),
        1 => any::<Index>().prop_map(Edit::Remove),
        1 => any::<Index>().prop_map(Edit::Wrap),
        2 => (any::<Index>(), key, odd_value()).prop_map(|(i, k, v)| Edit::AddKey(i, k, v)),
    ]
}

/// JSON pointers of every node, in document order (the root first).
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                pointers(c, format!("{at}/{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                pointers(c, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

fn apply_edit(v: &mut Value, e: &Edit) {
    let mut all = Vec::new();
    pointers(v, String::new(), &mut all);
    match e {
        Edit::Replace(i, new) => {
            if let Some(n) = v.pointer_mut(&all[i.index(all.len())]) {
                *n = new.clone();
            }
        }
        Edit::Wrap(i) => {
            if let Some(n) = v.pointer_mut(&all[i.index(all.len())]) {
                *n = Value::Array(vec![n.take()]);
            }
        }
        Edit::Remove(i) => {
            let p = &all[i.index(all.len())];
            let Some((parent, last)) = p.rsplit_once('/') else {
                return;
            };
            match v.pointer_mut(parent) {
                Some(Value::Object(m)) => {
                    m.remove(last);
                }
                Some(Value::Array(a)) => {
                    if let Ok(k) = last.parse::<usize>() {
                        a.remove(k);
                    }
                }
                _ => {}
            }
        }
        Edit::AddKey(i, k, new) => {
            let objects: Vec<&String> = all
                .iter()
                .filter(|p| v.pointer(p).is_some_and(Value::is_object))
                .collect();
            if objects.is_empty() {
                return; // the root was replaced by a scalar
            }
            let p = objects[i.index(objects.len())].clone();
            if let Some(Value::Object(m)) = v.pointer_mut(&p) {
                m.insert(k.clone(), new.clone());
            }
        }
    }
}

#[test]
fn fuzz_config_plan() {
    let dir = base_dir();
    let registry = registry();
    let seeds = [seed_config(), synthetic_config(), methods_config()];
    // The data seeds must plan: otherwise the edits only ever reach the first error.
    for seed in &seeds[..2] {
        if let Err(issues) = plan(seed, &registry, dir.path()) {
            panic!("the seed config does not plan: {issues:?}");
        }
    }
    fuzz(
        "config_plan",
        (0..seeds.len(), prop::collection::vec(edit(), 1..5)),
        |(k, edits)| {
            let mut v = seeds[*k].clone();
            for e in edits {
                apply_edit(&mut v, e);
            }
            let _ = plan(&v, &registry, dir.path());
        },
    );
}
