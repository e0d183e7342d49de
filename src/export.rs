//! `semiflow export NODE|KEY --format torchvision|safetensors --out FILE`: a trained model as a
//! safetensors file other tools load, plus a JSON sidecar (`FILE` with the extension `.json`)
//! saying what it is: architecture in PyTorch's terms, input scaling, class names, origin.
//! The sidecar also travels inside the file's header, so `init = { file = FILE, … }` rebuilds the
//! exact architecture. The naming is documented in `semiflow_stages::model::torchvision`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use semiflow_stages::data::DatasetMeta;
use semiflow_stages::model::torchvision::{
    export_tensors, write_safetensors, ExportSidecar, Naming, Source,
};
use semiflow_stages::model::{Network, SIDECAR_FILE, WEIGHTS_FILE};

use crate::store::{Record, Store};

/// What `export` wrote.
#[derive(Debug)]
pub struct Exported {
    pub file: PathBuf,
    pub sidecar: PathBuf,
    pub tensors: usize,
    pub record: Record,
}

/// The sidecar path of an export to `out`: the same name with the extension `.json`.
pub fn sidecar_path(out: &Path) -> PathBuf {
    out.with_extension("json")
}

/// Export the model of node or key `target` to `out`.
pub fn export(store: &Store, target: &str, naming: Naming, out: &Path) -> Result<Exported> {
    let rec = crate::show::find(store, target)?;
    if !rec.files.contains_key(WEIGHTS_FILE) || !rec.files.contains_key(SIDECAR_FILE) {
        bail!(
            "{} (kind {}) holds no model (no {WEIGHTS_FILE}); export a pretrain, finetune, \
             supervised or distill node",
            rec.node,
            rec.kind
        );
    }
    let sidecar = sidecar_path(out);
    if sidecar == out {
        bail!(
            "--out {}: give the file a .safetensors extension (the sidecar goes to the same name \
             with .json)",
            out.display()
        );
    }
    let scratch = store.scratch_dir("export")?;
    let result = (|| -> Result<usize> {
        let model_dir = scratch.join("model");
        let manifest = store.blobs.read_manifest(&rec.artifact)?;
        store.blobs.materialize(&manifest, &model_dir)?;
        let net = Network::load(&model_dir, &Device::Cpu)
            .with_context(|| format!("loading the model of {}", rec.node))?;
        let classes = dataset_classes(store, &rec);
        let source = Source {
            node: rec.node.clone(),
            kind: rec.kind.clone(),
            key: rec.key.clone(),
            artifact: rec.artifact.clone(),
            semiflow_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        let meta = ExportSidecar::of(&net, naming, classes, Some(source));
        let tensors = export_tensors(&net, naming)
            .with_context(|| format!("exporting {} with torchvision names", rec.node))?;
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        write_safetensors(out, &tensors, Some(&meta))?;
        std::fs::write(&sidecar, serde_json::to_string_pretty(&meta)? + "\n")
            .with_context(|| format!("writing {}", sidecar.display()))?;
        Ok(tensors.len())
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(Exported {
        file: out.to_path_buf(),
        sidecar,
        tensors: result?,
        record: rec,
    })
}

/// The class names of the dataset the node trained on (its `data` input), if it has one.
fn dataset_classes(store: &Store, rec: &Record) -> Option<Vec<String>> {
    let data = rec.inputs.get("data")?.first()?;
    let manifest = store.blobs.read_manifest(&data.artifact).ok()?;
    let entry = manifest.files.get("meta.json")?;
    let text = std::fs::read_to_string(store.blobs.path(&entry.hash)).ok()?;
    let meta: DatasetMeta = serde_json::from_str(&text).ok()?;
    Some(meta.classes)
}
