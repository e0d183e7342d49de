//! Weights from a file: reading a torchvision- or semiflow-named safetensors file into semiflow's
//! names (what the `import` stage stores), and loading that into a network a stage builds.
//!
//! An import artifact is `model.safetensors` (every tensor of the file under its semiflow name,
//! f32) + `import.json` ([`ImportInfo`]: the file's naming, its name, and the architecture it
//! holds, read from the semiflow header of an exported file or off the tensor shapes).
//!
//! What a network takes from it ([`load_into`]): the whole encoder, which must match name for name
//! and shape for shape; the projection-head layers both keep; never the classifier (fine-tuning and
//! distillation start a zero-initialized one, as from a pretraining checkpoint).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::config::{ModelCfg, Stem};
use super::network::{NetShape, Network};
use super::params::Init;
use super::torchvision::{self, ExportSidecar, Naming, METADATA_KEY};

pub const IMPORT_WEIGHTS: &str = "model.safetensors";
pub const IMPORT_INFO: &str = "import.json";

/// Contents of `import.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportInfo {
    /// Key names the file used.
    pub format: Naming,
    /// The file's name (no directory), for messages.
    pub file: String,
    /// Where `arch` came from: `header` (a file semiflow exported) or `shapes` (read off them).
    pub arch_from: String,
    /// The architecture, stem explicit.
    pub arch: ModelCfg,
    pub in_channels: usize,
    /// Projection-head layers the file holds.
    pub head_kept: usize,
    /// Classes of the file's classifier, if it has one (never loaded into a stage's network).
    pub classifier: Option<usize>,
    /// The image size the file's model was trained on, when its header says.
    pub image_size: Option<usize>,
    /// Tensors stored (without torchvision's `num_batches_tracked` counters).
    pub tensors: usize,
}

impl ImportInfo {
    /// `ResNet-18 ×0.25, CIFAR stem, 1 head layer, 10-class classifier`.
    pub fn describe(&self) -> String {
        describe(
            &self.arch,
            self.head_kept,
            self.classifier,
            self.arch.stem == Stem::Cifar,
        )
    }

    fn display_name(&self, semiflow: &str) -> String {
        match self.format {
            Naming::Safetensors => semiflow.to_string(),
            Naming::Torchvision => torchvision::torchvision_name(semiflow, self.head_kept)
                .unwrap_or_else(|| semiflow.to_string()),
        }
    }
}

fn describe(arch: &ModelCfg, head_kept: usize, classes: Option<usize>, cifar: bool) -> String {
    let mut s = format!(
        "ResNet-{} ×{}{}, {} stem",
        arch.depth,
        arch.width,
        if arch.uses_sk() { " SK" } else { "" },
        if cifar { "CIFAR" } else { "ImageNet" }
    );
    s.push_str(&format!(
        ", {head_kept} head layer{}",
        if head_kept == 1 { "" } else { "s" }
    ));
    if let Some(c) = classes {
        s.push_str(&format!(", {c}-class classifier"));
    }
    s
}

/// The `model = { ... }` a node needs to build a file's architecture.
fn model_table(arch: &ModelCfg) -> String {
    let mut s = format!("depth = {}, width = {}", arch.depth, arch.width);
    if arch.uses_sk() {
        s.push_str(&format!(", sk_ratio = {}", arch.sk_ratio));
    }
    s.push_str(&format!(
        ", stem = \"{}\"",
        match arch.stem {
            Stem::Cifar => "cifar",
            Stem::Imagenet => "imagenet",
            Stem::Auto => "auto",
        }
    ));
    format!("model = {{ {s} }}")
}

/// A file's tensors under semiflow names, its header sidecar, and semiflow name → file name.
pub struct FileState {
    pub tensors: BTreeMap<String, Tensor>,
    pub file_names: BTreeMap<String, String>,
    pub header: Option<ExportSidecar>,
}

