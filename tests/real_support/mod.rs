//! Shared by the tests that run the real stage kinds through the binary: the committed tiny
//! CIFAR-10 images, the toy-size SimCLRv2 recipe over them, and the binary with a clean
//! environment.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The 300 + 100 CIFAR-10 JPEGs committed under tests/data/cifar10-tiny (image-folder layout).
pub fn cifar_tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cifar10-tiny")
}

/// The `semiflow` binary `cargo test` built (with the crash points and the test kinds), with
/// none of the caller's store, fault or log settings.
pub fn semiflow() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_semiflow"));
    c.env_remove("SEMIFLOW_STORE")
        .env_remove("SEMIFLOW_FAULT")
        .env_remove("SEMIFLOW_TOY_VERSION")
        .env_remove("RUST_LOG");
    c
}

/// The whole recipe at toy size: split → pretrain → finetune (→ supervised) → distill → eval of
/// the trained models, networks small enough that it runs in seconds.
pub struct Recipe {
    pub name: &'static str,
    /// The `[datasets.NAME]` table, and NAME.
    pub dataset: String,
    pub data: &'static str,
    pub per_class: usize,
    pub width: f64,
    pub pretrain_epochs: usize,
    pub batch_size: usize,
    /// The pretraining's per-epoch kNN monitor (50 queries against 200 images, k = 20).
    pub knn_monitor: bool,
    /// A supervised baseline beside the fine-tune, evaluated between it and the distilled student.
    pub supervised: bool,
}

impl Recipe {
    /// On the tiny CIFAR-10 images (`root`, normally [`cifar_tiny`]), as dataset `cifar`.
    pub fn cifar(name: &'static str, root: &Path) -> Recipe {
        Recipe {
            name,
            dataset: format!(
                "[datasets.cifar]\nformat = \"image-folder\"\nroot = \"{}\"\n",
                root.display()
            ),
            data: "cifar",
            per_class: 3,
            width: 0.125,
            pretrain_epochs: 1,
            batch_size: 64,
            knn_monitor: false,
            supervised: false,
        }
    }

    pub fn toml(&self) -> String {
        let (data, batch, width) = (self.data, self.batch_size, self.width);
        let mut t = format!(
            "\n[pipeline]\nname = \"{}\"\nseed = 0\n\n{}\n[nodes.split]\nkind = \"split\"\ndata = \"{data}\"\nper_class = {}\n\n",
            self.name, self.dataset, self.per_class
        );
        t += &format!(
            "[nodes.pretrain]\nkind = \"pretrain\"\ndata = \"{data}\"\nmodel = {{ depth = 10, width = {width} }}\nepochs = {}\nbatch_size = {batch}\n",
            self.pretrain_epochs
        );
        if self.knn_monitor {
            t += "knn_monitor = { queries = 50, bank = 200, k = 20 }\n";
        }
        t += &format!(
            "\n[nodes.finetune]\nkind = \"finetune\"\nfrom = \"pretrain\"\nlabels = \"split\"\ndata = \"{data}\"\nepochs = 2\nbatch_size = {batch}\n\n"
        );
        if self.supervised {
            t += &format!(
                "[nodes.supervised]\nkind = \"supervised\"\nlabels = \"split\"\ndata = \"{data}\"\nmodel = {{ depth = 10, width = {width} }}\nepochs = 2\nbatch_size = {batch}\n\n"
            );
        }
        t += &format!(
            "[nodes.distill]\nkind = \"distill\"\nteacher = \"finetune\"\ndata = \"{data}\"\nepochs = 1\nbatch_size = {batch}\n\n"
        );
        let models = if self.supervised {
            "\"finetune\", \"supervised\", \"distill\""
        } else {
            "\"finetune\", \"distill\""
        };
        t += &format!("[nodes.eval]\nkind = \"eval\"\ndata = \"{data}\"\nmodels = [{models}]\n");
        t
    }
}
