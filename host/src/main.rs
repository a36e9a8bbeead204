//! `unlearn`: a thin CLI over the core library and the method registry.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use unlearn_pipeline::config::{self, ConfigError, Plan};
use unlearn_pipeline::device::{self, DeviceChoice};
use unlearn_pipeline::exec::Precision;
use unlearn_pipeline::method::Kind;
use unlearn_pipeline::model::Arch;
use unlearn_pipeline::pipeline::{self, RunOptions};
use unlearn_pipeline::plugin;
use unlearn_pipeline::registry::Registry;
use unlearn_pipeline::train::Trainer;

mod probe;
mod scaffold;

// Built-in plugins register themselves when linked; naming them here links them.
use unlearn_attack_badnets as _;
use unlearn_attack_blended as _;
use unlearn_fisher as _;
use unlearn_ft as _;
use unlearn_ga as _;
use unlearn_prune_imp as _;
use unlearn_prune_synflow as _;
use unlearn_scrub as _;

/// The built-in demo pipeline (embedded digits).
const DEMO_CONFIG: &str = include_str!("../presets/demo.toml");

#[derive(Parser)]
#[command(
    name = "unlearn",
    version,
    about = "Machine unlearning for image classifiers: prune first, then unlearn"
)]
struct Cli {
    /// Device to run on: auto (CUDA when present), cpu, cuda or cuda:N.
    #[arg(long, global = true, default_value = "auto")]
    device: DeviceChoice,
    /// Print no progress (results and errors only).
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Architecture, overriding the config's `model.arch`: a registered one (`unlearn list
    /// --kind arch`; built in: small-cnn, conv6, resnet18, resnet20, resnet56, vgg16-bn).
    #[arg(long, global = true)]
    arch: Option<Arch>,
    /// Float arithmetic, overriding the config's `model.precision`: fp32, tf32 (TF32 tensor cores
    /// for float32 products on a GPU) or bf16 (autocast mixed precision).
    #[arg(long, global = true)]
    precision: Option<Precision>,
    /// Images and convolution weights in the channels-last memory format (sets the config's
    /// `model.channels_last`).
    #[arg(long, global = true)]
    channels_last: bool,
    /// Load plugin libraries from this folder (every library in it) or file; repeatable. Also
    /// read: UNLEARN_PLUGIN_PATH (folders or files, `:`-separated) and a config's `plugins`.
    #[arg(long = "plugin-dir", global = true, value_name = "DIR")]
    plugin_dirs: Vec<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List registered methods, architectures, forgetting scenarios and metrics.
    List {
        /// Only entries of this kind: pruner, unlearner, attack, arch (architectures), scenario
        /// or metric.
        #[arg(long)]
        kind: Option<ListKind>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print the JSON Schema of a method's config (or of the pipeline config with --config).
    Schema {
        /// A registered method name (a scenario's with --scenario).
        #[arg(required_unless_present = "config")]
        method: Option<String>,
        /// The schema of `unlearn run` config files instead.
        #[arg(long, conflicts_with = "method")]
        config: bool,
        /// The name is a forgetting scenario's: print the schema of its settings.
        #[arg(long, conflicts_with = "config")]
        scenario: bool,
    },
    /// Check a config file (TOML or JSON) without running it; reports every problem at once.
    Validate { config: PathBuf },
    /// Run the pipeline a config file describes.
    Run {
        config: PathBuf,
        /// Output directory (default: runs/<config name>). Re-running into it resumes.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Stage cache to use (default: <out>/cache); several runs can share one, and each
        /// reuses the stages (dense model, sparse models, rows) the others computed.
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Print every stage of the plan, cached or to run, and exit without running anything.
        #[arg(long)]
        dry_run: bool,
        /// Compute the stages in N worker processes (`unlearn stage`), the dense models first,
        /// then the sparse ones, then the rows; with several GPUs each worker takes its own. The
        /// results are those of one process, bit for bit.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
        jobs: u16,
    },
    /// Compute stages of a study into its stage cache, by id (`run --dry-run` lists them; a
    /// unique prefix of at least 6 characters will do), with the models they start from: what
    /// each worker of `run --jobs` does, and what an external scheduler runs per stage. A stage
    /// another process is computing is left to it. Writes no reports: `unlearn run` with the same
    /// config and cache then assembles them.
    Stage {
        config: PathBuf,
        /// Stage ids.
        #[arg(required = true)]
        stages: Vec<String>,
        /// The study's output folder (default: runs/<config name>); only its cache is used.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Stage cache (default: <out>/cache).
        #[arg(long)]
        cache: Option<PathBuf>,
    },
    /// Run the built-in demo on the embedded digits.
    Demo {
        /// Output directory.
        #[arg(long, default_value = "runs/demo")]
        out: PathBuf,
        /// Print the demo's config (a starting point for your own) and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Regenerate report.md, results.csv and the figures (plots/*.png, *.svg) of a finished run
    /// from its results.json alone.
    Report {
        /// The run's output folder (the one given to `run --out`).
        out: PathBuf,
    },
    /// Show libtorch, CUDA, the GPU and the device `--device` resolves to.
    Info,
    /// Measure training and evaluation speed (images/s, s per CIFAR-10 epoch, % of peak FLOP/s)
    /// per architecture, precision and memory format, a batch-size sweep, the PyTorch references
    /// (--references) and the paper methods' run times (--rte). `--arch`, `--precision` and
    /// `--channels-last` narrow the grid to one value.
    Bench(BenchArgs),
    /// Data sets: list the downloadable ones, fetch them.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Plugins: scaffold a new plugin crate, check a built plugin library.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Create a plugin crate (config with schema, the method, the export line, a test) that
    /// builds as a cdylib and passes the conformance suite as it is.
    New {
        /// The method's name (also the crate's and the folder's).
        name: String,
        /// What the method is.
        #[arg(long, default_value = "unlearner")]
        kind: Kind,
        /// Create the crate in this folder (as <dir>/<name>).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Path of the unlearn-api crate the plugin builds against (an unlearn checkout or its
        /// core/api folder; default: the sources this binary was built from).
        #[arg(long)]
        sdk: Option<PathBuf>,
    },
    /// Load one plugin library the way `--plugin-dir` does, report every problem with it, and
    /// run the conformance suite on each of its methods.
    Check {
        /// The library file (e.g. target/release/libmy_plugin.so).
        library: PathBuf,
    },
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Architectures to measure.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "resnet18,resnet20,vgg16-bn"
    )]
    archs: Vec<Arch>,
    /// Batch size of the grid.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Batch sizes of the sweep (first architecture, its fastest setting); `none` for no sweep.
    /// Default: 64,128,256,512,1024, leaving out those larger than --samples.
    #[arg(long, value_delimiter = ',')]
    sweep: Option<Vec<SweepSize>>,
    /// Precisions of the grid.
    #[arg(long, value_delimiter = ',', default_value = "fp32,tf32,bf16")]
    precisions: Vec<Precision>,
    /// Measure only the contiguous memory format (channels-last is measured too by default).
    #[arg(long, conflicts_with = "channels_last")]
    contiguous_only: bool,
    /// Random images per timed epoch (default: 10240 on a GPU, 512 on the CPU).
    #[arg(long)]
    samples: Option<usize>,
    /// Timed epochs, after one warm-up epoch.
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    /// Image side and classes of the random images (CIFAR-10: 32, 10).
    #[arg(long, default_value_t = 32)]
    size: i64,
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// Also run the PyTorch references (the seed's way and a tuned way) from this folder.
    #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = "bench/train")]
    references: Option<PathBuf>,
    /// The Python (with torch) that runs the references (default: $UNLEARN_PYTHON, else
    /// ./.venv/bin/python when there is one, else python3).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Data-loader workers of the seed-style reference.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Also measure the run time of each of the paper's methods (retrain, FT, GA, FF, IU,
    /// l1-sparse) at paper scale.
    #[arg(long)]
    rte: bool,
    /// RTE: training images (the paper: 45000) and the most epochs run per method (the time
    /// is scaled to the method's own epochs).
    #[arg(long, default_value_t = 45_000)]
    rte_samples: usize,
    #[arg(long, default_value_t = 1)]
    rte_epochs: usize,
    /// RTE: the architecture (the paper: resnet18).
    #[arg(long, default_value = "resnet18")]
    rte_arch: Arch,
    /// Folder for bench.json and bench.md.
    #[arg(long, default_value = "runs/bench")]
    out: PathBuf,
}

