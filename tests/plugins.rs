//! Plugins loaded from shared libraries: the example (RL, SalUn) built as a cdylib gives the same
//! results as the same code linked as a built-in; its methods pass the conformance suite; a
//! library built against the older 2.0 tables loads and runs; and every kind of broken,
//! incompatible or misbehaving library (another ABI version, an unknown libtorch, other wire
//! types, `panic = "abort"`, a stale handle, a panic) is a clear message while the host keeps
//! working for everything else.
//!
//! The libraries are this package's dev-dependencies: cargo builds their cdylibs next to the
//! test binaries (target/<profile>/deps).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use unlearn_pipeline::config;
use unlearn_pipeline::mask::Mask;
use unlearn_pipeline::method::{AttackCtx, PruneCtx};
use unlearn_pipeline::model::Model;
use unlearn_pipeline::pipeline::{self, RunOptions};
use unlearn_pipeline::plugin;
use unlearn_pipeline::registry::{Registry, Source};
use unlearn_pipeline::tch::Device;
use unlearn_pipeline::testing::TinyTask;
use unlearn_pipeline::train::{CrossEntropy, Run, Stream, Trainer};

// The example linked as a built-in (the comparison), with the built-ins the tests use.
use unlearn_attack_badnets as _;
use unlearn_ft as _;
use unlearn_prune_imp as _;
use unlearn_rl_salun as _;
use unlearn_scrub as _;

/// A library this package's dev-dependencies built.
fn built(crate_name: &str) -> PathBuf {
    let deps = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let p = deps.join(format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        crate_name.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    ));
    assert!(p.exists(), "{} was not built", p.display());
    p
}

/// A fresh plugin folder holding copies of the named libraries.
fn plugin_dir(root: &Path, name: &str, libs: &[&str]) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for lib in libs {
        let src = built(lib);
        std::fs::copy(&src, dir.join(src.file_name().unwrap())).unwrap();
    }
    dir
}

