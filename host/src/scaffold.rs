//! `unlearn plugin new`: scaffolds a plugin crate.

use std::path::PathBuf;

use unlearn_core::method::Kind;

pub struct NewPlugin {
    pub name: String,
    pub kind: Kind,
    /// The parent folder; the crate is created as `<dir>/<name>`.
    pub dir: PathBuf,
    /// The unlearn-core crate to build against (default: this binary's sources).
    pub sdk: Option<PathBuf>,
}

/// Creates the crate and returns its folder.
pub fn new_plugin(_opts: &NewPlugin) -> anyhow::Result<PathBuf> {
    anyhow::bail!("not written yet")
}
