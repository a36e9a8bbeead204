//! Property-based fuzzing of unlearn-api's parsers of outside bytes: safetensors checkpoints
//! (header, metadata, tensors), forget index files, plugin descriptors and the JSON a plugin
//! hands the host. Each call must return `Ok` or `Err`, never panic or abort. The budget: see
//! `tests/support/fuzz.rs` and docs/fuzzing.md. Plugin targets need the `host` feature.

use std::collections::HashMap;
use std::path::Path;

use proptest::prelude::*;
use serde_json::json;

use unlearn_api::checkpoint::{self, Provenance};
use unlearn_api::forget::read_index_file;
use unlearn_api::model::{Arch, Model, ModelSpec};
use unlearn_api::tch::Device;

#[path = "support/fuzz.rs"]
mod harness;
use harness::{apply, bytes_input, fuzz, op};

fn spec() -> ModelSpec {
    ModelSpec {
        arch: Arch::SmallCnn,
        input: [1, 4, 4],
        classes: 3,
        mean: vec![0.5],
        std: vec![0.25],
    }
}

/// A valid checkpoint of a tiny model.
fn checkpoint_seed(dir: &Path) -> Vec<u8> {
    let model = Model::new(spec(), Device::Cpu, 0).unwrap();
    let path = dir.join("seed.safetensors");
    let provenance = Provenance {
        dataset: Some("digits".into()),
        train_config: Some(json!({"epochs": 1})),
    };
    checkpoint::save(&path, &model, None, &provenance).unwrap();
    std::fs::read(&path).unwrap()
}

/// The three readers a user's checkpoint file reaches.
fn read_all(path: &Path) {
    let _ = checkpoint::metadata(path);
    let _ = checkpoint::load(path, Device::Cpu);
    let _ = checkpoint::import_pytorch(path, spec(), Device::Cpu);
}

#[test]
fn fuzz_safetensors_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let seed = checkpoint_seed(tmp.path());
    let path = tmp.path().join("f.safetensors");
    fuzz("safetensors_bytes", bytes_input(), |input| {
        std::fs::write(&path, input.of(&seed)).unwrap();
        read_all(&path);
    });
}

/// The safetensors header (JSON) of the seed, mutated as text and put back with a correct
/// length prefix, so the mutations reach the metadata and tensor checks, not the length check.
#[test]
fn fuzz_safetensors_header() {
    let tmp = tempfile::tempdir().unwrap();
    let seed = checkpoint_seed(tmp.path());
    let n = u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize;
    let header = seed[8..8 + n].to_vec();
    let data = seed[8 + n..].to_vec();
    let path = tmp.path().join("f.safetensors");
    fuzz(
        "safetensors_header",
        (prop::collection::vec(op(), 0..6), any::<bool>()),
        |(ops, keep_data)| {
            let h = apply(&header, ops);
            let mut file = (h.len() as u64).to_le_bytes().to_vec();
            file.extend(&h);
            if *keep_data {
                file.extend(&data);
            }
            std::fs::write(&path, file).unwrap();
            read_all(&path);
        },
    );
}

/// Metadata values a corrupt or hostile file may carry.
fn meta_value() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        Just("small-cnn".to_string()),
        Just("resnet18".to_string()),
        Just("1".to_string()),
        Just("0".to_string()),
        Just("3".to_string()),
        Just("18446744073709551615".to_string()),
        Just("-1".to_string()),
        Just("1e308".to_string()),
        Just("NaN".to_string()),
        Just("[1, 4, 4]".to_string()),
        Just("[64, 65536, 65536]".to_string()),
        Just("[9223372036854775807, 1, 1]".to_string()),
        Just("[0.5]".to_string()),
        Just("[]".to_string()),
        Just("[0.5, 0.5]".to_string()),
        Just("{\"a\": [[[[1]]]]}".to_string()),
        Just("[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]".to_string()),
        "\\PC{0,12}",
    ])
}

const META_KEYS: [&str; 9] = [
    "format_version",
    "unlearn_version",
    "arch",
    "classes",
    "input",
    "mean",
    "std",
    "sparsity",
    "train_config",
];

