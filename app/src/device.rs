//! Which candle device the models run on: CUDA device 0 in a `cuda` build when usable, else the CPU.

use std::sync::OnceLock;

use anyhow::bail;
use candle_core::Device;

/// The environment variable that forces the device: `cpu` or `cuda` (unset or `auto`: choose).
pub const DEVICE_ENV: &str = "DITLENS_DEVICE";

/// What `DITLENS_DEVICE` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// CUDA device 0 when this build has CUDA and a device is usable, otherwise the CPU.
    Auto,
    Cpu,
    /// CUDA device 0, or an error.
    Cuda,
}

/// Parses the value of `DITLENS_DEVICE` (case and surrounding spaces ignored).
pub fn parse_device_choice(value: Option<&str>) -> anyhow::Result<DeviceChoice> {
    let Some(v) = value.map(str::trim) else {
        return Ok(DeviceChoice::Auto);
    };
    match v.to_ascii_lowercase().as_str() {
        "" | "auto" => Ok(DeviceChoice::Auto),
        "cpu" => Ok(DeviceChoice::Cpu),
        "cuda" => Ok(DeviceChoice::Cuda),
        _ => bail!("{DEVICE_ENV}={v:?} is not a device; use `cpu` or `cuda`, or leave it unset"),
    }
}

/// The device every model of this process runs on, chosen once (from `DITLENS_DEVICE` and what
/// is there) and then shared, so that tensors of different models can meet.
pub fn compute_device() -> anyhow::Result<Device> {
    static CHOSEN: OnceLock<Result<Device, String>> = OnceLock::new();
    CHOSEN
        .get_or_init(|| {
            let raw = std::env::var_os(DEVICE_ENV);
            let raw = raw.as_deref().map(|v| v.to_str().unwrap_or("(not UTF-8)"));
            parse_device_choice(raw)
                .and_then(open)
                .map_err(|e| format!("{e:#}"))
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

fn open(choice: DeviceChoice) -> anyhow::Result<Device> {
    match choice {
        DeviceChoice::Cpu => Ok(Device::Cpu),
        DeviceChoice::Cuda => {
            cuda().map_err(|e| anyhow::anyhow!("{e:#}; set {DEVICE_ENV}=cpu to use the CPU"))
        }
        DeviceChoice::Auto => match cuda() {
            Ok(dev) => Ok(dev),
            Err(e) => {
                if cfg!(feature = "cuda") {
                    eprintln!("note: running on the CPU: {e:#}");
                }
                Ok(Device::Cpu)
            }
        },
    }
}

#[cfg(feature = "cuda")]
fn cuda() -> anyhow::Result<Device> {
    // A driver or library problem must come back as an error, never take the process down.
    match std::panic::catch_unwind(|| Device::new_cuda(0)) {
        Ok(Ok(dev)) => Ok(dev),
        Ok(Err(e)) => {
            // The reason alone: a captured backtrace (RUST_BACKTRACE) says nothing to a user here.
            let e = match e {
                candle_core::Error::WithBacktrace { inner, .. } => *inner,
                e => e,
            };
            bail!("CUDA device 0 is not usable: {e}")
        }
        Err(_) => bail!("CUDA device 0 could not be opened"),
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda() -> anyhow::Result<Device> {
    bail!(
        "this build of ditlens has no CUDA support (build it with `--features cuda`, see \
         \"CUDA build\" in the README)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_choices() {
        assert_eq!(parse_device_choice(None).unwrap(), DeviceChoice::Auto);
        assert_eq!(parse_device_choice(Some("")).unwrap(), DeviceChoice::Auto);
        assert_eq!(
            parse_device_choice(Some("auto")).unwrap(),
            DeviceChoice::Auto
        );
        assert_eq!(parse_device_choice(Some("cpu")).unwrap(), DeviceChoice::Cpu);
        assert_eq!(
            parse_device_choice(Some(" CPU ")).unwrap(),
            DeviceChoice::Cpu
        );
        assert_eq!(
            parse_device_choice(Some("cuda")).unwrap(),
            DeviceChoice::Cuda
        );
        assert_eq!(
            parse_device_choice(Some("Cuda")).unwrap(),
            DeviceChoice::Cuda
        );
        let err = parse_device_choice(Some("gpu0")).unwrap_err().to_string();
        assert!(
            err.contains("DITLENS_DEVICE") && err.contains("gpu0"),
            "{err}"
        );
    }

    #[test]
    fn cpu_is_always_there_and_cuda_needs_the_feature() {
        assert!(open(DeviceChoice::Cpu).unwrap().is_cpu());
        if cfg!(not(feature = "cuda")) {
            assert!(open(DeviceChoice::Auto).unwrap().is_cpu());
            let err = open(DeviceChoice::Cuda).unwrap_err().to_string();
            assert!(err.contains("no CUDA support"), "{err}");
        }
    }
}
