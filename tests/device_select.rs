//! `device = "cpu" | "cuda" | "cuda:N"` through the real binary: CPU cache keys are the ones they
//! were before the parameter existed, any other device changes them, bad values are reported at
//! their place, and a binary built without the `cuda` feature says how to get one.
//!
//! Data: the 300 + 100 CIFAR-10 JPEGs under `tests/data/cifar10-tiny`, with networks small
//! enough that the whole recipe runs in seconds.

mod real_support;
use real_support::{cifar_tiny, semiflow, Recipe};

/// The whole recipe at toy size (the same as tests/e2e_real.rs's), `extra` appended.
fn recipe(extra: &str) -> String {
    let recipe = Recipe {
        knn_monitor: true,
        supervised: true,
        ..Recipe::cifar("device", &cifar_tiny())
    };
    recipe.toml() + extra
}

/// The keys this recipe's nodes had with the binary from before `device` existed (built from
/// 00c12e1; `semiflow status --json` after a run). Only nodes whose inputs are the decoded dataset
/// and the split: their keys depend on parameters and file contents alone. (The keys of nodes
/// downstream of a training node also hash its trained weights, which that binary computed with
/// the CPU's own GEMM kernels, before the numerics were pinned; the unit test
/// `device::tests::cpu_params_resolve_as_before` covers their parameters.) The dataset's own key
/// is left out: it names the dataset root's location.
const KEYS_BEFORE_DEVICES: &[(&str, &str)] = &[
    (
        "split",
        "04c899680a604125574b8b76835ab13cee8dd408cc7afedc9226c321824f6d59",
    ),
    (
        "pretrain",
        "abcd2e405fc2736ea1f797666dbb024709c0c967e2954a54d2d8b9a8c1536d5a",
    ),
    (
        "supervised",
        "cb57a80d7b7060ca6e5287473c867ce7afb4d2544de165ef6b5fbdbf25e8b04f",
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

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    }

    fn run(&self, args: &[&str]) -> Out {
        let out = semiflow()
            .args(args)
            .arg("--store")
            .arg(self.dir.path().join("store"))
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

    /// Node → (key, state) from `status --json` with `extra` arguments.
    fn status(&self, file: &str, extra: &[&str]) -> Vec<(String, String, String)> {
        let mut args = vec!["status", file, "--json"];
        args.extend_from_slice(extra);
        let out = self.ok(&args);
        let rows: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        rows.as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["node"].as_str().unwrap().to_string(),
                    r["key"].as_str().unwrap_or("").to_string(),
                    r["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }
}

fn key_of<'a>(rows: &'a [(String, String, String)], node: &str) -> &'a str {
    &rows.iter().find(|r| r.0 == node).unwrap().1
}

#[test]
fn cpu_keys_are_the_ones_from_before_devices_and_cuda_keys_differ() {
    let env = Env::new();
    let file = env.write("p.toml", &recipe(""));
    env.ok(&["run", &file]);
    let rows = env.status(&file, &[]);
    for (node, key) in KEYS_BEFORE_DEVICES {
        assert_eq!(key_of(&rows, node), *key, "{node}: the CPU key changed");
    }
    assert!(rows.iter().all(|r| r.2 == "cached"), "{rows:?}");

    // Written out as the default, from [defaults.KIND], or by --device cpu: the same keys.
    let text = recipe("\n[defaults.eval]\ndevice = \"cpu\"\n").replace(
        "epochs = 1\nbatch_size = 64\nknn",
        "epochs = 1\nbatch_size = 64\ndevice = \"cpu\"\nknn",
    );
    assert!(
        text.contains("device = \"cpu\"\nknn"),
        "the replace found its place"
    );
    let explicit = env.write("explicit.toml", &text);
    for (file, extra) in [
        (&explicit, &[][..]),
        (&file, &["--device", "cpu"][..]),
        (&file, &["--set", "defaults.finetune.device=cpu"][..]),
    ] {
        let again = env.status(file, extra);
        assert_eq!(again, rows, "{file} {extra:?}");
    }

    // On CUDA every training and eval node has a key of its own (computable without a GPU).
    let cuda = env.status(&file, &["--device", "cuda"]);
    assert_eq!(key_of(&cuda, "split"), key_of(&rows, "split"));
    let pretrain = cuda.iter().find(|r| r.0 == "pretrain").unwrap();
    assert_ne!(pretrain.1, key_of(&rows, "pretrain"));
    assert_ne!(pretrain.2, "cached");
    // `cuda:0` is `cuda`; `cuda:1` is another key.
    let cuda0 = env.status(&file, &["--set", "pretrain.device=cuda:0"]);
    assert_eq!(key_of(&cuda0, "pretrain"), pretrain.1);
    let cuda1 = env.status(&file, &["--set", "pretrain.device=cuda:1"]);
    assert_ne!(key_of(&cuda1, "pretrain"), pretrain.1);
    assert_ne!(key_of(&cuda1, "pretrain"), key_of(&rows, "pretrain"));

    // `show` says where a node computed.
    let show = env.ok(&["show", "pretrain"]);
    assert!(show.stdout.contains("  device    cpu\n"), "{}", show.stdout);
    let show = env.ok(&["show", "split"]);
    assert!(!show.stdout.contains("  device    "), "{}", show.stdout);
}

#[test]
fn bad_device_values_are_reported_where_they_are_written() {
    let env = Env::new();
    let file = env.write(
        "p.toml",
        &recipe("").replace(
            "kind = \"finetune\"\n",
            "kind = \"finetune\"\ndevice = \"gpu\"\n",
        ),
    );
    let out = env.run(&["validate", &file]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stderr
            .contains("p.toml:25:10: nodes.finetune.device: expected"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("expected \"cpu\", \"cuda\" or \"cuda:N\""),
        "{}",
        out.stderr
    );

    let good = env.write("good.toml", &recipe(""));
    let out = env.run(&["validate", &good, "--set", "defaults.eval.device=cuda:x"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("\"cuda:x\""), "{}", out.stderr);
    let out = env.run(&["validate", &good, "--set", "split.device=cuda"]);
    assert_eq!(out.code, 1, "split takes no device: {}", out.stdout);
    assert!(
        out.stderr.contains("unknown key `device` in [nodes.split]"),
        "{}",
        out.stderr
    );
    let out = env.run(&["run", &good, "--device", "gpu0"]);
    assert_eq!(out.code, 2, "a clap usage error: {}", out.stderr);
    assert!(out.stderr.contains("\"cuda:N\""), "{}", out.stderr);
    assert!(!env.dir.path().join("store").exists() || out.stdout.is_empty());
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_in_a_build_without_the_feature_says_how_to_build_it() {
    let env = Env::new();
    let file = env.write("p.toml", &recipe(""));
    let out = env.run(&["run", &file, "--device", "cuda", "--until", "pretrain"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("pretrain"),
        "names the node: {}",
        out.stderr
    );
    assert!(
        out.stderr.contains("built without the `cuda` feature"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("cargo build --release --features cuda"),
        "{}",
        out.stderr
    );
    // The dataset ran; nothing was recorded for the CUDA node.
    assert!(out.stdout.contains("1 failed"), "{}", out.stdout);

    // `audit --rerun-on cuda` of a node recorded on the CPU: says which devices, and why it fails.
    env.ok(&["run", &file, "--until", "supervised"]);
    let out = env.run(&[
        "audit",
        &file,
        "--rerun",
        "supervised",
        "--rerun-on",
        "cuda",
    ]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains(
            "FAIL  rerun supervised: rerun on cuda (recorded on cpu; metrics compared within \
             0.02): device = \"cuda\" needs a semiflow built with CUDA support"
        ),
        "{}",
        out.stdout
    );
}
