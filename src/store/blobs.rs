//! Content-addressed objects: `<store>/objects/<2 hex>/<blake3 hex>`.
//!
//! Invariants:
//! - An object file's content always hashes to its name: objects are written elsewhere under
//!   `<store>/tmp/` (same filesystem), hashed, fsynced, made read-only and only then renamed into
//!   place, and the containing directory is fsynced. A crash leaves at worst an orphan temp file,
//!   never a partial object (gc removes the temp file).
//! - An artifact (a stage's output directory) is a [`Manifest`] mapping relative file names to
//!   `(hash, size)`; the manifest is itself stored as an object and the artifact's content hash is
//!   the manifest's hash, so equal outputs have equal artifact hashes whatever produced them.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// One file of an artifact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub hash: String,
    pub size: u64,
}

/// The files of one artifact, by `/`-separated path relative to the artifact root.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub files: BTreeMap<String, FileEntry>,
}

impl Manifest {
    /// The bytes that are stored and hashed: canonical JSON, so the hash is stable.
    pub fn to_bytes(&self) -> Vec<u8> {
        let v = serde_json::to_value(self).expect("manifest serializes");
        crate::key::canonical_json(&v).into_bytes()
    }
}

/// What is wrong with a blob that a record needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobProblem {
    Missing,
    WrongSize {
        expected: u64,
        found: u64,
    },
    /// Only detected when re-hashing (`--verify`).
    Corrupt {
        found: String,
    },
}

impl std::fmt::Display for BlobProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlobProblem::Missing => write!(f, "missing"),
            BlobProblem::WrongSize { expected, found } => {
                write!(f, "size {found} bytes, expected {expected}")
            }
            BlobProblem::Corrupt { found } => {
                write!(f, "content hashes to {}", crate::key::short(found))
            }
        }
    }
}

/// The object area of a store.
#[derive(Debug, Clone)]
pub struct Blobs {
    objects: PathBuf,
    tmp: PathBuf,
}

impl Blobs {
    pub fn new(store_root: &Path) -> Blobs {
        Blobs {
            objects: store_root.join("objects"),
            tmp: store_root.join("tmp"),
        }
    }

    pub fn objects_dir(&self) -> &Path {
        &self.objects
    }

    pub fn path(&self, hash: &str) -> PathBuf {
        self.objects.join(&hash[..2]).join(hash)
    }

    /// Move every file under `dir` into the object store and return the artifact hash and manifest.
    /// `dir` must be on the store's filesystem (it lives under `<store>/tmp/`); it is left empty of files.
    pub fn ingest_dir(&self, dir: &Path) -> Result<(String, Manifest)> {
        let mut files = Vec::new();
        collect_files(dir, dir, &mut files)?;
        let mut manifest = Manifest::default();
        for (i, (rel, path)) in files.into_iter().enumerate() {
            let (hash, size) = hash_file_inner(&path, true)?;
            self.place(&path, &hash, size)?;
            if i == 0 {
                semiflow_stages::fault::point("blob-placed");
            }
            manifest.files.insert(rel, FileEntry { hash, size });
        }
        let hash = self.put_bytes(&manifest.to_bytes())?;
        Ok((hash, manifest))
    }

    /// Store `bytes` as an object; returns its hash.
    pub fn put_bytes(&self, bytes: &[u8]) -> Result<String> {
        let hash = blake3::hash(bytes).to_hex().to_string();
        if self.check(&hash, bytes.len() as u64, true).is_ok() {
            return Ok(hash);
        }
        fs::create_dir_all(&self.tmp)?;
        let tmp = tempfile_in(&self.tmp, "blob")?;
        fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
        self.place(&tmp, &hash, bytes.len() as u64)?;
        Ok(hash)
    }

    /// Rename a fully written file whose content hashes to `hash` into place (crash-safe).
    /// If an intact object already exists (re-hashed, so a damaged one is replaced), the file is
    /// just removed (deduplication).
    fn place(&self, file: &Path, hash: &str, size: u64) -> Result<()> {
        let dest = self.path(hash);
        if self.check(hash, size, true).is_ok() {
            fs::remove_file(file)?;
            return Ok(());
        }
        let parent = dest.parent().expect("object path has a parent");
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        let f = File::open(file)?;
        let mut perm = f.metadata()?.permissions();
        perm.set_readonly(true);
        fs::set_permissions(file, perm)?;
        f.sync_all()
            .with_context(|| format!("fsync {}", file.display()))?;
        drop(f);
        fs::rename(file, &dest)
            .with_context(|| format!("moving {} to {}", file.display(), dest.display()))?;
        sync_dir(parent)?;
        Ok(())
    }

    /// Is the object present with `size` bytes (and, with `verify`, does its content hash match)?
    pub fn check(
        &self,
        hash: &str,
        size: u64,
        verify: bool,
    ) -> std::result::Result<(), BlobProblem> {
        let path = self.path(hash);
        let meta = match fs::metadata(&path) {
            Ok(m) if m.is_file() => m,
            _ => return Err(BlobProblem::Missing),
        };
        if meta.len() != size {
            return Err(BlobProblem::WrongSize {
                expected: size,
                found: meta.len(),
            });
        }
        if verify {
            match hash_file(&path) {
                Ok((found, _)) if found == hash => {}
                Ok((found, _)) => return Err(BlobProblem::Corrupt { found }),
                Err(_) => return Err(BlobProblem::Missing),
            }
        }
        Ok(())
    }

