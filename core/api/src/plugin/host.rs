//! The host side of the ABI: finding and loading plugin libraries, checking them, and making
//! their methods behave like built-ins (they implement the same traits by calling through the
//! method table; the host's loop runs their training through [`HostApi::run_loop`]).

use std::collections::BTreeMap;
use std::ffi::{CString, c_char, c_void};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::Value;
use tch::Tensor;

use super::abi::{
    ABI_MAJOR, ABI_MINOR, AttackCall, BatchLossFn, BatchRef, C_tensor, DESCRIPTOR_SIZE_2_0,
    ENTRY_SYMBOL, EntryFn, FreeString, Handle, HostApi, KIND_ATTACK, KIND_PRUNER, KIND_UNLEARNER,
    LoopRequest, METHOD_ENTRY_SIZE_2_0, MethodEntry, ObjectiveRef, PANIC_ABORT, PANIC_UNWIND,
    PhasedLoopRequest, PluginDescriptor, PruneCall, Status, UnlearnCall,
};
use super::wire::{
    self, CallContext, Collected, OwnedList, OwnedModel, OwnedTask, PhaseMeta, ReportMeta, RunMeta,
    alloc_string, borrow_tensor, free_string, guard, json_cstring, lend, put_all, read_dataset,
    read_header_field, read_json, read_list, read_model, read_sized, read_str, status_result,
    use_lent,
};
use crate::mask::Mask;
use crate::method::ConfigIssue;
use crate::method::{
    Attack, AttackCtx, Built, Kind, MethodError, Poisoning, PruneCtx, Pruner, RewindPoint,
    UnlearnCtx, Unlearner,
};
use crate::model::Model;
use crate::registry::{LibraryMaker, Method, Registry, Source};
use crate::train::{Batch, Objective, Phase, Run, Stream, Trainer};

