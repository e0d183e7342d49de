//! `device = "cpu" | "cuda" | "cuda:N"`: where a training or eval node computes.
//!
//! The choice is a parameter of the kinds in [`DEVICE_KINDS`]. It is left out of the resolved
//! parameters when it is `"cpu"` (the default), so the cache keys of CPU nodes are the ones they
//! had before devices could be chosen; any other value enters the key, so results computed on a
//! GPU are never served for a CPU node or the other way round. `"cuda:0"` is written `"cuda"`.
//!
//! On CUDA the fast conv/BatchNorm kernels (`crate::kernels`, CPU-only) give way to candle's own
//! ops, and the numerics differ from the CPU's in the last bits (summation order, cuBLAS).

use std::fmt;

use candle_core::Device;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The stage kinds that take a `device` parameter.
pub const DEVICE_KINDS: &[&str] = &["pretrain", "finetune", "supervised", "distill", "eval"];

/// Whether this build can compute on CUDA (the `cuda` cargo feature).
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// A node's `device` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceChoice {
    #[default]
    Cpu,
    /// The CUDA device with this ordinal.
    Cuda(usize),
}

impl DeviceChoice {
    /// For `#[serde(skip_serializing_if)]`: the default is left out of resolved params.
    pub fn is_cpu(&self) -> bool {
        *self == DeviceChoice::Cpu
    }

    /// Parse `"cpu"`, `"cuda"` or `"cuda:N"`.
    pub fn parse(s: &str) -> Result<DeviceChoice, String> {
        let bad = || format!("expected \"cpu\", \"cuda\" or \"cuda:N\" (N = 0, 1, ...), got {s:?}");
        match s {
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" => Ok(DeviceChoice::Cuda(0)),
            _ => {
                let n = s.strip_prefix("cuda:").ok_or_else(bad)?;
                if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                n.parse().map(DeviceChoice::Cuda).map_err(|_| bad())
            }
        }
    }

