//! A study spread over processes: `run --jobs N` (worker processes claiming stages through the
//! cache's locks) and `unlearn stage` (one stage by id, what an external scheduler runs). The
//! results must be those of one process, bit for bit, whatever happens to a worker.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

mod common;

use common::{on_cpu, stderr, stdout, unlearn};

/// Two seeds, a pruner, two unlearners on synthetic 8x8 data; `epochs` of dense training.
fn config(dir: &Path, name: &str, epochs: usize) -> PathBuf {
    let text = format!(
        r#"seeds = [0, 1]
[data]
dataset = "synthetic"
synthetic = {{ samples = 200, classes = 4, noise = 6.0 }}
split = {{ test_fraction = 0.2, val_fraction = 0.1 }}
[train]
epochs = {epochs}
lr = 0.05
batch_size = 32
milestones = []
[eval]
mia_features = ["confidence"]
[prune]
method = "OMP"
sparsity = 0.8
rewind_epoch = 1
[[forget]]
kind = "class"
class = 1
[[unlearn]]
method = "retrain"
epochs = 2
lr = 0.05
batch_size = 32
milestones = []
[[unlearn]]
method = "FT"
epochs = 1
lr = [0.01, 0.02]
batch_size = 32
"#
    );
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn args<'a>(cfg: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    on_cpu("run", cfg, out, extra)
}

fn results(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap()
}

/// What must not depend on how the stages were spread: every row but its run time, every model
/// but its training seconds.
fn numbers(r: &Value) -> (Vec<Value>, Vec<Value>) {
    let strip = |list: &Value, field: &str| -> Vec<Value> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|x| {
                let mut x = x.clone();
                x.as_object_mut().unwrap().remove(field);
                x
            })
            .collect()
    };
    (
        strip(&r["rows"], "rte"),
        strip(&r["models"], "train_seconds"),
    )
}

/// `(short key, to run)` of every stage `run --dry-run` lists.
fn dry_run(cfg: &Path, out: &Path) -> Vec<(String, bool)> {
    let o = unlearn(&args(cfg, out, &["--dry-run"]));
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
        .lines()
        .filter(|l| {
            ["dense ", "sparse ", "row "]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(|l| {
            let key = l.split_whitespace().nth(1).unwrap();
            (key.to_string(), !l.contains("cached ("))
        })
        .collect()
}

/// `--jobs 2` on a 2-seed study: the rows and models of `--jobs 1`, bit for bit; each worker
/// says which it is; every stage `--dry-run` listed as to run is computed (by the workers),
/// none twice, and the run's closing line and results.json say so.
#[test]
fn two_workers_give_the_results_of_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "study.toml", 3);
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let planned = dry_run(&cfg, &two);
    assert_eq!(planned.len(), 2 * (2 + 2 * 4), "{planned:?}");
    assert!(planned.iter().all(|(_, to_run)| *to_run));
    let o1 = unlearn(&args(&cfg, &one, &[]));
    assert!(o1.status.success(), "{}", stderr(&o1));
    let o2 = unlearn(&args(&cfg, &two, &["--jobs", "2"]));
    let e = stderr(&o2);
    assert!(o2.status.success(), "{e}");
    assert_eq!(numbers(&results(&two)), numbers(&results(&one)));
    for w in ["[unlearn worker 1/2]", "[unlearn worker 2/2]"] {
        assert!(e.contains(w), "{e}");
    }
    assert!(
        e.contains("20 stages: 0 from the cache, 20 computed (20 by 2 workers)"),
        "{e}"
    );
    let r = results(&two);
    let stages = r["stages"].as_array().unwrap();
    let mut ran: Vec<String> = stages
        .iter()
        .filter(|s| s["cached"] == false)
        .map(|s| s["key"].as_str().unwrap()[..12].to_string())
        .collect();
    ran.sort();
    let mut listed: Vec<String> = planned.into_iter().map(|(k, _)| k).collect();
    listed.sort();
    assert_eq!(ran, listed);
    // Each stage was computed once: one entry each, and a re-run computes nothing.
    let again = unlearn(&args(&cfg, &two, &["--jobs", "2"]));
    assert!(
        stderr(&again).contains("20 stages: 20 from the cache, 0 computed (0 by 2 workers)"),
        "{}",
        stderr(&again)
    );
    assert!(dry_run(&cfg, &two).iter().all(|(_, to_run)| !to_run));
}

