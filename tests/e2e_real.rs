//! End to end on real data: the `semiflow` binary runs the real stage kinds (no toy kinds) on the
//! 300 + 100 CIFAR-10 JPEGs committed under `tests/data/cifar10-tiny`, with networks small enough
//! that every test here takes seconds: caching, selective reruns, audit, kill -9 resume, a
//! non-finite loss and a missing dataset root.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

mod polling;
use polling::wait_for;

mod real_support;
use real_support::Recipe;

/// The committed images (absolute, so the pipeline file can live in a temp dir).
fn data_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cifar10-tiny")
}

/// The whole recipe at toy size: dataset → split (3 labels per class) → pretrain → finetune and
/// supervised baseline → distill → eval of the three classifiers.
fn recipe(root: &Path) -> String {
    Recipe {
        knn_monitor: true,
        supervised: true,
        ..Recipe::cifar("e2e-real", root)
    }
    .toml()
}

/// dataset → pretrain only, `epochs` long, checkpointing every epoch.
fn pretrain_only(root: &Path, epochs: usize) -> String {
    format!(
        r#"
[pipeline]
name = "e2e-pretrain"
seed = 7

[datasets.cifar]
format = "image-folder"
root = "{root}"

[nodes.pretrain]
kind = "pretrain"
data = "cifar"
model = {{ depth = 10, width = 0.125 }}
epochs = {epochs}
batch_size = 64
checkpoint_every = 1
"#,
        root = root.display()
    )
}

struct Env {
    dir: tempfile::TempDir,
    store: PathBuf,
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// The last stdout line, which must be the exact summary line.
    fn summary(&self) -> &str {
        self.stdout
            .lines()
            .last()
            .unwrap_or_else(|| panic!("no output; stderr:\n{}", self.stderr))
    }
}

