//! Single-owner lock for a store: sled allows one process per database.
//!
//! Invariants:
//! - The lock is an OS advisory lock (`flock`) on `<store>/LOCK`, taken before sled is opened and
//!   held until the [`StoreLock`] is dropped. The OS releases it when the holder dies (even by
//!   kill -9), so a lock left by a dead process is taken over without any cleanup.
//! - The file's content (`pid host`) is informational: it lets a waiting process say who holds it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// What to do when another process holds the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitPolicy {
    Wait,
    Fail,
}

/// Held for as long as the store is open.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
    path: PathBuf,
}

impl StoreLock {
    /// Take the lock on `store_root`, waiting (and saying who holds it) or failing per `policy`.
    pub fn acquire(store_root: &Path, policy: WaitPolicy) -> Result<StoreLock> {
        let path = store_root.join("LOCK");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening lock file {}", path.display()))?;
        let mut announced = false;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {
                    let holder = read_holder(&mut file);
                    let msg = format!("store {} is in use by {holder}", store_root.display());
                    match policy {
                        WaitPolicy::Fail => {
                            bail!("{msg} (--no-wait given; retry when it finishes)")
                        }
                        WaitPolicy::Wait if !announced => {
                            eprintln!("{msg}; waiting (use --no-wait to fail)");
                            announced = true;
                        }
                        WaitPolicy::Wait => {}
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(e).with_context(|| format!("locking {}", path.display()))
                }
            }
        }
        let host = hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into());
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        write!(file, "{} {}", std::process::id(), host)?;
        file.flush()?;
        Ok(StoreLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `pid N on host H` from the lock file, or a vaguer phrase when it cannot be read.
fn read_holder(file: &mut File) -> String {
    let mut s = String::new();
    if file.seek(SeekFrom::Start(0)).is_ok() && file.read_to_string(&mut s).is_ok() {
        let mut parts = s.split_whitespace();
        if let (Some(pid), Some(host)) = (parts.next(), parts.next()) {
            return format!("pid {pid} on host {host}");
        }
    }
    "another process".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_fails_without_wait_and_succeeds_after_release() {
        let dir = tempfile::tempdir().unwrap();
        let first = StoreLock::acquire(dir.path(), WaitPolicy::Fail).unwrap();
        let err = StoreLock::acquire(dir.path(), WaitPolicy::Fail).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        drop(first);
        StoreLock::acquire(dir.path(), WaitPolicy::Fail).unwrap();
    }
}
