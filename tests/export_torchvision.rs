//! Models in and out: `semiflow export` in torchvision's key names, `init = { file, format }` on
//! pretrain / finetune / distill, and the round trip between them. No network needed.
//!
//! The fixtures `tests/data/torchvision/resnet{18,50}.json` list every `state_dict` key of
//! torchvision's ResNet-18/50 with its shape and dtype. They were made once with real torchvision
//! (torch 2.15.0, torchvision 0.29.2, from PyPI) by `tests/data/torchvision/make_fixtures.py`:
//!
//!     cd tests/data/torchvision && python3 make_fixtures.py
//!
//! Pipeline data: the 300 + 100 CIFAR-10 JPEGs under `tests/data/cifar10-tiny`.
//!
//! `pytorch_reproduces_semiflows_top1` runs only where `python3 -c "import torch, torchvision,
//! safetensors"` works (or `SEMIFLOW_TORCH_PYTHON` names such a Python); elsewhere it says why it
//! skipped. `bench/torch-check.sh` runs the same check on the quickstart.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::process::Command;

mod real_support;
use real_support::{cifar_tiny, semiflow, Recipe};

use candle_core::{DType, Device, Tensor};
use semiflow_stages::data::Dataset;
use semiflow_stages::model::import;
use semiflow_stages::model::torchvision::{
    export_tensors, write_safetensors, ExportSidecar, Naming,
};
use semiflow_stages::model::{ModelCfg, Network, Stem};

// ---------------------------------------------------------------------------------------------
// Library level: names, shapes, round trips.

/// (name, shape, dtype) of a fixture, sorted by name.
fn fixture(name: &str) -> Vec<(String, Vec<usize>, String)> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/torchvision/{name}.json"));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(v["made_with"].as_str().unwrap().contains("torchvision"));
    let mut out: Vec<(String, Vec<usize>, String)> = v["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t[0].as_str().unwrap().to_string(),
                t[1].as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect(),
                t[2].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn dtype_name(t: &Tensor) -> String {
    match t.dtype() {
        DType::I64 => "int64".into(),
        DType::F32 => "float32".into(),
        d => format!("{d:?}"),
    }
}

/// torchvision's `resnetNN()` in semiflow: ImageNet stem, width 1, 1000 classes on the features.
fn torchvision_default(depth: usize) -> Network {
    let cfg = ModelCfg {
        depth,
        stem: Stem::Imagenet,
        ..ModelCfg::default()
    };
    Network::new_classifier(&cfg, 224, 3, 1000, 0, &Device::Cpu, 0).unwrap()
}

fn described(tensors: &[(String, Tensor)]) -> Vec<(String, Vec<usize>, String)> {
    let mut v: Vec<_> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.dims().to_vec(), dtype_name(t)))
        .collect();
    v.sort();
    v
}

#[test]
fn export_gives_exactly_torchvisions_names_shapes_and_dtypes() {
    for depth in [18, 50] {
        let want = fixture(&format!("resnet{depth}"));
        let net = torchvision_default(depth);
        let got = described(&export_tensors(&net, Naming::Torchvision).unwrap());
        let missing: Vec<_> = want.iter().filter(|w| !got.contains(w)).take(5).collect();
        let extra: Vec<_> = got.iter().filter(|g| !want.contains(g)).take(5).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "resnet{depth}: missing {missing:?}, extra {extra:?}"
        );
        assert_eq!(got.len(), want.len());
    }
}

/// A file as PyTorch would write it: the fixture's names, shapes and dtypes, values from `net`
/// (so a test can compare), no semiflow header.
fn torch_like_file(dir: &Path, depth: usize, net: &Network) -> PathBuf {
    let values: BTreeMap<String, Tensor> = export_tensors(net, Naming::Torchvision)
        .unwrap()
        .into_iter()
        .collect();
    let tensors: Vec<(String, Tensor)> = fixture(&format!("resnet{depth}"))
        .into_iter()
        .map(|(n, _, _)| {
            let t = values[&n].clone();
            (n, t)
        })
        .collect();
    let path = dir.join(format!("resnet{depth}.safetensors"));
    write_safetensors(&path, &tensors, None).unwrap();
    path
}

