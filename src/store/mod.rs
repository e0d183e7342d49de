//! The store: a directory holding content-addressed objects, the sled index, resume checkpoints,
//! per-node logs and scratch space.
//!
//! Layout (`<store>` = `--store`, `SEMIFLOW_STORE` or `./artifacts`):
//! - `objects/<2 hex>/<hash>`: immutable, read-only blobs ([`blobs`]).
//! - `index/`: the sled database ([`index`]).
//! - `resume/<key>/`: a running or interrupted node's epoch checkpoints; removed after its record commits.
//! - `logs/<key>.log`: each node's log (appended across attempts).
//! - `tmp/`: stage output dirs and input views of running nodes; anything here not owned by a live
//!   run is garbage (gc removes it).
//! - `quarantine/`: blobs that failed verification, moved aside so the next run rebuilds them.
//! - `LOCK`: the single-owner lock ([`lock`]).

pub mod blobs;
pub mod fingerprint;
pub mod index;
pub mod lock;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub use blobs::{BlobProblem, Blobs, FileEntry, Manifest};
pub use index::{Index, InputRef, Provenance, Record};
pub use lock::{StoreLock, WaitPolicy};

/// An open store (holds the lock while alive).
pub struct Store {
    pub root: PathBuf,
    pub blobs: Blobs,
    pub index: Index,
    _lock: StoreLock,
}

/// Why a key is not a usable cache hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    NoRecord,
    /// A blob the record names is missing or damaged: `file` is the artifact file name
    /// (or `(manifest)`), `hash` the object.
    Blob {
        file: String,
        hash: String,
        problem: BlobProblem,
    },
}

impl std::fmt::Display for Miss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Miss::NoRecord => write!(f, "no record"),
            Miss::Blob {
                file,
                hash,
                problem,
            } => write!(
                f,
                "output {file} (blob {}) {problem}",
                crate::key::short(hash)
            ),
        }
    }
}

impl Store {
    /// The store directory from `--store`, else `SEMIFLOW_STORE`, else `./artifacts`.
    pub fn locate(flag: Option<&Path>) -> PathBuf {
        if let Some(p) = flag {
            return p.to_path_buf();
        }
        match std::env::var_os("SEMIFLOW_STORE") {
            Some(v) if !v.is_empty() => PathBuf::from(v),
            _ => PathBuf::from("artifacts"),
        }
    }

    /// Open (creating if needed) the store at `root`, taking its lock first.
    pub fn open(root: &Path, policy: WaitPolicy) -> Result<Store> {
        fs::create_dir_all(root)
            .with_context(|| format!("creating store directory {}", root.display()))?;
        let lock = StoreLock::acquire(root, policy)?;
        for sub in ["objects", "tmp", "resume", "logs"] {
            fs::create_dir_all(root.join(sub))?;
        }
        let db = sled::Config::new()
            .path(root.join("index"))
            .flush_every_ms(None)
            .open()
            .with_context(|| format!("opening the index in {}", root.display()))?;
        Ok(Store {
            root: root.to_path_buf(),
            blobs: Blobs::new(root),
            index: Index::open(db)?,
            _lock: lock,
        })
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn resume_dir(&self, key: &str) -> PathBuf {
        self.root.join("resume").join(key)
    }

    pub fn log_path(&self, key: &str) -> PathBuf {
        self.root.join("logs").join(format!("{key}.log"))
    }

    /// A cache hit: the record and every blob it names present with the recorded size
    /// (and, with `verify`, re-hashed).
    pub fn lookup(&self, key: &str, verify: bool) -> Result<std::result::Result<Record, Miss>> {
        let Some(rec) = self.index.record(key)? else {
            return Ok(Err(Miss::NoRecord));
        };
        Ok(match self.check_record(&rec, verify) {
            None => Ok(rec),
            Some(miss) => Err(miss),
        })
    }

    /// The first blob problem of a record, if any.
    pub fn check_record(&self, rec: &Record, verify: bool) -> Option<Miss> {
        self.record_problems(rec, verify).into_iter().next()
    }

    /// Every blob problem of a record.
    pub fn record_problems(&self, rec: &Record, verify: bool) -> Vec<Miss> {
        let mut out = Vec::new();
        let manifest = std::iter::once(("(manifest)", &rec.artifact, rec.manifest_size));
        let files = rec.files.iter().map(|(n, e)| (n.as_str(), &e.hash, e.size));
        for (file, hash, size) in manifest.chain(files) {
            if let Err(problem) = self.blobs.check(hash, size, verify) {
                out.push(Miss::Blob {
                    file: file.to_string(),
                    hash: hash.clone(),
                    problem,
                });
            }
        }
        out
    }

    /// Move a damaged blob aside so the next run rebuilds it instead of trusting it.
    pub fn quarantine(&self, hash: &str) -> Result<PathBuf> {
        let dir = self.root.join("quarantine");
        fs::create_dir_all(&dir)?;
        let dest = blobs::tempfile_in(&dir, hash)?;
        fs::rename(self.blobs.path(hash), &dest)
            .with_context(|| format!("moving damaged blob {hash} to {}", dest.display()))?;
        Ok(dest)
    }

    /// A fresh scratch directory under `<store>/tmp/` (created).
    pub fn scratch_dir(&self, prefix: &str) -> Result<PathBuf> {
        let dir = blobs::tempfile_in(&self.tmp_dir(), prefix)?;
        fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}
