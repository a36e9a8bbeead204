//! End to end: `unlearn plugin new` makes a crate that builds as it is (`cargo build --release`),
//! passes its own conformance test (`cargo test --release`), and loads into the host
//! (`unlearn --plugin-dir DIR list --json`, `unlearn plugin check LIB`), for each kind.
//!
//! The generated crates build in one shared target folder, `<target>/plugin-builds`, with the
//! workspace's Cargo.lock copied in, so tch and unlearn-api compile once for all of them (the
//! first build takes minutes; later ones seconds). Cargo serialises the builds on that folder's
//! lock, so the tests may run in parallel.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

const UNLEARN: &str = env!("CARGO_BIN_EXE_unlearn");

/// `<target>` (the folder whose `release/` holds the binary under test) + `plugin-builds`.
fn shared_target_dir() -> PathBuf {
    let bin = Path::new(UNLEARN);
    let target = bin
        .parent()
        .and_then(Path::parent)
        .expect("the binary lives in <target>/<profile>/");
    target.join("plugin-builds")
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// LIBTORCH, which cargo sets from the checkout's .cargo/config.toml; the nested builds run
/// outside the checkout, so it is passed on explicitly.
fn libtorch() -> String {
    match std::env::var("LIBTORCH") {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "LIBTORCH is not set: run this test with cargo inside the unlearn checkout (its \
             .cargo/config.toml, written by scripts/setup.sh, sets it), or export LIBTORCH"
        ),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs `cmd`; panics with its output unless it succeeds.
fn run(cmd: &mut Command, what: &str) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// cargo, for a generated crate: the shared target folder, this checkout's libtorch, no network
/// (every dependency is in the copied Cargo.lock and already downloaded).
fn cargo(dir: &Path, args: &[&str]) -> Command {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
    let mut c = Command::new(cargo);
    c.current_dir(dir)
        .args(args)
        .arg("--offline")
        .env("LIBTORCH", libtorch())
        .env("CARGO_TARGET_DIR", shared_target_dir())
        // The outer cargo's jobserver is not ours to use.
        .env_remove("CARGO_MAKEFLAGS")
        .env_remove("MAKEFLAGS")
        .env_remove("MFLAGS");
    c
}

/// The binary under test, with no plugin path from the environment.
fn unlearn() -> Command {
    let mut c = Command::new(UNLEARN);
    c.env_remove("UNLEARN_PLUGIN_PATH");
    c
}

fn lib_file(krate: &str) -> String {
    format!(
        "{}{krate}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// The whole path of a plugin author, for one kind.
fn scaffold_build_test_and_load(name: &str, kind: &str) {
    libtorch();
    let krate = name.replace('-', "_");
    let tmp = tempfile::Builder::new()
        .prefix("unlearn-scaffold-")
        .tempdir()
        .unwrap();

    // 1. Scaffold: prints the created folder, and nothing else.
    let out = run(
        unlearn()
            .args(["plugin", "new", name, "--kind", kind, "--dir"])
            .arg(tmp.path()),
        "unlearn plugin new",
    );
    let dir = PathBuf::from(text(&out.stdout).trim());
    assert_eq!(dir, tmp.path().join(name).canonicalize().unwrap());
    for f in [
        "Cargo.toml",
        "build.rs",
        "src/lib.rs",
        "tests/conformance.rs",
        "README.md",
        ".gitignore",
    ] {
        assert!(dir.join(f).is_file(), "{name}: {f} was not written");
    }
    // The same dependency versions as the workspace, so the shared target folder is reused.
    fs::copy(workspace().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();

    // 2. Build: the cdylib lands in <target>/release.
    let t = Instant::now();
    run(
        &mut cargo(&dir, &["build", "--release"]),
        "cargo build --release",
    );
    eprintln!(
        "[{name}] cargo build --release: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let lib = shared_target_dir().join("release").join(lib_file(&krate));
    assert!(lib.is_file(), "{} was not built", lib.display());

    // 3. Its own test: the conformance suite on the method, in-process.
    let t = Instant::now();
    let out = run(
        &mut cargo(&dir, &["test", "--release"]),
        "cargo test --release",
    );
    eprintln!(
        "[{name}] cargo test --release: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let report = text(&out.stdout);
    for test in [
        "the_method_is_registered ... ok",
        "the_method_passes_the_conformance_suite ... ok",
    ] {
        assert!(
            report.contains(test),
            "{name}: `{test}` missing in:\n{report}"
        );
    }

    // 4. Load it into the host. The library is copied into a folder of its own, so that a
    //    library another test is writing in the shared target folder is never read half-done.
    let plugins = tmp.path().join("plugins");
    fs::create_dir(&plugins).unwrap();
    let copy = plugins.join(lib_file(&krate));
    fs::copy(&lib, &copy).unwrap();
    let out = run(
        unlearn()
            .arg("--plugin-dir")
            .arg(&plugins)
            .args(["list", "--json"]),
        "unlearn --plugin-dir DIR list --json",
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("list --json is not JSON ({e}):\n{}", text(&out.stdout)));
    let entry = listed
        .as_array()
        .expect("list --json prints an array")
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("`{name}` is not listed:\n{listed:#}"));
    assert_eq!(entry["kind"], kind, "{entry:#}");
    // The source names the library (as a string or as a structured value).
    let source = match &entry["source"] {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    assert!(
        !source.starts_with("built-in") && source.contains(&lib_file(&krate)),
        "`{name}` should come from {}, but its source is {source}",
        copy.display()
    );

    run(
        unlearn().args(["plugin", "check"]).arg(&copy),
        "unlearn plugin check",
    );
}

#[test]
fn scaffolded_unlearner_builds_passes_conformance_and_loads() {
    scaffold_build_test_and_load("scaffold-ft", "unlearner");
}

#[test]
fn scaffolded_pruner_builds_passes_conformance_and_loads() {
    scaffold_build_test_and_load("scaffold-magnitude", "pruner");
}

#[test]
fn scaffolded_attack_builds_passes_conformance_and_loads() {
    scaffold_build_test_and_load("scaffold-patch", "attack");
}
