//! `semiflow audit`: are the pipeline's records intact, and are its stages reproducible?
//!
//! Blob check: every blob of the latest record of every node of the pipeline must be present with its
//! recorded size (and, with `--verify`, hash to its name). A blob that fails re-hashing is moved to
//! `quarantine/`, so the next `run` rebuilds it instead of trusting it.
//!
//! Rerun: the node's stage is executed again in a scratch directory outside the store, on exactly the
//! input artifacts its record names, and its output files are compared bit for bit with the
//! record's; with `--tolerance X`, metrics within X of the recorded ones also pass. With
//! `--rerun-on DEVICE` a node recorded on another device (`cpu`, `cuda`) reruns there: its outputs
//! cannot be bit-identical, so its metrics are compared within the tolerance (by default
//! [`CROSS_DEVICE_TOLERANCE`]) and the line says so.

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
    /// Rerun on this device (`cpu`, `cuda`, `cuda:N`) instead of the recorded one; outputs then
    /// cannot be bit-identical, so metrics are compared within the tolerance
    /// ([`CROSS_DEVICE_TOLERANCE`] unless given).
    pub rerun_on: Option<String>,
}

/// The metric tolerance of a rerun on another device than the record's, when none is given.
pub const CROSS_DEVICE_TOLERANCE: f64 = 0.02;

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
            match rerun(store, plan, &node.name, opts) {
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

fn rerun(store: &Store, plan: &Plan, name: &str, opts: &AuditOptions) -> Result<bool> {
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
        // The device is a parameter ("cpu" when absent); `--rerun-on` swaps it.
        let recorded_on = rec
            .params
            .get("device")
            .and_then(|d| d.as_str())
            .unwrap_or("cpu")
            .to_string();
        let mut tolerance = opts.tolerance;
        let mut on = String::new();
        if let Some(target) = &opts.rerun_on {
            if semiflow_stages::device::DEVICE_KINDS.contains(&rec.kind.as_str())
                && *target != recorded_on
            {
                if let Some(params) = node.params.as_object_mut() {
                    if target == "cpu" {
                        params.remove("device");
                    } else {
                        params.insert("device".into(), target.as_str().into());
                    }
                }
                let tol = *tolerance.get_or_insert(CROSS_DEVICE_TOLERANCE);
                on = format!(
                    " on {target} (recorded on {recorded_on}; metrics compared within {tol})"
                );
            }
        }
        let output = invoke_stage(spec, &node, &inputs, &out, &resume, &NoProgress);
        let output = if on.is_empty() {
            output?
        } else {
            output.with_context(|| format!("rerun{on}"))?
        };
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
                "ok    rerun {name}{on}: {} output files bit-identical",
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
        explain_numerics(&rec);
        let Some(tol) = tolerance else {
            println!(
                "FAIL  rerun {name}{on}: outputs differ: {}",
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
                "ok    rerun {name}{on}: outputs differ ({}) but metrics agree within {tol} (max diff {worst:.3e})",
                differing.join(", ")
            );
            Ok(true)
        } else {
            println!(
                "FAIL  rerun {name}{on}: metrics differ by up to {worst:.3e} (tolerance {tol}){}",
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

/// After a bit mismatch: what differs between the recorded run's numerics and this one's, and
/// whether the numerics profile expected equal bits.
fn explain_numerics(rec: &crate::store::Record) {
    use semiflow_stages::numerics;
    let now = numerics::current(crate::exec::thread_count());
    let recorded = rec.provenance.numerics.as_ref();
    match recorded {
        Some(r) => {
            let changes = numerics::describe_changes(r, &now);
            println!(
                "      recorded: {} v{} on {} [{}], {} threads",
                r.profile,
                r.version,
                r.cpu,
                r.isa.join(" "),
                r.threads
            );
            println!(
                "      now:      {} v{} on {} [{}], {} threads",
                now.profile,
                now.version,
                now.cpu,
                now.isa.join(" "),
                now.threads
            );
            if changes.is_empty() {
                println!("      (same CPU, ISA, threads and profile)");
            }
        }
        None => println!(
            "      recorded: no numerics facts (made by semiflow before they were recorded, threads {})",
            rec.provenance.threads
        ),
    }
    if rec.provenance.semiflow_version != env!("CARGO_PKG_VERSION")
        || rec.provenance.candle_version != env!("SEMIFLOW_CANDLE_VERSION")
    {
        println!(
            "      versions: semiflow {} / candle {} then, {} / {} now",
            rec.provenance.semiflow_version,
            rec.provenance.candle_version,
            env!("CARGO_PKG_VERSION"),
            env!("SEMIFLOW_CANDLE_VERSION")
        );
    }
    let why = numerics::explain_difference(recorded, &now);
    if why.is_empty() {
        println!(
            "      the numerics profile guarantees equal bits here: this difference is NOT expected \
             (a nondeterministic stage, or a changed input); please report it"
        );
    } else {
        for w in why {
            println!("      expected to differ: {w}");
        }
        println!("      compare across profiles with --tolerance X (absolute, on the metrics)");
    }
}

/// `audit --claims`: check the pipeline's claims now and compare with the verdicts in
/// `report_dir/claims.json` (written by `semiflow report`). False if a claim that held there no
/// longer holds.
pub fn claims(store: &Store, plan: &Plan, report_dir: &std::path::Path) -> Result<bool> {
    use crate::claims::{check, regressions, Check};
    let path = report_dir.join("claims.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {}: write the report first (`semiflow report FILE --out {}`)",
            path.display(),
            report_dir.display()
        )
    })?;
    let before: Vec<Check> = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a claims file written by `semiflow report`",
            path.display()
        )
    })?;
    let now = check(&plan.claims, &crate::report::eval_rows(store, plan)?);
    for c in &now {
        let point = if c.point.is_empty() {
            String::new()
        } else {
            format!(
                " at {}",
                c.point
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        let diff = c.diff.map(|d| format!(" ({d:+.1} pt)")).unwrap_or_default();
        println!("claim {}{point}: {}{diff}", c.claim, c.verdict);
    }
    let lost = regressions(&before, &now);
    for (b, n) in &lost {
        println!(
            "FAIL  claim {} held in {} ({:+.1} pt) and now {}",
            b.claim,
            path.display(),
            b.diff.unwrap_or(f64::NAN),
            n.map_or("is not checked".to_string(), |n| format!(
                "is {}",
                n.verdict
            ))
        );
    }
    Ok(lost.is_empty())
}