/// Read a safetensors file with `naming`'s key names.
pub fn read_file(path: &Path, naming: Naming) -> Result<FileState> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "{} is not a safetensors file ({e}); export with `semiflow export … --format {}` or \
             save with safetensors.torch.save_file(model.state_dict(), …)",
            path.display(),
            naming.as_str()
        )
    })?;
    let header = match meta.metadata().as_ref().and_then(|m| m.get(METADATA_KEY)) {
        Some(json) => Some(
            serde_json::from_str::<ExportSidecar>(json)
                .with_context(|| format!("{}: unreadable semiflow header", path.display()))?,
        ),
        None => None,
    };
    let raw = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
        .with_context(|| format!("reading the tensors of {}", path.display()))?;
    let names: BTreeSet<String> = raw.keys().cloned().collect();
    let map: BTreeMap<String, String> = match naming {
        Naming::Torchvision => torchvision::semiflow_names(&names).with_context(|| {
            format!(
                "{} does not hold a torchvision ResNet (format = \"torchvision\"); a file of \
                 semiflow's own names needs format = \"safetensors\"",
                path.display()
            )
        })?,
        Naming::Safetensors => {
            let bad: Vec<&String> = names
                .iter()
                .filter(|n| {
                    !["encoder.", "head.", "classifier."]
                        .iter()
                        .any(|p| n.starts_with(p))
                })
                .collect();
            if !bad.is_empty() {
                bail!(
                    "{}: {} key(s) are not semiflow names (encoder.…, head.…, classifier.…), e.g. \
                     {}; a torchvision-named file needs format = \"torchvision\"",
                    path.display(),
                    bad.len(),
                    bad[0]
                );
            }
            names.iter().map(|n| (n.clone(), n.clone())).collect()
        }
    };
    let mut tensors = BTreeMap::new();
    let mut file_names = BTreeMap::new();
    for (file_name, sf_name) in map {
        let t = raw[&file_name].to_dtype(DType::F32)?;
        if tensors.insert(sf_name.clone(), t).is_some() {
            bail!(
                "{}: two keys map to {sf_name} (the second is {file_name})",
                path.display()
            );
        }
        file_names.insert(sf_name, file_name);
    }
    Ok(FileState {
        tensors,
        file_names,
        header,
    })
}

/// The differences between a state a network expects and one a file holds, in the file's names
/// (`key: file [..], network [..]`, `key: missing from the file`, `key: not in the network`).
fn differences(
    expected: &BTreeMap<String, Vec<usize>>,
    have: &BTreeMap<String, Vec<usize>>,
    show: &dyn Fn(&str) -> String,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut names: Vec<&String> = expected
        .keys()
        .chain(have.keys())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    names.sort_by_key(|n| forward_order(n));
    for n in names {
        match (expected.get(n), have.get(n)) {
            (Some(e), Some(h)) if e != h => {
                out.push(format!("{}: file {h:?}, network {e:?}", show(n)))
            }
            (Some(e), None) => out.push(format!(
                "{}: missing from the file (network {e:?})",
                show(n)
            )),
            (None, Some(h)) => out.push(format!(
                "{}: in the file {h:?}, not in the network",
                show(n)
            )),
            _ => {}
        }
    }
    out
}

/// Sort key putting semiflow names in the order a forward pass meets them (torchvision's
/// `state_dict` order): stem, stages and blocks by number, head layers, classifier.
fn forward_order(name: &str) -> (u8, usize, usize, String) {
    let num = |s: Option<&str>| s.and_then(|s| s.parse::<usize>().ok()).unwrap_or(0);
    // Within a block: conv1, bn1, conv2, bn2, ..., the shortcut last; a BN's tensors as PyTorch
    // lists them.
    let within = |rest: &str| -> (usize, String) {
        let (module, tensor) = rest.rsplit_once('.').unwrap_or((rest, ""));
        let t = match tensor {
            "weight" => "0",
            "bias" => "1",
            "running_mean" => "2",
            "running_var" => "3",
            other => other,
        };
        let m = if let Some(k) = module.strip_prefix("conv") {
            2 * num(Some(k))
        } else if let Some(k) = module.strip_prefix("bn") {
            2 * num(Some(k)) + 1
        } else if module.starts_with("sk") {
            5
        } else if module.ends_with("conv") || module.ends_with("linear") {
            20
        } else {
            21
        };
        (m, t.to_string())
    };
    if let Some(rest) = name.strip_prefix("encoder.stem.") {
        let (m, t) = within(rest);
        return (0, 0, m, t);
    }
    if let Some(rest) = name.strip_prefix("encoder.layer") {
        let mut it = rest.splitn(3, '.');
        let (g, b) = (num(it.next()), num(it.next()));
        let (m, t) = within(it.next().unwrap_or(""));
        return (1, g * 1000 + b, m, t);
    }
    if let Some(rest) = name.strip_prefix("head.") {
        let mut it = rest.splitn(2, '.');
        let i = num(it.next());
        let (m, t) = within(it.next().unwrap_or(""));
        return (2, i, m, t);
    }
    (3, 0, 0, name.to_string())
}

