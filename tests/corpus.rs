//! A corpus of bad inputs: configs, index files, checkpoints, data files, plugins and command
//! lines. Each case writes its files into a fresh folder, runs the binary, and checks the exit
//! code (2: the input's fault) and that stderr names the field (a JSON pointer) or the file, and
//! that nothing panicked or aborted. Most cases use `validate`, which needs no training.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{Value, json};

mod common;

use common::{stderr, stdout};

/// Valid, tiny and fast: the corpus mutates it.
const BASE: &str = r#"seed = 0
[data]
dataset = "synthetic"
synthetic = { samples = 300, classes = 4, noise = 6.0 }
split = { test_fraction = 0.2, val_fraction = 0.1 }
[train]
epochs = 4
lr = 0.05
batch_size = 32
milestones = []
[prune]
method = "OMP"
sparsity = 0.8
rewind_epoch = 1
[[forget]]
kind = "class"
class = 1
[[unlearn]]
method = "FT"
epochs = 1
lr = 0.01
batch_size = 32
"#;

const PRUNE: &str = "[prune]\nmethod = \"OMP\"\nsparsity = 0.8\nrewind_epoch = 1\n";
const FORGET: &str = "[[forget]]\nkind = \"class\"\nclass = 1\n";
const SYNTHETIC: &str =
    "dataset = \"synthetic\"\nsynthetic = { samples = 300, classes = 4, noise = 6.0 }";

/// BASE with each `from` replaced (once) by `to`; a `from` that is not there is a bug here.
fn base_with(edits: &[(&str, &str)]) -> String {
    let mut t = BASE.to_string();
    for (a, b) in edits {
        assert!(t.contains(a), "BASE has `{a}`");
        t = t.replacen(a, b, 1);
    }
    t
}

/// BASE as JSON, to mutate where TOML cannot say it (integers beyond i64, 1e300 as an integer).
fn base_json() -> Value {
    json!({
        "seed": 0,
        "data": {"dataset": "synthetic", "synthetic": {"samples": 300, "classes": 4, "noise": 6.0},
                 "split": {"test_fraction": 0.2, "val_fraction": 0.1}},
        "train": {"epochs": 4, "lr": 0.05, "batch_size": 32, "milestones": []},
        "prune": {"method": "OMP", "sparsity": 0.8, "rewind_epoch": 1},
        "forget": [{"kind": "class", "class": 1}],
        "unlearn": [{"method": "FT", "epochs": 1, "lr": 0.01, "batch_size": 32}]
    })
}

#[derive(Clone)]
enum Entry {
    File(Vec<u8>),
    Dir,
}

#[derive(Clone)]
struct Case {
    name: String,
    category: &'static str,
    files: Vec<(String, Entry)>,
    /// `{d}` stands for the case's folder.
    args: Vec<String>,
    env: Vec<(String, String)>,
    code: i32,
    needles: Vec<String>,
    /// A defect the case exposes that is not fixed yet: the case is listed, not run.
    known_defect: Option<&'static str>,
    /// The case's folder must be exactly as the case made it afterwards (nothing written,
    /// created or changed: a refused command, a dry run).
    untouched: bool,
    /// What stdout must contain (for cases that succeed).
    stdout_needles: Vec<String>,
    /// A lock file this test holds while the command runs (as another unlearn process would).
    locked: Option<String>,
}