/// Every state tensor of `net` replaced by seeded noise (running variances positive), so no
/// tensor is a constant a wrong mapping could still get right.
fn scramble(net: &Network, seed: u64) {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = move || {
        // xorshift64*: uniform in [-1, 1).
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    };
    let scrambled: Vec<(String, Tensor)> = net
        .state_tensors()
        .into_iter()
        .map(|(n, t)| {
            let (scale, offset) = if n.ends_with("running_var") {
                (0.5, 1.0)
            } else if n.ends_with(".weight") && t.rank() >= 2 {
                (0.2, 0.0)
            } else {
                (0.3, 0.0)
            };
            let v: Vec<f32> = (0..t.elem_count())
                .map(|_| next() * scale + offset)
                .collect();
            (n, Tensor::from_vec(v, t.shape(), &Device::Cpu).unwrap())
        })
        .collect();
    net.load_state(&scrambled).unwrap();
}

fn images(n: usize, c: usize, size: usize) -> Tensor {
    let len = n * c * size * size;
    let v: Vec<f32> = (0..len)
        .map(|i| ((i * 7919) % 256) as f32 / 255.0)
        .collect();
    Tensor::from_vec(v, (n, c, size, size), &Device::Cpu).unwrap()
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn torchvision_weights_import_by_shape_and_fine_tune_starts_from_their_encoder() {
    let dir = tempfile::tempdir().unwrap();
    let net = torchvision_default(18);
    scramble(&net, 1);
    let file = torch_like_file(dir.path(), 18, &net);
    let out = dir.path().join("import");
    std::fs::create_dir_all(&out).unwrap();
    let info = import::convert(&file, Naming::Torchvision, &out).unwrap();
    assert_eq!(info.arch_from, "shapes");
    assert_eq!(
        (info.arch.depth, info.arch.width, info.arch.stem),
        (18, 1.0, Stem::Imagenet)
    );
    assert_eq!((info.head_kept, info.classifier), (0, Some(1000)));
    // The whole network comes back bit for bit (any input size: the stem is explicit).
    let back = import::full_network(&out, 64, &Device::Cpu).unwrap();
    let x = images(2, 3, 64);
    let want = net.logits(&x, false).unwrap();
    assert_eq!(bits(&back.logits(&x, false).unwrap()), bits(&want));
    // Fine-tuning from it: the encoder is the file's, the classifier new and zero.
    let ft = import::classifier_from_import(&out, 0, 10, 32, 3, &Device::Cpu, 0).unwrap();
    assert_eq!(
        bits(&ft.features(&x, false).unwrap()),
        bits(&net.features(&x, false).unwrap())
    );
    assert!(
        ft.logits(&x, false)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            == 0.0
    );
    // head_layer = 1 needs a head layer the file does not have.
    let Err(err) = import::classifier_from_import(&out, 1, 10, 32, 3, &Device::Cpu, 0) else {
        panic!("head_layer 1 of a headless file was accepted");
    };
    assert!(format!("{err:#}").contains("set head_layer = 0"), "{err:#}");
}

#[test]
fn broken_files_are_refused_naming_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let net = torchvision_default(18);
    let good: Vec<(String, Tensor)> = export_tensors(&net, Naming::Torchvision).unwrap();
    let out = dir.path().join("o");
    std::fs::create_dir_all(&out).unwrap();
    let try_file = |name: &str, tensors: &[(String, Tensor)], naming| {
        let p = dir.path().join(name);
        write_safetensors(&p, tensors, None).unwrap();
        format!("{:#}", import::convert(&p, naming, &out).unwrap_err())
    };
    // A wrong shape deep inside.
    let mut bad = good.clone();
    for (n, t) in bad.iter_mut() {
        if n == "layer3.1.conv2.weight" {
            *t = Tensor::zeros((256, 256, 1, 1), DType::F32, &Device::Cpu).unwrap();
        }
    }
    let msg = try_file("shape.safetensors", &bad, Naming::Torchvision);
    assert!(msg.contains("shape.safetensors"), "{msg}");
    assert!(
        msg.contains("layer3.1.conv2.weight: file [256, 256, 1, 1], network [256, 256, 3, 3]"),
        "{msg}"
    );
    // A missing tensor.
    let missing: Vec<_> = good
        .iter()
        .filter(|(n, _)| n != "layer2.0.downsample.1.running_mean")
        .cloned()
        .collect();
    let msg = try_file("missing.safetensors", &missing, Naming::Torchvision);
    assert!(
        msg.contains("layer2.0.downsample.1.running_mean: missing from the file"),
        "{msg}"
    );
    // Keys that are no torchvision ResNet keys.
    let mut odd = good.clone();
    odd.push((
        "features.0.weight".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    ));
    let msg = try_file("odd.safetensors", &odd, Naming::Torchvision);
    assert!(
        msg.contains("features.0.weight") && msg.contains("not torchvision ResNet keys"),
        "{msg}"
    );
    // torchvision names read as semiflow names.
    let msg = try_file("names.safetensors", &good, Naming::Safetensors);
    assert!(
        msg.contains("not semiflow names") && msg.contains("format = \"torchvision\""),
        "{msg}"
    );
    // Not a safetensors file at all.
    let p = dir.path().join("junk.safetensors");
    std::fs::write(&p, b"not a model").unwrap();
    let msg = format!(
        "{:#}",
        import::convert(&p, Naming::Torchvision, &out).unwrap_err()
    );
    assert!(
        msg.contains("junk.safetensors") && msg.contains("not a safetensors file"),
        "{msg}"
    );
}

