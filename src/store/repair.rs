//! Opening the index, and rebuilding it from the record files.
//!
//! Invariants:
//! - The index is never the only copy of a record. An index without the [`INDEX_FORMAT`] marker
//!   (created before records were files, or just created) first has its records exported as files
//!   (none is ever dropped), then is refilled from all the files and marked.
//! - `repair` builds the new index beside the old one (`index.rebuild/`) and swaps it in with two
//!   renames; the old one is moved to `quarantine/`, not deleted. A crash at any point leaves
//!   either the old index, or no `index/` at all (rebuilt automatically on the next open); a stale
//!   `index.rebuild/` is removed.
//! - A record file that cannot be read is moved to `quarantine/records/` and reported, never
//!   silently dropped or indexed.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, Context, Result};

use super::index::{Index, Record, INDEX_FORMAT};
use super::records::{BadFile, NameRef, RecordFiles, RefKind};

/// What `semiflow repair` did.
#[derive(Debug, Default)]
pub struct RepairReport {
    pub records: usize,
    pub names: usize,
    pub attempts: usize,
    /// Records only the old index held (written out as files before the rebuild).
    pub exported: usize,
    /// Unreadable record/ref files, moved to quarantine.
    pub quarantined: Vec<(PathBuf, String)>,
    /// Where the old index went, if there was one.
    pub old_index: Option<PathBuf>,
    /// Why the old index could not be used, if it could not.
    pub old_index_problem: Option<String>,
    pub leftovers: usize,
    pub seconds: f64,
}

fn sled_open(dir: &Path) -> Result<sled::Db> {
    // sled panics on some kinds of damage instead of returning an error.
    let res =
        std::panic::catch_unwind(|| sled::Config::new().path(dir).flush_every_ms(None).open());
    match res {
        Ok(r) => r.map_err(|e| anyhow!("{e}")),
        Err(_) => Err(anyhow!("sled panicked while reading it")),
    }
}

fn damaged(root: &Path, why: &str) -> anyhow::Error {
    anyhow!(
        "the index in {} cannot be used: {why}.\n  \
         Nothing is lost: every record is a file under {}.\n  \
         Rebuild the index from them with: semiflow repair --store {}",
        root.join("index").display(),
        root.join("records").display(),
        root.display()
    )
}

/// Open the index of the store at `root` (the caller holds the lock).
pub(super) fn open_index(root: &Path, files: &RecordFiles) -> Result<Index> {
    let rebuild = root.join("index.rebuild");
    if rebuild.exists() {
        fs::remove_dir_all(&rebuild)
            .with_context(|| format!("removing the unfinished {}", rebuild.display()))?;
    }
    let dir = root.join("index");
    let db = sled_open(&dir).map_err(|e| damaged(root, &format!("{e:#}")))?;
    let index = Index::open(db).map_err(|e| damaged(root, &format!("{e:#}")))?;
    match index.format() {
        Ok(Some(f)) if f == INDEX_FORMAT => Ok(index),
        Ok(Some(f)) => Err(damaged(
            root,
            &format!("it was written in another layout ({f}; this semiflow writes {INDEX_FORMAT})"),
        )),
        Err(e) => Err(damaged(root, &format!("{e:#}"))),
        Ok(None) => {
            let exported = export_index(&index, files)?;
            let (records, names, attempts, bad) = read_files(files)?;
            if !bad.is_empty() {
                let list: Vec<String> = bad
                    .iter()
                    .map(|b| format!("{}: {}", b.path.display(), b.why))
                    .collect();
                return Err(anyhow!(
                    "cannot build the index of {}: unreadable store files:\n  {}\n  \
                     `semiflow repair --store {}` moves them to quarantine/ and rebuilds the index",
                    root.display(),
                    list.join("\n  "),
                    root.display()
                ));
            }
            index.fill(&records, &names, &attempts, |_| {})?;
            if exported > 0 {
                tracing::info!(
                    "store {}: wrote {exported} records of an older index as files under records/",
                    root.display()
                );
            } else if !records.is_empty() {
                tracing::warn!(
                    "store {}: the index was missing; rebuilt it from {} record files",
                    root.display(),
                    records.len()
                );
            }
            Ok(index)
        }
    }
}