impl Case {
    fn new(category: &'static str, name: &str, args: &[&str], code: i32, needles: &[&str]) -> Case {
        Case {
            name: name.into(),
            category,
            files: Vec::new(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            code,
            needles: needles.iter().map(|s| s.to_string()).collect(),
            known_defect: None,
            untouched: false,
            stdout_needles: Vec::new(),
            locked: None,
        }
    }
    fn locked(mut self, path: &str) -> Case {
        self.locked = Some(path.into());
        self
    }
    fn untouched(mut self) -> Case {
        self.untouched = true;
        self
    }
    fn prints(mut self, needles: &[&str]) -> Case {
        self.stdout_needles = needles.iter().map(|s| s.to_string()).collect();
        self
    }
    fn file(mut self, path: &str, bytes: impl Into<Vec<u8>>) -> Case {
        self.files.push((path.into(), Entry::File(bytes.into())));
        self
    }
    fn files(mut self, files: &[(String, Vec<u8>)]) -> Case {
        for (p, b) in files {
            self.files.push((p.clone(), Entry::File(b.clone())));
        }
        self
    }
    fn dir(mut self, path: &str) -> Case {
        self.files.push((path.into(), Entry::Dir));
        self
    }
    fn env(mut self, k: &str, v: &str) -> Case {
        self.env.push((k.into(), v.into()));
        self
    }
    fn with_args(mut self, args: &[&str]) -> Case {
        self.args = args.iter().map(|s| s.to_string()).collect();
        self
    }
    #[allow(dead_code)] // none at the moment
    fn defect(mut self, why: &'static str) -> Case {
        self.known_defect = Some(why);
        self
    }
}

/// `unlearn validate {d}/c.toml` on `text`.
fn validate(category: &'static str, name: &str, text: &str, needles: &[&str]) -> Case {
    Case::new(category, name, &["validate", "{d}/c.toml"], 2, needles).file("c.toml", text)
}

fn validate_json(name: &str, v: &str, needles: &[&str]) -> Case {
    Case::new("config", name, &["validate", "{d}/c.json"], 2, needles).file("c.json", v)
}

/// `unlearn run` on `text` (for what only fails at run time); no results may be written.
fn run(category: &'static str, name: &str, text: &str, needles: &[&str]) -> Case {
    Case::new(
        category,
        name,
        &[
            "--device",
            "cpu",
            "-q",
            "run",
            "{d}/c.toml",
            "--out",
            "{d}/out",
        ],
        2,
        needles,
    )
    .file("c.toml", text)
}

fn config_cases() -> Vec<Case> {
    let c = "config";
    let train = |field: &str, value: &str, needle: &str| {
        let text = base_with(&[(
            "milestones = []\n",
            &format!("milestones = []\n{field} = {value}\n"),
        )]);
        validate(c, &format!("train.{field} = {value}"), &text, &[needle])
    };
    let replace = |name: &str, edits: &[(&str, &str)], needles: &[&str]| {
        validate(c, name, &base_with(edits), needles)
    };
    let json_with = |name: &str, pointer: &str, value: Value, needles: &[&str]| {
        let mut v = base_json();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        v.pointer_mut(parent).unwrap()[key] = value;
        validate_json(name, &v.to_string(), needles)
    };
    let lr = |v: &str| ("lr = 0.05", format!("lr = {v}"));
    let mut cases = Vec::new();
    for v in ["0", "-1", "1e39", "nan", "inf", "-inf", "\"0.1\""] {
        let (a, b) = lr(v);
        cases.push(replace(
            &format!("train.lr = {v}"),
            &[(a, &b)],
            &["/train/lr"],
        ));
    }
    cases.extend([
        replace(
            "train.epochs = 0",
            &[("epochs = 4", "epochs = 0")],
            &["/train/epochs"],
        ),
        replace(
            "train.epochs = 1e308",
            &[("epochs = 4", "epochs = 1e308")],
            &["/train/epochs"],
        ),
        replace(
            "train.epochs = -1",
            &[("epochs = 4", "epochs = -1")],
            &["/train/epochs"],
        ),
        replace(
            "milestone past the last epoch",
            &[("milestones = []", "milestones = [9]")],
            &["/train/milestones"],
        ),
        replace(
            "milestones not increasing",
            &[("milestones = []", "milestones = [3, 2]")],
            &["/train/milestones"],
        ),
        train("warmup_epochs", "9", "/train/warmup_epochs"),
        train("momentum", "1.0", "/train/momentum"),
        train("gamma", "0.0", "/train/gamma"),
        train("weight_decay", "-0.1", "/train/weight_decay"),
        train("optimizer", "\"sgdx\"", "/train/optimizer"),
        train("betas", "[0.9]", "/train/betas"),
        train("lrr", "0.1", "lrr"),
        replace(
            "train.batch_size string",
            &[(
                "batch_size = 32\nmilestones",
                "batch_size = \"32\"\nmilestones",
            )],
            &["/train/batch_size"],
        ),
        json_with(
            "json train.batch_size = 0",
            "/train/batch_size",
            json!(0),
            &["/train/batch_size"],
        ),
        validate_json(
            "json train.batch_size = 2^63",
            &base_json().to_string().replace(
                "\"batch_size\":32,\"epochs\":4",
                "\"batch_size\":9223372036854775808,\"epochs\":4",
            ),
            &["/train/batch_size"],
        ),
        json_with(
            "json train.batch_size = 1e300",
            "/train/batch_size",
            json!(1e300),
            &["/train/batch_size"],
        ),
        validate_json(
            "json eval.batch_size = 2^64-1",
            &base_json().to_string().replacen(
                '{',
                "{\"eval\":{\"batch_size\":18446744073709551615},",
                1,
            ),
            &["/eval/batch_size"],
        ),
        validate_json(
            "json integer beyond 64 bits",
            &base_json().to_string().replacen(
                "\"seed\":0",
                "\"seed\":123456789012345678901234567890",
                1,
            ),
            &["/seed"],
        ),
        replace(
            "seeds duplicated",
            &[("seed = 0", "seeds = [1, 1]")],
            &["/seeds"],
        ),
        replace("seeds empty", &[("seed = 0", "seeds = []")], &["/seeds"]),
        replace("seed negative", &[("seed = 0", "seed = -1")], &["/seed"]),
        replace(
            "synthetic samples huge",
            &[("samples = 300", "samples = 100000000000")],
            &["/data/synthetic/samples"],
        ),
        replace(
            "synthetic size 1e9",
            &[("noise = 6.0", "noise = 6.0, size = 1000000000")],
            &["/data/synthetic/size"],
        ),
        replace(
            "synthetic one class",
            &[("classes = 4", "classes = 1")],
            &["/data/synthetic/classes"],
        ),
        replace(
            "test_fraction 0.95",
            &[("test_fraction = 0.2", "test_fraction = 0.95")],
            &["/data/split/test_fraction"],
        ),
        replace(
            "unknown top-level key",
            &[("seed = 0", "seed = 0\nsed = 1")],
            &["sed"],
        ),
        replace(
            "unknown key in data",
            &[("[data]", "[data]\nsize = 3")],
            &["/data", "size"],
        ),
        replace(
            "unknown key in prune",
            &[("rewind_epoch = 1", "rewind_epoch = 1\nrewnid = 2")],
            &["/prune", "rewnid"],
        ),
        replace(
            "unknown key in forget",
            &[("class = 1", "class = 1\nclas = 2")],
            &["/forget/0", "clas"],
        ),
        replace(
            "unknown key in model",
            &[("[train]", "[model]\narchh = \"conv6\"\n[train]")],
            &["/model", "archh"],
        ),
        replace(
            "unknown key in unlearn",
            &[("epochs = 1", "epochs = 1\nepocs = 2")],
            &["/unlearn/0", "epocs"],
        ),
        replace(
            "forget not a list",
            &[(FORGET, ""), ("seed = 0", "seed = 0\nforget = \"class\"")],
            &["/forget"],
        ),
        replace(
            "unknown unlearner",
            &[("method = \"FT\"", "method = \"FTT\"")],
            &["/unlearn/0/method", "FTT"],
        ),
        replace(
            "unknown pruner",
            &[("method = \"OMP\"", "method = \"OMPP\"")],
            &["/prune/method", "OMPP"],
        ),
        replace(
            "unknown scenario",
            &[("kind = \"class\"", "kind = \"klass\"")],
            &["/forget/0/kind", "klass"],
        ),
        replace(
            "unknown arch",
            &[("[train]", "[model]\narch = \"resnet-9000\"\n[train]")],
            &["/model/arch"],
        ),
        replace(
            "unknown dataset",
            &[("dataset = \"synthetic\"", "dataset = \"imagenet-99\"")],
            &["/data/dataset"],
        ),
        replace(
            "unknown metric",
            &[("seed = 0", "seed = 0\neval = { metrics = [\"accuracy2\"] }")],
            &["/eval/metrics/0", "accuracy2"],
        ),
        replace(
            "unknown mia feature",
            &[(
                "seed = 0",
                "seed = 0\neval = { mia_features = [\"bogus\"] }",
            )],
            &["/eval/mia_features"],
        ),
        Case::new(
            "config",
            "--arch vgg16-bn on 8x8 data",
            &["--arch", "vgg16-bn", "validate", "{d}/c.toml"],
            2,
            &["/model/arch", "vgg16-bn"],
        )
        .file("c.toml", BASE),
        replace("no forget", &[(FORGET, "")], &["/forget"]),
        replace(
            "class out of range",
            &[("class = 1", "class = 4")],
            &["/forget/0/class"],
        ),
        replace(
            "random n too big",
            &[(
                "kind = \"class\"\nclass = 1",
                "kind = \"random\"\nn = 100000",
            )],
            &["/forget/0/n"],
        ),
        replace(
            "random fraction 0",
            &[(
                "kind = \"class\"\nclass = 1",
                "kind = \"random\"\nfraction = 0.0",
            )],
            &["/forget/0/fraction"],
        ),
        replace(
            "random fraction 1.5",
            &[(
                "kind = \"class\"\nclass = 1",
                "kind = \"random\"\nfraction = 1.5",
            )],
            &["/forget/0/fraction"],
        ),
        replace(
            "subclass class out of range",
            &[(
                "kind = \"class\"\nclass = 1",
                "kind = \"subclass\"\nclass = 7\nfraction = 0.5",
            )],
            &["/forget/0/class"],
        ),
        replace(
            "subclass fraction whole class",
            &[(
                "kind = \"class\"\nclass = 1",
                "kind = \"subclass\"\nclass = 1\nfraction = 1.0",
            )],
            &["/forget/0"],
        ),
        replace(
            "file scenario without path",
            &[("kind = \"class\"\nclass = 1", "kind = \"file\"")],
            &["/forget/0", "path"],
        ),
        replace(
            "attack target out of range",
            &[(
                FORGET,
                "[attack]\nmethod = \"BadNets\"\nn = 20\nsize = 2\ntarget = 9\n",
            )],
            &["/attack/target"],
        ),
        replace(
            "unknown attack",
            &[(FORGET, "[attack]\nmethod = \"BadNetz\"\n")],
            &["/attack", "BadNetz"],
        ),
        replace(
            "sparsity sweep duplicates",
            &[("sparsity = 0.8", "sparsity = [0.5, 0.5]")],
            &["/prune/sparsity"],
        ),
        replace(
            "sparsity sweep empty",
            &[("sparsity = 0.8", "sparsity = []")],
            &["/prune/sparsity"],
        ),
        replace(
            "method sweep empty",
            &[("lr = 0.01", "lr = []")],
            &["/unlearn/0/lr", "empty `lr` sweep"],
        ),
        replace(
            "method sweep duplicates",
            &[("lr = 0.01", "lr = [0.01, 0.02, 0.01]")],
            &["/unlearn/0/lr/2", "listed twice"],
        ),
        replace(
            "method sweep with a bad value",
            &[("lr = 0.01", "lr = [0.01, -1]")],
            &["/unlearn/0/lr/1"],
        ),
        replace(
            "sparsity 1.5",
            &[("sparsity = 0.8", "sparsity = 1.5")],
            &["/prune/sparsity"],
        ),
        replace(
            "rewind past training",
            &[("rewind_epoch = 1", "rewind_epoch = 99")],
            &["/prune/rewind_epoch"],
        ),
        replace(
            "unlearn lr nan",
            &[("lr = 0.01", "lr = nan")],
            &["/unlearn/0/lr"],
        ),
        replace(
            "unlearn epochs 0",
            &[("epochs = 1\nlr = 0.01", "epochs = 0\nlr = 0.01")],
            &["/unlearn/0/epochs"],
        ),
        validate(
            c,
            "unlearn without method",
            &(BASE.to_string() + "[[unlearn]]\nepochs = 1\n"),
            &["/unlearn/1"],
        ),
        validate(
            c,
            "duplicate labels",
            &(BASE.to_string() + "[[unlearn]]\nmethod = \"GA\"\nlabel = \"FT\"\n"),
            &["/unlearn/1", "FT"],
        ),
        validate(
            c,
            "TOML syntax error",
            "seed = 0\n[train\nlr = 1\n",
            &["c.toml", "TOML"],
        ),
        validate(
            c,
            "TOML integer beyond 64 bits",
            &base_with(&[("seed = 0", "seed = 99999999999999999999")]),
            &["c.toml"],
        ),
        validate_json("JSON syntax error", "{\"seed\": 0,", &["c.json", "JSON"]),
        validate_json("JSON array at top", "[1, 2]", &["c.json"]),
        validate_json("empty JSON file", "", &["c.json"]),
        validate(c, "empty TOML file", "", &["/forget"]),
        validate(
            c,
            "binary garbage",
            &String::from_utf8_lossy(&[0x7f, 0x45, 0x4c, 0x46, 1, 2, 0xff]),
            &["c.toml"],
        ),
        Case::new(
            c,
            "non-UTF-8 config",
            &["validate", "{d}/c.toml"],
            2,
            &["c.toml"],
        )
        .file("c.toml", b"seed = 0\n# \xff\xfe\n".to_vec()),
        Case::new(
            c,
            "config is a directory",
            &["validate", "{d}/c.toml"],
            2,
            &["c.toml"],
        )
        .dir("c.toml"),
        Case::new(
            c,
            "config missing",
            &["validate", "{d}/no/such/c.toml"],
            2,
            &["no/such/c.toml"],
        ),
        replace(
            "plugins path missing",
            &[("seed = 0", "seed = 0\nplugins = [\"no-such-plugins\"]")],
            &["/plugins/0", "no-such-plugins"],
        ),
        replace(
            "plugins not a list",
            &[("seed = 0", "seed = 0\nplugins = 3")],
            &["/plugins"],
        ),
    ]);
    cases
}

fn index_cases() -> Vec<Case> {
    let cfg = |path: &str| {
        base_with(&[(
            "kind = \"class\"\nclass = 1",
            &format!("kind = \"file\"\npath = \"{path}\""),
        )])
    };
    let case = |name: &str, file: &str, bytes: &[u8], needles: &[&str]| {
        let mut n: Vec<&str> = vec!["/forget/0/path"];
        n.extend(needles);
        validate("index", name, &cfg(file), &n).file(file, bytes.to_vec())
    };
    vec![
        validate(
            "index",
            "index file missing",
            &cfg("gone.txt"),
            &["/forget/0/path", "gone.txt"],
        ),
        case("index file empty", "empty.txt", b"", &["empty.txt"]),
        case(
            "index only comments",
            "comments.txt",
            b"# none\n# here\n",
            &["comments.txt"],
        ),
        case("non-numeric line", "words.txt", b"3\nfour\n", &["line 2"]),
        case("negative index", "neg.txt", b"-3\n", &["line 1"]),
        case(
            "index out of range",
            "far.txt",
            b"1\n2\n1000000\n",
            &["line 3"],
        ),
        case("index listed twice", "dup.txt", b"4\n5\n4\n", &["4"]),
        case(
            "index beyond 64 bits",
            "huge.txt",
            b"99999999999999999999999\n",
            &["line 1"],
        ),
        case("fractional index", "frac.txt", b"1.5\n", &["line 1"]),
        case(
            "binary garbage",
            "junk.txt",
            &[0, 159, 146, 150, 0xff, 10, 1],
            &["junk.txt"],
        ),
        case(
            "JSON object not array",
            "obj.json",
            b"{\"a\": 1}",
            &["obj.json"],
        ),
        case(
            "JSON array of floats",
            "floats.json",
            b"[1, 2.5]",
            &["floats.json"],
        ),
        validate(
            "index",
            "index path is a directory",
            &cfg("adir"),
            &["/forget/0/path", "adir"],
        )
        .dir("adir"),
    ]
}

/// A safetensors file: 8-byte little-endian header length, JSON header, data.
fn safetensors(header: &Value, data: &[u8]) -> Vec<u8> {
    let h = header.to_string().into_bytes();
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(data);
    out
}

/// The tensors of a safetensors file, by name: (dtype, shape, bytes); and its metadata.
type Tensors = BTreeMap<String, (String, Vec<u64>, Vec<u8>)>;

fn parse_safetensors(bytes: &[u8]) -> (Tensors, Value) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut tensors = Tensors::new();
    let mut meta = Value::Null;
    for (k, v) in header.as_object().unwrap() {
        if k == "__metadata__" {
            meta = v.clone();
            continue;
        }
        let off: Vec<usize> = serde_json::from_value(v["data_offsets"].clone()).unwrap();
        let shape: Vec<u64> = serde_json::from_value(v["shape"].clone()).unwrap();
        tensors.insert(
            k.clone(),
            (
                v["dtype"].as_str().unwrap().into(),
                shape,
                data[off[0]..off[1]].to_vec(),
            ),
        );
    }
    (tensors, meta)
}

