//! One map of every available method, built once, sorted by name. Built-ins come from
//! `inventory`; later sources (dynamic libraries) enter the same map.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde_json::Value;

use crate::method::ConfigIssue;
use crate::method::{Attack, Built, BuiltinMethod, Factory, Kind, Pruner, Unlearner};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "type", content = "name")]
pub enum Source {
    /// Linked into the binary, registered by this crate.
    BuiltIn(String),
    /// Loaded from a shared library at this path.
    Library(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::BuiltIn(k) => write!(f, "built-in ({k})"),
            Source::Library(p) => write!(f, "{}", p.display()),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RegistryError {
    #[error("method `{name}` is registered twice: by {first} and by {second}")]
    Duplicate {
        name: String,
        first: Source,
        second: Source,
    },
    #[error("unknown {} `{name}`{}; known: {}", kind.map(|k| k.name()).unwrap_or("method"), suggestion(.name, .known), .known.join(", "))]
    Unknown {
        name: String,
        kind: Option<Kind>,
        known: Vec<String>,
    },
    #[error("`{name}` is {}, not {}", actual.with_article(), expected.with_article())]
    WrongKind {
        name: String,
        expected: Kind,
        actual: Kind,
    },
}

fn suggestion(name: &str, known: &[String]) -> String {
    known
        .iter()
        .find(|k| k.eq_ignore_ascii_case(name))
        .map(|k| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

pub struct Method {
    pub kind: Kind,
    pub name: String,
    pub summary: String,
    pub source: Source,
    /// JSON Schema of the method's config.
    pub schema: Value,
    /// The config with every default filled in.
    pub default_config: Value,
    maker: Maker,
}

/// How a method is made from its config.
enum Maker {
    Builtin(Factory),
    Library(Box<dyn LibraryMaker>),
}

/// Makes the methods of a source other than this binary (a plugin library's loader implements
/// it), so that the registry does not depend on how libraries are loaded. Each call gets a config
/// already checked against the method's schema ranges.
pub trait LibraryMaker: Send + Sync + std::panic::RefUnwindSafe {
    fn build_unlearner(&self, config: &Value) -> Built<dyn Unlearner>;
    fn build_pruner(&self, config: &Value) -> Built<dyn Pruner>;
    fn build_attack(&self, config: &Value) -> Built<dyn Attack>;
}

impl Method {
    pub fn from_builtin(b: &BuiltinMethod) -> Method {
        Method {
            kind: b.kind,
            name: b.name.to_string(),
            summary: b.summary.to_string(),
            source: Source::BuiltIn(b.krate.to_string()),
            schema: (b.schema)(),
            default_config: (b.default_config)(),
            maker: Maker::Builtin(b.factory),
        }
    }

    /// A method of a plugin library (checked by the loader).
    pub fn from_library(
        kind: Kind,
        name: String,
        summary: String,
        source: Source,
        schema: Value,
        default_config: Value,
        method: Box<dyn LibraryMaker>,
    ) -> Method {
        Method {
            kind,
            name,
            summary,
            source,
            schema,
            default_config,
            maker: Maker::Library(method),
        }
    }

    /// Which build of the method this is, for cache keys: a built-in's crate and unlearn's
    /// version; a plugin library's SHA-256 (a rebuilt library is another method).
    pub fn build_identity(&self) -> String {
        match &self.source {
            Source::BuiltIn(krate) => format!("{krate} {}", env!("CARGO_PKG_VERSION")),
            Source::Library(path) => match crate::io::file_sha256(path) {
                Ok(sha) => format!("library sha256:{sha}"),
                Err(e) => format!("library {} (unreadable: {e})", path.display()),
            },
        }
    }

    pub fn build_unlearner(&self, config: &Value) -> Built<dyn Unlearner> {
        match &self.maker {
            Maker::Builtin(Factory::Unlearner(f)) => f(config),
            Maker::Library(l) if self.kind == Kind::Unlearner => {
                self.in_range(config)?;
                l.build_unlearner(config)
            }
            _ => Err(self.wrong_kind(Kind::Unlearner)),
        }
    }

    pub fn build_pruner(&self, config: &Value) -> Built<dyn Pruner> {
        match &self.maker {
            Maker::Builtin(Factory::Pruner(f)) => f(config),
            Maker::Library(l) if self.kind == Kind::Pruner => {
                self.in_range(config)?;
                l.build_pruner(config)
            }
            _ => Err(self.wrong_kind(Kind::Pruner)),
        }
    }

    pub fn build_attack(&self, config: &Value) -> Built<dyn Attack> {
        match &self.maker {
            Maker::Builtin(Factory::Attack(f)) => f(config),
            Maker::Library(l) if self.kind == Kind::Attack => {
                self.in_range(config)?;
                l.build_attack(config)
            }
            _ => Err(self.wrong_kind(Kind::Attack)),
        }
    }

    /// A library's schema ranges, enforced on this side too: a library built against an older
    /// core may not check them itself.
    fn in_range(&self, config: &Value) -> Result<(), Vec<ConfigIssue>> {
        let issues = crate::bounds::range_issues(&self.schema, config);
        if issues.is_empty() {
            Ok(())
        } else {
            Err(issues)
        }
    }

    fn wrong_kind(&self, expected: Kind) -> Vec<ConfigIssue> {
        vec![ConfigIssue::new(
            "",
            None,
            format!(
                "`{}` is {}, not {}",
                self.name,
                self.kind.with_article(),
                expected.with_article()
            ),
        )]
    }
}

pub struct Registry {
    methods: BTreeMap<String, Method>,
}

impl Registry {
    /// Every method registered by the crates linked into this binary.
    pub fn builtin() -> Result<Registry, RegistryError> {
        Registry::from_methods(
            inventory::iter::<BuiltinMethod>
                .into_iter()
                .map(Method::from_builtin),
        )
    }

    pub fn from_methods(
        methods: impl IntoIterator<Item = Method>,
    ) -> Result<Registry, RegistryError> {
        let mut r = Registry {
            methods: BTreeMap::new(),
        };
        for m in methods {
            r.add(m)?;
        }
        Ok(r)
    }

    /// Adds a method; a name already taken is an error naming both sources.
    pub fn add(&mut self, m: Method) -> Result<(), RegistryError> {
        if let Some(existing) = self.methods.get(&m.name) {
            return Err(RegistryError::Duplicate {
                name: m.name.clone(),
                first: existing.source.clone(),
                second: m.source.clone(),
            });
        }
        self.methods.insert(m.name.clone(), m);
        Ok(())
    }

    /// Methods sorted by name, optionally of one kind.
    pub fn list(&self, kind: Option<Kind>) -> impl Iterator<Item = &Method> {
        self.methods
            .values()
            .filter(move |m| kind.is_none_or(|k| m.kind == k))
    }

    pub fn get(&self, name: &str) -> Result<&Method, RegistryError> {
        self.methods
            .get(name)
            .ok_or_else(|| RegistryError::Unknown {
                name: name.to_string(),
                kind: None,
                known: self.methods.keys().cloned().collect(),
            })
    }

    /// The method `name`, which must be of `kind`.
    pub fn get_kind(&self, name: &str, kind: Kind) -> Result<&Method, RegistryError> {
        match self.methods.get(name) {
            Some(m) if m.kind == kind => Ok(m),
            Some(m) => Err(RegistryError::WrongKind {
                name: name.to_string(),
                expected: kind,
                actual: m.kind,
            }),
            None => Err(RegistryError::Unknown {
                name: name.to_string(),
                kind: Some(kind),
                known: self.list(Some(kind)).map(|m| m.name.clone()).collect(),
            }),
        }
    }

    pub fn len(&self) -> usize {
        self.methods.len()
    }

    pub fn is_empty(&self) -> bool {
        self.methods.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn method(name: &str, kind: Kind, krate: &str) -> Method {
        fn never(_: &Value) -> Built<dyn Unlearner> {
            Err(vec![])
        }
        Method {
            kind,
            name: name.into(),
            summary: String::new(),
            source: Source::BuiltIn(krate.into()),
            schema: Value::Null,
            default_config: Value::Null,
            maker: Maker::Builtin(Factory::Unlearner(never)),
        }
    }

    #[test]
    fn duplicates_name_both_sources() {
        let e = Registry::from_methods([
            method("FT", Kind::Unlearner, "a"),
            method("FT", Kind::Unlearner, "b"),
        ])
        .err()
        .unwrap();
        assert_eq!(
            e.to_string(),
            "method `FT` is registered twice: by built-in (a) and by built-in (b)"
        );
    }

    #[test]
    fn lookup_lists_known_names_and_checks_kind() {
        let r = Registry::from_methods([
            method("FT", Kind::Unlearner, "a"),
            method("OMP", Kind::Pruner, "b"),
        ])
        .unwrap();
        let names: Vec<&str> = r.list(None).map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["FT", "OMP"]);
        let e = r.get("ft").err().unwrap().to_string();
        assert!(
            e.contains("unknown method `ft` (did you mean `FT`?); known: FT, OMP"),
            "{e}"
        );
        let e = r
            .get_kind("OMP", Kind::Unlearner)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(e, "`OMP` is a pruner, not an unlearner");
        let e = r.get_kind("GA", Kind::Unlearner).err().unwrap().to_string();
        assert!(e.contains("unknown unlearner `GA`; known: FT"), "{e}");
    }
}
