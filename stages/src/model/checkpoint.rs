//! Model checkpoints: `model.safetensors` (every state tensor under its stable name) plus a
//! `model.json` sidecar describing the architecture, so a checkpoint can be rebuilt without the
//! pipeline that produced it, and a mismatch is caught before any tensor is used.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::config::ModelCfg;
use super::network::{NetShape, Network};
use super::params::Init;

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const SIDECAR_FILE: &str = "model.json";
const FORMAT: &str = "semiflow-model";
const FORMAT_VERSION: u32 = 1;

/// The classifier a checkpoint carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierInfo {
    pub num_classes: usize,
    /// Head output the classifier reads (0 = encoder features).
    pub head_layer: usize,
}

/// Contents of `model.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sidecar {
    pub format: String,
    pub format_version: u32,
    pub arch: ModelCfg,
    pub image_size: usize,
    pub in_channels: usize,
    /// Projection-head layers stored (arch.head_layers for pretraining checkpoints).
    pub head_kept: usize,
    pub classifier: Option<ClassifierInfo>,
}

impl Sidecar {
    pub(crate) fn of(net: &Network) -> Sidecar {
        let s = net.net_shape();
        Sidecar {
            format: FORMAT.to_string(),
            format_version: FORMAT_VERSION,
            arch: net.arch().clone(),
            image_size: s.image_size,
            in_channels: s.in_channels,
            head_kept: s.head_kept,
            classifier: s
                .classifier
                .map(|(num_classes, head_layer)| ClassifierInfo {
                    num_classes,
                    head_layer,
                }),
        }
    }

    pub(crate) fn shape(&self) -> NetShape {
        NetShape {
            image_size: self.image_size,
            in_channels: self.in_channels,
            head_kept: self.head_kept,
            classifier: self.classifier.map(|c| (c.num_classes, c.head_layer)),
        }
    }
}

/// Read only the sidecar of the checkpoint in `dir` (cheap: for deciding what a checkpoint is).
pub fn read_sidecar(dir: &Path) -> Result<Sidecar> {
    let path = dir.join(SIDECAR_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading model sidecar {}", path.display()))?;
    let sidecar: Sidecar = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a valid semiflow model sidecar", path.display()))?;
    if sidecar.format != FORMAT || sidecar.format_version != FORMAT_VERSION {
        bail!(
            "{}: format {:?} version {} is not {FORMAT:?} version {FORMAT_VERSION}",
            path.display(),
            sidecar.format,
            sidecar.format_version
        );
    }
    Ok(sidecar)
}

pub fn save(net: &Network, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let weights = dir.join(WEIGHTS_FILE);
    // safetensors orders tensors by (dtype, name) itself, so the bytes depend only on the values.
    let tensors: HashMap<String, Tensor> = net.state_tensors().into_iter().collect();
    candle_core::safetensors::save(&tensors, &weights)
        .with_context(|| format!("writing {}", weights.display()))?;
    let sidecar = dir.join(SIDECAR_FILE);
    let json = serde_json::to_string_pretty(&Sidecar::of(net))?;
    std::fs::write(&sidecar, json + "\n")
        .with_context(|| format!("writing {}", sidecar.display()))?;
    Ok(())
}

pub fn load(dir: &Path, device: &Device) -> Result<Network> {
    let sidecar = read_sidecar(dir)?;
    let sidecar_path = dir.join(SIDECAR_FILE);
    let weights = dir.join(WEIGHTS_FILE);
    let net = Network::build(&sidecar.arch, sidecar.shape(), &Init::skeleton(device))
        .with_context(|| format!("{}: describes an invalid network", sidecar_path.display()))?;
    let stored: BTreeMap<String, Tensor> = candle_core::safetensors::load(&weights, device)
        .with_context(|| format!("reading {}", weights.display()))?
        .into_iter()
        .collect();
    let expected: BTreeMap<String, Vec<usize>> = net.state_shapes().into_iter().collect();
    let mut problems = Vec::new();
    for (name, shape) in &expected {
        match stored.get(name) {
            None => problems.push(format!("missing {name}")),
            Some(t) if t.dims() != shape.as_slice() => problems.push(format!(
                "{name} has shape {:?}, expected {shape:?}",
                t.dims()
            )),
            Some(_) => {}
        }
    }
    for name in stored.keys().filter(|n| !expected.contains_key(*n)) {
        problems.push(format!("unexpected {name}"));
    }
    if !problems.is_empty() {
        let shown = problems.len().min(8);
        bail!(
            "{} does not match the architecture in {} ({} problem(s)): {}{}",
            weights.display(),
            sidecar_path.display(),
            problems.len(),
            problems[..shown].join("; "),
            if problems.len() > shown { "; ..." } else { "" }
        );
    }
    let state: Vec<(String, Tensor)> = stored.into_iter().collect();
    net.load_state(&state)
        .with_context(|| format!("loading {}", weights.display()))?;
    Ok(net)
}