fn build_safetensors(tensors: &Tensors, meta: &Value) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    if !meta.is_null() {
        header.insert("__metadata__".into(), meta.clone());
    }
    let mut data = Vec::new();
    for (name, (dtype, shape, bytes)) in tensors {
        header.insert(
            name.clone(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [data.len(), data.len() + bytes.len()]}),
        );
        data.extend(bytes);
    }
    safetensors(&Value::Object(header), &data)
}

fn checkpoint_cases(dense: &[u8]) -> Vec<Case> {
    // A checkpoint starts a run without a rewinding pruner.
    let cfg = base_with(&[
        (PRUNE, ""),
        (
            "[train]",
            "[model]\ncheckpoint = \"ck.safetensors\"\n[train]",
        ),
    ]);
    let case = |name: &str, bytes: Vec<u8>, needles: &[&str]| {
        let mut n: Vec<&str> = vec!["/model/checkpoint", "ck.safetensors"];
        n.extend(needles);
        validate("checkpoint", name, &cfg, &n).file("ck.safetensors", bytes)
    };
    let (tensors, meta) = parse_safetensors(dense);
    // Edited as another tool would write the file: without unlearn's content digest, so that
    // the checks behind it are what the case meets.
    let edit = |f: &dyn Fn(&mut Tensors, &mut Value)| {
        let (mut t, mut m) = (tensors.clone(), meta.clone());
        if let Some(o) = m.as_object_mut() {
            o.remove("content_sha256");
        }
        f(&mut t, &mut m);
        build_safetensors(&t, &m)
    };
    // Edited in place, the digest left as it was: a damaged file.
    let damage = |f: &dyn Fn(&mut Tensors, &mut Value)| {
        let (mut t, mut m) = (tensors.clone(), meta.clone());
        f(&mut t, &mut m);
        build_safetensors(&t, &m)
    };
    let fill = |value: f32| {
        edit(&|t, _| {
            let b = &mut t.get_mut("fc.bias").unwrap().2;
            b[..4].copy_from_slice(&value.to_le_bytes());
        })
    };
    let n = u64::from_le_bytes(dense[..8].try_into().unwrap()) as usize;
    let mut huge = u64::MAX.to_le_bytes().to_vec();
    huge.extend(&dense[8..]);
    let mut not_json = 10u64.to_le_bytes().to_vec();
    not_json.extend(b"not json!!");
    not_json.extend(&dense[8 + n..]);
    let mut past_end = dense.to_vec();
    past_end.truncate(dense.len() - 4);
    vec![
        validate(
            "checkpoint",
            "checkpoint missing",
            &cfg,
            &["/model/checkpoint", "ck.safetensors"],
        ),
        case("checkpoint empty", Vec::new(), &[]),
        case("checkpoint of 7 bytes", vec![1; 7], &[]),
        case(
            "checkpoint truncated in the header",
            dense[..n / 2].to_vec(),
            &[],
        ),
        case("checkpoint truncated in the data", past_end, &[]),
        case("header length huge", huge, &[]),
        case("header not JSON", not_json, &[]),
        case("header a JSON array", safetensors(&json!([1, 2]), &[]), &[]),
        case(
            "a weight's bit flipped, the digest kept",
            damage(&|t, _| t.get_mut("fc.bias").unwrap().2[1] ^= 0x08),
            &["is damaged", "content_sha256"],
        ),
        case(
            "the metadata's std changed, the digest kept",
            damage(&|_, m| {
                let std = m["std"].as_str().unwrap().replacen('3', "4", 1);
                m["std"] = json!(std);
            }),
            &["is damaged"],
        ),
        case("NaN weight", fill(f32::NAN), &["non-finite"]),
        case("inf weight", fill(f32::INFINITY), &["non-finite"]),
        case(
            "missing tensor",
            edit(&|t, _| {
                t.remove("fc.bias");
            }),
            &["fc.bias"],
        ),
        case(
            "extra tensor",
            edit(&|t, _| {
                t.insert("fc2.weight".into(), ("F32".into(), vec![2], vec![0; 8]));
            }),
            &["fc2.weight"],
        ),
        case(
            "wrong shape",
            edit(&|t, _| {
                t.get_mut("fc.weight").unwrap().1 = vec![8, 64];
            }),
            &["fc.weight"],
        ),
        case(
            "float64 tensor",
            edit(&|t, _| {
                let e = t.get_mut("fc.bias").unwrap();
                e.0 = "F64".into();
                e.2 = e
                    .2
                    .chunks(4)
                    .flat_map(|c| (f32::from_le_bytes(c.try_into().unwrap()) as f64).to_le_bytes())
                    .collect();
            }),
            &["fc.bias"],
        ),
        case(
            "dtype disagrees with the byte count",
            edit(&|t, _| {
                t.get_mut("fc.bias").unwrap().0 = "F64".into();
            }),
            &[],
        ),
        case(
            "another arch in the metadata",
            edit(&|_, m| {
                m["arch"] = json!("conv6");
            }),
            &["conv6"],
        ),
        case(
            "other classes in the metadata",
            edit(&|_, m| {
                m["classes"] = json!("10");
            }),
            &["10 classes"],
        ),
        case(
            "classes not a number",
            edit(&|_, m| {
                m["classes"] = json!("ten");
            }),
            &["classes"],
        ),
        case(
            "other input in the metadata",
            edit(&|_, m| {
                m["input"] = json!("[3,32,32]");
            }),
            &[],
        ),
        case(
            "future format version",
            edit(&|_, m| {
                m["format_version"] = json!("99");
            }),
            &["99"],
        ),
        case(
            "no metadata and foreign names",
            edit(&|t, m| {
                // Without metadata it is read as PyTorch weights, whose names must match.
                *m = Value::Null;
                *t = t
                    .iter()
                    .map(|(k, v)| (format!("net.{k}"), v.clone()))
                    .collect();
            }),
            &[],
        ),
        validate(
            "checkpoint",
            "checkpoint is a directory",
            &cfg,
            &["/model/checkpoint", "ck.safetensors"],
        )
        .dir("ck.safetensors"),
        run(
            "checkpoint",
            "run: NaN weight",
            &cfg,
            &["/model/checkpoint", "non-finite"],
        )
        .file("ck.safetensors", fill(f32::NAN)),
    ]
}

