//! The stage cache as a user meets it: what a changed config recomputes, and the hazards of the
//! output folder (labels that sanitise alike, a checkpoint whose content changes, a folder that
//! is not ours, a corrupt entry, two runs at once).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

mod common;

use common::{stderr, stdout, unlearn};

/// A small run: synthetic 8x8 data, a few epochs, class 1 forgotten; `prune` and `unlearn` are
/// TOML appended as they are.
fn config(dir: &Path, name: &str, prune: &str, unlearn: &str) -> PathBuf {
    let text = format!(
        r#"seed = 0
[data]
dataset = "synthetic"
synthetic = {{ samples = 200, classes = 4, noise = 6.0 }}
split = {{ test_fraction = 0.2, val_fraction = 0.1 }}
[train]
epochs = 3
lr = 0.05
batch_size = 32
milestones = []
[eval]
mia_features = ["confidence"]
[[forget]]
kind = "class"
class = 1
{prune}
{unlearn}
"#
    );
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

const OMP: &str = "[prune]\nmethod = \"OMP\"\nsparsity = 0.8\nrewind_epoch = 1\n";

fn ft(lr: f64, label: &str) -> String {
    format!(
        "[[unlearn]]\nmethod = \"FT\"\nlabel = {label:?}\nepochs = 1\nlr = {lr}\nbatch_size = 32\n"
    )
}

fn run(cfg: &Path, out: &Path, extra: &[&str]) -> (Value, Output) {
    let mut args = vec![
        "--device",
        "cpu",
        "run",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend(extra);
    let o = unlearn(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    (r, o)
}

/// What `run --dry-run` prints (it must succeed).
fn dry_run(cfg: &Path, out: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "run",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--dry-run",
    ];
    args.extend(extra);
    let o = unlearn(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    stdout(&o)
}

/// `(kind, label, cached)` of every stage of a run.
fn stages(r: &Value) -> Vec<(String, String, bool)> {
    r["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["kind"].as_str().unwrap().to_string(),
                s["label"].as_str().unwrap().to_string(),
                s["cached"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// The cache key of the stage of `kind` labelled `label` in a run's results.
fn stage_key(r: &Value, kind: &str, label: &str) -> String {
    r["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == kind && s["label"] == label)
        .unwrap()["key"]
        .as_str()
        .unwrap()
        .to_string()
}

fn computed(r: &Value) -> Vec<String> {
    stages(r)
        .into_iter()
        .filter(|s| !s.2)
        .map(|s| s.1)
        .collect()
}

fn metrics(r: &Value) -> Vec<(String, Value)> {
    r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                format!("{} {} {}", x["model"], x["method"], x["label"]),
                x["metrics"].clone(),
            )
        })
        .collect()
}

/// Adding an unlearner to a finished run computes only its rows: the dense and sparse models
/// and every other row come from the cache; `--dry-run` says so first; an unchanged re-run
/// computes nothing; a second output folder sharing the cache computes nothing either.
#[test]
fn adding_an_unlearner_runs_only_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cache = dir.path().join("shared-cache");
    let cache_arg = ["--cache", cache.to_str().unwrap()];
    let first = config(dir.path(), "a.toml", OMP, &ft(0.01, "FT"));
    let (r1, _) = run(&first, &out, &cache_arg);
    // dense, sparse, and (original, FT) x (dense, sparse)
    assert_eq!(computed(&r1).len(), 6, "{:?}", stages(&r1));

    let ga = "[[unlearn]]\nmethod = \"GA\"\nepochs = 1\nlr = 1e-4\nbatch_size = 32\n";
    let second = config(
        dir.path(),
        "b.toml",
        OMP,
        &format!("{}{ga}", ft(0.01, "FT")),
    );
    let plan = dry_run(&second, &out, &cache_arg);
    assert!(plan.contains("8 stages: 6 cached, 2 to run"), "{plan}");
    let (r2, o) = run(&second, &out, &cache_arg);
    assert_eq!(
        computed(&r2),
        ["GA on class-1 (dense)", "GA on class-1 (sparse)"],
        "{:?}",
        stages(&r2)
    );
    assert!(!stderr(&o).contains("training the dense model") && !stderr(&o).contains("pruning"));
    // The rows both runs share are the same numbers.
    let m1 = metrics(&r1);
    let m2 = metrics(&r2);
    for row in &m1 {
        assert!(m2.contains(row), "{} changed", row.0);
    }

    // Unchanged: nothing is computed, not even the models' accuracies (kept in their entries).
    let (r3, o) = run(&second, &out, &cache_arg);
    assert!(computed(&r3).is_empty(), "{:?}", stages(&r3));
    assert!(!stderr(&o).contains("unlearning:"));
    assert_eq!(metrics(&r3), m2);
    assert_eq!(r3["models"], r1["models"]);
    for kind in ["dense", "sparse"] {
        for entry in std::fs::read_dir(cache.join(kind)).unwrap() {
            assert!(entry.unwrap().path().join("accuracy.json").is_file());
        }
    }
    // Another output folder on the same cache: nothing either, same table.
    let (r4, _) = run(&second, &dir.path().join("other"), &cache_arg);
    assert!(computed(&r4).is_empty());
    assert_eq!(metrics(&r4), m2);
}

/// Rows are keyed by what they compute, never by their labels: labels that a file name would
/// sanitise alike stay apart, a method labelled `original` is reported beside the real
/// original, and two labels for the same settings share one computation.
#[test]
fn labels_never_collide_or_vanish() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let unlearners = [
        ft(0.01, "ФТ"),
        ft(0.05, "ГА"),
        ft(0.02, "a/b"),
        ft(0.03, "a_b"),
        ft(0.04, "original"),
        ft(0.01, "FT again"),
    ]
    .concat();
    let cfg = config(dir.path(), "labels.toml", "", &unlearners);
    let (r, _) = run(&cfg, &out, &[]);
    let rows = r["rows"].as_array().unwrap();
    let labels: Vec<&str> = rows.iter().map(|x| x["label"].as_str().unwrap()).collect();
    assert_eq!(
        labels,
        ["original", "ФТ", "ГА", "a/b", "a_b", "original", "FT again"]
    );
    assert_eq!(rows[0]["method"], "original");
    assert_eq!(rows[5]["method"], "FT");
    assert!(rows[5]["rte"].as_f64().is_some() && rows[0]["rte"].is_null());
    // Each setting is its own stage (different keys, whatever the labels); the same settings
    // under two labels are one stage, computed once.
    let key = |label: &str| -> String {
        r["stages"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["label"] == format!("{label} on class-1 (dense)"))
            .unwrap()["key"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let keys: Vec<String> = labels[1..6].iter().map(|l| key(l)).collect();
    for i in 0..keys.len() {
        for j in i + 1..keys.len() {
            assert_ne!(keys[i], keys[j], "{} vs {}", labels[i + 1], labels[j + 1]);
        }
    }
    assert_eq!(key("FT again"), key("ФТ"));
    assert_eq!(rows[1]["metrics"], rows[6]["metrics"]);
    let ran = computed(&r);
    assert_eq!(
        ran.len(),
        1 + 1 + 5,
        "dense, original, 5 distinct FTs: {ran:?}"
    );
    // A re-run reports the same rows under the same labels.
    let (again, _) = run(&cfg, &out, &[]);
    assert_eq!(again["rows"].as_array().unwrap().len(), 7);
    assert_eq!(metrics(&again), metrics(&r));
}

/// A list of numbers in a method's numeric setting sweeps it, as `sparsity = [...]` does for
/// pruners: one row per value (several lists: per combination), labelled by the values. Each row
/// is the stage the same settings written out by hand would be: a config with the four FTs
/// written out computes nothing new and reports the same numbers. A setting that takes a list
/// (`milestones`) is not a sweep.
#[test]
fn a_list_in_a_method_setting_sweeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let retrain = "[[unlearn]]\nmethod = \"retrain\"\nepochs = 2\nlr = 0.05\nbatch_size = 32\nmilestones = [1]\n";
    let swept = format!(
        "{retrain}[[unlearn]]\nmethod = \"FT\"\nepochs = [1, 2]\nlr = [0.02, 0.01]\nbatch_size = 32\n"
    );
    let cfg = config(dir.path(), "sweep.toml", "", &swept);
    let (r, _) = run(&cfg, &out, &[]);
    let labels: Vec<&str> = r["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["label"].as_str().unwrap())
        .collect();
    assert_eq!(
        labels,
        [
            "original",
            "retrain",
            "FT epochs=1 lr=0.02",
            "FT epochs=1 lr=0.01",
            "FT epochs=2 lr=0.02",
            "FT epochs=2 lr=0.01",
        ]
    );
    let by_hand: String = [(1, 0.02), (1, 0.01), (2, 0.02), (2, 0.01)]
        .iter()
        .map(|(e, lr)| {
            format!(
                "[[unlearn]]\nmethod = \"FT\"\nlabel = \"FT epochs={e} lr={lr}\"\nepochs = {e}\nlr = {lr}\nbatch_size = 32\n"
            )
        })
        .collect();
    let cfg2 = config(
        dir.path(),
        "by-hand.toml",
        "",
        &format!("{retrain}{by_hand}"),
    );
    let (r2, _) = run(&cfg2, &out, &[]);
    assert!(computed(&r2).is_empty(), "{:?}", computed(&r2));
    assert_eq!(metrics(&r2), metrics(&r));
}

/// A `[model] checkpoint` is keyed by its content: replacing the file's bytes makes a new model
/// and new rows, whose numbers are those of the new weights.
#[test]
fn a_checkpoint_whose_content_changes_is_a_new_model() {
    let dir = tempfile::tempdir().unwrap();
    let trained = |seed: u64| {
        let cfg = config(dir.path(), &format!("seed{seed}.toml"), "", &ft(0.01, "FT"));
        let text = std::fs::read_to_string(&cfg).unwrap().replacen(
            "seed = 0",
            &format!("seed = {seed}"),
            1,
        );
        std::fs::write(&cfg, text).unwrap();
        let out = dir.path().join(format!("seed{seed}"));
        let (r, _) = run(&cfg, &out, &[]);
        (out.join("models/dense.safetensors"), r)
    };
    let (a, ra) = trained(0);
    let (b, rb) = trained(1);
    let ckpt = dir.path().join("model.safetensors");
    std::fs::copy(&a, &ckpt).unwrap();
    let text = std::fs::read_to_string(config(dir.path(), "c.toml", "", &ft(0.01, "FT")))
        .unwrap()
        .replacen(
            "[train]",
            "[model]\ncheckpoint = \"model.safetensors\"\n[train]",
            1,
        );
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, text).unwrap();
    let out = dir.path().join("from-ckpt");
    let (c1, _) = run(&cfg, &out, &[]);
    std::fs::copy(&b, &ckpt).unwrap();
    let (c2, _) = run(&cfg, &out, &[]);
    assert_eq!(computed(&c2).len(), 3, "a new model: {:?}", stages(&c2));
    let original = |r: &Value| r["rows"][0]["metrics"].clone();
    assert_eq!(original(&c1), original(&ra));
    assert_eq!(original(&c2), original(&rb));
    assert_ne!(original(&c1), original(&c2));
}

/// A non-empty folder unlearn did not make is refused before anything is written; an empty
/// one is taken.
#[test]
fn a_folder_unlearn_did_not_make_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "a.toml", "", &ft(0.01, "FT"));
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::write(theirs.join("notes.txt"), b"mine").unwrap();
    std::fs::create_dir(theirs.join("state")).unwrap();
    let o = unlearn(&[
        "run",
        cfg.to_str().unwrap(),
        "--out",
        theirs.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("not empty and was not made by unlearn")
            && stderr(&o).contains("theirs"),
        "{}",
        stderr(&o)
    );
    let mut left: Vec<String> = std::fs::read_dir(&theirs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["notes.txt", "state"]);
    assert_eq!(std::fs::read(theirs.join("notes.txt")).unwrap(), b"mine");
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    run(&cfg, &empty, &[]);
    assert!(empty.join(".unlearn-output").is_file());
}

/// A corrupt entry (a truncated row, a damaged model file) is named, discarded and recomputed
/// to the same numbers; every other entry is kept.
#[test]
fn a_corrupt_entry_is_named_discarded_and_recomputed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cfg = config(dir.path(), "a.toml", OMP, &ft(0.01, "FT"));
    let (r1, _) = run(&cfg, &out, &[]);
    let key = |kind: &str, label: &str| stage_key(&r1, kind, label);
    let row = out
        .join("cache/row")
        .join(key("row", "FT on class-1 (sparse)"));
    let meta = std::fs::read(row.join("meta.json")).unwrap();
    std::fs::write(row.join("meta.json"), &meta[..meta.len() / 2]).unwrap();
    let dense = out.join("cache/dense").join(key("dense", "dense training"));
    std::fs::write(dense.join("model.safetensors"), b"not a checkpoint").unwrap();
    let (r2, o) = run(&cfg, &out, &[]);
    let e = stderr(&o);
    assert!(
        e.contains(&format!(
            "cache entry row/{} is unreadable",
            &key("row", "FT on class-1 (sparse)")[..12]
        )),
        "{e}"
    );
    assert!(
        e.contains(&format!(
            "cache entry dense/{} is unreadable",
            &key("dense", "dense training")[..12]
        )) && e.contains("model.safetensors"),
        "{e}"
    );
    assert_eq!(
        computed(&r2),
        ["dense training", "FT on class-1 (sparse)"],
        "{:?}",
        stages(&r2)
    );
    assert_eq!(metrics(&r2), metrics(&r1));
}

fn spawn_run(cfg: &Path, out: &Path, extra: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_unlearn"))
        .args(["--device", "cpu", "run", cfg.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap()])
        .args(extra)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until `cond` holds, failing after two minutes.
fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !cond() {
        assert!(t0.elapsed().as_secs() < 120, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Two configs run at once into one output folder (two `study.toml` files with one default
/// output name): the second is refused at once, naming the first (pid, what it runs); the
/// folder's results.json, report.md, results.csv and training.csv all come from the first.
#[test]
fn two_runs_into_one_folder_never_mix() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let a = config(dir.path(), "a.toml", OMP, &ft(0.01, "only-in-a"));
    let b = config(dir.path(), "b.toml", "", &ft(0.02, "only-in-b"));
    let first = spawn_run(&a, &out, &[], &[]);
    // Once the first holds the folder (its lock names it), the second starts.
    wait_until("the first run to claim the folder", || {
        std::fs::read_to_string(out.join(".unlearn-lock")).is_ok_and(|t| t.contains("a.toml"))
    });
    let o = unlearn(&[
        "--device",
        "cpu",
        "run",
        b.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(
        e.contains("is in use by another unlearn process")
            && e.contains(&format!("pid {}", first.id()))
            && e.contains("a.toml"),
        "{e}"
    );
    let oa = first.wait_with_output().unwrap();
    assert!(oa.status.success(), "{}", stderr(&oa));
    for f in ["results.json", "report.md", "results.csv"] {
        let text = std::fs::read_to_string(out.join(f)).unwrap();
        assert!(
            text.contains("only-in-a") && !text.contains("only-in-b"),
            "{f}"
        );
    }
    let training = std::fs::read_to_string(out.join("training.csv")).unwrap();
    assert!(training.contains("OMP"), "the first config's training");
}

/// Two runs with their own output folders sharing one stage cache, at once: each reports its
/// own rows, and the stage they share (the dense model) is computed once, by whichever got its
/// lock first.
#[test]
fn two_runs_sharing_a_cache_compute_a_shared_stage_once() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let a = config(dir.path(), "a.toml", "", &ft(0.01, "only-in-a"));
    let b = config(dir.path(), "b.toml", "", &ft(0.02, "only-in-b"));
    let c = ["--cache", cache.to_str().unwrap()];
    let (pa, pb) = (
        spawn_run(&a, &dir.path().join("oa"), &c, &[]),
        spawn_run(&b, &dir.path().join("ob"), &c, &[]),
    );
    let (oa, ob) = (
        pa.wait_with_output().unwrap(),
        pb.wait_with_output().unwrap(),
    );
    assert!(oa.status.success(), "{}", stderr(&oa));
    assert!(ob.status.success(), "{}", stderr(&ob));
    assert!(stdout(&oa).contains("only-in-a") && !stdout(&oa).contains("only-in-b"));
    assert!(stdout(&ob).contains("only-in-b") && !stdout(&ob).contains("only-in-a"));
    let trained = [&oa, &ob]
        .iter()
        .filter(|o| stderr(o).contains("training the dense model"))
        .count();
    assert_eq!(trained, 1, "{}\n{}", stderr(&oa), stderr(&ob));
}

/// A run stopped (Ctrl-Z, SIGSTOP) while it computes a stage: a second run that needs the same
/// stage says whom it waits for (pid, host, what, since when), that the holder is stopped and
/// how to resume it, and keeps saying it; once the holder goes on, both finish.
#[test]
fn a_stopped_lock_holder_is_named_and_waited_for_with_words() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let cfg = config(dir.path(), "slow.toml", OMP, &ft(0.01, "FT"));
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("epochs = 3", "epochs = 40");
    std::fs::write(&cfg, text).unwrap();
    let c = ["--cache", cache.to_str().unwrap()];
    let holder = spawn_run(&cfg, &dir.path().join("o1"), &c, &[]);
    let pid = holder.id().to_string();
    wait_until("the dense stage's lock", || {
        std::fs::read_dir(cache.join("locks")).is_ok_and(|d| {
            d.flatten()
                .any(|e| std::fs::read_to_string(e.path()).is_ok_and(|t| t.contains("slow.toml")))
        })
    });
    let signal = |sig: &str| {
        assert!(
            Command::new("kill")
                .args([sig, &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    signal("-STOP");
    let waiter = spawn_run(
        &cfg,
        &dir.path().join("o2"),
        &c,
        &[("UNLEARN_LOCK_NOTICE_SECS", "0.5")],
    );
    std::thread::sleep(std::time::Duration::from_millis(4000));
    signal("-CONT");
    let (oh, ow) = (
        holder.wait_with_output().unwrap(),
        waiter.wait_with_output().unwrap(),
    );
    assert!(oh.status.success(), "{}", stderr(&oh));
    assert!(ow.status.success(), "{}", stderr(&ow));
    let e = stderr(&ow);
    let said: Vec<&str> = e
        .lines()
        .filter(|l| l.contains(&format!("held by pid {pid} on ")))
        .collect();
    assert!(said.len() >= 3, "said it {} time(s):\n{e}", said.len());
    assert!(
        said.iter()
            .all(|l| l.contains("slow.toml") && l.contains("waiting")),
        "{e}"
    );
    assert!(
        said.iter()
            .filter(|l| l.contains("stopped") && l.contains(&format!("kill -CONT {pid}")))
            .count()
            >= 2,
        "{e}"
    );
}

/// Every stage key, and so every normalisation a model is built with, is the same whatever the
/// number of threads (a cache shared by machines with other core counts must hit): the dry run
/// of the digits (whose mean and std the data set's pixels give) under 1 and 2 threads lists
/// the same keys, and a run under one reuses the other's stages.
#[test]
fn stage_keys_do_not_depend_on_the_thread_count() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("digits.toml");
    let text = std::fs::read_to_string(config(dir.path(), "x.toml", OMP, &ft(0.01, "FT")))
        .unwrap()
        .replace(
            "dataset = \"synthetic\"\nsynthetic = { samples = 200, classes = 4, noise = 6.0 }",
            "dataset = \"digits\"\nsubset = { per_class = 20 }",
        )
        .replace("epochs = 3", "epochs = 1");
    std::fs::write(&cfg, text).unwrap();
    let out = dir.path().join("out");
    let keys = |threads: &str| -> Vec<String> {
        let o = Command::new(env!("CARGO_BIN_EXE_unlearn"))
            .args(["run", cfg.to_str().unwrap(), "--dry-run", "--out"])
            .arg(&out)
            .env("OMP_NUM_THREADS", threads)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        stdout(&o)
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_string))
            .filter(|k| k.len() == 12)
            .collect()
    };
    let one = keys("1");
    assert_eq!(one.len(), 6, "{one:?}");
    assert_eq!(one, keys("2"));
    assert_eq!(one, keys("3"));
    let o = Command::new(env!("CARGO_BIN_EXE_unlearn"))
        .args([
            "--device",
            "cpu",
            "-q",
            "run",
            cfg.to_str().unwrap(),
            "--out",
        ])
        .arg(&out)
        .env("OMP_NUM_THREADS", "2")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let o = Command::new(env!("CARGO_BIN_EXE_unlearn"))
        .args(["run", cfg.to_str().unwrap(), "--dry-run", "--out"])
        .arg(&out)
        .env("OMP_NUM_THREADS", "1")
        .output()
        .unwrap();
    assert!(
        stdout(&o).contains("6 stages: 6 cached, 0 to run"),
        "{}",
        stdout(&o)
    );
}

/// Flipped bits anywhere in the cache are found, named and recomputed to the same numbers: in
/// a dense model's weights, in a row's recorded metrics (still valid JSON), in a mid-training
/// checkpoint of an interrupted stage; an entry copied under another key is no entry of it.
#[test]
fn flipped_bits_in_cache_entries_and_checkpoints_are_detected() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cfg = config(dir.path(), "a.toml", OMP, &ft(0.01, "FT"));
    let (r1, _) = run(&cfg, &out, &[]);
    let key = |kind: &str, label: &str| stage_key(&r1, kind, label);
    let flip = |p: &Path, at: usize, mask: u8| {
        let mut b = std::fs::read(p).unwrap();
        let at = at.min(b.len() - 1);
        b[at] ^= mask;
        std::fs::write(p, b).unwrap();
    };
    // One bit of one weight, deep in the file (its length and header unchanged).
    let dense_key = key("dense", "dense training");
    let dense = out.join("cache/dense").join(&dense_key);
    let size = std::fs::metadata(dense.join("model.safetensors"))
        .unwrap()
        .len() as usize;
    flip(&dense.join("model.safetensors"), size - 100, 0x01);
    // One digit of the FT row's recorded RA (valid JSON, another number).
    let row_key = key("row", "FT on class-1 (sparse)");
    let meta = out.join("cache/row").join(&row_key).join("meta.json");
    let text = std::fs::read_to_string(&meta).unwrap();
    let ra = r1["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["label"] == "FT" && x["model"] == "sparse")
        .unwrap()["metrics"]["ra"]
        .to_string();
    let changed = ra.replacen(|c: char| c.is_ascii_digit() && c != '9', "9", 1);
    assert_ne!(changed, ra);
    assert!(text.contains(&format!("\"ra\": {ra}")), "{text}");
    std::fs::write(
        &meta,
        text.replacen(&format!("\"ra\": {ra}"), &format!("\"ra\": {changed}"), 1),
    )
    .unwrap();
    let (r2, o) = run(&cfg, &out, &[]);
    let e = stderr(&o);
    assert!(
        e.contains(&format!(
            "cache entry dense/{} is unreadable",
            &dense_key[..12]
        )) && e.contains("model.safetensors")
            && e.contains("damaged"),
        "{e}"
    );
    assert!(
        e.contains(&format!("cache entry row/{} is unreadable", &row_key[..12]))
            && e.contains("seal"),
        "{e}"
    );
    assert_eq!(metrics(&r2), metrics(&r1));

    // A mid-training checkpoint: a run stopped in its dense training leaves one; a flipped bit
    // in it is named, the loop starts over, and the result is the uninterrupted one.
    let slow = config(dir.path(), "slow.toml", OMP, &ft(0.01, "FT"));
    let text = std::fs::read_to_string(&slow)
        .unwrap()
        .replace("epochs = 3", "epochs = 150");
    std::fs::write(&slow, text).unwrap();
    let clean = dir.path().join("clean");
    let (want, _) = run(&slow, &clean, &[]);
    let out2 = dir.path().join("out2");
    let child = spawn_run(&slow, &out2, &[], &[]);
    let state = || {
        walk(&out2.join("cache/partial"))
            .into_iter()
            .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
    };
    wait_until("a saved training state", || state().is_some());
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(
        Command::new("kill")
            .args(["-KILL", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let _ = child.wait_with_output();
    let saved = state().unwrap();
    let size = std::fs::metadata(&saved).unwrap().len() as usize;
    flip(&saved, size / 2, 0x10);
    let (got, o) = run(&slow, &out2, &[]);
    let e = stderr(&o);
    assert!(
        e.contains("is unusable") && e.contains("damaged") && e.contains("starting over"),
        "{e}"
    );
    assert_eq!(metrics(&got), metrics(&want));
}

/// A study in one file: two seeds, a list of pruners with a sparsity sweep. Every seed runs
/// every model; `results.csv` holds one line per seed x model x scenario x method x metric;
/// `report.md` gives mean ± std over seeds, checked here against the per-seed rows.
#[test]
fn seeds_and_a_sparsity_sweep_in_one_config() {
    let dir = tempfile::tempdir().unwrap();
    let prune = "[[prune]]\nmethod = \"OMP\"\nsparsity = [0.5, 0.8]\nrewind_epoch = 1\n\n\
                 [[prune]]\nmethod = \"random\"\nsparsity = 0.5\nrewind_epoch = 1\n";
    let cfg = config(dir.path(), "study.toml", prune, &ft(0.01, "FT"));
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replacen("seed = 0", "seeds = [3, 4]", 1)
        .replacen(
            "[train]",
            "subset = { per_class = 30, seed = 1 }\n[train]",
            1,
        );
    std::fs::write(&cfg, text).unwrap();
    let o = unlearn(&["validate", cfg.to_str().unwrap()]);
    assert!(
        stdout(&o).contains("pruners OMP 50%, OMP 80%, random") && stdout(&o).contains("2 seeds"),
        "{}",
        stdout(&o)
    );
    let out = dir.path().join("out");
    let (r, _) = run(&cfg, &out, &[]);
    // The training subset: 30 of each of the 4 classes.
    assert_eq!(r["split"]["train"].as_array().unwrap().len(), 120);
    let rows = r["rows"].as_array().unwrap();
    // 2 seeds x 4 models (dense, OMP 50%, OMP 80%, random 50%) x (original, FT)
    assert_eq!(rows.len(), 16);
    assert_eq!(r["models"].as_array().unwrap().len(), 8);
    for seed in [3, 4] {
        let sparsities: Vec<f64> = r["models"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["seed"] == seed)
            .map(|m| (m["sparsity"].as_f64().unwrap() * 100.0).round())
            .collect();
        assert_eq!(sparsities, [0.0, 50.0, 80.0, 50.0]);
        let file = out.join(format!("models/seed-{seed}/sparse-2.safetensors"));
        assert!(file.is_file(), "{}", file.display());
    }
    // Seeds differ: other initialisations give other models, so other numbers.
    let of_seed = |seed: u64| -> Vec<Value> {
        rows.iter()
            .filter(|x| x["seed"] == seed)
            .map(|x| x["metrics"].clone())
            .collect()
    };
    assert_ne!(of_seed(3), of_seed(4));
    // The stage keys of the two seeds are all different.
    let keys: std::collections::BTreeSet<&str> = r["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys.len(), 2 * (4 + 8));
    // results.csv: a header and one line per row and metric; its values are results.json's.
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "seed,scenario,model,pruner,sparsity,method,label,metric,value"
    );
    let ra_lines: Vec<&str> = lines
        .iter()
        .filter(|l| l.contains(",ra,"))
        .copied()
        .collect();
    assert_eq!(ra_lines.len(), 16);
    let want = rows
        .iter()
        .find(|x| x["seed"] == 4 && x["pruner"] == "OMP 50%" && x["method"] == "FT")
        .unwrap()["metrics"]["ra"]
        .as_f64()
        .unwrap();
    assert!(
        csv.contains(&format!(
            "4,\"class-1\",sparse,\"OMP 50%\",{},\"FT\",\"FT\",ra,{want}\n",
            rows.iter()
                .find(|x| x["seed"] == 4 && x["pruner"] == "OMP 50%")
                .unwrap()["sparsity"]
        )),
        "{csv}"
    );
    // report.md: mean ± std (sample std) of each column over the two seeds.
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("Mean ± standard deviation over 2 seeds (3, 4)"));
    // Each seed's rows follow, under a header with one name per cell.
    let header = report
        .lines()
        .find(|l| l.starts_with("| Seed "))
        .unwrap_or_else(|| panic!("{report}"));
    let seed_row = report
        .lines()
        .find(|l| l.starts_with("| 4 "))
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!(header.matches('|').count(), seed_row.matches('|').count());
    let values: Vec<f64> = [3, 4]
        .iter()
        .map(|&s| {
            rows.iter()
                .find(|x| x["seed"] == s && x["pruner"] == "OMP 80%" && x["method"] == "FT")
                .unwrap()["metrics"]["ta"]
                .as_f64()
                .unwrap()
        })
        .collect();
    let mean = (values[0] + values[1]) / 2.0;
    let sd = ((values[0] - mean).powi(2) + (values[1] - mean).powi(2)).sqrt();
    let line = report
        .lines()
        .find(|l| l.contains("| OMP 80% (80.0%)") && l.contains("| FT "))
        .unwrap_or_else(|| panic!("{report}"));
    assert!(
        line.contains(&format!("{mean:.2} ± {sd:.2}")),
        "TA {mean:.2} ± {sd:.2} in {line}"
    );
    // The figure: TA of FT against sparsity on the OMP line, mean and std of the seeds; the
    // dense model is every pruner's 0% point.
    let results: unlearn_pipeline::pipeline::RunResults =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let panels = unlearn_pipeline::plot::panels(&results, "class-1");
    let ta = panels.iter().find(|p| p.title == "TA (%)").unwrap();
    let omp = ta.series.iter().find(|s| s.name == "FT · OMP").unwrap();
    let xs: Vec<f64> = omp.points.iter().map(|p| p.0).collect();
    assert_eq!(xs, [0.0, 50.0, 80.0]);
    let (_, m, s) = omp.points[2];
    assert!(
        (m - mean).abs() < 1e-9 && (s - sd).abs() < 1e-9,
        "{m} ± {s}"
    );
    assert!(ta.series.iter().any(|s| s.name == "FT · random"));
    for ext in ["png", "svg"] {
        let f = out.join(format!("plots/unlearning-vs-sparsity-1.{ext}"));
        let bytes = std::fs::read(&f).unwrap();
        match ext {
            "png" => assert_eq!(&bytes[1..4], b"PNG"),
            _ => {
                let svg = String::from_utf8(bytes).unwrap();
                assert!(
                    svg.contains("Unlearning vs sparsity: class-1") && svg.contains("FT · OMP")
                );
                assert!(svg.contains("sparsity (%)") && svg.contains("TA (%)"));
            }
        }
    }
    // Training curves: the dense and each sparse model, one line per seed, every epoch logged
    // with its validation accuracy for dense training; training.csv has a line per epoch.
    let curves = unlearn_pipeline::plot::training_curves(&results);
    let names: Vec<&str> = curves.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "dense training",
            "OMP 50% pruning",
            "OMP 80% pruning",
            "random pruning"
        ]
    );
    let dense = &curves[0];
    assert_eq!(dense.seeds.iter().map(|s| s.0).collect::<Vec<_>>(), [3, 4]);
    for (_, points) in &dense.seeds {
        assert_eq!(points.len(), 3);
        assert!(
            points
                .iter()
                .all(|p| p.1.is_finite() && p.2.is_some() && p.3.is_some())
        );
    }
    let training = std::fs::read_to_string(out.join("training.csv")).unwrap();
    let logged: usize = results
        .stages
        .iter()
        .flat_map(|s| &s.training)
        .map(|r| r.epochs.len())
        .sum();
    assert_eq!(training.lines().count(), 1 + logged);
    // 2 seeds x (dense 3 epochs + 3 sparse models retrained for the schedule's 3 epochs, its lr
    // advanced by the rewind epoch) + FT's 1 epoch on each of the 8 models
    assert_eq!(logged, 2 * (3 + 3 * 3) + 8);
    assert!(out.join("plots/training-curves.svg").is_file());

    // A third seed: its stages are to run, each estimated from the other seeds' cost.
    let three = dir.path().join("three.toml");
    std::fs::write(
        &three,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replacen("seeds = [3, 4]", "seeds = [3, 4, 5]", 1),
    )
    .unwrap();
    let plan = dry_run(&three, &out, &[]);
    let line = plan
        .lines()
        .find(|l| l.contains("dense model, seed 5"))
        .unwrap_or_else(|| panic!("{plan}"));
    assert!(
        line.contains("to run, about") && line.contains("(as other seeds)"),
        "{line}"
    );
    assert!(
        plan.contains("36 stages: 24 cached, 12 to run; about"),
        "{plan}"
    );

    // `unlearn report` regenerates the report, the tables and the figures from results alone.
    let report_before = std::fs::read_to_string(out.join("report.md")).unwrap();
    std::fs::remove_dir_all(out.join("plots")).unwrap();
    std::fs::remove_file(out.join("report.md")).unwrap();
    std::fs::remove_file(out.join("results.csv")).unwrap();
    std::fs::remove_file(out.join("training.csv")).unwrap();
    let o = unlearn(&["report", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(out.join("report.md")).unwrap(),
        report_before
    );
    assert_eq!(
        std::fs::read_to_string(out.join("results.csv")).unwrap(),
        csv
    );
    assert!(out.join("plots/unlearning-vs-sparsity-1.png").is_file());
    assert!(out.join("plots/training-curves.png").is_file());
    assert_eq!(
        std::fs::read_to_string(out.join("training.csv")).unwrap(),
        training
    );
    let o = unlearn(&["report", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("results.json"), "{}", stderr(&o));
}

/// Study mistakes are reported all at once, each with its path, before any work: an unknown
/// pruner in the list, a sparsity listed twice, an empty sweep, an empty `seeds`, a training
/// subset larger than the data.
#[test]
fn study_mistakes_are_all_reported_with_their_paths() {
    let dir = tempfile::tempdir().unwrap();
    let prune = "[[prune]]\nmethod = \"OMP\"\nsparsity = [0.5, 0.9, 0.5]\n\n\
                 [[prune]]\nmethod = \"OMPP\"\n\n\
                 [[prune]]\nmethod = \"random\"\nsparsity = []\n";
    let cfg = config(dir.path(), "bad.toml", prune, &ft(0.01, "FT"));
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replacen("seed = 0", "seeds = []", 1)
        .replacen("[train]", "subset = { per_class = 1000 }\n[train]", 1);
    std::fs::write(&cfg, text).unwrap();
    let out = dir.path().join("out");
    for args in [
        vec!["validate", cfg.to_str().unwrap()],
        vec!["run", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()],
    ] {
        let o = unlearn(&args);
        assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
        let e = stderr(&o);
        for needle in [
            "/prune/0/sparsity/2 = 0.5: this sparsity is listed twice",
            "/prune/1/method = \"OMPP\": unknown pruner `OMPP`",
            "/prune/2/sparsity = []: an empty sparsity sweep",
            "/seeds",
            "/data/subset: subset: 1000 per class is more than class 0's",
        ] {
            assert!(e.contains(needle), "missing `{needle}` in:\n{e}");
        }
        assert!(!e.contains("panicked"));
    }
    assert!(
        !out.exists(),
        "nothing is written before the config is valid"
    );
}

/// Every file under `dir` with its modification time: what a run has written so far.
fn written(dir: &Path) -> Vec<(PathBuf, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            match e.metadata() {
                Ok(m) if m.is_dir() => todo.push(p),
                Ok(m) => out.push((p, m.modified().unwrap())),
                Err(_) => {}
            }
        }
    }
    out.sort();
    out
}

/// `kill -9` at eight points of a small study, then a run to the end: the results equal an
/// uninterrupted run's exactly. The kills land after 1, 3, 5, ... further writes of the killed
/// run (epoch checkpoints of the dense training, of OMP's retraining and of the unlearners'
/// loops, cache entries) plus 0 to 40 ms, so most fall in the middle of an epoch.
#[test]
fn kill_9_anywhere_then_rerun_gives_the_uninterrupted_results() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("study.toml");
    let text = r#"seeds = [0, 1]
[data]
dataset = "synthetic"
synthetic = { samples = 400, classes = 4, noise = 6.0 }
split = { test_fraction = 0.2, val_fraction = 0.1 }
[train]
epochs = 8
lr = 0.05
batch_size = 16
milestones = [6]
[prune]
method = "OMP"
sparsity = 0.8
rewind_epoch = 1
[[forget]]
kind = "random"
fraction = 0.1
[[unlearn]]
method = "retrain"
epochs = 4
lr = 0.05
batch_size = 16
milestones = []
[[unlearn]]
method = "FT"
epochs = 3
lr = 0.01
batch_size = 16
[[unlearn]]
method = "l1-sparse"
epochs = 3
lr = 0.01
alpha = 1e-3
batch_size = 16
[eval]
mia_features = ["confidence"]
"#;
    std::fs::write(&cfg, text).unwrap();
    let (want, _) = run(&cfg, &dir.path().join("straight"), &[]);

    let out = dir.path().join("killed");
    let args = [
        "--device",
        "cpu",
        "--quiet",
        "run",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    let mut kills = 0;
    let mut resumed_runs = 0;
    loop {
        let log = dir.path().join(format!("attempt-{kills}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_unlearn"))
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let attempt = kills;
        let failed = |status: std::process::ExitStatus| {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            format!("attempt {attempt} exited with {status}: {text}")
        };
        if kills == 8 {
            let status = child.wait().unwrap();
            assert!(status.success(), "{}", failed(status));
            break;
        }
        let before = written(&out);
        let writes_to_wait = 2 * kills + 1;
        let mut seen = before.clone();
        let mut changes = 0;
        let finished = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            let now = written(&out);
            if now != seen {
                seen = now;
                changes += 1;
                if changes >= writes_to_wait {
                    std::thread::sleep(std::time::Duration::from_millis(kills as u64 * 5));
                    child.kill().unwrap();
                    child.wait().unwrap();
                    kills += 1;
                    break None;
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        };
        if let Some(status) = finished {
            // It ran to the end before the kill came.
            assert!(status.success(), "{}", failed(status));
            break;
        }
        // A kill with a training state on disk: the next run resumes from it, as the plan says.
        if written(&out)
            .iter()
            .any(|(p, _)| p.to_string_lossy().contains("/partial/"))
        {
            resumed_runs += 1;
            if resumed_runs == 1 {
                let plan = dry_run(&cfg, &out, &[]);
                assert!(plan.contains("training state(s) saved)"), "{plan}");
            }
        }
    }
    assert!(kills >= 5, "only {kills} kills before the study finished");
    assert!(
        resumed_runs >= 3,
        "only {resumed_runs} kills left a training state"
    );
    let (got, _) = run(&cfg, &out, &[]);
    assert!(computed(&got).is_empty(), "{:?}", stages(&got));
    assert_eq!(metrics(&got), metrics(&want));
    // The training logs survive the kills: one line per epoch, as uninterrupted.
    let epochs = |r: &Value| -> Vec<(String, u64)> {
        let mut v = Vec::new();
        for s in r["stages"].as_array().unwrap() {
            for run in s["training"].as_array().into_iter().flatten() {
                for e in run["epochs"].as_array().unwrap() {
                    v.push((
                        format!("{} {}", s["label"], run["run"]),
                        e["epoch"].as_u64().unwrap(),
                    ));
                }
            }
        }
        v
    };
    assert_eq!(epochs(&got), epochs(&want));
    assert!(!epochs(&want).is_empty());
    let csv = std::fs::read_to_string(out.join("training.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + epochs(&want).len());
    // No training state is left behind once every stage is stored.
    assert!(
        !written(&out)
            .iter()
            .any(|(p, _)| p.to_string_lossy().contains("/partial/"))
    );
}

/// Ctrl-C (SIGINT) in the middle of a run: the run stops without starting another stage, says
/// how to resume, exits 130 (as shells report an interrupted command) and writes no results; the
/// next run resumes from the stages it had finished.
#[test]
fn ctrl_c_stops_the_run_with_exit_130_and_it_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "c.toml",
        OMP,
        &[ft(0.01, "FT a"), ft(0.02, "FT b"), ft(0.03, "FT c")].concat(),
    );
    let out = dir.path().join("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_unlearn"))
        .args(["--device", "cpu", "run", cfg.to_str().unwrap()])
        .args(["--out", out.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the first stage is in the cache, the rest of the run is still ahead.
    let t0 = std::time::Instant::now();
    while computed_entries(&out) == 0 {
        assert!(child.try_wait().unwrap().is_none(), "finished too soon");
        assert!(t0.elapsed().as_secs() < 120, "no stage finished");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("re-run to resume"), "{err}");
    assert!(!out.join("results.json").exists());
    let (r, _) = run(&cfg, &out, &[]);
    assert!(
        stages(&r).iter().any(|(_, _, cached)| *cached),
        "nothing resumed"
    );
}

/// Finished entries of the stage cache under `out` (each holds a `meta.json`).
fn computed_entries(out: &Path) -> usize {
    walk(&out.join("cache"))
        .iter()
        .filter(|p| p.file_name().is_some_and(|n| n == "meta.json"))
        .count()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .flat_map(|e| {
            let p = e.path();
            if p.is_dir() { walk(&p) } else { vec![p] }
        })
        .collect()
}
