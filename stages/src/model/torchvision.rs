//! Models in torchvision's key names, and files other tools can load.
//!
//! # The naming (`format = "torchvision"`)
//!
//! semiflow's ResNet v1 is torchvision's ResNet v1.5 layout (stride on the 3×3 convolution of a
//! bottleneck, 1×1-conv + BN projection shortcuts, BN after every convolution), so its tensors map
//! one to one onto torchvision's `state_dict` keys:
//!
//! | semiflow | torchvision |
//! |---|---|
//! | `encoder.stem.conv1.weight`, `encoder.stem.bn1.*` | `conv1.weight`, `bn1.*` |
//! | `encoder.layerG.B.convK.weight`, `encoder.layerG.B.bnK.*` | `layerG.B.convK.weight`, `layerG.B.bnK.*` |
//! | `encoder.layerG.B.shortcut.conv.weight`, `….shortcut.bn.*` | `layerG.B.downsample.0.weight`, `….downsample.1.*` |
//! | `classifier.weight`, `classifier.bias` (on the encoder output) | `fc.weight`, `fc.bias` |
//!
//! Every BatchNorm also gets torchvision's `num_batches_tracked` (int64, 0: semiflow does not
//! count batches; PyTorch reads it only when `momentum=None`).
//!
//! **Stems.** The ImageNet stem (7×7/2 conv + 3×3/2 max-pool) and the CIFAR stem (3×3/1 conv, no
//! max-pool) both export as `conv1` + `bn1`; the shape of `conv1.weight` (`[C, 3, 7, 7]` or
//! `[C, 3, 3, 3]`) says which. In PyTorch the CIFAR stem is `conv1 = nn.Conv2d(3, C, 3, 1, 1,
//! bias=False)` and `maxpool = nn.Identity()`. semiflow's max-pool pads TF-style ("SAME": the
//! extra padding row/column at the end), torchvision's pads one pixel on both sides: on an even
//! input (224 px → 112 after `conv1`) the windows are one pixel apart, so exact agreement needs
//! `maxpool` replaced by a TF-"SAME" pool (it has no parameters, `strict=True` loading is
//! unaffected; `scripts/semiflow_torch.py` has one).
//!
//! **Projection-head layers** that a model keeps (fine-tuned from head layer 1, as SimCLRv2 does;
//! or a pretraining checkpoint's whole head) go into `fc` as an `nn.Sequential`, three slots per
//! head layer so the indices are regular: head layer `i` (1-based) is `fc.{3(i−1)}` = `Linear(bias=False)`,
//! `fc.{3(i−1)+1}` = `BatchNorm1d`, `fc.{3(i−1)+2}` = `ReLU` (or `Identity` for the head's last
//! layer, which has none), and the classifier after `k` kept layers is `fc.{3k}` = `Linear`. The
//! head's last BatchNorm has no β in semiflow (SimCLRv2's `center=False`); it exports with
//! `bias` = zeros, which computes the same. With this, torchvision's own `forward` computes the
//! model's output (logits, or projections for a pretraining checkpoint) unchanged.
//!
//! **Selective kernels** (SimCLRv2's SK ResNets, with their ResNet-D stem and shortcuts) have no
//! torchvision counterpart: their export in this naming is refused; `format = "safetensors"`
//! (semiflow's own names) carries them.
//!
//! **Width multipliers** keep the names and scale the shapes; torchvision's constructors build
//! only width 1, so other widths need the widths from the sidecar (`scripts/semiflow_torch.py`
//! builds any of them from torchvision's own blocks).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use super::checkpoint::Sidecar;
use super::config::{BlockKind, ModelCfg, Stem};
use super::network::Network;

/// Key names of a model file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Naming {
    /// torchvision's ResNet `state_dict` keys (the module docs).
    Torchvision,
    /// semiflow's own names (`encoder.…`, `head.…`, `classifier.…`), as in its checkpoints.
    Safetensors,
}

impl Naming {
    pub fn as_str(self) -> &'static str {
        match self {
            Naming::Torchvision => "torchvision",
            Naming::Safetensors => "safetensors",
        }
    }
}

/// The key under which exported files carry their sidecar in the safetensors header
/// (`__metadata__`), so an import knows the exact architecture without a second file.
pub const METADATA_KEY: &str = "semiflow";

/// torchvision's name of BatchNorm's batch counter.
const NUM_BATCHES_TRACKED: &str = "num_batches_tracked";