    /// Open the device. Errors say what is missing: a binary built without the `cuda` feature,
    /// the NVIDIA driver or CUDA libraries, or the GPU itself.
    pub fn open(&self) -> anyhow::Result<Device> {
        match *self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(ordinal) => open_cuda(ordinal, self),
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Cpu => f.write_str("cpu"),
            DeviceChoice::Cuda(0) => f.write_str("cuda"),
            DeviceChoice::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl Serialize for DeviceChoice {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = DeviceChoice;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"cpu\", \"cuda\" or \"cuda:N\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DeviceChoice, E> {
                DeviceChoice::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

/// The device as provenance: `{"device": "cuda:0", "name": "NVIDIA H100 80GB HBM3"}`; `None`
/// on the CPU, whose records stay as they were.
pub fn describe(device: &Device) -> Option<serde_json::Value> {
    match device {
        Device::Cpu => None,
        #[cfg(feature = "cuda")]
        Device::Cuda(d) => {
            let stream = d.cuda_stream();
            let ctx = stream.context();
            let name = ctx.name().unwrap_or_else(|e| format!("unknown ({e})"));
            Some(serde_json::json!({
                "device": format!("cuda:{}", ctx.ordinal()),
                "name": name,
            }))
        }
        other => Some(serde_json::json!({ "device": format!("{:?}", other.location()) })),
    }
}

/// Add `details.device` (see [`describe`]) for a node that ran off the CPU.
pub fn record(details: &mut serde_json::Value, device: &Device) {
    if let (Some(d), Some(obj)) = (describe(device), details.as_object_mut()) {
        obj.insert("device".into(), d);
    }
}

/// A device kind's `run`: open the node's device, run `body` on it, and on a GPU log the device,
/// record it in the output's details and explain an out-of-memory error (see [`explain_oom`]).
pub fn run_on(
    ctx: &crate::api::RunCtx,
    choice: DeviceChoice,
    batch_size: usize,
    body: impl FnOnce(Device) -> anyhow::Result<crate::api::StageOutput>,
) -> anyhow::Result<crate::api::StageOutput> {
    let device = choice.open()?;
    if let Some(d) = describe(&device) {
        ctx.progress.message(&format!("device: {d}"));
    }
    let mut out = explain_oom(body(device.clone()), choice, batch_size)?;
    record(&mut out.details, &device);
    Ok(out)
}

/// Turn a CUDA out-of-memory error into one that says what to change: a smaller `batch_size`
/// (`batch_size` is the node's current value). Other errors pass unchanged.
pub fn explain_oom<T>(
    result: anyhow::Result<T>,
    choice: DeviceChoice,
    batch_size: usize,
) -> anyhow::Result<T> {
    result.map_err(|e| {
        let text = format!("{e:#}");
        if !choice.is_cpu() && (text.contains("OUT_OF_MEMORY") || text.contains("out of memory")) {
            e.context(format!(
                "{choice} ran out of GPU memory at batch_size = {batch_size}: try a smaller \
                 `batch_size` (e.g. --set NODE.batch_size={})",
                (batch_size / 2).max(1)
            ))
        } else {
            e
        }
    })
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(_ordinal: usize, choice: &DeviceChoice) -> anyhow::Result<Device> {
    anyhow::bail!(
        "device = \"{choice}\" needs a semiflow built with CUDA support, and this binary was \
         built without the `cuda` feature: build it with `cargo build --release --features cuda` \
         on a machine with the CUDA 13 toolkit (README, \"GPUs\"), or set device = \"cpu\""
    )
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize, choice: &DeviceChoice) -> anyhow::Result<Device> {
    use anyhow::Context as _;
    use candle_core::cuda_backend::cudarc;

    // cudarc opens these at first use and panics when one is missing; check them first so the
    // error says which. (Safety: only dlopen/dlclose of the named libraries.)
    let present: [(&str, bool); 4] = unsafe {
        [
            (
                "libcuda.so (the NVIDIA driver)",
                cudarc::driver::sys::is_culib_present(),
            ),
            ("libcublas.so.13", cudarc::cublas::sys::is_culib_present()),
            (
                "libcublasLt.so.13",
                cudarc::cublaslt::sys::is_culib_present(),
            ),
            ("libcurand.so.10", cudarc::curand::sys::is_culib_present()),
        ]
    };
    if !present[0].1 {
        anyhow::bail!(
            "device = \"{choice}\": no CUDA device found: the NVIDIA driver library libcuda.so \
             cannot be loaded (no GPU or no driver on this machine); set device = \"cpu\""
        );
    }
    let missing: Vec<&str> = present
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(n, _)| *n)
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "device = \"{choice}\": CUDA libraries not found: {}; install the CUDA 13 toolkit \
             (or the nvidia-cublas and nvidia-curand wheels) and put their lib directory on \
             LD_LIBRARY_PATH",
            missing.join(", ")
        );
    }
    let count = cudarc::driver::CudaContext::device_count().map_err(|e| {
        anyhow::anyhow!("device = \"{choice}\": no CUDA device found: the driver failed: {e}")
    })?;
    if ordinal >= count.max(0) as usize {
        anyhow::bail!(
            "device = \"{choice}\": no CUDA device {ordinal}: the driver reports {count} device{}",
            if count == 1 { "" } else { "s" }
        );
    }
    // One stream shared by every thread that touches the device (the batch prefetch thread
    // uploads while the training thread computes), rather than each thread's default stream.
    Device::new_cuda_with_stream(ordinal)
        .with_context(|| format!("device = \"{choice}\": opening CUDA device {ordinal}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_the_three_forms() {
        assert_eq!(DeviceChoice::parse("cpu"), Ok(DeviceChoice::Cpu));
        assert_eq!(DeviceChoice::parse("cuda"), Ok(DeviceChoice::Cuda(0)));
        assert_eq!(DeviceChoice::parse("cuda:0"), Ok(DeviceChoice::Cuda(0)));
        assert_eq!(DeviceChoice::parse("cuda:3"), Ok(DeviceChoice::Cuda(3)));
        for bad in [
            "gpu", "CUDA", "cuda:", "cuda:x", "cuda:-1", "cuda:+1", "cuda 1", "",
        ] {
            let e = DeviceChoice::parse(bad).unwrap_err();
            assert!(e.contains("\"cuda:N\""), "{bad}: {e}");
        }
        assert_eq!(DeviceChoice::Cuda(0).to_string(), "cuda");
        assert_eq!(DeviceChoice::Cuda(2).to_string(), "cuda:2");
        assert_eq!(
            serde_json::to_value(DeviceChoice::Cuda(0)).unwrap(),
            serde_json::json!("cuda")
        );
        let e = serde_json::from_value::<DeviceChoice>(serde_json::json!(1)).unwrap_err();
        assert!(
            e.to_string().contains("\"cpu\", \"cuda\" or \"cuda:N\""),
            "{e}"
        );
    }

    #[test]
    fn cpu_params_resolve_as_before() {
        // "cpu", written or defaulted, is absent from the resolved params, which are what the
        // cache key hashes: CPU keys are the ones from before the parameter existed.
        for name in DEVICE_KINDS {
            let kind = crate::api::kind(name).unwrap();
            let plain = (kind.resolve_params)(&serde_json::json!({})).unwrap();
            assert!(plain.get("device").is_none(), "{name}: {plain}");
            let cpu = (kind.resolve_params)(&serde_json::json!({"device": "cpu"})).unwrap();
            assert_eq!(cpu, plain, "{name}");
            let cuda = (kind.resolve_params)(&serde_json::json!({"device": "cuda:0"})).unwrap();
            assert_eq!(cuda["device"], "cuda", "{name}");
            let e = (kind.resolve_params)(&serde_json::json!({"device": "gpu"})).unwrap_err();
            assert_eq!(e.path, "device", "{name}");
            assert!(e.message.contains("\"cuda:N\""), "{name}: {e}");
        }
        // The kinds without a device refuse the key.
        for kind in crate::api::registry() {
            if !DEVICE_KINDS.contains(&kind.name) {
                let r = (kind.resolve_params)(&serde_json::json!({"device": "cpu"}));
                assert!(r.is_err(), "{} accepts `device`", kind.name);
            }
        }
    }

    #[test]
    fn cpu_opens_everywhere() {
        assert!(DeviceChoice::Cpu.open().unwrap().is_cpu());
        assert!(describe(&Device::Cpu).is_none());
        let mut d = serde_json::json!({"a": 1});
        record(&mut d, &Device::Cpu);
        assert_eq!(d, serde_json::json!({"a": 1}));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_build_it() {
        let e = DeviceChoice::Cuda(1).open().unwrap_err().to_string();
        assert!(e.contains("device = \"cuda:1\""), "{e}");
        assert!(e.contains("--features cuda"), "{e}");
    }

    #[test]
    fn out_of_memory_suggests_a_smaller_batch() {
        let oom: anyhow::Result<()> = Err(anyhow::anyhow!(
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")"
        ));
        let e = explain_oom(oom, DeviceChoice::Cuda(0), 256).unwrap_err();
        let text = format!("{e:#}");
        assert!(
            text.contains("cuda ran out of GPU memory at batch_size = 256"),
            "{text}"
        );
        assert!(text.contains("batch_size=128"), "{text}");
        assert!(text.contains("CUDA_ERROR_OUT_OF_MEMORY"), "{text}");
        let other: anyhow::Result<()> = Err(anyhow::anyhow!("shape mismatch"));
        let e = explain_oom(other, DeviceChoice::Cuda(0), 256).unwrap_err();
        assert_eq!(format!("{e:#}"), "shape mismatch");
    }
}
