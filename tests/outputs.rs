//! Output folders as a user meets them: what a run, a dry run, `report` and `bench` may write
//! and where, what a folder holds after another config ran into it, and the figures and tables
//! drawn from a results.json (which `report` reads only when it is consistent).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

mod common;

use common::{run_ok, stderr, unlearn};

/// A small run: synthetic 8x8 data, a few epochs, class 1 forgotten; `extra` is TOML appended.
fn config(dir: &Path, name: &str, top: &str, extra: &str) -> PathBuf {
    let text = format!(
        r#"{top}
[data]
dataset = "synthetic"
synthetic = {{ samples = 200, classes = 4, noise = 6.0 }}
split = {{ test_fraction = 0.2, val_fraction = 0.1 }}
[train]
epochs = 2
lr = 0.05
batch_size = 32
milestones = []
[eval]
mia_features = ["confidence"]
[[forget]]
kind = "class"
class = 1
{extra}
"#
    );
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn ft(label: &str) -> String {
    format!(
        "[[unlearn]]\nmethod = \"FT\"\nlabel = {label:?}\nepochs = 1\nlr = 0.01\nbatch_size = 32\n"
    )
}

const RETRAIN: &str =
    "[[unlearn]]\nmethod = \"retrain\"\nepochs = 2\nlr = 0.05\nbatch_size = 32\nmilestones = []\n";

/// Every file under `dir`, relative, sorted (the cache left out).
fn files(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            if rel == "cache" {
                continue;
            }
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Another config run into a folder (the realistic case: two studies, one default output name)
/// replaces what the first wrote: its models and figures do not linger beside the new ones, the
/// user is told, a file of the user's own is kept, and `report` afterwards keeps exactly the
/// second study's files.
#[test]
fn another_config_replaces_the_folders_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let two_seeds = config(
        dir.path(),
        "a.toml",
        "seeds = [1, 2]",
        &format!(
            "[prune]\nmethod = \"OMP\"\nsparsity = [0.5, 0.8]\nrewind_epoch = 1\n{}",
            ft("FT-a")
        ),
    );
    run_ok(&two_seeds, &out);
    let first = files(&out);
    assert!(
        first.contains(&"models/seed-2/sparse-1.safetensors".to_string()),
        "{first:?}"
    );
    std::fs::write(out.join("my-notes.txt"), b"mine").unwrap();
    let one_seed = config(dir.path(), "b.toml", "seed = 0", &ft("FT-b"));
    let o = run_ok(&one_seed, &out);
    assert!(
        stderr(&o).contains("held the output of another config"),
        "{}",
        stderr(&o)
    );
    let second = files(&out);
    assert!(!second.iter().any(|f| f.contains("seed-")), "{second:?}");
    assert!(second.contains(&"models/dense.safetensors".to_string()));
    assert!(second.contains(&"my-notes.txt".to_string()));
    for f in ["report.md", "results.csv", "results.json"] {
        let text = std::fs::read_to_string(out.join(f)).unwrap();
        assert!(text.contains("FT-b") && !text.contains("FT-a"), "{f}");
    }
    // `report` rewrites the same set of files, no more.
    let o = unlearn(&["report", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(files(&out), second);
}

/// `run --dry-run` writes nothing anywhere: not into a new folder (which a real run must then
/// be able to claim), not into a folder unlearn did not make.
#[test]
fn a_dry_run_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "a.toml", "seed = 0", &ft("FT"));
    let new = dir.path().join("new");
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::write(theirs.join("data.csv"), b"1,2").unwrap();
    for out in [&new, &theirs] {
        let o = unlearn(&[
            "run",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--dry-run",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    assert!(!new.exists());
    assert_eq!(files(&theirs), ["data.csv"]);
    let shared = dir.path().join("shared-cache");
    let o = unlearn(&[
        "run",
        cfg.to_str().unwrap(),
        "--dry-run",
        "--cache",
        shared.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!shared.exists());
    run_ok(&cfg, &new);
}

fn results(out: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap()
}

fn set_results(out: &Path, v: &Value) {
    std::fs::write(
        out.join("results.json"),
        serde_json::to_vec_pretty(v).unwrap(),
    )
    .unwrap();
}

/// `unlearn report` with a deadline: a results.json must never send it spinning.
fn report(out: &Path) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_unlearn"))
        .args(["report", out.to_str().unwrap()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed().as_secs() > 60 {
            let _ = child.kill();
            panic!("report ran for over a minute");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// `report` draws only from a consistent results.json: a number out of its range (RA = 1e200),
/// a repeated row, a row of an unknown seed are refused with exit 2 naming them, before any
/// file is written. It reads a run's own results.json without a validation split (its
/// `val_accuracy` is null). A gap stored without a `retrain` row in its group is not shown.
/// A folder unlearn did not make is never written into.
#[test]
fn report_reads_its_own_outputs_and_refuses_inconsistent_ones() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cfg = config(
        dir.path(),
        "a.toml",
        "seed = 0",
        &format!("{RETRAIN}{}", ft("FT")),
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("val_fraction = 0.1", "val_fraction = 0.0");
    std::fs::write(&cfg, text).unwrap();
    run_ok(&cfg, &out);
    let good = results(&out);
    assert!(
        good["models"][0]["val_accuracy"].is_null(),
        "no validation split"
    );
    let o = report(&out);
    assert!(o.status.success(), "{}", stderr(&o));
    let report_md = std::fs::read(out.join("report.md")).unwrap();

    let refused = |edit: &dyn Fn(&mut Value), needles: &[&str]| {
        let mut v = good.clone();
        edit(&mut v);
        set_results(&out, &v);
        let o = report(&out);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{e}");
        for n in needles {
            assert!(e.contains(n), "`{n}` in {e}");
        }
        assert_eq!(
            std::fs::read(out.join("report.md")).unwrap(),
            report_md,
            "nothing written"
        );
    };
    refused(
        &|v| v["rows"][1]["metrics"]["ra"] = 1e200.into(),
        &["rows[1].metrics.ra", "1e200"],
    );
    refused(
        &|v| {
            let row = v["rows"][2].clone();
            v["rows"].as_array_mut().unwrap().push(row);
        },
        &["repeats the row", "another seed"],
    );
    refused(&|v| v["rows"][0]["seed"] = 7.into(), &["rows[0].seed 7"]);
    refused(
        &|v| v["models"][0]["train_seconds"] = (-1.0).into(),
        &["models[0].train_seconds"],
    );

    // Without its retrain rows, no row has a gap to show, whatever results.json stored.
    let mut v = good.clone();
    v["rows"]
        .as_array_mut()
        .unwrap()
        .retain(|r| r["method"] != "retrain");
    assert!(v["rows"][1]["gap"].is_object(), "a stored gap");
    set_results(&out, &v);
    let o = report(&out);
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert!(!csv.contains("gap"), "{csv}");

    // A folder unlearn did not make, with a run's results.json and a report.md of the user's.
    let theirs = dir.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::copy(out.join("results.json"), theirs.join("results.json")).unwrap();
    std::fs::write(theirs.join("report.md"), b"my own report").unwrap();
    let o = report(&theirs);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("not made by unlearn"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(theirs.join("report.md")).unwrap(),
        b"my own report"
    );
    assert_eq!(files(&theirs), ["report.md", "results.json"]);
}

/// `sparsity = [0.0, 0.5]` on one seed: the dense model and the 0% OMP model are two points of
/// the OMP line (not one averaged point), and no point has a spread (one seed has none). With
/// `[eval] mia = false`, no table says the attack ran.
#[test]
fn figures_keep_models_apart_and_tables_say_what_did_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cfg = config(
        dir.path(),
        "a.toml",
        "seeds = [5]",
        &format!(
            "[prune]\nmethod = \"OMP\"\nsparsity = [0.0, 0.5]\nrewind_epoch = 1\n{}",
            ft("FT")
        ),
    );
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("mia_features = [\"confidence\"]", "mia = false");
    std::fs::write(&cfg, text).unwrap();
    run_ok(&cfg, &out);
    let r: unlearn_pipeline::pipeline::RunResults =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();
    let panels = unlearn_pipeline::plot::panels(&r, "class-1");
    let ta = panels.iter().find(|p| p.title == "TA (%)").unwrap();
    for s in &ta.series {
        let xs: Vec<f64> = s.points.iter().map(|p| p.0).collect();
        assert_eq!(xs, [0.0, 0.0, 50.0], "{}: dense, OMP 0%, OMP 50%", s.name);
        assert!(
            s.points.iter().all(|p| p.2 == 0.0),
            "{}: {:?}",
            s.name,
            s.points
        );
        // The two points at 0% are the two models' own values.
        let ta_of = |pruner: Option<&str>| {
            r.rows
                .iter()
                .find(|x| x.label == s.name && x.pruner.as_deref() == pruner)
                .unwrap()
                .metrics
                .ta
        };
        let mut at_zero = [s.points[0].1, s.points[1].1];
        let mut want = [ta_of(None), ta_of(Some("OMP 0%"))];
        at_zero.sort_by(f64::total_cmp);
        want.sort_by(f64::total_cmp);
        assert_eq!(at_zero, want);
    }
    let mia = panels
        .iter()
        .find(|p| p.title == "MIA-Efficacy (%)")
        .unwrap();
    assert!(mia.series.is_empty());
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(!md.contains("informative") && !md.contains('†'), "{md}");
    assert!(md.contains("MIA-Efficacy was not computed"), "{md}");
    // The table over seeds (the same rows as a second seed): `-`, not "0/2 informative".
    let mut two = r.clone();
    two.seeds.push(6);
    let again: Vec<_> = r
        .rows
        .iter()
        .cloned()
        .map(|mut x| {
            x.seed = 6;
            x
        })
        .collect();
    two.rows.extend(again);
    let table = unlearn_pipeline::report::mean_std_table(&two);
    assert!(
        !table.contains("informative") && !table.contains('†'),
        "{table}"
    );
    let ft_dense = table
        .lines()
        .find(|l| l.contains("| dense ") && l.contains("| FT "))
        .unwrap();
    assert_eq!(
        ft_dense.split('|').nth(5).unwrap().trim(),
        "-",
        "{ft_dense}"
    );
}
