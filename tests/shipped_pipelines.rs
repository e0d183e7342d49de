//! The pipeline files in `pipelines/` stay valid against the real stage kinds: their DAG shape, the
//! 1%-only variants reading the unswept split, the validation evals naming their holdout, and the
//! distillation students starting from pretrained checkpoints of their own size.
//! Dataset roots come from the environment variables the files read, pointed at an empty
//! directory (planning needs the root to exist, not to hold data).

use std::path::Path;
use std::process::Command;

fn semiflow(args: &[&str], root: &Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_semiflow"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CIFAR10_ROOT", root)
        .env("FASHION_MNIST_ROOT", root)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "semiflow {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `semiflow validate FILE` accepts the file and plans at least one node. (No exact node counts:
/// an ordinary edit of a pipeline must not break CI; the DAG checks below pin what matters.)
fn assert_validates(file: &str, root: &Path) {
    let out = semiflow(&["validate", file], root);
    let count = out
        .split("ok (")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse::<usize>().ok());
    assert!(count.is_some_and(|n| n > 0), "{file}: {out}");
}

/// `semiflow dag FILE` names every one of `needles` (node names, edge lists).
fn assert_dag_has(file: &str, root: &Path, needles: &[&str]) {
    let dag = semiflow(&["dag", file], root);
    for needle in needles {
        assert!(dag.contains(needle), "{file}: no `{needle}` in\n{dag}");
    }
}

#[test]
fn shipped_pipelines_validate_with_the_expected_shape() {
    let root = tempfile::tempdir().unwrap();
    for file in [
        "pipelines/quickstart.toml",
        "pipelines/cifar10.toml",
        "pipelines/fashion-mnist.toml",
    ] {
        assert_validates(file, root.path());
        assert_dag_has(file, root.path(), &["split", "eval_val"]);
    }
    assert_dag_has(
        "pipelines/cifar10.toml",
        root.path(),
        &[
            "from: pretrain; labels: split_1pct",
            "from: pretrain_memory; labels: split_1pct",
            "holdout: split_1pct; models: finetune_layer0, finetune_memory",
            "init: finetune[label_fraction=0.01]; teacher: finetune[label_fraction=0.01]",
            "init: pretrain_small; teacher: finetune[label_fraction=0.1]",
            "from: pretrain_small; labels: split[label_fraction=0.01]",
        ],
    );
    // Fashion-MNIST sweeps three training seeds of the fine-tunes and baselines; the distillation
    // teacher stays the single seed-0 1% fine-tune.
    assert_dag_has(
        "pipelines/fashion-mnist.toml",
        root.path(),
        &[
            "supervised_small[label_fraction=0.1,seed=2]",
            "eval_val[label_fraction=0.01,seed=1]",
            "init: pretrain; teacher: finetune_1pct",
        ],
    );
    // The long CIFAR-10 run: a 10-epoch encoder of its own, cifar10.toml's small encoder and
    // splits (same keys), and the self-distilled student starting as its teacher.
    assert_validates("pipelines/cifar10-long.toml", root.path());
    assert_dag_has(
        "pipelines/cifar10-long.toml",
        root.path(),
        &[
            "split",
            "eval_val",
            "from: pretrain; labels: split_1pct",
            "init: pretrain_small; teacher: finetune[label_fraction=0.1]",
            "init: finetune[label_fraction=0.01]; teacher: finetune[label_fraction=0.01]",
        ],
    );
    // CIFAR-10's extra seeds: the test-set eval of every (label fraction, seed) pair, reading the
    // same pretrained encoders and splits as cifar10.toml.
    assert_validates("pipelines/cifar10-seeds.toml", root.path());
    assert_dag_has(
        "pipelines/cifar10-seeds.toml",
        root.path(),
        &[
            "finetune_small[label_fraction=0.1,seed=2]",
            "supervised[label_fraction=0.01,seed=1]",
            "from: pretrain; labels: split[label_fraction=0.01]",
            "eval[label_fraction=0.1,seed=2]",
        ],
    );
}

/// The validation sweeps behind the shipped pipelines' hyperparameters stay runnable, and each
/// scores its models on the validation holdout, never on test.
#[test]
fn tuning_sweeps_validate_and_evaluate_on_validation_only() {
    let root = tempfile::tempdir().unwrap();
    let sweeps = [
        "pipelines/tuning/cifar10-pretrain.toml",
        "pipelines/tuning/cifar10-lr-1pct.toml",
        "pipelines/tuning/cifar10-lr-10pct.toml",
        "pipelines/tuning/cifar10-sgd.toml",
        "pipelines/tuning/cifar10-finetune-final.toml",
        "pipelines/tuning/cifar10-distill.toml",
        "pipelines/tuning/cifar10-distill-view.toml",
        "pipelines/tuning/cifar10-distill-epochs.toml",
        "pipelines/tuning/cifar10-distill-start.toml",
        "pipelines/tuning/cifar10-long-finetune.toml",
        "pipelines/tuning/quickstart-lr.toml",
        "pipelines/tuning/quickstart-distill.toml",
        "pipelines/tuning/fashion-mnist-lr.toml",
    ];
    // A sweep added to the directory is checked too, not silently skipped.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/tuning");
    let mut on_disk: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            format!(
                "pipelines/tuning/{}",
                e.unwrap().file_name().to_string_lossy()
            )
        })
        .collect();
    on_disk.sort();
    let mut listed: Vec<String> = sweeps.iter().map(|f| f.to_string()).collect();
    listed.sort();
    assert_eq!(on_disk, listed, "list every tuning sweep here");
    for file in sweeps {
        assert_validates(file, root.path());
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file)).unwrap();
        let evals = text.matches("kind = \"eval\"").count();
        let on_val = text.matches("split = \"val\"").count();
        assert_eq!(
            evals, on_val,
            "{file}: every eval node must score the validation holdout"
        );
    }
}
