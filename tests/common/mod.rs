//! Running the `unlearn` binary as a user would, shared by the end-to-end test files.

#![allow(dead_code)]

use std::process::{Command, Output};

pub fn unlearn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unlearn"))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// The arguments of `unlearn --device cpu <command> <cfg> --out <out> <extra...>`.
pub fn on_cpu<'a>(
    command: &'a str,
    cfg: &'a std::path::Path,
    out: &'a std::path::Path,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut a = vec![
        "--device",
        "cpu",
        command,
        cfg.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    a.extend(extra);
    a
}

/// `unlearn --device cpu run <cfg> --out <out>`, which must succeed.
pub fn run_ok(cfg: &std::path::Path, out: &std::path::Path) -> Output {
    let o = unlearn(&on_cpu("run", cfg, out, &[]));
    assert!(o.status.success(), "{}", stderr(&o));
    o
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
