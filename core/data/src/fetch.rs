//! Downloads the official archives of the standard image data sets, verifies them and unpacks
//! them, safely and resumably.
//!
//! - **Download** with `ureq` into `<dir>/<file_name>.part`. An existing `.part` is resumed with
//!   `Range: bytes=<len>-` when the server answers 206; a 200 (server ignores ranges) or a 416
//!   restarts from byte 0. A transfer that breaks off keeps its `.part` for the next run.
//! - **Verify** the SHA-256 of the complete file (and its size), then rename it into place. A bad
//!   download is removed and reported with the expected and actual hashes; a file the user
//!   already had under the final name is never removed or overwritten.
//! - **Extract** (`.tar.gz`, `.zip`, `.gz`) into a staging folder inside `dir`, then rename the
//!   result into place, so an interrupted run leaves no half-written tree. Entries that would
//!   land outside `dir` (absolute paths, `..`) and links (symbolic or hard) are refused.
//!   A marker `<dir>/.<file_name>.extracted` records the verified archive's hash and what was
//!   extracted, so a re-run does nothing (even if the archive was deleted to save space).
//!
//! One fetch per directory at a time: two processes fetching into the same `dir` share the
//! `.part` and staging paths.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// One file to download: where from, what it must hash to, and what to do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub url: String,
    /// Name under `dir`; also the name appended to a mirror.
    pub file_name: String,
    /// Lowercase hex SHA-256 of the file. Empty when no published hash was found: then only
    /// `size` is checked (see [`Artifact::verification`]).
    pub sha256: String,
    pub size: Option<u64>,
    pub extract: Extract,
}

/// What to do with a downloaded file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extract {
    /// Keep the file as it is (e.g. SVHN's `.mat` files).
    None,
    /// A gzip-compressed tarball, unpacked into `dir`.
    TarGz,
    /// A zip archive, unpacked into `dir`.
    Zip,
    /// A single gzip-compressed file, decompressed to `dir/<file_name without .gz>`.
    Gunzip,
}

/// How strongly a downloaded artifact is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    Sha256,
    SizeOnly,
}

impl Artifact {
    pub fn verification(&self) -> Verification {
        if self.sha256.is_empty() {
            Verification::SizeOnly
        } else {
            Verification::Sha256
        }
    }

    /// The URL actually requested: `url`, or the mirror with this artifact's last URL segment
    /// appended.
    pub fn resolved_url(&self, mirror: Option<&str>) -> String {
        resolve_url(&self.url, mirror)
    }
}

/// A data set the `fetch` command knows how to download.
#[derive(Debug, Clone)]
pub struct CatalogEntry {
    pub name: &'static str,
    pub description: &'static str,
    pub artifacts: Vec<Artifact>,
}

#[derive(Debug, Clone, Default)]
pub struct FetchOptions {
    /// Replaces the scheme, host and path of every URL up to the file name
    /// (`https://host/a/b/f.tar.gz` with mirror `http://m/x` becomes `http://m/x/f.tar.gz`).
    pub mirror: Option<String>,
    /// Draw progress bars on stderr (only when stderr is a terminal).
    pub progress: bool,
}

/// What one artifact's fetch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactReport {
    pub file_name: String,
    /// The URL requested (after the mirror), or that would have been.
    pub url: String,
    /// Bytes transferred in this run.
    pub downloaded_bytes: u64,
    /// Whether the transfer continued an earlier `.part`.
    pub resumed: bool,
    /// Whether this run unpacked the archive.
    pub extracted: bool,
    /// SHA-256 of the verified file (for size-only artifacts: the hash that was recorded).
    pub sha256: String,
    pub verification: Verification,
    /// The usable results: the file itself, the decompressed file, or the top-level entries
    /// unpacked from the archive.
    pub files: Vec<PathBuf>,
}