/// Every metadata key set (or left out) to a fuzzed value, around the seed's tensors.
#[test]
fn fuzz_checkpoint_metadata() {
    use safetensors::tensor::SafeTensors;
    let tmp = tempfile::tempdir().unwrap();
    let seed = checkpoint_seed(tmp.path());
    let st = SafeTensors::deserialize(&seed).unwrap();
    let tensors: Vec<(String, safetensors::tensor::TensorView<'_>)> = st.tensors();
    let (_, meta) = SafeTensors::read_metadata(&seed).unwrap();
    let valid: HashMap<String, String> = meta.metadata().clone().unwrap();
    let path = tmp.path().join("f.safetensors");
    fuzz(
        "checkpoint_metadata",
        (
            prop::collection::vec((0usize..META_KEYS.len(), meta_value()), 0..5),
            any::<bool>(),
        ),
        |(changes, mask)| {
            let mut h = valid.clone();
            for (k, v) in changes {
                match v {
                    Some(v) => h.insert(META_KEYS[*k].to_string(), v.clone()),
                    None => h.remove(META_KEYS[*k]),
                };
            }
            let mut ts: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors.clone();
            if *mask {
                // A mask tensor beside the weights, of the first conv's shape but wrong dtype.
                let (name, view) = tensors[0].clone();
                ts.push((format!("mask/{name}"), view));
            }
            let bytes = safetensors::serialize(ts, Some(h)).unwrap();
            std::fs::write(&path, bytes).unwrap();
            read_all(&path);
        },
    );
}

#[test]
fn fuzz_index_file() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("forget.txt");
    let seeds: [&[u8]; 3] = [
        b"0\n3\n# a comment\n7 # trailing\n",
        b"[0, 3, 7]",
        b"  [1, 2.5, \"3\", null, [4], 18446744073709551616]",
    ];
    let train = prop_oneof![
        Just(0usize),
        Just(1),
        Just(10),
        Just(usize::MAX),
        any::<usize>()
    ];
    fuzz(
        "index_file",
        (0usize..3, bytes_input(), train),
        |(k, input, train)| {
            std::fs::write(&path, input.of(seeds[*k])).unwrap();
            let _ = read_index_file(&path, *train);
        },
    );
}

#[cfg(feature = "host")]
mod plugin {
    use std::ffi::{CStr, CString, c_char, c_void};

    use serde_json::Value;

    use super::*;
    use unlearn_api::method::{BuiltinMethod, ConfigIssue, Factory, Kind};
    use unlearn_api::plugin::abi::{
        ABI_MAJOR, ABI_MINOR, DESCRIPTOR_SIZE_2_0, ERR, METHOD_ENTRY_SIZE_2_0, MethodEntry, OK,
        PluginDescriptor, Status,
    };
    use unlearn_api::plugin::guest::make_descriptor;
    use unlearn_api::plugin::host::check_descriptor;

    fn schema() -> Value {
        json!({"type": "object", "properties": {"lr": {"type": "number", "minimum": 0}}})
    }

    fn default_config() -> Value {
        json!({"lr": 0.1})
    }

    static METHODS: [BuiltinMethod; 1] = [BuiltinMethod {
        kind: Kind::Unlearner,
        name: "fuzzed",
        summary: "a method for the fuzz targets",
        krate: "fuzz",
        schema,
        default_config,
        factory: Factory::Unlearner(|_| Err(vec![ConfigIssue::new("/lr", None, "refused")])),
    }];

    /// A string field of a descriptor or method entry.
    #[derive(Debug, Clone)]
    enum Field {
        Keep,
        Null,
        Text(harness::Bytes),
        /// One of the JSON texts that stress a JSON Schema compiler or validator.
        Json(usize),
    }

    const JSONS: [&str; 14] = [
        r#"{"type": "object", "properties": {"a": {"type": "string", "pattern": "^(a+)+$"}}}"#,
        r#"{"pattern": "\\p{NotAClass}"}"#,
        r#"{"pattern": "(((((((((("}"#,
        r##"{"$ref": "#/definitions/x", "definitions": {"x": {"$ref": "#/definitions/x"}}}"##,
        r##"{"anyOf": [{"$ref": "#"}], "properties": {"a": {"$ref": "#"}}}"##,
        r#"{"$ref": "http://localhost:1/schema.json"}"#,
        r#"{"type": "integer", "minimum": 1e400, "multipleOf": 0}"#,
        r#"{"format": "regex", "type": "string"}"#,
        r#"{"a": "(a+)+$", "lr": -1, "b": [1, 2, {"c": null}]}"#,
        r#"{"crate": "a-crate"}"#,
        r#"{"crate": 7}"#,
        r#"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]"#,
        r#"{"ModelSpec": "00", "Forget": 1}"#,
        r#"{"type": ["string", "number"], "enum": [], "const": {}, "minLength": 18446744073709551615}"#,
    ];