#[test]
fn a_network_of_another_architecture_gets_the_first_differing_keys() {
    let dir = tempfile::tempdir().unwrap();
    let file = torch_like_file(dir.path(), 18, &torchvision_default(18));
    let out = dir.path().join("import");
    std::fs::create_dir_all(&out).unwrap();
    import::convert(&file, Naming::Torchvision, &out).unwrap();
    // A CIFAR-stem ResNet-18 ×0.25: every conv differs.
    let cfg = ModelCfg {
        depth: 18,
        width: 0.25,
        ..ModelCfg::default()
    };
    let net = Network::new_pretrain(&cfg, 32, 3, &Device::Cpu, 0).unwrap();
    let msg = format!(
        "{:#}",
        import::load_into(&net, &out, "the student").unwrap_err()
    );
    assert!(
        msg.contains("init file resnet18.safetensors (torchvision names) does not fit the student"),
        "{msg}"
    );
    assert!(
        msg.contains("conv1.weight: file [64, 3, 7, 7], network [16, 3, 3, 3]"),
        "{msg}"
    );
    assert!(
        msg.contains("model = { depth = 18, width = 1, stem = \"imagenet\" }"),
        "{msg}"
    );
}

/// A small network of each kind: (pretrain network, classifier on head layer 1, SK classifier).
fn small_nets() -> Vec<(&'static str, Network)> {
    let d = Device::Cpu;
    let cfg = ModelCfg {
        depth: 10,
        width: 0.125,
        proj_dim: 8,
        ..ModelCfg::default()
    };
    let sk = ModelCfg {
        depth: 50,
        width: 0.0625,
        sk_ratio: 0.0625,
        stem: Stem::Imagenet,
        ..cfg.clone()
    };
    vec![
        (
            "pretrain",
            Network::new_pretrain(&cfg, 16, 3, &d, 3).unwrap(),
        ),
        (
            "head1",
            Network::new_classifier(&cfg, 16, 3, 5, 1, &d, 3).unwrap(),
        ),
        (
            "features",
            Network::new_classifier(
                &ModelCfg {
                    stem: Stem::Imagenet,
                    ..cfg.clone()
                },
                20,
                3,
                5,
                0,
                &d,
                3,
            )
            .unwrap(),
        ),
        (
            "sk",
            Network::new_classifier(&sk, 20, 3, 5, 1, &d, 3).unwrap(),
        ),
    ]
}

#[test]
fn export_then_import_gives_bit_identical_outputs() {
    let dir = tempfile::tempdir().unwrap();
    for (what, net) in small_nets() {
        scramble(&net, 7);
        let size = net.image_size();
        let x = images(3, 3, size);
        let (_, want_proj, want_logits) = net.forward_all(&x, false).unwrap();
        for naming in [Naming::Torchvision, Naming::Safetensors] {
            let file = dir
                .path()
                .join(format!("{what}-{}.safetensors", naming.as_str()));
            let tensors = match export_tensors(&net, naming) {
                Ok(t) => t,
                Err(e) => {
                    assert!(
                        what == "sk" && naming == Naming::Torchvision,
                        "{what}: {e:#}"
                    );
                    assert!(format!("{e:#}").contains("--format safetensors"), "{e:#}");
                    continue;
                }
            };
            let meta = ExportSidecar::of(&net, naming, None, None);
            write_safetensors(&file, &tensors, Some(&meta)).unwrap();
            let out = dir.path().join(format!("{what}-{}", naming.as_str()));
            std::fs::create_dir_all(&out).unwrap();
            let info = import::convert(&file, naming, &out).unwrap();
            assert_eq!(info.arch_from, "header", "{what}");
            let back = import::full_network(&out, size, &Device::Cpu).unwrap();
            let (_, proj, logits) = back.forward_all(&x, false).unwrap();
            match (want_proj.as_ref(), proj.as_ref()) {
                (Some(a), Some(b)) => assert_eq!(bits(a), bits(b), "{what} {naming:?}"),
                (None, None) => {}
                _ => panic!("{what}: projection present on one side only"),
            }
            match (want_logits.as_ref(), logits.as_ref()) {
                (Some(a), Some(b)) => assert_eq!(bits(a), bits(b), "{what} {naming:?}"),
                (None, None) => {}
                _ => panic!("{what}: logits present on one side only"),
            }
        }
    }
}

