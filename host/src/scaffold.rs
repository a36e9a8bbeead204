//! `unlearn plugin new`: scaffolds a plugin crate.
//!
//! The crate it writes builds as it is (a `cdylib` the host loads, and an `rlib` for linking it
//! as a built-in), has a small but real method of the asked kind with a schema-described config,
//! and a test that runs the conformance suite on it. The files come from `host/templates/`
//! (embedded), and `build.rs` is the workspace's own `build/link_libtorch.rs`, so neither drifts
//! from what the workspace's crates use.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use unlearn_pipeline::method::Kind;
use unlearn_pipeline::registry::Registry;

pub struct NewPlugin {
    pub name: String,
    pub kind: Kind,
    /// The parent folder; the crate is created as `<dir>/<name>`.
    pub dir: PathBuf,
    /// The unlearn-api crate to build against (default: this binary's sources).
    pub sdk: Option<PathBuf>,
}

const CARGO_TOML: &str = include_str!("../templates/Cargo.toml.tmpl");
const LIB_UNLEARNER: &str = include_str!("../templates/lib-unlearner.rs.tmpl");
const LIB_PRUNER: &str = include_str!("../templates/lib-pruner.rs.tmpl");
const LIB_ATTACK: &str = include_str!("../templates/lib-attack.rs.tmpl");
const CONFORMANCE: &str = include_str!("../templates/conformance.rs.tmpl");
const README: &str = include_str!("../templates/README.md.tmpl");
const GITIGNORE: &str = include_str!("../templates/gitignore.tmpl");
/// The build script every libtorch-using crate of the workspace shares.
const LINK_LIBTORCH: &str = include_str!("../../build/link_libtorch.rs");

/// The unlearn-api sources this binary was built from.
const DEFAULT_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../core/api");

/// The longest accepted name.
const MAX_NAME: usize = 64;

/// Creates the crate and returns its folder.
pub fn new_plugin(opts: &NewPlugin) -> Result<PathBuf> {
    let names = Names::new(&opts.name)?;
    if let Ok(registry) = Registry::builtin()
        && let Ok(m) = registry.get(&opts.name)
    {
        bail!(
            "a method named `{}` already exists ({}, {}); a plugin with the same name could \
                 not be loaded next to it: choose another name",
            m.name,
            m.kind,
            m.source
        );
    }
    let sdk = resolve_sdk(opts.sdk.as_deref())?;
    let dir = opts.dir.join(&opts.name);
    let existed = check_destination(&dir)?;
    let files = render(&names, opts.kind, &sdk)?;
    if let Err(e) = write_files(&dir, &files) {
        // Leave nothing half-written behind (the folder was absent or empty).
        if existed {
            if let Ok(entries) = fs::read_dir(&dir) {
                for entry in entries.flatten() {
                    let p = entry.path();
                    let _ = if p.is_dir() {
                        fs::remove_dir_all(&p)
                    } else {
                        fs::remove_file(&p)
                    };
                }
            }
        } else {
            let _ = fs::remove_dir_all(&dir);
        }
        return Err(e);
    }
    Ok(dir.canonicalize().unwrap_or(dir))
}

/// The names derived from a plugin's name.
#[derive(Debug, Clone, PartialEq)]
struct Names {
    /// The method's name, the package's and the folder's (`my-unlearner`).
    method: String,
    /// The library (crate) name: lower case, `-` as `_` (`my_unlearner`).
    krate: String,
    /// The method's type (`MyUnlearner`); its config is `<type>Config`.
    type_name: String,
}

/// Rust keywords (strict, reserved and edition-2021 ones): not usable as crate names.
const KEYWORDS: &[&str] = &[
    "abstract", "as", "async", "await", "become", "box", "break", "const", "continue", "crate",
    "do", "dyn", "else", "enum", "extern", "false", "final", "fn", "for", "gen", "if", "impl",
    "in", "let", "loop", "macro", "match", "mod", "move", "mut", "override", "priv", "pub", "ref",
    "return", "self", "static", "struct", "super", "trait", "true", "try", "type", "typeof",
    "unsafe", "unsized", "use", "virtual", "where", "while", "yield",
];

