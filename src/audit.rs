//! `semiflow audit`: are the pipeline's records intact, and are its stages reproducible?
//!
//! Blob check: every blob of the latest record of every node of the pipeline must be present with its
//! recorded size (and, with `--verify`, hash to its name). A blob that fails re-hashing is moved to
//! `quarantine/`, so the next `run` rebuilds it instead of trusting it.
//!
//! Rerun: the node's stage is executed again in a scratch directory outside the store, on exactly the
//! input artifacts its record names, and its output files are compared bit for bit with the
//! record's; with `--tolerance X`, metrics within X of the recorded ones also pass.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use semiflow_stages::api::NoProgress;

use crate::exec::{invoke_stage, kind_spec, materialize_inputs};
use crate::key::short;
use crate::plan::Plan;
use crate::store::blobs::{collect_files, hash_file};
use crate::store::{BlobProblem, Miss, Store};

/// Options of `semiflow audit`.
#[derive(Debug, Clone, Default)]
pub struct AuditOptions {
    pub verify: bool,
    pub rerun: Vec<String>,
    pub tolerance: Option<f64>,
}

/// Returns whether everything passed.
pub fn audit(store: &Store, plan: &Plan, opts: &AuditOptions) -> Result<bool> {
    let mut ok = true;
    // The records this file's current keys name, not the latest under each node name (another
    // pipeline in the same store may have built its own `pretrain` since).
    let current = crate::explain::current_records(store, plan)?;
    for (node, rec) in plan.nodes.iter().zip(current) {
        let Some(rec) = rec else {
            println!(
                "skip  {}: not built with its current key (see `semiflow status`)",
                node.name
            );
            continue;
        };
        let problems = store.record_problems(&rec, opts.verify);
        if problems.is_empty() {
            println!(
                "ok    {}: {} blobs{}",
                node.name,
                rec.files.len() + 1,
                if opts.verify { " verified" } else { "" }
            );
            continue;
        }
        ok = false;
        for p in problems {
            println!("FAIL  {}: {p}", node.name);
            if let Miss::Blob {
                hash,
                problem: BlobProblem::Corrupt { .. },
                ..
            } = &p
            {
                let moved = store.quarantine(hash)?;
                println!(
                    "      blob {} moved to {}; the next run rebuilds {}",
                    store.blobs.path(hash).display(),
                    moved.display(),
                    node.name
                );
            }
        }
    }
    for target in &opts.rerun {
        let matched: Vec<_> = plan
            .nodes
            .iter()
            .filter(|n| n.name == *target || n.base == *target)
            .collect();
        if matched.is_empty() {
            bail!("--rerun {target}: no such node in {}", plan.file.display());
        }
        for node in matched {
            match rerun(store, plan, &node.name, opts.tolerance) {
                Ok(true) => {}
                Ok(false) => ok = false,
                Err(e) => {
                    println!("FAIL  rerun {}: {e:#}", node.name);
                    ok = false;
                }
            }
        }
    }
    Ok(ok)
}

fn rerun(store: &Store, plan: &Plan, name: &str, tolerance: Option<f64>) -> Result<bool> {
    let idx = plan.index_of(name).expect("matched above");
    let node = &plan.nodes[idx];
    let rec = crate::explain::current_records(store, plan)?
        .swap_remove(idx)
        .with_context(|| format!("{name} is not built with its current key; run it first"))?;
    let spec = kind_spec(&rec.kind)?;
    let scratch = std::env::temp_dir().join(format!(
        "semiflow-audit-{}-{}",
        std::process::id(),
        &rec.key[..12]
    ));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let result = (|| {
        let inputs = materialize_inputs(&store.blobs, &rec.inputs, &scratch.join("in"))?;
        let (out, resume) = (scratch.join("out"), scratch.join("resume"));
        std::fs::create_dir_all(&out)?;
        std::fs::create_dir_all(&resume)?;
        let mut node = node.clone();
        node.params = rec.params.clone();
        node.seed = rec.provenance.seed;
        let output = invoke_stage(spec, &node, &inputs, &out, &resume, &NoProgress)?;
        let mut files = Vec::new();
        collect_files(&out, &out, &mut files)?;
        let mut fresh = BTreeMap::new();
        for (rel, path) in files {
            fresh.insert(rel, hash_file(&path)?.0);
        }
        let recorded: BTreeMap<String, String> = rec
            .files
            .iter()
            .map(|(n, e)| (n.clone(), e.hash.clone()))
            .collect();
        if fresh == recorded {
            println!(
                "ok    rerun {name}: {} output files bit-identical",
                fresh.len()
            );
            return Ok(true);
        }
        let differing: Vec<String> = recorded
            .keys()
            .chain(fresh.keys())
            .filter(|f| recorded.get(*f) != fresh.get(*f))
            .map(|f| match (recorded.get(f), fresh.get(f)) {
                (Some(a), Some(b)) => format!("{f} ({} → {})", short(a), short(b)),
                (Some(_), None) => format!("{f} (not produced)"),
                _ => format!("{f} (new)"),
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let Some(tol) = tolerance else {
            println!(
                "FAIL  rerun {name}: outputs differ: {}",
                differing.join(", ")
            );
            return Ok(false);
        };
        let mut worst = 0.0f64;
        let mut missing = Vec::new();
        for (k, v) in &rec.metrics {
            match output.metrics.get(k) {
                Some(w) => worst = worst.max((v - w).abs()),
                None => missing.push(k.clone()),
            }
        }
        if missing.is_empty() && worst <= tol {
            println!(
                "ok    rerun {name}: outputs differ ({}) but metrics agree within {tol} (max diff {worst:.3e})",
                differing.join(", ")
            );
            Ok(true)
        } else {
            println!(
                "FAIL  rerun {name}: metrics differ by up to {worst:.3e} (tolerance {tol}){}",
                if missing.is_empty() {
                    String::new()
                } else {
                    format!("; missing: {}", missing.join(", "))
                }
            );
            Ok(false)
        }
    })();
    let _ = std::fs::remove_dir_all(&scratch);
    result
}