#[test]
fn the_head_travels_as_an_fc_sequential() {
    let nets = small_nets();
    let head1 = &nets[1].1;
    let names: Vec<String> = export_tensors(head1, Naming::Torchvision)
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for n in [
        "fc.0.weight",
        "fc.1.weight",
        "fc.1.bias",
        "fc.1.running_var",
        "fc.1.num_batches_tracked",
        "fc.3.weight",
        "fc.3.bias",
    ] {
        assert!(names.contains(&n.to_string()), "{n} in {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.starts_with("fc.2")),
        "ReLU has no tensors"
    );
    // A pretraining network: the whole 3-layer head, the last BN's β exported as zeros.
    let pre = &nets[0].1;
    let t: BTreeMap<String, Tensor> = export_tensors(pre, Naming::Torchvision)
        .unwrap()
        .into_iter()
        .collect();
    assert!(t.contains_key("fc.6.weight") && !t.contains_key("fc.9.weight"));
    assert_eq!(
        t["fc.7.bias"]
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
    let meta = ExportSidecar::of(pre, Naming::Torchvision, None, None);
    assert_eq!(meta.torch.output, "projection");
    assert_eq!(meta.torch.fc.len(), 9);
}

// ---------------------------------------------------------------------------------------------
// Through the binary, on real JPEGs.

fn tiny_root() -> PathBuf {
    cifar_tiny()
}

/// The toy recipe of tests/device_select.rs plus a distill student started from the pretrain node.
fn recipe() -> String {
    let base = Recipe {
        knn_monitor: true,
        supervised: true,
        ..Recipe::cifar("device", &cifar_tiny())
    }
    .toml();
    let models = r#"models = ["finetune", "supervised", "distill"]"#;
    assert!(base.contains(models));
    base.replace(
        models,
        r#"models = ["finetune", "supervised", "distill", "distill_init"]"#,
    ) + r#"
[nodes.distill_init]
kind = "distill"
teacher = "finetune"
init = "pretrain"
data = "cifar"
epochs = 1
batch_size = 64
"#
}

/// `recipe()`'s keys as the binary computed them before `init` files existed (built from
/// f0ef9d9; `semiflow status --json` after a run). Each node without an `init` file must keep
/// its key: the training nodes' keys also hash their inputs' trained weights.
const KEYS_BEFORE_IMPORT: &[(&str, &str)] = &[
    (
        "split",
        "04c899680a604125574b8b76835ab13cee8dd408cc7afedc9226c321824f6d59",
    ),
    (
        "pretrain",
        "abcd2e405fc2736ea1f797666dbb024709c0c967e2954a54d2d8b9a8c1536d5a",
    ),
    (
        "finetune",
        "733888647e0cddb45eb1dcf90ce20abaf9a6b7e88bd96e8ec6ddd90997ccf963",
    ),
    (
        "supervised",
        "cb57a80d7b7060ca6e5287473c867ce7afb4d2544de165ef6b5fbdbf25e8b04f",
    ),
    (
        "distill",
        "b6d690895c6504260abf42e3d8fb3d876877635feaecfa4e5c88462c7aae5d00",
    ),
    (
        "distill_init",
        "b957f5198db076c676bd296f4aa910d41ef590f633ff17425e0cb048ee305d0c",
    ),
    (
        "eval",
        "f7d0b4f9530b9ab7b0c84504e2eab16d6326f206a473071deed8aeb32a86acef",
    ),
];

struct Env {
    dir: tempfile::TempDir,
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.path(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    }

    fn run(&self, args: &[&str]) -> Out {
        let out = semiflow()
            .args(args)
            .arg("--store")
            .arg(self.path("store"))
            .output()
            .unwrap();
        Out {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    fn ok(&self, args: &[&str]) -> Out {
        let out = self.run(args);
        assert_eq!(
            out.code, 0,
            "{args:?}\nstdout:\n{}\nstderr:\n{}",
            out.stdout, out.stderr
        );
        out
    }

    fn keys(&self, file: &str) -> BTreeMap<String, (String, String)> {
        let out = self.ok(&["status", file, "--json"]);
        let rows: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["node"].as_str().unwrap().to_string(),
                    (
                        r["key"].as_str().unwrap_or("").to_string(),
                        r["state"].as_str().unwrap().to_string(),
                    ),
                )
            })
            .collect()
    }

    fn record(&self, node: &str) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["show", node, "--json"]).stdout).unwrap()
    }

    /// A node's artifact files copied out of the store into `dest`.
    fn artifact(&self, node: &str, dest: &Path) -> serde_json::Value {
        let rec = self.record(node);
        std::fs::create_dir_all(dest).unwrap();
        for (name, e) in rec["files"].as_object().unwrap() {
            let hash = e["hash"].as_str().unwrap();
            let blob = self
                .path("store")
                .join("objects")
                .join(&hash[..2])
                .join(hash);
            std::fs::copy(blob, dest.join(name)).unwrap();
        }
        rec
    }
}