/// Checkpoints whose header is edited as JSON, the data left as it is: what the tensor list
/// above cannot say (negative sizes, reversed offsets, unknown dtypes, odd metadata).
fn checkpoint_header_cases(dense: &[u8]) -> Vec<Case> {
    let cfg = base_with(&[
        (PRUNE, ""),
        (
            "[train]",
            "[model]\ncheckpoint = \"ck.safetensors\"\n[train]",
        ),
    ]);
    let n = u64::from_le_bytes(dense[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&dense[8..8 + n]).unwrap();
    let case = |name: &str, f: &dyn Fn(&mut Value), needles: &[&str]| {
        let mut h = header.clone();
        if let Some(m) = h["__metadata__"].as_object_mut() {
            m.remove("content_sha256");
        }
        f(&mut h);
        let mut all = vec!["/model/checkpoint", "ck.safetensors"];
        all.extend(needles);
        validate("checkpoint", name, &cfg, &all)
            .file("ck.safetensors", safetensors(&h, &dense[8 + n..]))
    };
    vec![
        case(
            "shape whose size overflows",
            &|h| h["fc.bias"]["shape"] = json!([4294967296u64, 4294967296u64]),
            &[],
        ),
        case(
            "negative shape",
            &|h| h["fc.bias"]["shape"] = json!([-4]),
            &[],
        ),
        case(
            "offsets reversed",
            &|h| {
                let o = h["fc.bias"]["data_offsets"].clone();
                h["fc.bias"]["data_offsets"] = json!([o[1], o[0]]);
            },
            &["fc.bias"],
        ),
        case(
            "unknown dtype",
            &|h| h["fc.bias"]["dtype"] = json!("Q99"),
            &["Q99"],
        ),
        case(
            "zero classes in the metadata",
            &|h| h["__metadata__"]["classes"] = json!("0"),
            &["classes"],
        ),
        case(
            "classes beyond 64 bits in the metadata",
            &|h| h["__metadata__"]["classes"] = json!("18446744073709551616"),
            &["classes"],
        ),
        case(
            "unknown arch in the metadata",
            &|h| h["__metadata__"]["arch"] = json!("resnet9000"),
            &["resnet9000"],
        ),
        case(
            "2-d input in the metadata",
            &|h| h["__metadata__"]["input"] = json!("[1,8]"),
            &["input"],
        ),
        case(
            "metadata value not a string",
            &|h| h["__metadata__"]["classes"] = json!(4),
            &[],
        ),
        case(
            "pruned weight without its mask",
            &|h| {
                let m = h.as_object_mut().unwrap();
                m.remove("__metadata__");
                let w = m.remove("conv1.weight").unwrap();
                m.insert("conv1.weight_orig".into(), w);
            },
            &["conv1.weight_mask"],
        ),
    ]
}

/// The CRC-32 of PNG chunks, to forge a header.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A valid 8x8 PNG whose header claims `w` x `h` pixels (a decompression bomb's header).
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    let mut b = png(8, 8, 0);
    // Signature (8), then IHDR: length (4), type (4), width, height, ..., CRC after 13 bytes.
    b[16..20].copy_from_slice(&w.to_be_bytes());
    b[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&b[12..29]);
    b[29..33].copy_from_slice(&crc.to_be_bytes());
    b
}

/// Data whose sizes are wrong rather than whose bytes are: bombs, empty and odd image sizes.
fn data_size_cases() -> Vec<Case> {
    let d = "data";
    let on_disk = |dataset: &str, dir: &str| {
        base_with(&[(
            SYNTHETIC,
            &format!("dataset = \"{dataset}\"\ndir = \"{dir}\""),
        )])
    };
    let folder = image_folder();
    let one_pixel: Vec<(String, Vec<u8>)> = folder
        .iter()
        .map(|(p, _)| (p.clone(), png(1, 1, 3)))
        .collect();
    let idx_images = |n: u32, side: u32, body: usize| {
        let mut b = vec![0, 0, 8, 3];
        for d in [n, side, side] {
            b.extend(d.to_be_bytes());
        }
        b.extend(vec![9u8; body]);
        b
    };
    let mnist_with = |name: &str, file: &str, bytes: Vec<u8>, needles: &[&str]| {
        validate(d, name, &on_disk("mnist", "mn"), needles).files(&replace_file(
            &mnist(),
            file,
            Some(bytes),
        ))
    };
    vec![
        validate(
            d,
            "PNG header claiming 60000x60000",
            &on_disk("image_folder", "img"),
            &["/data/dir", "bomb.png"],
        )
        .files(&folder)
        .file("img/train/red/bomb.png", png_claiming(60000, 60000)),
        validate(
            d,
            "1x1 images",
            &on_disk("image_folder", "img"),
            &["/model/arch", "1, 1"],
        )
        .files(&one_pixel),
        mnist_with(
            "mnist 0x0 images",
            "mn/train-images-idx3-ubyte",
            idx_images(40, 0, 0),
            &["/data/dir", "train-images-idx3-ubyte"],
        ),
        mnist_with(
            "mnist header sizes overflowing",
            "mn/train-images-idx3-ubyte",
            idx_images(u32::MAX, 65535, 3),
            &["/data/dir", "train-images-idx3-ubyte"],
        ),
        mnist_with(
            "mnist 8x8 images",
            "mn/t10k-images-idx3-ubyte",
            idx_images(20, 8, 20 * 64),
            &["/data/dir", "t10k-images-idx3-ubyte"],
        ),
        validate(
            d,
            "cifar100 dir empty",
            &on_disk("cifar100", "c100"),
            &["/data/dir", "train.bin"],
        )
        .dir("c100"),
        validate(
            d,
            "synthetic beyond the pixel cap",
            &base_with(&[("noise = 6.0", "noise = 6.0, size = 256, channels = 4")])
                .replace("samples = 300", "samples = 10000000"),
            &["/data/synthetic"],
        ),
    ]
}

fn png(w: u32, h: u32, seed: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([
            ((x * 7 + y * 3 + seed * 11) % 250) as u8,
            (seed * 40 % 250) as u8,
            90,
        ])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// An image folder of 3 classes, 12 train and 4 test 8x8 PNGs each, under `img/`.
fn image_folder() -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for (split, n) in [("train", 12), ("test", 4)] {
        for (c, name) in ["blue", "green", "red"].iter().enumerate() {
            for i in 0..n {
                files.push((
                    format!("img/{split}/{name}/{i:03}.png"),
                    png(8, 8, c as u32 * 100 + i),
                ));
            }
        }
    }
    files
}

/// CIFAR-10 binary batches: `per_class` records of every class in each file, under `cifar/`.
fn cifar(per_class: usize) -> Vec<(String, Vec<u8>)> {
    let batch = |seed: usize| -> Vec<u8> {
        let mut b = Vec::new();
        for i in 0..per_class * 10 {
            b.push((i % 10) as u8);
            b.extend((0..3072).map(|p| ((p * 31 + i * 7 + seed) % 256) as u8));
        }
        b
    };
    let mut files: Vec<(String, Vec<u8>)> = (1..=5)
        .map(|k| (format!("cifar/data_batch_{k}.bin"), batch(k)))
        .collect();
    files.push(("cifar/test_batch.bin".into(), batch(9)));
    files.push((
        "cifar/batches.meta.txt".into(),
        b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n".to_vec(),
    ));
    files
}