/// Write every record and pointer the index holds as a file, where the file is missing.
/// Returns how many records were written.
fn export_index(index: &Index, files: &RecordFiles) -> Result<usize> {
    let mut n = 0;
    for rec in index.all_records()? {
        if !files.record_path(&rec.key).exists() {
            files.write_record(&rec)?;
            n += 1;
        }
    }
    if n > 0 {
        for (node, key) in index.names()? {
            files.write_ref(RefKind::Name, &node, &key)?;
        }
        for (node, key) in index.attempts()? {
            files.write_ref(RefKind::Attempt, &node, &key)?;
        }
    }
    Ok(n)
}

type Scanned = (Vec<Record>, Vec<NameRef>, Vec<NameRef>, Vec<BadFile>);

/// Records and pointers from the files. A node name with records but no name pointer (a crash
/// between the record file and the pointer's) points at its most recently started record.
fn read_files(files: &RecordFiles) -> Result<Scanned> {
    let (records, mut bad) = files.scan_records()?;
    let (mut names, b) = files.scan_refs(RefKind::Name)?;
    bad.extend(b);
    let (attempts, b) = files.scan_refs(RefKind::Attempt)?;
    bad.extend(b);
    let named: std::collections::BTreeSet<&str> = names.iter().map(|r| r.node.as_str()).collect();
    let mut latest: BTreeMap<&str, &Record> = BTreeMap::new();
    for r in &records {
        if named.contains(r.node.as_str()) {
            continue;
        }
        let e = latest.entry(&r.node).or_insert(r);
        if r.provenance.started > e.provenance.started {
            *e = r;
        }
    }
    let extra: Vec<NameRef> = latest
        .into_values()
        .map(|r| NameRef {
            node: r.node.clone(),
            key: r.key.clone(),
        })
        .collect();
    names.extend(extra);
    Ok((records, names, attempts, bad))
}

/// Rebuild the index of the store at `root` from its files (the caller holds the lock).
pub(super) fn rebuild(root: &Path, files: &RecordFiles) -> Result<RepairReport> {
    let clock = Instant::now();
    let mut report = RepairReport::default();
    let dir = root.join("index");
    // Records only an old index holds (a store from before record files) are written out first.
    if dir.exists() {
        match sled_open(&dir).and_then(|db| Index::open(db).map_err(|e| anyhow!("{e:#}"))) {
            Ok(old) => match export_index(&old, files) {
                Ok(n) => report.exported = n,
                Err(e) => report.old_index_problem = Some(format!("{e:#}")),
            },
            Err(e) => report.old_index_problem = Some(format!("{e:#}")),
        }
    }
    let (records, names, attempts, bad) = read_files(files)?;
    let quarantine = root.join("quarantine");
    for b in bad {
        let dest_dir = quarantine.join("records");
        fs::create_dir_all(&dest_dir)?;
        let name = b.path.file_name().unwrap_or_default().to_string_lossy();
        let dest = super::blobs::tempfile_in(&dest_dir, &name)?;
        fs::rename(&b.path, &dest)
            .with_context(|| format!("moving {} to {}", b.path.display(), dest.display()))?;
        tracing::warn!(
            "{}: {}; moved to {}",
            b.path.display(),
            b.why,
            dest.display()
        );
        report.quarantined.push((dest, b.why));
    }
    let rebuild = root.join("index.rebuild");
    if rebuild.exists() {
        fs::remove_dir_all(&rebuild)?;
    }
    {
        let db = sled_open(&rebuild)
            .with_context(|| format!("creating a new index in {}", rebuild.display()))?;
        let index = Index::open(db)?;
        let half = records.len() / 2;
        index.fill(&records, &names, &attempts, |i| {
            if i == half {
                semiflow_stages::fault::point("repair");
            }
        })?;
    }
    if dir.exists() {
        fs::create_dir_all(&quarantine)?;
        let dest = super::blobs::tempfile_in(&quarantine, "index")?;
        fs::rename(&dir, &dest)
            .with_context(|| format!("moving the old index to {}", dest.display()))?;
        report.old_index = Some(dest);
    }
    fs::rename(&rebuild, &dir)
        .with_context(|| format!("moving {} to {}", rebuild.display(), dir.display()))?;
    super::blobs::sync_dir(root)?;
    report.records = records.len();
    report.names = names.len();
    report.attempts = attempts.len();
    report.leftovers = sweep_leftovers(root)?;
    report.seconds = clock.elapsed().as_secs_f64();
    Ok(report)
}