#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    #[error("{}: not a loadable library: {reason}", path.display())]
    NotALibrary { path: PathBuf, reason: String },
    #[error("{}: no `{ENTRY_SYMBOL}` symbol, so not an unlearn plugin (a plugin crate ends with `export_plugin!` and builds as a cdylib)", path.display())]
    NoEntry { path: PathBuf },
    #[error("{}: the plugin's `{ENTRY_SYMBOL}` returned no descriptor", path.display())]
    NoDescriptor { path: PathBuf },
    #[error("{}: built for plugin ABI version {plugin}, but this unlearn speaks version {ABI_MAJOR}.{ABI_MINOR} (it loads {ABI_MAJOR}.0 to {ABI_MAJOR}.{ABI_MINOR}): rebuild the plugin against this unlearn's core", path.display())]
    AbiMismatch {
        path: PathBuf,
        /// `MAJOR.MINOR`, or `1` for a version 1 library.
        plugin: String,
    },
    #[error("{}: built against libtorch {plugin}, but this unlearn runs libtorch {host}: rebuild the plugin with LIBTORCH pointing at libtorch {host}", path.display())]
    LibtorchMismatch {
        path: PathBuf,
        plugin: String,
        host: String,
    },
    #[error("{}: cannot tell whether the plugin and this unlearn use the same libtorch: the plugin was built against libtorch `{plugin}`, this unlearn against libtorch `{host}` (`unknown`: the build could not read libtorch's include/torch/headeronly/version.h); set LIBTORCH to the libtorch both use and rebuild {which}", path.display())]
    LibtorchUnknown {
        path: PathBuf,
        plugin: String,
        host: String,
        /// What to rebuild: the plugin, this unlearn, or both.
        which: String,
    },
    #[error("{}: built with panic = \"abort\", so a panic in the plugin would abort the host instead of becoming an error: build it with panic = \"unwind\" (the default: remove `panic = \"abort\"` from the [profile] of the workspace that builds it)", path.display())]
    PanicAbort { path: PathBuf },
    #[error("{}: its wire types (the JSON documents that cross the plugin ABI) differ from this unlearn's: {differs} (schema hash {plugin:.12} in the plugin, {host:.12} here): rebuild the plugin against this unlearn's core", path.display())]
    WireMismatch {
        path: PathBuf,
        plugin: String,
        host: String,
        /// The documents that differ, or what could not be compared.
        differs: String,
    },
    #[error("{}: {reason}", path.display())]
    BadDescriptor { path: PathBuf, reason: String },
    #[error("{}: method `{name}`: {reason}", path.display())]
    BadMethod {
        path: PathBuf,
        name: String,
        reason: String,
    },
    #[error(transparent)]
    Duplicate(#[from] crate::registry::RegistryError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {what}, not a plugin library (a regular file) or a folder of them", path.display())]
    NotAFile { path: PathBuf, what: &'static str },
    #[error("{}: trying to load it {how}, so it was not loaded: the file is damaged (cut short, overwritten) or not a library for this machine; rebuild it, or remove it from the plugin path", path.display())]
    Crashed { path: PathBuf, how: String },
}

/// What a path is when it is neither a regular file nor a folder (a FIFO would block a reader).
fn special_file(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_fifo() {
        "a named pipe (FIFO)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// The libraries a plugin path names: a library file itself, or the libraries
/// (`*`[`std::env::consts::DLL_SUFFIX`]) directly in a folder, sorted by name. Only regular
/// files are libraries: a FIFO or device named like one is a problem of its own (reading it could
/// block), reported beside the libraries found.
pub fn libraries_in(path: &Path) -> Result<(Vec<PathBuf>, Vec<PluginError>), PluginError> {
    let io = |source| PluginError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.is_file() {
        return Ok((vec![path.to_path_buf()], Vec::new()));
    }
    if !meta.is_dir() {
        return Err(PluginError::NotAFile {
            path: path.to_path_buf(),
            what: special_file(&meta),
        });
    }
    let mut found = Vec::new();
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(path).map_err(io)? {
        let p = entry.map_err(io)?.path();
        let is_lib = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(std::env::consts::DLL_SUFFIX));
        if !is_lib {
            continue;
        }
        match std::fs::metadata(&p) {
            Ok(m) if m.is_file() => found.push(p),
            Ok(m) if !m.is_dir() => problems.push(PluginError::NotAFile {
                what: special_file(&m),
                path: p,
            }),
            _ => {}
        }
    }
    found.sort();
    Ok((found, problems))
}

/// A checked library: its name and version, and its methods ready for the registry.
pub struct Library {
    pub path: PathBuf,
    pub name: String,
    pub version: String,
    /// The plugin ABI version it was built for (`MAJOR`, `MINOR`).
    pub abi: (u32, u32),
    /// The libtorch it was built against.
    pub libtorch: String,
    pub methods: Vec<Method>,
    /// The crate that defines each method, by method name (ABI 2.1's `describe_json`; the
    /// library's own crate for a 2.0 library).
    pub crates: BTreeMap<String, String>,
    /// Methods the library offers but the host refused (e.g. an invalid schema).
    pub rejected: Vec<PluginError>,
}

/// Libraries already loaded in this process, by canonical path: loading twice gives the same
/// descriptor (libraries are never unloaded).
fn loaded() -> &'static Mutex<BTreeMap<PathBuf, usize>> {
    static LOADED: OnceLock<Mutex<BTreeMap<PathBuf, usize>>> = OnceLock::new();
    LOADED.get_or_init(Default::default)
}

/// Loads a library and checks its descriptor: ABI version, sizes, libtorch version, panic
/// strategy and wire types first (see `abi`: each fails closed), then each method (kind,
/// strings, a schema that compiles and accepts the default config).
pub fn load(path: &Path) -> Result<Library, PluginError> {
    let canonical = path.canonicalize().map_err(|source| PluginError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // Only a regular file is opened: the loader would block on a FIFO.
    let meta = std::fs::metadata(&canonical).map_err(|source| PluginError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if !meta.is_file() {
        return Err(PluginError::NotAFile {
            path: path.to_path_buf(),
            what: if meta.is_dir() {
                "a folder (`plugin check` takes one library file)"
            } else {
                special_file(&meta)
            },
        });
    }
    let descriptor = {
        let mut cache = loaded().lock().unwrap_or_else(|p| p.into_inner());
        match cache.get(&canonical) {
            Some(&d) => d as *const PluginDescriptor,
            None => {
                let d = open(&canonical)?;
                cache.insert(canonical.clone(), d as usize);
                d
            }
        }
    };
    // SAFETY: a descriptor from the library's entry, static for the life of the process.
    unsafe { check(&canonical, descriptor) }
}

/// Checks a descriptor as [`load`] does once the library is open, so tests and the fuzz
/// targets can feed the host broken descriptors without building a library for each.
///
/// # Safety
/// `d` points at a descriptor whose pointers are null or valid for the call: NUL-terminated
/// strings, and a table of `n_methods` method entries.
#[doc(hidden)]
pub unsafe fn check_descriptor(
    path: &Path,
    d: *const PluginDescriptor,
) -> Result<Library, PluginError> {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe { check(path, d) }
}

fn open(path: &Path) -> Result<*const PluginDescriptor, PluginError> {
    // SAFETY: loading runs the library's initialisers; that is what loading a plugin means.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| {
        // libloading's own text is only "dlopen failed"; the loader's reason is its source.
        let reason = std::error::Error::source(&e)
            .map(|s| s.to_string())
            .unwrap_or_else(|| e.to_string());
        PluginError::NotALibrary {
            path: path.to_path_buf(),
            reason,
        }
    })?;
    // SAFETY: the symbol's type is the ABI's entry type.
    let entry: EntryFn = match unsafe { lib.get::<EntryFn>(ENTRY_SYMBOL.as_bytes()) } {
        Ok(sym) => *sym,
        Err(_) => {
            return Err(PluginError::NoEntry {
                path: path.to_path_buf(),
            });
        }
    };
    // Never unloaded: code and static data of the library stay valid for the process.
    std::mem::forget(lib);
    // SAFETY: the entry takes nothing and returns a static descriptor or null.
    let d = unsafe { entry() };
    if d.is_null() {
        return Err(PluginError::NoDescriptor {
            path: path.to_path_buf(),
        });
    }
    Ok(d)
}

/// `MAJOR.MINOR.PATCH` of a libtorch version (a local suffix such as `+cu130` aside), or `None`
/// when it is not one (`unknown`, empty, anything else).
fn parse_libtorch(v: &str) -> Option<(u64, u64, u64)> {
    let base = v.split('+').next()?;
    let mut parts = base.split('.').map(|p| {
        (!p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
            .then(|| p.parse::<u64>().ok())
            .flatten()
    });
    let version = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(version)
}

/// The libtorch check: both versions known, and equal. Unknown on either side fails closed.
fn check_libtorch(path: &Path, plugin: &str, host: &str) -> Result<(), PluginError> {
    match (parse_libtorch(plugin), parse_libtorch(host)) {
        (Some(p), Some(h)) if p == h => Ok(()),
        (Some(_), Some(_)) => Err(PluginError::LibtorchMismatch {
            path: path.to_path_buf(),
            plugin: plugin.to_string(),
            host: host.to_string(),
        }),
        (p, h) => Err(PluginError::LibtorchUnknown {
            path: path.to_path_buf(),
            plugin: plugin.to_string(),
            host: host.to_string(),
            which: match (p, h) {
                (None, None) => "both",
                (None, _) => "the plugin",
                _ => "this unlearn",
            }
            .to_string(),
        }),
    }
}

/// The wire check: the same schema hash; on a mismatch, which documents differ.
unsafe fn check_wire(path: &Path, d: &PluginDescriptor) -> Result<(), PluginError> {
    // SAFETY: the caller upholds what this `unsafe fn` requires (its doc comment).
    unsafe {
        let host = wire::wire_digest();
        let hash = read_str(d.wire_hash, "wire schema hash").unwrap_or("(none)");
        if hash == host.hash {
            return Ok(());
        }
        let differs = match read_json::<BTreeMap<String, String>>(d.wire_types, "wire types") {
            Ok(types) => {
                let d = wire::wire_differences(&types, &host.types);
                if d.is_empty() {
                    "the same documents, but another hash".to_string()
                } else {
                    d.join(", ")
                }
            }
            Err(e) => e,
        };
        Err(PluginError::WireMismatch {
            path: path.to_path_buf(),
            plugin: hash.to_string(),
            host: host.hash.clone(),
            differs,
        })
    }
}

/// Checks a descriptor, reading its stable header first and then only what its version and
/// size say it has.
///
/// # Safety
/// `d` is a library's descriptor, static for the life of the process.
unsafe fn check(path: &Path, d: *const PluginDescriptor) -> Result<Library, PluginError> {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let header = d as *const u8;
        let major: u32 =
            read_header_field(header, std::mem::offset_of!(PluginDescriptor, abi_major));
        // Version 1 had a lone `u32` at offset 0 (then a pointer): the rest of the stable header
        // exists from 2.0 on.
        let minor: Option<u32> = (major >= 2)
            .then(|| read_header_field(header, std::mem::offset_of!(PluginDescriptor, abi_minor)));
        if major != ABI_MAJOR || minor.is_none_or(|m| m > ABI_MINOR) {
            return Err(PluginError::AbiMismatch {
                path: path.to_path_buf(),
                plugin: match minor {
                    Some(m) => format!("{major}.{m}"),
                    None => major.to_string(),
                },
            });
        }
        let minor = minor.unwrap_or(0);
        let bad = |reason: String| PluginError::BadDescriptor {
            path: path.to_path_buf(),
            reason,
        };
        let size: usize = read_header_field(header, std::mem::offset_of!(PluginDescriptor, size));
        if size < DESCRIPTOR_SIZE_2_0 {
            return Err(bad(format!(
                "a descriptor of {size} bytes, less than the {DESCRIPTOR_SIZE_2_0} of ABI {ABI_MAJOR}.0"
            )));
        }
        // Fields appended after 2.0 read as absent when the library's table is shorter.
        let d: PluginDescriptor = read_sized(d, size);
        let torch = read_str(d.libtorch_version, "libtorch version").unwrap_or("(none)");
        check_libtorch(path, torch, super::LIBTORCH_VERSION)?;
        match d.panic_strategy {
            PANIC_UNWIND => {}
            PANIC_ABORT => {
                return Err(PluginError::PanicAbort {
                    path: path.to_path_buf(),
                });
            }
            other => {
                return Err(bad(format!(
                    "its panic strategy is unknown ({other}), so its panics may not be catchable"
                )));
            }
        }
        check_wire(path, &d)?;
        let name = read_str(d.plugin_name, "plugin name")
            .map_err(bad)?
            .to_string();
        let version = read_str(d.plugin_version, "plugin version")
            .map_err(bad)?
            .to_string();
        if d.methods.is_null() && d.n_methods > 0 {
            return Err(bad("a null method table".into()));
        }
        let entries = if d.n_methods == 0 {
            &[][..]
        } else {
            std::slice::from_raw_parts(d.methods, d.n_methods)
        };
        let mut methods = Vec::new();
        let mut crates = BTreeMap::new();
        let mut rejected = Vec::new();
        for (i, &e) in entries.iter().enumerate() {
            match method(path, i, e, minor, &d, &name) {
                Ok((m, krate)) => {
                    crates.insert(m.name.clone(), krate);
                    methods.push(m);
                }
                Err(err) => rejected.push(err),
            }
        }
        Ok(Library {
            path: path.to_path_buf(),
            name,
            version,
            abi: (major, minor),
            libtorch: torch.to_string(),
            methods,
            crates,
            rejected,
        })
    }
}

/// The method entry's bytes a library of `minor` can have: fields of later minors are absent
/// whatever its size says.
fn method_entry_size(minor: u32) -> usize {
    match minor {
        0 => METHOD_ENTRY_SIZE_2_0,
        _ => std::mem::size_of::<MethodEntry>(),
    }
}

/// Checks the `i`-th method entry and makes the method; with the crate that defines it.
///
/// # Safety
/// `e` is null or a static method entry of the library `d` describes.
unsafe fn method(
    path: &Path,
    i: usize,
    e: *const MethodEntry,
    minor: u32,
    d: &PluginDescriptor,
    library: &str,
) -> Result<(Method, String), PluginError> {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let bad_entry = |reason: String| PluginError::BadDescriptor {
            path: path.to_path_buf(),
            reason: format!("method entry {i}: {reason}"),
        };
        if e.is_null() {
            return Err(bad_entry("a null pointer".into()));
        }
        let size: usize =
            read_header_field(e as *const u8, std::mem::offset_of!(MethodEntry, size));
        if size < METHOD_ENTRY_SIZE_2_0 {
            return Err(bad_entry(format!(
                "{size} bytes, less than the {METHOD_ENTRY_SIZE_2_0} of ABI {ABI_MAJOR}.0"
            )));
        }
        let e: MethodEntry = read_sized(e, size.min(method_entry_size(minor)));
        let name = read_str(e.name, "method name")
            .map_err(|reason| PluginError::BadDescriptor {
                path: path.to_path_buf(),
                reason,
            })?
            .to_string();
        let bad = |reason: String| PluginError::BadMethod {
            path: path.to_path_buf(),
            name: name.clone(),
            reason,
        };
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("a method name must be non-empty, without spaces".into()));
        }
        let kind = match e.kind {
            KIND_PRUNER => Kind::Pruner,
            KIND_UNLEARNER => Kind::Unlearner,
            KIND_ATTACK => Kind::Attack,
            k => return Err(bad(format!("unknown kind {k}"))),
        };
        let summary = read_str(e.summary, "summary").map_err(bad)?.to_string();
        let schema: Value = read_json(e.schema_json, "its config schema").map_err(bad)?;
        let default_config: Value =
            read_json(e.default_config_json, "its default config").map_err(bad)?;
        let validator = jsonschema::validator_for(&schema).map_err(|err| {
            bad(format!(
                "its config schema is not a valid JSON Schema: {err}"
            ))
        })?;
        if let Some(err) = validator.iter_errors(&default_config).next() {
            return Err(bad(format!(
                "its default config does not satisfy its own schema: {}: {err}",
                err.instance_path()
            )));
        }
        // 2.1: facts about the method; absent (2.0, or null) they default.
        let facts: serde_json::Map<String, Value> = if e.describe_json.is_null() {
            Default::default()
        } else {
            read_json(
                e.describe_json,
                "its description (describe_json, a JSON object)",
            )
            .map_err(bad)?
        };
        let krate = match facts.get("crate") {
            None => library.to_string(),
            Some(Value::String(c)) => c.clone(),
            Some(other) => {
                return Err(bad(format!(
                    "its description's `crate` is not a string: {other}"
                )));
            }
        };
        let method = Method::from_library(
            kind,
            name.clone(),
            summary,
            Source::Library(path.to_path_buf()),
            schema,
            default_config,
            Box::new(ArcLibraryMethod(Arc::new(LibraryMethod {
                path: path.to_path_buf(),
                name,
                entry: e,
                free: d.free_string,
            }))),
        );
        Ok((method, krate))
    }
}