/// MNIST IDX files: 40 train and 20 test 28x28 images, labels 0..9 cycling, under `mn/`.
fn mnist() -> Vec<(String, Vec<u8>)> {
    let images = |n: u32| {
        let mut b = vec![0, 0, 8, 3];
        for d in [n, 28, 28] {
            b.extend(d.to_be_bytes());
        }
        b.extend((0..n * 784).map(|i| (i * 13 % 256) as u8));
        b
    };
    let labels = |n: u32| {
        let mut b = vec![0, 0, 8, 1];
        b.extend(n.to_be_bytes());
        b.extend((0..n).map(|i| (i % 10) as u8));
        b
    };
    vec![
        ("mn/train-images-idx3-ubyte".into(), images(40)),
        ("mn/train-labels-idx1-ubyte".into(), labels(40)),
        ("mn/t10k-images-idx3-ubyte".into(), images(20)),
        ("mn/t10k-labels-idx1-ubyte".into(), labels(20)),
    ]
}

fn replace_file(
    files: &[(String, Vec<u8>)],
    path: &str,
    bytes: Option<Vec<u8>>,
) -> Vec<(String, Vec<u8>)> {
    assert!(files.iter().any(|(p, _)| p == path), "{path} is in the set");
    files
        .iter()
        .filter(|(p, _)| p != path)
        .cloned()
        .chain(bytes.map(|b| (path.to_string(), b)))
        .collect()
}

fn data_cases() -> Vec<Case> {
    let d = "data";
    let on_disk = |dataset: &str, dir: &str| {
        base_with(&[(
            SYNTHETIC,
            &format!("dataset = \"{dataset}\"\ndir = \"{dir}\""),
        )])
    };
    let cifar_cfg = on_disk("cifar10", "cifar");
    let folder_cfg = on_disk("image_folder", "img");
    let mnist_cfg = on_disk("mnist", "mn");
    let good_cifar = cifar(4);
    let good_folder = image_folder();
    let good_mnist = mnist();
    let cifar_case = |name: &str, file: &str, bytes: Option<Vec<u8>>, needles: &[&str]| {
        validate(d, name, &cifar_cfg, needles).files(&replace_file(&good_cifar, file, bytes))
    };
    let folder_case = |name: &str, file: &str, bytes: Option<Vec<u8>>, needles: &[&str]| {
        validate(d, name, &folder_cfg, needles).files(&replace_file(&good_folder, file, bytes))
    };
    let mnist_case = |name: &str, file: &str, bytes: Option<Vec<u8>>, needles: &[&str]| {
        validate(d, name, &mnist_cfg, needles).files(&replace_file(&good_mnist, file, bytes))
    };
    let record = |label: u8| {
        let mut b = vec![label];
        b.extend([7u8; 3072]);
        b
    };
    let mut short = good_cifar[2].1.clone();
    short.truncate(short.len() - 100);
    let mut bad_label = good_cifar[5].1.clone();
    bad_label.extend(record(10));
    let mut jpeg = vec![0xff, 0xd8, 0xff, 0xe0, 0, 16, b'J', b'F', b'I', b'F', 0];
    jpeg.extend([0x5a; 64]);
    let truncated_png = png(8, 8, 1)[..40].to_vec();
    let mut idx_short = good_mnist[0].1.clone();
    idx_short.truncate(idx_short.len() - 5);
    let mut bad_magic = good_mnist[2].1.clone();
    bad_magic[3] = 9;
    let mut label12 = good_mnist[3].1.clone();
    *label12.last_mut().unwrap() = 12;
    let mut fewer_labels = good_mnist[3].1.clone();
    fewer_labels[7] = 19;
    fewer_labels.pop();
    let without = |files: &[(String, Vec<u8>)], prefix: &str| -> Vec<(String, Vec<u8>)> {
        files
            .iter()
            .filter(|(p, _)| !p.starts_with(prefix))
            .cloned()
            .collect()
    };
    vec![
        // The sets the cases below break must themselves be valid.
        Case::new(
            "baseline",
            "valid CIFAR-10 folder",
            &["validate", "{d}/c.toml"],
            0,
            &[],
        )
        .file("c.toml", cifar_cfg.clone())
        .files(&good_cifar),
        Case::new(
            "baseline",
            "valid image folder",
            &["validate", "{d}/c.toml"],
            0,
            &[],
        )
        .file("c.toml", folder_cfg.clone())
        .files(&good_folder),
        Case::new(
            "baseline",
            "valid MNIST folder",
            &["validate", "{d}/c.toml"],
            0,
            &[],
        )
        .file("c.toml", mnist_cfg.clone())
        .files(&good_mnist),
        validate(
            d,
            "cifar10 dir missing",
            &cifar_cfg,
            &["/data/dir", "cifar"],
        ),
        validate(
            d,
            "cifar10 dir empty",
            &cifar_cfg,
            &["/data/dir", "data_batch_1.bin"],
        )
        .dir("cifar"),
        validate(
            d,
            "cifar10 dir is a file",
            &cifar_cfg,
            &["/data/dir", "cifar"],
        )
        .file("cifar", "x"),
        cifar_case(
            "cifar10 test batch missing",
            "cifar/test_batch.bin",
            None,
            &["/data/dir", "test_batch.bin"],
        ),
        cifar_case(
            "cifar10 0-byte batch",
            "cifar/data_batch_2.bin",
            Some(Vec::new()),
            &["/data/dir", "data_batch_2.bin"],
        ),
        cifar_case(
            "cifar10 truncated record",
            "cifar/data_batch_3.bin",
            Some(short),
            &["/data/dir", "data_batch_3.bin"],
        ),
        cifar_case(
            "cifar10 label out of range",
            "cifar/test_batch.bin",
            Some(bad_label),
            &["/data/dir", "test_batch.bin"],
        ),
        cifar_case(
            "cifar10 meta with 3 names",
            "cifar/batches.meta.txt",
            Some(b"a\nb\nc\n".to_vec()),
            &["/data/dir", "batches.meta.txt"],
        ),
        cifar_case(
            "cifar10 meta not UTF-8",
            "cifar/batches.meta.txt",
            Some(vec![0xff; 40]),
            &["/data/dir", "batches.meta.txt"],
        ),
        folder_case(
            "corrupt PNG",
            "img/train/red/003.png",
            Some(b"\x89PNG\r\n\x1a\nnot really".to_vec()),
            &["/data/dir", "003.png"],
        ),
        folder_case(
            "truncated PNG",
            "img/test/blue/001.png",
            Some(truncated_png),
            &["/data/dir", "001.png"],
        ),
        validate(d, "corrupt JPEG", &folder_cfg, &["/data/dir", "bad.jpg"])
            .files(&good_folder)
            .file("img/train/green/bad.jpg", jpeg),
        folder_case(
            "image of another size",
            "img/train/blue/005.png",
            Some(png(16, 16, 5)),
            &["/data/dir", "005.png"],
        ),
        validate(d, "class only in test", &folder_cfg, &["/data", "purple"])
            .files(&good_folder)
            .file("img/test/purple/000.png", png(8, 8, 9)),
        validate(d, "class absent from test", &folder_cfg, &["/data", "red"])
            .files(&without(&good_folder, "img/test/red/")),
        validate(
            d,
            "empty split folders",
            &folder_cfg,
            &["/data/dir", "train"],
        )
        .dir("img/train")
        .dir("img/test"),
        validate(d, "empty class folder", &folder_cfg, &["/data", "yellow"])
            .files(&good_folder)
            .dir("img/train/yellow"),
        validate(d, "no test folder", &folder_cfg, &["/data/dir", "test"])
            .files(&without(&good_folder, "img/test/")),
        validate(
            d,
            "mnist dir empty",
            &mnist_cfg,
            &["/data/dir", "train-images-idx3-ubyte"],
        )
        .dir("mn"),
        mnist_case(
            "mnist truncated images",
            "mn/train-images-idx3-ubyte",
            Some(idx_short),
            &["/data/dir", "train-images-idx3-ubyte"],
        ),
        mnist_case(
            "mnist bad magic",
            "mn/t10k-images-idx3-ubyte",
            Some(bad_magic),
            &["/data/dir", "t10k-images-idx3-ubyte"],
        ),
        mnist_case(
            "mnist label out of range",
            "mn/t10k-labels-idx1-ubyte",
            Some(label12),
            &["/data/dir", "t10k-labels-idx1-ubyte"],
        ),
        mnist_case(
            "mnist label count mismatch",
            "mn/t10k-labels-idx1-ubyte",
            Some(fewer_labels),
            &["/data/dir", "t10k-labels-idx1-ubyte"],
        ),
        mnist_case(
            "mnist gzip that is not gzip",
            "mn/t10k-labels-idx1-ubyte",
            None,
            &["/data/dir", "t10k-labels-idx1-ubyte"],
        )
        .file("mn/t10k-labels-idx1-ubyte.gz", b"plain text".to_vec()),
        validate(
            d,
            "svhn garbage .mat",
            &on_disk("svhn", "sv"),
            &["/data/dir", "train_32x32.mat"],
        )
        .file("sv/train_32x32.mat", vec![0x42; 300])
        .file("sv/test_32x32.mat", vec![0x42; 300]),
        validate(
            d,
            "svhn empty .mat",
            &on_disk("svhn", "sv"),
            &["/data/dir", "train_32x32.mat"],
        )
        .file("sv/train_32x32.mat", Vec::new())
        .file("sv/test_32x32.mat", Vec::new()),
        validate(
            d,
            "svhn files missing",
            &on_disk("svhn", "sv"),
            &["/data/dir", "train_32x32.mat"],
        )
        .dir("sv"),
        validate(
            d,
            "tiny_imagenet dir empty",
            &on_disk("tiny_imagenet", "ti"),
            &["/data/dir", "ti"],
        )
        .dir("ti"),
        Case::new(
            d,
            "data fetch --dir a file",
            &["data", "fetch", "cifar10", "--dir", "{d}/afile"],
            2,
            &["afile"],
        )
        .file("afile", "x"),
        Case::new(
            d,
            "data fetch --mirror not a URL",
            &[
                "data",
                "fetch",
                "cifar10",
                "--dir",
                "{d}/x",
                "--mirror",
                "not-a-url",
            ],
            2,
            &["not-a-url"],
        ),
        Case::new(
            d,
            "data fetch unknown set",
            &["data", "fetch", "cifar11", "--dir", "{d}/x"],
            2,
            &["cifar11"],
        ),
    ]
}