    pub fn read_manifest(&self, hash: &str) -> Result<Manifest> {
        let path = self.path(hash);
        let bytes =
            fs::read(&path).with_context(|| format!("reading manifest {}", path.display()))?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing manifest {}", path.display()))
    }

    /// Lay an artifact out as a directory under `dest` (which must not exist) using hard links to
    /// the objects (copies when linking fails). The objects are read-only, so stages cannot alter them.
    pub fn materialize(&self, manifest: &Manifest, dest: &Path) -> Result<()> {
        fs::create_dir_all(dest)?;
        for (rel, entry) in &manifest.files {
            let target = dest.join(rel);
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent)?;
            }
            let src = self.path(&entry.hash);
            if fs::hard_link(&src, &target).is_err() {
                fs::copy(&src, &target).with_context(|| {
                    format!("copying {} to {}", src.display(), target.display())
                })?;
            }
        }
        Ok(())
    }

    /// Every object hash currently on disk.
    pub fn list(&self) -> Result<Vec<(String, u64)>> {
        let mut out = Vec::new();
        let Ok(shards) = fs::read_dir(&self.objects) else {
            return Ok(out);
        };
        for shard in shards {
            let shard = shard?;
            if !shard.file_type()?.is_dir() {
                continue;
            }
            for obj in fs::read_dir(shard.path())? {
                let obj = obj?;
                let name = obj.file_name().to_string_lossy().into_owned();
                out.push((name, obj.metadata()?.len()));
            }
        }
        out.sort();
        Ok(out)
    }
}

/// Streaming blake3 of a file: `(hex hash, size)`.
pub fn hash_file(path: &Path) -> Result<(String, u64)> {
    hash_file_inner(path, false)
}

/// `fault`: pass the `blob-hash` crash point after the first chunk (ingestion only).
fn hash_file_inner(path: &Path, fault: bool) -> Result<(String, u64)> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        hasher.update(&buf[..n]);
        if fault && size == 0 {
            semiflow_stages::fault::point("blob-hash");
        }
        size += n as u64;
    }
    Ok((hasher.finalize().to_hex().to_string(), size))
}

/// Regular files under `dir`, with `/`-separated paths relative to `root`, sorted.
pub fn collect_files(root: &Path, dir: &Path, out: &mut Vec<(String, PathBuf)>) -> Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let ft = e.file_type()?;
        if ft.is_dir() {
            collect_files(root, &path, out)?;
        } else if ft.is_file() {
            let rel = path.strip_prefix(root).expect("under root");
            let rel: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            out.push((rel.join("/"), path));
        } else {
            bail!(
                "{} is neither a file nor a directory; stage outputs must be plain files",
                path.display()
            );
        }
    }
    Ok(())
}

/// fsync a directory so a rename inside it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync directory {}", dir.display()))
}

/// A fresh, unique path under `dir` (not created).
pub fn tempfile_in(dir: &Path, prefix: &str) -> Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(dir.join(format!("{prefix}-{}-{nanos}-{n}", std::process::id())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_dedupes_and_detects_damage() {
        let store = tempfile::tempdir().unwrap();
        let blobs = Blobs::new(store.path());
        let out = store.path().join("tmp/out");
        fs::create_dir_all(out.join("sub")).unwrap();
        fs::write(out.join("a.bin"), b"hello").unwrap();
        fs::write(out.join("sub/b.txt"), b"hello").unwrap();
        let (h, m) = blobs.ingest_dir(&out).unwrap();
        assert_eq!(m.files.len(), 2);
        assert_eq!(m.files["a.bin"], m.files["sub/b.txt"]);
        assert_eq!(blobs.read_manifest(&h).unwrap(), m);
        let e = &m.files["a.bin"];
        assert_eq!(blobs.check(&e.hash, 5, true), Ok(()));

        // Same content again: same artifact hash.
        fs::write(out.join("a.bin"), b"hello").unwrap();
        fs::write(out.join("sub/b.txt"), b"hello").unwrap();
        assert_eq!(blobs.ingest_dir(&out).unwrap().0, h);

        // Same-size corruption is only found by re-hashing.
        let p = blobs.path(&e.hash);
        let mut perm = fs::metadata(&p).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perm.set_readonly(false);
        fs::set_permissions(&p, perm).unwrap();
        fs::write(&p, b"jello").unwrap();
        assert_eq!(blobs.check(&e.hash, 5, false), Ok(()));
        assert!(matches!(
            blobs.check(&e.hash, 5, true),
            Err(BlobProblem::Corrupt { .. })
        ));
        fs::write(&p, b"hi").unwrap();
        assert!(matches!(
            blobs.check(&e.hash, 5, false),
            Err(BlobProblem::WrongSize { .. })
        ));

        let view = store.path().join("tmp/view");
        fs::write(&p, b"hello").unwrap();
        blobs.materialize(&m, &view).unwrap();
        assert_eq!(fs::read(view.join("sub/b.txt")).unwrap(), b"hello");
    }
}