    fn field() -> impl Strategy<Value = Field> {
        prop_oneof![
            4 => Just(Field::Keep),
            1 => Just(Field::Null),
            3 => bytes_input().prop_map(Field::Text),
            3 => (0..JSONS.len()).prop_map(Field::Json),
        ]
    }

    /// The field's new pointer (its text kept alive in `keep`), or `old`.
    fn set(f: &Field, old: *const c_char, keep: &mut Vec<CString>) -> *const c_char {
        let text: Vec<u8> = match f {
            Field::Keep => return old,
            Field::Null => return std::ptr::null(),
            Field::Text(b) => {
                let seed = if old.is_null() {
                    Vec::new()
                } else {
                    // SAFETY: the seed descriptor's strings are static NUL-terminated texts.
                    unsafe { CStr::from_ptr(old) }.to_bytes().to_vec()
                };
                b.of(&seed)
            }
            Field::Json(i) => JSONS[*i].as_bytes().to_vec(),
        };
        let c = CString::new(text.into_iter().filter(|&b| b != 0).collect::<Vec<u8>>()).unwrap();
        let p = c.as_ptr();
        keep.push(c);
        p
    }

    #[derive(Debug, Clone)]
    struct DescriptorInput {
        major: u32,
        minor: u32,
        size: u8,
        panic_strategy: u32,
        strings: Vec<Field>,
        n_methods: u8,
        entry_size: u8,
        kind: u32,
        entry_strings: Vec<Field>,
    }

    fn descriptor_input() -> impl Strategy<Value = DescriptorInput> {
        (
            prop_oneof![Just(ABI_MAJOR), 0u32..4, Just(u32::MAX)],
            prop_oneof![Just(ABI_MINOR), 0u32..4, Just(u32::MAX)],
            0u8..4,
            prop_oneof![Just(0u32), 0u32..3, any::<u32>()],
            prop::collection::vec(field(), 5),
            0u8..4,
            0u8..4,
            prop_oneof![Just(1u32), 0u32..4, any::<u32>()],
            prop::collection::vec(field(), 5),
        )
            .prop_map(
                |(major, minor, size, panic_strategy, strings, n_methods, entry_size, kind, es)| {
                    DescriptorInput {
                        major,
                        minor,
                        size,
                        panic_strategy,
                        strings,
                        n_methods,
                        entry_size,
                        kind,
                        entry_strings: es,
                    }
                },
            )
    }

    /// Sizes a library may declare without lying about memory it does not have (a descriptor
    /// that lies about its own size cannot be checked by anyone).
    fn pick_size(k: u8, least: usize, full: usize) -> usize {
        [0, least - 1, least, full][k as usize]
    }

    #[test]
    fn fuzz_plugin_descriptor() {
        let base = make_descriptor(&METHODS, "fuzz-plugin", "0.1.0", true);
        // SAFETY: make_descriptor's table has one entry per method.
        let base_entry: MethodEntry = unsafe { **base.methods };
        let path = Path::new("libfuzz.so");
        fuzz("plugin_descriptor", descriptor_input(), |input| {
            let mut keep = Vec::new();
            let mut e = base_entry;
            e.size = pick_size(
                input.entry_size,
                METHOD_ENTRY_SIZE_2_0,
                std::mem::size_of::<MethodEntry>(),
            );
            e.kind = input.kind;
            let es = &input.entry_strings;
            e.name = set(&es[0], e.name, &mut keep);
            e.summary = set(&es[1], e.summary, &mut keep);
            e.schema_json = set(&es[2], e.schema_json, &mut keep);
            e.default_config_json = set(&es[3], e.default_config_json, &mut keep);
            e.describe_json = set(&es[4], e.describe_json, &mut keep);
            // The table: none, the entry, the entry twice, or the entry and a null pointer.
            let table: Vec<*const MethodEntry> = match input.n_methods {
                0 => vec![],
                1 => vec![&e],
                2 => vec![&e, &e],
                _ => vec![&e, std::ptr::null()],
            };
            let mut d: PluginDescriptor = base;
            d.abi_major = input.major;
            d.abi_minor = input.minor;
            d.size = pick_size(
                input.size,
                DESCRIPTOR_SIZE_2_0,
                std::mem::size_of::<PluginDescriptor>(),
            );
            d.panic_strategy = input.panic_strategy;
            let s = &input.strings;
            d.libtorch_version = set(&s[0], d.libtorch_version, &mut keep);
            d.wire_hash = set(&s[1], d.wire_hash, &mut keep);
            d.wire_types = set(&s[2], d.wire_types, &mut keep);
            d.plugin_name = set(&s[3], d.plugin_name, &mut keep);
            d.plugin_version = set(&s[4], d.plugin_version, &mut keep);
            d.methods = if table.is_empty() && input.n_methods == 0 {
                std::ptr::null()
            } else {
                table.as_ptr()
            };
            d.n_methods = table.len();
            // SAFETY: every pointer is null or points at data alive for the call.
            let _ = unsafe { check_descriptor(path, &d) };
        });
    }

