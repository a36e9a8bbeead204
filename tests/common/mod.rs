//! Running the `unlearn` binary as a user would, shared by the end-to-end test files.

#![allow(dead_code)]

use std::process::{Command, Output};

pub fn unlearn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unlearn"))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// `unlearn --device cpu run <cfg> --out <out>`, which must succeed.
pub fn run_ok(cfg: &std::path::Path, out: &std::path::Path) -> Output {
    let o = unlearn(&[
        "--device",
        "cpu",
        "run",
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    o
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
