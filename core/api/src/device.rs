//! Device choice: `auto | cpu | cuda | cuda:N`.

use std::fmt;
use std::str::FromStr;

use tch::Device;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum DeviceError {
    #[error("unknown device `{0}`: expected auto, cpu, cuda or cuda:N")]
    Unknown(String),
    #[error("device `{asked}` asked for, but {found}")]
    Unavailable { asked: String, found: String },
}

/// What the user asked for; resolved against the machine by [`DeviceChoice::resolve`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    /// CUDA device 0 when present, else the CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = DeviceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| DeviceError::Unknown(s.to_string())),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => write!(f, "auto"),
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceChoice {
    /// The concrete device, checking that an asked-for GPU exists.
    pub fn resolve(self) -> Result<Device, DeviceError> {
        let count = cuda_device_count();
        match self {
            Self::Auto if count > 0 => Ok(Device::Cuda(0)),
            Self::Auto | Self::Cpu => Ok(Device::Cpu),
            Self::Cuda(i) if i < count => Ok(Device::Cuda(i)),
            Self::Cuda(_) => Err(DeviceError::Unavailable {
                asked: self.to_string(),
                found: if count == 0 {
                    "libtorch sees no CUDA device".to_string()
                } else {
                    format!("libtorch sees {count} CUDA device(s)")
                },
            }),
        }
    }
}

/// Number of CUDA devices libtorch can use (0 without a GPU or without `libtorch_cuda`).
pub fn cuda_device_count() -> usize {
    if tch::Cuda::is_available() {
        tch::Cuda::device_count().max(0) as usize
    } else {
        0
    }
}

/// A short human name: `cpu` or `cuda:0`.
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Mps => "mps".into(),
        Device::Vulkan => "vulkan".into(),
        _ => "cpu".into(),
    }
}

