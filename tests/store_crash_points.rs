//! Crash safety point by point: the real binary (built by `cargo test` with the `fault-injection`
//! crash points, see stages/src/fault.rs) runs the real stage kinds on the committed tiny CIFAR-10
//! images and aborts (SIGABRT: no unwinding, no destructors, no flushes) at each named point where
//! the store is being written. After each crash: every record file on disk names only intact blobs,
//! a plain rerun finishes, `audit --verify` passes, no temp file is left behind, and every node's
//! output is bit-identical to a run that was never interrupted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

mod real_support;
use real_support::{cifar_tiny, semiflow, Recipe};

/// dataset → split → pretrain (2 epochs, checkpointed) → finetune → distill → eval.
fn pipeline() -> String {
    Recipe {
        pretrain_epochs: 2,
        ..Recipe::cifar("crash", &cifar_tiny())
    }
    .toml()
}

const NODES: [&str; 6] = [
    "dataset.cifar",
    "split",
    "pretrain",
    "finetune",
    "distill",
    "eval",
];

struct Env {
    _dir: tempfile::TempDir,
    store: PathBuf,
    file: String,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        let file = dir.path().join("p.toml");
        std::fs::write(&file, pipeline()).unwrap();
        let file = file.to_str().unwrap().to_string();
        Env {
            _dir: dir,
            store,
            file,
        }
    }

    fn output(&self, args: &[&str], fault: Option<&str>) -> Output {
        let mut c = semiflow();
        c.args(args).arg("--store").arg(&self.store);
        if let Some(f) = fault {
            c.env("SEMIFLOW_FAULT", f);
        }
        c.output().unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args, None);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{args:?} failed:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    /// Run `args` with the crash point armed; it must abort there.
    fn crash(&self, args: &[&str], fault: &str) {
        use std::os::unix::process::ExitStatusExt;
        let out = self.output(args, Some(fault));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.signal(),
            Some(6),
            "{args:?} with SEMIFLOW_FAULT={fault} did not abort ({:?}); if the binary was rebuilt by \
             `cargo build` meanwhile, it lacks the crash points (rerun through `cargo test`):\n{stderr}",
            out.status
        );
        let name = fault.split('@').next().unwrap();
        assert!(
            stderr.contains(&format!("fault injected at `{name}`")),
            "{stderr}"
        );
    }

    fn run(&self) -> String {
        self.ok(&["run", &self.file])
    }

    /// Node → artifact hash, from `show NODE --json`.
    fn artifacts(&self) -> BTreeMap<String, String> {
        NODES
            .iter()
            .map(|n| {
                let v: serde_json::Value =
                    serde_json::from_str(&self.ok(&["show", n, "--json"])).unwrap();
                (n.to_string(), v["artifact"].as_str().unwrap().to_string())
            })
            .collect()
    }

    /// Every record file on disk names only blobs that are present, of the recorded size and
    /// hashing to their names: whatever the crash, no record points at a missing or partial blob.
    fn check_record_files(&self) -> usize {
        let mut n = 0;
        let Ok(shards) = std::fs::read_dir(self.store.join("records")) else {
            return 0;
        };
        for shard in shards {
            for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
                let path = f.unwrap().path();
                let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap())
                    .unwrap_or_else(|e| panic!("{} unreadable: {e}", path.display()));
                let mut blobs = vec![(
                    rec["artifact"].as_str().unwrap().to_string(),
                    rec["manifest_size"].as_u64().unwrap(),
                )];
                for e in rec["files"].as_object().unwrap().values() {
                    blobs.push((
                        e["hash"].as_str().unwrap().to_string(),
                        e["size"].as_u64().unwrap(),
                    ));
                }
                for (hash, size) in blobs {
                    let p = self.store.join("objects").join(&hash[..2]).join(&hash);
                    let bytes = std::fs::read(&p)
                        .unwrap_or_else(|_| panic!("{} names missing blob {hash}", path.display()));
                    assert_eq!(bytes.len() as u64, size, "{}", p.display());
                    assert_eq!(blake3::hash(&bytes).to_hex().as_str(), hash);
                }
                n += 1;
            }
        }
        n
    }

    /// Nothing a dead run wrote half-way is left: tmp/ empty, no `*.tmp` under resume/.
    fn assert_no_leftovers(&self) {
        let tmp: Vec<_> = std::fs::read_dir(self.store.join("tmp"))
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        assert!(tmp.is_empty(), "left in tmp/: {tmp:?}");
        for d in std::fs::read_dir(self.store.join("resume"))
            .unwrap()
            .flatten()
        {
            for f in std::fs::read_dir(d.path()).unwrap().flatten() {
                assert!(
                    f.path().extension().is_none_or(|e| e != "tmp"),
                    "left behind: {}",
                    f.path().display()
                );
            }
        }
    }

    /// After a crash: record files sound, rerun, audit, leftovers, bits.
    fn recover_and_compare(&self) -> String {
        self.check_record_files();
        let out = self.run();
        assert!(out.lines().last().unwrap().ends_with("0 failed"), "{out}");
        self.assert_no_leftovers();
        let audit = self.ok(&["audit", &self.file, "--verify"]);
        assert!(audit.contains("audit: pass"), "{audit}");
        assert_eq!(self.check_record_files(), 6);
        assert_eq!(&self.artifacts(), reference());
        // Once more: everything cached.
        let again = self.run();
        assert!(
            again
                .lines()
                .last()
                .unwrap()
                .ends_with("0 ran, 6 cached, 0 failed"),
            "{again}"
        );
        out
    }
}

