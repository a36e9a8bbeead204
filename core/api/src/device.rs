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
}

pub fn report() -> DeviceReport {
    DeviceReport {
        libtorch: libtorch_version(),
        cuda_available: tch::Cuda::is_available(),
        cuda_devices: cuda_device_count(),
        cudnn_available: tch::Cuda::cudnn_is_available(),
        cpu_threads: tch::get_num_threads(),
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
    fn cpu_always_resolves_and_missing_gpu_is_an_error() {
        assert_eq!(DeviceChoice::Cpu.resolve(), Ok(Device::Cpu));
        let n = cuda_device_count();
        assert!(DeviceChoice::Cuda(n).resolve().is_err());
    }
}