/// Eval-mode logits of `net` over the test images (pixel / 255), as semiflow's eval computes them.
fn test_logits(net: &Network, ds: &Dataset) -> Tensor {
    let imgs = &ds.test;
    let mut out = Vec::new();
    // Batches of 256, as the eval kind's default.
    for start in (0..imgs.n).step_by(256) {
        let ids: Vec<usize> = (start..(start + 256).min(imgs.n)).collect();
        let x = semiflow_stages::data::loader::to_tensor(imgs, &ids, &Device::Cpu).unwrap();
        out.push(net.logits(&x, false).unwrap());
    }
    Tensor::cat(&out, 0).unwrap()
}

fn top1(logits: &Tensor, labels: &[u32]) -> usize {
    let pred = logits.argmax(1).unwrap().to_vec1::<u32>().unwrap();
    pred.iter().zip(labels).filter(|(p, l)| p == l).count()
}

#[test]
fn export_import_and_init_through_the_binary() {
    let env = Env::new();
    let file = env.write("p.toml", &recipe());
    env.ok(&["run", &file]);
    // No `init` file anywhere: every key is the one from before imports existed.
    let keys = env.keys(&file);
    for (node, key) in KEYS_BEFORE_IMPORT {
        assert_eq!(&keys[*node].0, key, "{node}: its key changed");
    }

    // Export the fine-tuned classifier (CIFAR stem, head layer 1) with torchvision names.
    let out = env.path("export/finetune.safetensors");
    let o = env.ok(&[
        "export",
        "finetune",
        "--format",
        "torchvision",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(
        o.stdout.contains("exported finetune (finetune"),
        "{}",
        o.stdout
    );
    let sidecar: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.path("export/finetune.json")).unwrap())
            .unwrap();
    assert_eq!(sidecar["naming"], "torchvision");
    assert_eq!(sidecar["torch"]["stem"], "cifar");
    assert_eq!(sidecar["torch"]["maxpool"], "none");
    assert_eq!(
        sidecar["torch"]["widths"],
        serde_json::json!([8, 16, 32, 64])
    );
    assert_eq!(sidecar["torch"]["output"], "logits");
    assert_eq!(sidecar["input"]["scale"], "pixel / 255");
    assert_eq!(sidecar["classes"][0], "airplane");
    assert_eq!(sidecar["classes"].as_array().unwrap().len(), 10);
    assert_eq!(sidecar["source"]["key"], keys["finetune"].0.as_str());
    let fc: Vec<&str> = sidecar["torch"]["fc"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["module"].as_str().unwrap())
        .collect();
    assert_eq!(fc, ["Linear", "BatchNorm1d", "ReLU", "Linear"]);
    let names: Vec<String> = {
        let bytes = std::fs::read(&out).unwrap();
        let mut n: Vec<String> = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .unwrap()
            .into_keys()
            .collect();
        n.sort();
        n
    };
    for n in [
        "conv1.weight",
        "bn1.num_batches_tracked",
        "layer2.0.downsample.0.weight",
        "layer4.0.downsample.1.running_var",
        "fc.0.weight",
        "fc.3.bias",
    ] {
        assert!(names.contains(&n.to_string()), "{n} not in {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.starts_with("encoder.")),
        "{names:?}"
    );
    // An eval node holds no model.
    let bad = env.run(&[
        "export",
        "eval",
        "--out",
        env.path("x.safetensors").to_str().unwrap(),
    ]);
    assert!(
        bad.code != 0 && bad.stderr.contains("holds no model"),
        "{}",
        bad.stderr
    );

    // export → import → eval: bit-identical logits on the test images semiflow decoded.
    let ds_dir = env.path("dataset");
    env.artifact("dataset.cifar", &ds_dir);
    let ds = Dataset::load(&ds_dir).unwrap();
    let ck = env.path("finetune-ckpt");
    env.artifact("finetune", &ck);
    let original = Network::load(&ck, &Device::Cpu).unwrap();
    let imported_dir = env.path("imported");
    std::fs::create_dir_all(&imported_dir).unwrap();
    import::convert(&out, Naming::Torchvision, &imported_dir).unwrap();
    let imported = import::full_network(&imported_dir, ds.test.h, &Device::Cpu).unwrap();
    let (a, b) = (test_logits(&original, &ds), test_logits(&imported, &ds));
    assert_eq!(bits(&a), bits(&b));
    // ... and the eval node's top-1 is that of these logits.
    let eval = env.record("eval");
    let semiflow_top1 = eval["metrics"]["model0.top1"].as_f64().unwrap();
    assert_eq!(
        top1(&a, &ds.test.labels) as f64 / ds.test.n as f64,
        semiflow_top1
    );

    // Import: finetune, distill and pretrain starting from files.
    env.ok(&[
        "export",
        "pretrain",
        "--out",
        env.path("export/pretrain.safetensors").to_str().unwrap(),
    ]);
    // The same tensors without semiflow's header, as a file PyTorch saved: the architecture is read
    // off the shapes.
    let tensors: Vec<(String, Tensor)> = {
        let bytes = std::fs::read(env.path("export/pretrain.safetensors")).unwrap();
        let mut t: Vec<_> = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)
            .unwrap()
            .into_iter()
            .collect();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    write_safetensors(&env.path("export/headerless.safetensors"), &tensors, None).unwrap();
    let with_init = format!(
        r#"{}
[nodes.finetune_file]
kind = "finetune"
init = {{ file = "export/pretrain.safetensors", format = "torchvision" }}
labels = "split"
data = "cifar"
epochs = 2
batch_size = 64

[nodes.distill_file]
kind = "distill"
teacher = "finetune"
init = {{ file = "export/pretrain.safetensors", format = "torchvision" }}
data = "cifar"
epochs = 1
batch_size = 64

[nodes.finetune_headerless]
kind = "finetune"
init = {{ file = "export/headerless.safetensors", format = "torchvision" }}
labels = "split"
data = "cifar"
epochs = 2
batch_size = 64

[nodes.pretrain_file]
kind = "pretrain"
data = "cifar"
init = {{ file = "export/finetune.safetensors", format = "torchvision" }}
model = {{ depth = 10, width = 0.125 }}
epochs = 1
batch_size = 64
"#,
        recipe()
    );
    let file2 = env.write("p2.toml", &with_init);
    let o = env.ok(&["run", &file2]);
    assert!(
        o.stdout
            .contains("semiflow: 15 nodes: 7 ran, 8 cached, 0 failed"),
        "{}",
        o.stdout
    );
    let keys2 = env.keys(&file2);
    // Two files, two import nodes, named after the first node reading each.
    assert!(
        keys2.contains_key("import.finetune_file") && keys2.contains_key("import.pretrain_file")
    );
    assert!(
        !keys2.contains_key("import.distill_file"),
        "the same file is imported once"
    );
    for (node, key) in KEYS_BEFORE_IMPORT {
        assert_eq!(&keys2[*node].0, key, "{node}: its key changed");
    }
    // The file's content is in the key ("input from" holds the import's artifact) ...
    let rec = env.record("finetune_file");
    let comps: BTreeMap<String, String> =
        serde_json::from_value::<Vec<(String, String)>>(rec["components"].clone())
            .unwrap()
            .into_iter()
            .collect();
    let import_rec = env.record("import.finetune_file");
    assert_eq!(
        comps["input from"],
        import_rec["artifact"].as_str().unwrap()
    );
    assert!(
        comps.contains_key("dataset") || import_rec["components"].to_string().contains("dataset")
    );
    // ... the fine-tuned network starts from the file's encoder and head layer 1 ...
    let ft_ck = env.path("ft-file");
    env.artifact("finetune_file", &ft_ck);
    let ft = Network::load(&ft_ck, &Device::Cpu).unwrap();
    assert_eq!((ft.head_layer(), ft.num_classes()), (Some(1), Some(10)));
    // The header-less file gives the same network (architecture from its shapes) and so, with the
    // same seed and data, the same fine-tuned weights.
    let info = env.record("import.finetune_headerless");
    assert_eq!(info["details"]["arch_from"], "shapes");
    assert_eq!(
        env.record("import.finetune_file")["details"]["arch_from"],
        "header"
    );
    let hl_ck = env.path("ft-headerless");
    env.artifact("finetune_headerless", &hl_ck);
    assert_eq!(
        std::fs::read(hl_ck.join("model.safetensors")).unwrap(),
        std::fs::read(ft_ck.join("model.safetensors")).unwrap()
    );
    // ... and the pipeline file's directory is what the path is relative to; moving it with the
    // files keeps every key, changing a file's content changes its readers' keys.
    let moved = Env::new();
    std::fs::create_dir_all(moved.path("export")).unwrap();
    for f in ["pretrain", "finetune", "headerless"] {
        let name = format!("export/{f}.safetensors");
        std::fs::copy(env.path(&name), moved.path(&name)).unwrap();
    }
    let file3 = moved.write("p2.toml", &with_init);
    let keys3 = moved.keys(&file3);
    assert_eq!(
        keys3["import.finetune_file"].0,
        keys2["import.finetune_file"].0
    );
    std::fs::copy(
        env.path("export/finetune.safetensors"),
        moved.path("export/pretrain.safetensors"),
    )
    .unwrap();
    let keys4 = moved.keys(&file3);
    assert_ne!(
        keys4["import.finetune_file"].0,
        keys2["import.finetune_file"].0
    );
    assert_eq!(
        keys4["import.pretrain_file"].0,
        keys2["import.pretrain_file"].0
    );

    // A file of another architecture: the run fails naming the file, keys and shapes.
    let mismatch = with_init.replace(
        "init = {{ file = \"export/finetune.safetensors\", format = \"torchvision\" }}\nmodel = {{ depth = 10, width = 0.125 }}".replace("{{", "{").replace("}}", "}").as_str(),
        "init = { file = \"export/finetune.safetensors\", format = \"torchvision\" }\nmodel = { depth = 18, width = 0.125 }",
    );
    assert_ne!(mismatch, with_init);
    let file5 = env.write("p5.toml", &mismatch);
    let o = env.run(&["run", &file5, "--only", "pretrain_file"]);
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("init file finetune.safetensors (torchvision names) does not fit this pretrain node's network"), "{}", o.stderr);
    assert!(
        o.stderr
            .contains("layer1.1.conv1.weight: missing from the file"),
        "{}",
        o.stderr
    );
    assert!(
        o.stderr
            .contains("model = { depth = 10, width = 0.125, stem = \"cifar\" }"),
        "{}",
        o.stderr
    );
}