/// Artifacts of an uninterrupted run.
fn reference() -> &'static BTreeMap<String, String> {
    static R: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    R.get_or_init(|| {
        let env = Env::new();
        env.run();
        env.artifacts()
    })
}

/// Crash a `run` at `fault`, then recover.
fn crash_run_at(fault: &str) -> String {
    let _ = reference();
    let env = Env::new();
    env.crash(&["run", &env.file], fault);
    env.recover_and_compare()
}

#[test]
fn crash_after_stage_output_written() {
    crash_run_at("stage-output-written");
    crash_run_at("stage-output-written@3");
}

#[test]
fn crash_mid_blob_hash() {
    crash_run_at("blob-hash");
    crash_run_at("blob-hash@4");
}

#[test]
fn crash_after_first_blob_placed() {
    crash_run_at("blob-placed@2");
}

#[test]
fn crash_after_blobs_before_record_file() {
    crash_run_at("before-record-file@3");
}

#[test]
fn crash_with_record_temp_file_written() {
    crash_run_at("record-file-temp@2");
}

#[test]
fn crash_after_record_file_before_index_keeps_the_node() {
    // The record file is the truth: the node that crashed right after writing it is a cache hit
    // on the rerun (4 nodes left to build of 6), not built again.
    let out = crash_run_at("record-file-written@2");
    assert!(
        out.lines()
            .last()
            .unwrap()
            .ends_with("4 ran, 2 cached, 0 failed"),
        "{out}"
    );
}

#[test]
fn crash_mid_epoch_checkpoint_write() {
    crash_run_at("checkpoint-write@2");
}

#[test]
fn crash_mid_dataset_write() {
    crash_run_at("dataset-write");
}

#[test]
fn crash_during_gc() {
    let _ = reference();
    let env = Env::new();
    // Garbage for gc: orphan blobs and temp files of a crashed run.
    env.crash(&["run", &env.file], "blob-placed@3");
    env.crash(&["gc"], "gc");
    let gc = env.ok(&["gc"]);
    assert!(gc.contains("gc: freed"), "{gc}");
    env.recover_and_compare();
}

#[test]
fn crash_during_repair_and_a_lost_or_damaged_index() {
    let _ = reference();
    let env = Env::new();
    env.run();
    env.crash(&["repair"], "repair");
    // The old index is still in place (the new one was being built beside it).
    let status = env.ok(&["status", &env.file]);
    assert_eq!(
        status.lines().filter(|l| l.starts_with("cached")).count(),
        6,
        "{status}"
    );
    let repaired = env.ok(&["repair"]);
    assert!(
        repaired.contains("index rebuilt from 6 records"),
        "{repaired}"
    );

    // A damaged one (sled reports it once the index has a snapshot, as after `repair`) is an error that names the cure, and `repair` applies it.
    let db = env.store.join("index/db");
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let junk: Vec<u8> = (0..200_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&db, junk).unwrap();
    let out = env.output(&["status", &env.file], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot be used"), "{stderr}");
    assert!(stderr.contains("semiflow repair --store"), "{stderr}");
    let repaired = env.ok(&["repair"]);
    assert!(repaired.contains("old index moved to"), "{repaired}");
    // A deleted index is rebuilt on open.
    std::fs::remove_dir_all(env.store.join("index")).unwrap();
    let again = env.run();
    assert!(again.ends_with("0 ran, 6 cached, 0 failed\n"), "{again}");

    let out = env.recover_and_compare();
    assert!(out.ends_with("0 ran, 6 cached, 0 failed\n"), "{out}");
    // `show NODE` (the latest record per name) survived both rebuilds.
    assert_eq!(env.artifacts(), *reference());
}

/// Unmounts the small tmpfs when the test ends, however it ends.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_is_a_clear_error_and_nothing_half_written_stays() {
    let _ = reference();
    let env = Env::new();
    let mnt = env.store.parent().unwrap().join("small-disk");
    std::fs::create_dir_all(&mnt).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1600k", "tmpfs"])
        .arg(&mnt)
        .output();
    if !mounted.as_ref().is_ok_and(|o| o.status.success()) {
        let why = "SKIPPED: cannot mount a 1.6 MB tmpfs here (needs root and mount rights)";
        assert!(std::env::var_os("CI").is_none(), "{why}; CI must run it");
        eprintln!("{why}");
        return;
    }
    let _guard = Mount(mnt.clone());
    let small = Env {
        _dir: tempfile::tempdir().unwrap(),
        store: mnt.join("store"),
        file: env.file.clone(),
    };
    let out = small.output(&["run", &small.file], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(stderr.contains("failed"), "{stderr}");
    small.assert_no_leftovers();
    small.check_record_files();
    let grown = Command::new("mount")
        .args(["-o", "remount,size=64m"])
        .arg(&mnt)
        .status()
        .unwrap();
    assert!(grown.success());
    small.recover_and_compare();
}
