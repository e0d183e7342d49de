//! Epoch checkpoints: one safetensors file per resume directory holding every state tensor, the
//! per-epoch series (as f64 tensors) and the loop bookkeeping (JSON in the file's metadata),
//! published by an atomic rename.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

/// File name of the epoch checkpoint inside `resume_dir`.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
/// Bumped when the checkpoint layout changes; older checkpoints are ignored (training restarts).
pub const CHECKPOINT_FORMAT: u32 = 1;
/// safetensors metadata key holding the [`LoopState`] JSON. Keeping it inside the one file makes
/// the rename that publishes a checkpoint atomic for weights and loop state together.
const STATE_KEY: &str = "semiflow.loop_state";
/// Loop bookkeeping saved with each checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    pub format: u32,
    pub kind: String,
    pub epochs: usize,
    pub steps_per_epoch: usize,
    /// Epochs completed: training resumes at this epoch.
    pub epoch: usize,
    /// Optimizer steps completed.
    pub step: usize,
    /// Per-epoch series so far. Stored as f64 tensors (`loop.series.NAME`), not in the JSON:
    /// a JSON decimal round-trip may change the last bit, and a resumed run must report exactly
    /// the numbers an uninterrupted one does.
    #[serde(skip)]
    pub series: BTreeMap<String, Vec<f64>>,
}

/// A decoded checkpoint.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub state: LoopState,
    /// Every tensor the trainer saved, sorted by name.
    pub tensors: Vec<(String, Tensor)>,
}

/// Name prefix of the series tensors inside a checkpoint.
const SERIES_PREFIX: &str = "loop.series.";

/// Write `tensors` and `state` to `dir/checkpoint.safetensors`, atomically: the bytes go to a
/// temporary file that is synced and then renamed over the old checkpoint, so a crash at any
/// moment leaves either the previous checkpoint or the new one, never a torn file.
pub fn save_checkpoint(
    dir: &Path,
    state: &LoopState,
    tensors: &[(String, Tensor)],
) -> anyhow::Result<()> {
    fs::create_dir_all(dir)
        .with_context(|| format!("creating resume directory {}", dir.display()))?;
    let bytes = encode(state, tensors)?;
    let path = dir.join(CHECKPOINT_FILE);
    let tmp = dir.join(format!("{CHECKPOINT_FILE}.tmp"));
    let written = (|| {
        let mut f =
            fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let half = bytes.len() / 2;
        f.write_all(&bytes[..half])
            .with_context(|| format!("writing {}", tmp.display()))?;
        crate::fault::point("checkpoint-write");
        f.write_all(&bytes[half..])
            .and_then(|_| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("publishing {}", path.display()))
    })();
    if let Err(e) = written {
        // A full disk must not also leave a partial checkpoint-sized file behind; the previous
        // checkpoint (if any) is untouched.
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    // Persist the rename itself (best effort: not every platform can open a directory).
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// The checkpoint in `dir`, if any. A checkpoint of an older format is ignored with a warning;
/// an unreadable one is an error naming the file.
pub fn load_checkpoint(dir: &Path) -> anyhow::Result<Option<Checkpoint>> {
    let path: PathBuf = dir.join(CHECKPOINT_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let bytes = fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let decoded = decode(&bytes).with_context(|| {
        format!(
            "corrupt checkpoint {}; delete it to restart training",
            path.display()
        )
    })?;
    match decoded {
        Some(x) => Ok(Some(x)),
        None => {
            tracing::warn!(path = %path.display(), "ignoring a checkpoint of an older format");
            Ok(None)
        }
    }
}

fn encode(state: &LoopState, tensors: &[(String, Tensor)]) -> anyhow::Result<Vec<u8>> {
    let mut raw: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, values) in &state.series {
        let data = le_bytes(values.clone(), f64::to_le_bytes);
        raw.push((
            format!("{SERIES_PREFIX}{name}"),
            safetensors::Dtype::F64,
            vec![values.len()],
            data,
        ));
    }
    for (name, t) in tensors {
        anyhow::ensure!(
            !name.starts_with(SERIES_PREFIX),
            "checkpoint tensor name {name} is reserved"
        );
        let dims = t.dims().to_vec();
        let t = t.to_device(&Device::Cpu)?.flatten_all()?;
        let (dtype, data) = match t.dtype() {
            DType::F32 => (
                safetensors::Dtype::F32,
                le_bytes(t.to_vec1::<f32>()?, f32::to_le_bytes),
            ),
            DType::F64 => (
                safetensors::Dtype::F64,
                le_bytes(t.to_vec1::<f64>()?, f64::to_le_bytes),
            ),
            DType::I64 => (
                safetensors::Dtype::I64,
                le_bytes(t.to_vec1::<i64>()?, i64::to_le_bytes),
            ),
            DType::U32 => (
                safetensors::Dtype::U32,
                le_bytes(t.to_vec1::<u32>()?, u32::to_le_bytes),
            ),
            DType::U8 => (safetensors::Dtype::U8, t.to_vec1::<u8>()?),
            other => anyhow::bail!("checkpoint: tensor {name} has unsupported dtype {other:?}"),
        };
        raw.push((name.clone(), dtype, dims, data));
    }
    let mut views = Vec::with_capacity(raw.len());
    for (name, dtype, shape, data) in &raw {
        views.push((
            name.as_str(),
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), data)?,
        ));
    }
    let meta = HashMap::from([(STATE_KEY.to_string(), serde_json::to_string(state)?)]);
    Ok(safetensors::tensor::serialize(views, Some(meta))?)
}