impl ArtifactReport {
    /// Nothing was downloaded or extracted: everything was already in place and verified.
    pub fn skipped(&self) -> bool {
        self.downloaded_bytes == 0 && !self.resumed && !self.extracted
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FetchReport {
    pub downloaded_bytes: u64,
    /// Some transfer continued an earlier partial download.
    pub resumed: bool,
    /// Every artifact was already downloaded, verified and extracted: the run did nothing.
    pub skipped: bool,
    pub files: Vec<PathBuf>,
    pub artifacts: Vec<ArtifactReport>,
}

impl FetchReport {
    /// One human-readable line per artifact, for the CLI.
    pub fn summary(&self) -> String {
        let mut lines = Vec::new();
        for a in &self.artifacts {
            let check = match a.verification {
                Verification::Sha256 => "SHA-256 verified",
                Verification::SizeOnly => "size checked (no published SHA-256)",
            };
            let line = if a.skipped() {
                format!(
                    "{}: already downloaded and {check}; nothing to do",
                    a.file_name
                )
            } else {
                let mut what = Vec::new();
                if a.downloaded_bytes > 0 || a.resumed {
                    what.push(format!(
                        "downloaded {}{}",
                        human_bytes(a.downloaded_bytes),
                        if a.resumed { " (resumed)" } else { "" }
                    ));
                }
                what.push(check.to_string());
                if a.extracted {
                    what.push("extracted".to_string());
                }
                format!("{}: {}", a.file_name, what.join(", "))
            };
            lines.push(line);
        }
        lines.join("\n")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("unknown data set '{name}'; choose one of: {}", known.join(", "))]
    UnknownDataset { name: String, known: Vec<String> },
    #[error(
        "could not download {url}: {reason}; check the network connection, or pass a mirror \
         that serves the same file (--mirror URL)"
    )]
    Download { url: String, reason: String },
    #[error(
        "could not download {url}: the server answered HTTP {status}; {}",
        status_hint(*status)
    )]
    Status { url: String, status: u16 },
    #[error(
        "download of {url} broke off after {got} bytes{}: {reason}; the partial file {} is \
         kept: re-run to resume",
        expected.map(|e| format!(" of {e}")).unwrap_or_default(),
        part.display()
    )]
    Interrupted {
        url: String,
        part: PathBuf,
        got: u64,
        expected: Option<u64>,
        reason: String,
    },
    #[error(
        "SHA-256 mismatch for {url}: expected {expected}, got {actual}; the bad download was \
         removed: re-run to retry, or use another mirror (a proxy or captive portal may have \
         altered it)"
    )]
    HashMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error(
        "size mismatch for {url}: expected {expected} bytes, got {actual}; the bad download was \
         removed: re-run to retry, or use another mirror"
    )]
    SizeMismatch {
        url: String,
        expected: u64,
        actual: u64,
    },
    #[error(
        "{} already exists but is not the expected file ({detail}); it was left untouched: \
         move or delete it, or fetch into another directory",
        path.display()
    )]
    ExistingMismatch { path: PathBuf, detail: String },
    #[error(
        "{}: refusing to extract entry '{entry}': it {reason}; the archive may be malicious \
         (nothing was extracted)",
        archive.display()
    )]
    UnsafeEntry {
        archive: PathBuf,
        entry: String,
        reason: String,
    },
    #[error(
        "cannot extract {}: {} already exists and was not extracted by an earlier fetch; move \
         or delete it and re-run",
        archive.display(),
        path.display()
    )]
    DestinationExists { archive: PathBuf, path: PathBuf },
    #[error(
        "{} is not a readable archive: {message}; delete it and re-run to download it again",
        archive.display()
    )]
    Archive { archive: PathBuf, message: String },
    #[error("{} is not a directory: give --dir a folder (new or existing) to fetch into", path.display())]
    NotADirectory { path: PathBuf },
    #[error("mirror {mirror:?} is not a usable URL: {reason}; give one like https://host/path")]
    BadMirror {
        mirror: String,
        reason: &'static str,
    },
    #[error("{action} {}: {source}; check that the directory is writable and has space", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn status_hint(status: u16) -> &'static str {
    match status {
        404 | 410 => "the file may have moved: pass a mirror that serves it (--mirror URL)",
        401 | 403 => {
            "the server refuses the download: pass a mirror that serves the file (--mirror URL)"
        }
        500..=599 => "the server has a problem: retry later, or pass a mirror (--mirror URL)",
        _ => "retry, or pass a mirror that serves the file (--mirror URL)",
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + use<> {
    let path = path.to_path_buf();
    move |source| FetchError::Io {
        action,
        path,
        source,
    }
}

// ---------------------------------------------------------------------------------------------
// Catalog
// ---------------------------------------------------------------------------------------------

fn artifact(url: &str, sha256: &str, size: u64, extract: Extract) -> Artifact {
    Artifact {
        url: url.to_string(),
        file_name: url.rsplit('/').next().unwrap_or(url).to_string(),
        sha256: sha256.to_string(),
        size: Some(size),
        extract,
    }
}

/// The data sets `fetch` knows, with their official download URLs, SHA-256 and sizes.
///
/// Hash sources: tensorflow/datasets' `tensorflow_datasets/url_checksums/<name>.txt` files (URL,
/// size, SHA-256 per line), each cross-checked against at least one independent project that
/// pins the same value. MNIST and Fashion-MNIST share file names: fetch them into different
/// directories (a collision is detected by the hash check, never overwritten).
pub fn catalog() -> Vec<CatalogEntry> {
    vec![
        CatalogEntry {
            name: "cifar10",
            description: "CIFAR-10, binary version (Krizhevsky 2009): 50k train + 10k test 32x32 \
                          colour images, 10 classes; unpacks to cifar-10-batches-bin/",
            artifacts: vec![artifact(
                "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
                // tensorflow/datasets url_checksums/cifar10.txt (same value pinned by
                // torchvision-compatible Ruby/Julia/Go dataset loaders).
                "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
                170_052_171,
                Extract::TarGz,
            )],
        },
        CatalogEntry {
            name: "cifar100",
            description: "CIFAR-100, binary version (Krizhevsky 2009): 50k train + 10k test 32x32 \
                          colour images, 100 classes; unpacks to cifar-100-binary/",
            artifacts: vec![artifact(
                "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
                // tensorflow/datasets url_checksums/cifar100.txt (also pinned by Julia
                // MLDatasets and GoMLX's CIFAR downloader).
                "58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec",
                168_513_733,
                Extract::TarGz,
            )],
        },
        CatalogEntry {
            name: "svhn",
            description: "SVHN cropped digits (Netzer et al. 2011): 73,257 train + 26,032 test \
                          32x32 colour images in MATLAB v5 .mat files (the 'extra' split is not \
                          fetched)",
            artifacts: vec![
                artifact(
                    "http://ufldl.stanford.edu/housenumbers/train_32x32.mat",
                    // tensorflow/datasets url_checksums/svhn_cropped.txt (also torchvision's
                    // prototype SVHN _CHECKSUMS).
                    "435e94d69a87fde4fd4d7f3dd208dfc32cb6ae8af2240d066de1df7508d083b8",
                    182_040_794,
                    Extract::None,
                ),
                artifact(
                    "http://ufldl.stanford.edu/housenumbers/test_32x32.mat",
                    // tensorflow/datasets url_checksums/svhn_cropped.txt (also torchvision's
                    // prototype SVHN _CHECKSUMS).
                    "cdce80dfb2a2c4c6160906d0bd7c68ec5a99d7ca4831afa54f09182025b6a75b",
                    64_275_384,
                    Extract::None,
                ),
            ],
        },
        CatalogEntry {
            name: "mnist",
            // yann.lecun.com refuses scripted downloads (403/404) much of the time; PyTorch's
            // torchvision downloads from its ossci-datasets S3 mirror first, so do we. The files
            // there are byte-identical to the originals (torchvision checks them against the
            // original MD5s), so the originals' SHA-256 apply.
            description: "MNIST handwritten digits (LeCun et al. 1998): 60k train + 10k test \
                          28x28 greyscale images as gzipped IDX files, from PyTorch's \
                          ossci-datasets S3 mirror (yann.lecun.com is unreliable); decompressed \
                          beside the .gz files",
            artifacts: vec![
                artifact(
                    "https://ossci-datasets.s3.amazonaws.com/mnist/train-images-idx3-ubyte.gz",
                    // tensorflow/datasets url_checksums/mnist.txt (cvdf-datasets mirror of the
                    // same file); the same SHA-256 is pinned for the ossci URL by other loaders.
                    "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                    9_912_422,
                    Extract::Gunzip,
                ),
                artifact(
                    "https://ossci-datasets.s3.amazonaws.com/mnist/train-labels-idx1-ubyte.gz",
                    // tensorflow/datasets url_checksums/mnist.txt
                    "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                    28_881,
                    Extract::Gunzip,
                ),
                artifact(
                    "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-images-idx3-ubyte.gz",
                    // tensorflow/datasets url_checksums/mnist.txt
                    "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                    1_648_877,
                    Extract::Gunzip,
                ),
                artifact(
                    "https://ossci-datasets.s3.amazonaws.com/mnist/t10k-labels-idx1-ubyte.gz",
                    // tensorflow/datasets url_checksums/mnist.txt
                    "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                    4_542,
                    Extract::Gunzip,
                ),
            ],
        },
        CatalogEntry {
            name: "fashion_mnist",
            description: "Fashion-MNIST (Xiao et al. 2017): 60k train + 10k test 28x28 greyscale \
                          images of clothing as gzipped IDX files (same file names as MNIST: use \
                          another directory); decompressed beside the .gz files",
            artifacts: vec![
                artifact(
                    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-images-idx3-ubyte.gz",
                    // tensorflow/datasets url_checksums/fashion_mnist.txt
                    "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                    26_421_880,
                    Extract::Gunzip,
                ),
                artifact(
                    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/train-labels-idx1-ubyte.gz",
                    // tensorflow/datasets url_checksums/fashion_mnist.txt
                    "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                    29_515,
                    Extract::Gunzip,
                ),
                artifact(
                    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-images-idx3-ubyte.gz",
                    // tensorflow/datasets url_checksums/fashion_mnist.txt
                    "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                    4_422_102,
                    Extract::Gunzip,
                ),
                artifact(
                    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/t10k-labels-idx1-ubyte.gz",
                    // tensorflow/datasets url_checksums/fashion_mnist.txt
                    "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                    5_148,
                    Extract::Gunzip,
                ),
            ],
        },
        CatalogEntry {
            name: "tiny_imagenet",
            description: "Tiny ImageNet (CS231n, Stanford): 100k train + 10k val 64x64 JPEGs, \
                          200 classes; unpacks to tiny-imagenet-200/. Checked by size only (no \
                          published SHA-256)",
            artifacts: vec![artifact(
                "https://cs231n.stanford.edu/tiny-imagenet-200.zip",
                // !!! SIZE ONLY: NO SHA-256 VERIFICATION FOR THIS FILE !!!
                // No public source lists a SHA-256 for tiny-imagenet-200.zip (tensorflow/datasets
                // has no Tiny ImageNet; torchvision-style loaders and Mila's datalad copy list
                // only MD5 90528d7ca1a48142e341f4ef8d21d0de), and a hash is never guessed.
                // The size 248,100,043 bytes is the one recorded by Mila's datalad dataset
                // (datasets-mila/datasets--tinyimagenet, key MD5E-s248100043--90528d...) and by
                // download logs. The hash of the first verified download is recorded in the
                // extraction marker. To upgrade: put the SHA-256 of a copy whose MD5 is the one
                // above here.
                "",
                248_100_043,
                Extract::Zip,
            )],
        },
    ]
}

/// The catalog's names, in catalog order.
pub fn catalog_names() -> Vec<&'static str> {
    catalog().iter().map(|e| e.name).collect()
}

/// Looks a data set up by name; `-` and `_` and letter case do not matter (`Fashion-MNIST`).
pub fn find(name: &str) -> Result<CatalogEntry, FetchError> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('-', "_");
    let wanted = norm(name);
    catalog()
        .into_iter()
        .find(|e| norm(e.name) == wanted)
        .ok_or_else(|| FetchError::UnknownDataset {
            name: name.to_string(),
            known: catalog_names().into_iter().map(String::from).collect(),
        })
}