fn first(problems: &[String], n: usize) -> String {
    let mut s = problems[..problems.len().min(n)].join("; ");
    if problems.len() > n {
        s.push_str(&format!("; … ({} more)", problems.len() - n));
    }
    s
}

/// The `import` stage: read `path`, check it is a whole network of the architecture its header
/// gives (or its shapes describe), and store it in `out_dir`.
pub fn convert(path: &Path, naming: Naming, out_dir: &Path) -> Result<ImportInfo> {
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string());
    let state = read_file(path, naming)?;
    let shapes: BTreeMap<String, Vec<usize>> = state
        .tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.dims().to_vec()))
        .collect();
    let (arch, in_channels, head_kept, classifier, image_size, arch_from) = match &state.header {
        Some(h) => {
            let m = &h.model;
            let mut arch = m.arch.clone();
            arch.stem = if arch.cifar_stem(m.image_size) {
                Stem::Cifar
            } else {
                Stem::Imagenet
            };
            (
                arch,
                m.in_channels,
                m.head_kept,
                m.classifier.map(|c| c.num_classes),
                Some(m.image_size),
                "header",
            )
        }
        None => {
            let (arch, c, kept, classes) = torchvision::infer_arch(&shapes)
                .with_context(|| format!("{}: cannot tell which ResNet this is", path.display()))?;
            (arch, c, kept, classes, None, "shapes")
        }
    };
    // The head's β-less last BatchNorm: torchvision names carry a zero `bias` for it.
    let mut tensors = state.tensors;
    if head_kept == arch.head_layers && head_kept > 0 {
        let bias = format!("head.{head_kept}.bn.bias");
        if let Some(b) = tensors.remove(&bias) {
            let nonzero = b.abs()?.max_all()?.to_scalar::<f32>()? != 0.0;
            if nonzero {
                bail!(
                    "{file}: {} (the projection head's last BatchNorm, which has no β) is not zero",
                    state.file_names[&bias]
                );
            }
        }
    }
    // A skeleton of that architecture must hold exactly the file's tensors.
    let shape = NetShape {
        image_size: image_size.unwrap_or(if arch.stem == Stem::Cifar { 32 } else { 224 }),
        in_channels,
        head_kept,
        classifier: classifier.map(|c| (c, head_kept)),
    };
    let skeleton = Network::build(&arch, shape, &Init::skeleton(&Device::Cpu))
        .with_context(|| format!("{file}: describes a network semiflow cannot build"))?;
    let expected: BTreeMap<String, Vec<usize>> = skeleton.state_shapes().into_iter().collect();
    let have: BTreeMap<String, Vec<usize>> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.dims().to_vec()))
        .collect();
    let info = ImportInfo {
        format: naming,
        file: file.clone(),
        arch_from: arch_from.into(),
        arch,
        in_channels,
        head_kept,
        classifier,
        image_size,
        tensors: tensors.len(),
    };
    let problems = differences(&expected, &have, &|n| {
        state
            .file_names
            .get(n)
            .cloned()
            .unwrap_or_else(|| info.display_name(n))
    });
    if !problems.is_empty() {
        bail!(
            "{}: its tensors are not a whole {} (the architecture its {} give): {} difference(s): {}",
            path.display(),
            info.describe(),
            if arch_from == "header" {
                "semiflow header and its tensors"
            } else {
                "tensor shapes"
            },
            problems.len(),
            first(&problems, 6)
        );
    }
    let map: std::collections::HashMap<String, Tensor> = tensors.into_iter().collect();
    let weights = out_dir.join(IMPORT_WEIGHTS);
    candle_core::safetensors::save(&map, &weights)
        .with_context(|| format!("writing {}", weights.display()))?;
    std::fs::write(
        out_dir.join(IMPORT_INFO),
        serde_json::to_string_pretty(&info)? + "\n",
    )?;
    Ok(info)
}

/// Whether `dir` is an import artifact (rather than a checkpoint).
pub fn is_import(dir: &Path) -> bool {
    dir.join(IMPORT_INFO).is_file()
}

pub fn read_info(dir: &Path) -> Result<ImportInfo> {
    let path = dir.join(IMPORT_INFO);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not an import record", path.display()))
}