/// Loads every library that `paths` (folders or files) name into `registry`. A library or
/// method that fails is left out, and its problem (naming the library) returned; the others
/// are added.
pub fn extend(registry: &mut Registry, paths: &[PathBuf]) -> Vec<PluginError> {
    extend_probed(registry, paths, &|_| Ok(()))
}

/// Whether this process has loaded the library at `path` already (loading it again returns the
/// same descriptor, so it needs no probe).
pub fn is_loaded(path: &Path) -> bool {
    path.canonicalize().is_ok_and(|c| {
        loaded()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&c)
    })
}

/// [`extend`], asking `probe` first about every library not loaded yet: a library the probe
/// refuses (the host tries it in a child process, which a damaged library can crash) is reported
/// and never opened here.
pub fn extend_probed(
    registry: &mut Registry,
    paths: &[PathBuf],
    probe: &dyn Fn(&Path) -> Result<(), PluginError>,
) -> Vec<PluginError> {
    let mut problems = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for p in paths {
        let libs = match libraries_in(p) {
            Ok((l, not_files)) => {
                problems.extend(not_files);
                l
            }
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        for lib in libs {
            // The same file named twice (e.g. a folder and a file in it) loads once.
            if !seen.insert(lib.canonicalize().unwrap_or_else(|_| lib.clone())) {
                continue;
            }
            if !is_loaded(&lib)
                && let Err(e) = probe(&lib)
            {
                problems.push(e);
                continue;
            }
            match load(&lib) {
                Ok(l) => {
                    problems.extend(l.rejected);
                    for m in l.methods {
                        if let Err(e) = registry.add(m) {
                            problems.push(e.into());
                        }
                    }
                }
                Err(e) => problems.push(e),
            }
        }
    }
    problems
}

/// One method of a loaded library.
pub struct LibraryMethod {
    path: PathBuf,
    name: String,
    /// The library's entry as this host reads it (fields its version lacks absent).
    entry: MethodEntry,
    free: FreeString,
}

// SAFETY: `entry` points at static, immutable descriptor data and functions of a library that is
// never unloaded; the instances it makes are of `Send + Sync` method types.
unsafe impl Send for LibraryMethod {}
// SAFETY: as for `Send` just above.
unsafe impl Sync for LibraryMethod {}

impl LibraryMethod {
    /// `"<name> (<library>)"`, for errors.
    fn who(&self) -> String {
        format!("{} (plugin {})", self.name, self.path.display())
    }

    fn create(self: &Arc<Self>, config: &Value) -> Result<Instance, Vec<ConfigIssue>> {
        let json = CString::new(config.to_string()).expect("JSON has no NUL");
        let mut instance = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        // SAFETY: the entry's own state and function; out-pointers valid.
        let result = unsafe {
            let status =
                (self.entry.create)(self.entry.state, json.as_ptr(), &mut instance, &mut err);
            status_result(status, err, self.free)
        };
        match result {
            Ok(()) if !instance.is_null() => Ok(Instance {
                method: self.clone(),
                ptr: instance,
            }),
            Ok(()) => Err(vec![ConfigIssue::new(
                "",
                None,
                format!("{}: create returned nothing", self.who()),
            )]),
            Err(m) => Err(
                serde_json::from_str::<Vec<ConfigIssue>>(&m).unwrap_or_else(|_| {
                    vec![ConfigIssue::new("", None, format!("{}: {m}", self.who()))]
                }),
            ),
        }
    }
}

/// A library's method as the registry makes it ([`LibraryMaker`]); its instances share it.
struct ArcLibraryMethod(Arc<LibraryMethod>);

impl LibraryMaker for ArcLibraryMethod {
    fn build_unlearner(&self, config: &Value) -> Built<dyn Unlearner> {
        Ok(Box::new(LibraryUnlearner(self.0.create(config)?)))
    }

    fn build_pruner(&self, config: &Value) -> Built<dyn Pruner> {
        let instance = self.0.create(config)?;
        let (mut sparsity, mut rewind) = (0.0, -1i64);
        // SAFETY: a live instance of this entry; out-pointers valid.
        unsafe { instance.call(|e, i, err| (e.pruner_info)(i, &mut sparsity, &mut rewind, err)) }
            .map_err(|e| vec![ConfigIssue::new("", None, e.to_string())])?;
        Ok(Box::new(LibraryPruner {
            instance,
            sparsity,
            rewind: wire::rewind_point_from_i64(rewind),
        }))
    }

    fn build_attack(&self, config: &Value) -> Built<dyn Attack> {
        let instance = self.0.create(config)?;
        let mut target = 0u64;
        // SAFETY: a live instance of this entry; out-pointer valid.
        unsafe { instance.call(|e, i, err| (e.attack_target)(i, &mut target, err)) }
            .map_err(|e| vec![ConfigIssue::new("", None, e.to_string())])?;
        Ok(Box::new(LibraryAttack {
            instance,
            target: target as usize,
        }))
    }
}

/// A method instance inside a library; destroyed there.
struct Instance {
    method: Arc<LibraryMethod>,
    ptr: *mut c_void,
}

// SAFETY: instances are of `Send + Sync` method types (the traits require it).
unsafe impl Send for Instance {}
// SAFETY: as for `Send` just above.
unsafe impl Sync for Instance {}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: made by this entry's `create`, destroyed once.
        unsafe { (self.method.entry.destroy)(self.ptr) }
    }
}

