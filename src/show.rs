//! `semiflow show NODE|KEY` and `semiflow log NODE`: read-only views of the index.

use anyhow::{bail, Result};

use crate::key::short;
use crate::store::{Record, Store};

/// Find a record by node name (latest), full key, or unique key prefix (≥ 6 hex digits).
pub fn find(store: &Store, target: &str) -> Result<Record> {
    if let Some(r) = store.latest_record(target)? {
        return Ok(r);
    }
    if let Some(r) = store.record(target)? {
        return Ok(r);
    }
    if target.len() >= 6 && target.bytes().all(|b| b.is_ascii_hexdigit()) {
        let hits: Vec<Record> = store
            .index
            .all_records()?
            .into_iter()
            .filter(|r| r.key.starts_with(target))
            .collect();
        match hits.len() {
            1 => return Ok(hits.into_iter().next().expect("one")),
            n if n > 1 => bail!("key prefix {target} matches {n} records; give more digits"),
            _ => {}
        }
    }
    bail!(
        "no record for `{target}` in {}: give a node name that has run, or a key (see `semiflow status FILE`)",
        store.root.display()
    )
}

/// Pretty-print a record.
pub fn print(rec: &Record) {
    let p = &rec.provenance;
    println!("node      {}", rec.node);
    println!("kind      {}", rec.kind);
    println!("key       {}", rec.key);
    println!("artifact  {}", rec.artifact);
    println!("key components:");
    for (n, v) in &rec.components {
        println!("  {n:<24} {v}");
    }
    if !rec.inputs.is_empty() {
        println!("inputs:");
        for (role, refs) in &rec.inputs {
            for r in refs {
                println!("  {role:<10} {:<28} {}", r.node, r.artifact);
            }
        }
    }
    println!("outputs:");
    for (name, e) in &rec.files {
        println!("  {name:<24} {} {:>12} bytes", e.hash, e.size);
    }
    if !rec.metrics.is_empty() {
        println!("metrics:");
        for (k, v) in &rec.metrics {
            println!("  {k:<24} {v}");
        }
    }
    for (name, s) in &rec.series {
        let tail: Vec<String> = s
            .iter()
            .rev()
            .take(5)
            .rev()
            .map(|v| format!("{v:.6}"))
            .collect();
        println!(
            "series {name}: {} points, last: {}",
            s.len(),
            tail.join(" ")
        );
    }
    println!("provenance:");
    println!("  semiflow  {} (git {})", p.semiflow_version, p.git_commit);
    println!("  candle    {}", p.candle_version);
    println!("  host      {} ({} threads)", p.host, p.threads);
    if let Some(device) = device(rec) {
        println!("  device    {device}");
    }
    println!("  seed      {}", p.seed);
    println!("  pipeline  {}", p.pipeline);
    if !p.overrides.is_empty() {
        println!("  overrides {}", p.overrides.join(" "));
    }
    if let Some(ex) = &p.executor {
        println!(
            "  executor  {ex} (job {}, partition {})",
            p.job_id.as_deref().unwrap_or("-"),
            p.partition.as_deref().unwrap_or("-")
        );
    }
    println!("  started   {}", p.started);
    println!("  duration  {:.3}s", p.duration_s);
}

/// Where a training or eval node computed: `cpu`, or the GPU its stage recorded in
/// `details.device` (`cuda:0 (NVIDIA H100 80GB HBM3)`); `None` for kinds without a device.
pub fn device(rec: &Record) -> Option<String> {
    if let Some(d) = rec.details.get("device") {
        let id = d.get("device").and_then(|v| v.as_str()).unwrap_or("?");
        return Some(match d.get("name").and_then(|v| v.as_str()) {
            Some(name) => format!("{id} ({name})"),
            None => id.to_string(),
        });
    }
    if !semiflow_stages::device::DEVICE_KINDS.contains(&rec.kind.as_str()) {
        return None;
    }
    Some(
        rec.params
            .get("device")
            .and_then(|v| v.as_str())
            .unwrap_or("cpu")
            .to_string(),
    )
}

/// The log of the latest attempt of `target` (node name or key).
pub fn log_path(store: &Store, target: &str) -> Result<std::path::PathBuf> {
    let key = match store.last_attempt(target)? {
        Some(k) => k,
        None => find(store, target)?.key,
    };
    let path = store.log_path(&key);
    if !path.exists() && slurm_logs(&path).is_empty() {
        bail!(
            "no log for {target} (key {}) in {}",
            short(&key),
            store.root.display()
        );
    }
    Ok(path)
}

/// The Slurm output files next to a node log (`<key>.slurm-<job>.out`), by job id.
pub fn slurm_logs(node_log: &std::path::Path) -> Vec<std::path::PathBuf> {
    let (Some(dir), Some(stem)) = (node_log.parent(), node_log.file_stem()) else {
        return Vec::new();
    };
    let prefix = format!("{}.slurm-", stem.to_string_lossy());
    let mut out: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name
                .strip_prefix(&prefix)?
                .strip_suffix(".out")?
                .parse()
                .ok()?;
            Some((id, e.path()))
        })
        .collect();
    out.sort();
    out.into_iter().map(|(_, p)| p).collect()
}