/// Load an import artifact's encoder and the head layers both keep into `net` (in place; the
/// classifier and head layers the file lacks keep their initialization). `what` names the
/// network in errors (`the student`, `this pretrain node's network`).
pub fn load_into(net: &Network, dir: &Path, what: &str) -> Result<ImportInfo> {
    let info = read_info(dir)?;
    let weights = dir.join(IMPORT_WEIGHTS);
    let file: BTreeMap<String, Tensor> = candle_core::safetensors::load(&weights, net.device())
        .with_context(|| format!("reading {}", weights.display()))?
        .into_iter()
        .collect();
    let layers = net.head_kept().min(info.head_kept);
    let wanted = |n: &str| {
        n.starts_with("encoder.")
            || n.strip_prefix("head.")
                .and_then(|r| r.split('.').next())
                .and_then(|i| i.parse::<usize>().ok())
                .is_some_and(|i| i <= layers)
    };
    let state = net.state_tensors();
    let expected: BTreeMap<String, Vec<usize>> = state
        .iter()
        .filter(|(n, _)| wanted(n))
        .map(|(n, t)| (n.clone(), t.dims().to_vec()))
        .collect();
    let have: BTreeMap<String, Vec<usize>> = file
        .iter()
        .filter(|(n, _)| wanted(n))
        .map(|(n, t)| (n.clone(), t.dims().to_vec()))
        .collect();
    let problems = differences(&expected, &have, &|n| info.display_name(n));
    if !problems.is_empty() {
        let mine = describe(
            net.arch(),
            net.head_kept(),
            net.num_classes(),
            net.arch().cifar_stem(net.image_size()),
        );
        bail!(
            "init file {} ({} names) does not fit {what}: the file holds a {}, {what} is a {}; \
             {} tensor(s) differ: {}. Give the node the file's architecture ({}) or import a \
             file of this one",
            info.file,
            info.format.as_str(),
            info.describe(),
            mine,
            problems.len(),
            first(&problems, 5),
            model_table(&info.arch)
        );
    }
    // Tensors not taken from the file keep their values (as copies: a Var cannot be set to a
    // tensor sharing its own storage).
    let loaded: Vec<(String, Tensor)> = state
        .into_iter()
        .map(|(n, t)| match file.get(&n) {
            Some(f) if wanted(&n) => Ok((n, f.clone())),
            _ => Ok((n, t.copy()?)),
        })
        .collect::<Result<_>>()?;
    net.load_state(&loaded)?;
    Ok(info)
}

/// A classifier network on head output `head_layer`, built with the import's architecture for
/// `image_size`×`in_channels` inputs, encoder and head layers from the import, classifier zero
/// (fine-tuning from a file, as `Network::from_pretrained` does from a checkpoint).
pub fn classifier_from_import(
    dir: &Path,
    head_layer: usize,
    num_classes: usize,
    image_size: usize,
    in_channels: usize,
    device: &Device,
    seed: u64,
) -> Result<Network> {
    let info = read_info(dir)?;
    if head_layer > info.head_kept {
        bail!(
            "head_layer = {head_layer} but the init file {} holds {} projection-head layer(s) \
             (a {}): set head_layer = {} to fine-tune from {}",
            info.file,
            info.head_kept,
            info.describe(),
            info.head_kept,
            if info.head_kept == 0 {
                "the encoder output".to_string()
            } else {
                format!("head layer {}", info.head_kept)
            }
        );
    }
    let net = Network::new_classifier(
        &info.arch,
        image_size,
        in_channels,
        num_classes,
        head_layer,
        device,
        seed,
    )?;
    load_into(&net, dir, "the network to fine-tune")?;
    Ok(net)
}

/// The full network an import holds, classifier included, for `image_size` inputs: what
/// `export → import` must give back bit for bit.
pub fn full_network(dir: &Path, image_size: usize, device: &Device) -> Result<Network> {
    let info = read_info(dir)?;
    let shape = NetShape {
        image_size,
        in_channels: info.in_channels,
        head_kept: info.head_kept,
        classifier: info.classifier.map(|c| (c, info.head_kept)),
    };
    let net = Network::build(&info.arch, shape, &Init::skeleton(device))?;
    let weights = dir.join(IMPORT_WEIGHTS);
    let state: Vec<(String, Tensor)> = candle_core::safetensors::load(&weights, device)?
        .into_iter()
        .collect();
    net.load_state(&state)?;
    Ok(net)
}
