//! The Slurm executor against a real Slurm cluster (`scripts/slurm-up.sh` brings up a one-node
//! cluster on localhost; .ci/run does it before the tests). Without a cluster these tests say why
//! and skip, except under CI=true, where they fail.

mod engine_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

mod polling;

use engine_support::{finish, Env, Run, PIPELINE};

/// Tests that take the cluster's only node down hold this for writing; every other test holds it
/// for reading, so none of its jobs is killed by another test.
static CLUSTER: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    CLUSTER.read().unwrap_or_else(|e| e.into_inner())
}

fn exclusive() -> RwLockWriteGuard<'static, ()> {
    CLUSTER.write().unwrap_or_else(|e| e.into_inner())
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// `scontrol show config`'s value of `key`.
fn slurm_config(key: &str) -> String {
    let o = Command::new("scontrol")
        .args(["show", "config"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.trim().to_string())
        })
        .unwrap_or_default()
}

/// Whether the cluster has working accounting (`scripts/slurm-up.sh` brings it up where slurmdbd
/// and mariadb-server are installed); otherwise print why and skip the sacct parts (fail under
/// CI=true, where .ci/run brings it up).
fn accounting_ready() -> bool {
    let storage = slurm_config("AccountingStorageType");
    let why = if storage.is_empty() || storage == "accounting_storage/none" {
        format!("no accounting (AccountingStorageType = {storage:?}): apt-get install slurmdbd mariadb-server, then scripts/slurm-up.sh --accounting")
    } else {
        match Command::new("sacct").args(["-n", "-X", "-j", "1"]).output() {
            Ok(o) if o.status.success() => return true,
            Ok(o) => format!("sacct fails: {}", String::from_utf8_lossy(&o.stderr).trim()),
            Err(e) => format!("sacct cannot run: {e}"),
        }
    };
    if under_ci() {
        panic!("Slurm accounting tests cannot be skipped under CI=true: {why}");
    }
    eprintln!("SKIPPED (the sacct part of a Slurm test): {why}");
    false
}

/// The method line the coordinator logs at start: `sacct` or `squeue`.
fn method_of(r: &Run) -> &'static str {
    let line = r
        .stderr
        .lines()
        .find(|l| l.contains("Slurm job states: "))
        .unwrap_or_else(|| panic!("no state-method line:\n{}", r.stderr));
    if line.contains("Slurm job states: sacct") {
        "sacct"
    } else if line.contains("Slurm job states: squeue") {
        "squeue"
    } else {
        panic!("{line}")
    }
}

/// The method a default (`auto`) run must pick here.
fn auto_method() -> &'static str {
    if accounting_ready() {
        "sacct"
    } else {
        "squeue"
    }
}

/// The failure line of `node` in a run's stderr, up to the end of the message.
fn failure_line(r: &Run, node: &str) -> String {
    r.stderr
        .lines()
        .find(|l| l.contains(&format!("node {node} failed")))
        .unwrap_or_else(|| panic!("no failure line for {node}:\n{}", r.stderr))
        .to_string()
}

/// The Slurm log path a failure line names (`...; log: PATH`).
fn log_named(line: &str) -> PathBuf {
    let p = line
        .split("log: ")
        .nth(1)
        .unwrap_or_else(|| panic!("no log in {line}"))
        .split_whitespace()
        .next()
        .unwrap();
    PathBuf::from(p)
}