/// Crate names that would clash with a dependency, the standard library, or the folders cargo
/// keeps in `target/`.
const TAKEN_CRATES: &[&str] = &[
    "unlearn_api",
    "serde",
    "schemars",
    "std",
    "core",
    "alloc",
    "proc_macro",
    "test",
    "build",
    "deps",
    "examples",
    "incremental",
];

/// Prelude names a type of the plugin must not shadow (the config macros use them).
const PRELUDE: &[&str] = &[
    "Option",
    "Some",
    "None",
    "Result",
    "Ok",
    "Err",
    "Vec",
    "String",
    "Box",
    "Default",
    "Clone",
    "Copy",
    "Debug",
    "PartialEq",
    "Eq",
    "Send",
    "Sync",
    "Sized",
    "Drop",
    "Fn",
    "FnMut",
    "FnOnce",
    "Iterator",
    "IntoIterator",
    "Extend",
    "ToString",
    "ToOwned",
    "From",
    "Into",
    "AsRef",
    "AsMut",
];

impl Names {
    fn new(name: &str) -> Result<Names> {
        let invalid = |why: &str| {
            anyhow::anyhow!(
                "invalid plugin name `{name}`: {why} (the name is the method's, the crate's and \
                 the folder's: ASCII letters, digits, `-` and `_`, starting with a letter, e.g. \
                 `my-unlearner`)"
            )
        };
        let Some(first) = name.chars().next() else {
            return Err(invalid("it is empty"));
        };
        if !first.is_ascii_alphabetic() {
            return Err(invalid("it must start with a letter"));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(invalid(&format!("`{c}` is not allowed")));
        }
        if name.len() > MAX_NAME {
            return Err(invalid(&format!("it is longer than {MAX_NAME} characters")));
        }
        let krate = name.to_ascii_lowercase().replace('-', "_");
        if KEYWORDS.contains(&krate.as_str()) {
            return Err(invalid(&format!(
                "its crate name `{krate}` is a Rust keyword"
            )));
        }
        if TAKEN_CRATES.contains(&krate.as_str()) {
            return Err(invalid(&format!(
                "its crate name `{krate}` is taken (a dependency, the standard library or a cargo folder)"
            )));
        }
        let type_name = upper_camel(name);
        for t in [type_name.clone(), format!("{type_name}Config")] {
            if PRELUDE.contains(&t.as_str()) || template_identifiers().any(|i| i == t) {
                return Err(invalid(&format!(
                    "its type `{t}` would clash with a name the generated code uses"
                )));
            }
        }
        Ok(Names {
            method: name.to_string(),
            krate,
            type_name,
        })
    }
}

/// `my-method` -> `MyMethod`, `FT_l1` -> `FtL1`, `SalUn` -> `SalUn`: each `-`/`_`-separated part
/// capitalised; a part in capitals only (an acronym) keeps only its first.
fn upper_camel(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|p| !p.is_empty())
        .map(|part| {
            let acronym = !part.chars().any(|c| c.is_ascii_lowercase());
            part.chars()
                .enumerate()
                .map(|(i, c)| match (i, acronym) {
                    (0, _) => c.to_ascii_uppercase(),
                    (_, true) => c.to_ascii_lowercase(),
                    _ => c,
                })
                .collect::<String>()
        })
        .collect()
}

/// The capitalised identifiers the Rust templates' code (not their comments) uses: types,
/// traits, variants. A plugin's type must not shadow any of them.
fn template_identifiers() -> impl Iterator<Item = &'static str> {
    [LIB_UNLEARNER, LIB_PRUNER, LIB_ATTACK, CONFORMANCE]
        .into_iter()
        .flat_map(str::lines)
        .map(|line| line.split("//").next().unwrap_or_default())
        .flat_map(|code| code.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
        .filter(|w| w.starts_with(|c: char| c.is_ascii_uppercase()))
}