fn unlearn(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unlearn"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("UNLEARN_PLUGIN_PATH")
        .output()
        .expect("the binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Methods `unlearn list --json` shows, as (name, source).
fn listed(o: &Output) -> Vec<(String, String)> {
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| {
        panic!(
            "list --json prints JSON: {}{}",
            text(&o.stdout),
            text(&o.stderr)
        )
    });
    v.as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap().to_string(),
                m["source"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

const EXAMPLE: &str = "unlearn-rl-salun";
const MISBEHAVING: &str = "unlearn-test-misbehaving";

/// Digits, a few epochs, OMP 90%, forget digit 3, RL and SalUn; `plugins` is set by the caller.
const DIGITS_RL_SALUN: &str = r#"
seed = 0
[data]
dataset = "digits"
[model]
arch = "small-cnn"
[train]
epochs = 3
lr = 0.05
batch_size = 64
milestones = []
[prune]
method = "OMP"
sparsity = 0.9
rewind_epoch = 1
[[forget]]
kind = "class"
class = 3
[[unlearn]]
method = "RL"
epochs = 2
lr = 0.01
batch_size = 64
[[unlearn]]
method = "SalUn"
epochs = 2
lr = 0.01
batch_size = 64
share = 0.5
"#;

#[test]
fn the_example_as_a_cdylib_matches_the_same_code_built_in() {
    let tmp = tempfile::tempdir().unwrap();
    let plugins = plugin_dir(tmp.path(), "plugins", &[EXAMPLE]);
    let lib = plugins.join(built(EXAMPLE).file_name().unwrap());

    // Listed with the library as their source.
    let o = unlearn(
        &["--plugin-dir", plugins.to_str().unwrap(), "list", "--json"],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let methods = listed(&o);
    for name in ["RL", "SalUn"] {
        let source = lib.canonicalize().unwrap().display().to_string();
        assert!(
            methods.contains(&(name.to_string(), source.clone())),
            "{name} from {source} in {methods:?}"
        );
    }
    assert!(
        methods
            .iter()
            .any(|(n, s)| n == "FT" && s.starts_with("built-in"))
    );

    // A config can name the library itself (relative to the config file).
    let keyed = tmp.path().join("keyed.toml");
    std::fs::write(
        &keyed,
        format!("plugins = [\"plugins\"]\n{DIGITS_RL_SALUN}"),
    )
    .unwrap();
    let o = unlearn(&["validate", keyed.to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("2 unlearner(s)"),
        "{}",
        text(&o.stdout)
    );
    // Without it, RL is unknown.
    let bare = tmp.path().join("rl.toml");
    std::fs::write(&bare, DIGITS_RL_SALUN).unwrap();
    let o = unlearn(&["validate", bare.to_str().unwrap()], &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("unknown unlearner `RL`"),
        "{}",
        text(&o.stderr)
    );

    // Run through the CLI, loading the library with --plugin-dir.
    let out = tmp.path().join("dylib");
    let o = unlearn(
        &[
            "--quiet",
            "--device",
            "cpu",
            "--plugin-dir",
            plugins.to_str().unwrap(),
            "run",
            bare.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let from_dylib: Value =
        serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap();

    // The same pipeline in this process, where the example is linked as a built-in.
    let registry = Registry::builtin().unwrap();
    assert!(matches!(
        registry.get("RL").unwrap().source,
        Source::BuiltIn(_)
    ));
    let raw = config::parse_config_text(DIGITS_RL_SALUN, false).unwrap();
    let plan = config::plan(&raw, &registry, tmp.path()).unwrap();
    let notify = |_: &str| {};
    let built_in = pipeline::run(
        &plan,
        &RunOptions {
            device: Device::Cpu,
            out_dir: tmp.path().join("builtin"),
            what: "test".into(),
            cache_dir: None,
            trainer: Trainer::new(Device::Cpu, false),
            notify: &notify,
            workers: None,
        },
    )
    .unwrap();
    let built_in = serde_json::to_value(&built_in).unwrap();

    // Every row: the same method, the same metrics to the last bit (the run time aside).
    let rows = |v: &Value| v["rows"].as_array().unwrap().clone();
    let (a, b) = (rows(&from_dylib), rows(&built_in));
    assert_eq!(
        a.len(),
        6,
        "original, RL and SalUn on the dense and sparse models"
    );
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["label"], y["label"]);
        assert_eq!(x["metrics"], y["metrics"], "{}", x["label"]);
    }
    for row in &a {
        if row["method"] != "original" {
            // Both forget digit 3 (the original model predicts it almost perfectly).
            let ua = row["metrics"]["ua"].as_f64().unwrap();
            assert!(ua > 50.0, "{}: UA {ua}", row["label"]);
        }
    }
    // The models the methods started from, too (their training time aside).
    let models = |v: &Value| {
        let mut m = v["models"].clone();
        for x in m.as_array_mut().unwrap() {
            x.as_object_mut().unwrap().remove("train_seconds");
        }
        m
    };
    assert_eq!(models(&from_dylib), models(&built_in));
}

#[test]
fn dylib_methods_pass_the_conformance_suite() {
    // Only the library's methods: the built-in copies linked into this test stay out.
    let mut registry = Registry::from_methods([]).unwrap();
    let loaded = plugin::host::extend(&mut registry, &[built(EXAMPLE)]);
    assert!(
        loaded.is_empty(),
        "{:?}",
        loaded.iter().map(|p| p.to_string()).collect::<Vec<_>>()
    );
    assert_eq!(registry.len(), 2);
    for m in registry.list(None) {
        assert!(matches!(m.source, Source::Library(_)), "{}", m.name);
        let problems = unlearn_pipeline::conformance::check(m);
        assert!(problems.is_empty(), "{}: {problems:#?}", m.name);
    }

    // The CLI's check does the same.
    let o = unlearn(&["plugin", "check", built(EXAMPLE).to_str().unwrap()], &[]);
    assert!(o.status.success(), "{}{}", text(&o.stdout), text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.contains("unlearn-rl-salun"), "{out}");
    assert!(
        out.contains(&format!(
            "(plugin ABI {0}.{1}, this unlearn {0}.{1}; libtorch {2})",
            plugin::abi::ABI_MAJOR,
            plugin::abi::ABI_MINOR,
            plugin::LIBTORCH_VERSION
        )),
        "{out}"
    );
    assert_eq!(out.matches("conforms").count(), 2, "{out}");
    assert_eq!(out.matches("(crate unlearn-rl-salun)").count(), 2, "{out}");
}

/// One broken library next to a good one: the problem is reported, everything else works.
fn assert_reported(dir: &Path, env: &[(&str, &str)], expected: &str) {
    let o = unlearn(
        &["--plugin-dir", dir.to_str().unwrap(), "list", "--json"],
        env,
    );
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("warning: plugin skipped: "), "{err}");
    assert!(err.contains(expected), "expected `{expected}` in: {err}");
    let names: Vec<String> = listed(&o).into_iter().map(|(n, _)| n).collect();
    for still in ["FT", "OMP", "RL", "SalUn"] {
        assert!(names.contains(&still.to_string()), "{still} in {names:?}");
    }
}

#[test]
fn broken_libraries_are_clear_messages_and_the_rest_still_loads() {
    let tmp = tempfile::tempdir().unwrap();
    let torch = plugin::LIBTORCH_VERSION;
    let (major, minor) = (plugin::abi::ABI_MAJOR, plugin::abi::ABI_MINOR);
    let speaks = format!(
        "but this unlearn speaks version {major}.{minor} (it loads {major}.0 to {major}.{minor}): \
         rebuild the plugin against this unlearn's core"
    );
    let modes = [
        // A newer minor, another major, version 1: refused, naming both versions.
        (
            "minor",
            format!(
                "built for plugin ABI version {major}.{}, {speaks}",
                minor + 1
            ),
        ),
        (
            "major",
            format!("built for plugin ABI version {}.0, {speaks}", major + 1),
        ),
        ("v1", format!("built for plugin ABI version 1, {speaks}")),
        (
            "libtorch",
            format!("built against libtorch 0.0.1, but this unlearn runs libtorch {torch}: rebuild the plugin with LIBTORCH pointing at libtorch {torch}"),
        ),
        // Unknown is not a pass.
        (
            "libtorch-unknown",
            format!("cannot tell whether the plugin and this unlearn use the same libtorch: the plugin was built against libtorch `unknown`, this unlearn against libtorch `{torch}`"),
        ),
        (
            "wire",
            format!(
                "its wire types (the JSON documents that cross the plugin ABI) differ from this \
                 unlearn's: ModelSpec (changed) (schema hash 000000000000 in the plugin, {:.12} \
                 here): rebuild the plugin against this unlearn's core",
                plugin::wire_schema_hash()
            ),
        ),
        (
            "abort",
            "built with panic = \"abort\", so a panic in the plugin would abort the host instead of becoming an error: build it with panic = \"unwind\"".to_string(),
        ),
        (
            "schema",
            "method `Panicker`: its config schema is not a valid JSON Schema".to_string(),
        ),
        (
            "duplicate",
            "method `FT` is registered twice: by built-in (unlearn-ft) and by".to_string(),
        ),
        ("null", "returned no descriptor".to_string()),
    ];
    for (mode, expected) in &modes {
        let dir = plugin_dir(tmp.path(), mode, &[EXAMPLE, MISBEHAVING]);
        assert_reported(&dir, &[("UNLEARN_TEST_PLUGIN_MODE", mode)], expected);
        // `plugin check` fails on it, with the same message.
        let lib = dir.join(built(MISBEHAVING).file_name().unwrap());
        let o = unlearn(
            &["plugin", "check", lib.to_str().unwrap()],
            &[("UNLEARN_TEST_PLUGIN_MODE", mode)],
        );
        assert!(!o.status.success(), "{mode}");
        let all = text(&o.stdout) + &text(&o.stderr);
        assert!(all.contains(expected.as_str()), "{mode}: {all}");
    }

    // A file that is not a library at all.
    let dir = plugin_dir(tmp.path(), "junk", &[EXAMPLE]);
    std::fs::write(
        dir.join(format!("libjunk{}", std::env::consts::DLL_SUFFIX)),
        "not a library",
    )
    .unwrap();
    assert_reported(&dir, &[], "not a loadable library");

    // A real library without the entry symbol; found through UNLEARN_PLUGIN_PATH this time.
    let dir = plugin_dir(
        tmp.path(),
        "no-entry",
        &[EXAMPLE, "unlearn-test-not-a-plugin"],
    );
    let o = Command::new(env!("CARGO_BIN_EXE_unlearn"))
        .args(["list", "--json"])
        .env("UNLEARN_PLUGIN_PATH", &dir)
        .output()
        .unwrap();
    let err = text(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("no `unlearn_plugin_entry` symbol, so not an unlearn plugin"),
        "{err}"
    );
    assert!(listed(&o).iter().any(|(n, _)| n == "SalUn"));
}

/// The end of the loadable part of an ELF file (the largest `p_offset + p_filesz` of its
/// `PT_LOAD` segments): what the loader maps, so what a damaged copy must damage.
fn loaded_size(elf: &[u8]) -> usize {
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    assert_eq!(&elf[..4], b"\x7fELF");
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum)
        .map(|i| phoff + i * phentsize)
        .filter(|&h| u32::from_le_bytes(elf[h..h + 4].try_into().unwrap()) == 1)
        .map(|h| u64_at(h + 8) + u64_at(h + 32))
        .max()
        .unwrap()
}

/// Libraries that would kill whoever loads them, on the plugin path: one cut to half of what
/// the loader maps (SIGBUS), one with bytes of its code and tables overwritten, one whose entry
/// writes through a null pointer (SIGSEGV), one whose entry ends the process, and a FIFO named
/// like a library. Each costs one clear message naming its file; `list`, `validate` and `run`
/// go on with everything else, and `plugin check` on each fails with the message (at once, for
/// the FIFO, which a loader would block on).
#[test]
fn libraries_that_crash_their_loader_are_reported_never_fatal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = plugin_dir(tmp.path(), "broken", &[EXAMPLE]);
    let good = std::fs::read(built(EXAMPLE)).unwrap();
    let end = loaded_size(&good);
    let truncated = dir.join(format!("libtruncated{}", std::env::consts::DLL_SUFFIX));
    std::fs::write(&truncated, &good[..end / 2]).unwrap();
    let mut flipped = good.clone();
    for i in (4096..end).step_by(61) {
        flipped[i] ^= 0xa5;
    }
    let damaged = dir.join(format!("libdamaged{}", std::env::consts::DLL_SUFFIX));
    std::fs::write(&damaged, &flipped).unwrap();
    let fifo = dir.join(format!("libfifo{}", std::env::consts::DLL_SUFFIX));
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let misbehaving = plugin_dir(tmp.path(), "misbehaving", &[MISBEHAVING]);
    let crashing = misbehaving.join(built(MISBEHAVING).file_name().unwrap());

    let cfg = tmp.path().join("c.toml");
    std::fs::write(
        &cfg,
        DIGITS_RL_SALUN
            .replace("epochs = 3", "epochs = 1")
            .replace("epochs = 2", "epochs = 1"),
    )
    .unwrap();
    for (mode, expected) in [
        (
            "segfault",
            "killed the process that tried it with signal 11 (SIGSEGV",
        ),
        ("exit", "made the process that tried it exit with status 3"),
    ] {
        let env = [("UNLEARN_TEST_PLUGIN_MODE", mode)];
        let both = format!("{}:{}", dir.display(), misbehaving.display());
        let with_path = [env[0], ("UNLEARN_PLUGIN_PATH", both.as_str())];
        let o = Command::new(env!("CARGO_BIN_EXE_unlearn"))
            .args(["list", "--json"])
            .envs(with_path)
            .output()
            .unwrap();
        let err = text(&o.stderr);
        assert!(o.status.success(), "{mode}: {err}");
        for (file, what) in [
            (
                &truncated,
                "killed the process that tried it with signal 7 (SIGBUS",
            ),
            // Whichever way the loader meets the damage (a crash, a refusal): one message.
            (&damaged, ""),
            (&fifo, "a named pipe (FIFO), not a plugin library"),
            (&crashing, expected),
        ] {
            let line = err
                .lines()
                .find(|l| l.contains(&file.display().to_string()))
                .unwrap_or_else(|| panic!("{mode}: no message names {}: {err}", file.display()));
            assert!(
                line.starts_with("warning: plugin skipped: ") && line.contains(what),
                "{line}"
            );
        }
        let names: Vec<String> = listed(&o).into_iter().map(|(n, _)| n).collect();
        for still in ["FT", "OMP", "RL", "SalUn"] {
            assert!(names.contains(&still.to_string()), "{still} in {names:?}");
        }
        for args in [
            vec!["validate", cfg.to_str().unwrap()],
            vec![
                "--device",
                "cpu",
                "-q",
                "run",
                cfg.to_str().unwrap(),
                "--out",
            ],
        ] {
            let mut args = args;
            let out = tmp.path().join(format!("out-{mode}"));
            if args.contains(&"run") {
                args.push(out.to_str().unwrap());
            }
            let o = Command::new(env!("CARGO_BIN_EXE_unlearn"))
                .args(&args)
                .envs(with_path)
                .output()
                .unwrap();
            assert!(o.status.success(), "{mode} {args:?}: {}", text(&o.stderr));
            assert!(text(&o.stderr).contains(&crashing.display().to_string()));
        }
        let o = unlearn(&["plugin", "check", crashing.to_str().unwrap()], &env);
        assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
        assert!(text(&o.stderr).contains(expected), "{}", text(&o.stderr));
    }
    for (file, what) in [
        (&truncated, "SIGBUS"),
        (&damaged, ""),
        (&fifo, "a named pipe (FIFO)"),
    ] {
        let t0 = std::time::Instant::now();
        let o = unlearn(&["plugin", "check", file.to_str().unwrap()], &[]);
        assert!(
            t0.elapsed().as_secs() < 30,
            "plugin check on {}",
            file.display()
        );
        assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
        let err = text(&o.stderr);
        assert!(
            err.contains(&file.display().to_string()) && err.contains(what),
            "{err}"
        );
    }
}

#[test]
fn a_panicking_or_failing_plugin_is_an_error_and_the_host_keeps_working() {
    let mut registry = Registry::builtin().unwrap();
    let loaded = plugin::host::extend(&mut registry, &[built(MISBEHAVING)]);
    assert!(loaded.is_empty());
    let t = TinyTask::new();
    let (model, mask) = t.trained_sparse();
    let run = |name: &str| {
        let u = registry
            .get(name)
            .unwrap()
            .build_unlearner(&serde_json::json!({}))
            .unwrap_or_else(|_| panic!("{name} builds"));
        t.unlearn(u.as_ref(), &model, Some(&mask), 0)
    };

    // A panic in the middle of a run (in the objective, called from the host's loop).
    let e = run("Panicker").unwrap_err().to_string();
    assert!(e.contains("Panicker (plugin "), "{e}");
    assert!(e.contains("panicked: deliberate panic in batch 2"), "{e}");
    let e = run("Failer").unwrap_err().to_string();
    assert!(
        e.contains("deliberate failure: the forget set is too interesting"),
        "{e}"
    );
    // The same process still runs other methods, built-in or not.
    for name in ["FT", "RL"] {
        let m = run(name).unwrap_or_else(|e| panic!("{name} after a plugin panic: {e}"));
        assert!(m.all_finite());
    }

    // Through the CLI: exit 1, the method and its library named, no results written.
    let tmp = tempfile::tempdir().unwrap();
    let dir = plugin_dir(tmp.path(), "plugins", &[MISBEHAVING]);
    let cfg = tmp.path().join("panic.toml");
    let body = DIGITS_RL_SALUN
        .split("[[unlearn]]")
        .next()
        .unwrap()
        .replace(
            "[prune]\nmethod = \"OMP\"\nsparsity = 0.9\nrewind_epoch = 1\n",
            "",
        );
    std::fs::write(&cfg, format!("{body}[[unlearn]]\nmethod = \"Panicker\"\n")).unwrap();
    let out = tmp.path().join("out");
    let o = unlearn(
        &[
            "--quiet",
            "--plugin-dir",
            dir.to_str().unwrap(),
            "run",
            cfg.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("error: "), "{err}");
    assert!(err.contains("Panicker (plugin "), "{err}");
    assert!(
        err.contains("panicked: deliberate panic in batch 2"),
        "{err}"
    );
    assert!(!out.join("results.json").exists());
}

#[test]
fn a_trainer_kept_past_its_call_is_a_clean_error() {
    let mut registry = Registry::builtin().unwrap();
    let loaded = plugin::host::extend(&mut registry, &[built(MISBEHAVING)]);
    assert!(loaded.is_empty());
    let t = TinyTask::new();
    let (model, mask) = t.trained_sparse();
    let stasher = registry
        .get("Stasher")
        .unwrap()
        .build_unlearner(&serde_json::json!({}))
        .unwrap_or_else(|_| panic!("Stasher builds"));
    // The first call keeps its trainer (a copy of `ctx.trainer`) and returns.
    t.unlearn(stasher.as_ref(), &model, Some(&mask), 0).unwrap();
    // The second trains with it: the host refuses the stale handle, the model is untouched.
    let e = t
        .unlearn(stasher.as_ref(), &model, Some(&mask), 0)
        .unwrap_err()
        .to_string();
    assert!(e.contains("Stasher (plugin "), "{e}");
    assert!(
        e.contains("stale trainer handle ")
            && e.contains(": used after the call that gave it returned"),
        "{e}"
    );
    // The host keeps working, for the library's other methods too.
    let ft = registry
        .get("FT")
        .unwrap()
        .build_unlearner(&serde_json::json!({}))
        .unwrap();
    assert!(
        t.unlearn(ft.as_ref(), &model, Some(&mask), 0)
            .unwrap()
            .all_finite()
    );
}

const ABI20: &str = "unlearn-test-abi20";

#[test]
fn a_library_of_an_older_minor_loads_and_runs() {
    // Built against its own frozen copy of the 2.0 tables: a 2.0 descriptor and method entry
    // (no `describe_json`), the 2.0 host table.
    let lib = plugin::host::load(&built(ABI20)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(lib.abi, (plugin::abi::ABI_MAJOR, 0));
    const { assert!(plugin::abi::ABI_MINOR > 0, "2.0 is an older minor") };
    assert!(lib.rejected.is_empty());
    // What 2.1 added is defaulted: the method's crate is the library's.
    assert_eq!(lib.crates["FT-2.0"], ABI20);

    let mut registry = Registry::from_methods([]).unwrap();
    assert!(plugin::host::extend(&mut registry, &[built(ABI20)]).is_empty());
    let m = registry.get("FT-2.0").unwrap();
    let problems = unlearn_pipeline::conformance::check(m);
    assert!(problems.is_empty(), "{problems:#?}");
    // Its schema's ranges hold on this side too, whatever the older library checks itself.
    let issues = m
        .build_unlearner(&serde_json::json!({"epochs": 1_000_000, "lr": 1e39}))
        .err()
        .expect("out of range");
    let mut paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
    paths.sort();
    assert_eq!(paths, ["/epochs", "/lr"], "{issues:?}");

    // It fine-tunes on the retain set in the host's loop (through its 2.0 view of the host
    // table and the call's trainer handle): the same weights as core's loop run directly.
    let t = TinyTask::new();
    let (model, mask) = t.trained_sparse();
    let u = m
        .build_unlearner(&serde_json::json!({"epochs": 2, "lr": 0.02}))
        .unwrap_or_else(|_| panic!("FT-2.0 builds"));
    let through = t.unlearn(u.as_ref(), &model, Some(&mask), 3).unwrap();
    let mut direct = model.try_clone().unwrap();
    let s = unlearn_pipeline::train::Schedule {
        epochs: 2,
        lr: 0.02,
        batch_size: 16,
        milestones: vec![],
        ..Default::default()
    };
    let stream = Stream::new(&t.data.train, &t.forget.retain);
    Trainer::new(Device::Cpu, false)
        .run(
            &mut direct,
            Run::new("direct".into(), &s, &stream, Some(&mask), 3),
            &mut CrossEntropy,
        )
        .unwrap();
    for (name, v) in direct.var_store().variables() {
        assert!(v.equal(&through.var_store().variables()[&name]), "{name}");
    }
    assert!(!direct.parameters()["fc.weight"].equal(&model.parameters()["fc.weight"]));

    // `plugin check` shows both versions and the defaulted crate.
    let o = unlearn(&["plugin", "check", built(ABI20).to_str().unwrap()], &[]);
    let out = text(&o.stdout);
    assert!(o.status.success(), "{out}{}", text(&o.stderr));
    assert!(
        out.contains(&format!(
            "(plugin ABI {0}.0, this unlearn {0}.{1}; ",
            plugin::abi::ABI_MAJOR,
            plugin::abi::ABI_MINOR
        )),
        "{out}"
    );
    assert!(
        out.contains("FT-2.0") && out.contains("conforms  (crate unlearn-test-abi20)"),
        "{out}"
    );
}

#[test]
fn pruners_and_attacks_through_the_abi_match_their_built_in_selves() {
    let mut registry = Registry::builtin().unwrap();
    let loaded = plugin::host::extend(&mut registry, &[built(MISBEHAVING)]);
    assert!(loaded.is_empty());
    // The conformance suite, on a pruner and an attack across the boundary.
    for name in ["OMP-dylib", "BadNets-dylib"] {
        let problems = unlearn_pipeline::conformance::check(registry.get(name).unwrap());
        assert!(problems.is_empty(), "{name}: {problems:#?}");
    }
    let t = TinyTask::new();
    let config = serde_json::json!({"sparsity": 0.7, "rewind_epoch": 3});

    // OMP: dense training keeping the rewind snapshot it asks for, then prune (rewind to the
    // snapshot, retrain in core's loop under the mask).
    let prune = |name: &str| -> (
        Mask,
        Model,
        f64,
        Option<unlearn_pipeline::method::RewindPoint>,
    ) {
        let p = registry
            .get(name)
            .unwrap()
            .build_pruner(&config)
            .unwrap_or_else(|_| panic!("{name} builds"));
        let mut model = Model::new(t.spec.clone(), Device::Cpu, 0).unwrap();
        let all: Vec<usize> = (0..t.data.train.len()).collect();
        let stream = Stream::new(&t.data.train, &all);
        let s = TinyTask::schedule();
        let trainer = Trainer::new(Device::Cpu, false);
        let dense = trainer
            .run(
                &mut model,
                Run::new("dense".into(), &s, &stream, None, 0)
                    .keeping(p.rewind_point(), &t.data.val),
                &mut CrossEntropy,
            )
            .unwrap();
        let mut ctx = PruneCtx {
            model: &mut model,
            rewind: dense.kept(),
            data: &t.data,
            schedule: &s,
            trainer: &trainer,
            seed: 0,
            label: name.into(),
        };
        let mask = p.prune(&mut ctx).unwrap_or_else(|e| panic!("{name}: {e}"));
        (mask, model, p.sparsity(), p.rewind_point())
    };
    let (mask_a, model_a, s_a, r_a) = prune("OMP");
    let (mask_b, model_b, s_b, r_b) = prune("OMP-dylib");
    assert_eq!((s_a, r_a), (s_b, r_b));
    assert_eq!(
        (s_a, r_a),
        (0.7, Some(unlearn_pipeline::method::RewindPoint::Epoch(3)))
    );
    assert_eq!(mask_a.zeros(), mask_b.zeros());
    for (name, m) in mask_a.tensors() {
        assert!(m.equal(mask_b.get(name).unwrap()), "mask of {name}");
    }
    for (name, v) in model_a.var_store().variables() {
        assert!(
            v.equal(&model_b.var_store().variables()[&name]),
            "{name} after pruning and retraining"
        );
    }
    assert_eq!(mask_b.violations(&model_b), 0);

    // BadNets: the same poisoning and trigger.
    let attack = |name: &str| {
        registry
            .get(name)
            .unwrap()
            .build_attack(&serde_json::json!({"n": 12, "size": 2, "target": 2}))
            .unwrap_or_else(|_| panic!("{name} builds"))
    };
    let (a, b) = (attack("BadNets"), attack("BadNets-dylib"));
    assert_eq!(a.target(), 2);
    assert_eq!(b.target(), 2);
    let ctx = AttackCtx {
        data: &t.data,
        seed: 5,
        label: "poison".into(),
    };
    let (pa, pb) = (a.poison(&ctx).unwrap(), b.poison(&ctx).unwrap());
    assert_eq!(pa.rows.len(), 12);
    assert_eq!(pa.rows, pb.rows);
    assert!(pa.images.equal(&pb.images));
    assert!(pa.labels.equal(&pb.labels));
    let (ta, tb) = (
        a.trigger(&t.data.test.images).unwrap(),
        b.trigger(&t.data.test.images).unwrap(),
    );
    assert!(ta.equal(&tb));
    assert!(
        !ta.equal(&t.data.test.images),
        "the trigger changes the images"
    );
}

#[test]
fn scrub_as_a_cdylib_matches_scrub_built_in() {
    // SCRUB's two phases (max-steps on D_f, min-steps on D_r) and tagged streams cross the ABI
    // (2.2's run_phases); the library's copy must give the built-in's weights to the bit.
    let mut registry = Registry::builtin().unwrap();
    let loaded = plugin::host::extend(&mut registry, &[built(MISBEHAVING)]);
    assert!(loaded.is_empty());
    let problems = unlearn_pipeline::conformance::check(registry.get("SCRUB-dylib").unwrap());
    assert!(problems.is_empty(), "{problems:#?}");
    let t = TinyTask::new();
    let (model, mask) = t.trained_sparse();
    let config = serde_json::json!({"epochs": 3, "msteps": 2, "lr": 0.01, "batch_size": 16,
                                    "forget_batch_size": 4});
    let unlearn = |name: &str| {
        let u = registry
            .get(name)
            .unwrap()
            .build_unlearner(&config)
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let mut m = model.try_clone().unwrap();
        let trainer = Trainer::new(Device::Cpu, false);
        let mut ctx = unlearn_pipeline::method::UnlearnCtx {
            model: &mut m,
            mask: Some(&mask),
            data: &t.data,
            forget: &t.forget,
            trainer: &trainer,
            seed: 4,
            label: name.into(),
        };
        u.unlearn(&mut ctx)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        m
    };
    let (a, b) = (unlearn("SCRUB"), unlearn("SCRUB-dylib"));
    for (name, v) in a.var_store().variables() {
        assert!(v.equal(&b.var_store().variables()[&name]), "{name}");
    }
    assert_eq!(mask.violations(&b), 0);
    assert!(
        !a.parameters()["fc.weight"].equal(&model.parameters()["fc.weight"]),
        "SCRUB changed the model"
    );
}