/// Downloads, verifies and extracts the catalog data set `name` into `dir`.
pub fn fetch(name: &str, dir: &Path, opts: &FetchOptions) -> Result<FetchReport, FetchError> {
    fetch_entry(&find(name)?, dir, opts)
}

/// Downloads, verifies and extracts every artifact of `entry` into `dir` (created if missing).
/// Artifacts already downloaded, verified and extracted are left alone.
pub fn fetch_entry(
    entry: &CatalogEntry,
    dir: &Path,
    opts: &FetchOptions,
) -> Result<FetchReport, FetchError> {
    // Both are the user's input: refuse them before anything is written or downloaded.
    if let Some(m) = &opts.mirror {
        check_mirror(m)?;
    }
    if dir.exists() && !dir.is_dir() {
        return Err(FetchError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    fs::create_dir_all(dir).map_err(io_err("creating directory", dir))?;
    let agent = agent();
    let mut report = FetchReport {
        skipped: true,
        ..FetchReport::default()
    };
    for artifact in &entry.artifacts {
        let a = fetch_artifact(&agent, artifact, dir, opts)?;
        report.downloaded_bytes += a.downloaded_bytes;
        report.resumed |= a.resumed;
        report.skipped &= a.skipped();
        report.files.extend(a.files.iter().cloned());
        report.artifacts.push(a);
    }
    Ok(report)
}

/// A mirror must be an http(s) URL with a host and nothing that cannot appear in one.
fn check_mirror(m: &str) -> Result<(), FetchError> {
    let bad = |reason| {
        Err(FetchError::BadMirror {
            mirror: m.to_string(),
            reason,
        })
    };
    let Some(rest) = m
        .strip_prefix("https://")
        .or_else(|| m.strip_prefix("http://"))
    else {
        return bad("it must start with http:// or https://");
    };
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return bad("it has no host");
    }
    if m.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("it contains spaces or control characters");
    }
    Ok(())
}

fn resolve_url(url: &str, mirror: Option<&str>) -> String {
    match mirror {
        None => url.to_string(),
        Some(m) => {
            let file = url.rsplit('/').next().unwrap_or(url);
            format!("{}/{}", m.trim_end_matches('/'), file)
        }
    }
}

/// An agent with connect/response timeouts (the body may take as long as it takes), the
/// proxy from `HTTPS_PROXY`/`HTTP_PROXY`/`ALL_PROXY` (minus `NO_PROXY`), and redirects followed.
fn agent() -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        // statuses are handled here: 206/200/416 drive resuming, the rest are errors
        .http_status_as_error(false)
        .user_agent(concat!("unlearn-fetch/", env!("CARGO_PKG_VERSION")));
    // tests talk to 127.0.0.1 only: a proxy in the environment must not intercept them
    #[cfg(test)]
    let config = config.proxy(None);
    config.build().into()
}

fn fetch_artifact(
    agent: &ureq::Agent,
    artifact: &Artifact,
    dir: &Path,
    opts: &FetchOptions,
) -> Result<ArtifactReport, FetchError> {
    let url = artifact.resolved_url(opts.mirror.as_deref());
    let path = dir.join(&artifact.file_name);
    let marker_path = dir.join(format!(".{}.extracted", artifact.file_name));
    let mut report = ArtifactReport {
        file_name: artifact.file_name.clone(),
        url: url.clone(),
        downloaded_bytes: 0,
        resumed: false,
        extracted: false,
        sha256: String::new(),
        verification: artifact.verification(),
        files: Vec::new(),
    };

    // An earlier run extracted this very archive and its results are still there: done.
    let marker = if artifact.extract == Extract::None {
        None
    } else {
        read_marker(&marker_path)
    };
    if let Some(m) = &marker {
        let same = artifact.sha256.is_empty() || m.sha256 == artifact.sha256;
        if same && !m.outputs.is_empty() && m.outputs.iter().all(|o| dir.join(o).exists()) {
            report.sha256 = m.sha256.clone();
            report.files = m.outputs.iter().map(|o| dir.join(o)).collect();
            return Ok(report);
        }
    }

    // The archive itself: verify what is there, or download it.
    if path.exists() {
        let (actual, len) = sha256_file(&path)?;
        if let Some(detail) = mismatch(artifact, &actual, len) {
            return Err(FetchError::ExistingMismatch { path, detail });
        }
        report.sha256 = actual;
    } else {
        let part = dir.join(format!("{}.part", artifact.file_name));
        let (bytes, resumed) = download(agent, &url, &part, artifact.size, opts.progress)?;
        report.downloaded_bytes = bytes;
        report.resumed = resumed;
        let (actual, len) = sha256_file(&part)?;
        if mismatch(artifact, &actual, len).is_some() {
            // the bad download goes; nothing the user had is touched
            let _ = fs::remove_file(&part);
            return Err(match artifact.verification() {
                Verification::Sha256 => FetchError::HashMismatch {
                    url,
                    expected: artifact.sha256.clone(),
                    actual,
                },
                Verification::SizeOnly => FetchError::SizeMismatch {
                    url,
                    expected: artifact.size.unwrap_or_default(),
                    actual: len,
                },
            });
        }
        fs::rename(&part, &path).map_err(io_err("renaming the verified download to", &path))?;
        report.sha256 = actual;
    }

    if artifact.extract == Extract::None {
        report.files = vec![path];
        return Ok(report);
    }
    let previous: Vec<String> = marker.map(|m| m.outputs).unwrap_or_default();
    let outputs = extract(&path, artifact, dir, &previous, opts.progress)?;
    write_marker(&marker_path, &report.sha256, &outputs)?;
    report.extracted = true;
    report.files = outputs.iter().map(|o| dir.join(o)).collect();
    Ok(report)
}

/// Why a file with hash `actual` and length `len` is not `artifact`, or `None` if it is.
fn mismatch(artifact: &Artifact, actual: &str, len: u64) -> Option<String> {
    match artifact.verification() {
        Verification::Sha256 if actual != artifact.sha256 => {
            Some(format!("SHA-256 {actual}, expected {}", artifact.sha256))
        }
        Verification::SizeOnly => match artifact.size {
            Some(size) if size != len => Some(format!("{len} bytes, expected {size}")),
            _ => None,
        },
        Verification::Sha256 => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Download
// ---------------------------------------------------------------------------------------------

/// Downloads `url` into `part`, resuming what is there. Returns the bytes transferred and
/// whether the transfer continued an earlier partial file.
fn download(
    agent: &ureq::Agent,
    url: &str,
    part: &Path,
    expected: Option<u64>,
    progress: bool,
) -> Result<(u64, bool), FetchError> {
    let mut offset = fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    if let Some(size) = expected {
        if offset > size {
            // longer than the real file: not a prefix of it
            remove_part(part)?;
            offset = 0;
        } else if offset == size && size > 0 {
            // complete already (interrupted between download and verification)
            return Ok((0, true));
        }
    }

    // At most two requests: a range request may be answered 416, then restart from zero.
    for _ in 0..2 {
        let mut request = agent.get(url).header("Accept-Encoding", "identity");
        if offset > 0 {
            request = request.header("Range", format!("bytes={offset}-"));
        }
        let response = request.call().map_err(|e| FetchError::Download {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_length = header("content-length").and_then(|v| v.trim().parse::<u64>().ok());
        let resume = match status {
            200 => false,
            206 if content_range_start(header("content-range")) == Some(offset) => offset > 0,
            206 | 416 if offset > 0 => {
                // the range was refused or answered with another range: start over
                remove_part(part)?;
                offset = 0;
                continue;
            }
            _ => {
                return Err(FetchError::Status {
                    url: url.to_string(),
                    status,
                });
            }
        };
        if !resume {
            // a full answer: whatever the .part held is overwritten
            offset = 0;
        }
        // what the server says the file's length is; without it, the hash check decides
        let total = content_length.map(|len| offset + len);
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(resume)
            .truncate(!resume)
            .open(part)
            .map_err(io_err("opening", part))?;
        let bar = progress_bar(progress, total.or(expected), part);
        bar.set_position(offset);
        let mut reader = response.into_body().into_reader();
        let mut writer = BufWriter::with_capacity(1 << 20, file);
        let mut buf = vec![0u8; 1 << 16];
        let mut got = 0u64;
        let interrupted = |got: u64, reason: String| FetchError::Interrupted {
            url: url.to_string(),
            part: part.to_path_buf(),
            got: offset + got,
            expected: total,
            reason,
        };
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = writer.flush();
                    bar.finish_and_clear();
                    return Err(interrupted(got, e.to_string()));
                }
            };
            writer
                .write_all(&buf[..n])
                .map_err(io_err("writing", part))?;
            got += n as u64;
            bar.inc(n as u64);
        }
        bar.finish_and_clear();
        let file = writer
            .into_inner()
            .map_err(|e| io_err("writing", part)(e.into_error()))?;
        file.sync_all().map_err(io_err("writing", part))?;
        if let Some(total) = total
            && offset + got < total
        {
            return Err(interrupted(got, "the connection closed early".to_string()));
        }
        return Ok((got, resume));
    }
    Err(FetchError::Download {
        url: url.to_string(),
        reason: "the server refused the range request twice".to_string(),
    })
}

fn remove_part(part: &Path) -> Result<(), FetchError> {
    match fs::remove_file(part) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io_err("removing the stale partial download", part)(e))
        }
        _ => Ok(()),
    }
}