impl Instance {
    fn failed(&self, m: String) -> MethodError {
        MethodError::Failed(format!("{}: {m}", self.method.who()))
    }

    /// Calls one of the entry's functions on this instance; its error (freed with the library's
    /// allocator) names the method and library.
    ///
    /// # Safety
    /// `f` calls an entry function with arguments valid for the call.
    unsafe fn call(
        &self,
        f: impl FnOnce(&MethodEntry, *mut c_void, *mut *mut c_char) -> Status,
    ) -> Result<(), MethodError> {
        // SAFETY: the caller upholds this function's `# Safety` contract.
        unsafe {
            let mut err = std::ptr::null_mut();
            let status = f(&self.method.entry, self.ptr, &mut err);
            status_result(status, err, self.method.free).map_err(|m| self.failed(m))
        }
    }
}

fn context_json(seed: u64, label: &str, progress: bool) -> CString {
    json_cstring(&CallContext {
        seed,
        label: label.to_string(),
        progress,
    })
}

struct LibraryUnlearner(Instance);

impl Unlearner for LibraryUnlearner {
    fn unlearn(&self, ctx: &mut UnlearnCtx<'_>) -> Result<(), MethodError> {
        {
            // Lent for this call only: the model's forward and the trainer are handles the
            // plugin can use until the call returns, and not after.
            let model: &Model = ctx.model;
            let owned_model = OwnedModel::new(model);
            let mask = OwnedList::optional(ctx.mask.map(|m| m.tensors().iter()));
            let data = OwnedTask::new(ctx.data);
            let forget = json_cstring(ctx.forget);
            let cx = context_json(ctx.seed, &ctx.label, ctx.trainer.progress);
            let trainer = lend(ctx.trainer, "trainer");
            let call = UnlearnCall {
                model: owned_model.as_ref(),
                mask: mask.as_ref(),
                data: data.as_ref(),
                forget_json: forget.as_ptr(),
                context_json: cx.as_ptr(),
                trainer: trainer.handle(),
            };
            // SAFETY: everything the call points at lives until this returns.
            unsafe {
                self.0
                    .call(|e, i, err| (e.unlearn)(i, host_api(), &call, err))?
            };
        }
        // The model changed in place; a plugin cannot be trusted to keep the mask.
        ctx.enforce_mask();
        Ok(())
    }
}

