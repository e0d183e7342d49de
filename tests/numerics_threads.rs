//! Same bits at any thread count and on any x86-64 CPU with AVX2 + FMA (stages/src/numerics.rs):
//! small pretrain → fine-tune → distill → eval pipelines through the real binary at
//! `RAYON_NUM_THREADS` = 1, 2, 3 and 8 must produce identical output artifacts, for a width-0.125
//! ResNet-10 and a wider one (its 256-channel stage takes the im2col + GEMM route with K = 2304,
//! split into pinned K blocks) on the committed tiny CIFAR-10 images, and for a one-channel 28×28
//! IDX dataset generated here.
//!
//! The artifacts are also pinned to the hashes below, computed on an Intel Xeon with AVX-512: on
//! an AVX2-only CPU (or one with another cache size) this test is the cross-CPU check. A numerics
//! change that alters them must bump `numerics::NUMERICS_VERSION` and update the hashes.

use std::collections::BTreeMap;
use std::path::Path;

mod real_support;
use real_support::{cifar_tiny, semiflow, Recipe};

fn pipeline(dataset: &str, width: f64, batch: usize) -> String {
    Recipe {
        name: "numerics",
        dataset: dataset.to_string(),
        data: "d",
        per_class: 4,
        width,
        pretrain_epochs: 1,
        batch_size: batch,
        knn_monitor: false,
        supervised: false,
    }
    .toml()
}

/// 240 train + 60 test grey 28×28 images of 3 classes (a bright bar whose position is the class,
/// on noise), as raw IDX files.
fn write_idx(dir: &Path) {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for (prefix, n) in [("train", 240u32), ("t10k", 60)] {
        let mut images = vec![0, 0, 8, 3];
        for d in [n, 28, 28] {
            images.extend_from_slice(&d.to_be_bytes());
        }
        let mut labels = vec![0, 0, 8, 1];
        labels.extend_from_slice(&n.to_be_bytes());
        for i in 0..n {
            let class = (i % 3) as usize;
            labels.push(class as u8);
            for r in 0..28 {
                for c in 0..28 {
                    let bar = (r / 9 == class) && (6..22).contains(&c);
                    let v = (rnd() % 64) as u8 + if bar { 160 } else { 0 };
                    images.push(v);
                }
            }
        }
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
    }
}

/// Run `text` at `threads` into a fresh store; node → artifact hash.
fn artifacts(dir: &Path, text: &str, threads: usize) -> BTreeMap<String, String> {
    let file = dir.join(format!("p{threads}.toml"));
    std::fs::write(&file, text).unwrap();
    let store = dir.join(format!("store{threads}"));
    let run = |args: &[&str]| {
        let out = semiflow()
            .args(args)
            .arg("--store")
            .arg(&store)
            .env("RAYON_NUM_THREADS", threads.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?} at {threads} threads:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    run(&["-q", "run", file.to_str().unwrap()]);
    ["split", "pretrain", "finetune", "distill", "eval"]
        .iter()
        .map(|n| {
            let v: serde_json::Value = serde_json::from_str(&run(&["show", n, "--json"])).unwrap();
            assert_eq!(
                v["provenance"]["numerics"]["threads"].as_u64(),
                Some(threads as u64),
                "the record names its thread count"
            );
            (n.to_string(), v["artifact"].as_str().unwrap().to_string())
        })
        .collect()
}

fn check(name: &str, text: &str, golden: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let base = artifacts(dir.path(), text, 1);
    for threads in [2, 3, 8] {
        let other = artifacts(dir.path(), text, threads);
        assert_eq!(
            other, base,
            "{name}: artifacts at {threads} threads differ from 1 thread"
        );
    }
    let golden: BTreeMap<String, String> = golden
        .iter()
        .map(|(n, h)| (n.to_string(), h.to_string()))
        .collect();
    assert_eq!(
        base, golden,
        "{name}: artifacts differ from the pinned hashes made on another CPU: the numerics \
         profile promises equal bits on every x86-64 CPU with AVX2 + FMA"
    );
}

const CIFAR: &str = "[datasets.d]\nformat = \"image-folder\"\nroot = \"ROOT\"";

#[test]
fn narrow_network_same_bits_at_1_2_3_8_threads() {
    let ds = CIFAR.replace("ROOT", &cifar_tiny().display().to_string());
    check("width 0.125", &pipeline(&ds, 0.125, 64), GOLDEN_NARROW);
}

#[test]
fn wider_network_same_bits_at_1_2_3_8_threads() {
    let ds = CIFAR.replace("ROOT", &cifar_tiny().display().to_string());
    check("width 0.5", &pipeline(&ds, 0.5, 48), GOLDEN_WIDE);
}

#[test]
fn one_channel_28x28_same_bits_at_1_2_3_8_threads() {
    let data = tempfile::tempdir().unwrap();
    write_idx(data.path());
    let ds = format!(
        "[datasets.d]\nformat = \"idx\"\nroot = \"{}\"",
        data.path().display()
    );
    check("grey 28x28", &pipeline(&ds, 0.25, 64), GOLDEN_GREY);
}

const GOLDEN_NARROW: &[(&str, &str)] = &[
    (
        "distill",
        "1acfb6f8d58765afaf79159eb3e26a0735101e3918e5f1ae582b53a2e0d2e2d4",
    ),
    (
        "eval",
        "04d036875e948b9f18616238f9e1c3b29ff27f236b45b000ca2aebcf79f374c3",
    ),
    (
        "finetune",
        "23b0f7b2f09ff18638c612df9ecba2436e84d62b4e5adddbfd959c36816a61b7",
    ),
    (
        "pretrain",
        "3330757d8a7f042069422097e7ccc5243df5eba9fcdb52cd961840db096abcda",
    ),
    (
        "split",
        "55002aa8279cf29c3ab2809e386c1728f290159c4d027ec2d98b88f8fe369fe3",
    ),
];
const GOLDEN_WIDE: &[(&str, &str)] = &[
    (
        "distill",
        "3157e1ce776ee842cfe3b7df88254d36231a5341cc457cde1ef95a6453f345a4",
    ),
    (
        "eval",
        "577aded131b951db7e615ef3962065d9bce69e0441dc57e6a0598cc31864196f",
    ),
    (
        "finetune",
        "41605d212be039de53924691c70725b28244a32c702c4e101cf759596f70c53b",
    ),
    (
        "pretrain",
        "c5710e2433a58aea9368c5b3ac7a9764e02987bb202e6d2b2a135e59d1d8bfd1",
    ),
    (
        "split",
        "55002aa8279cf29c3ab2809e386c1728f290159c4d027ec2d98b88f8fe369fe3",
    ),
];
const GOLDEN_GREY: &[(&str, &str)] = &[
    (
        "distill",
        "54dcb70d686b72d213d4857c63114aa70135cdb125fa3b3f13e602dd29a93725",
    ),
    (
        "eval",
        "fab14f067ca0c07d49a7b4439aeb65029211fb52dce7d162881430fdcc02c2a7",
    ),
    (
        "finetune",
        "7bbf8da27fd2735359f4d266e088c04769a1da33550b67ec4a17bd80c1f5240e",
    ),
    (
        "pretrain",
        "6c9b9b155704a00c2927c7f60ac8306913f4b643a6cfaca2317e340d9d6dcacd",
    ),
    (
        "split",
        "38fdd16e69dec29cf1441b444ac64550d942fa58512426da0f0bd39c9e9aa55e",
    ),
];
