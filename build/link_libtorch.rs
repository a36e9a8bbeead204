//! Shared build script (`build = "../build/link_libtorch.rs"`) for every crate whose binaries or
//! tests call libtorch. It embeds libtorch's directory as the run-time search path, so no
//! LD_LIBRARY_PATH is needed, and keeps `libtorch_cuda.so` linked: nothing references its
//! symbols, so `--as-needed` would drop it and libtorch would never see a GPU.
//! (These flags can't go in `.cargo/config.toml` rustflags: those also reach proc-macro crates
//! that rustc loads into itself, and loading CUDA there crashes rustc.)
use std::path::PathBuf;

pub fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    // (Cargo reruns this script when the script itself changes: it is compiled from it.)
    let Some(root) = std::env::var_os("LIBTORCH") else {
        println!(
            "cargo:warning=LIBTORCH is not set: run scripts/setup.sh once (it writes .cargo/config.toml)"
        );
        return;
    };
    let root = PathBuf::from(root);
    // The libtorch version this crate is built against: plugin libraries carry it, and the host
    // refuses one built against another version (core reads it as `plugin::LIBTORCH_VERSION`).
    let header = root.join("include/torch/headeronly/version.h");
    println!("cargo:rerun-if-changed={}", header.display());
    // Without it the version is `unknown`, and the host refuses such plugins (and such a host
    // refuses every plugin): say so now rather than at load time.
    match libtorch_version(&header) {
        Some(v) => println!("cargo:rustc-env=UNLEARN_LIBTORCH_VERSION={v}"),
        None => println!(
            "cargo:warning=cannot read libtorch's version from {}: plugin libraries built so, and \
             a host built so, record `unknown`, and the host refuses to load them",
            header.display()
        ),
    }
    let lib = root.join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}

/// `MAJOR.MINOR.PATCH` from libtorch's version header.
fn libtorch_version(header: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(header).ok()?;
    let part = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix("#define ")?
                .strip_prefix(name)?
                .trim()
                .parse::<u32>()
                .ok()
        })
    };
    Some(format!(
        "{}.{}.{}",
        part("TORCH_VERSION_MAJOR ")?,
        part("TORCH_VERSION_MINOR ")?,
        part("TORCH_VERSION_PATCH ")?
    ))
}