struct LibraryPruner {
    instance: Instance,
    sparsity: f64,
    rewind: Option<RewindPoint>,
}

impl Pruner for LibraryPruner {
    fn sparsity(&self) -> f64 {
        self.sparsity
    }

    fn rewind_point(&self) -> Option<RewindPoint> {
        self.rewind
    }

    fn prune(&self, ctx: &mut PruneCtx<'_>) -> Result<Mask, MethodError> {
        let got = Collected::default();
        {
            let model: &Model = ctx.model;
            let owned_model = OwnedModel::new(model);
            let rewind = OwnedList::optional(ctx.rewind.map(|s| s.0.iter()));
            let data = OwnedTask::new(ctx.data);
            let schedule = json_cstring(ctx.schedule);
            let cx = context_json(ctx.seed, &ctx.label, ctx.trainer.progress);
            let trainer = lend(ctx.trainer, "trainer");
            let call = PruneCall {
                model: owned_model.as_ref(),
                rewind: rewind.as_ref(),
                data: data.as_ref(),
                schedule_json: schedule.as_ptr(),
                context_json: cx.as_ptr(),
                trainer: trainer.handle(),
            };
            let sink = got.lend();
            // SAFETY: as for unlearn; the sink is lent until the call returns.
            unsafe {
                self.instance
                    .call(|e, i, err| (e.prune)(i, host_api(), &call, sink.sink(), err))?
            };
        }
        let mask = Mask::from_tensors(ctx.model, got.into_map())
            .map_err(|e| self.instance.failed(format!("the mask it returned: {e}")))?;
        mask.apply(ctx.model);
        Ok(mask)
    }
}

struct LibraryAttack {
    instance: Instance,
    target: usize,
}