/// Finds the unlearn-api crate: `--sdk` (the crate, or a checkout with it in `core/api/`), or the
/// sources this binary was built from. Returns it canonicalised.
fn resolve_sdk(given: Option<&Path>) -> Result<PathBuf> {
    let Some(given) = given else {
        let fallback = || {
            anyhow::anyhow!(
                "the unlearn-api sources this binary was built from ({}) are not there any more: \
                 pass --sdk PATH, an unlearn checkout of the same version (or its core/api folder)",
                Path::new(DEFAULT_SDK).display()
            )
        };
        let sdk = Path::new(DEFAULT_SDK)
            .canonicalize()
            .map_err(|_| fallback())?;
        return if is_api(&sdk) {
            Ok(sdk)
        } else {
            Err(fallback())
        };
    };
    let sdk = given
        .canonicalize()
        .with_context(|| format!("--sdk {}: no such folder", given.display()))?;
    if is_api(&sdk) {
        Ok(sdk)
    } else if is_api(&sdk.join("core/api")) {
        Ok(sdk.join("core/api"))
    } else {
        bail!(
            "--sdk {}: not the unlearn-api crate (no Cargo.toml naming the package \
             `unlearn-api` there or in its core/api/ folder)",
            given.display()
        )
    }
}

/// Whether `dir` holds the unlearn-api package.
fn is_api(dir: &Path) -> bool {
    fs::read_to_string(dir.join("Cargo.toml")).is_ok_and(|manifest| {
        manifest.lines().any(|l| {
            let l: String = l.chars().filter(|c| !c.is_whitespace()).collect();
            l == "name=\"unlearn-api\""
        })
    })
}

/// Accepts an absent or empty folder; returns whether it exists.
fn check_destination(dir: &Path) -> Result<bool> {
    // `--dir` itself (or a folder above it) may be a file: say so, not the OS's "Not a directory".
    if let Some(file) = dir
        .ancestors()
        .skip(1)
        .find(|a| !a.as_os_str().is_empty() && a.exists() && !a.is_dir())
    {
        bail!("{} exists and is not a folder", file.display());
    }
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("{}", dir.display())),
        Ok(meta) if !meta.is_dir() => {
            bail!("{} exists and is not a folder", dir.display())
        }
        Ok(_) => {
            let mut entries =
                fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
            if entries.next().is_some() {
                bail!(
                    "{} exists and is not empty: choose another name or --dir",
                    dir.display()
                );
            }
            Ok(true)
        }
    }
}

/// A string as a TOML basic string (JSON's escapes are TOML's).
fn toml_string(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialise")
}

/// Fills `{{key}}` placeholders in one pass (values are not scanned again).
fn fill(template: &str, values: &[(&str, &str)]) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").context("template: `{{` without `}}`")?;
        let key = &after[..end];
        let value = values
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .with_context(|| format!("template: unknown placeholder `{key}`"))?;
        out.push_str(value);
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The build script: the workspace's own.
fn build_script() -> String {
    let body = LINK_LIBTORCH;
    format!(
        "// Copied from unlearn's build/link_libtorch.rs by `unlearn plugin new`: the same \
         run-path and\n// CUDA link settings as the host's crates.\n{body}"
    )
}