/// A sweep entry: a batch size, or `none`.
#[derive(Clone, Copy)]
struct SweepSize(Option<usize>);

impl std::str::FromStr for SweepSize {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "none" {
            return Ok(SweepSize(None));
        }
        match s.parse::<usize>() {
            Ok(n) if (1..=1 << 20).contains(&n) => Ok(SweepSize(Some(n))),
            _ => Err(format!("`{s}`: a batch size from 1 to 1048576, or none")),
        }
    }
}

#[derive(Subcommand)]
enum DataCommand {
    /// The data sets `data fetch` knows, with what each downloads.
    List,
    /// Download a data set's official archive(s), verify SHA-256, unpack safely (resumable).
    Fetch {
        /// cifar10, cifar100, svhn, mnist, fashion_mnist or tiny_imagenet.
        name: String,
        /// Where to put it (default: data/<name>).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Fetch `<mirror>/<file name>` instead of the official URL (same bytes, same hash).
        #[arg(long)]
        mirror: Option<String>,
    },
}

fn main() -> ExitCode {
    if let Some(code) = probe::child_main() {
        return code;
    }
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // 130: stopped by Ctrl-C (SIGINT), as shells report it.
            let code = if e.is::<BadInputError>() {
                2
            } else if e.is::<Interrupted>() {
                130
            } else {
                1
            };
            eprintln!("error: {}", render(&e));
            ExitCode::from(code)
        }
    }
}

