//! Dataset fingerprints: a hash of every file's (relative path, size, content hash) under a root.
//!
//! Content hashes are memoized in the index by (absolute path, size, mtime in ns), so fingerprinting
//! an unchanged 60,000-file folder costs one `stat` per file and reads no file content.

use std::path::Path;
use std::time::UNIX_EPOCH;

use anyhow::{bail, Context, Result};

use super::blobs::{collect_files, hash_file};
use super::index::Index;

/// Fingerprint the dataset under `root`; a single file (a model file an `import` node reads)
/// counts as a root holding just that file: its name, size and content, not its directory.
pub fn dataset_fingerprint(index: &Index, root: &Path) -> Result<String> {
    let mut files = Vec::new();
    if root.is_file() {
        let abs = root
            .canonicalize()
            .with_context(|| format!("resolving {}", root.display()))?;
        let name = abs
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        files.push((name, abs));
    } else if !root.is_dir() {
        bail!(
            "dataset root {} is not a directory; fix `root` in the pipeline's [datasets] table",
            root.display()
        );
    } else {
        let abs = root
            .canonicalize()
            .with_context(|| format!("resolving {}", root.display()))?;
        collect_files(&abs, &abs, &mut files)?;
    }
    let mut hasher = blake3::Hasher::new();
    let mut dirty = false;
    for (rel, path) in files {
        let meta = std::fs::metadata(&path)?;
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let memo_key = format!("{}\0{}\0{}", path.display(), meta.len(), mtime);
        let hash = match index.fingerprint_memo(memo_key.as_bytes())? {
            Some(h) => h,
            None => {
                let (h, _) = hash_file(&path)?;
                index.set_fingerprint_memo(memo_key.as_bytes(), &h)?;
                dirty = true;
                h
            }
        };
        // Length-prefixed fields: no two file lists encode to the same bytes.
        for field in [
            rel.as_bytes(),
            meta.len().to_string().as_bytes(),
            hash.as_bytes(),
        ] {
            hasher.update(&(field.len() as u64).to_le_bytes());
            hasher.update(field);
        }
    }
    if dirty {
        index.flush()?;
    }
    Ok(hasher.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_tracks_content_and_memoizes() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir_all(data.join("cls")).unwrap();
        std::fs::write(data.join("cls/a.png"), b"aaa").unwrap();
        let db = sled::Config::new().temporary(true).open().unwrap();
        let index = Index::open(db).unwrap();
        let f1 = dataset_fingerprint(&index, &data).unwrap();
        assert_eq!(dataset_fingerprint(&index, &data).unwrap(), f1);
        std::fs::write(data.join("cls/b.png"), b"b").unwrap();
        let f2 = dataset_fingerprint(&index, &data).unwrap();
        assert_ne!(f1, f2);
        // A memo hit is trusted: same path, size and mtime means the same content.
        let abs = data.canonicalize().unwrap().join("cls/b.png");
        let meta = std::fs::metadata(&abs).unwrap();
        let mtime = meta
            .modified()
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let memo_key = format!("{}\0{}\0{}", abs.display(), meta.len(), mtime);
        assert!(index
            .fingerprint_memo(memo_key.as_bytes())
            .unwrap()
            .is_some());
    }
}
