//! Network-level tests: shapes per depth family and stem, initialization, checkpoints, head
//! truncation, state operations, and a tiny network overfitting a tiny batch.

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};

use super::*;

fn cfg(depth: usize, width: f64, sk_ratio: f64) -> ModelCfg {
    ModelCfg {
        depth,
        width,
        sk_ratio,
        proj_dim: 16,
        ..Default::default()
    }
}

fn images(n: usize, c: usize, size: usize, seed: u64) -> Tensor {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..n * c * size * size).map(|_| rng.gen()).collect();
    Tensor::from_vec(v, (n, c, size, size), &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn network_can_move_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Network>();
}

#[test]
fn output_shapes_for_each_family_and_stem() {
    let d = Device::Cpu;
    // (cfg, image size, in channels, expected feature dim)
    let cases = [
        (cfg(10, 0.25, 0.0), 8, 3, 128),
        (cfg(18, 0.5, 0.0), 8, 1, 256),
        (cfg(18, 0.25, 0.0), 40, 3, 128), // ImageNet stem (auto, > 32 px)
        (cfg(50, 0.25, 0.0625), 8, 3, 512),
        (cfg(50, 0.25, 0.0625), 36, 3, 512), // ResNet-D deep stem + SK
        (cfg(50, 0.25, 0.0), 36, 3, 512),
        (
            ModelCfg {
                stem: Stem::Imagenet,
                ..cfg(10, 0.25, 0.0)
            },
            16,
            3,
            128,
        ),
    ];
    for (c, size, cin, dim) in cases {
        let net = Network::new_pretrain(&c, size, cin, &d, 0).unwrap();
        assert_eq!(net.num_features(), dim);
        let x = images(2, cin, size, 1);
        for train in [true, false] {
            let (f, p, l) = net.forward_all(&x, train).unwrap();
            assert_eq!(f.dims(), [2, dim], "{c:?} {size}");
            assert_eq!(p.unwrap().dims(), [2, 16]);
            assert!(l.is_none());
        }
    }
}

#[test]
fn parameter_counts_match_torchvision() {
    // torchvision resnet18/resnet50 without the fc layer: 11,176,512 and 23,508,032 parameters.
    let d = Device::Cpu;
    for (depth, expected) in [(18, 11_176_512usize), (50, 23_508_032)] {
        let c = ModelCfg {
            depth,
            stem: Stem::Imagenet,
            ..Default::default()
        };
        let net = Network::new_classifier(&c, 224, 3, 10, 0, &d, 0).unwrap();
        let encoder: usize = net
            .trainable()
            .iter()
            .filter(|p| p.name.starts_with("encoder."))
            .map(|p| p.var.elem_count())
            .sum();
        assert_eq!(encoder, expected, "depth {depth}");
    }
}