#[test]
fn init_files_are_checked_when_the_pipeline_loads() {
    let env = Env::new();
    let base = recipe();
    let case = |extra: &str, want: &[&str]| {
        let file = env.write("bad.toml", &format!("{base}{extra}"));
        let o = env.run(&["validate", &file]);
        assert_ne!(o.code, 0, "{extra}");
        for w in want {
            assert!(o.stderr.contains(w), "{extra}: want {w:?} in\n{}", o.stderr);
        }
    };
    let ft = "\n[nodes.f]\nkind = \"finetune\"\nlabels = \"split\"\ndata = \"cifar\"\n";
    case(
        &format!("{ft}init = {{ file = \"nope.safetensors\", format = \"torchvision\" }}\n"),
        &["nodes.f.init.file", "nope.safetensors does not exist"],
    );
    std::fs::write(env.path("m.safetensors"), b"x").unwrap();
    case(
        &format!("{ft}init = {{ file = \"m.safetensors\", format = \"onnx\" }}\n"),
        &["nodes.f.init.format", "unknown variant `onnx`"],
    );
    case(
        &format!("{ft}init = {{ file = \"m.safetensors\" }}\n"),
        &["nodes.f.init", "missing required key `format`"],
    );
    case(
        &format!("{ft}from = \"pretrain\"\ninit = {{ file = \"m.safetensors\", format = \"torchvision\" }}\n"),
        &["nodes.f.from", "both give the starting network"],
    );
    case(
        ft,
        &[
            "nodes.f.from: missing required key `from`",
            "or `init = ...`",
        ],
    );
    case(
        "\n[nodes.p]\nkind = \"pretrain\"\ndata = \"cifar\"\ninit = \"pretrain\"\n",
        &["nodes.p.init", "takes a model file"],
    );
    case(
        "\n[nodes.i]\nkind = \"import\"\n",
        &["import nodes are made from `init"],
    );
}