/// Waits for queued device work, so that wall-clock timings measure the work itself.
pub fn synchronize(d: Device) {
    if let Device::Cuda(i) = d {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Facts about the machine for reports and `unlearn info`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceReport {
    pub libtorch: String,
    pub cuda_available: bool,
    pub cuda_devices: usize,
    pub cudnn_available: bool,
    pub cpu_threads: i32,
    /// The CPU instruction set libtorch's kernels use (`AVX2`, `AVX512`, ...).
    pub cpu_capability: String,
    /// The CUDA runtime libtorch was built with (`13.0`), None without CUDA.
    pub cuda_runtime: Option<String>,
    /// The cuDNN libtorch was built with (`9.19.0`), None without it.
    pub cudnn: Option<String>,
    /// Each CUDA device, as the driver describes it (empty when no driver is loaded).
    #[cfg(feature = "host")]
    pub gpus: Vec<GpuInfo>,
}

pub fn report() -> DeviceReport {
    let (cudart, cudnn) = crate::exec::cuda_versions();
    DeviceReport {
        libtorch: libtorch_version(),
        cuda_available: tch::Cuda::is_available(),
        cuda_devices: cuda_device_count(),
        cudnn_available: tch::Cuda::cudnn_is_available(),
        cpu_threads: tch::get_num_threads(),
        cpu_capability: crate::exec::cpu_capability(),
        cuda_runtime: cudart.map(|v| crate::exec::version_string(v, false)),
        cudnn: cudnn.map(|v| crate::exec::version_string(v, true)),
        #[cfg(feature = "host")]
        gpus: gpus(),
    }
}

/// One CUDA device as the driver reports it.
#[cfg(feature = "host")]
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GpuInfo {
    pub index: usize,
    pub name: String,
    pub memory_bytes: u64,
    /// Compute capability (9.0 for Hopper).
    pub compute_capability: (i32, i32),
    pub multiprocessors: i32,
    /// Peak SM clock, kHz.
    pub clock_khz: i32,
    /// The driver's CUDA version (`13.0`): the newest runtime it can run.
    pub driver_cuda: String,
}

/// The CUDA devices the driver sees, through its C API (`libcuda.so.1`, whose functions are stable
/// across versions), since libtorch's device properties need the CUDA headers to reach. Empty
/// when there is no driver (a CPU-only machine) or it fails.
#[cfg(feature = "host")]
pub fn gpus() -> Vec<GpuInfo> {
    // SAFETY: libcuda's documented signatures; every out-pointer is a live local.
    unsafe { query_gpus() }.unwrap_or_default()
}

#[cfg(feature = "host")]
unsafe fn query_gpus() -> Option<Vec<GpuInfo>> {
    // SAFETY: the caller upholds what this `unsafe fn` requires (its doc comment).
    unsafe {
        use std::ffi::{CStr, c_char, c_int};
        type Init = unsafe extern "C" fn(u32) -> c_int;
        type Count = unsafe extern "C" fn(*mut c_int) -> c_int;
        type Get = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
        type Name = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
        type Mem = unsafe extern "C" fn(*mut usize, c_int) -> c_int;
        type Attr = unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_int;
        type Version = unsafe extern "C" fn(*mut c_int) -> c_int;
        // CUdevice_attribute codes (cuda.h).
        const CLOCK_RATE: c_int = 13;
        const MULTIPROCESSORS: c_int = 16;
        const CC_MAJOR: c_int = 75;
        const CC_MINOR: c_int = 76;

        let lib = libloading::Library::new("libcuda.so.1").ok()?;
        let init: libloading::Symbol<Init> = lib.get(b"cuInit").ok()?;
        let count: libloading::Symbol<Count> = lib.get(b"cuDeviceGetCount").ok()?;
        let get: libloading::Symbol<Get> = lib.get(b"cuDeviceGet").ok()?;
        let name: libloading::Symbol<Name> = lib.get(b"cuDeviceGetName").ok()?;
        let mem: libloading::Symbol<Mem> = lib.get(b"cuDeviceTotalMem_v2").ok()?;
        let attr: libloading::Symbol<Attr> = lib.get(b"cuDeviceGetAttribute").ok()?;
        let version: libloading::Symbol<Version> = lib.get(b"cuDriverGetVersion").ok()?;
        if init(0) != 0 {
            return None;
        }
        let (mut n, mut v) = (0, 0);
        if count(&mut n) != 0 || version(&mut v) != 0 {
            return None;
        }
        let mut out = Vec::new();
        for i in 0..n {
            let mut dev = 0;
            if get(&mut dev, i) != 0 {
                continue;
            }
            let mut buf = [0 as c_char; 256];
            let mut bytes = 0usize;
            let a = |code| {
                let mut x = 0;
                if attr(&mut x, code, dev) == 0 { x } else { 0 }
            };
            if name(buf.as_mut_ptr(), buf.len() as c_int, dev) != 0 || mem(&mut bytes, dev) != 0 {
                continue;
            }
            out.push(GpuInfo {
                index: i as usize,
                name: CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned(),
                memory_bytes: bytes as u64,
                compute_capability: (a(CC_MAJOR), a(CC_MINOR)),
                multiprocessors: a(MULTIPROCESSORS),
                clock_khz: a(CLOCK_RATE),
                driver_cuda: format!("{}.{}", v / 1000, v % 1000 / 10),
            });
        }
        Some(out)
    }
}

/// The libtorch version this binary was built against (torch-sys records it at build time).
pub fn libtorch_version() -> String {
    option_env!("LIBTORCH_VERSION")
        .unwrap_or("2.11.0")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_names() {
        assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
        assert_eq!("CPU".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceChoice::Cuda(3)));
        assert!("cuda:x".parse::<DeviceChoice>().is_err());
        assert!("tpu".parse::<DeviceChoice>().is_err());
    }

    #[test]
    fn report_names_the_cpu_and_the_cuda_build() {
        let r = report();
        assert!(!r.cpu_capability.is_empty() && r.cpu_capability != "unknown");
        // The pip wheel this project builds against is a CUDA build, GPU or not.
        assert!(
            r.cuda_runtime.as_deref().is_some_and(|v| v.contains('.')),
            "{r:?}"
        );
        #[cfg(feature = "host")]
        assert_eq!(!r.gpus.is_empty(), r.cuda_devices > 0, "{r:?}");
    }

    #[test]
    fn versions_print_as_cuda_writes_them() {
        assert_eq!(crate::exec::version_string(13000, false), "13.0");
        assert_eq!(crate::exec::version_string(12080, false), "12.8");
        assert_eq!(crate::exec::version_string(91900, true), "9.19.0");
    }

    #[test]
    fn cpu_always_resolves_and_missing_gpu_is_an_error() {
        assert_eq!(DeviceChoice::Cpu.resolve(), Ok(Device::Cpu));
        let n = cuda_device_count();
        assert!(DeviceChoice::Cuda(n).resolve().is_err());
    }
}
