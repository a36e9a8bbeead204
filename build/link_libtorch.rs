//! Shared build script (`build = "../build/link_libtorch.rs"`) for every crate whose binaries or
//! tests call libtorch. It embeds libtorch's directory as the run-time search path, so no
//! LD_LIBRARY_PATH is needed, and keeps `libtorch_cuda.so` linked: nothing references its
//! symbols, so `--as-needed` would drop it and libtorch would never see a GPU.
//! (These flags can't go in `.cargo/config.toml` rustflags: those also reach proc-macro crates
//! that rustc loads into itself, and loading CUDA there crashes rustc.)
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=../build/link_libtorch.rs");
    let Some(root) = std::env::var_os("LIBTORCH") else {
        println!(
            "cargo:warning=LIBTORCH is not set: run scripts/setup.sh once (it writes .cargo/config.toml)"
        );
        return;
    };
    let lib = PathBuf::from(root).join("lib");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