/// `START` of a `Content-Range: bytes START-END/TOTAL` header.
fn content_range_start(value: Option<String>) -> Option<u64> {
    let value = value?;
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    rest.split('-').next()?.trim().parse().ok()
}

fn progress_bar(enabled: bool, len: Option<u64>, path: &Path) -> indicatif::ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let target = indicatif::ProgressDrawTarget::stderr();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".part").to_string())
        .unwrap_or_default();
    let bar = match len {
        Some(len) => {
            let bar = indicatif::ProgressBar::with_draw_target(Some(len), target);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        }
        None => {
            let bar = indicatif::ProgressBar::with_draw_target(None, target);
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}")
            {
                bar.set_style(style);
            }
            bar
        }
    };
    bar.set_message(name);
    bar
}

fn spinner(enabled: bool, message: String) -> indicatif::ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar =
        indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {msg} {pos} entries") {
        bar.set_style(style);
    }
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// Lowercase hex SHA-256 and length of a file.
pub fn sha256_file(path: &Path) -> Result<(String, u64), FetchError> {
    let mut file = File::open(path).map_err(io_err("reading", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0u64;
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("reading", path)(e)),
        };
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((hex(&hasher.finalize()), len))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / (1u64 << 10) as f64),
        n => format!("{n} B"),
    }
}

// ---------------------------------------------------------------------------------------------
// Extraction
// ---------------------------------------------------------------------------------------------

struct Marker {
    sha256: String,
    /// Top-level names under `dir` that the extraction produced.
    outputs: Vec<String>,
}

fn read_marker(path: &Path) -> Option<Marker> {
    let text = fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    let sha256 = lines.next()?.strip_prefix("sha256 ")?.trim().to_string();
    let outputs = lines
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    Some(Marker { sha256, outputs })
}

fn write_marker(path: &Path, sha256: &str, outputs: &[String]) -> Result<(), FetchError> {
    let mut text = format!("sha256 {sha256}\n");
    for o in outputs {
        text.push_str(o);
        text.push('\n');
    }
    crate::io::write_atomic(path, text.as_bytes()).map_err(io_err("writing", path))
}

/// Unpacks `archive` into a staging folder inside `dir`, then renames its top-level entries
/// into `dir`. Returns their names. `previous` lists what an earlier extraction of this
/// artifact produced: those may be replaced; anything else already in the way is an error.
fn extract(
    archive: &Path,
    artifact: &Artifact,
    dir: &Path,
    previous: &[String],
    progress: bool,
) -> Result<Vec<String>, FetchError> {
    let staging = dir.join(format!(".{}.extracting", artifact.file_name));
    if staging.exists() {
        // left by an interrupted run
        fs::remove_dir_all(&staging)
            .map_err(io_err("removing the stale staging folder", &staging))?;
    }
    fs::create_dir(&staging).map_err(io_err("creating", &staging))?;
    let bar = spinner(progress, format!("extracting {}", artifact.file_name));
    let unpacked = match artifact.extract {
        Extract::TarGz => untar(archive, &staging, &bar),
        Extract::Zip => unzip(archive, &staging, &bar),
        Extract::Gunzip => gunzip(archive, &artifact.file_name, &staging),
        Extract::None => Ok(()),
    };
    bar.finish_and_clear();
    let result = unpacked.and_then(|()| move_into_place(archive, &staging, dir, previous));
    let _ = fs::remove_dir_all(&staging);
    result
}

fn move_into_place(
    archive: &Path,
    staging: &Path,
    dir: &Path,
    previous: &[String],
) -> Result<Vec<String>, FetchError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(staging).map_err(io_err("reading", staging))? {
        let entry = entry.map_err(io_err("reading", staging))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    if names.is_empty() {
        return Err(FetchError::Archive {
            archive: archive.to_path_buf(),
            message: "it contains no files".to_string(),
        });
    }
    // check everything before moving anything
    for name in &names {
        let dest = dir.join(name);
        if dest.symlink_metadata().is_ok() && !previous.contains(name) {
            return Err(FetchError::DestinationExists {
                archive: archive.to_path_buf(),
                path: dest,
            });
        }
    }
    for name in &names {
        let dest = dir.join(name);
        if let Ok(meta) = dest.symlink_metadata() {
            // our own earlier extraction of this artifact, being replaced
            let removed = if meta.is_dir() {
                fs::remove_dir_all(&dest)
            } else {
                fs::remove_file(&dest)
            };
            removed.map_err(io_err("replacing the earlier extraction", &dest))?;
        }
        fs::rename(staging.join(name), &dest).map_err(io_err("moving into place", &dest))?;
    }
    Ok(names)
}

/// A relative path made only of normal components, or why the entry name is unsafe.
/// Both `/` and `\` count as separators. `Ok(None)` for names that denote the root itself
/// (`./`).
fn safe_relative(name: &str) -> Result<Option<PathBuf>, String> {
    if name.starts_with('/') || name.starts_with('\\') {
        return Err("has an absolute path".to_string());
    }
    let bytes = name.as_bytes();
    if bytes.len() >= 2 && bytes[1] == b':' && bytes[0].is_ascii_alphabetic() {
        return Err("has an absolute (drive-letter) path".to_string());
    }
    if name.contains('\0') {
        return Err("contains a NUL byte".to_string());
    }
    let mut out = PathBuf::new();
    for part in name.split(['/', '\\']) {
        match part {
            "" | "." => {}
            ".." => return Err("contains a '..' component".to_string()),
            p => out.push(p),
        }
    }
    Ok(if out.as_os_str().is_empty() {
        None
    } else {
        Some(out)
    })
}

fn unsafe_entry(archive: &Path, entry: &str, reason: impl Into<String>) -> FetchError {
    FetchError::UnsafeEntry {
        archive: archive.to_path_buf(),
        entry: entry.to_string(),
        reason: reason.into(),
    }
}

fn archive_err(archive: &Path) -> impl Fn(std::io::Error) -> FetchError + '_ {
    move |e| FetchError::Archive {
        archive: archive.to_path_buf(),
        message: e.to_string(),
    }
}

/// Writes `reader` to `staging/rel`, creating parent folders.
fn write_entry(staging: &Path, rel: &Path, reader: &mut dyn Read) -> Result<(), FetchError> {
    let dest = staging.join(rel);
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(io_err("creating", parent))?;
    }
    let mut file = File::create(&dest).map_err(io_err("creating", &dest))?;
    std::io::copy(reader, &mut file).map_err(io_err("writing", &dest))?;
    Ok(())
}

