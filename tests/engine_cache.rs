//! Caching behaviour of `semiflow run` and the explanations of `semiflow status`.

mod engine_support;
use engine_support::{Env, PIPELINE};

#[test]
fn second_run_runs_nothing() {
    let env = Env::new();
    let p = env.write("p.toml", PIPELINE);
    let p = p.to_str().unwrap();
    let first = env.run(&["run", p]).ok();
    assert_eq!(first.summary(), (4, 4, 0, 0));
    assert!(
        first.stdout.contains("top1"),
        "eval table missing:\n{}",
        first.stdout
    );
    let second = env.run(&["run", p]).ok();
    assert_eq!(second.summary(), (4, 0, 4, 0));
    assert!(second.built().is_empty());
}

#[test]
fn param_change_reruns_exactly_the_node_and_its_descendants() {
    let env = Env::new();
    let p = env.write("p.toml", PIPELINE);
    let p = p.to_str().unwrap();
    env.run(&["run", p]).ok();
    let other_before = env.record("other")["key"].clone();
    let r = env.run(&["run", p, "--set", "ft.epochs=3"]).ok();
    assert_eq!(r.summary(), (4, 2, 2, 0));
    assert_eq!(r.built(), ["eval", "ft"]);
    assert_eq!(env.record("other")["key"], other_before);
    assert_eq!(
        env.record("ft")["provenance"]["overrides"][0],
        "ft.epochs=3"
    );

    // Writing a default out explicitly changes nothing.
    let explicit = PIPELINE.replace("lr = 0.01", "lr = 0.01\nsteps = 20\ndim = 4");
    let p2 = env.write("p2.toml", &explicit);
    let r = env.run(&["run", p2.to_str().unwrap()]).ok();
    assert_eq!(r.summary(), (4, 0, 4, 0));
}

#[test]
fn renaming_a_node_or_moving_the_file_reruns_nothing() {
    let env = Env::new();
    let p = env.write("p.toml", PIPELINE);
    env.run(&["run", p.to_str().unwrap()]).ok();
    let renamed = PIPELINE
        .replace("[nodes.ft]", "[nodes.finetune]")
        .replace(r#"models = ["ft","#, r#"models = ["finetune","#);
    std::fs::create_dir_all(env.dir.path().join("elsewhere")).unwrap();
    let p2 = env.write("elsewhere/renamed.toml", &renamed);
    let r = env.run(&["run", p2.to_str().unwrap()]).ok();
    assert_eq!(r.summary(), (4, 0, 4, 0));
}

#[test]
fn force_reruns_a_cached_node_to_the_same_output() {
    let env = Env::new();
    let p = env.write("p.toml", PIPELINE);
    let p = p.to_str().unwrap();
    env.run(&["run", p]).ok();
    let before = env.record("pre")["artifact"].clone();
    let r = env.run(&["run", p, "--force", "pre"]).ok();
    assert_eq!(r.built(), ["pre"]);
    assert_eq!(r.summary(), (4, 1, 3, 0));
    assert_eq!(env.record("pre")["artifact"], before);
}

#[test]
fn failed_node_blocks_descendants_and_independent_branches_go_on() {
    let env = Env::new();
    let p = env.write(
        "p.toml",
        &PIPELINE.replace("epochs = 4", "epochs = 4\nfail_at_epoch = 1"),
    );
    let r = env.run(&["run", p.to_str().unwrap()]);
    assert_eq!(r.code, 1);
    assert_eq!(r.summary(), (4, 1, 0, 1));
    assert_eq!(r.built(), ["other"]);
    assert!(r.stderr.contains("node pre failed"), "{}", r.stderr);
    assert!(r.stderr.contains("fail_at_epoch"), "{}", r.stderr);
    let log_line = r
        .stderr
        .lines()
        .find(|l| l.contains("log: "))
        .expect("log path printed");
    let log_path = log_line.split("log: ").nth(1).unwrap().trim();
    assert!(std::path::Path::new(log_path).exists(), "{log_path}");
    assert!(r.stderr.contains("blocked: ft"), "{}", r.stderr);
    assert!(r.stderr.contains("blocked: eval"), "{}", r.stderr);
    // `semiflow log` shows the failed attempt.
    let log = env.run(&["log", "pre"]).ok();
    assert!(log.stdout.contains("failing at epoch 1"), "{}", log.stdout);
}

#[test]
fn dry_run_says_what_would_run_and_runs_nothing() {
    let env = Env::new();
    let p = env.write("p.toml", PIPELINE);
    let p = p.to_str().unwrap();
    env.run(&["run", p]).ok();
    let r = env
        .run(&["run", p, "--dry-run", "--set", "pre.epochs=5"])
        .ok();
    assert!(r.stdout.contains("would run  pre"), "{}", r.stdout);
    assert!(r.stdout.contains("param epochs: 4 → 5"), "{}", r.stdout);
    assert!(r.stdout.contains("cached     other"), "{}", r.stdout);
    assert_eq!(env.run(&["run", p]).ok().summary(), (4, 0, 4, 0));
}

fn status(env: &Env, p: &str, extra: &[(&str, &str)], set: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["status", p, "--json"];
    for s in set {
        args.extend(["--set", s]);
    }
    let r = env.run_with(&args, extra).ok();
    serde_json::from_str(&r.stdout).unwrap()
}

fn row<'a>(rows: &'a [serde_json::Value], node: &str) -> &'a serde_json::Value {
    rows.iter().find(|r| r["node"] == node).unwrap()
}

