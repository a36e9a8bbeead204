//! Dynamic plugins: methods in shared libraries (cdylibs) that join the same registry as the
//! built-ins, through a versioned C ABI ([`abi`]). The host side loads and checks libraries
//! ([`host`]); the plugin side ([`guest`]) turns the C calls back into the same `UnlearnCtx` /
//! `PruneCtx` / `AttackCtx` a built-in method gets, so a method's code does not change: a plugin
//! crate implements the method traits and adds one [`export_plugin!`](crate::export_plugin) line.

/// Exports methods from a plugin crate: `export_plugin! { unlearner: Rl, unlearner: SalUn }`
/// (kinds: `unlearner`, `pruner`, `attack`).
///
/// The same crate then works both ways:
/// - linked into a binary (as an rlib), the methods register as built-ins (`inventory`);
/// - built as a cdylib, it exports the one entry symbol the host loads. A crate with a `builtin`
///   feature leaves the symbol out when that feature is on, so several plugin crates can be
///   linked into one binary.
#[macro_export]
macro_rules! export_plugin {
    ($($kind:ident : $t:ty),+ $(,)?) => {
        $(
            $crate::inventory::submit! {
                $crate::method::BuiltinMethod::$kind::<$t>(env!("CARGO_PKG_NAME"))
            }
        )+

        /// The plugin library's entry (see `unlearn_core::plugin::abi`).
        #[cfg(not(feature = "builtin"))]
        #[no_mangle]
        pub extern "C" fn unlearn_plugin_entry() -> *const $crate::plugin::abi::PluginDescriptor {
            static METHODS: &[$crate::method::BuiltinMethod] = &[
                $( $crate::method::BuiltinMethod::$kind::<$t>(env!("CARGO_PKG_NAME")), )+
            ];
            static DESCRIPTOR: ::std::sync::OnceLock<$crate::plugin::guest::Exported> =
                ::std::sync::OnceLock::new();
            $crate::plugin::guest::descriptor(
                METHODS,
                env!("CARGO_PKG_NAME"),
                env!("CARGO_PKG_VERSION"),
                &DESCRIPTOR,
            )
        }
    };
}

pub mod abi;
pub mod guest;
pub mod host;
mod wire;

/// The libtorch version (`MAJOR.MINOR.PATCH`) this copy of core was built against. A plugin
/// library carries its own copy; the host refuses a library whose version differs.
pub const LIBTORCH_VERSION: &str = match option_env!("UNLEARN_LIBTORCH_VERSION") {
    Some(v) => v,
    None => "unknown",
};
