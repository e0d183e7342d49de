//! The sled index: which key produced which artifact, and the memos that make reruns cheap.
//!
//! The index is a cache of the record and ref files ([`super::records`]): everything in
//! `records`, `by_name` and `attempts` is also a file, written first, and [`super::Store::repair`]
//! rebuilds the index from those files. Only the fingerprint memos live in sled alone (losing them
//! costs one re-hash of each dataset file).
//!
//! Trees:
//! - `records`: key hex → JSON [`Record`]. Inserted only after every blob it names is in place and
//!   fsynced and its record file is written, then flushed: a record never points at a missing or
//!   partial blob (crash safety).
//! - `by_name`: node name → key of the latest successful record, for `status` diffs and `show NODE`.
//! - `attempts`: node name → key of the latest attempt (successful or not), for `semiflow log NODE`.
//! - `fingerprints`: `abs path \0 size \0 mtime ns` → blake3 of the file, so dataset fingerprints do
//!   not re-read unchanged files. A stale entry is unreachable because size or mtime is in its key.
//! - `meta`: `format` → [`INDEX_FORMAT`], set once the index holds every record file.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::blobs::FileEntry;
use super::records::NameRef;

/// The index layout this build reads and writes. An index without it predates record files (or
/// was just created); one with another value was written by an incompatible semiflow.
pub const INDEX_FORMAT: &str = "semiflow-index/2 (sled 0.34, records as files)";

/// One input artifact a node consumed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputRef {
    pub node: String,
    pub artifact: String,
}

/// Where, when and with what a record was produced.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    pub semiflow_version: String,
    pub git_commit: String,
    pub candle_version: String,
    pub host: String,
    pub threads: usize,
    pub seed: u64,
    pub pipeline: String,
    pub overrides: Vec<String>,
    /// Start, UTC, RFC 3339.
    pub started: String,
    pub duration_s: f64,
    /// Numerics profile, CPU and ISA (absent in records made before they were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub numerics: Option<semiflow_stages::numerics::NumericsInfo>,
    /// Where it ran: absent for the local executor (and in older records), `slurm` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<String>,
    /// The Slurm job that built it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The Slurm partition the job ran in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
}

/// What the index holds for one key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub key: String,
    pub node: String,
    pub base: String,
    #[serde(default)]
    pub point: BTreeMap<String, serde_json::Value>,
    pub kind: String,
    /// The resolved parameters (defaults filled) the stage ran with.
    #[serde(default)]
    pub params: serde_json::Value,
    pub components: Vec<(String, String)>,
    pub inputs: BTreeMap<String, Vec<InputRef>>,
    /// The artifact's content hash (= hash of its manifest object).
    pub artifact: String,
    pub manifest_size: u64,
    pub files: BTreeMap<String, FileEntry>,
    pub metrics: BTreeMap<String, f64>,
    pub series: BTreeMap<String, Vec<f64>>,
    pub details: serde_json::Value,
    pub provenance: Provenance,
}

/// Handles on the sled trees.
#[derive(Clone)]
pub struct Index {
    db: sled::Db,
    records: sled::Tree,
    by_name: sled::Tree,
    attempts: sled::Tree,
    fingerprints: sled::Tree,
    meta: sled::Tree,
}

impl Index {
    pub fn open(db: sled::Db) -> Result<Index> {
        Ok(Index {
            records: db.open_tree("records")?,
            by_name: db.open_tree("by_name")?,
            attempts: db.open_tree("attempts")?,
            fingerprints: db.open_tree("fingerprints")?,
            meta: db.open_tree("meta")?,
            db,
        })
    }