// ---------------------------------------------------------------------------------------------
// PyTorch, where it is installed.

fn torch_python() -> Result<String, String> {
    let python = std::env::var("SEMIFLOW_TORCH_PYTHON").unwrap_or_else(|_| "python3".into());
    match Command::new(&python)
        .args(["-c", "import torch, torchvision, safetensors, numpy"])
        .output()
    {
        Ok(o) if o.status.success() => Ok(python),
        Ok(o) => Err(format!(
            "`{python} -c \"import torch, torchvision, safetensors, numpy\"` failed: {}",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )),
        Err(e) => Err(format!("cannot run {python}: {e}")),
    }
}

#[test]
fn pytorch_reproduces_semiflows_top1() {
    let python = match torch_python() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("skipped: PyTorch is not available here ({why}); set SEMIFLOW_TORCH_PYTHON to a Python with torch, torchvision and safetensors");
            return;
        }
    };
    let env = Env::new();
    let file = env.write("p.toml", &recipe());
    env.ok(&["run", &file, "--until", "eval"]);
    let out = env.path("finetune.safetensors");
    env.ok(&["export", "finetune", "--out", out.to_str().unwrap()]);
    let ds_dir = env.path("dataset");
    env.artifact("dataset.cifar", &ds_dir);
    let ds = Dataset::load(&ds_dir).unwrap();
    let ck = env.path("ckpt");
    env.artifact("finetune", &ck);
    let logits = test_logits(&Network::load(&ck, &Device::Cpu).unwrap(), &ds);
    let raw: Vec<u8> = logits
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    std::fs::write(env.path("logits.f32"), raw).unwrap();
    let top1 = env.record("eval")["metrics"]["model0.top1"]
        .as_f64()
        .unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/torch_check.py");
    let o = Command::new(&python)
        .arg(script)
        .args(["--model", out.to_str().unwrap()])
        .args(["--dataset", ds_dir.to_str().unwrap()])
        .args(["--expect-top1", &top1.to_string()])
        .args(["--logits", env.path("logits.f32").to_str().unwrap()])
        .args(["--jpeg-root", tiny_root().join("test").to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    eprintln!("{stdout}");
    assert!(
        o.status.success(),
        "torch_check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["torch_top1"].as_f64().unwrap(), top1);
    assert_eq!(report["argmax_differs"], 0);
    assert!(
        report["max_abs_logit_diff"].as_f64().unwrap() < 1e-3,
        "{report}"
    );
}

/// torchvision's own `resnet18()` loads an ImageNet-stem export with `strict=True` and, with its
/// max-pool swapped for TF-"SAME" padding, computes semiflow's logits; with torchvision's own
/// max-pool it does not (on even sizes), which is why the README says so.
#[test]
fn pytorch_resnet18_matches_with_a_tf_same_maxpool() {
    let python = match torch_python() {
        Ok(p) => p,
        Err(why) => {
            eprintln!("skipped: PyTorch is not available here ({why})");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let net = torchvision_default(18);
    scramble(&net, 5);
    let file = dir.path().join("r18.safetensors");
    let meta = ExportSidecar::of(&net, Naming::Torchvision, None, None);
    assert_eq!(
        meta.torch.torchvision_constructor.as_deref(),
        Some("resnet18")
    );
    write_safetensors(
        &file,
        &export_tensors(&net, Naming::Torchvision).unwrap(),
        Some(&meta),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("r18.json"),
        serde_json::to_string(&meta).unwrap(),
    )
    .unwrap();
    let x = images(4, 3, 64);
    let le = |t: &Tensor| -> Vec<u8> {
        t.flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    };
    std::fs::write(dir.path().join("x.f32"), le(&x)).unwrap();
    std::fs::write(
        dir.path().join("y.f32"),
        le(&net.logits(&x, false).unwrap()),
    )
    .unwrap();
    let script = r#"
import sys, json, numpy as np, torch, torchvision
sys.path.insert(0, sys.argv[1])
import semiflow_torch
from safetensors.torch import load_file
d = sys.argv[2]
x = torch.from_numpy(np.fromfile(d + "/x.f32", dtype="<f4").reshape(4, 3, 64, 64))
want = np.fromfile(d + "/y.f32", dtype="<f4").reshape(4, 1000)
m = torchvision.models.resnet18()
m.load_state_dict(load_file(d + "/r18.safetensors"), strict=True)
m.eval()
with torch.no_grad():
    own = m(x).numpy()
    m.maxpool = semiflow_torch.TFSameMaxPool()
    same = m(x).numpy()
print(json.dumps({"tf_same": float(np.abs(same - want).max()), "torchvision_pool": float(np.abs(own - want).max())}))
"#;
    let o = Command::new(&python)
        .args(["-c", script])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts"))
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    eprintln!("{r}");
    let (same, own) = (
        r["tf_same"].as_f64().unwrap(),
        r["torchvision_pool"].as_f64().unwrap(),
    );
    assert!(same < 1e-3, "{r}");
    assert!(own > 100.0 * same.max(1e-6), "{r}");
}