/// The name of the cluster's node.
fn slurm_node() -> String {
    let o = Command::new("sinfo")
        .args(["-h", "-N", "-o", "%N"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .next()
        .unwrap()
        .trim()
        .to_string()
}

/// Whether a node state of `sinfo -o %T` can run jobs. Flags follow the state: `mixed-` (planned
/// by the backfill scheduler), `idle*` (not responding) is not up.
fn node_up(state: &str) -> bool {
    let s = state.trim();
    !s.ends_with('*')
        && matches!(
            s.trim_end_matches(|c: char| !c.is_ascii_alphabetic()),
            "idle" | "mixed" | "allocated" | "completing" | "planned"
        )
}

/// Whether a Slurm cluster answers; otherwise print why and skip (fail under CI=true).
fn slurm_ready() -> bool {
    let why = match Command::new("sinfo").args(["-h", "-N", "-o", "%T"]).output() {
        Err(e) => format!(
            "`sinfo` cannot run ({e}): apt-get install slurmctld slurmd slurm-client munge, then scripts/slurm-up.sh"
        ),
        Ok(o) if !o.status.success() => format!(
            "the Slurm cluster is down (sinfo: {}): run scripts/slurm-up.sh as root",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Ok(o) => {
            let states = String::from_utf8_lossy(&o.stdout).to_string();
            if states.lines().any(node_up) {
                return true;
            }
            format!("no Slurm node is up (sinfo says {states:?}): run scripts/slurm-up.sh")
        }
    };
    if under_ci() {
        panic!("Slurm tests cannot be skipped under CI=true: {why}");
    }
    eprintln!("SKIPPED (Slurm executor test): {why}");
    false
}

const FAST: &[&str] = &["--executor", "slurm", "--poll-interval", "0.2"];

fn slurm_run(env: &Env, file: &Path, extra: &[&str]) -> Run {
    let mut args = vec!["run", file.to_str().unwrap()];
    args.extend_from_slice(FAST);
    args.extend_from_slice(extra);
    env.run(&args)
}

/// Node → artifact hash of every record `show --json` finds for `nodes`.
fn artifacts(env: &Env, nodes: &[&str]) -> BTreeMap<String, String> {
    nodes
        .iter()
        .map(|n| {
            let r = env.record(n);
            (n.to_string(), r["artifact"].as_str().unwrap().to_string())
        })
        .collect()
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

/// The journaled jobs of a store: (node, job id, attempt).
fn journal(store: &Path) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(store.join("jobs"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(b) = std::fs::read(e.path().join("job.json")) {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b) {
                out.push((
                    v["node"].as_str().unwrap().to_string(),
                    v["job_id"].as_str().unwrap().to_string(),
                    v["attempt"].as_u64().unwrap(),
                ));
            }
        }
    }
    out.sort();
    out
}

fn squeue_state(job: &str) -> String {
    let o = Command::new("squeue")
        .args(["-h", "-t", "all", "-o", "%T", "-j", job])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn toy_pipeline_through_slurm_matches_local_and_caches() {
    if !slurm_ready() {
        return;
    }
    let _cluster = shared();
    let nodes = ["pre", "ft", "other", "eval"];
    let local = Env::new();
    let f = local.write("p.toml", PIPELINE);
    local.run(&["run", f.to_str().unwrap(), "-j", "2"]).ok();

    // The default method (sacct where accounting works) and squeue, at the same time.
    let env = Env::new();
    let f = env.write("p.toml", PIPELINE);
    let sq = Env::new();
    let sqf = sq.write("p.toml", PIPELINE);
    let (r, rs) = std::thread::scope(|s| {
        let other = s.spawn(|| slurm_run(&sq, &sqf, &["--state-query", "squeue"]).ok());
        (slurm_run(&env, &f, &[]).ok(), other.join().unwrap())
    });
    assert_eq!(r.summary(), (4, 4, 0, 0), "{}", r.stderr);
    assert_eq!(count(&r.stderr, "submitted Slurm job"), 4, "{}", r.stderr);
    assert_eq!(method_of(&r), auto_method(), "{}", r.stderr);
    assert_eq!(artifacts(&env, &nodes), artifacts(&local, &nodes));
    assert_eq!(rs.summary(), (4, 4, 0, 0), "{}", rs.stderr);
    assert_eq!(method_of(&rs), "squeue", "{}", rs.stderr);
    assert_eq!(artifacts(&sq, &nodes), artifacts(&local, &nodes));

    // Provenance names the executor, the job, the host and the partition.
    let rec = env.record("eval");
    let p = &rec["provenance"];
    assert_eq!(p["executor"], "slurm", "{p}");
    assert!(p["job_id"].as_str().unwrap().parse::<u64>().is_ok(), "{p}");
    assert_eq!(p["partition"], "debug", "{p}");
    assert!(!p["host"].as_str().unwrap().is_empty());
    let shown = env.run(&["show", "eval"]).ok();
    assert!(
        shown.stdout.contains("executor  slurm (job "),
        "{}",
        shown.stdout
    );
    // `log` shows the job's node log and Slurm's own output file.
    let log = env.run(&["log", "pre"]).ok();
    assert!(log.stdout.contains("Slurm job"), "{}", log.stdout);
    assert!(log.stdout.contains("=== Slurm output "), "{}", log.stdout);
    // Nothing is left journaled; job dirs of committed nodes are gone.
    assert!(journal(&env.store).is_empty());

    // A second run submits nothing.
    let again = slurm_run(&env, &f, &[]).ok();
    assert_eq!(again.summary(), (4, 0, 4, 0));
    assert_eq!(count(&again.stderr, "submitted Slurm job"), 0);
}

#[test]
fn executor_table_and_resources_are_not_part_of_the_key() {
    if !slurm_ready() {
        return;
    }
    let _cluster = shared();
    let text = format!(
        "{PIPELINE}\n[executor]\nkind = \"slurm\"\npoll_interval = 0.2\nmax_jobs = 1\n\n[defaults.toy-train]\nresources = {{ cpus = 1, mem = \"100M\", time = \"5m\" }}\n"
    );
    let env = Env::new();
    let f = env.write("p.toml", &text);
    let r = env.run(&["run", f.to_str().unwrap()]).ok();
    assert_eq!(r.summary(), (4, 4, 0, 0), "{}", r.stderr);
    assert_eq!(count(&r.stderr, "submitted Slurm job"), 4, "{}", r.stderr);
    // Other resources (and the local executor) find the same keys cached.
    let r = env
        .run(&[
            "run",
            f.to_str().unwrap(),
            "--executor",
            "local",
            "--set",
            "pre.resources={ cpus = 2, time = \"1h\" }",
        ])
        .ok();
    assert_eq!(r.summary(), (4, 0, 4, 0), "{}", r.stderr);
    // A bad resource is a pipeline error at its line.
    let r = env.run(&[
        "validate",
        f.to_str().unwrap(),
        "--set",
        "pre.resources={ time = \"soon\" }",
    ]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("resources.time"), "{}", r.stderr);
    // So are bad executor keys, at their line and column.
    let bad = env.write(
        "bad.toml",
        &format!(
            "{PIPELINE}\n[executor]\nstate_query = \"magic\"\nunknown_state_timeout = \"soon\"\n"
        ),
    );
    let r = env.run(&["validate", bad.to_str().unwrap()]);
    assert_ne!(r.code, 0);
    let lines = PIPELINE.lines().count() + 3;
    for (key, line) in [("state_query", lines), ("unknown_state_timeout", lines + 1)] {
        assert!(
            r.stderr.contains(&format!("bad.toml:{line}:"))
                && r.stderr.contains(&format!("executor.{key}")),
            "{key}:\n{}",
            r.stderr
        );
    }
}

#[test]
fn real_kinds_through_slurm_give_the_local_hashes() {
    if !slurm_ready() {
        return;
    }
    let _cluster = shared();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/cifar10-tiny");
    let text = format!(
        r#"
[pipeline]
name = "slurm-real"
seed = 0

[datasets.cifar]
format = "image-folder"
root = "{root}"

[nodes.split]
kind = "split"
data = "cifar"
per_class = 3

[nodes.pretrain]
kind = "pretrain"
data = "cifar"
model = {{ depth = 10, width = 0.125 }}
epochs = 1
batch_size = 64
knn_monitor = {{ queries = 50, bank = 200, k = 20 }}

[nodes.finetune]
kind = "finetune"
from = "pretrain"
labels = "split"
data = "cifar"
epochs = 1
batch_size = 64

[nodes.eval]
kind = "eval"
data = "cifar"
models = ["finetune"]
"#,
        root = root.display()
    );
    let nodes = ["dataset.cifar", "split", "pretrain", "finetune", "eval"];
    let local = Env::new();
    let f = local.write("p.toml", &text);
    local.run(&["run", f.to_str().unwrap()]).ok();
    let env = Env::new();
    let f = env.write("p.toml", &text);
    let r = slurm_run(&env, &f, &[]).ok();
    assert_eq!(r.summary(), (5, 5, 0, 0), "{}", r.stderr);
    assert_eq!(count(&r.stderr, "submitted Slurm job"), 5, "{}", r.stderr);
    assert_eq!(artifacts(&env, &nodes), artifacts(&local, &nodes));
    assert_eq!(
        env.record("eval")["metrics"],
        local.record("eval")["metrics"]
    );
    let again = slurm_run(&env, &f, &[]).ok();
    assert_eq!(again.summary(), (5, 0, 5, 0));
    assert_eq!(count(&again.stderr, "submitted Slurm job"), 0);
}

#[test]
fn failed_and_timed_out_jobs_are_reported_and_block_descendants() {
    if !slurm_ready() {
        return;
    }
    let _cluster = shared();
    let text = r#"
[pipeline]
name = "faults"

[nodes.bad]
kind = "toy-train"
epochs = 3
fail_at_epoch = 1

[nodes.bad_child]
kind = "toy-train"
from = "bad"

[nodes.slow]
kind = "toy-train"
epochs = 2
sleep_ms = 600000
resources = { time = "1" }

[nodes.slow_child]
kind = "toy-train"
from = "slow"

[nodes.good]
kind = "toy-train"
epochs = 2
"#;
    // The default method (sacct where accounting works) and squeue, at the same time: the same
    // reports.
    let env = Env::new();
    let f = env.write("p.toml", text);
    let sq = Env::new();
    let sqf = sq.write("p.toml", text);
    let t = Instant::now();
    let (r, rs) = std::thread::scope(|s| {
        let other = s.spawn(|| slurm_run(&sq, &sqf, &["--state-query", "squeue"]));
        (slurm_run(&env, &f, &[]), other.join().unwrap())
    });
    assert!(t.elapsed() < Duration::from_secs(240), "{:?}", t.elapsed());
    assert_eq!(method_of(&r), auto_method(), "{}", r.stderr);
    assert_eq!(method_of(&rs), "squeue", "{}", rs.stderr);
    for (env, r) in [(&env, &r), (&sq, &rs)] {
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert_eq!(r.summary(), (5, 1, 0, 2), "{}", r.stderr);
        let bad = failure_line(r, "bad");
        assert!(bad.contains("Slurm state FAILED on "), "{bad}");
        assert!(bad.contains("exit code 1:0"), "{bad}");
        let slow = failure_line(r, "slow");
        assert!(slow.contains("Slurm state TIMEOUT on "), "{slow}");
        assert!(slow.contains("raise resources.time"), "{slow}");
        for l in [&bad, &slow] {
            assert!(l.contains("Slurm job "), "{l}");
        }
        // Each report names the job's log, which exists and tells why.
        let bad_log = std::fs::read_to_string(log_named(&bad)).unwrap();
        assert!(bad_log.contains("failing at epoch 1"), "{bad_log}");
        let slow_log = std::fs::read_to_string(log_named(&slow)).unwrap();
        assert!(slow_log.contains("TIME LIMIT"), "{slow_log}");
        assert!(r.stderr.contains("blocked: bad_child"), "{}", r.stderr);
        assert!(r.stderr.contains("blocked: slow_child"), "{}", r.stderr);
        assert_eq!(r.built(), vec!["good".to_string()]);
        for n in ["bad", "slow", "bad_child"] {
            assert_ne!(env.run(&["show", n]).code, 0, "{n} has a record");
        }
        assert!(journal(&env.store).is_empty());
    }
    assert_eq!(
        artifacts(&env, &["good"]),
        artifacts(&sq, &["good"]),
        "the two methods built different bits"
    );
}

#[test]
fn scancel_mid_run_then_retry_resumes_bit_identical() {
    if !slurm_ready() {
        return;
    }
    let _cluster = shared();
    let text = r#"
[pipeline]
name = "retry"

[nodes.train]
kind = "toy-train"
epochs = 6
sleep_ms = 1000
"#;
    let local = Env::new();
    let f = local.write("p.toml", text);
    local.run(&["run", f.to_str().unwrap()]).ok();

    let env = Env::new();
    let f = env.write("p.toml", text);
    let mut args = vec!["run", f.to_str().unwrap(), "--retries", "1"];
    args.extend_from_slice(FAST);
    let child = env
        .cmd(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the job to have checkpointed at least two epochs, then cancel it.
    let ckpt = || {
        std::fs::read_dir(env.store.join("resume"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|d| d.path().join("toy.ckpt").exists())
    };
    wait_for_slurm("the first job", Duration::from_secs(60), || {
        journal(&env.store).len() == 1
    });
    let (_, job, _) = journal(&env.store)[0].clone();
    wait_for_slurm("an epoch checkpoint", Duration::from_secs(60), ckpt);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(Command::new("scancel")
        .arg(&job)
        .status()
        .unwrap()
        .success());
    let r = finish(child.wait_with_output().unwrap());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.summary(), (1, 1, 0, 0));
    assert!(
        r.stderr
            .contains(&format!("Slurm job {job} ended CANCELLED")),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("resubmitting"), "{}", r.stderr);
    assert!(r.stderr.contains("(attempt 2)"), "{}", r.stderr);
    let log = env.run(&["log", "train"]).ok();
    assert!(
        log.stdout.contains("resuming from epoch checkpoint"),
        "{}",
        log.stdout
    );
    let rec = env.record("train");
    assert_ne!(rec["provenance"]["job_id"].as_str().unwrap(), job);
    assert_eq!(artifacts(&env, &["train"]), artifacts(&local, &["train"]));
    assert_eq!(rec["metrics"], local.record("train")["metrics"]);
}

#[test]
fn coordinator_killed_with_kill_9_adopts_its_jobs() {
    if !slurm_ready() {
        return;
    }
    let _cluster = shared();
    let text = r#"
[pipeline]
name = "adopt"

[nodes.a]
kind = "toy-train"
epochs = 3
sleep_ms = 1000

[nodes.b]
kind = "toy-train"
epochs = 3
sleep_ms = 1000
lr = 0.02

[nodes.c]
kind = "toy-train"
epochs = 1
from = "a"

[nodes.eval]
kind = "toy-eval"
models = ["b", "c"]
"#;
    let local = Env::new();
    let f = local.write("p.toml", text);
    local.run(&["run", f.to_str().unwrap()]).ok();

    let env = Env::new();
    let f = env.write("p.toml", text);
    let mut args = vec!["run", f.to_str().unwrap()];
    args.extend_from_slice(FAST);
    let mut child = env
        .cmd(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_slurm("a and b submitted", Duration::from_secs(60), || {
        journal(&env.store).len() == 2
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let jobs = journal(&env.store);
    // Meanwhile `status` shows the journaled jobs with their Slurm states.
    let st = env.run(&["status", f.to_str().unwrap(), "--json"]).ok();
    let rows: Vec<serde_json::Value> = serde_json::from_str(&st.stdout).unwrap();
    for (node, job, _) in &jobs {
        let row = rows.iter().find(|r| r["node"] == node.as_str()).unwrap();
        let reasons = row["reasons"].to_string();
        assert!(
            reasons.contains(&format!("Slurm job {job} ")),
            "{}",
            st.stdout
        );
    }
    let r = slurm_run(&env, &f, &[]).ok();
    assert_eq!(r.summary(), (4, 4, 0, 0), "{}", r.stderr);
    for (node, job, _) in &jobs {
        assert!(
            r.stderr
                .contains(&format!("{node}: adopting Slurm job {job} ")),
            "{}",
            r.stderr
        );
        assert_eq!(env.record(node)["provenance"]["job_id"], job.as_str());
    }
    // Only c and eval were submitted by the second coordinator; every node ran exactly once.
    assert_eq!(count(&r.stderr, "submitted Slurm job"), 2, "{}", r.stderr);
    for n in ["a", "b", "c", "eval"] {
        let log = env.run(&["log", n]).ok();
        assert_eq!(count(&log.stdout, "=== node "), 1, "{n}:\n{}", log.stdout);
    }
    let all = ["a", "b", "c", "eval"];
    assert_eq!(artifacts(&env, &all), artifacts(&local, &all));
}

#[test]
fn worker_killed_before_its_manifest_commits_nothing() {
    if !slurm_ready() {
        return;
    }
    let _cluster = shared();
    let env = Env::new();
    let f = env.write("p.toml", PIPELINE);
    // The worker aborts after its blobs are in objects/, before result.json.
    let mut args = vec!["run", f.to_str().unwrap(), "--only", "other"];
    args.extend_from_slice(FAST);
    let r = env.run_with(&args, &[("SEMIFLOW_FAULT", "worker-blobs-ingested")]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("without a result"), "{}", r.stderr);
    assert_ne!(env.run(&["show", "other"]).code, 0);
    let r = slurm_run(&env, &f, &["--only", "other"]).ok();
    assert_eq!(r.summary(), (1, 1, 0, 0));
    let local = Env::new();
    let lf = local.write("p.toml", PIPELINE);
    local
        .run(&["run", lf.to_str().unwrap(), "--only", "other"])
        .ok();
    assert_eq!(artifacts(&env, &["other"]), artifacts(&local, &["other"]));
}

#[test]
fn ctrl_c_cancels_the_submitted_jobs() {
    if !slurm_ready() {
        return;
    }
    let _cluster = shared();
    let text = r#"
[pipeline]
name = "interrupt"

[nodes.long]
kind = "toy-train"
epochs = 100
sleep_ms = 1000
"#;
    let env = Env::new();
    let f = env.write("p.toml", text);
    let mut args = vec!["run", f.to_str().unwrap()];
    args.extend_from_slice(FAST);
    let child = env
        .cmd(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_slurm("the job", Duration::from_secs(60), || {
        journal(&env.store).len() == 1
    });
    let (_, job, _) = journal(&env.store)[0].clone();
    wait_for_slurm("the job running", Duration::from_secs(60), || {
        squeue_state(&job) == "RUNNING"
    });
    // While the coordinator holds the store, `status` lists its jobs and their Slurm states.
    let st = env.run(&["status", f.to_str().unwrap()]).ok();
    assert!(st.stdout.contains("its Slurm jobs:"), "{}", st.stdout);
    let row = st.stdout.lines().find(|l| l.starts_with("long ")).unwrap();
    assert!(
        row.contains(&format!("job {job} ")) && row.contains("RUNNING"),
        "{row}"
    );
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let r = finish(child.wait_with_output().unwrap());
    assert_eq!(r.code, 130, "{}", r.stderr);
    assert!(
        r.stderr.contains(&format!("cancelling Slurm jobs {job}")),
        "{}",
        r.stderr
    );
    wait_for_slurm("the job cancelled", Duration::from_secs(30), || {
        let s = squeue_state(&job);
        s == "CANCELLED" || s.is_empty()
    });
    assert!(journal(&env.store).is_empty());
}

#[test]
fn out_of_memory_is_reported_with_slurms_state_and_retried() {
    if !slurm_ready() {
        return;
    }
    let _cluster = shared();
    // `hog` holds 300 MB under a 100 MB limit; `fits` runs under the same limit.
    let text = r#"
[pipeline]
name = "oom"

[nodes.hog]
kind = "toy-train"
epochs = 2
alloc_mb = 300
resources = { mem = "100M" }

[nodes.fits]
kind = "toy-train"
epochs = 2
resources = { mem = "100M" }
"#;
    // Slurm reports OUT_OF_MEMORY where its cgroup plugin enforces the limit (scripts/slurm-up.sh
    // sets it up where a cgroup v1 memory controller exists, as on this project's machines);
    // with slurmstepd's sampling (OverMemoryKill) the job ends FAILED.
    // Either way the limit is Slurm's own enforcement; a CI machine without a cgroup v1 memory
    // controller checks the FAILED path rather than failing the whole suite.
    let cgroup = slurm_config("TaskPlugin").contains("task/cgroup");
    if !cgroup {
        eprintln!(
            "no task/cgroup on this cluster: the over-limit job must end FAILED (OverMemoryKill)"
        );
    }
    let state = if cgroup { "OUT_OF_MEMORY" } else { "FAILED" };
    let env = Env::new();
    let f = env.write("p.toml", text);
    let sq = Env::new();
    let sqf = sq.write("p.toml", text);
    let (r, rs) = std::thread::scope(|s| {
        let other =
            s.spawn(|| slurm_run(&sq, &sqf, &["--retries", "1", "--state-query", "squeue"]));
        (
            slurm_run(&env, &f, &["--retries", "1"]),
            other.join().unwrap(),
        )
    });
    assert_eq!(method_of(&r), auto_method(), "{}", r.stderr);
    assert_eq!(method_of(&rs), "squeue", "{}", rs.stderr);
    for r in [&r, &rs] {
        assert_eq!(r.code, 1, "{}", r.stderr);
        assert_eq!(r.summary(), (2, 1, 0, 1), "{}", r.stderr);
        assert_eq!(r.built(), vec!["fits".to_string()]);
        // The first job ended with Slurm's state and was resubmitted once; the second is
        // reported with its state, its job id, what to do, and its log.
        let first = r
            .stderr
            .lines()
            .find(|l| l.contains("hog: Slurm job ") && l.contains("resubmitting"))
            .unwrap_or_else(|| panic!("no resubmission:\n{}", r.stderr));
        assert!(first.contains(&format!(" ended {state} on ")), "{first}");
        assert!(first.contains("(attempt 1 of 2)"), "{first}");
        assert!(r.stderr.contains("(attempt 2)"), "{}", r.stderr);
        let line = failure_line(r, "hog");
        assert!(line.contains("(attempt 2)"), "{line}");
        assert!(line.contains(&format!("Slurm state {state} on ")), "{line}");
        if cgroup {
            assert!(line.contains("raise resources.mem"), "{line}");
        }
        let log = std::fs::read_to_string(log_named(&line)).unwrap();
        assert!(
            log.contains("oom-kill") || log.contains("exceeded memory limit"),
            "{log}"
        );
    }
    assert_eq!(artifacts(&env, &["fits"]), artifacts(&sq, &["fits"]));
}

#[test]
fn node_failure_is_reported_and_retried_once_the_node_is_back() {
    if !slurm_ready() {
        return;
    }
    // Takes the only node down: no other test's job may be running.
    let _cluster = exclusive();
    let text = r#"
[pipeline]
name = "nodefail"

[nodes.train]
kind = "toy-train"
epochs = 6
sleep_ms = 1000
"#;
    let local = Env::new();
    let lf = local.write("p.toml", text);
    local.run(&["run", lf.to_str().unwrap()]).ok();

    // Two coordinators: `retry` (default method, --retries 1) and `once` (squeue, no retries).
    let retry = Env::new();
    let rf = retry.write("p.toml", text);
    let once = Env::new();
    let of = once.write("p.toml", text);
    let spawn = |env: &Env, f: &Path, extra: &[&str]| {
        let mut args = vec!["run", f.to_str().unwrap()];
        args.extend_from_slice(FAST);
        args.extend_from_slice(extra);
        env.cmd(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = spawn(&retry, &rf, &["--retries", "1"]);
    let b = spawn(&once, &of, &["--state-query", "squeue"]);
    let job_of = |env: &Env| {
        wait_for_slurm("the job", Duration::from_secs(60), || {
            journal(&env.store).len() == 1
        });
        journal(&env.store)[0].1.clone()
    };
    let (ja, jb) = (job_of(&retry), job_of(&once));
    wait_for_slurm("both jobs running", Duration::from_secs(60), || {
        squeue_state(&ja) == "RUNNING" && squeue_state(&jb) == "RUNNING"
    });
    // `retry` has a checkpoint to resume from.
    wait_for_slurm("an epoch checkpoint", Duration::from_secs(60), || {
        std::fs::read_dir(retry.store.join("resume"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|d| d.path().join("toy.ckpt").exists())
    });
    let node = slurm_node();
    let down = Command::new("scontrol")
        .args([
            "update",
            &format!("nodename={node}"),
            "state=down",
            "reason=semiflow-test",
        ])
        .status()
        .unwrap();
    assert!(down.success());
    wait_for_slurm("both jobs NODE_FAIL", Duration::from_secs(60), || {
        squeue_state(&ja) == "NODE_FAIL" && squeue_state(&jb) == "NODE_FAIL"
    });
    // Bring the node back (ReturnToService=2 may already have: then `resume` is refused).
    let _ = Command::new("scontrol")
        .args(["update", &format!("nodename={node}"), "state=resume"])
        .stderr(Stdio::null())
        .status();
    wait_for_slurm("the node back", Duration::from_secs(60), || {
        let o = Command::new("sinfo")
            .args(["-h", "-N", "-o", "%T"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).lines().any(node_up)
    });
    let ra = finish(a.wait_with_output().unwrap());
    let rb = finish(b.wait_with_output().unwrap());
    assert_eq!(method_of(&ra), auto_method(), "{}", ra.stderr);
    assert_eq!(method_of(&rb), "squeue", "{}", rb.stderr);

    // Without retries: reported with the state, the job, the machine, what to do, the log.
    assert_eq!(rb.code, 1, "{}", rb.stderr);
    let line = failure_line(&rb, "train");
    assert!(
        line.contains(&format!("Slurm job {jb} (attempt 1)")),
        "{line}"
    );
    assert!(
        line.contains(&format!("Slurm state NODE_FAIL on {node}")),
        "{line}"
    );
    assert!(line.contains("the machine it ran on failed"), "{line}");
    assert!(line.contains("--retries"), "{line}");
    let log = std::fs::read_to_string(log_named(&line)).unwrap();
    assert!(log.contains("NODE FAILURE"), "{log}");
    assert!(journal(&once.store).is_empty());

    // With --retries 1: resubmitted, resumed from the checkpoint, the local bits.
    assert_eq!(ra.code, 0, "{}", ra.stderr);
    assert!(
        ra.stderr
            .contains(&format!("Slurm job {ja} ended NODE_FAIL on {node}")),
        "{}",
        ra.stderr
    );
    assert!(ra.stderr.contains("resubmitting"), "{}", ra.stderr);
    assert!(ra.stderr.contains("(attempt 2)"), "{}", ra.stderr);
    let log = retry.run(&["log", "train"]).ok();
    assert!(
        log.stdout.contains("resuming from epoch checkpoint"),
        "{}",
        log.stdout
    );
    assert_ne!(
        retry.record("train")["provenance"]["job_id"]
            .as_str()
            .unwrap(),
        ja
    );
    assert_eq!(artifacts(&retry, &["train"]), artifacts(&local, &["train"]));
}

#[test]
fn a_job_slurm_forgot_is_reported_after_the_unknown_state_timeout() {
    if !slurm_ready() {
        return;
    }
    let _cluster = shared();
    let text = |timeout: &str| {
        format!(
            r#"
[pipeline]
name = "lost"

[executor]
unknown_state_timeout = "{timeout}"

[nodes.lost]
kind = "toy-train"
epochs = 60
sleep_ms = 1000
"#
        )
    };
    let env = Env::new();
    let f = env.write("p.toml", &text("3s"));
    // A coordinator submits the job and is killed with kill -9; the job is cancelled (it leaves
    // no result) and the controller forgets it (MinJobAge).
    let mut args = vec!["run", f.to_str().unwrap()];
    args.extend_from_slice(FAST);
    let mut child = env
        .cmd(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_slurm("the job", Duration::from_secs(60), || {
        journal(&env.store).len() == 1
    });
    let (_, job, _) = journal(&env.store)[0].clone();
    // Running for real: its first epoch checkpointed (so its Slurm output file exists).
    wait_for_slurm("an epoch checkpoint", Duration::from_secs(60), || {
        std::fs::read_dir(env.store.join("resume"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|d| d.path().join("toy.ckpt").exists())
    });
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(Command::new("scancel")
        .arg(&job)
        .status()
        .unwrap()
        .success());
    let min_age = slurm_config("MinJobAge");
    wait_for_slurm(
        &format!("the controller forgetting job {job} (MinJobAge = {min_age})"),
        Duration::from_secs(180),
        || {
            !Command::new("scontrol")
                .args(["show", "job", &job])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success()
        },
    );
    let journal_file = std::fs::read_dir(env.store.join("jobs"))
        .unwrap()
        .flatten()
        .map(|e| e.path().join("job.json"))
        .find(|p| p.exists())
        .unwrap();
    let journaled = std::fs::read(&journal_file).unwrap();

    // squeue: nothing names the job and it left no result: reported after the timeout, not
    // waited on forever.
    let t = Instant::now();
    let r = slurm_run(&env, &f, &["--state-query", "squeue"]);
    let took = t.elapsed();
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert_eq!(r.summary(), (1, 0, 0, 1), "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("lost: adopting Slurm job {job} ")),
        "{}",
        r.stderr
    );
    assert!(took >= Duration::from_secs(3), "{took:?}");
    assert!(took < Duration::from_secs(60), "{took:?}");
    let line = failure_line(&r, "lost");
    assert!(
        line.contains(&format!(
            "Slurm job {job} (attempt 1): Slurm state UNKNOWN for "
        )),
        "{line}"
    );
    assert!(
        line.contains("squeue and scontrol no longer know it"),
        "{line}"
    );
    assert!(line.contains(&format!("check `sacct -j {job}`")), "{line}");
    assert!(
        log_named(&line).ends_with(format!(
            "{}.slurm-{job}.out",
            journal_file
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
        )),
        "{line}"
    );
    assert!(log_named(&line).exists(), "{line}");
    assert!(journal(&env.store).is_empty());

    // sacct still knows how the job ended, long after the controller forgot it: with the same
    // journal, a coordinator reports CANCELLED at once (the timeout here is a minute).
    if !accounting_ready() {
        return;
    }
    std::fs::write(&journal_file, &journaled).unwrap();
    let f = env.write("p.toml", &text("60s"));
    let t = Instant::now();
    let r = slurm_run(&env, &f, &[]);
    assert_eq!(method_of(&r), "sacct", "{}", r.stderr);
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert_eq!(r.code, 1, "{}", r.stderr);
    let line = failure_line(&r, "lost");
    assert!(
        line.contains(&format!(
            "Slurm job {job} (attempt 1) ended without a result: Slurm state CANCELLED"
        )),
        "{line}"
    );
    assert!(line.contains("it was cancelled"), "{line}");
}

/// [`polling::wait_for_every`] at 100 ms: the conditions ask Slurm's controller.
fn wait_for_slurm(what: &str, timeout: Duration, f: impl FnMut() -> bool) {
    polling::wait_for_every(what, timeout, Duration::from_millis(100), f)
}
