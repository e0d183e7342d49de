//! `semiflow gc`: remove what no record needs.
//!
//! Invariant: a blob named by any record (its manifest or any of its files) is never removed, so
//! every record stays a valid cache hit. Removed: unreferenced objects, everything under `tmp/`
//! (the store lock guarantees no run is live), `quarantine/`, `jobs/` (Slurm task dirs; gc refuses
//! to run while a job is journaled there), resume checkpoints of interrupted runs
//! (so an interrupted node restarts from epoch 0 after gc), and logs of keys no record or latest
//! attempt refers to.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use anyhow::Result;

use crate::store::Store;

#[derive(Debug, Default)]
pub struct GcReport {
    pub files: usize,
    pub bytes: u64,
}

pub fn gc(store: &Store, dry_run: bool) -> Result<GcReport> {
    // Jobs a killed Slurm coordinator left running write objects and checkpoints that no record
    // names yet.
    let journaled = crate::slurm::journals(&store.root);
    if !journaled.is_empty() {
        anyhow::bail!(
            "{} Slurm jobs are journaled in {} (a coordinator stopped while they ran): run the \
             pipeline again to adopt them, or scancel them and remove that directory, before gc",
            journaled.len(),
            crate::slurm::jobs_dir(&store.root).display()
        );
    }
    let records = store.index.all_records()?;
    let mut live: BTreeSet<String> = BTreeSet::new();
    let mut live_keys: BTreeSet<String> = BTreeSet::new();
    for r in &records {
        live.insert(r.artifact.clone());
        live.extend(r.files.values().map(|e| e.hash.clone()));
        live_keys.insert(r.key.clone());
    }
    let mut report = GcReport::default();
    let mut remove = |path: &Path, bytes: u64, what: &str| -> Result<()> {
        println!(
            "{} {what} {} ({bytes} bytes)",
            if dry_run { "would remove" } else { "removing" },
            path.display()
        );
        report.files += 1;
        report.bytes += bytes;
        if !dry_run {
            if path.is_dir() {
                fs::remove_dir_all(path)?;
            } else {
                fs::remove_file(path)?;
            }
            if report.files == 1 {
                semiflow_stages::fault::point("gc");
            }
        }
        Ok(())
    };
    for (hash, size) in store.blobs.list()? {
        if !live.contains(&hash) {
            remove(&store.blobs.path(&hash), size, "blob")?;
        }
    }
    for (sub, what) in [
        ("tmp", "temp"),
        ("quarantine", "quarantined blob"),
        ("resume", "checkpoint"),
        ("jobs", "Slurm job dir"),
    ] {
        for e in read_dir(&store.root.join(sub))? {
            remove(&e, dir_size(&e), what)?;
        }
    }
    let attempted: BTreeSet<String> = store.index.attempt_keys()?.into_iter().collect();
    for e in read_dir(&store.root.join("logs"))? {
        // `<key>.log` and Slurm's `<key>.slurm-<job>.out`.
        let name = e
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let key = name.split('.').next().unwrap_or_default().to_string();
        if !live_keys.contains(&key) && !attempted.contains(&key) {
            remove(&e, dir_size(&e), "log")?;
        }
    }
    Ok(report)
}

fn read_dir(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    let Ok(rd) = fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut v: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    v.sort();
    Ok(v)
}

fn dir_size(p: &Path) -> u64 {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => read_dir(p)
            .map(|v| v.iter().map(|c| dir_size(c)).sum())
            .unwrap_or(0),
        Ok(m) => m.len(),
        Err(_) => 0,
    }
}