    pub fn record(&self, key: &str) -> Result<Option<Record>> {
        match self.records.get(key.as_bytes())? {
            None => Ok(None),
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("record {key} in the index is unreadable; `semiflow repair` rebuilds the index from the record files")
            })?)),
        }
    }

    /// Commit a record. The caller guarantees every blob it names is already durable and its
    /// record file written ([`super::Store::commit`]).
    pub(super) fn commit(&self, rec: &Record) -> Result<()> {
        self.insert_record(rec)?;
        self.by_name
            .insert(rec.node.as_bytes(), rec.key.as_bytes())?;
        self.db.flush().context("flushing the sled index")?;
        Ok(())
    }

    /// Cache a record read from its file (no name pointer, no flush).
    pub(super) fn insert_record(&self, rec: &Record) -> Result<()> {
        let bytes = serde_json::to_vec(rec)?;
        self.records.insert(rec.key.as_bytes(), bytes)?;
        Ok(())
    }

    /// The index's layout marker, if set.
    pub fn format(&self) -> Result<Option<String>> {
        Ok(self
            .meta
            .get(b"format")?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Replace the records, names and attempts with the given ones (from the files), mark the
    /// index as complete and flush. `on_record` runs after each record (crash-point tests).
    pub(super) fn fill(
        &self,
        records: &[Record],
        names: &[NameRef],
        attempts: &[NameRef],
        mut on_record: impl FnMut(usize),
    ) -> Result<()> {
        self.meta.remove(b"format")?;
        self.records.clear()?;
        self.by_name.clear()?;
        self.attempts.clear()?;
        for (i, rec) in records.iter().enumerate() {
            self.insert_record(rec)?;
            on_record(i);
        }
        for r in names {
            self.by_name.insert(r.node.as_bytes(), r.key.as_bytes())?;
        }
        for r in attempts {
            self.attempts.insert(r.node.as_bytes(), r.key.as_bytes())?;
        }
        self.meta.insert(b"format", INDEX_FORMAT.as_bytes())?;
        self.db.flush().context("flushing the sled index")?;
        Ok(())
    }

    /// Latest attempts as `(node, key)`.
    pub fn attempts(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for kv in self.attempts.iter() {
            let (k, v) = kv?;
            out.push((
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            ));
        }
        Ok(out)
    }

    pub fn record_count(&self) -> usize {
        self.records.len()
    }

    /// Point a node name at an existing record (a cache hit under another name: a renamed node,
    /// or an unswept twin of a swept one), so `show` and `log` find it by this name (`report` and
    /// `audit` go by key).
    /// Writes only when the name pointed elsewhere; durable with the run's closing flush.
    pub(super) fn note_name(&self, node: &str, key: &str) -> Result<()> {
        if self.latest_key(node)?.as_deref() != Some(key) {
            self.by_name.insert(node.as_bytes(), key.as_bytes())?;
        }
        Ok(())
    }

    pub fn latest_key(&self, node: &str) -> Result<Option<String>> {
        Ok(self
            .by_name
            .get(node.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn latest_record(&self, node: &str) -> Result<Option<Record>> {
        match self.latest_key(node)? {
            Some(k) => self.record(&k),
            None => Ok(None),
        }
    }

    /// Durable at once (flushed): the log of a run that crashes or fails must stay findable.
    pub(super) fn note_attempt(&self, node: &str, key: &str) -> Result<()> {
        self.attempts.insert(node.as_bytes(), key.as_bytes())?;
        self.db.flush()?;
        Ok(())
    }

    pub fn last_attempt(&self, node: &str) -> Result<Option<String>> {
        Ok(self
            .attempts
            .get(node.as_bytes())?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Keys of the latest attempt of every node.
    pub fn attempt_keys(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for kv in self.attempts.iter() {
            let (_, v) = kv?;
            out.push(String::from_utf8_lossy(&v).into_owned());
        }
        Ok(out)
    }

    /// Every record, in key order.
    pub fn all_records(&self) -> Result<Vec<Record>> {
        let mut out = Vec::new();
        for kv in self.records.iter() {
            let (k, v) = kv?;
            out.push(serde_json::from_slice(&v).with_context(|| {
                format!("record {} is unreadable", String::from_utf8_lossy(&k))
            })?);
        }
        Ok(out)
    }

    /// Keys that any record is known under, with the node names pointing at them.
    pub fn names(&self) -> Result<Vec<(String, String)>> {
        let mut out = Vec::new();
        for kv in self.by_name.iter() {
            let (k, v) = kv?;
            out.push((
                String::from_utf8_lossy(&k).into_owned(),
                String::from_utf8_lossy(&v).into_owned(),
            ));
        }
        Ok(out)
    }

    pub fn fingerprint_memo(&self, memo_key: &[u8]) -> Result<Option<String>> {
        Ok(self
            .fingerprints
            .get(memo_key)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub fn set_fingerprint_memo(&self, memo_key: &[u8], hash: &str) -> Result<()> {
        self.fingerprints.insert(memo_key, hash.as_bytes())?;
        Ok(())
    }

    pub fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }
}