/// Remove everything under `tmp/` and `*.tmp` files in `resume/*/` (the caller holds the lock, so
/// no live run owns them). Returns how many entries were removed.
pub(super) fn sweep_leftovers(root: &Path) -> Result<usize> {
    let mut n = 0;
    if let Ok(rd) = fs::read_dir(root.join("tmp")) {
        for e in rd.flatten() {
            let p = e.path();
            let r = if e.file_type().is_ok_and(|t| t.is_dir()) {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            r.with_context(|| format!("removing leftover {}", p.display()))?;
            n += 1;
        }
    }
    if let Ok(rd) = fs::read_dir(root.join("resume")) {
        for d in rd.flatten() {
            let Ok(inner) = fs::read_dir(d.path()) else {
                continue;
            };
            for f in inner.flatten() {
                let p = f.path();
                if p.extension().is_some_and(|e| e == "tmp") {
                    fs::remove_file(&p)
                        .with_context(|| format!("removing leftover {}", p.display()))?;
                    n += 1;
                }
            }
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::index::Provenance;

    fn record(key: &str, node: &str, started: &str) -> Record {
        Record {
            key: key.to_string(),
            node: node.to_string(),
            base: node.to_string(),
            point: Default::default(),
            kind: "split".into(),
            params: serde_json::json!({"fraction": 0.1}),
            components: vec![("kind".into(), "split".into())],
            inputs: Default::default(),
            artifact: "ab".repeat(32),
            manifest_size: 2,
            files: Default::default(),
            metrics: [("top1".to_string(), 0.1 + 0.2)].into_iter().collect(),
            series: Default::default(),
            details: serde_json::Value::Null,
            provenance: Provenance {
                semiflow_version: "0".into(),
                git_commit: "x".into(),
                candle_version: "0".into(),
                host: "h".into(),
                threads: 1,
                seed: 0,
                pipeline: "p".into(),
                overrides: vec![],
                started: started.into(),
                duration_s: 1.0,
                numerics: None,
                ..Provenance::default()
            },
        }
    }

    #[test]
    fn an_index_from_before_record_files_is_exported_not_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let (k1, k2) = ("1".repeat(64), "2".repeat(64));
        {
            // What an older semiflow left: records in sled only, no format marker.
            let index = Index::open(sled_open(&root.join("index")).unwrap()).unwrap();
            index
                .commit(&record(&k1, "a", "2026-01-01T00:00:00Z"))
                .unwrap();
            index
                .commit(&record(&k2, "b", "2026-01-02T00:00:00Z"))
                .unwrap();
            index.note_attempt("b", &k2).unwrap();
        }
        let files = RecordFiles::new(root);
        let index = open_index(root, &files).unwrap();
        assert_eq!(index.format().unwrap().as_deref(), Some(INDEX_FORMAT));
        assert_eq!(
            files.read_record(&k1).unwrap().unwrap(),
            record(&k1, "a", "2026-01-01T00:00:00Z")
        );
        assert_eq!(files.read_ref(RefKind::Name, "b"), Some(k2.clone()));
        assert_eq!(files.read_ref(RefKind::Attempt, "b"), Some(k2.clone()));
        drop(index);

        // Then the index is lost: everything comes back from the files, floats bit for bit.
        fs::remove_dir_all(root.join("index")).unwrap();
        let index = open_index(root, &files).unwrap();
        assert_eq!(index.record_count(), 2);
        let back = index.latest_record("a").unwrap().unwrap();
        assert_eq!(back.metrics["top1"].to_bits(), (0.1f64 + 0.2).to_bits());
        assert_eq!(index.last_attempt("b").unwrap(), Some(k2.clone()));
    }

    #[test]
    fn a_name_without_a_pointer_file_gets_its_latest_record_and_bad_files_are_quarantined() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let files = RecordFiles::new(root);
        let (k1, k2) = ("1".repeat(64), "2".repeat(64));
        // A crash between the record file and the pointer file: no pointers at all.
        files
            .write_record(&record(&k1, "a", "2026-01-02T00:00:00Z"))
            .unwrap();
        files
            .write_record(&record(&k2, "a", "2026-01-01T00:00:00Z"))
            .unwrap();
        let bad = files.record_path(&"3".repeat(64));
        fs::create_dir_all(bad.parent().unwrap()).unwrap();
        fs::write(&bad, b"{\"key\": tru").unwrap();
        let err = open_index(root, &files).err().unwrap().to_string();
        assert!(
            err.contains("semiflow repair") && err.contains("33333333"),
            "{err}"
        );

        let report = rebuild(root, &files).unwrap();
        assert_eq!((report.records, report.quarantined.len()), (2, 1));
        assert!(!bad.exists());
        let index = open_index(root, &files).unwrap();
        assert_eq!(index.latest_key("a").unwrap(), Some(k1));
    }
}