#[test]
fn trainables_are_sorted_and_tagged() {
    let net = Network::new_classifier(&cfg(10, 0.25, 0.0), 8, 3, 5, 3, &Device::Cpu, 0).unwrap();
    let params = net.trainable();
    let names: Vec<&str> = params.iter().map(|p| p.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    for p in &params {
        let no_decay = p.name.contains(".bn") || p.name.ends_with("bias");
        assert_eq!(p.exclude_from_decay, no_decay, "{}", p.name);
    }
    assert!(names.contains(&"encoder.layer1.0.conv1.weight"));
    assert!(names.contains(&"head.2.bn.bias"));
    // The head's last BN has no β (reference: center=False).
    assert!(names.contains(&"head.3.bn.weight") && !names.contains(&"head.3.bn.bias"));
    // Each block's last BN γ starts at zero.
    let gamma = params
        .iter()
        .find(|p| p.name == "encoder.layer2.0.bn2.weight")
        .unwrap();
    assert_eq!(
        gamma.var.sum_all().unwrap().to_scalar::<f32>().unwrap(),
        0.0
    );
}

#[test]
fn zero_initialized_classifier_gives_zero_logits() {
    let net = Network::new_classifier(&cfg(10, 0.25, 0.0), 8, 3, 7, 1, &Device::Cpu, 3).unwrap();
    let logits = net.logits(&images(3, 3, 8, 2), true).unwrap();
    assert_eq!(logits.dims(), [3, 7]);
    assert_eq!(
        logits
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
    assert!(net.project(&images(3, 3, 8, 2), false).is_err());
}

#[test]
fn same_seed_gives_identical_checkpoint_bytes() {
    let d = Device::Cpu;
    let c = cfg(50, 0.25, 0.0625);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    for (dir, seed) in dirs.iter().zip([5, 5, 6]) {
        Network::new_pretrain(&c, 8, 3, &d, seed)
            .unwrap()
            .save(dir.path())
            .unwrap();
    }
    let bytes = |i: usize| std::fs::read(dirs[i].path().join(WEIGHTS_FILE)).unwrap();
    assert_eq!(bytes(0), bytes(1));
    assert_ne!(bytes(0), bytes(2));
}

#[test]
fn save_load_roundtrip_gives_identical_outputs() {
    let d = Device::Cpu;
    let net = Network::new_classifier(&cfg(18, 0.25, 0.0), 8, 3, 4, 1, &d, 9).unwrap();
    let x = images(4, 3, 8, 4);
    net.forward_all(&x, true).unwrap(); // move the running statistics off their init
    let dir = tempfile::tempdir().unwrap();
    net.save(dir.path()).unwrap();
    let back = Network::load(dir.path(), &d).unwrap();
    assert_eq!(back.arch(), net.arch());
    assert_eq!(back.net_shape(), net.net_shape());
    for train in [false, true] {
        let (a, b) = (
            net.features(&x, train).unwrap(),
            back.features(&x, train).unwrap(),
        );
        assert_eq!(max_abs_diff(&a, &b), 0.0);
    }
    let (a, b) = (net.state_tensors(), back.state_tensors());
    assert_eq!(a.len(), b.len());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert_eq!(max_abs_diff(ta, tb), 0.0, "{na}");
    }
}

#[test]
fn load_rejects_a_sidecar_that_does_not_match_the_weights() {
    let d = Device::Cpu;
    let dir = tempfile::tempdir().unwrap();
    Network::new_pretrain(&cfg(10, 0.25, 0.0), 8, 3, &d, 0)
        .unwrap()
        .save(dir.path())
        .unwrap();
    let sidecar = dir.path().join(SIDECAR_FILE);
    let text = std::fs::read_to_string(&sidecar).unwrap();
    std::fs::write(
        &sidecar,
        text.replace("\"proj_dim\": 16", "\"proj_dim\": 32"),
    )
    .unwrap();
    let err = format!("{:#}", Network::load(dir.path(), &d).err().unwrap());
    assert!(
        err.contains(WEIGHTS_FILE) && err.contains(SIDECAR_FILE),
        "{err}"
    );
    assert!(err.contains("head.3.linear.weight"), "{err}");
    std::fs::write(&sidecar, "{\"format\": \"other\"}").unwrap();
    let err = format!("{:#}", Network::load(dir.path(), &d).err().unwrap());
    assert!(err.contains(SIDECAR_FILE), "{err}");
}

#[test]
fn bn_running_stats_update_only_in_training() {
    let d = Device::Cpu;
    let net = Network::new_pretrain(&cfg(10, 0.25, 0.0), 8, 3, &d, 0).unwrap();
    let stat = |net: &Network| {
        net.state_tensors()
            .into_iter()
            .find(|(n, _)| n == "encoder.stem.bn1.running_mean")
            .unwrap()
            .1
    };
    let before = stat(&net);
    net.forward_all(&images(4, 3, 8, 1), false).unwrap();
    assert_eq!(max_abs_diff(&before, &stat(&net)), 0.0);
    net.forward_all(&images(4, 3, 8, 1), true).unwrap();
    assert!(max_abs_diff(&before, &stat(&net)) > 1e-4);
}

#[test]
fn from_pretrained_keeps_head_layers_up_to_head_layer() {
    let d = Device::Cpu;
    let c = ModelCfg {
        proj_hidden: Some(24),
        ..cfg(10, 0.25, 0.0)
    };
    let pre = Network::new_pretrain(&c, 8, 3, &d, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    pre.save(dir.path()).unwrap();
    for (head_layer, classifier_in) in [(0usize, 128usize), (1, 24), (3, 16)] {
        let ft = Network::from_pretrained(dir.path(), head_layer, 10, &d, 0).unwrap();
        assert_eq!(ft.head_kept(), head_layer);
        assert_eq!(ft.head_layer(), Some(head_layer));
        let names: Vec<String> = ft.trainable().into_iter().map(|p| p.name).collect();
        for i in 1..=3 {
            let kept = names.iter().any(|n| n.starts_with(&format!("head.{i}.")));
            assert_eq!(
                kept,
                i <= head_layer,
                "layer {i} with head_layer {head_layer}"
            );
        }
        let w = ft
            .trainable()
            .into_iter()
            .find(|p| p.name == "classifier.weight")
            .unwrap();
        assert_eq!(w.var.dims(), [10, classifier_in]);
        // The encoder and kept head layers are the pretrained ones.
        let pre_state: std::collections::BTreeMap<_, _> = pre.state_tensors().into_iter().collect();
        for (name, t) in ft.state_tensors() {
            if !name.starts_with("classifier") {
                assert_eq!(max_abs_diff(&t, &pre_state[&name]), 0.0, "{name}");
            }
        }
        let x = images(2, 3, 8, 0);
        assert_eq!(ft.logits(&x, true).unwrap().dims(), [2, 10]);
        assert_eq!(ft.has_projection(), head_layer == 3);
    }
    let err = Network::from_pretrained(dir.path(), 4, 10, &d, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("head_layer = 4"), "{err}");
}

#[test]
fn ema_update_copy_and_load_state() {
    let d = Device::Cpu;
    let c = cfg(10, 0.25, 0.0);
    let a = Network::new_pretrain(&c, 8, 3, &d, 1).unwrap();
    let b = Network::new_pretrain(&c, 8, 3, &d, 2).unwrap();
    let ema = b.deep_clone().unwrap();
    let w = |n: &Network| {
        n.trainable()
            .into_iter()
            .find(|p| p.name == "head.1.linear.weight")
            .unwrap()
            .var
    };
    let (wa, wb) = (w(&a).as_detached_tensor(), w(&b).as_detached_tensor());
    ema.ema_update(&a, 0.75).unwrap();
    let expect = ((&wb * 0.75).unwrap() + (&wa * 0.25).unwrap()).unwrap();
    assert!(max_abs_diff(&w(&ema).as_detached_tensor(), &expect) < 1e-7);
    // deep_clone is independent of its source.
    assert_eq!(max_abs_diff(&w(&b).as_detached_tensor(), &wb), 0.0);
    ema.copy_from(&a).unwrap();
    assert_eq!(max_abs_diff(&w(&ema).as_detached_tensor(), &wa), 0.0);
    // load_state restores in place: the Vars an optimizer holds see the new values.
    let held = w(&b);
    b.load_state(&a.state_tensors()).unwrap();
    assert_eq!(max_abs_diff(&held.as_detached_tensor(), &wa), 0.0);
    let mut partial = a.state_tensors();
    partial.pop();
    assert!(b.load_state(&partial).is_err());
    let other = Network::new_pretrain(&cfg(18, 0.25, 0.0), 8, 3, &d, 1).unwrap();
    assert!(ema.copy_from(&other).is_err());
}

#[test]
fn eval_forward_builds_no_graph_and_train_forward_reaches_every_param() {
    let d = Device::Cpu;
    let net = Network::new_classifier(&cfg(50, 0.25, 0.0625), 8, 3, 3, 3, &d, 0).unwrap();
    let x = images(2, 3, 8, 0);
    let loss = net.forward_all(&x, false).unwrap();
    let s = (loss.0.sum_all().unwrap() + loss.2.unwrap().sum_all().unwrap()).unwrap();
    let grads = s.backward().unwrap();
    assert!(net
        .trainable()
        .iter()
        .all(|p| grads.get(p.var.as_tensor()).is_none()));
    let (f, p, l) = net.forward_all(&x, true).unwrap();
    let s = ((f.sum_all().unwrap() + p.unwrap().sum_all().unwrap()).unwrap()
        + l.unwrap().sum_all().unwrap())
    .unwrap();
    let grads = s.backward().unwrap();
    for p in net.trainable() {
        assert!(
            grads.get(p.var.as_tensor()).is_some(),
            "no gradient for {}",
            p.name
        );
    }
}

/// A tiny network trained with plain SGD (written here, independent of `optim`) must fit a few
/// labeled random images perfectly.
#[test]
fn tiny_network_overfits_a_tiny_batch() {
    let d = Device::Cpu;
    let c = ModelCfg {
        depth: 10,
        width: 0.125,
        ..Default::default()
    };
    let net = Network::new_classifier(&c, 8, 3, 4, 0, &d, 0).unwrap();
    let x = images(8, 3, 8, 11);
    let labels = Tensor::new(&[0u32, 1, 2, 3, 0, 1, 2, 3], &d).unwrap();
    let params = net.trainable();
    let mut last = f32::INFINITY;
    for _ in 0..150 {
        let logits = net.logits(&x, true).unwrap();
        let loss = candle_nn::loss::cross_entropy(&logits, &labels).unwrap();
        last = loss.to_scalar::<f32>().unwrap();
        if last < 0.01 {
            break;
        }
        let grads = loss.backward().unwrap();
        for p in &params {
            let g = grads.get(p.var.as_tensor()).unwrap();
            p.var
                .set(&(p.var.as_tensor() - (g * 0.1).unwrap()).unwrap())
                .unwrap();
        }
    }
    assert!(last < 0.05, "loss stayed at {last}");
    let pred = net.logits(&x, true).unwrap().argmax(1).unwrap();
    assert_eq!(
        pred.to_vec1::<u32>().unwrap(),
        labels.to_vec1::<u32>().unwrap()
    );
    assert_eq!(pred.dtype(), DType::U32);
}

/// Peak-memory probe for eval-mode feature extraction (the trap `params::use_var` avoids: a graph
/// kept through Var-backed weights costs 3-4 GB for R18 at b256). Run under `/usr/bin/time -v`
/// with `--ignored eval_memory_probe`.
#[test]
#[ignore]
fn eval_memory_probe() {
    let d = Device::Cpu;
    let net = Network::new_pretrain(&ModelCfg::default(), 32, 3, &d, 0).unwrap();
    let x = images(256, 3, 32, 0);
    let t = std::time::Instant::now();
    let f = net.features(&x, false).unwrap();
    assert_eq!(f.dims(), [256, 512]);
    eprintln!("R18 b256 eval forward: {:.2} s", t.elapsed().as_secs_f64());
}