fn untar(archive: &Path, staging: &Path, bar: &indicatif::ProgressBar) -> Result<(), FetchError> {
    use tar::EntryType;
    let file = File::open(archive).map_err(io_err("reading", archive))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    for entry in tar.entries().map_err(archive_err(archive))? {
        let mut entry = entry.map_err(archive_err(archive))?;
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        match kind {
            EntryType::Symlink | EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                let what = if kind == EntryType::Symlink {
                    "symbolic"
                } else {
                    "hard"
                };
                return Err(unsafe_entry(
                    archive,
                    &name,
                    format!("is a {what} link (to '{target}'); links are not extracted"),
                ));
            }
            EntryType::XGlobalHeader | EntryType::XHeader => continue,
            EntryType::Regular | EntryType::Continuous | EntryType::Directory => {}
            other => {
                return Err(unsafe_entry(
                    archive,
                    &name,
                    format!("is a {other:?} entry, not a regular file or directory"),
                ));
            }
        }
        if std::str::from_utf8(&raw).is_err() {
            return Err(unsafe_entry(archive, &name, "has a name that is not UTF-8"));
        }
        let Some(rel) = safe_relative(&name).map_err(|why| unsafe_entry(archive, &name, why))?
        else {
            continue;
        };
        if kind == EntryType::Directory {
            let dest = staging.join(&rel);
            fs::create_dir_all(&dest).map_err(io_err("creating", &dest))?;
        } else {
            write_entry(staging, &rel, &mut entry)?;
        }
        bar.inc(1);
    }
    Ok(())
}

fn unzip(archive: &Path, staging: &Path, bar: &indicatif::ProgressBar) -> Result<(), FetchError> {
    let zip_err = |e: zip::result::ZipError| FetchError::Archive {
        archive: archive.to_path_buf(),
        message: e.to_string(),
    };
    let file = File::open(archive).map_err(io_err("reading", archive))?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(zip_err)?;
    // check every name before writing anything
    let mut entries = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let entry = zip.by_index_raw(i).map_err(zip_err)?;
        let name = entry.name().map_err(zip_err)?.into_owned();
        if entry.is_symlink() {
            return Err(unsafe_entry(
                archive,
                &name,
                "is a symbolic link; links are not extracted",
            ));
        }
        let rel = safe_relative(&name).map_err(|why| unsafe_entry(archive, &name, why))?;
        entries.push((rel, entry.is_dir()));
    }
    for (i, (rel, is_dir)) in entries.into_iter().enumerate() {
        let Some(rel) = rel else { continue };
        if is_dir {
            let dest = staging.join(&rel);
            fs::create_dir_all(&dest).map_err(io_err("creating", &dest))?;
        } else {
            let mut entry = zip.by_index(i).map_err(zip_err)?;
            write_entry(staging, &rel, &mut entry)?;
        }
        bar.inc(1);
    }
    Ok(())
}

