//! Named crash points for the crash-safety tests (issue: the store survives its index).
//!
//! With the `fault-injection` cargo feature (enabled only through the root package's
//! dev-dependency, so `cargo test` binaries have it and `cargo build --release` binaries do not),
//! `SEMIFLOW_FAULT=NAME` or `SEMIFLOW_FAULT=NAME@N` makes the process abort (no unwinding, no
//! destructors, no flushes: as close to a power cut as a test can get) the first or the N-th time
//! it reaches [`point`]`(NAME)`. Without the feature [`point`] is an empty inline function.
//!
//! The points (each placed where a crash could leave partial state behind):
//! - `stage-output-written`: a stage finished writing its outputs under `tmp/`, nothing ingested;
//! - `blob-hash`: mid-way through hashing an output file for ingestion;
//! - `blob-placed`: after the first output blob was renamed into `objects/`, the rest not yet;
//! - `before-record-file`: every blob and the manifest in place, no record file yet;
//! - `record-file-temp`: the record's temp file written and fsynced, not yet renamed;
//! - `record-file-written`: the record file published, the index not yet updated;
//! - `checkpoint-write`: half of an epoch checkpoint's temp file written;
//! - `dataset-write`: half of a dataset artifact file written;
//! - `gc`: after `semiflow gc` removed its first item;
//! - `repair`: `semiflow repair` half-way through filling the new index.

#[cfg(feature = "fault-injection")]
mod imp {
    use std::collections::BTreeMap;
    use std::sync::{Mutex, OnceLock};

    fn target() -> Option<&'static (String, usize)> {
        static T: OnceLock<Option<(String, usize)>> = OnceLock::new();
        T.get_or_init(|| {
            let v = std::env::var("SEMIFLOW_FAULT").ok()?;
            let (name, n) = match v.split_once('@') {
                Some((name, n)) => (name.to_string(), n.parse().unwrap_or(1)),
                None => (v, 1),
            };
            Some((name, n.max(1)))
        })
        .as_ref()
    }

    pub fn point(name: &str) {
        let Some((want, n)) = target() else { return };
        if want != name {
            return;
        }
        static HITS: Mutex<BTreeMap<String, usize>> = Mutex::new(BTreeMap::new());
        let mut hits = HITS.lock().unwrap_or_else(|e| e.into_inner());
        let count = hits.entry(name.to_string()).or_insert(0);
        *count += 1;
        if *count == *n {
            eprintln!("semiflow: fault injected at `{name}` (hit {count}); aborting");
            std::process::abort();
        }
    }
}

/// A named crash point; see the module docs.
#[cfg(feature = "fault-injection")]
pub fn point(name: &str) {
    imp::point(name)
}

/// A named crash point; compiled out without the `fault-injection` feature.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &str) {}

/// Whether crash points are compiled into this binary.
pub const ENABLED: bool = cfg!(feature = "fault-injection");