fn reasons(row: &serde_json::Value) -> Vec<String> {
    row["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn status_json_explains_param_input_and_code_changes() {
    let env = Env::new();
    let p = env.write("p.toml", PIPELINE);
    let p = p.to_str().unwrap();
    env.run(&["run", p]).ok();

    let rows = status(&env, p, &[], &[]);
    assert_eq!(rows.len(), 4);
    for r in &rows {
        assert_eq!(r["state"], "cached", "{r}");
        assert_eq!(r["key"].as_str().unwrap().len(), 64);
        assert!(r["kind"].as_str().unwrap().starts_with("toy-"));
    }

    // Param change: the node says which param; its descendant waits for the rebuilt input.
    let rows = status(&env, p, &[], &["pre.epochs=6"]);
    assert_eq!(row(&rows, "pre")["state"], "will-run");
    assert_eq!(reasons(row(&rows, "pre")), ["param epochs: 4 → 6"]);
    assert_eq!(row(&rows, "ft")["state"], "will-run");
    assert_eq!(row(&rows, "ft")["key"], "pending input");
    assert_eq!(reasons(row(&rows, "ft")), ["input from: will be rebuilt"]);
    assert_eq!(row(&rows, "other")["state"], "cached");

    // Input change: once pre is rebuilt, ft's key is known and its input hash differs.
    let old_pre = env.record("pre")["artifact"].as_str().unwrap().to_string();
    env.run(&["run", p, "--set", "pre.epochs=6", "--only", "pre"])
        .ok();
    let new_pre = env.record("pre")["artifact"].as_str().unwrap().to_string();
    let rows = status(&env, p, &[], &["pre.epochs=6"]);
    assert_eq!(row(&rows, "pre")["state"], "cached");
    assert_eq!(
        reasons(row(&rows, "ft")),
        [format!(
            "input from: {}… → {}…",
            &old_pre[..8],
            &new_pre[..8]
        )]
    );

    // Code change: bumping the kind's implementation version.
    let rows = status(&env, p, &[("SEMIFLOW_TOY_VERSION", "2")], &["pre.epochs=6"]);
    assert_eq!(reasons(row(&rows, "pre")), ["code toy-train: v1 → v2"]);
    assert_eq!(reasons(row(&rows, "other")), ["code toy-train: v1 → v2"]);
    assert_eq!(row(&rows, "eval")["state"], "will-run");
}

#[test]
fn only_needs_cached_inputs_and_until_runs_ancestors() {
    let env = Env::new();
    let p = env.write("p.toml", PIPELINE);
    let p = p.to_str().unwrap();
    let r = env.run(&["run", p, "--only", "ft"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("pre is not built and not selected"),
        "{}",
        r.stderr
    );
    let r = env.run(&["run", p, "--until", "ft"]).ok();
    assert_eq!(r.summary(), (2, 2, 0, 0));
    let r = env.run(&["run", p, "--only", "ft"]).ok();
    assert_eq!(r.summary(), (1, 0, 1, 0));
}

#[test]
fn parallel_jobs_give_the_same_results() {
    let serial = Env::new();
    let parallel = Env::new();
    let p1 = serial.write("p.toml", PIPELINE);
    let p2 = parallel.write("p.toml", PIPELINE);
    serial.run(&["run", p1.to_str().unwrap()]).ok();
    let r = parallel
        .run(&["run", p2.to_str().unwrap(), "--jobs", "3"])
        .ok();
    assert_eq!(r.summary(), (4, 4, 0, 0));
    for n in ["pre", "ft", "other", "eval"] {
        assert_eq!(
            serial.record(n)["artifact"],
            parallel.record(n)["artifact"],
            "{n}"
        );
        assert_eq!(serial.record(n)["key"], parallel.record(n)["key"], "{n}");
    }
}