fn le_bytes<T: Copy, const N: usize>(v: Vec<T>, f: fn(T) -> [u8; N]) -> Vec<u8> {
    v.into_iter().flat_map(f).collect()
}

/// `None` when the file is a checkpoint of another format version.
fn decode(bytes: &[u8]) -> anyhow::Result<Option<Checkpoint>> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)?;
    let json = meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATE_KEY))
        .context("no loop state in the checkpoint metadata")?;
    let value: serde_json::Value = serde_json::from_str(json)?;
    if value.get("format").and_then(|f| f.as_u64()) != Some(CHECKPOINT_FORMAT as u64) {
        return Ok(None);
    }
    let mut state: LoopState = serde_json::from_value(value)?;
    let st = safetensors::SafeTensors::deserialize(bytes)?;
    let mut tensors = Vec::new();
    for (name, view) in st.tensors() {
        let shape = view.shape().to_vec();
        let data = view.data();
        let t = match view.dtype() {
            safetensors::Dtype::F32 => {
                Tensor::from_vec(from_le(data, f32::from_le_bytes), shape, &Device::Cpu)?
            }
            safetensors::Dtype::F64 => {
                Tensor::from_vec(from_le(data, f64::from_le_bytes), shape, &Device::Cpu)?
            }
            safetensors::Dtype::I64 => {
                Tensor::from_vec(from_le(data, i64::from_le_bytes), shape, &Device::Cpu)?
            }
            safetensors::Dtype::U32 => {
                Tensor::from_vec(from_le(data, u32::from_le_bytes), shape, &Device::Cpu)?
            }
            safetensors::Dtype::U8 => Tensor::from_vec(data.to_vec(), shape, &Device::Cpu)?,
            other => anyhow::bail!("tensor {name} has unsupported dtype {other:?}"),
        };
        match name.strip_prefix(SERIES_PREFIX) {
            Some(series) => {
                state.series.insert(series.to_string(), t.to_vec1::<f64>()?);
            }
            None => tensors.push((name, t)),
        }
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Some(Checkpoint { state, tensors }))
}

fn from_le<T, const N: usize>(data: &[u8], f: fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N)
        .map(|c| f(c.try_into().expect("chunks_exact yields N bytes")))
        .collect()
}

/// Look a tensor up by name in restored state.
pub fn take<'a>(state: &'a [(String, Tensor)], name: &str) -> anyhow::Result<&'a Tensor> {
    state
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, t)| t)
        .with_context(|| format!("checkpoint lacks tensor `{name}`"))
}

/// The entries of `state` whose names start with `prefix`, with the prefix stripped.
pub fn with_prefix(state: &[(String, Tensor)], prefix: &str) -> Vec<(String, Tensor)> {
    state
        .iter()
        .filter_map(|(n, t)| n.strip_prefix(prefix).map(|s| (s.to_string(), t.clone())))
        .collect()
}

/// Prefix every name (to keep model, optimizer and memory tensors apart in one checkpoint).
pub fn prefixed(prefix: &str, state: Vec<(String, Tensor)>) -> Vec<(String, Tensor)> {
    state
        .into_iter()
        .map(|(n, t)| (format!("{prefix}{n}"), t))
        .collect()
}