impl Attack for LibraryAttack {
    fn poison(&self, ctx: &AttackCtx<'_>) -> Result<Poisoning, MethodError> {
        let data = OwnedTask::new(ctx.data);
        let cx = context_json(ctx.seed, &ctx.label, false);
        let call = AttackCall {
            data: data.as_ref(),
            context_json: cx.as_ptr(),
        };
        let got = Collected::default();
        {
            let sink = got.lend();
            // SAFETY: as for unlearn; the sink is lent until the call returns.
            unsafe {
                self.instance
                    .call(|e, i, err| (e.poison)(i, host_api(), &call, sink.sink(), err))?
            };
        }
        let mut got = got.into_map();
        let mut take = |name: &str| {
            got.remove(name).ok_or_else(|| {
                self.instance
                    .failed(format!("its poisoning has no `{name}`"))
            })
        };
        let rows = take("rows")?;
        let rows: Vec<i64> =
            Vec::<i64>::try_from(&rows.to_device(tch::Device::Cpu).to_kind(tch::Kind::Int64))
                .map_err(|e| self.instance.failed(format!("rows: {e}")))?;
        if rows.iter().any(|&r| r < 0) {
            return Err(self.instance.failed("a negative row".into()));
        }
        Ok(Poisoning {
            rows: rows.into_iter().map(|r| r as usize).collect(),
            images: take("images")?,
            labels: take("labels")?,
        })
    }

    fn trigger(&self, images: &Tensor) -> Result<Tensor, MethodError> {
        let mut out = std::ptr::null_mut();
        // SAFETY: a borrowed input, an owned output.
        unsafe {
            self.instance
                .call(|e, i, err| (e.trigger)(i, images.as_ptr() as *mut C_tensor, &mut out, err))?
        };
        if out.is_null() {
            return Err(self.instance.failed("trigger returned no tensor".into()));
        }
        // SAFETY: an owned handle from the plugin.
        Ok(unsafe { Tensor::from_ptr(out) })
    }

    fn target(&self) -> usize {
        self.target
    }
}

/// The table handed to plugins.
pub(crate) fn host_api() -> *const HostApi {
    static API: HostApi = HostApi {
        abi_major: ABI_MAJOR,
        abi_minor: ABI_MINOR,
        size: std::mem::size_of::<HostApi>(),
        free_string,
        run_loop,
        run_phases: Some(run_phases),
    };
    &API
}

/// `HostApi::run_loop`: core's loop on a plugin's model, with the plugin's objective, on the
/// trainer of a call in progress (a stale handle is an error, not a dangling pointer).
unsafe extern "C" fn run_loop(
    trainer: Handle,
    request: *const LoopRequest,
    report_json: *mut *mut c_char,
    err: *mut *mut c_char,
) -> Status {
    // SAFETY: called through the plugin ABI, whose pointers are valid for the call (`plugin::abi` says which may be null).
    unsafe {
        guard(err, || {
            let trainer = use_lent::<Trainer>(trainer, "trainer")?;
            let req = request.as_ref().ok_or("no loop request")?;
            let mut model = read_model(&req.model)?;
            let mask = read_list(&req.mask, "mask")?
                .map(|t| Mask::from_tensors(&model, t.into_iter().collect()))
                .transpose()
                .map_err(|e| e.to_string())?;
            let data = read_dataset(&req.data, "loop data")?;
            let meta: RunMeta = read_json(req.run_json, "run")?;
            let rows = borrow_tensor(req.rows, "stream rows")?;
            let stream = Stream {
                data: &data,
                forget: Tensor::zeros(rows.size(), (tch::Kind::Bool, rows.device())),
                rows,
                labels: borrow_tensor(req.labels, "stream labels")?,
                augment: meta.augment,
                augment_seed: 0,
            };
            if stream.rows.size() != stream.labels.size() {
                return Err(format!(
                    "stream: {:?} rows but {:?} labels",
                    stream.rows.size(),
                    stream.labels.size()
                ));
            }
            let run = Run {
                label: meta.label,
                schedule: &meta.schedule,
                schedule_offset: meta.schedule_offset,
                phases: vec![Phase::new("train", &stream)],
                mask: mask.as_ref(),
                rewind_epoch: meta.rewind_epoch,
                keep_best: None,
                validate: None,
                seed: meta.seed,
            };
            let mut objective = ForeignObjective {
                r: req.objective,
                batch_loss: None,
                error: None,
            };
            let report = run_foreign(&trainer, &mut model, run, &mut objective, &req.rewind)?;
            *report_json = alloc_string(
                &serde_json::to_string(&ReportMeta {
                    log: Vec::new(),
                    ..report
                })
                .expect("serialises"),
            );
            Ok(())
        })
    }
}

/// Runs `run` with a plugin's objective, gives the rewind snapshot to `rewind`, and returns the
/// report as it crosses.
fn run_foreign(
    trainer: &Trainer,
    model: &mut Model,
    run: Run<'_>,
    objective: &mut ForeignObjective,
    rewind: &super::abi::TensorSink,
) -> Result<ReportMeta, String> {
    let label = run.label.clone();
    let result = trainer.run(model, run, objective);
    let report = match (result, objective.error.take()) {
        (Ok(r), None) => r,
        (Err(e), _) => return Err(e.to_string()),
        (Ok(_), Some(e)) => return Err(format!("{label}: {e}")),
    };
    if let Some(snapshot) = &report.rewind {
        put_all(rewind, snapshot.0.iter().map(|(k, t)| (k.as_str(), t)));
    }
    Ok(ReportMeta {
        seconds: report.seconds,
        last_loss: report.last_loss.is_finite().then_some(report.last_loss),
        steps: report.steps,
        log: report.log,
    })
}