fn plugin_cases() -> Vec<Case> {
    let p = "plugin";
    let rand: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut elf = vec![0x7f, b'E', b'L', b'F', 2, 1, 1, 0];
    elf.extend([0u8; 120]);
    vec![
        Case::new(
            p,
            "check: missing library",
            &["plugin", "check", "{d}/libnone.so"],
            2,
            &["libnone.so"],
        ),
        Case::new(
            p,
            "check: empty library",
            &["plugin", "check", "{d}/libx.so"],
            2,
            &["libx.so"],
        )
        .file("libx.so", Vec::new()),
        Case::new(
            p,
            "check: text file",
            &["plugin", "check", "{d}/libx.so"],
            2,
            &["libx.so"],
        )
        .file("libx.so", "not a library\n"),
        Case::new(
            p,
            "check: random bytes",
            &["plugin", "check", "{d}/libx.so"],
            2,
            &["libx.so"],
        )
        .file("libx.so", rand.clone()),
        Case::new(
            p,
            "check: truncated ELF",
            &["plugin", "check", "{d}/libx.so"],
            2,
            &["libx.so"],
        )
        .file("libx.so", elf),
        Case::new(
            p,
            "check: a directory",
            &["plugin", "check", "{d}/plugins"],
            2,
            &["plugins"],
        )
        .dir("plugins"),
        Case::new(
            p,
            "list --plugin-dir with a junk library",
            &["--plugin-dir", "{d}/plugins", "list"],
            0,
            &["warning", "libjunk.so"],
        )
        .file("plugins/libjunk.so", rand.clone()),
        Case::new(
            p,
            "list --plugin-dir missing",
            &["--plugin-dir", "{d}/nowhere", "list"],
            0,
            &["warning", "nowhere"],
        ),
        Case::new(
            p,
            "UNLEARN_PLUGIN_PATH at junk",
            &["list"],
            0,
            &["warning", "libjunk.so"],
        )
        .file("libjunk.so", "junk")
        .env("UNLEARN_PLUGIN_PATH", "{d}/libjunk.so"),
        Case::new(
            p,
            "validate with a junk plugin dir",
            &["--plugin-dir", "{d}/plugins", "validate", "{d}/c.toml"],
            0,
            &["warning", "libjunk.so"],
        )
        .file("plugins/libjunk.so", Vec::new())
        .file("c.toml", BASE),
        // Broken libraries are skipped with a warning wherever they are named.
        Case::new(
            p,
            "config plugins entry is junk",
            &["validate", "{d}/c.toml"],
            0,
            &["warning", "libjunk.so"],
        )
        .file(
            "c.toml",
            base_with(&[("seed = 0", "seed = 0\nplugins = [\"libjunk.so\"]")]),
        )
        .file("libjunk.so", "junk"),
        Case::new(
            p,
            "junk plugin, then an unknown method from it",
            &["--plugin-dir", "{d}/libjunk.so", "validate", "{d}/c.toml"],
            2,
            &["libjunk.so", "/unlearn/0/method"],
        )
        .file("libjunk.so", "junk")
        .file(
            "c.toml",
            base_with(&[("method = \"FT\"", "method = \"MyPlugin\"")]),
        ),
    ]
}

fn cli_cases() -> Vec<Case> {
    let o = "cli";
    vec![
        Case::new(
            o,
            "run --dry-run --cache a file",
            &["run", "{d}/c.toml", "--dry-run", "--cache", "{d}/afile"],
            2,
            &["cache", "afile"],
        )
        .file("afile", "x")
        .file("c.toml", BASE),
        // `run` checks what `validate` checks, before any training.
        run(
            "data",
            "run: corrupt image",
            &base_with(&[(SYNTHETIC, "dataset = \"image_folder\"\ndir = \"img\"")]),
            &["/data/dir", "bad.png"],
        )
        .files(&image_folder())
        .file(
            "img/train/red/bad.png",
            b"\x89PNG\r\n\x1a\ngarbage".to_vec(),
        ),
        run(
            "config",
            "run: plugins path missing",
            &base_with(&[("seed = 0", "seed = 0\nplugins = [\"no-such-plugins\"]")]),
            &["/plugins/0", "no-such-plugins"],
        ),
        Case::new(
            o,
            "schema of an empty name",
            &["schema", ""],
            2,
            &["unknown method"],
        ),
        Case::new(
            o,
            "plugin new with a bad name",
            &["plugin", "new", "bad name!", "--dir", "{d}"],
            2,
            &["bad name!"],
        ),
        Case::new(
            o,
            "plugin new --dir a file",
            &["plugin", "new", "good", "--dir", "{d}/afile"],
            2,
            &["afile exists and is not a folder"],
        )
        .file("afile", "x"),
        Case::new(
            o,
            "plugin new --sdk missing",
            &[
                "plugin",
                "new",
                "good",
                "--dir",
                "{d}",
                "--sdk",
                "{d}/no-sdk",
            ],
            2,
            &["--sdk", "no-sdk"],
        ),
        Case::new(o, "unknown subcommand", &["frobnicate"], 2, &["frobnicate"]),
        Case::new(
            o,
            "unknown flag",
            &["validate", "--frob", "x.toml"],
            2,
            &["--frob"],
        ),
        Case::new(
            o,
            "unknown --arch",
            &["--arch", "resnet9000", "list"],
            2,
            &["resnet9000"],
        ),
        Case::new(
            o,
            "unknown --device",
            &["--device", "tpu", "info"],
            2,
            &["tpu"],
        ),
        Case::new(
            o,
            "list --kind unknown",
            &["list", "--kind", "wizard"],
            2,
            &["wizard"],
        ),
        Case::new(
            o,
            "schema of an unknown scenario",
            &["schema", "--scenario", "klass"],
            2,
            &["klass"],
        ),
        Case::new(
            o,
            "info --device cuda:99",
            &["--device", "cuda:99", "info"],
            2,
            &["cuda:99"],
        ),
        run(o, "run --device cuda:99", BASE, &["cuda"]).with_args(&[
            "--device",
            "cuda:99",
            "-q",
            "run",
            "{d}/c.toml",
            "--out",
            "{d}/out",
        ]),
        run(
            o,
            "run --cache is a file",
            BASE,
            &[
                "stage cache cannot be created",
                "cache/c",
                "is not a folder",
            ],
        )
        .file("cache", "x")
        .with_args(&[
            "--device",
            "cpu",
            "-q",
            "run",
            "{d}/c.toml",
            "--out",
            "{d}/out",
            "--cache",
            "{d}/cache/c",
        ]),
        run(
            o,
            "run of an invalid config",
            &base_with(&[("lr = 0.05", "lr = nan")]),
            &["/train/lr"],
        ),
        Case::new(
            o,
            "report without results.json",
            &["report", "{d}/run"],
            2,
            &["results.json"],
        )
        .dir("run"),
        Case::new(
            o,
            "report on a corrupt results.json",
            &["report", "{d}/run"],
            2,
            &["results.json"],
        )
        .file("run/results.json", "{\"rows\": [1,"),
        Case::new(
            o,
            "report on another program's JSON",
            &["report", "{d}/run"],
            2,
            &["results.json"],
        )
        .file("run/results.json", "{\"rows\": 3}"),
        Case::new(
            o,
            "report on a missing folder",
            &["report", "{d}/nothing"],
            2,
            &["nothing"],
        ),
    ]
}