/// The crate's files, as (path relative to the crate, content).
fn render(names: &Names, kind: Kind, sdk: &Path) -> Result<Vec<(PathBuf, String)>> {
    let sdk = sdk
        .to_str()
        .with_context(|| format!("the SDK path {} is not UTF-8", sdk.display()))?;
    let sdk = toml_string(sdk);
    let (lib, variant) = match kind {
        Kind::Unlearner => (LIB_UNLEARNER, "Unlearner"),
        Kind::Pruner => (LIB_PRUNER, "Pruner"),
        Kind::Attack => (LIB_ATTACK, "Attack"),
    };
    let article = kind.with_article();
    let article = format!("{}{}", article[..1].to_ascii_uppercase(), &article[1..]);
    let lib_file = format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        names.krate,
        std::env::consts::DLL_SUFFIX
    );
    let (libtorch, libtorch_hint) = match option_env!("LIBTORCH") {
        Some(p) => (
            p.to_string(),
            format!("\nThe `unlearn` that created this crate was built with `LIBTORCH={p}`."),
        ),
        None => ("/path/to/the/hosts/libtorch".to_string(), String::new()),
    };
    let name = &names.method;
    let usage = match kind {
        Kind::Unlearner => format!(
            "\nIn a run config it is used like any built-in unlearner, its settings beside \
             `method`:\n\n```toml\n[[unlearn]]\nmethod = \"{name}\"\nepochs = 1\nlr = 0.01\n```\n"
        ),
        Kind::Pruner => format!(
            "\nIn a run config it is used like any built-in pruner, its settings beside \
             `method`:\n\n```toml\n[prune]\nmethod = \"{name}\"\nsparsity = 0.5\n```\n"
        ),
        Kind::Attack => format!(
            "\nIn a run config it is named like any built-in attack (`method = \"{name}\"`, its \
             settings beside it; `unlearn schema --config` shows where attacks go).\n"
        ),
    };
    let values: [(&str, &str); 11] = [
        ("name", name),
        ("crate", &names.krate),
        ("Type", &names.type_name),
        ("kind", kind.name()),
        ("Kind", variant),
        ("Article", &article),
        ("sdk", &sdk),
        ("lib_file", &lib_file),
        ("libtorch", &libtorch),
        ("libtorch_hint", &libtorch_hint),
        ("usage", &usage),
    ];
    Ok(vec![
        ("Cargo.toml".into(), fill(CARGO_TOML, &values)?),
        ("build.rs".into(), build_script()),
        ("src/lib.rs".into(), fill(lib, &values)?),
        ("tests/conformance.rs".into(), fill(CONFORMANCE, &values)?),
        ("README.md".into(), fill(README, &values)?),
        (".gitignore".into(), fill(GITIGNORE, &values)?),
    ])
}