fn gunzip(archive: &Path, file_name: &str, staging: &Path) -> Result<(), FetchError> {
    let out_name = file_name
        .strip_suffix(".gz")
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| format!("{file_name}.out"));
    let file = File::open(archive).map_err(io_err("reading", archive))?;
    let mut decoder = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file));
    let dest = staging.join(&out_name);
    let mut out = File::create(&dest).map_err(io_err("creating", &dest))?;
    std::io::copy(&mut decoder, &mut out).map_err(|e| {
        if e.kind() == std::io::ErrorKind::InvalidInput
            || e.kind() == std::io::ErrorKind::InvalidData
        {
            archive_err(archive)(e)
        } else {
            io_err("writing", &dest)(e)
        }
    })?;
    out.sync_all().map_err(io_err("writing", &dest))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Cursor;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::thread::JoinHandle;

    // ---- a loopback HTTP server with optional Range support --------------------------------

    struct TestServer {
        base: String,
        server: Arc<tiny_http::Server>,
        ranges: Arc<Mutex<Vec<Option<String>>>>,
        sent: Arc<AtomicU64>,
        thread: Option<JoinHandle<()>>,
    }

    impl TestServer {
        /// Serves `files` under `<base>/<name>`; honours `Range: bytes=N-` when `ranges`.
        fn start(files: &[(&str, &[u8])], ranges: bool) -> TestServer {
            let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
            let port = server.server_addr().to_ip().unwrap().port();
            let files: HashMap<String, Vec<u8>> = files
                .iter()
                .map(|(n, b)| (format!("/files/{n}"), b.to_vec()))
                .collect();
            let seen = Arc::new(Mutex::new(Vec::new()));
            let sent = Arc::new(AtomicU64::new(0));
            let thread = {
                let (server, seen, sent) = (server.clone(), seen.clone(), sent.clone());
                std::thread::spawn(move || {
                    for request in server.incoming_requests() {
                        let range = request
                            .headers()
                            .iter()
                            .find(|h| h.field.equiv("Range"))
                            .map(|h| h.value.as_str().to_string());
                        seen.lock().unwrap().push(range.clone());
                        let Some(data) = files.get(request.url()) else {
                            let _ = request.respond(tiny_http::Response::empty(404));
                            continue;
                        };
                        let start = range
                            .as_deref()
                            .filter(|_| ranges)
                            .and_then(|r| r.strip_prefix("bytes="))
                            .and_then(|r| r.strip_suffix('-'))
                            .and_then(|r| r.parse::<usize>().ok());
                        let len = data.len();
                        let (code, body, content_range) = match start {
                            Some(s) if s >= len => (416, Vec::new(), format!("bytes */{len}")),
                            Some(s) => (
                                206,
                                data[s..].to_vec(),
                                format!("bytes {s}-{}/{len}", len - 1),
                            ),
                            None => (200, data.clone(), String::new()),
                        };
                        sent.fetch_add(body.len() as u64, Ordering::SeqCst);
                        let mut response =
                            tiny_http::Response::from_data(body).with_status_code(code);
                        if code != 200 {
                            let h =
                                tiny_http::Header::from_bytes(&b"Content-Range"[..], content_range)
                                    .unwrap();
                            response = response.with_header(h);
                        }
                        let _ = request.respond(response);
                    }
                })
            };
            TestServer {
                base: format!("http://127.0.0.1:{port}/files"),
                server,
                ranges: seen,
                sent,
                thread: Some(thread),
            }
        }

        fn opts(&self) -> FetchOptions {
            FetchOptions {
                mirror: Some(self.base.clone()),
                progress: false,
            }
        }

        /// The Range header of every request so far.
        fn ranges(&self) -> Vec<Option<String>> {
            self.ranges.lock().unwrap().clone()
        }

        fn sent(&self) -> u64 {
            self.sent.load(Ordering::SeqCst)
        }
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.server.unblock();
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    // ---- archives ---------------------------------------------------------------------------

    fn sha(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes))
    }

    /// An artifact whose official URL is unreachable: tests reach it through the mirror.
    fn art(file_name: &str, bytes: &[u8], extract: Extract) -> Artifact {
        Artifact {
            url: format!("https://unreachable.invalid/official/{file_name}"),
            file_name: file_name.to_string(),
            sha256: sha(bytes),
            size: Some(bytes.len() as u64),
            extract,
        }
    }

    fn entry(artifacts: Vec<Artifact>) -> CatalogEntry {
        CatalogEntry {
            name: "test",
            description: "test",
            artifacts,
        }
    }

    fn gz(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| {
                (i as u32)
                    .wrapping_mul(2_654_435_761)
                    .rotate_left(seed as u32) as u8
            })
            .collect()
    }

    /// A raw tar header: the name is written byte for byte (the tar crate's `set_path` refuses
    /// `..` and absolute paths, which the hostile tests need).
    fn raw_header(name: &str, kind: tar::EntryType, size: u64, link: Option<&str>) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_size(size);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_entry_type(kind);
        if let Some(link) = link {
            h.set_link_name_literal(link).unwrap();
        }
        h.set_cksum();
        h
    }

    enum TarItem<'a> {
        Dir(&'a str),
        File(&'a str, &'a [u8]),
        Link(&'a str, tar::EntryType, &'a str),
    }

    fn tar_gz(items: &[TarItem]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for item in items {
            match item {
                TarItem::Dir(n) => b
                    .append(&raw_header(n, tar::EntryType::Directory, 0, None), &[][..])
                    .unwrap(),
                TarItem::File(n, d) => b
                    .append(
                        &raw_header(n, tar::EntryType::Regular, d.len() as u64, None),
                        *d,
                    )
                    .unwrap(),
                TarItem::Link(n, k, t) => {
                    b.append(&raw_header(n, *k, 0, Some(t)), &[][..]).unwrap()
                }
            }
        }
        gz(&b.into_inner().unwrap())
    }

    enum ZipItem<'a> {
        Dir(&'a str),
        File(&'a str, &'a [u8]),
        Symlink(&'a str, &'a str),
    }

    fn zip_bytes(items: &[ZipItem]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let o = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        for item in items {
            match item {
                ZipItem::Dir(n) => w.add_directory(*n, o).unwrap(),
                ZipItem::File(n, d) => {
                    w.start_file(*n, o).unwrap();
                    w.write_all(d).unwrap();
                }
                ZipItem::Symlink(n, t) => w.add_symlink(*n, *t, o).unwrap(),
            }
        }
        w.finish().unwrap().into_inner()
    }

    /// Names in `dir`, sorted.
    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    // ---- tests ------------------------------------------------------------------------------

    #[test]
    fn fetch_verify_extract_every_kind_then_second_run_is_a_no_op() {
        let batch = pattern(3073 * 3, 1);
        let meta = b"airplane\nautomobile\n".to_vec();
        let tgz = tar_gz(&[
            TarItem::Dir("cifar-10-batches-bin/"),
            TarItem::File("cifar-10-batches-bin/data_batch_1.bin", &batch),
            TarItem::File("cifar-10-batches-bin/batches.meta.txt", &meta),
        ]);
        let jpeg = pattern(5000, 2);
        let wnids = b"n01443537\n".to_vec();
        let zip = zip_bytes(&[
            ZipItem::Dir("tiny-imagenet-200/"),
            ZipItem::File("tiny-imagenet-200/wnids.txt", &wnids),
            ZipItem::File(
                "tiny-imagenet-200/train/n01443537/images/n01443537_0.JPEG",
                &jpeg,
            ),
        ]);
        let idx = pattern(7840, 3);
        let idx_gz = gz(&idx);
        let mat = pattern(20_000, 4);
        let server = TestServer::start(
            &[
                ("cifar-10-binary.tar.gz", &tgz),
                ("tiny-imagenet-200.zip", &zip),
                ("t10k-images-idx3-ubyte.gz", &idx_gz),
                ("test_32x32.mat", &mat),
            ],
            true,
        );
        let e = entry(vec![
            art("cifar-10-binary.tar.gz", &tgz, Extract::TarGz),
            art("tiny-imagenet-200.zip", &zip, Extract::Zip),
            art("t10k-images-idx3-ubyte.gz", &idx_gz, Extract::Gunzip),
            art("test_32x32.mat", &mat, Extract::None),
        ]);
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");

        let report = fetch_entry(&e, &dir, &server.opts()).unwrap();
        let total = (tgz.len() + zip.len() + idx_gz.len() + mat.len()) as u64;
        assert_eq!(report.downloaded_bytes, total);
        assert!(!report.skipped && !report.resumed);
        assert!(
            report
                .artifacts
                .iter()
                .all(|a| a.verification == Verification::Sha256)
        );
        let read = |rel: &str| fs::read(dir.join(rel)).unwrap();
        assert_eq!(read("cifar-10-batches-bin/data_batch_1.bin"), batch);
        assert_eq!(read("cifar-10-batches-bin/batches.meta.txt"), meta);
        assert_eq!(read("tiny-imagenet-200/wnids.txt"), wnids);
        assert_eq!(
            read("tiny-imagenet-200/train/n01443537/images/n01443537_0.JPEG"),
            jpeg
        );
        assert_eq!(read("t10k-images-idx3-ubyte"), idx);
        assert_eq!(read("test_32x32.mat"), mat);
        assert_eq!(
            report.files,
            [
                "cifar-10-batches-bin",
                "tiny-imagenet-200",
                "t10k-images-idx3-ubyte",
                "test_32x32.mat"
            ]
            .map(|f| dir.join(f))
        );
        // no .part or staging folder left; archives kept beside markers
        assert_eq!(
            listing(&dir),
            [
                ".cifar-10-binary.tar.gz.extracted",
                ".t10k-images-idx3-ubyte.gz.extracted",
                ".tiny-imagenet-200.zip.extracted",
                "cifar-10-batches-bin",
                "cifar-10-binary.tar.gz",
                "t10k-images-idx3-ubyte",
                "t10k-images-idx3-ubyte.gz",
                "test_32x32.mat",
                "tiny-imagenet-200",
                "tiny-imagenet-200.zip",
            ]
        );
        let requests = server.ranges().len();
        assert_eq!(requests, 4);

        // second run: nothing downloaded, nothing requested, and it says so
        let again = fetch_entry(&e, &dir, &server.opts()).unwrap();
        assert!(again.skipped);
        assert_eq!(again.downloaded_bytes, 0);
        assert_eq!(server.ranges().len(), requests);
        assert_eq!(again.files, report.files);
        assert!(
            again.summary().lines().all(|l| l.contains("nothing to do")),
            "{}",
            again.summary()
        );

        // the marker keeps it a no-op after the archive is deleted to save space
        fs::remove_file(dir.join("cifar-10-binary.tar.gz")).unwrap();
        assert!(fetch_entry(&e, &dir, &server.opts()).unwrap().skipped);
        assert_eq!(server.ranges().len(), requests);

        // an extraction the user deleted is redone from the kept archive, without downloading
        fs::remove_dir_all(dir.join("tiny-imagenet-200")).unwrap();
        let redo = fetch_entry(&e, &dir, &server.opts()).unwrap();
        assert!(!redo.skipped && redo.downloaded_bytes == 0);
        assert_eq!(read("tiny-imagenet-200/wnids.txt"), wnids);
        assert_eq!(server.ranges().len(), requests);
    }

    #[test]
    fn resume_requests_only_the_rest() {
        let data = pattern(100_000, 5);
        let server = TestServer::start(&[("train_32x32.mat", &data)], true);
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("train_32x32.mat.part"), &data[..50_000]).unwrap();
        let e = entry(vec![art("train_32x32.mat", &data, Extract::None)]);
        let report = fetch_entry(&e, tmp.path(), &server.opts()).unwrap();
        assert_eq!(server.ranges(), vec![Some("bytes=50000-".to_string())]);
        assert_eq!(server.sent(), 50_000);
        assert_eq!(report.downloaded_bytes, 50_000);
        assert!(report.resumed);
        assert_eq!(fs::read(tmp.path().join("train_32x32.mat")).unwrap(), data);
        assert_eq!(listing(tmp.path()), ["train_32x32.mat"]);
        assert!(
            report.summary().contains("(resumed)"),
            "{}",
            report.summary()
        );
    }

    #[test]
    fn broken_transfer_keeps_the_part_and_the_next_run_resumes_it() {
        use std::io::BufRead;
        let data = pattern(40_000, 12);
        // a server that promises the whole file, sends half, and hangs up
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let half = data[..20_000].to_vec();
        let total = data.len();
        let flaky = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
                line.clear();
            }
            let mut stream = stream;
            write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {total}\r\n\r\n").unwrap();
            stream.write_all(&half).unwrap();
        });
        let tmp = tempfile::tempdir().unwrap();
        let e = entry(vec![art("x.mat", &data, Extract::None)]);
        let opts = FetchOptions {
            mirror: Some(format!("http://127.0.0.1:{port}/files")),
            progress: false,
        };
        let err = fetch_entry(&e, tmp.path(), &opts).unwrap_err();
        flaky.join().unwrap();
        let msg = err.to_string();
        assert!(
            matches!(err, FetchError::Interrupted { got: 20_000, .. }),
            "{msg}"
        );
        assert!(
            msg.contains("x.mat.part") && msg.contains("re-run to resume"),
            "{msg}"
        );
        assert_eq!(
            fs::read(tmp.path().join("x.mat.part")).unwrap(),
            &data[..20_000]
        );

        let server = TestServer::start(&[("x.mat", &data)], true);
        let report = fetch_entry(&e, tmp.path(), &server.opts()).unwrap();
        assert_eq!(server.ranges(), vec![Some("bytes=20000-".to_string())]);
        assert!(report.resumed && report.downloaded_bytes == 20_000);
        assert_eq!(fs::read(tmp.path().join("x.mat")).unwrap(), data);
    }

    #[test]
    fn server_ignoring_range_restarts_from_zero() {
        let data = pattern(100_000, 6);
        let server = TestServer::start(&[("train_32x32.mat", &data)], false);
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("train_32x32.mat.part"), &data[..50_000]).unwrap();
        let e = entry(vec![art("train_32x32.mat", &data, Extract::None)]);
        let report = fetch_entry(&e, tmp.path(), &server.opts()).unwrap();
        assert_eq!(server.ranges(), vec![Some("bytes=50000-".to_string())]);
        assert_eq!(server.sent(), 100_000);
        assert_eq!(report.downloaded_bytes, 100_000);
        assert!(!report.resumed);
        assert_eq!(fs::read(tmp.path().join("train_32x32.mat")).unwrap(), data);
        assert_eq!(listing(tmp.path()), ["train_32x32.mat"]);
    }

    #[test]
    fn range_not_satisfiable_restarts_from_zero() {
        // a complete .part of unknown expected size: the server answers 416 to the range
        let data = pattern(10_000, 7);
        let server = TestServer::start(&[("x.mat", &data)], true);
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("x.mat.part"), &data).unwrap();
        let mut a = art("x.mat", &data, Extract::None);
        a.size = None;
        let report = fetch_entry(&entry(vec![a]), tmp.path(), &server.opts()).unwrap();
        assert_eq!(
            server.ranges(),
            vec![Some("bytes=10000-".to_string()), None]
        );
        assert_eq!(report.downloaded_bytes, 10_000);
        assert_eq!(fs::read(tmp.path().join("x.mat")).unwrap(), data);
    }

    #[test]
    fn complete_part_of_known_size_is_verified_without_a_request() {
        let data = pattern(10_000, 8);
        let server = TestServer::start(&[("x.mat", &data)], true);
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("x.mat.part"), &data).unwrap();
        let e = entry(vec![art("x.mat", &data, Extract::None)]);
        fetch_entry(&e, tmp.path(), &server.opts()).unwrap();
        assert!(server.ranges().is_empty());
        assert_eq!(listing(tmp.path()), ["x.mat"]);
    }

    #[test]
    fn wrong_sha256_names_both_hashes_and_leaves_nothing() {
        let batch = pattern(1000, 9);
        let tgz = tar_gz(&[TarItem::File(
            "cifar-10-batches-bin/data_batch_1.bin",
            &batch,
        )]);
        let server = TestServer::start(&[("cifar-10-binary.tar.gz", &tgz)], true);
        let tmp = tempfile::tempdir().unwrap();
        let mut a = art("cifar-10-binary.tar.gz", &tgz, Extract::TarGz);
        a.sha256 = sha(b"something else");
        let err = fetch_entry(&entry(vec![a.clone()]), tmp.path(), &server.opts()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, FetchError::HashMismatch { .. }), "{msg}");
        assert!(msg.contains(&a.sha256) && msg.contains(&sha(&tgz)), "{msg}");
        assert!(
            msg.contains(&format!("{}/cifar-10-binary.tar.gz", server.base)),
            "{msg}"
        );
        // no .part pretending to be complete, no archive, nothing extracted, no marker
        assert!(listing(tmp.path()).is_empty(), "{:?}", listing(tmp.path()));
    }

    #[test]
    fn corrupt_partial_download_is_caught_and_removed() {
        let data = pattern(20_000, 10);
        let server = TestServer::start(&[("x.mat", &data)], true);
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("x.mat.part"), vec![0u8; 5_000]).unwrap();
        let e = entry(vec![art("x.mat", &data, Extract::None)]);
        let err = fetch_entry(&e, tmp.path(), &server.opts()).unwrap_err();
        assert!(matches!(err, FetchError::HashMismatch { .. }), "{err}");
        assert!(listing(tmp.path()).is_empty());
        // the retry the message suggests succeeds
        fetch_entry(&e, tmp.path(), &server.opts()).unwrap();
        assert_eq!(fs::read(tmp.path().join("x.mat")).unwrap(), data);
    }

    #[test]
    fn a_different_file_under_the_final_name_is_left_untouched() {
        let data = pattern(1000, 11);
        let server = TestServer::start(&[("train-images-idx3-ubyte.gz", &gz(&data))], true);
        let tmp = tempfile::tempdir().unwrap();
        let theirs = tmp.path().join("train-images-idx3-ubyte.gz");
        fs::write(&theirs, b"the user's own file").unwrap();
        let e = entry(vec![art(
            "train-images-idx3-ubyte.gz",
            &gz(&data),
            Extract::Gunzip,
        )]);
        let err = fetch_entry(&e, tmp.path(), &server.opts()).unwrap_err();
        assert!(matches!(err, FetchError::ExistingMismatch { .. }), "{err}");
        assert!(
            err.to_string().contains("train-images-idx3-ubyte.gz"),
            "{err}"
        );
        assert_eq!(fs::read(&theirs).unwrap(), b"the user's own file");
        assert_eq!(listing(tmp.path()), ["train-images-idx3-ubyte.gz"]);
        assert!(server.ranges().is_empty());
    }

    #[test]
    fn existing_files_in_the_way_of_extraction_are_not_overwritten() {
        let tgz = tar_gz(&[TarItem::File("cifar-10-batches-bin/a.bin", b"new")]);
        let server = TestServer::start(&[("c.tar.gz", &tgz)], true);
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("cifar-10-batches-bin")).unwrap();
        fs::write(tmp.path().join("cifar-10-batches-bin/a.bin"), b"mine").unwrap();
        let e = entry(vec![art("c.tar.gz", &tgz, Extract::TarGz)]);
        let err = fetch_entry(&e, tmp.path(), &server.opts()).unwrap_err();
        assert!(matches!(err, FetchError::DestinationExists { .. }), "{err}");
        assert_eq!(
            fs::read(tmp.path().join("cifar-10-batches-bin/a.bin")).unwrap(),
            b"mine"
        );
        assert_eq!(listing(tmp.path()), ["c.tar.gz", "cifar-10-batches-bin"]);
    }

    /// Runs a hostile archive through fetch_entry inside `root/data`; checks the error names
    /// `entry` and that nothing but the verified archive was written, and nothing outside.
    fn assert_refused(root: &Path, file_name: &str, bytes: &[u8], kind: Extract, entry_name: &str) {
        let server = TestServer::start(&[(file_name, bytes)], true);
        let dir = root.join("data");
        let err = fetch_entry(
            &entry(vec![art(file_name, bytes, kind)]),
            &dir,
            &server.opts(),
        )
        .unwrap_err();
        let msg = err.to_string();
        match &err {
            FetchError::UnsafeEntry { entry, .. } => assert_eq!(entry, entry_name, "{msg}"),
            other => panic!("expected UnsafeEntry for {entry_name}, got: {other}"),
        }
        assert!(msg.contains(entry_name), "{msg}");
        assert_eq!(listing(root), ["data"], "something was written outside dir");
        assert_eq!(
            listing(&dir),
            [file_name],
            "a partial extraction was left behind"
        );
    }

    #[test]
    fn hostile_tar_entries_are_refused() {
        let fine = TarItem::File("good/ok.txt", b"fine");
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("../evil", tar_gz(&[fine, TarItem::File("../evil", b"x")])),
            (
                "good/../../evil",
                tar_gz(&[TarItem::File("good/../../evil", b"x")]),
            ),
            (
                "link",
                tar_gz(&[
                    TarItem::Link("link", tar::EntryType::Symlink, "../outside"),
                    TarItem::File("link/evil", b"x"),
                ]),
            ),
            (
                "hard",
                tar_gz(&[TarItem::Link("hard", tar::EntryType::Link, "/etc/passwd")]),
            ),
        ];
        for (name, bytes) in cases {
            let tmp = tempfile::tempdir().unwrap();
            assert_refused(tmp.path(), "h.tar.gz", &bytes, Extract::TarGz, name);
            assert!(!tmp.path().join("outside").exists() && !tmp.path().join("evil").exists());
        }
        // an absolute path pointing into the test's own root
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("abs-evil");
        let abs = target.to_str().unwrap().to_string();
        let bytes = tar_gz(&[
            TarItem::File("good/ok.txt", b"fine"),
            TarItem::File(&abs, b"x"),
        ]);
        assert_refused(tmp.path(), "h.tar.gz", &bytes, Extract::TarGz, &abs);
        assert!(!target.exists());
    }

    #[test]
    fn hostile_zip_entries_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let bytes = zip_bytes(&[
            ZipItem::File("good/ok.txt", b"fine"),
            ZipItem::File("../evil", b"x"),
        ]);
        assert_refused(tmp.path(), "h.zip", &bytes, Extract::Zip, "../evil");

        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("abs-evil");
        let abs = target.to_str().unwrap().to_string();
        let bytes = zip_bytes(&[ZipItem::File(&abs, b"x")]);
        assert_refused(tmp.path(), "h.zip", &bytes, Extract::Zip, &abs);
        assert!(!target.exists());

        let tmp = tempfile::tempdir().unwrap();
        let bytes = zip_bytes(&[
            ZipItem::Symlink("link", "../outside"),
            ZipItem::File("link/evil", b"x"),
        ]);
        assert_refused(tmp.path(), "h.zip", &bytes, Extract::Zip, "link");
        assert!(!tmp.path().join("outside").exists());
    }

    #[test]
    fn http_404_names_the_url() {
        let server = TestServer::start(&[], true);
        let tmp = tempfile::tempdir().unwrap();
        let e = entry(vec![art("missing.tar.gz", b"x", Extract::TarGz)]);
        let err = fetch_entry(&e, tmp.path(), &server.opts()).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, FetchError::Status { status: 404, .. }),
            "{msg}"
        );
        assert!(
            msg.contains(&format!("{}/missing.tar.gz", server.base)),
            "{msg}"
        );
        assert!(msg.contains("404") && msg.contains("--mirror"), "{msg}");
        assert!(listing(tmp.path()).is_empty());
    }

    #[test]
    fn connection_refused_names_the_url() {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let tmp = tempfile::tempdir().unwrap();
        let mirror = format!("http://127.0.0.1:{port}/files");
        let opts = FetchOptions {
            mirror: Some(mirror.clone()),
            progress: false,
        };
        let e = entry(vec![art("x.mat", b"x", Extract::None)]);
        let err = fetch_entry(&e, tmp.path(), &opts).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, FetchError::Download { .. }), "{msg}");
        assert!(msg.contains(&format!("{mirror}/x.mat")), "{msg}");
        assert!(msg.to_lowercase().contains("refused"), "{msg}");
    }

    #[test]
    fn size_only_artifacts_check_the_size_and_record_the_hash() {
        let zip = zip_bytes(&[ZipItem::File("tiny-imagenet-200/wnids.txt", b"n01\n")]);
        let server = TestServer::start(&[("t.zip", &zip)], true);
        let tmp = tempfile::tempdir().unwrap();
        let mut a = art("t.zip", &zip, Extract::Zip);
        a.sha256 = String::new();
        let report = fetch_entry(&entry(vec![a.clone()]), tmp.path(), &server.opts()).unwrap();
        assert_eq!(report.artifacts[0].verification, Verification::SizeOnly);
        assert_eq!(report.artifacts[0].sha256, sha(&zip));
        let marker = fs::read_to_string(tmp.path().join(".t.zip.extracted")).unwrap();
        assert!(
            marker.starts_with(&format!("sha256 {}\n", sha(&zip))),
            "{marker}"
        );
        assert!(
            report.summary().contains("size checked"),
            "{}",
            report.summary()
        );

        let tmp = tempfile::tempdir().unwrap();
        a.size = Some(zip.len() as u64 + 1);
        let err = fetch_entry(&entry(vec![a]), tmp.path(), &server.opts()).unwrap_err();
        assert!(matches!(err, FetchError::SizeMismatch { .. }), "{err}");
        assert!(listing(tmp.path()).is_empty());
    }

    #[test]
    fn unknown_name_lists_the_known_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let err = fetch("imagenet22k", tmp.path(), &FetchOptions::default()).unwrap_err();
        let msg = err.to_string();
        for name in [
            "cifar10",
            "cifar100",
            "svhn",
            "mnist",
            "fashion_mnist",
            "tiny_imagenet",
        ] {
            assert!(msg.contains(name), "{msg}");
        }
        assert!(msg.contains("imagenet22k"), "{msg}");
        assert_eq!(find("Fashion-MNIST").unwrap().name, "fashion_mnist");
        assert_eq!(find("tiny-imagenet").unwrap().name, "tiny_imagenet");
    }

    #[test]
    fn catalog_is_well_formed() {
        let cat = catalog();
        assert_eq!(
            catalog_names(),
            [
                "cifar10",
                "cifar100",
                "svhn",
                "mnist",
                "fashion_mnist",
                "tiny_imagenet"
            ]
        );
        for e in &cat {
            assert!(!e.artifacts.is_empty());
            let mut names = std::collections::HashSet::new();
            for a in &e.artifacts {
                assert!(a.url.starts_with("https://") || a.url.starts_with("http://"));
                assert_eq!(
                    a.url.rsplit('/').next().unwrap(),
                    a.file_name,
                    "mirrors append it"
                );
                assert!(names.insert(a.file_name.clone()));
                assert!(a.size.is_some_and(|s| s > 0));
                if e.name == "tiny_imagenet" {
                    assert_eq!(a.verification(), Verification::SizeOnly);
                } else {
                    assert_eq!(a.sha256.len(), 64, "{}", a.url);
                    assert!(
                        a.sha256
                            .bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                    );
                }
            }
        }
    }

    #[test]
    fn a_bad_mirror_or_a_file_as_dir_is_refused_before_anything_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("a-file");
        fs::write(&file, b"x").unwrap();
        let opts = FetchOptions::default();
        let e = fetch("cifar10", &file, &opts).unwrap_err();
        assert!(matches!(e, FetchError::NotADirectory { .. }), "{e}");
        assert_eq!(fs::read(&file).unwrap(), b"x");
        for m in [
            "ftp://host/x",
            "http://",
            "https:///x",
            "http://host/a b",
            "not a url",
        ] {
            let opts = FetchOptions {
                mirror: Some(m.into()),
                ..FetchOptions::default()
            };
            let dir = tmp.path().join("new");
            let e = fetch("cifar10", &dir, &opts).unwrap_err();
            assert!(matches!(e, FetchError::BadMirror { .. }), "{m}: {e}");
            assert!(!dir.exists(), "{m}: created the folder");
        }
        assert!(check_mirror("http://127.0.0.1:8000/files").is_ok());
    }

    #[test]
    fn mirror_replaces_everything_up_to_the_file_name() {
        let url = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz";
        assert_eq!(resolve_url(url, None), url);
        assert_eq!(
            resolve_url(url, Some("http://127.0.0.1:8000/data/")),
            "http://127.0.0.1:8000/data/cifar-10-binary.tar.gz"
        );
        assert_eq!(
            resolve_url(url, Some("file-server")),
            "file-server/cifar-10-binary.tar.gz"
        );
    }

    #[test]
    fn safe_relative_accepts_only_plain_relative_paths() {
        assert_eq!(
            safe_relative("a/b/c.txt").unwrap(),
            Some(PathBuf::from("a/b/c.txt"))
        );
        assert_eq!(
            safe_relative("./a//b/").unwrap(),
            Some(PathBuf::from("a/b"))
        );
        assert_eq!(safe_relative("./").unwrap(), None);
        for bad in [
            "../x",
            "a/../../x",
            "a/..",
            "/etc/passwd",
            "\\x",
            "..\\x",
            "C:\\x",
            "C:x",
            "a\0b",
        ] {
            assert!(safe_relative(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn content_range_is_parsed() {
        assert_eq!(
            content_range_start(Some("bytes 100-199/200".into())),
            Some(100)
        );
        assert_eq!(content_range_start(Some("bytes */200".into())), None);
        assert_eq!(content_range_start(None), None);
    }
}