/// The children of process `pid` (from /proc).
fn children(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// `kill -9` of a worker in the middle of dense training stops the run (exit 1, naming the
/// worker and the signal); a re-run resumes and ends with the results of an uninterrupted run.
#[test]
fn a_killed_worker_stops_the_run_and_a_rerun_completes_it() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "slow.toml", 60);
    let (clean, out) = (dir.path().join("clean"), dir.path().join("out"));
    let reference = unlearn(&args(&cfg, &clean, &[]));
    assert!(reference.status.success(), "{}", stderr(&reference));
    let parent = Command::new(env!("CARGO_BIN_EXE_unlearn"))
        .args(args(&cfg, &out, &["--jobs", "2"]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for a worker that has started training (its saved state appears after an epoch).
    let t0 = std::time::Instant::now();
    let victim = loop {
        let partial = out.join("cache/partial");
        let training = walk(&partial)
            .iter()
            .any(|p| p.extension().is_some_and(|e| e == "safetensors"));
        if let (true, Some(&w)) = (training, children(parent.id()).first()) {
            break w;
        }
        assert!(t0.elapsed().as_secs() < 120, "no worker started training");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(
        Command::new("kill")
            .args(["-KILL", &victim.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let o = parent.wait_with_output().unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(
        e.contains(&format!("(pid {victim}) was killed by signal 9"))
            && e.contains("re-run to resume"),
        "{e}"
    );
    assert!(!out.join("results.json").exists());
    let again = unlearn(&args(&cfg, &out, &["--jobs", "2"]));
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(numbers(&results(&out)), numbers(&results(&clean)));
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// `unlearn stage <config> <id>`: one row by the id `--dry-run` prints computes that row and the
/// model it starts from, nothing else; ids that name no stage are exit-2 errors; `run` then
/// takes both from the cache.
#[test]
fn one_stage_by_id_computes_it_and_what_it_needs() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "study.toml", 2);
    let out = dir.path().join("out");
    let planned = dry_run(&cfg, &out);
    // One FT row on the dense model of seed 1 (stage 10 is that seed's dense model).
    let o = unlearn(&args(&cfg, &out, &["--dry-run"]));
    let line = stdout(&o)
        .lines()
        .find(|l| l.contains("FT lr=0.01 on class-1 (dense), seed 1"))
        .unwrap()
        .to_string();
    let id = line.split_whitespace().nth(1).unwrap().to_string();
    let dense1 = &planned[10].0;
    let s = unlearn(&on_cpu("stage", &cfg, &out, &[&id[..8]]));
    assert!(s.status.success(), "{}", stderr(&s));
    assert!(
        stderr(&s).contains("1 stage(s): 1 computed, 0 already cached"),
        "{}",
        stderr(&s)
    );
    let cached: Vec<String> = dry_run(&cfg, &out)
        .into_iter()
        .filter(|(_, to_run)| !to_run)
        .map(|(k, _)| k)
        .collect();
    assert_eq!(cached.len(), 2, "{cached:?}");
    assert!(
        cached.contains(&id) && cached.contains(dense1),
        "{cached:?}"
    );
    for bad in ["zzzzzzzz", "abc", "000000000000"] {
        let o = unlearn(&on_cpu("stage", &cfg, &out, &[bad]));
        assert_eq!(o.status.code(), Some(2), "{bad}: {}", stderr(&o));
        assert!(stderr(&o).contains("--dry-run"), "{}", stderr(&o));
    }
    let r = unlearn(&args(&cfg, &out, &[]));
    assert!(
        stderr(&r).contains("20 stages: 2 from the cache, 18 computed"),
        "{}",
        stderr(&r)
    );
}