fn write_files(dir: &Path, files: &[(PathBuf, String)]) -> Result<()> {
    for (rel, content) in files {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(name: &str, kind: Kind, dir: &Path) -> NewPlugin {
        NewPlugin {
            name: name.into(),
            kind,
            dir: dir.to_path_buf(),
            sdk: None,
        }
    }

    fn read(dir: &Path, rel: &str) -> String {
        fs::read_to_string(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    #[test]
    fn scaffold_accepts_crate_and_method_names() {
        for (name, krate, ty) in [
            ("my-unlearner", "my_unlearner", "MyUnlearner"),
            ("SalUn2", "salun2", "SalUn2"),
            ("x", "x", "X"),
            ("FT_l1x", "ft_l1x", "FtL1x"),
            ("l1-sparse-v2", "l1_sparse_v2", "L1SparseV2"),
            ("a__b-", "a__b_", "AB"),
            ("keep", "keep", "Keep"),
        ] {
            let n = Names::new(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(
                (n.method.as_str(), n.krate.as_str(), n.type_name.as_str()),
                (name, krate, ty)
            );
        }
    }

    #[test]
    fn scaffold_rejects_bad_names_with_a_reason() {
        let long = "a".repeat(MAX_NAME + 1);
        for (name, why) in [
            ("", "empty"),
            ("2fast", "start with a letter"),
            ("-x", "start with a letter"),
            ("_x", "start with a letter"),
            ("my method", "` ` is not allowed"),
            ("my.method", "`.` is not allowed"),
            ("über", "start with a letter"),
            ("naïve", "`ï` is not allowed"),
            ("../escape", "start with a letter"),
            ("a/b", "`/` is not allowed"),
            (long.as_str(), "longer than"),
            ("fn", "keyword"),
            ("Self", "keyword"),
            ("async", "keyword"),
            ("serde", "taken"),
            ("unlearn-api", "taken"),
            ("unlearn_api", "taken"),
            ("test", "taken"),
            ("std", "taken"),
            ("build", "taken"),
            ("mask", "clash"),
            ("tensor", "clash"),
            ("Vec", "clash"),
            ("result", "clash"),
            ("objective", "clash"),
            ("smoothed-cross-entropy", "clash"),
        ] {
            let e = Names::new(name)
                .err()
                .unwrap_or_else(|| panic!("`{name}` was accepted"))
                .to_string();
            assert!(e.contains("invalid plugin name"), "{name}: {e}");
            assert!(e.contains(why), "{name}: expected `{why}` in: {e}");
        }
    }

    #[test]
    fn scaffold_writes_a_crate_per_kind() {
        let tmp = tempfile::tempdir().unwrap();
        for (kind, keyword, traits) in [
            (
                Kind::Unlearner,
                "unlearner",
                &[
                    "impl UnlearnMethod for MyThing",
                    "impl Unlearner for MyThing",
                ][..],
            ),
            (
                Kind::Pruner,
                "pruner",
                &["impl PruneMethod for MyThing", "impl Pruner for MyThing"][..],
            ),
            (
                Kind::Attack,
                "attack",
                &["impl AttackMethod for MyThing", "impl Attack for MyThing"][..],
            ),
        ] {
            let parent = tmp.path().join(keyword);
            let dir = new_plugin(&opts("my-thing", kind, &parent)).unwrap();
            assert_eq!(dir, parent.join("my-thing").canonicalize().unwrap());
            let mut files: Vec<String> = Vec::new();
            for rel in [
                "Cargo.toml",
                "build.rs",
                "src/lib.rs",
                "tests/conformance.rs",
                "README.md",
                ".gitignore",
            ] {
                let text = read(&dir, rel);
                assert!(
                    !text.contains("{{"),
                    "{keyword} {rel}: a placeholder is left"
                );
                files.push(text);
            }
            let [manifest, build, lib, test, readme, gitignore] = &files[..] else {
                unreachable!()
            };
            assert!(manifest.contains("name = \"my-thing\"\n"), "{manifest}");
            assert!(manifest.contains("name = \"my_thing\"\n"), "{manifest}");
            assert!(manifest.contains("\n[workspace]\n"), "{manifest}");
            assert!(manifest.contains("crate-type = [\"cdylib\", \"rlib\"]"));
            assert!(manifest.contains("[features]\n") && manifest.contains("\nbuiltin = []\n"));
            assert!(manifest.contains("build = \"build.rs\""));
            let sdk = Path::new(DEFAULT_SDK).canonicalize().unwrap();
            assert!(
                manifest.contains(&format!(
                    "unlearn-api = {{ path = {} }}",
                    toml_string(sdk.to_str().unwrap())
                )),
                "{manifest}"
            );
            assert!(manifest.contains("serde = { version = \"1\", features = [\"derive\"] }"));
            assert!(manifest.contains("schemars = \"1.2\""));
            assert_eq!(build, &build_script());
            assert!(build.contains("cargo:rustc-link-arg=-Wl,-rpath,"));
            for t in traits {
                assert!(lib.contains(t), "{keyword}: `{t}` missing");
            }
            assert!(
                lib.contains(&format!(
                    "unlearn_api::export_plugin! {{ {keyword}: MyThing }}"
                )),
                "{keyword}: export line"
            );
            assert_eq!(lib.matches("export_plugin!").count(), 1, "{keyword}");
            assert!(lib.contains("pub struct MyThingConfig") || lib.contains("MyThingConfig {"));
            assert!(lib.contains("const NAME: &'static str = \"my-thing\";"));
            assert!(test.contains("use my_thing as _;"));
            assert!(test.contains("const METHOD: &str = \"my-thing\";"));
            assert!(test.contains("unlearn_api::conformance::assert_conforms("));
            let variant = format!(
                "Kind::{}",
                &traits[1]["impl ".len()..].split(' ').next().unwrap()
            );
            assert!(test.contains(&variant), "{keyword}: {variant}");
            let so = format!(
                "target/release/{}my_thing{}",
                std::env::consts::DLL_PREFIX,
                std::env::consts::DLL_SUFFIX
            );
            for needle in [
                "cargo build --release",
                "cargo test --release",
                "unlearn --plugin-dir target/release list",
                &format!("unlearn plugin check {so}"),
                "LIBTORCH",
                "unlearn info",
                "features = [\"builtin\"]",
            ] {
                assert!(
                    readme.contains(needle),
                    "{keyword} README: `{needle}` missing"
                );
            }
            assert_eq!(gitignore.trim(), "/target/");
        }
    }

    #[test]
    fn scaffold_configs_follow_the_kind() {
        let tmp = tempfile::tempdir().unwrap();
        let lib = |kind| {
            let dir = new_plugin(&opts("cfg-check", kind, &tmp.path().join(kind.name()))).unwrap();
            read(&dir, "src/lib.rs")
        };
        let u = lib(Kind::Unlearner);
        assert!(u.contains("unlearn_api::sgd_config!("));
        assert!(u.contains("CfgCheckConfig { epochs: 1, lr: 0.01, milestones: vec![] }"));
        assert!(u.contains("ctx.train(&self.config.schedule(), &stream"));
        let p = lib(Kind::Pruner);
        assert!(p.contains("#[serde(deny_unknown_fields, default)]"));
        assert!(p.contains("sparsity: 0.5,"));
        assert!(p.contains("Mask::from_scores(&magnitude_scores(ctx.model)"));
        assert!(p.contains("mask.apply(ctx.model);"));
        assert!(p.contains("impl MethodConfig for CfgCheckConfig"));
        let a = lib(Kind::Attack);
        assert!(a.contains("#[serde(deny_unknown_fields, default)]"));
        assert!(a.contains("rows.sort_unstable();"));
        assert!(a.contains("fn trigger(&self, images: &Tensor)"));
        assert!(a.contains("impl MethodConfig for CfgCheckConfig"));
    }

    #[test]
    fn scaffold_refuses_a_non_empty_folder_and_accepts_an_empty_one() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("busy");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("notes.txt"), "mine").unwrap();
        let e = new_plugin(&opts("busy", Kind::Unlearner, tmp.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("exists and is not empty"), "{e}");
        assert_eq!(fs::read_to_string(dir.join("notes.txt")).unwrap(), "mine");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "nothing was added");

        fs::write(tmp.path().join("file"), "x").unwrap();
        let e = new_plugin(&opts("file", Kind::Unlearner, tmp.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a folder"), "{e}");

        let empty = tmp.path().join("empty");
        fs::create_dir(&empty).unwrap();
        let made = new_plugin(&opts("empty", Kind::Pruner, tmp.path())).unwrap();
        assert!(made.join("src/lib.rs").is_file());
    }

    #[test]
    fn scaffold_refuses_a_registered_name() {
        let tmp = tempfile::tempdir().unwrap();
        let e = new_plugin(&opts("FT", Kind::Unlearner, tmp.path()))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`FT` already exists") && e.contains("unlearn-ft"),
            "{e}"
        );
        assert!(!tmp.path().join("FT").exists());
    }

    #[test]
    fn scaffold_sdk_must_be_unlearn_api() {
        let tmp = tempfile::tempdir().unwrap();
        let with_sdk = |sdk: &Path| NewPlugin {
            sdk: Some(sdk.to_path_buf()),
            ..opts("sdk-check", Kind::Unlearner, tmp.path())
        };
        let e = new_plugin(&with_sdk(&tmp.path().join("nowhere")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--sdk") && e.contains("no such folder"), "{e}");
        let e = new_plugin(&with_sdk(tmp.path())).unwrap_err().to_string();
        assert!(e.contains("not the unlearn-api crate"), "{e}");
        assert!(!tmp.path().join("sdk-check").exists());
        // The checkout's root is accepted for its core/api/ folder.
        let root = Path::new(DEFAULT_SDK).join("../..");
        let made = new_plugin(&with_sdk(&root)).unwrap();
        let core = Path::new(DEFAULT_SDK).canonicalize().unwrap();
        assert!(read(&made, "Cargo.toml").contains(&toml_string(core.to_str().unwrap())));
    }

    #[test]
    fn scaffold_fill_and_toml_escaping() {
        assert_eq!(toml_string(r#"/a "b" \c"#), r#""/a \"b\" \\c""#);
        let v = [("a", "{{b}}"), ("b", "x")];
        assert_eq!(fill("<{{a}}|{{b}}>", &v).unwrap(), "<{{b}}|x>");
        assert!(fill("{{nope}}", &v).is_err());
        assert!(fill("{{a", &v).is_err());
    }
}
