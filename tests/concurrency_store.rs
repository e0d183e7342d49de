//! Concurrency on one store: four `semiflow run` processes started at once on overlapping
//! pipelines all finish (each waits for the store lock) with the same artifacts as a serial run
//! into a fresh store; a lock holder killed with kill -9 mid-run is taken over by the process
//! waiting for the lock, which finishes the work bit-identically.

mod engine_support;
use engine_support::{finish, Env, Run};
use std::collections::BTreeSet;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod polling;
use polling::wait_for;

/// Every pipeline has `shared_pre`; `shared_mid` is in pipelines 0 and 1, `shared_side` in 2 and
/// 3; `own{k}` and `eval{k}` are pipeline k's alone. Shared nodes are written identically (same
/// parameters, same pipeline seed), so they have one cache key.
fn pipeline(k: usize) -> String {
    let mut s = format!(
        r#"
[pipeline]
name = "overlap{k}"
seed = 0

[nodes.shared_pre]
kind = "toy-train"
epochs = 4
sleep_ms = 40
"#
    );
    let (shared, own_from) = if k < 2 {
        (
            r#"
[nodes.shared_mid]
kind = "toy-train"
from = "shared_pre"
epochs = 3
lr = 0.02
sleep_ms = 30
"#,
            if k == 0 { "shared_mid" } else { "shared_pre" },
        )
    } else {
        (
            r#"
[nodes.shared_side]
kind = "toy-train"
task = 1
epochs = 3
sleep_ms = 30
"#,
            if k == 2 { "shared_pre" } else { "shared_side" },
        )
    };
    s.push_str(shared);
    s.push_str(&format!(
        r#"
[nodes.own{k}]
kind = "toy-train"
from = "{own_from}"
lr = 0.0{}5
epochs = 3
sleep_ms = 30

[nodes.eval{k}]
kind = "toy-eval"
models = ["own{k}", "{own_from}"]
"#,
        k + 1
    ));
    s
}

/// Node names of pipeline `k` (as written above).
fn nodes(k: usize) -> Vec<String> {
    let shared = if k < 2 { "shared_mid" } else { "shared_side" };
    vec![
        "shared_pre".into(),
        shared.into(),
        format!("own{k}"),
        format!("eval{k}"),
    ]
}

fn artifact(env: &Env, node: &str) -> String {
    env.record(node)["artifact"]
        .as_str()
        .unwrap_or_else(|| panic!("{node}: no artifact"))
        .to_string()
}

/// Wait for `children` (output read while they run), killing them all if any outlives `limit`.
fn wait_all(children: Vec<Child>, limit: Duration) -> Vec<Run> {
    let pids: Vec<u32> = children.iter().map(Child::id).collect();
    let (tx, rx) = mpsc::channel();
    for (i, child) in children.into_iter().enumerate() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send((i, child.wait_with_output()));
        });
    }
    drop(tx);
    let deadline = Instant::now() + limit;
    let mut runs: Vec<Option<Run>> = (0..pids.len()).map(|_| None).collect();
    for _ in 0..pids.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, out)) => runs[i] = Some(finish(out.unwrap())),
            Err(_) => {
                for pid in &pids {
                    let _ = std::process::Command::new("kill")
                        .args(["-9", &pid.to_string()])
                        .status();
                }
                panic!("runs did not finish within {limit:?} (deadlock on the store lock?)");
            }
        }
    }
    runs.into_iter().map(Option::unwrap).collect()
}