/// The study layer: output folders (which only unlearn's own, never two runs at once, a dry
/// run writes nothing), `report` on inconsistent results, `bench`'s folder and flags, settings
/// that cannot mean what they say, defaults that scale with the schedule, and messages that
/// name the valid alternatives.
fn study_cases(results: &Value) -> Vec<Case> {
    let st = "study";
    let run_args = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = ["--device", "cpu", "-q", "run", "{d}/c.toml"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run_case = |name: &str, extra: &[&str], code: i32, needles: &[&str]| {
        let args = run_args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Case::new(st, name, &args, code, needles).file("c.toml", BASE)
    };
    let bench = |name: &str, args: &[&str], needles: &[&str]| {
        let mut a = vec![
            "--device",
            "cpu",
            "bench",
            "--archs",
            "small-cnn",
            "--size",
            "8",
        ];
        a.extend(args);
        Case::new(st, name, &a, 2, needles)
    };
    // A run's folder whose results.json is edited by `edit`.
    let report = |name: &str, edit: &dyn Fn(&mut Value), needles: &[&str]| {
        let mut v = results.clone();
        edit(&mut v);
        Case::new(st, name, &["report", "{d}/run"], 2, needles)
            .file("run/.unlearn-output", "")
            .file("run/results.json", serde_json::to_vec_pretty(&v).unwrap())
            .file("run/report.md", "the last good report")
            .untouched()
    };
    let marker_of_run = r#"{"note": "", "made_by": "run", "unlearn": "0.1.0", "files": []}"#;
    let ok = |name: &str, text: String, stdout: &[&str]| {
        Case::new(st, name, &["validate", "{d}/c.toml"], 0, &[])
            .file("c.toml", text)
            .prints(stdout)
    };
    let cfg = |name: &str, edits: &[(&str, &str)], needles: &[&str]| {
        validate(st, name, &base_with(edits), needles)
    };
    vec![
        // Where unlearn writes.
        run_case(
            "dry run into a new folder",
            &["--out", "{d}/new", "--dry-run"],
            0,
            &[],
        )
        .untouched(),
        run_case(
            "dry run into a foreign folder",
            &["--out", "{d}/theirs", "--dry-run"],
            0,
            &[],
        )
        .file("theirs/data.csv", "1,2")
        .untouched(),
        run_case(
            "dry run with a new shared cache",
            &["--out", "{d}/o", "--cache", "{d}/shared", "--dry-run"],
            0,
            &[],
        )
        .untouched(),
        run_case(
            "run --cache inside the outputs (models)",
            &["--out", "{d}/o", "--cache", "{d}/o/models"],
            2,
            &["o/models", "where the run writes its own outputs"],
        )
        .untouched(),
        run_case(
            "run --cache is the output folder",
            &["--out", "{d}/o", "--cache", "{d}/o"],
            2,
            &["where the run writes its own outputs"],
        )
        .untouched(),
        run_case(
            "run --out is a file",
            &["--out", "{d}/f"],
            2,
            &["output folder", "/f exists and is not a folder"],
        )
        .file("f", "x")
        .untouched(),
        run_case(
            "run --out below a file",
            &["--out", "{d}/f/out"],
            2,
            &["is not a folder"],
        )
        .file("f", "x")
        .untouched(),
        run_case(
            "run with a file where its figures go",
            &["--out", "{d}/o"],
            2,
            &["o/plots", "exists and is not a folder"],
        )
        .file("o/.unlearn-output", marker_of_run)
        .file("o/plots", "x"),
        run_case(
            "run with a folder where its results.json goes",
            &["--out", "{d}/o"],
            2,
            &["o/results.json", "is a folder"],
        )
        .file("o/.unlearn-output", marker_of_run)
        .dir("o/results.json"),
        run_case(
            "run into a folder a run is writing",
            &["--out", "{d}/busy"],
            2,
            &["in use by another unlearn process", "pid", "(the corpus)"],
        )
        .file("busy/.unlearn-output", marker_of_run)
        .locked("busy/.unlearn-lock"),
        run_case(
            "run into bench's folder",
            &["--out", "{d}/b"],
            2,
            &["holds the output of `unlearn bench`"],
        )
        .file(
            "b/.unlearn-output",
            r#"{"note": "", "made_by": "bench", "unlearn": "0.1.0", "files": ["bench.md"]}"#,
        )
        .file("b/bench.md", "measured")
        .untouched(),
        // `report` on folders and results it must not draw.
        Case::new(
            st,
            "report on a foreign folder",
            &["report", "{d}/theirs"],
            2,
            &["not made by unlearn"],
        )
        .file("theirs/results.json", serde_json::to_vec(results).unwrap())
        .file("theirs/report.md", "my own report")
        .untouched(),
        report(
            "report RA = 1e200",
            &|v| v["rows"][0]["metrics"]["ra"] = 1e200.into(),
            &["rows[0].metrics.ra", "1e200"],
        ),
        report(
            "report TA below 0",
            &|v| v["rows"][1]["metrics"]["ta"] = (-5.0).into(),
            &["rows[1].metrics.ta"],
        ),
        report(
            "report MIA above 100",
            &|v| v["rows"][0]["metrics"]["mia_efficacy"]["confidence"]["value"] = 150.0.into(),
            &["rows[0].metrics.mia_efficacy", "150"],
        ),
        report(
            "report negative RTE",
            &|v| v["rows"][1]["rte"] = (-1.0).into(),
            &["rows[1].rte"],
        ),
        report(
            "report repeated row",
            &|v| {
                let r = v["rows"][1].clone();
                v["rows"].as_array_mut().unwrap().push(r);
            },
            &["repeats the row", "another seed"],
        ),
        report(
            "report row of an unknown seed",
            &|v| v["rows"][0]["seed"] = 9.into(),
            &["rows[0].seed 9"],
        ),
        report(
            "report row of an unknown scenario",
            &|v| v["rows"][0]["scenario"] = "class-9".into(),
            &["rows[0].scenario `class-9`"],
        ),
        report(
            "report model file outside the folder",
            &|v| v["models"][0]["file"] = "../../elsewhere.safetensors".into(),
            &["models[0].file", "not a path inside"],
        ),
        report(
            "report sparsity above 1",
            &|v| v["models"][1]["sparsity"] = 80.0.into(),
            &["models[1].sparsity"],
        ),
        // `bench`: its folder and its flags.
        bench(
            "bench into a foreign folder",
            &["--out", "{d}/theirs"],
            &["not made by unlearn"],
        )
        .file("theirs/bench.md", "my notes")
        .untouched(),
        bench(
            "bench into a run's folder",
            &["--out", "{d}/run"],
            &["`unlearn run`, not of `unlearn bench`"],
        )
        .file("run/.unlearn-output", marker_of_run)
        .untouched(),
        bench(
            "bench --out is a file",
            &["--out", "{d}/f"],
            &["is not a folder"],
        )
        .file("f", "x")
        .untouched(),
        Case::new(
            st,
            "bench --channels-last --contiguous-only",
            &[
                "--channels-last",
                "bench",
                "--contiguous-only",
                "--out",
                "{d}/b",
            ],
            2,
            &["contradict"],
        )
        .untouched(),
        bench(
            "bench sweep beyond the samples",
            &["--samples", "512", "--sweep", "64,1024", "--out", "{d}/b"],
            &["--sweep 1024", "--samples 512"],
        )
        .untouched(),
        bench(
            "bench batch beyond the samples",
            &["--samples", "512", "--batch", "600", "--out", "{d}/b"],
            &["--batch 600"],
        )
        .untouched(),
        bench(
            "bench one class",
            &["--classes", "1", "--out", "{d}/b"],
            &["--classes must be from 2"],
        )
        .untouched(),
        // Settings that cannot mean what they say.
        cfg(
            "IMP pt without a validation split",
            &[
                ("val_fraction = 0.1", "val_fraction = 0.0"),
                (
                    "method = \"OMP\"\nsparsity = 0.8\nrewind_epoch = 1",
                    "method = \"IMP\"\nrounds = 1\nrewind = \"pt\"",
                ),
            ],
            &["/prune/rewind", "no validation set"],
        ),
        cfg(
            "Blended alpha that changes no pixel",
            &[
                (PRUNE, ""),
                (FORGET, ""),
                (
                    "[[unlearn]]",
                    "[attack]\nmethod = \"Blended\"\nn = 20\nalpha = 1e-9\n[[unlearn]]",
                ),
            ],
            &["/attack", "changes no pixel"],
        ),
        cfg(
            "a sweep of sparsities too close to tell apart",
            &[("sparsity = 0.8", "sparsity = [0.5, 0.50000000000001]")],
            &["/prune/sparsity", "too little to tell"],
        ),
        cfg(
            "SCRUB temperature 1e-300",
            &[(
                "method = \"FT\"",
                "method = \"SCRUB\"\ntemperature = 1e-300",
            )],
            &["/unlearn/0/temperature"],
        ),
        cfg(
            "Adam with eps = 0",
            &[(
                "milestones = []",
                "milestones = []\noptimizer = \"adam\"\neps = 0.0",
            )],
            &["/train/eps"],
        ),
        // Messages that name the alternatives.
        cfg(
            "subset with an unknown key",
            &[("[train]", "[data.subset]\nper_klass = 3\n[train]")],
            &[
                "/data/subset",
                "per_klass",
                "allowed here",
                "`per_class`",
                "`fraction`",
            ],
        ),
        cfg(
            "attack without method",
            &[
                (PRUNE, ""),
                (FORGET, ""),
                ("[[unlearn]]", "[attack]\nn = 20\n[[unlearn]]"),
            ],
            &["/attack", "required", "BadNets", "Blended"],
        ),
        cfg(
            "prune without method",
            &[("method = \"OMP\"\n", "")],
            &["/prune", "OMP", "SynFlow"],
        ),
        cfg(
            "optimizer not known",
            &[(
                "milestones = []",
                "milestones = []\noptimizer = \"rmsprop\"",
            )],
            &["/train/optimizer", "\"sgd\", \"adam\", \"adamw\""],
        ),
        // Defaults that scale with the schedule, and sweep labels that tell values apart.
        ok(
            "retrain with 10 epochs and no milestones",
            base_with(&[(
                "[[unlearn]]",
                "[[unlearn]]\nmethod = \"retrain\"\nepochs = 10\n[[unlearn]]",
            )]),
            &["valid"],
        ),
        ok(
            "train with 10 epochs and no milestones",
            base_with(&[(
                "epochs = 4\nlr = 0.05\nbatch_size = 32\nmilestones = []",
                "epochs = 10\nlr = 0.05\nbatch_size = 32",
            )]),
            &["valid"],
        ),
        ok(
            "a sweep of sparsities that round alike",
            base_with(&[("sparsity = 0.8", "sparsity = [0.5, 0.5001]")]),
            &["OMP 50%, OMP 50.01%"],
        ),
    ]
}

/// The model and results.json a real run of BASE writes, as the checkpoint and report cases'
/// starting point.
fn dense_checkpoint() -> (Vec<u8>, Value) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("base.toml"), BASE).unwrap();
    let o = common::unlearn(&[
        "--device",
        "cpu",
        "-q",
        "run",
        dir.path().join("base.toml").to_str().unwrap(),
        "--out",
        dir.path().join("out").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let results =
        serde_json::from_slice(&std::fs::read(dir.path().join("out/results.json")).unwrap())
            .unwrap();
    (
        std::fs::read(dir.path().join("out/models/dense.safetensors")).unwrap(),
        results,
    )
}

/// Every entry under `dir` (relative path -> content; folders as empty).
fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().into_owned();
            if p.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                walk(base, &p, out);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Runs one case; the reasons it fails, if any.
fn check(case: &Case) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for (path, entry) in &case.files {
        let p = dir.path().join(path);
        match entry {
            Entry::Dir => std::fs::create_dir_all(&p).unwrap(),
            Entry::File(bytes) => {
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(&p, bytes).unwrap();
            }
        }
    }
    let args: Vec<String> = case.args.iter().map(|a| a.replace("{d}", d)).collect();
    // Held until the command ended, with a holder record as unlearn writes one.
    let _held = case.locked.as_ref().map(|rel| {
        let path = dir.path().join(rel);
        let mut f = std::fs::File::create(&path).unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let record = json!({"pid": std::process::id(), "host": "corpus-host", "since": now,
                            "beat": now + 3600, "what": "the corpus"});
        std::io::Write::write_all(&mut f, record.to_string().as_bytes()).unwrap();
        f.lock().unwrap();
        f
    });
    let before = snapshot(dir.path());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_unlearn"));
    cmd.args(&args)
        .env_remove("UNLEARN_PLUGIN_PATH")
        .env("OMP_NUM_THREADS", "1");
    for (k, v) in &case.env {
        cmd.env(k, v.replace("{d}", d));
    }
    let t0 = std::time::Instant::now();
    let o = cmd.output().expect("the binary runs");
    let seconds = t0.elapsed().as_secs_f64();
    let (err, out) = (stderr(&o), stdout(&o));
    let mut problems = Vec::new();
    match o.status.code() {
        Some(c) if c == case.code => {}
        Some(c @ (101 | 134 | 139)) => problems.push(format!("exit {c}: a panic or abort")),
        Some(c) => problems.push(format!("exit {c}, expected {}", case.code)),
        None => problems.push("killed by a signal (an abort or a crash)".into()),
    }
    if err.contains("panicked") || err.contains("RUST_BACKTRACE") {
        problems.push("stderr shows a panic".into());
    }
    for n in &case.needles {
        if !err.contains(n.as_str()) {
            problems.push(format!("stderr lacks `{n}`"));
        }
    }
    if case.code != 0
        && args.iter().any(|a| a == "run")
        && Path::new(d).join("out/results.json").exists()
    {
        problems.push("a failing run wrote results.json".into());
    }
    for n in &case.stdout_needles {
        if !out.contains(n.as_str()) {
            problems.push(format!("stdout lacks `{n}`"));
        }
    }
    if case.untouched {
        let after = snapshot(dir.path());
        if after != before {
            let changed: Vec<&String> = after
                .keys()
                .chain(before.keys())
                .filter(|k| after.get(*k) != before.get(*k))
                .collect();
            problems.push(format!("it wrote into the case's folder: {changed:?}"));
        }
    }
    // UNLEARN_CORPUS_SHOW=1 prints what every case got, to review the messages themselves.
    if std::env::var_os("UNLEARN_CORPUS_SHOW").is_some() {
        eprintln!(
            "=== [{}] {} -> {:?} ({seconds:.1} s)\n{}",
            case.category,
            case.name,
            o.status.code(),
            err.trim_end()
        );
    }
    if problems.is_empty() {
        return problems;
    }
    vec![format!(
        "[{}] {}: {}\n    argv: {}\n    stderr: {}\n    stdout: {}",
        case.category,
        case.name,
        problems.join("; "),
        args.join(" "),
        err.trim_end().replace('\n', "\n            "),
        out.chars().take(300).collect::<String>().trim_end()
    )]
}

