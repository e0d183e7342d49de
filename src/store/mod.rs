//! The store: a directory holding content-addressed objects, record files, the sled index (a
//! cache of the record files), resume checkpoints, per-node logs and scratch space.
//!
//! Layout (`<store>` = `--store`, `SEMIFLOW_STORE` or `./artifacts`):
//! - `objects/<2 hex>/<hash>`: immutable, read-only blobs ([`blobs`]).
//! - `records/<2 hex>/<key>.json`, `refs/{names,attempts}/…`: the committed records and the
//!   node-name pointers, one file each ([`records`]): the store's truth.
//! - `index/`: the sled database ([`index`]), rebuilt from the files when it is missing
//!   (automatically) or damaged (`semiflow repair`).
//! - `resume/<key>/`: a running or interrupted node's epoch checkpoints; removed after its record commits.
//! - `logs/<key>.log`: each node's log (appended across attempts); `logs/<key>.slurm-<job>.out`:
//!   Slurm's output file of each job that built it (Slurm executor).
//! - `jobs/<key>/`: a Slurm job's task file, journal (job id), output dir and result manifest
//!   ([`crate::slurm`]); removed once its record commits.
//! - `tmp/`: stage output dirs and input views of running nodes; anything here not owned by a live
//!   run is garbage (gc removes it).
//! - `quarantine/`: blobs that failed verification, moved aside so the next run rebuilds them.
//! - `LOCK`: the single-owner lock ([`lock`]).

pub mod blobs;
pub mod fingerprint;
pub mod index;
pub mod lock;
pub mod records;
mod repair;

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub use blobs::{BlobProblem, Blobs, FileEntry, Manifest};
pub use index::{Index, InputRef, Provenance, Record};
pub use lock::{StoreLock, WaitPolicy};
pub use records::{RecordFiles, RefKind};
pub use repair::RepairReport;

/// An open store (holds the lock while alive).
pub struct Store {
    pub root: PathBuf,
    pub blobs: Blobs,
    pub index: Index,
    pub files: RecordFiles,
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

    /// Open (creating if needed) the store at `root`, taking its lock first. A missing index is
    /// rebuilt from the record files; a damaged one is an error that says to run `semiflow repair`.
    pub fn open(root: &Path, policy: WaitPolicy) -> Result<Store> {
        let lock = Self::lock(root, policy)?;
        let files = RecordFiles::new(root);
        let index = repair::open_index(root, &files)?;
        Ok(Store {
            root: root.to_path_buf(),
            blobs: Blobs::new(root),
            index,
            files,
            _lock: lock,
        })
    }

    /// Take the store's lock and make its directories.
    fn lock(root: &Path, policy: WaitPolicy) -> Result<StoreLock> {
        fs::create_dir_all(root)
            .with_context(|| format!("creating store directory {}", root.display()))?;
        let lock = StoreLock::acquire(root, policy)?;
        for sub in ["objects", "tmp", "resume", "logs", "records"] {
            fs::create_dir_all(root.join(sub))
                .with_context(|| format!("creating {}", root.join(sub).display()))?;
        }
        Ok(lock)
    }

    /// `semiflow repair`: rebuild the index from the record files (see [`repair`]), then open.
    pub fn repair(root: &Path, policy: WaitPolicy) -> Result<(Store, RepairReport)> {
        let lock = Self::lock(root, policy)?;
        let files = RecordFiles::new(root);
        let report = repair::rebuild(root, &files)?;
        let index = repair::open_index(root, &files)?;
        let store = Store {
            root: root.to_path_buf(),
            blobs: Blobs::new(root),
            index,
            files,
            _lock: lock,
        };
        Ok((store, report))
    }

    /// Commit a record whose blobs are all durable: its file first (the truth), then the name
    /// pointer's file, then the index.
    pub fn commit(&self, rec: &Record) -> Result<()> {
        semiflow_stages::fault::point("before-record-file");
        self.files.write_record(rec)?;
        semiflow_stages::fault::point("record-file-written");
        self.files.write_ref(RefKind::Name, &rec.node, &rec.key)?;
        self.index.commit(rec)
    }

    /// Point a node name at an existing record (a cache hit under another name) so `show` and
    /// `log` find it by this name. Writes only when the name pointed elsewhere.
    pub fn note_name(&self, node: &str, key: &str) -> Result<()> {
        if self.index.latest_key(node)?.as_deref() != Some(key) {
            self.files.write_ref(RefKind::Name, node, key)?;
            self.index.note_name(node, key)?;
        }
        Ok(())
    }

    /// Durable at once: the log of a run that crashes or fails must stay findable.
    pub fn note_attempt(&self, node: &str, key: &str) -> Result<()> {
        self.files.write_ref(RefKind::Attempt, node, key)?;
        self.index.note_attempt(node, key)
    }

    /// The record of `key`: from the index, else from its record file (a crash between the file
    /// and the index entry, or a record a Slurm worker's coordinator wrote), which is then cached.
    pub fn record(&self, key: &str) -> Result<Option<Record>> {
        if let Some(rec) = self.index.record(key)? {
            return Ok(Some(rec));
        }
        let Some(rec) = self.files.read_record(key)? else {
            return Ok(None);
        };
        self.index.insert_record(&rec)?;
        if self.index.latest_key(&rec.node)?.is_none() {
            self.index.note_name(&rec.node, &rec.key)?;
        }
        Ok(Some(rec))
    }

    /// The latest successful record under a node name: the index's pointer, else the pointer file
    /// (an index that lost entries to damage sled did not report).
    pub fn latest_record(&self, node: &str) -> Result<Option<Record>> {
        if let Some(rec) = self.index.latest_record(node)? {
            return Ok(Some(rec));
        }
        match self.files.read_ref(RefKind::Name, node) {
            Some(key) => self.record(&key),
            None => Ok(None),
        }
    }

    /// The key of a node's latest attempt (index, else pointer file).
    pub fn last_attempt(&self, node: &str) -> Result<Option<String>> {
        Ok(match self.index.last_attempt(node)? {
            Some(k) => Some(k),
            None => self.files.read_ref(RefKind::Attempt, node),
        })
    }

    /// Remove what a dead run left behind: everything under `tmp/` (the lock guarantees no other
    /// run is live) and half-written checkpoint temp files under `resume/`. Returns how many.
    pub fn sweep_leftovers(&self) -> Result<usize> {
        repair::sweep_leftovers(&self.root)
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
        let Some(rec) = self.record(key)? else {
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