#[test]
fn four_concurrent_runs_on_one_store_match_a_serial_run() {
    // Serial reference: the four pipelines one after the other into a fresh store.
    let reference = Env::new();
    for k in 0..4 {
        let p = reference.write(&format!("p{k}.toml"), &pipeline(k));
        reference.run(&["run", p.to_str().unwrap()]).ok();
    }

    let env = Env::new();
    let files: Vec<String> = (0..4)
        .map(|k| {
            let p = env.write(&format!("p{k}.toml"), &pipeline(k));
            p.to_str().unwrap().to_string()
        })
        .collect();
    let t = Instant::now();
    let children: Vec<Child> = files
        .iter()
        .map(|f| {
            env.cmd(&["run", f])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let runs = wait_all(children, Duration::from_secs(60));
    eprintln!("4 concurrent runs: {:.1} s", t.elapsed().as_secs_f64());

    let mut waited = 0;
    let mut built: Vec<String> = Vec::new();
    for (k, r) in runs.into_iter().enumerate() {
        let r = r.ok();
        let (n, ran, cached, failed) = r.summary();
        assert_eq!((n, ran + cached, failed), (4, 4, 0), "pipeline {k}");
        waited += usize::from(r.stderr.contains("waiting (use --no-wait to fail)"));
        built.extend(r.built());
    }
    // They ran one at a time (started together, some had to wait for the lock), and every node was built
    // exactly once (later runs found the shared nodes cached).
    assert!(waited >= 1, "{waited} runs waited for the lock");
    let mut unique: Vec<String> = built.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        built.len(),
        unique.len(),
        "a node was built twice: {built:?}"
    );
    let all: BTreeSet<String> = (0..4).flat_map(nodes).collect();
    assert_eq!(unique.len(), all.len(), "built {unique:?}, nodes {all:?}");

    for node in &all {
        assert_eq!(
            artifact(&env, node),
            artifact(&reference, node),
            "node {node}: the concurrent runs' artifact differs from the serial run's"
        );
    }
    for f in &files {
        env.run(&["audit", f, "--verify"]).ok();
    }
}

/// The lock holder is killed with kill -9 while training; the process that was waiting for the
/// lock takes it over, resumes the interrupted node from its epoch checkpoint and finishes.
#[test]
fn a_waiting_run_takes_over_from_a_killed_lock_holder() {
    const SLOW: &str = r#"
[pipeline]
name = "slow"
seed = 5

[nodes.train]
kind = "toy-train"
epochs = 8
sleep_ms = 120

[nodes.eval]
kind = "toy-eval"
models = ["train"]
"#;
    // The waiter's pipeline shares `train` and adds its own node.
    const WAITER: &str = r#"
[pipeline]
name = "waiter"
seed = 5

[nodes.train]
kind = "toy-train"
epochs = 8
sleep_ms = 120

[nodes.tune]
kind = "toy-train"
from = "train"
lr = 0.01
epochs = 2
"#;
    let reference = Env::new();
    for (name, text) in [("slow.toml", SLOW), ("waiter.toml", WAITER)] {
        let p = reference.write(name, text);
        reference.run(&["run", p.to_str().unwrap()]).ok();
    }

    let env = Env::new();
    let slow = env.write("slow.toml", SLOW);
    let waiter = env.write("waiter.toml", WAITER);
    let (slow, waiter) = (slow.to_str().unwrap(), waiter.to_str().unwrap());
    let mut holder = env
        .cmd(&["run", slow])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock = env.store.join("LOCK");
    wait_for("the lock holder", Duration::from_secs(30), || {
        std::fs::read_to_string(&lock).is_ok_and(|s| s.starts_with(&holder.id().to_string()))
    });
    let second = env
        .cmd(&["run", waiter])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Mid-run: at least two epochs checkpointed (toy checkpoint: 32 header bytes, 8 per value).
    let resume = env.store.join("resume");
    wait_for("an epoch checkpoint", Duration::from_secs(30), || {
        std::fs::read_dir(&resume)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| std::fs::metadata(e.ok()?.path().join("toy.ckpt")).ok())
            .is_some_and(|m| m.len() >= 32 + 8 * (4 + 2))
    });
    holder.kill().unwrap(); // SIGKILL
    let status = holder.wait().unwrap();
    assert_eq!(status.code(), None, "the holder was not killed by a signal");

    let second = wait_all(vec![second], Duration::from_secs(60))
        .pop()
        .unwrap()
        .ok();
    let holder_msg = format!("is in use by pid {} on host", holder.id());
    assert!(
        second.stderr.contains(&holder_msg) && second.stderr.contains("waiting"),
        "the second run did not wait for the holder:\n{}",
        second.stderr
    );
    assert_eq!(second.summary(), (2, 2, 0, 0));
    let log = env.run(&["log", "train"]).ok().stdout;
    assert!(
        log.contains("resuming from epoch checkpoint at epoch"),
        "the waiter did not resume the killed holder's checkpoint:\n{log}"
    );
    for node in ["train", "tune"] {
        assert_eq!(artifact(&env, node), artifact(&reference, node), "{node}");
    }
    // The killed run's own pipeline now finishes from the cache plus its missing node.
    let r = env.run(&["run", slow]).ok();
    assert_eq!(r.summary(), (2, 1, 1, 0));
    assert_eq!(artifact(&env, "eval"), artifact(&reference, "eval"));
    env.run(&["audit", slow, "--verify"]).ok();
    env.run(&["audit", waiter, "--verify"]).ok();
}