/// An error and its causes on one line. The library's messages usually include their cause's
/// text already, so a cause whose text is already there is not repeated.
fn render(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let m = cause.to_string();
        if !out.contains(&m) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&m);
        }
    }
    out
}

/// Marks an error as the user's input (arguments, configs, paths): exit code 2, not 1.
#[derive(Debug)]
struct BadInputError(anyhow::Error);
impl std::fmt::Display for BadInputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&render(&self.0))
    }
}
impl std::error::Error for BadInputError {}

/// Marks an error as the user's Ctrl-C: exit code 130.
#[derive(Debug)]
struct Interrupted(anyhow::Error);
impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&render(&self.0))
    }
}
impl std::error::Error for Interrupted {}

fn bad(e: impl Into<anyhow::Error>) -> anyhow::Error {
    BadInputError(e.into()).into()
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    // A worker of `run --jobs` says which one it is on every line.
    let worker = std::env::var("UNLEARN_WORKER").ok();
    let notify = |msg: &str| {
        if !cli.quiet {
            match &worker {
                Some(w) => eprintln!("[unlearn worker {w}] {msg}"),
                None => eprintln!("[unlearn] {msg}"),
            }
        }
    };
    // A config's own `plugins` join the command line's and the environment's.
    let config_plugins = match &cli.command {
        Command::Validate { config }
        | Command::Run { config, .. }
        | Command::Stage { config, .. } => config::read_config_file(config)
            .map(|raw| config::plugin_paths(&raw, config.parent().unwrap_or(Path::new("."))))
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    let mut plugin_paths = cli.plugin_dirs.clone();
    if let Some(env) = std::env::var_os("UNLEARN_PLUGIN_PATH") {
        plugin_paths.extend(std::env::split_paths(&env).filter(|p| !p.as_os_str().is_empty()));
    }
    plugin_paths.extend(config_plugins);
    let mut registry = Registry::builtin().context("building the method registry")?;
    // A broken library is reported and skipped: every other method still works. Each is tried
    // in a child process first, so that one that crashes whoever loads it costs only that child.
    for problem in plugin::host::extend_probed(&mut registry, &plugin_paths, &probe::probe) {
        eprintln!("warning: plugin skipped: {problem}");
    }
    let overrides = cli.model_overrides();
    match cli.command {
        Command::List { kind, json } => list(&registry, kind, json),
        Command::Schema {
            method,
            config,
            scenario,
        } => {
            let schema = match method {
                Some(name) if scenario => (unlearn_pipeline::scenario::find(&name)
                    .map_err(|e| bad(anyhow::anyhow!(e)))?
                    .schema)(),
                Some(name) if !config => registry.get(&name).map_err(bad)?.schema.clone(),
                _ => config::pipeline_schema(),
            };
            println!("{}", serde_json::to_string_pretty(&schema)?);
            Ok(())
        }
        Command::Validate { config } => {
            let plan = load_plan(&registry, &config, &overrides)?;
            let pruners: Vec<&str> = plan.pruners.iter().map(|p| p.label.as_str()).collect();
            println!(
                "{}: valid ({} scenario(s), {} unlearner(s){}{})",
                config.display(),
                plan.forget.len(),
                plan.unlearners.len(),
                match pruners.len() {
                    0 => String::new(),
                    1 => format!(", pruner {}", pruners[0]),
                    _ => format!(", pruners {}", pruners.join(", ")),
                },
                match plan.seeds.len() {
                    1 => String::new(),
                    n => format!(", {n} seeds"),
                }
            );
            Ok(())
        }
        Command::Run {
            config,
            out,
            cache,
            dry_run,
            jobs,
        } => {
            let plan = load_plan(&registry, &config, &overrides)?;
            let out = out.unwrap_or_else(|| default_out(&config));
            if dry_run {
                return print_plan(&plan, &cache.unwrap_or_else(|| out.join("cache")));
            }
            let what = format!("unlearn run {}", config.display());
            let cache_dir = cache.clone().unwrap_or_else(|| out.join("cache"));
            let globals = Globals {
                device: cli.device,
                quiet: cli.quiet,
                overrides: &overrides,
                plugin_dirs: &cli.plugin_dirs,
            };
            let command = worker_command(globals, &config, &out, &cache_dir, jobs as usize)?;
            let workers = (jobs > 1).then_some(pipeline::Workers {
                count: jobs as usize,
                command: &command,
            });
            execute(
                &plan, cli.device, &out, cache, &what, cli.quiet, &notify, workers,
            )
        }
        Command::Stage {
            config,
            stages,
            out,
            cache,
        } => {
            let plan = load_plan(&registry, &config, &overrides)?;
            let out = out.unwrap_or_else(|| default_out(&config));
            let selection =
                pipeline::select(&plan, &stages).map_err(|e| bad(anyhow::anyhow!(e)))?;
            let device = cli.device.resolve().map_err(bad)?;
            let opts = RunOptions {
                device,
                out_dir: out,
                what: format!("unlearn stage {}", config.display()),
                cache_dir: cache,
                // Workers draw no progress bars: several would share one terminal.
                trainer: interruptible_trainer(device, !cli.quiet && worker.is_none()),
                notify: &notify,
                workers: None,
            };
            let done = pipeline::run_stages(&plan, &opts, &selection).map_err(pipeline_error)?;
            notify(&format!(
                "{} stage(s): {} computed, {} already cached, {} left to the process computing them",
                stages.len(),
                done.computed,
                done.cached,
                done.left
            ));
            Ok(())
        }
        Command::Demo { out, print_config } => {
            if print_config {
                print!("{DEMO_CONFIG}");
                return Ok(());
            }
            let mut raw = config::parse_config_text(DEMO_CONFIG, false)
                .map_err(|(_, m)| anyhow::anyhow!("built-in demo config: {m}"))?;
            override_model(&mut raw, &overrides);
            let plan = config::plan(&raw, &registry, Path::new(".")).map_err(|issues| {
                ConfigError::Invalid {
                    path: "<built-in demo>".into(),
                    issues,
                }
            })?;
            execute(
                &plan,
                cli.device,
                &out,
                None,
                "unlearn demo",
                cli.quiet,
                &notify,
                None,
            )
        }
        Command::Data { command } => data(command, cli.quiet),
        Command::Bench(args) => {
            let device = cli.device.resolve().map_err(bad)?;
            bench(args, device, &overrides, &notify)
        }
        Command::Plugin { command } => match command {
            PluginCommand::New {
                name,
                kind,
                dir,
                sdk,
            } => {
                let made = scaffold::new_plugin(&scaffold::NewPlugin {
                    name,
                    kind,
                    dir,
                    sdk,
                })
                .map_err(bad)?;
                println!("{}", made.display());
                Ok(())
            }
            PluginCommand::Check { library } => check_plugin(&library),
        },
        Command::Report { out } => report(&out, &notify),
        Command::Info => {
            let r = device::report();
            let chosen = cli.device.resolve().map_err(bad)?;
            println!("unlearn {}", env!("CARGO_PKG_VERSION"));
            println!("libtorch {}", r.libtorch);
            println!(
                "cuda available: {} ({} device(s)), cudnn: {}",
                r.cuda_available, r.cuda_devices, r.cudnn_available
            );
            println!(
                "libtorch cuda runtime: {}, cudnn: {}",
                r.cuda_runtime
                    .as_deref()
                    .unwrap_or("none (a CPU-only build)"),
                r.cudnn.as_deref().unwrap_or("none")
            );
            println!(
                "cpu threads: {}, cpu kernels: {}",
                r.cpu_threads, r.cpu_capability
            );
            for g in &r.gpus {
                println!(
                    "gpu {}: {}, {:.1} GiB, compute capability {}.{}, {} SMs at {:.0} MHz, driver CUDA {}",
                    g.index,
                    g.name,
                    g.memory_bytes as f64 / (1u64 << 30) as f64,
                    g.compute_capability.0,
                    g.compute_capability.1,
                    g.multiprocessors,
                    g.clock_khz as f64 / 1000.0,
                    g.driver_cuda
                );
            }
            if r.gpus.is_empty() && r.cuda_devices > 0 {
                println!(
                    "gpu: libtorch sees {} device(s), but the CUDA driver library did not describe them",
                    r.cuda_devices
                );
            }
            println!("device: {}", device::device_name(chosen));
            Ok(())
        }
    }
}

/// `unlearn bench`: measure, print the tables, write bench.json and bench.md.
fn bench(
    a: BenchArgs,
    device: unlearn_pipeline::tch::Device,
    o: &ModelOverrides,
    notify: &dyn Fn(&str),
) -> Result<()> {
    use unlearn_pipeline::bench::{self, BenchOptions, References, RteOptions};
    for (name, v, min) in [
        ("--batch", a.batch, 1),
        ("--epochs", a.epochs, 1),
        ("--classes", a.classes, 2),
    ] {
        if v < min || v > 1 << 20 {
            return Err(bad(anyhow::anyhow!(
                "{name} must be from {min} to 1048576, not {v}"
            )));
        }
    }
    if !(8..=1024).contains(&a.size) {
        return Err(bad(anyhow::anyhow!(
            "--size must be from 8 to 1024, not {}",
            a.size
        )));
    }
    if o.channels_last && a.contiguous_only {
        return Err(bad(anyhow::anyhow!(
            "--channels-last (measure only channels-last) and --contiguous-only (measure only the contiguous format) contradict each other: give one"
        )));
    }
    let samples = a
        .samples
        .unwrap_or(if device.is_cuda() { 10_240 } else { 512 });
    if samples < a.classes || samples > 1 << 22 {
        return Err(bad(anyhow::anyhow!(
            "--samples must be from --classes ({}) to 4194304, not {samples}",
            a.classes
        )));
    }
    // A row is labelled with its batch size: a batch larger than the images it runs on would
    // measure another size than its label says.
    if a.batch > samples {
        return Err(bad(anyhow::anyhow!(
            "--batch {} is larger than --samples {samples}: a batch cannot hold more images than are measured",
            a.batch
        )));
    }
    let sweep: Vec<usize> = match &a.sweep {
        Some(given) => {
            let sizes: Vec<usize> = given.iter().filter_map(|s| s.0).collect();
            if let Some(b) = sizes.iter().find(|&&b| b > samples) {
                return Err(bad(anyhow::anyhow!(
                    "--sweep {b} is larger than --samples {samples}: a batch cannot hold more images than are measured (raise --samples or leave {b} out)"
                )));
            }
            sizes
        }
        None => {
            let (keep, skip): (Vec<usize>, Vec<usize>) = [64, 128, 256, 512, 1024]
                .iter()
                .partition(|&&b| b <= samples);
            if !skip.is_empty() {
                notify(&format!(
                    "sweep: batch {} left out (larger than the {samples} images measured; raise --samples to include it)",
                    skip.iter()
                        .map(|b| b.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            keep
        }
    };
    if a.rte && !(100..=1 << 22).contains(&a.rte_samples) {
        return Err(bad(anyhow::anyhow!(
            "--rte-samples must be from 100 to 4194304"
        )));
    }
    let python = a
        .python
        .or_else(|| std::env::var_os("UNLEARN_PYTHON").map(PathBuf::from))
        .or_else(|| Some(PathBuf::from(".venv/bin/python")).filter(|p| p.is_file()))
        .unwrap_or_else(|| PathBuf::from("python3"));
    let archs = o.arch.map_or(a.archs, |x| vec![x]);
    let precisions = o.precision.map_or(a.precisions, |p| vec![p]);
    let formats = if o.channels_last {
        vec![true]
    } else if a.contiguous_only {
        vec![false]
    } else {
        vec![false, true]
    };
    let opts = BenchOptions {
        device,
        archs,
        batch: a.batch,
        sweep,
        precisions,
        formats,
        samples,
        epochs: a.epochs,
        size: a.size,
        classes: a.classes,
        references: a.references.map(|dir| References {
            python,
            dir,
            workers: a.workers,
        }),
        rte: a.rte.then(|| RteOptions {
            arch: a.rte_arch,
            train_samples: a.rte_samples,
            max_epochs: a.rte_epochs.max(1),
            execution: None,
        }),
    };
    // Claimed before measuring: a folder that is not unlearn bench's is refused at once.
    let out = unlearn_pipeline::output::OutputDir::claim(
        &a.out,
        unlearn_pipeline::output::Producer::Bench,
        "unlearn bench",
    )
    .map_err(bad)?;
    out.check_layout(&[], &["bench.json", "bench.md"])
        .map_err(bad)?;
    let report = bench::run(&opts, notify).map_err(bad)?;
    let md = bench::markdown(&report);
    println!("{md}");
    let json = serde_json::to_vec_pretty(&report)?;
    out.write("bench.json", &json)?;
    out.write("bench.md", md.as_bytes())?;
    out.finish()?;
    notify(&format!(
        "wrote {} and {}",
        a.out.join("bench.json").display(),
        a.out.join("bench.md").display()
    ));
    Ok(())
}

/// `plugin check`: strict loading of one library, then the conformance suite on its methods.
fn check_plugin(path: &Path) -> Result<()> {
    if !plugin::host::is_loaded(path) && path.is_file() {
        probe::probe(path).map_err(bad)?;
    }
    let lib = plugin::host::load(path).map_err(bad)?;
    println!(
        "{}: {} {} (plugin ABI {}.{}, this unlearn {}.{}; libtorch {}), {} method(s)",
        lib.path.display(),
        lib.name,
        lib.version,
        lib.abi.0,
        lib.abi.1,
        plugin::abi::ABI_MAJOR,
        plugin::abi::ABI_MINOR,
        lib.libtorch,
        lib.methods.len()
    );
    let mut failures: Vec<String> = lib.rejected.iter().map(|e| e.to_string()).collect();
    // Names must also be free among the built-ins.
    let mut registry = Registry::builtin().context("building the method registry")?;
    for m in lib.methods {
        let name = m.name.clone();
        let kind = m.kind;
        if let Err(e) = registry.add(m) {
            failures.push(e.to_string());
            continue;
        }
        let method = registry.get(&name).expect("just added");
        let problems = unlearn_pipeline::conformance::check(method);
        println!(
            "  {:<9}  {:<16}  {:<8}  (crate {})",
            kind.name(),
            name,
            if problems.is_empty() {
                "conforms"
            } else {
                "FAILS"
            },
            lib.crates.get(&name).map_or("?", String::as_str)
        );
        failures.extend(problems);
    }
    if failures.is_empty() {
        Ok(())
    } else {
        for f in &failures {
            eprintln!("  - {f}");
        }
        Err(anyhow::anyhow!(
            "{}: {} problem(s)",
            path.display(),
            failures.len()
        ))
    }
}

fn data(command: DataCommand, quiet: bool) -> Result<()> {
    use unlearn_pipeline::data::fetch::{self, FetchError, FetchOptions};
    match command {
        DataCommand::List => {
            for e in fetch::catalog() {
                println!("{:<14} {}", e.name, e.description);
            }
            Ok(())
        }
        DataCommand::Fetch { name, dir, mirror } => {
            let dir = dir.unwrap_or_else(|| Path::new("data").join(&name));
            let opts = FetchOptions {
                mirror,
                progress: !quiet,
            };
            match fetch::fetch(&name, &dir, &opts) {
                Ok(report) => {
                    println!("{}", report.summary());
                    Ok(())
                }
                Err(
                    e @ (FetchError::UnknownDataset { .. }
                    | FetchError::ExistingMismatch { .. }
                    | FetchError::NotADirectory { .. }
                    | FetchError::BadMirror { .. }
                    | FetchError::DestinationExists { .. }),
                ) => Err(bad(e)),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// What `unlearn list --kind` selects: a kind of method, or one of the other registries.
#[derive(Debug, Clone, Copy, PartialEq)]
enum ListKind {
    Method(Kind),
    Arch,
    Scenario,
    Metric,
}

impl std::str::FromStr for ListKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "arch" => Ok(ListKind::Arch),
            "scenario" => Ok(ListKind::Scenario),
            "metric" => Ok(ListKind::Metric),
            _ => s.parse().map(ListKind::Method).map_err(|_| {
                format!(
                    "unknown kind `{s}`: expected pruner, unlearner, attack, arch, scenario or metric"
                )
            }),
        }
    }
}

/// Registered methods (of a kind), architectures, scenarios and metrics, as a table or JSON
/// (`kind`, `name`, `summary`, `source`).
fn list(registry: &Registry, kind: Option<ListKind>, json: bool) -> Result<()> {
    // (kind, name, source, summary)
    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    let shows = |k: ListKind| kind.is_none() || kind == Some(k);
    let methods = match kind {
        None => Some(None),
        Some(ListKind::Method(k)) => Some(Some(k)),
        Some(_) => None,
    };
    if let Some(k) = methods {
        rows.extend(registry.list(k).map(|m| {
            let kind = m.kind.name().to_string();
            (
                kind,
                m.name.clone(),
                m.source.to_string(),
                m.summary.clone(),
            )
        }));
    }
    let built_in = |krate: &str| format!("built-in ({krate})");
    if shows(ListKind::Arch) {
        rows.extend(Arch::registered().into_iter().map(|d| {
            (
                "arch".into(),
                d.name.into(),
                built_in(d.krate),
                d.summary.into(),
            )
        }));
    }
    if shows(ListKind::Scenario) {
        let all = unlearn_pipeline::scenario::registered().map_err(|e| anyhow::anyhow!(e))?;
        rows.extend(all.values().map(|s| {
            (
                "scenario".into(),
                s.name.into(),
                built_in(s.krate),
                s.summary.into(),
            )
        }));
    }
    if shows(ListKind::Metric) {
        let all = unlearn_pipeline::metric::registered().map_err(|e| anyhow::anyhow!(e))?;
        rows.extend(all.values().map(|m| {
            (
                "metric".into(),
                m.name.into(),
                built_in(m.krate),
                m.summary.into(),
            )
        }));
    }
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(kind, name, source, summary)| serde_json::json!({"kind": kind, "name": name, "summary": summary, "source": source}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let w = rows.iter().map(|r| r.1.len()).max().unwrap_or(4).max(4);
    let sw = rows.iter().map(|r| r.2.len()).max().unwrap_or(6).max(6);
    println!("{:<9}  {:<w$}  {:<sw$}  SUMMARY", "KIND", "NAME", "SOURCE");
    for (kind, name, source, summary) in rows {
        println!("{kind:<9}  {name:<w$}  {source:<sw$}  {summary}");
    }
    Ok(())
}

/// Sets `model.arch` in a parsed config (the `--arch` flag).
/// What the global flags change in a config's `model` table.
struct ModelOverrides {
    arch: Option<Arch>,
    precision: Option<Precision>,
    channels_last: bool,
}

impl Cli {
    fn model_overrides(&self) -> ModelOverrides {
        ModelOverrides {
            arch: self.arch,
            precision: self.precision,
            channels_last: self.channels_last,
        }
    }
}

fn override_model(raw: &mut serde_json::Value, o: &ModelOverrides) {
    let Some(obj) = raw.as_object_mut() else {
        return;
    };
    let model = obj.entry("model").or_insert_with(|| serde_json::json!({}));
    let Some(m) = model.as_object_mut() else {
        return;
    };
    if let Some(arch) = o.arch {
        m.insert("arch".into(), serde_json::json!(arch.name()));
    }
    if let Some(p) = o.precision {
        m.insert("precision".into(), serde_json::json!(p.name()));
    }
    if o.channels_last {
        m.insert("channels_last".into(), serde_json::json!(true));
    }
}

/// A config's default output folder: `runs/<config name>`.
fn default_out(config: &Path) -> PathBuf {
    Path::new("runs").join(config.file_stem().unwrap_or_default())
}

fn load_plan(registry: &Registry, path: &Path, overrides: &ModelOverrides) -> Result<Plan> {
    let mut raw = config::read_config_file(path).map_err(bad)?;
    override_model(&mut raw, overrides);
    let base = path.parent().unwrap_or(Path::new("."));
    config::plan(&raw, registry, base).map_err(|issues| {
        bad(ConfigError::Invalid {
            path: path.to_path_buf(),
            issues,
        })
    })
}

/// `run --dry-run`: one line per stage, cached (with the seconds it took) or to run (with an
/// estimate from the same stage of another seed, and whether an interrupted run of it resumes).
fn print_plan(plan: &Plan, cache: &Path) -> Result<()> {
    let stages = pipeline::dry_run(plan, cache).map_err(bad)?;
    let cached = stages.iter().filter(|p| p.stage.cached).count();
    let (mut estimated, mut unknown) = (0.0, 0);
    for p in &stages {
        let s = &p.stage;
        let state = if s.cached {
            format!("cached ({:.1} s when computed)", s.seconds)
        } else {
            let mut t = "to run".to_string();
            match p.estimate {
                Some(e) => {
                    estimated += e;
                    t += &format!(", about {e:.0} s (as other seeds)");
                }
                None => unknown += 1,
            }
            if p.saved_loops > 0 {
                t += &format!(", resumes ({} training state(s) saved)", p.saved_loops);
            }
            t
        };
        println!("{:<6} {}  {:<40} {state}", s.kind, &s.key[..12], s.label);
    }
    let to_run = stages.len() - cached;
    let cost = if to_run == 0 {
        String::new()
    } else if unknown == 0 {
        format!("; about {estimated:.0} s to compute")
    } else if estimated > 0.0 {
        format!("; about {estimated:.0} s for those with an estimate, {unknown} without")
    } else {
        "; no estimate yet (the cache holds no run of these stages)".into()
    };
    println!(
        "{} stages: {cached} cached, {to_run} to run{cost} (cache {})",
        stages.len(),
        cache.display()
    );
    Ok(())
}

/// A trainer that the first Ctrl-C stops at the next batch (finished stages stay in the cache
/// for resuming); a second one exits at once.
fn interruptible_trainer(device: unlearn_pipeline::tch::Device, bars: bool) -> Trainer {
    let trainer = Trainer::new(device, bars);
    let cancel = trainer.cancel.clone();
    let _ = ctrlc::set_handler(move || {
        if cancel.swap(true, std::sync::atomic::Ordering::Relaxed) {
            std::process::exit(130);
        }
        eprintln!(
            "\n[unlearn] stopping after this batch (Ctrl-C again to quit now); re-run to resume"
        );
    });
    trainer
}

/// How `run --jobs N` starts its worker `i`: this program's `stage` command on the same config,
/// output folder and cache, with the same global settings; with several GPUs, worker `i` takes
/// GPU `i mod count`.
/// The global options a worker is started with.
struct Globals<'a> {
    device: DeviceChoice,
    quiet: bool,
    overrides: &'a ModelOverrides,
    plugin_dirs: &'a [PathBuf],
}

fn worker_command<'a>(
    cli: Globals<'a>,
    config: &'a Path,
    out: &'a Path,
    cache: &'a Path,
    jobs: usize,
) -> Result<impl Fn(usize, &[String]) -> std::process::Command + 'a> {
    let exe = std::env::current_exe().context("finding this program to start its workers")?;
    let gpus = match (jobs > 1).then(|| cli.device.resolve()) {
        Some(Ok(unlearn_pipeline::tch::Device::Cuda(_))) => {
            unlearn_pipeline::tch::Cuda::device_count().max(0) as usize
        }
        _ => 0,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (cores / jobs.max(1)).max(1);
    Ok(move |i: usize, keys: &[String]| {
        let mut c = std::process::Command::new(&exe);
        let device = if gpus > 1 {
            format!("cuda:{}", i % gpus)
        } else {
            cli.device.to_string()
        };
        c.args(["--device", &device]);
        if cli.quiet {
            c.arg("--quiet");
        }
        if let Some(a) = cli.overrides.arch {
            c.args(["--arch", a.name()]);
        }
        if let Some(p) = cli.overrides.precision {
            c.args(["--precision", p.name()]);
        }
        if cli.overrides.channels_last {
            c.arg("--channels-last");
        }
        for d in cli.plugin_dirs {
            c.arg("--plugin-dir").arg(d);
        }
        c.arg("stage")
            .arg(config)
            .arg("--out")
            .arg(out)
            .arg("--cache")
            .arg(cache)
            .args(keys)
            .env("UNLEARN_WORKER", format!("{}/{jobs}", i + 1));
        // Workers share the cores: libtorch's threads in each would oversubscribe them (5x
        // slower on 2 cores) unless the user chose a count.
        if std::env::var_os("OMP_NUM_THREADS").is_none() {
            c.env("OMP_NUM_THREADS", threads.to_string());
        }
        c
    })
}

#[allow(clippy::too_many_arguments)]
fn execute(
    plan: &Plan,
    device: DeviceChoice,
    out: &Path,
    cache_dir: Option<PathBuf>,
    what: &str,
    quiet: bool,
    notify: &dyn Fn(&str),
    workers: Option<pipeline::Workers<'_>>,
) -> Result<()> {
    let device = device.resolve().map_err(bad)?;
    let trainer = interruptible_trainer(device, !quiet);
    notify(&format!(
        "device {}, output {}",
        device::device_name(device),
        out.display()
    ));
    let opts = RunOptions {
        device,
        out_dir: out.to_path_buf(),
        what: what.to_string(),
        cache_dir,
        trainer,
        notify,
        workers,
    };
    let results = pipeline::run(plan, &opts).map_err(pipeline_error)?;
    println!("{}", unlearn_pipeline::report::results_table(&results));
    notify(&format!(
        "wrote {} and {} ({:.1} s)",
        out.join("results.json").display(),
        out.join("report.md").display(),
        results.seconds
    ));
    Ok(())
}

/// A pipeline error with its exit code: the user's paths and files are bad input (2), Ctrl-C is
/// 130, the rest a failed run (1).
fn pipeline_error(e: pipeline::PipelineError) -> anyhow::Error {
    use pipeline::PipelineError as E;
    match e {
        E::Output { .. } | E::OutputDir(_) | E::Input { .. } => bad(e),
        e if e.is_cancelled() => Interrupted(e.into()).into(),
        e => anyhow::Error::from(e),
    }
}

/// `unlearn report DIR`: the reports of a run's output folder from its results.json, which must
/// be consistent (every number in its range, no repeated row); only a folder unlearn made is
/// written into, and figures an earlier report drew that this one does not are removed.
fn report(out: &Path, notify: &dyn Fn(&str)) -> Result<()> {
    use unlearn_pipeline::output::{OutputDir, Producer};
    let path = out.join("results.json");
    let bytes = std::fs::read(&path).map_err(|e| {
        bad(anyhow::anyhow!(
            "cannot read {}: {e} (is {} a run's output folder?)",
            path.display(),
            out.display()
        ))
    })?;
    let mut results: pipeline::RunResults = serde_json::from_slice(&bytes).map_err(|e| {
        bad(anyhow::anyhow!(
            "{} is not the results of this unlearn version: {e}",
            path.display()
        ))
    })?;
    let problems = pipeline::check_results(&results);
    if !problems.is_empty() {
        let shown: Vec<String> = problems.iter().take(10).cloned().collect();
        return Err(bad(anyhow::anyhow!(
            "{} is inconsistent, so no report is drawn from it ({} problem(s)):\n  {}{}",
            path.display(),
            problems.len(),
            shown.join("\n  "),
            if problems.len() > 10 { "\n  ..." } else { "" }
        )));
    }
    let dir = OutputDir::claim(
        out,
        Producer::Run,
        &format!("unlearn report {}", out.display()),
    )
    .map_err(bad)?;
    dir.check_layout(&["plots"], &["results.csv", "training.csv", "report.md"])
        .map_err(bad)?;
    dir.record("results.json").map_err(bad)?;
    for m in &results.models {
        dir.record(&m.file).map_err(bad)?;
    }
    pipeline::recompute_gaps(&mut results);
    pipeline::write_reports(&results, &dir).map_err(pipeline_error)?;
    dir.finish().map_err(bad)?;
    println!("{}", unlearn_pipeline::report::results_table(&results));
    notify(&format!(
        "wrote {}, {} and {}",
        out.join("report.md").display(),
        out.join("results.csv").display(),
        out.join("plots").display()
    ));
    Ok(())
}