/// `HostApi::run_phases` (2.2): core's loop with the plugin's phases over tagged streams.
unsafe extern "C" fn run_phases(
    trainer: Handle,
    request: *const PhasedLoopRequest,
    report_json: *mut *mut c_char,
    err: *mut *mut c_char,
) -> Status {
    // SAFETY: called through the plugin ABI, whose pointers are valid for the call (`plugin::abi` says which may be null).
    unsafe {
        guard(err, || {
            let trainer = use_lent::<Trainer>(trainer, "trainer")?;
            let req = request.as_ref().ok_or("no loop request")?;
            if req.size < std::mem::size_of::<PhasedLoopRequest>() {
                return Err(format!(
                    "a phased loop request of {} bytes, {} expected",
                    req.size,
                    std::mem::size_of::<PhasedLoopRequest>()
                ));
            }
            let mut model = read_model(&req.model)?;
            let mask = read_list(&req.mask, "mask")?
                .map(|t| Mask::from_tensors(&model, t.into_iter().collect()))
                .transpose()
                .map_err(|e| e.to_string())?;
            let meta: RunMeta = read_json(req.run_json, "run")?;
            if req.n_phases == 0 || req.phases.is_null() {
                return Err(format!("{}: a run without phases", meta.label));
            }
            let refs = std::slice::from_raw_parts(req.phases, req.n_phases);
            let mut datasets = Vec::with_capacity(refs.len());
            let mut metas = Vec::with_capacity(refs.len());
            for p in refs {
                datasets.push(read_dataset(&p.data, "phase data")?);
                metas.push(read_json::<PhaseMeta>(p.phase_json, "phase")?);
            }
            let mut streams = Vec::with_capacity(refs.len());
            for ((p, data), m) in refs.iter().zip(&datasets).zip(&metas) {
                let stream = Stream {
                    data,
                    rows: borrow_tensor(p.rows, "phase rows")?,
                    labels: borrow_tensor(p.labels, "phase labels")?,
                    forget: borrow_tensor(p.forget, "phase tags")?,
                    augment: m.augment,
                    augment_seed: 0,
                };
                let n = stream.rows.size();
                if stream.labels.size() != n || stream.forget.size() != n {
                    return Err(format!(
                        "phase `{}`: {:?} rows, {:?} labels, {:?} tags",
                        m.name,
                        n,
                        stream.labels.size(),
                        stream.forget.size()
                    ));
                }
                streams.push(stream);
            }
            let phases = streams
                .iter()
                .zip(&metas)
                .map(|(stream, m)| Phase {
                    batch_size: m.batch_size,
                    until_epoch: m.until_epoch,
                    max_steps: m.max_steps,
                    ..Phase::new(m.name.clone(), stream)
                })
                .collect();
            let run = Run {
                rewind_epoch: meta.rewind_epoch,
                schedule_offset: meta.schedule_offset,
                ..Run::phased(meta.label, &meta.schedule, phases, mask.as_ref(), meta.seed)
            };
            let mut objective = ForeignObjective {
                r: req.objective,
                batch_loss: Some(req.batch_loss),
                error: None,
            };
            let report = run_foreign(&trainer, &mut model, run, &mut objective, &req.rewind)?;
            *report_json = alloc_string(&serde_json::to_string(&report).expect("serialises"));
            Ok(())
        })
    }
}

/// A plugin's objective as core's loop sees it. A failure in a callback that cannot return one
/// (`start_epoch`, `before_step`) is kept and ends the run at the next batch.
struct ForeignObjective {
    r: ObjectiveRef,
    /// The whole-batch loss of a phased run (2.2), called instead of `r.loss`.
    batch_loss: Option<BatchLossFn>,
    error: Option<String>,
}

impl ForeignObjective {
    fn note(&mut self, status: Status, err: *mut c_char) {
        // SAFETY: the plugin's error string, freed with its free function.
        if let Err(m) = unsafe { status_result(status, err, self.r.free_string) } {
            self.error.get_or_insert(m);
        }
    }
}

impl Objective for ForeignObjective {
    fn start_epoch(&mut self, epoch: usize, epochs: usize) {
        let mut err = std::ptr::null_mut();
        // SAFETY: the plugin's callback with its own state.
        let s =
            unsafe { (self.r.start_epoch)(self.r.state, epoch as u64, epochs as u64, &mut err) };
        self.note(s, err);
    }

    fn loss(&mut self, _model: &Model, batch: &Batch) -> Result<Tensor, tch::TchError> {
        if let Some(e) = &self.error {
            return Err(tch::TchError::Torch(e.clone()));
        }
        let mut out = std::ptr::null_mut();
        let mut err = std::ptr::null_mut();
        // SAFETY: borrowed inputs, an owned output.
        let result = unsafe {
            let s = match self.batch_loss {
                Some(batch_loss) => {
                    let b = BatchRef {
                        size: std::mem::size_of::<BatchRef>(),
                        x: batch.x.as_ptr() as *mut C_tensor,
                        y: batch.y.as_ptr() as *mut C_tensor,
                        rows: batch.rows.as_ptr() as *mut C_tensor,
                        forget: batch.forget.as_ptr() as *mut C_tensor,
                        phase: batch.phase as u64,
                        step: batch.step as u64,
                        epoch: batch.epoch as u64,
                        epochs: batch.epochs as u64,
                    };
                    batch_loss(self.r.state, &b, &mut out, &mut err)
                }
                None => (self.r.loss)(
                    self.r.state,
                    batch.x.as_ptr() as *mut C_tensor,
                    batch.y.as_ptr() as *mut C_tensor,
                    batch.epoch as u64,
                    batch.epochs as u64,
                    &mut out,
                    &mut err,
                ),
            };
            status_result(s, err, self.r.free_string)
        };
        match result {
            // SAFETY: an owned handle from the plugin.
            Ok(()) if !out.is_null() => Ok(unsafe { Tensor::from_ptr(out) }),
            Ok(()) => Err(tch::TchError::Torch(
                "the objective returned no loss".into(),
            )),
            Err(m) => {
                self.error.get_or_insert(m.clone());
                Err(tch::TchError::Torch(m))
            }
        }
    }