    thread_local! {
        /// What the fuzzed `create` answers: its status and error text.
        static ANSWER: std::cell::RefCell<(Status, Option<CString>)> =
            const { std::cell::RefCell::new((0, None)) };
    }

    /// A library's `create` that answers with the fuzzed status and error text (the JSON list of
    /// config issues the host parses, or anything else) and never makes an instance.
    unsafe extern "C" fn fuzzed_create(
        _state: *const c_void,
        _config_json: *const c_char,
        _instance: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> Status {
        // SAFETY: called through the plugin ABI, whose pointers are valid for the call (`plugin::abi` says which may be null).
        unsafe {
            ANSWER.with(|a| {
                let (status, text) = a.borrow().clone();
                if let Some(t) = text {
                    // Freed by the descriptor's `free_string`, which takes `CString::into_raw`.
                    *err = t.into_raw();
                }
                status
            })
        }
    }

    /// The JSON the plugin side sends back through the host's `create`: its error text, as the
    /// list of config issues the host parses, mutated, or random.
    #[test]
    fn fuzz_wire_json() {
        let mut base = make_descriptor(&METHODS, "fuzz-plugin", "0.1.0", true);
        // SAFETY: make_descriptor's table has one entry per method.
        let mut entry: MethodEntry = unsafe { **base.methods };
        entry.create = fuzzed_create;
        let table: Vec<*const MethodEntry> = vec![Box::leak(Box::new(entry))];
        base.methods = Box::leak(table.into_boxed_slice()).as_ptr();
        // SAFETY: a descriptor made here, its table leaked for the life of the process.
        let library = unsafe { check_descriptor(Path::new("libfuzz.so"), &base) }.unwrap();
        let method = &library.methods[0];
        let seed = serde_json::to_vec(&[
            ConfigIssue::new("/lr", Some(json!(-1)), "below the minimum"),
            ConfigIssue::new("", None, "refused"),
        ])
        .unwrap();
        fuzz(
            "wire_json",
            (
                prop_oneof![Just(ERR), Just(OK), any::<i32>()],
                prop::option::of(bytes_input()),
                prop_oneof![Just(json!({"lr": 0.1})), Just(json!(null)), Just(json!([]))],
            ),
            |(status, text, config)| {
                let text = text.as_ref().map(|t| {
                    CString::new(
                        t.of(&seed)
                            .into_iter()
                            .filter(|&b| b != 0)
                            .collect::<Vec<_>>(),
                    )
                    .unwrap()
                });
                ANSWER.with(|a| *a.borrow_mut() = (*status, text));
                let _ = method.build_unlearner(config);
            },
        );
    }
}

// Regression tests: inputs that crashed a parser, kept whatever the fuzz budget.

/// A config's `synthetic` sizes were multiplied unchecked and allocated before any check:
/// `samples = 1e12` aborted the process (allocation failure), a larger one wrapped around.
#[test]
fn regression_synthetic_sizes_are_bounded() {
    use unlearn_api::data::{SyntheticConfig, synthetic};
    for (samples, channels, size) in [
        (1_000_000_000_000, 1, 8),
        (usize::MAX, 4, 256),
        (10, usize::MAX, 2),
        (10, 1, 0),
    ] {
        let cfg = SyntheticConfig {
            samples,
            channels,
            size,
            ..SyntheticConfig::default()
        };
        let e = synthetic(&cfg).unwrap_err().to_string();
        assert!(e.contains("synthetic") && e.contains("pixels"), "{e}");
    }
}
