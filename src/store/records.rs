//! The store's truth as plain files: one file per committed record, one per node-name pointer.
//!
//! Layout:
//! - `records/<2 hex>/<key>.json`: a [`Record`] as canonical JSON (sorted keys, no whitespace).
//! - `refs/names/<2 hex>/<blake3(node name)>.json`: `{"key":…,"node":…}`, the latest successful record
//!   known under that node name (`show NODE`, `status` reasons).
//! - `refs/attempts/<2 hex>/<blake3(node name)>.json`: the same for the latest attempt (`log NODE`).
//!
//! Invariants:
//! - Every file is written to a temp file under `<store>/tmp/`, fsynced, renamed into place, and
//!   its directory fsynced: a crash leaves the old file or the new one, never a torn one.
//! - A record file is written only after every blob it names is durable, and before the sled
//!   index learns of it: the index (see [`super::index`]) is a cache of these files and can always
//!   be rebuilt from them (`semiflow repair`).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::blobs::{sync_dir, tempfile_in};
use super::index::Record;

/// Which pointer family a ref file belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefKind {
    /// Latest successful record per node name.
    Name,
    /// Latest attempt (successful or not) per node name.
    Attempt,
}

impl RefKind {
    fn dir(self) -> &'static str {
        match self {
            RefKind::Name => "names",
            RefKind::Attempt => "attempts",
        }
    }
}

/// One node-name pointer as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameRef {
    pub node: String,
    pub key: String,
}

/// A file under `records/` or `refs/` that could not be read back.
#[derive(Debug, Clone)]
pub struct BadFile {
    pub path: PathBuf,
    pub why: String,
}

/// The record and ref files of a store.
#[derive(Debug, Clone)]
pub struct RecordFiles {
    root: PathBuf,
    tmp: PathBuf,
}

impl RecordFiles {
    pub fn new(store_root: &Path) -> RecordFiles {
        RecordFiles {
            root: store_root.to_path_buf(),
            tmp: store_root.join("tmp"),
        }
    }

    pub fn records_dir(&self) -> PathBuf {
        self.root.join("records")
    }

    pub fn record_path(&self, key: &str) -> PathBuf {
        let shard = key.get(..2).unwrap_or("xx");
        self.records_dir().join(shard).join(format!("{key}.json"))
    }

    fn ref_path(&self, kind: RefKind, node: &str) -> PathBuf {
        let h = blake3::hash(node.as_bytes()).to_hex();
        self.root
            .join("refs")
            .join(kind.dir())
            .join(&h[..2])
            .join(format!("{h}.json"))
    }

    /// The canonical bytes of a record file.
    pub fn encode(rec: &Record) -> Vec<u8> {
        let v = serde_json::to_value(rec).expect("a record serializes");
        let mut s = crate::key::canonical_json(&v);
        s.push('\n');
        s.into_bytes()
    }

    /// Write `rec`'s file durably (the caller has made its blobs durable first).
    pub fn write_record(&self, rec: &Record) -> Result<()> {
        let path = self.record_path(&rec.key);
        write_durably(
            &self.tmp,
            &path,
            &Self::encode(rec),
            Some("record-file-temp"),
        )
        .with_context(|| format!("writing record file {}", path.display()))
    }

    /// The record of `key` from its file, if there is one. A damaged file is an error naming it.
    pub fn read_record(&self, key: &str) -> Result<Option<Record>> {
        // Only a key can name a record file (no paths from user input).
        if key.len() != 64 || !key.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Ok(None);
        }
        let path = self.record_path(key);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(parse_record(&path, &bytes, Some(key))?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading record file {}", path.display())),
        }
    }

    /// Point `node` at `key` (durably).
    pub fn write_ref(&self, kind: RefKind, node: &str, key: &str) -> Result<()> {
        let r = NameRef {
            node: node.to_string(),
            key: key.to_string(),
        };
        let mut bytes = serde_json::to_vec(&r)?;
        bytes.push(b'\n');
        let path = self.ref_path(kind, node);
        write_durably(&self.tmp, &path, &bytes, None)
            .with_context(|| format!("writing {}", path.display()))
    }

    /// The key a node-name pointer file holds, if there is one (unreadable files count as none:
    /// the index, when sound, is consulted first).
    pub fn read_ref(&self, kind: RefKind, node: &str) -> Option<String> {
        let bytes = fs::read(self.ref_path(kind, node)).ok()?;
        let r: NameRef = serde_json::from_slice(&bytes).ok()?;
        (r.node == node).then_some(r.key)
    }

    /// Every record file, in path order: the readable records and the unreadable files.
    pub fn scan_records(&self) -> Result<(Vec<Record>, Vec<BadFile>)> {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for path in json_files(&self.records_dir())? {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            match fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|b| parse_record(&path, &b, Some(&stem)))
            {
                Ok(r) => good.push(r),
                Err(e) => bad.push(BadFile {
                    path,
                    why: format!("{e:#}"),
                }),
            }
        }
        Ok((good, bad))
    }

    /// Every ref file of one family: the readable pointers and the unreadable files.
    pub fn scan_refs(&self, kind: RefKind) -> Result<(Vec<NameRef>, Vec<BadFile>)> {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for path in json_files(&self.root.join("refs").join(kind.dir()))? {
            match fs::read(&path)
                .map_err(anyhow::Error::from)
                .and_then(|b| Ok(serde_json::from_slice::<NameRef>(&b)?))
            {
                Ok(r) => good.push(r),
                Err(e) => bad.push(BadFile {
                    path,
                    why: format!("{e:#}"),
                }),
            }
        }
        Ok((good, bad))
    }

    /// How many record files there are (a directory walk, no parsing).
    pub fn count_records(&self) -> Result<usize> {
        Ok(json_files(&self.records_dir())?.len())
    }
}

fn parse_record(path: &Path, bytes: &[u8], want_key: Option<&str>) -> Result<Record> {
    let rec: Record = serde_json::from_slice(bytes)
        .with_context(|| format!("record file {} is not a valid record", path.display()))?;
    if let Some(k) = want_key {
        if rec.key != k {
            bail!(
                "record file {} holds key {}, not the key in its name",
                path.display(),
                rec.key
            );
        }
    }
    Ok(rec)
}

/// `*.json` files one shard level below `dir`, sorted; nothing if `dir` does not exist.
fn json_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let shards = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    for shard in shards {
        let shard = shard?;
        if !shard.file_type()?.is_dir() {
            continue;
        }
        for f in fs::read_dir(shard.path())? {
            let p = f?.path();
            if p.extension().is_some_and(|e| e == "json") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// temp file under `tmp_dir` + fsync + rename to `dest` + fsync of `dest`'s directory.
/// `fault` names the crash point between the fsync and the rename.
pub fn write_durably(tmp_dir: &Path, dest: &Path, bytes: &[u8], fault: Option<&str>) -> Result<()> {
    fs::create_dir_all(tmp_dir)?;
    let parent = dest.parent().expect("a store file has a parent");
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let tmp = tempfile_in(tmp_dir, "file")?;
    let result = (|| {
        let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        drop(f);
        if let Some(name) = fault {
            semiflow_stages::fault::point(name);
        }
        fs::rename(&tmp, dest)
            .with_context(|| format!("moving {} to {}", tmp.display(), dest.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    sync_dir(parent)
}
