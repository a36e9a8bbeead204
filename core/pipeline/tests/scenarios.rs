//! Forgetting scenarios through the registry: the built-ins select exactly the rows (and give
//! exactly the row cache keys) they did before scenarios became a registry, on the digits.

use serde_json::{json, Value};
use unlearn_pipeline::config::plan;
use unlearn_pipeline::pipeline::StageKeys;
use unlearn_pipeline::registry::Registry;

fn digits_config(forget: Value) -> Value {
    json!({
        "data": {"dataset": "digits"},
        "train": {"epochs": 1},
        "forget": forget,
    })
}

/// Recorded with the code before the scenario registry (commit b46b137): per scenario, the
/// SHA-256 of its forget indices, its size, and the row key of its `original` row.
const GOLDEN: &[(&str, &str, usize, &str)] = &[
    (
        "class-3",
        "34d32ada729a8bd1eceaef352124e641fe19cbdbfa9e6143fb84a4dc9ddfc31a",
        131,
        "d770e48913726380076bf391ce5aa1b5581ed50d3d8ceebcf5b28c891127cff0",
    ),
    (
        "random-100",
        "5899b30eae1e9ce567d8a80f2acf30a3f4ddde39a6de9be19eea2b9121b97c81",
        100,
        "819c723c13571961476ed57406abb13268a850b4225bc1f0e0c55cb7884a0468",
    ),
    (
        "random-129",
        "a844ff6910767e4c7a1535bbb6edf14ad177934af8c6c3848244e4097307f1f0",
        129,
        "b8a459e75f43fc26f125c2a8837debaa60523b777ed0c95d07cca87724f935f4",
    ),
    (
        "listed",
        "82744994d3f1518029a228531be42b45407b72737623a2de434278c1dfe478e0",
        4,
        "1ded79ccd01ff9676fd082bfe2b03ef3eae55463eb2c6400ec8d9c47c72c3721",
    ),
];

#[test]
fn builtin_scenarios_select_the_same_rows_as_before() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("idx.txt"), "3\n1\n40\n# c\n7\n").unwrap();
    let cfg = digits_config(json!([
        {"kind": "class", "class": 3},
        {"kind": "random", "n": 100, "seed": 7},
        {"kind": "random", "fraction": 0.1},
        {"kind": "file", "path": "idx.txt", "name": "listed"},
    ]));
    let registry = Registry::from_methods([]).unwrap();
    let p = plan(&cfg, &registry, dir.path()).unwrap_or_else(|e| panic!("{e:?}"));
    let keys = StageKeys::new(&p, 0, &json!("fixed data identity")).unwrap();
    let got: Vec<(String, String, usize, String)> = p
        .forget
        .iter()
        .zip(&keys.rows)
        .map(|(f, k)| (f.name.clone(), f.hash(), f.forget.len(), k[0][0].0.clone()))
        .collect();
    let want: Vec<(String, String, usize, String)> = GOLDEN
        .iter()
        .map(|(a, b, c, d)| (a.to_string(), b.to_string(), *c, d.to_string()))
        .collect();
    assert_eq!(got, want);
}