fn finish(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        Env { dir, store }
    }

    fn write(&self, name: &str, text: &str) -> String {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_string()
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_semiflow"));
        c.args(args)
            .arg("--store")
            .arg(&self.store)
            .env_remove("SEMIFLOW_STORE")
            .env_remove("RUST_LOG");
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        finish(self.cmd(args).output().unwrap())
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let r = self.run(args).ok();
        serde_json::from_str(&r.stdout)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}):\n{}", r.stdout))
    }

    /// `show NODE --json`: the node's latest provenance record.
    fn record(&self, node: &str) -> serde_json::Value {
        self.json(&["show", node, "--json"])
    }

    /// Node name → state from `status --json`.
    fn states(&self, pipeline: &str, extra: &[&str]) -> Vec<(String, String)> {
        let mut args = vec!["status", pipeline, "--json"];
        args.extend_from_slice(extra);
        let rows = self.json(&args);
        let mut v: Vec<(String, String)> = rows
            .as_array()
            .expect("status --json prints an array")
            .iter()
            .map(|r| {
                (
                    r["node"].as_str().unwrap().to_string(),
                    r["state"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        v.sort();
        v
    }
}

fn will_run(states: &[(String, String)]) -> Vec<&str> {
    states
        .iter()
        .filter(|(_, s)| s != "cached")
        .map(|(n, _)| n.as_str())
        .collect()
}

#[test]
fn full_recipe_runs_caches_reruns_what_changed_and_audits() {
    let env = Env::new();
    let p = env.write("recipe.toml", &recipe(&data_root()));

    let first = env.run(&["run", &p]).ok();
    assert_eq!(
        first.summary(),
        "semiflow: 7 nodes: 7 ran, 0 cached, 0 failed"
    );

    let eval = env.record("eval");
    let metrics = eval["metrics"].as_object().expect("eval metrics");
    for model in 0..3 {
        for m in ["top1", "top5"] {
            let key = format!("model{model}.{m}");
            let v = metrics
                .get(&key)
                .and_then(|v| v.as_f64())
                .unwrap_or_else(|| panic!("eval has no metric {key}: {metrics:?}"));
            assert!((0.0..=1.0).contains(&v), "{key} = {v}");
        }
    }
    // The summary table shows them too.
    assert!(first.stdout.contains("model0.top1"), "{}", first.stdout);
    // The pretrain kNN monitor: one value per epoch, plotted by the report.
    let knn = &env.record("pretrain")["series"]["knn_top1"];
    assert_eq!(knn.as_array().map(|a| a.len()), Some(1), "{knn}");
    let out = env.dir.path().join("report");
    env.run(&["report", &p, "--out", out.to_str().unwrap()])
        .ok();
    let svg = std::fs::read_to_string(out.join("knn_top1-pretrain.svg")).unwrap();
    assert!(
        svg.contains("<polyline") || svg.contains("<circle"),
        "{svg}"
    );

    let again = env.run(&["run", &p]).ok();
    assert_eq!(
        again.summary(),
        "semiflow: 7 nodes: 0 ran, 7 cached, 0 failed"
    );

    // A pretrain change invalidates pretrain and everything downstream of it, nothing else.
    let set = ["--set", "pretrain.epochs=2"];
    let states = env.states(&p, &set);
    assert_eq!(
        will_run(&states),
        ["distill", "eval", "finetune", "pretrain"],
        "{states:?}"
    );
    let split_before = env.record("split")["artifact"].clone();
    let rerun = env.run(&["run", &p, set[0], set[1]]).ok();
    assert_eq!(
        rerun.summary(),
        "semiflow: 7 nodes: 4 ran, 3 cached, 0 failed"
    );
    assert_eq!(env.record("split")["artifact"], split_before);
    assert_eq!(
        env.record("pretrain")["params"]["epochs"],
        serde_json::json!(2)
    );
    let after = env.states(&p, &set);
    assert!(will_run(&after).is_empty(), "{after:?}");

    env.run(&["audit", &p, "--verify"]).ok();
}

#[test]
fn kill_9_during_pretrain_resumes_to_the_uninterrupted_output() {
    const EPOCHS: usize = 5;
    let reference = Env::new();
    let p = reference.write("p.toml", &pretrain_only(&data_root(), EPOCHS));
    reference.run(&["run", &p]).ok();
    let want = reference.record("pretrain")["artifact"].clone();
    assert!(want.is_string(), "{want}");

    let env = Env::new();
    let p = env.write("p.toml", &pretrain_only(&data_root(), EPOCHS));
    let mut child = env
        .cmd(&["run", &p])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The resume dir of the running pretrain node holds `checkpoint.safetensors` once its first
    // epoch is done (written to a temp file and renamed, so it is complete when it appears).
    let resume = env.store.join("resume");
    wait_for(
        "a pretrain epoch checkpoint",
        Duration::from_secs(120),
        || {
            std::fs::read_dir(&resume).ok().is_some_and(|d| {
                d.flatten()
                    .any(|e| e.path().join("checkpoint.safetensors").exists())
            })
        },
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let states = env.states(&p, &[]);
    assert!(
        states.contains(&("pretrain".to_string(), "will-run".to_string())),
        "{states:?}"
    );

    let r = env.run(&["run", &p]).ok();
    assert_eq!(r.summary(), "semiflow: 2 nodes: 1 ran, 1 cached, 0 failed");
    let log = env.run(&["log", "pretrain"]).ok().stdout;
    assert!(
        log.contains("resuming from checkpoint"),
        "the rerun did not resume:\n{log}"
    );
    assert_eq!(env.record("pretrain")["artifact"], want);
    assert_eq!(
        env.record("pretrain")["series"]["loss"],
        reference.record("pretrain")["series"]["loss"]
    );
}

#[test]
fn non_finite_loss_fails_the_node_and_stores_nothing() {
    let env = Env::new();
    let p = env.write("p.toml", &pretrain_only(&data_root(), 2));
    let r = env.run(&["run", &p, "--set", "pretrain.lr=1e38"]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert_eq!(r.summary(), "semiflow: 2 nodes: 1 ran, 0 cached, 1 failed");
    let all = format!("{}{}", r.stdout, r.stderr);
    let msg = all
        .lines()
        .find(|l| l.contains("non-finite"))
        .unwrap_or_else(|| panic!("no non-finite message:\n{all}"));
    assert!(
        msg.contains("epoch ") && msg.contains("step "),
        "no epoch/step in {msg:?}"
    );
    let states = env.states(&p, &["--set", "pretrain.lr=1e38"]);
    assert!(
        states.contains(&("pretrain".to_string(), "will-run".to_string())),
        "{states:?}"
    );
    let show = env.run(&["show", "pretrain", "--json"]);
    assert_ne!(show.code, 0, "a record was stored:\n{}", show.stdout);
}

#[test]
fn missing_dataset_root_names_the_key_and_the_path() {
    let env = Env::new();
    let missing = env.dir.path().join("no-such-cifar");
    let p = env.write("p.toml", &recipe(&missing));
    let r = env.run(&["run", &p]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(
        all.contains("datasets.cifar.root"),
        "the key is not named:\n{all}"
    );
    assert!(
        all.contains(missing.to_str().unwrap()),
        "the path is not named:\n{all}"
    );
}

/// A label-fraction sweep with a validation holdout, a 1%-style variant that is not swept, and
/// evals on test and on the holdout: the report puts the variant in its fraction's column and
/// keeps validation numbers out of the test table.
#[test]
fn validation_holdout_eval_and_report_tables() {
    let env = Env::new();
    let p = env.write(
        "val.toml",
        &format!(
            r#"
[pipeline]
name = "e2e-val"
seed = 0

[datasets.cifar]
format = "image-folder"
root = "{root}"

[sweep]
label_fraction = [0.1, 0.2]

[nodes.split]
kind = "split"
data = "cifar"
fraction = "${{sweep.label_fraction}}"
holdout = 0.2

[nodes.split_low]
kind = "split"
data = "cifar"
fraction = 0.1
holdout = 0.2

[nodes.sup]
kind = "supervised"
labels = "split"
data = "cifar"
model = {{ depth = 10, width = 0.125 }}
epochs = 1
batch_size = 32

[nodes.sup_low]
kind = "supervised"
labels = "split_low"
data = "cifar"
model = {{ depth = 10, width = 0.125 }}
epochs = 1
batch_size = 32

[nodes.eval]
kind = "eval"
data = "cifar"
models = ["sup", "sup_low"]

[nodes.eval_val]
kind = "eval"
data = "cifar"
models = ["sup"]
split = "val"
holdout = "split"
"#,
            root = data_root().display()
        ),
    );
    let first = env.run(&["run", &p]).ok();
    // The unswept split and its supervised model have the keys of their label_fraction=0.1 twins:
    // each is built once, and the twin waits for it and finds it cached.
    assert_eq!(
        first.summary(),
        "semiflow: 11 nodes: 9 ran, 2 cached, 0 failed"
    );
    assert!(
        first.stderr.matches("sup_low: running").count() == 0,
        "{}",
        first.stderr
    );
    // The unswept split has the same key as split[label_fraction=0.1]: stored once.
    assert_eq!(
        env.record("split_low")["key"],
        env.record("split[label_fraction=0.1]")["key"]
    );
    let val = env.record("eval_val[label_fraction=0.1]");
    // 300 train images, 30 per class: a 20% holdout is 6 per class.
    assert_eq!(val["details"]["n"], 60, "{val}");
    assert_eq!(val["details"]["split"], "val");
    let out = env.dir.path().join("report");
    env.run(&["report", &p, "--out", out.to_str().unwrap()])
        .ok();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    let test_table = md
        .split("Top-1 accuracy (test)")
        .nth(1)
        .and_then(|t| t.split("\n\n").nth(1))
        .unwrap_or_else(|| panic!("no test table:\n{md}"));
    let sup_low = test_table
        .lines()
        .find(|l| l.starts_with("| sup_low |"))
        .unwrap_or_else(|| panic!("no sup_low row:\n{md}"));
    assert!(sup_low.ends_with("% | - |"), "{sup_low}");
    let val_table = md
        .split("Top-1 accuracy on the validation holdout")
        .nth(1)
        .and_then(|t| t.split("\n\n").nth(1))
        .unwrap_or_else(|| panic!("no validation table:\n{md}"));
    assert!(val_table.contains("| sup |"), "{md}");
    assert!(!val_table.contains("| sup_low |"), "{md}");
    // A val eval without a holdout reference is refused with what to set.
    let bad = env.write(
        "bad.toml",
        &std::fs::read_to_string(&p)
            .unwrap()
            .replace("holdout = \"split\"\n", ""),
    );
    let r = env.run(&["run", &bad]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("holdout"), "{}", r.stderr);
}