    fn before_step(&mut self, _model: &Model) {
        let mut err = std::ptr::null_mut();
        // SAFETY: the plugin's callback with its own state.
        let s = unsafe { (self.r.before_step)(self.r.state, &mut err) };
        self.note(s, err);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::guest::make_descriptor;

    fn checked(d: &PluginDescriptor) -> Result<Library, String> {
        // SAFETY: a descriptor made here, alive for the call.
        unsafe { check(Path::new("lib.so"), d) }.map_err(|e| e.to_string())
    }

    fn descriptor() -> PluginDescriptor {
        make_descriptor(&[], "a-plugin", "0.1.0", true)
    }

    #[test]
    fn libtorch_versions_must_be_known_on_both_sides_and_equal() {
        assert_eq!(parse_libtorch("2.11.0"), Some((2, 11, 0)));
        assert_eq!(parse_libtorch("2.11.0+cu130"), Some((2, 11, 0)));
        for v in [
            "unknown", "", "2.11", "2.11.0.1", "2.x.0", "2..0", " 2.11.0",
        ] {
            assert_eq!(parse_libtorch(v), None, "{v:?}");
        }
        let p = Path::new("lib.so");
        assert!(check_libtorch(p, "2.11.0+cpu", "2.11.0").is_ok());
        let e = check_libtorch(p, "2.10.0", "2.11.0")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("built against libtorch 2.10.0, but this unlearn runs libtorch 2.11.0"),
            "{e}"
        );
        for (plugin, host, which) in [
            ("unknown", "2.11.0", "rebuild the plugin"),
            ("2.11.0", "unknown", "rebuild this unlearn"),
            ("unknown", "unknown", "rebuild both"),
            ("2.11", "2.11", "rebuild both"),
        ] {
            let e = check_libtorch(p, plugin, host).unwrap_err().to_string();
            assert!(
                e.contains(&format!(
                    "the plugin was built against libtorch `{plugin}`, this unlearn against \
                     libtorch `{host}`"
                )) && e.ends_with(which),
                "{e}"
            );
        }
    }

    #[test]
    fn a_descriptor_is_checked_field_by_field_failing_closed() {
        let lib = checked(&descriptor()).unwrap();
        assert_eq!(lib.abi, (ABI_MAJOR, ABI_MINOR));
        assert_eq!(
            (lib.name.as_str(), lib.version.as_str()),
            ("a-plugin", "0.1.0")
        );

        let mut d = descriptor();
        d.abi_minor = ABI_MINOR + 1;
        let e = checked(&d).err().unwrap();
        assert!(
            e.contains(&format!(
                "built for plugin ABI version {ABI_MAJOR}.{}, but this unlearn speaks version \
                 {ABI_MAJOR}.{ABI_MINOR}",
                ABI_MINOR + 1
            )),
            "{e}"
        );
        let mut d = descriptor();
        d.abi_major = ABI_MAJOR + 1;
        d.abi_minor = 0;
        let e = checked(&d).err().unwrap();
        assert!(
            e.contains(&format!("ABI version {}.0, but", ABI_MAJOR + 1)),
            "{e}"
        );
        // Version 1: a lone `u32` version where the stable header starts.
        #[repr(C)]
        struct V1 {
            abi_version: u32,
            libtorch_version: *const c_char,
        }
        let v1 = V1 {
            abi_version: 1,
            libtorch_version: c"2.11.0".as_ptr(),
        };
        // SAFETY: only the first `u32` is read of a major other than 2.
        let e = unsafe {
            check(
                Path::new("lib.so"),
                &v1 as *const V1 as *const PluginDescriptor,
            )
        }
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains(&format!(
                "built for plugin ABI version 1, but this unlearn speaks version \
                 {ABI_MAJOR}.{ABI_MINOR}"
            )),
            "{e}"
        );
        assert!(!v1.libtorch_version.is_null());
        // An older minor of the same major loads.
        let mut d = descriptor();
        d.abi_minor = 0;
        assert_eq!(checked(&d).unwrap().abi, (ABI_MAJOR, 0));

        let mut d = descriptor();
        d.size = DESCRIPTOR_SIZE_2_0 - 8;
        let e = checked(&d).err().unwrap();
        assert!(e.contains("less than the"), "{e}");

        let mut d = descriptor();
        d.libtorch_version = c"unknown".as_ptr();
        let e = checked(&d).err().unwrap();
        assert!(e.contains("libtorch `unknown`"), "{e}");

        let mut d = descriptor();
        d.panic_strategy = PANIC_ABORT;
        let e = checked(&d).err().unwrap();
        assert!(e.contains("build it with panic = \"unwind\""), "{e}");
        d.panic_strategy = 0;
        let e = checked(&d).err().unwrap();
        assert!(e.contains("panic strategy is unknown (0)"), "{e}");
    }

    #[test]
    fn a_wrong_wire_hash_is_refused_naming_the_documents() {
        let host = wire::wire_digest();
        let mut types = host.types.clone();
        *types.get_mut("ModelSpec").unwrap() = "0".repeat(64);
        let mut d = descriptor();
        d.wire_hash = c"0123456789abcdef0123".as_ptr();
        d.wire_types = wire::leak_string(&serde_json::to_string(&types).unwrap());
        let e = checked(&d).err().unwrap();
        assert!(
            e.contains(&format!(
                "differ from this unlearn's: ModelSpec (changed) (schema hash 0123456789ab in \
                 the plugin, {} here)",
                &host.hash[..12]
            )),
            "{e}"
        );
        // Even with the right per-document digests, the hash decides.
        d.wire_types = wire::leak_string(&serde_json::to_string(&host.types).unwrap());
        let e = checked(&d).err().unwrap();
        assert!(e.contains("the same documents, but another hash"), "{e}");
    }
}
