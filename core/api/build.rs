//! unlearn-api's build script: the shared libtorch linking (`build/link_libtorch.rs`) and the small C++
//! shim of libtorch operations tch does not expose (`shim/unlearn_shim.cpp`).

#[path = "../../build/link_libtorch.rs"]
mod link_libtorch;

use std::path::PathBuf;

fn main() {
    link_libtorch::main();
    println!("cargo:rerun-if-changed=shim/unlearn_shim.cpp");
    let Some(root) = std::env::var_os("LIBTORCH").map(PathBuf::from) else {
        return;
    };
    // The ABI flag must match libtorch's (PyTorch wheels since 2.x: the C++11 ABI).
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".into());
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    cc::Build::new()
        .cpp(true)
        .file("shim/unlearn_shim.cpp")
        .include(root.join("include"))
        .flag("-std=c++17")
        .flag(format!("-D_GLIBCXX_USE_CXX11_ABI={abi}"))
        .flag_if_supported("-Wno-unused-parameter")
        .warnings(false)
        .compile("unlearn_shim");
}