/// The torchvision key of semiflow tensor `name` in a network keeping `head_kept` head layers.
/// `None` for a name with no torchvision counterpart (selective kernels, the ResNet-D stem).
pub fn torchvision_name(name: &str, head_kept: usize) -> Option<String> {
    if let Some(rest) = name.strip_prefix("encoder.stem.") {
        return match rest.split_once('.') {
            Some(("conv1" | "bn1", _)) => Some(rest.to_string()),
            _ => None,
        };
    }
    if let Some(rest) = name.strip_prefix("encoder.") {
        // layerG.B.<module>.<tensor>
        let mut parts = rest.splitn(3, '.');
        let (group, block, tail) = (parts.next()?, parts.next()?, parts.next()?);
        let tail = if let Some(t) = tail.strip_prefix("shortcut.conv.") {
            format!("downsample.0.{t}")
        } else if let Some(t) = tail.strip_prefix("shortcut.bn.") {
            format!("downsample.1.{t}")
        } else if tail.starts_with("sk.") {
            return None;
        } else {
            tail.to_string()
        };
        return Some(format!("{group}.{block}.{tail}"));
    }
    if let Some(rest) = name.strip_prefix("head.") {
        let (layer, tail) = rest.split_once('.')?;
        let i: usize = layer.parse().ok()?;
        let base = 3 * (i.checked_sub(1)?);
        return if let Some(t) = tail.strip_prefix("linear.") {
            Some(format!("fc.{base}.{t}"))
        } else {
            tail.strip_prefix("bn.")
                .map(|t| format!("fc.{}.{t}", base + 1))
        };
    }
    let t = name.strip_prefix("classifier.")?;
    Some(if head_kept == 0 {
        format!("fc.{t}")
    } else {
        format!("fc.{}.{t}", 3 * head_kept)
    })
}

/// The semiflow names of a torchvision-named file's tensors: `names` → (file name → semiflow
/// name). `num_batches_tracked` counters are left out (semiflow keeps none). Errors list the
/// keys that are no torchvision ResNet key.
pub fn semiflow_names(names: &BTreeSet<String>) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let mut unknown = Vec::new();
    // The classifier inside an `fc` Sequential is its only Linear with a bias.
    for name in names {
        if name.ends_with(NUM_BATCHES_TRACKED) {
            continue;
        }
        match semiflow_name(name, names) {
            Some(s) => {
                out.insert(name.clone(), s);
            }
            None => unknown.push(name.as_str()),
        }
    }
    if !unknown.is_empty() {
        bail!(
            "{} key(s) are not torchvision ResNet keys (conv1, bn1, layerN.M.convK/bnK, \
             layerN.M.downsample.0/1, fc, fc.J): {}{}",
            unknown.len(),
            unknown[..unknown.len().min(5)].join(", "),
            if unknown.len() > 5 { ", ..." } else { "" }
        );
    }
    Ok(out)
}

fn semiflow_name(name: &str, all: &BTreeSet<String>) -> Option<String> {
    let (module, tensor) = name.rsplit_once('.')?;
    let bn_tensor = matches!(tensor, "weight" | "bias" | "running_mean" | "running_var");
    match module {
        "conv1" if tensor == "weight" => return Some("encoder.stem.conv1.weight".into()),
        "bn1" if bn_tensor => return Some(format!("encoder.stem.bn1.{tensor}")),
        "fc" if matches!(tensor, "weight" | "bias") => return Some(format!("classifier.{tensor}")),
        _ => {}
    }
    if let Some(j) = module.strip_prefix("fc.") {
        let j: usize = j.parse().ok()?;
        let layer = j / 3 + 1;
        return match j % 3 {
            0 if all.contains(&format!("fc.{j}.bias")) => Some(format!("classifier.{tensor}")),
            0 if tensor == "weight" => Some(format!("head.{layer}.linear.weight")),
            1 if bn_tensor => Some(format!("head.{layer}.bn.{tensor}")),
            _ => None,
        };
    }
    let mut parts = module.splitn(3, '.');
    let (group, block, sub) = (parts.next()?, parts.next()?, parts.next()?);
    let g: usize = group.strip_prefix("layer")?.parse().ok()?;
    block.parse::<usize>().ok()?;
    if !(1..=4).contains(&g) {
        return None;
    }
    let sub = match sub {
        "downsample.0" if tensor == "weight" => "shortcut.conv".to_string(),
        "downsample.1" if bn_tensor => "shortcut.bn".to_string(),
        s if s.starts_with("conv") && tensor == "weight" => s.to_string(),
        s if s.starts_with("bn") && bn_tensor => s.to_string(),
        _ => return None,
    };
    let k = sub.trim_start_matches("conv").trim_start_matches("bn");
    if !sub.starts_with("shortcut") && !matches!(k, "1" | "2" | "3") {
        return None;
    }
    Some(format!("encoder.{group}.{block}.{sub}.{tensor}"))
}