#[test]
fn bad_inputs_are_exit_2_errors_that_name_the_field_or_file() {
    let started = std::time::Instant::now();
    let (dense, results) = dense_checkpoint();
    let mut cases = config_cases();
    cases.extend(study_cases(&results));
    cases.extend(index_cases());
    cases.extend(checkpoint_cases(&dense));
    cases.extend(checkpoint_header_cases(&dense));
    cases.extend(data_cases());
    cases.extend(data_size_cases());
    cases.extend(plugin_cases());
    cases.extend(cli_cases());
    let names: std::collections::HashSet<_> =
        cases.iter().map(|c| (c.category, c.name.clone())).collect();
    assert_eq!(names.len(), cases.len(), "case names are unique");

    let (known, live): (Vec<&Case>, Vec<&Case>) =
        cases.iter().partition(|c| c.known_defect.is_some());
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    // Each case is a process of its own; a few at once keep a small machine busy, not swamped.
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(case) = live.get(i) else { break };
                    let f = check(case);
                    failures.lock().unwrap().extend(f);
                }
            });
        }
    });
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for c in &live {
        *per.entry(c.category).or_default() += 1;
    }
    eprintln!(
        "corpus: {} cases run ({}), {} known defects listed, {:.1} s",
        live.len(),
        per.iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        known.len(),
        started.elapsed().as_secs_f64()
    );
    for c in &known {
        eprintln!(
            "  known defect, not run: [{}] {}: {}",
            c.category,
            c.name,
            c.known_defect.unwrap()
        );
    }
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
