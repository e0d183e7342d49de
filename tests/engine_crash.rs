//! Crash and concurrency safety: kill -9 mid-training resumes bit-identically; two runs on one store.

mod engine_support;
use engine_support::{finish, Env};
use std::time::Duration;

mod polling;
use polling::wait_for;

const SLOW: &str = r#"
[pipeline]
name = "slow"
seed = 3

[nodes.train]
kind = "toy-train"
epochs = 8
sleep_ms = 150
"#;

#[test]
fn kill_9_mid_training_resumes_from_checkpoint_bit_identically() {
    let reference = Env::new();
    let p = reference.write("p.toml", SLOW);
    reference.run(&["run", p.to_str().unwrap()]).ok();
    let want = reference.record("train")["artifact"]
        .as_str()
        .unwrap()
        .to_string();

    let env = Env::new();
    let p = env.write("p.toml", SLOW);
    let p = p.to_str().unwrap();
    let mut child = env
        .cmd(&["run", p])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let resume = env.store.join("resume");
    // Wait until at least 3 epochs are checkpointed, then kill hard.
    wait_for("an epoch checkpoint", Duration::from_secs(60), || {
        std::fs::read_dir(&resume)
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| std::fs::metadata(e.ok()?.path().join("toy.ckpt")).ok())
            .is_some_and(|m| m.len() >= 32 + 8 * (4 + 3))
    });
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(
        env.run(&["status", p])
            .ok()
            .stdout
            .split_whitespace()
            .next(),
        Some("will-run")
    );

    let r = env.run(&["run", p]).ok();
    assert_eq!(r.summary(), (1, 1, 0, 0));
    let log = env.run(&["log", "train"]).ok().stdout;
    let resumed = log
        .lines()
        .find_map(|l| l.split("resuming from epoch checkpoint at epoch ").nth(1))
        .unwrap_or_else(|| panic!("no resume line in log:\n{log}"));
    let epoch: usize = resumed.trim().parse().unwrap();
    assert!((3..8).contains(&epoch), "resumed at {epoch}");
    assert_eq!(env.record("train")["artifact"], want.as_str());
    assert_eq!(
        env.record("train")["series"]["loss"],
        reference.record("train")["series"]["loss"]
    );
    // The checkpoint is gone once the record is committed.
    assert_eq!(std::fs::read_dir(&resume).unwrap().count(), 0);
    env.run(&["audit", p, "--verify"]).ok();
}

#[test]
fn second_run_on_a_busy_store_waits_or_fails_clearly() {
    let env = Env::new();
    let p = env.write("p.toml", SLOW);
    let p = p.to_str().unwrap();
    let first = env
        .cmd(&["run", p])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lock = env.store.join("LOCK");
    wait_for("the lock holder", Duration::from_secs(30), || {
        std::fs::read_to_string(&lock).is_ok_and(|s| s.starts_with(&first.id().to_string()))
    });

    let no_wait = env.run(&["run", p, "--no-wait"]);
    assert_eq!(no_wait.code, 1);
    let want = format!("is in use by pid {} on host", first.id());
    assert!(no_wait.stderr.contains(&want), "{}", no_wait.stderr);
    assert!(no_wait.stderr.contains("--no-wait"), "{}", no_wait.stderr);

    let waiter = env.run(&["run", p]).ok();
    assert!(waiter.stderr.contains(&want), "{}", waiter.stderr);
    assert!(
        waiter.stderr.contains("waiting (use --no-wait to fail)"),
        "{}",
        waiter.stderr
    );
    let first = finish(first.wait_with_output().unwrap()).ok();
    assert_eq!(first.summary(), (1, 1, 0, 0));
    assert_eq!(waiter.summary(), (1, 0, 1, 0));
    env.run(&["audit", p, "--verify"]).ok();
}

#[test]
fn ctrl_c_stops_cleanly_and_the_rerun_resumes() {
    let env = Env::new();
    let p = env.write("p.toml", SLOW);
    let p = p.to_str().unwrap();
    let child = env
        .cmd(&["run", p])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let resume = env.store.join("resume");
    wait_for("an epoch checkpoint", Duration::from_secs(60), || {
        std::fs::read_dir(&resume)
            .ok()
            .and_then(|mut d| d.next())
            .is_some_and(|e| e.is_ok_and(|e| e.path().join("toy.ckpt").exists()))
    });
    let status = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = finish(child.wait_with_output().unwrap());
    assert_eq!(out.code, 130, "{}", out.stderr);
    assert_eq!(out.summary(), (1, 0, 0, 1));
    assert!(
        out.stderr.contains("rerun the same command to resume"),
        "{}",
        out.stderr
    );

    let r = env.run(&["run", p]).ok();
    assert_eq!(r.summary(), (1, 1, 0, 0));
    assert!(env
        .run(&["log", "train"])
        .ok()
        .stdout
        .contains("resuming from epoch checkpoint"));
}