/// The tensors of `net` under `naming`, sorted by name, as they go into an exported file: f32
/// (BatchNorm counters int64), the head's β-less last BatchNorm given a zero `bias` under
/// torchvision names.
pub fn export_tensors(net: &Network, naming: Naming) -> Result<Vec<(String, Tensor)>> {
    let state = net.state_tensors();
    if naming == Naming::Safetensors {
        return Ok(state);
    }
    let arch = net.arch();
    if arch.uses_sk() {
        bail!(
            "this network uses selective kernels (model.sk_ratio = {}), which torchvision's ResNet \
             has no modules for (nor for their ResNet-D stem and shortcuts): export it with \
             --format safetensors (semiflow's own names) instead",
            arch.sk_ratio
        );
    }
    let kept = net.head_kept();
    let names: BTreeSet<&str> = state.iter().map(|(n, _)| n.as_str()).collect();
    let mut out = Vec::with_capacity(state.len() * 5 / 4);
    for (name, t) in &state {
        let Some(tv) = torchvision_name(name, kept) else {
            bail!("tensor {name} has no torchvision name; export with --format safetensors");
        };
        out.push((tv.clone(), t.clone()));
        // After the last BatchNorm tensor: the counter, and a zero β where semiflow has none.
        if let Some(prefix) = tv.strip_suffix(".running_var") {
            let device = t.device();
            out.push((
                format!("{prefix}.{NUM_BATCHES_TRACKED}"),
                Tensor::zeros((), DType::I64, device)?,
            ));
            let sf_prefix = name.strip_suffix(".running_var").expect("same suffix");
            if !names.contains(format!("{sf_prefix}.bias").as_str()) {
                out.push((format!("{prefix}.bias"), t.zeros_like()?));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// One module of `fc`, for building it elsewhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "module")]
pub enum FcModule {
    Linear {
        in_features: usize,
        out_features: usize,
        bias: bool,
    },
    BatchNorm1d {
        num_features: usize,
        eps: f64,
        /// false: semiflow has no β here (exported as zeros).
        center: bool,
    },
    ReLU,
    Identity,
}

/// The architecture in PyTorch's terms.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TorchArch {
    /// `basic` (torchvision `BasicBlock`) or `bottleneck` (`Bottleneck`).
    pub block: String,
    /// Blocks per stage (`layer1`..`layer4`).
    pub layers: [usize; 4],
    /// `planes` of each stage (torchvision: 64, 128, 256, 512 at width 1); the stem has `widths[0]`
    /// channels, a bottleneck stage outputs 4× its planes.
    pub widths: [usize; 4],
    /// `imagenet`: conv1 7×7/2 pad 3 + 3×3/2 max-pool (TF "SAME" padding, see `maxpool`);
    /// `cifar`: conv1 3×3/1 pad 1, no max-pool.
    pub stem: String,
    /// `tf_same` (pad (0,1) on even sizes, (1,1) on odd ones) or `none`.
    pub maxpool: String,
    pub in_channels: usize,
    /// Width of the pooled encoder output.
    pub num_features: usize,
    /// BatchNorm ε of every BN (PyTorch default 1e-5).
    pub bn_eps: f64,
    /// The torchvision constructor that builds exactly this encoder (up to `maxpool`), if any.
    pub torchvision_constructor: Option<String>,
    /// What sits on the pooled features: one `Linear` (torchvision's `fc`) or an `nn.Sequential`.
    pub fc: Vec<FcModule>,
    /// What `forward` returns: `logits` (a classifier) or `projection` (a pretraining checkpoint:
    /// the projection head's output).
    pub output: String,
}

/// How images must be fed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputSpec {
    pub image_size: usize,
    pub channels: usize,
    /// `RGB` (or `gray`), NCHW float32.
    pub color: String,
    pub layout: String,
    /// `x = pixel / 255` (no mean/std normalization).
    pub scale: String,
    pub mean: Vec<f64>,
    pub std: Vec<f64>,
    /// The JPEG decoder semiflow's pixels came from (README "Decoders").
    pub decoder: String,
}

/// Where an exported model came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub node: String,
    pub kind: String,
    pub key: String,
    pub artifact: String,
    pub semiflow_version: String,
}

/// The JSON sidecar written next to an export (and into its safetensors header).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportSidecar {
    /// `semiflow-export`.
    pub format: String,
    pub format_version: u32,
    /// Key names of the tensors: `torchvision` or `safetensors` (semiflow's).
    pub naming: Naming,
    pub torch: TorchArch,
    pub input: InputSpec,
    /// Class names, index = logit (absent for networks without a classifier or unknown data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<Vec<String>>,
    /// semiflow's own description (rebuilds the exact network).
    pub model: Sidecar,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

pub const EXPORT_FORMAT: &str = "semiflow-export";
pub const EXPORT_FORMAT_VERSION: u32 = 1;
/// The decoder of image-folder JPEGs (the `image` crate's JPEG support).
pub const JPEG_DECODER: &str = "zune-jpeg 0.5 (via the image crate)";

impl ExportSidecar {
    pub fn of(
        net: &Network,
        naming: Naming,
        classes: Option<Vec<String>>,
        source: Option<Source>,
    ) -> ExportSidecar {
        let arch = net.arch();
        let shape = net.net_shape();
        let cifar = arch.cifar_stem(shape.image_size);
        let layout = arch.layout().expect("a built network has a valid depth");
        let widths = [0, 1, 2, 3].map(|g| arch.group_width(g));
        let basic = arch.block_kind() == BlockKind::Basic;
        let constructor =
            (!arch.uses_sk() && !cifar && widths == [64, 128, 256, 512] && shape.in_channels == 3)
                .then(|| format!("resnet{}", arch.depth));
        let kept = shape.head_kept;
        let mut fc = Vec::new();
        for i in 1..=kept {
            let (din, dout) = arch.head_layer_dims(i);
            let last = i == arch.head_layers;
            fc.push(FcModule::Linear {
                in_features: din,
                out_features: dout,
                bias: false,
            });
            fc.push(FcModule::BatchNorm1d {
                num_features: dout,
                eps: arch.bn_eps,
                center: !last,
            });
            fc.push(if last {
                FcModule::Identity
            } else {
                FcModule::ReLU
            });
        }
        if let Some((num_classes, head_layer)) = shape.classifier {
            let din = if head_layer == 0 {
                arch.num_features()
            } else {
                arch.head_layer_dims(head_layer).1
            };
            fc.push(FcModule::Linear {
                in_features: din,
                out_features: num_classes,
                bias: true,
            });
        }
        ExportSidecar {
            format: EXPORT_FORMAT.into(),
            format_version: EXPORT_FORMAT_VERSION,
            naming,
            torch: TorchArch {
                block: if basic { "basic" } else { "bottleneck" }.into(),
                layers: layout,
                widths,
                stem: if arch.uses_sk() && !cifar {
                    "resnet-d"
                } else if cifar {
                    "cifar"
                } else {
                    "imagenet"
                }
                .into(),
                maxpool: if cifar { "none" } else { "tf_same" }.into(),
                in_channels: shape.in_channels,
                num_features: arch.num_features(),
                bn_eps: arch.bn_eps,
                torchvision_constructor: constructor,
                fc,
                output: if shape.classifier.is_some() {
                    "logits"
                } else {
                    "projection"
                }
                .into(),
            },
            input: InputSpec {
                image_size: shape.image_size,
                channels: shape.in_channels,
                color: if shape.in_channels == 1 {
                    "gray"
                } else {
                    "RGB"
                }
                .into(),
                layout: "NCHW float32".into(),
                scale: "pixel / 255".into(),
                mean: vec![0.0; shape.in_channels],
                std: vec![1.0; shape.in_channels],
                decoder: JPEG_DECODER.into(),
            },
            classes: classes.filter(|_| shape.classifier.is_some()),
            model: Sidecar::of(net),
            source,
        }
    }
}

/// Write `tensors` as a safetensors file at `path` with `sidecar` in its header metadata
/// (`__metadata__ = {"format": "pt", "semiflow": <sidecar JSON>}`; without one, no semiflow entry,
/// like a file PyTorch wrote).
pub fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
    sidecar: Option<&ExportSidecar>,
) -> Result<()> {
    let mut bytes: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, t) in tensors {
        let t = t.to_device(&candle_core::Device::Cpu)?;
        let (dtype, data) = match t.dtype() {
            DType::I64 => (
                safetensors::Dtype::I64,
                t.flatten_all()?
                    .to_vec1::<i64>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            _ => (
                safetensors::Dtype::F32,
                t.to_dtype(DType::F32)?
                    .flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
        };
        bytes.push((name.clone(), dtype, t.dims().to_vec(), data));
    }
    let views = bytes
        .iter()
        .map(|(n, dt, shape, data)| {
            Ok((
                n.as_str(),
                safetensors::tensor::TensorView::new(*dt, shape.clone(), data)?,
            ))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let mut meta: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    if let Some(sidecar) = sidecar {
        meta.insert(METADATA_KEY.to_string(), serde_json::to_string(sidecar)?);
    }
    safetensors::serialize_to_file(views, Some(meta), path)
        .with_context(|| format!("writing {}", path.display()))
}

/// The architecture a torchvision- or semiflow-named state describes, read off its names and
/// shapes (semiflow names): for files without a semiflow header (torchvision's own weights, say).
/// Returns the config (stem explicit), input channels, head layers kept and classes of a
/// classifier. Fails, saying why, where the shapes are no ResNet semiflow builds.
pub fn infer_arch(
    shapes: &BTreeMap<String, Vec<usize>>,
) -> Result<(ModelCfg, usize, usize, Option<usize>)> {
    let get = |n: &str| shapes.get(n);
    let Some(conv1) = get("encoder.stem.conv1.weight") else {
        bail!("no stem convolution (conv1.weight): not a ResNet");
    };
    anyhow::ensure!(
        conv1.len() == 4,
        "conv1.weight has shape {conv1:?}, not a 4-d convolution"
    );
    if get("encoder.stem.conv2.weight").is_some() || shapes.keys().any(|k| k.contains(".sk.")) {
        bail!("a selective-kernel (ResNet-D) network: its architecture cannot be read off the shapes; import a file semiflow exported (it carries the architecture)");
    }
    let stem = match conv1[2] {
        7 => Stem::Imagenet,
        3 => Stem::Cifar,
        k => bail!(
            "conv1 is a {k}×{k} convolution; semiflow's stems are 7×7 (ImageNet) or 3×3 (CIFAR)"
        ),
    };
    let stem_width = conv1[0];
    let in_channels = conv1[1];
    let mut layout = [0usize; 4];
    for name in shapes.keys() {
        if let Some(rest) = name.strip_prefix("encoder.layer") {
            let mut it = rest.split('.');
            let g: usize = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let b: usize = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            if (1..=4).contains(&g) {
                layout[g - 1] = layout[g - 1].max(b + 1);
            }
        }
    }
    let bottleneck = get("encoder.layer1.0.conv3.weight").is_some();
    let depth = match (bottleneck, layout) {
        (false, [1, 1, 1, 1]) => 10,
        (false, [2, 2, 2, 2]) => 18,
        (false, [3, 4, 6, 3]) => 34,
        (true, [3, 4, 6, 3]) => 50,
        (true, [3, 4, 23, 3]) => 101,
        (true, [3, 8, 36, 3]) => 152,
        _ => bail!(
            "{} blocks per stage {layout:?} are no ResNet depth semiflow builds (10, 18, 34, 50, 101, 152)",
            if bottleneck { "bottleneck" } else { "basic" }
        ),
    };
    let mut cfg = ModelCfg {
        depth,
        width: stem_width as f64 / 64.0,
        stem,
        ..ModelCfg::default()
    };
    for g in 0..4 {
        let name = format!("encoder.layer{}.0.conv1.weight", g + 1);
        let have = get(&name).map(|s| s[0]).unwrap_or(0);
        if have != cfg.group_width(g) {
            bail!(
                "stage {} has {have} channels where a ResNet-{depth} whose stem has {stem_width} \
                 has {} (semiflow scales every stage by one width multiplier; wide ResNets are not \
                 supported)",
                g + 1,
                cfg.group_width(g)
            );
        }
    }
    let kept = (1..)
        .take_while(|i| get(&format!("head.{i}.linear.weight")).is_some())
        .count();
    let classes = get("classifier.weight").map(|s| s[0]);
    if kept > 0 {
        let hidden = get("head.1.linear.weight").map(|s| s[0]).unwrap_or(0);
        if kept >= 2 || classes.is_some() {
            cfg.proj_hidden = (hidden != cfg.num_features()).then_some(hidden);
        }
        if classes.is_none() {
            // A pretraining checkpoint keeps the whole head: its last layer is the projection.
            cfg.head_layers = kept;
            cfg.proj_dim = get(&format!("head.{kept}.linear.weight"))
                .map(|s| s[0])
                .unwrap_or(cfg.proj_dim);
            if kept == 1 {
                cfg.proj_hidden = None;
            }
        } else {
            cfg.head_layers = cfg.head_layers.max(kept + 1);
        }
    }
    cfg.validate()?;
    Ok((cfg, in_channels, kept, classes))
}
