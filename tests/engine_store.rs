//! Store integrity: audit, corruption repair, gc, show, report.

mod engine_support;
use engine_support::{overwrite, Env, PIPELINE};

#[test]
fn corrupted_blob_is_caught_by_audit_and_rebuilt_by_the_next_run() {
    let env = Env::new();
    let p = env.write("p.toml", PIPELINE);
    let p = p.to_str().unwrap();
    env.run(&["run", p]).ok();
    assert_eq!(
        env.run(&["audit", p, "--verify"])
            .ok()
            .stdout
            .lines()
            .last(),
        Some("audit: pass")
    );

    let rec = env.record("ft");
    let hash = rec["files"]["model.bin"]["hash"]
        .as_str()
        .unwrap()
        .to_string();
    let blob = env.object_path(&hash);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[0] ^= 0xff; // same size: only re-hashing can tell
    overwrite(&blob, &bytes);

    // Without --verify a same-size change is not noticed; with it, the blob and node are named.
    assert_eq!(env.run(&["audit", p]).code, 0);
    let a = env.run(&["audit", p, "--verify"]);
    assert_eq!(a.code, 1, "{}", a.stdout);
    assert!(
        a.stdout.contains("FAIL  ft: output model.bin"),
        "{}",
        a.stdout
    );
    assert!(a.stdout.contains(&hash[..8]), "{}", a.stdout);

    let r = env.run(&["run", p]).ok();
    assert_eq!(r.built(), ["ft"]);
    assert_eq!(
        env.record("ft")["files"]["model.bin"]["hash"],
        hash.as_str()
    );
    assert_eq!(std::fs::read(&blob).unwrap()[0], bytes[0] ^ 0xff);
    env.run(&["audit", p, "--verify"]).ok();
}

#[test]
fn run_verify_rebuilds_a_damaged_blob_and_size_changes_are_always_caught() {
    let env = Env::new();
    let p = env.write("p.toml", PIPELINE);
    let p = p.to_str().unwrap();
    env.run(&["run", p]).ok();
    let hash = env.record("other")["files"]["model.bin"]["hash"]
        .as_str()
        .unwrap()
        .to_string();
    overwrite(&env.object_path(&hash), b"short");
    let r = env.run(&["run", p]).ok();
    assert_eq!(r.built(), ["other"]);

    let mut bytes = std::fs::read(env.object_path(&hash)).unwrap();
    bytes[3] ^= 1;
    overwrite(&env.object_path(&hash), &bytes);
    assert_eq!(env.run(&["run", p]).ok().summary(), (4, 0, 4, 0));
    let r = env.run(&["run", p, "--verify"]).ok();
    assert_eq!(r.built(), ["other"]);
    env.run(&["audit", p, "--verify"]).ok();
}

#[test]
fn gc_frees_unreferenced_blobs_and_keeps_referenced_ones() {
    let env = Env::new();
    let p = env.write("p.toml", PIPELINE);
    let p = p.to_str().unwrap();
    env.run(&["run", p]).ok();
    let orphan_hash = "ab".repeat(32);
    let orphan = env.object_path(&orphan_hash);
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, vec![7u8; 1000]).unwrap();
    let junk = env.store.join("tmp/run-dead");
    std::fs::create_dir_all(&junk).unwrap();
    std::fs::write(junk.join("partial"), vec![0u8; 500]).unwrap();
    let stale = env.store.join("resume").join("cd".repeat(32));
    std::fs::create_dir_all(&stale).unwrap();
    std::fs::write(stale.join("toy.ckpt"), vec![0u8; 24]).unwrap();

    let dry = env.run(&["gc", "--dry-run"]).ok();
    assert!(
        dry.stdout.contains("would free 3 files, 1524 bytes"),
        "{}",
        dry.stdout
    );
    assert!(orphan.exists() && junk.exists());

    let r = env.run(&["gc"]).ok();
    assert!(
        r.stdout.contains("freed 3 files, 1524 bytes"),
        "{}",
        r.stdout
    );
    assert!(!orphan.exists() && !junk.exists() && !stale.exists());
    env.run(&["audit", p, "--verify"]).ok();
    assert_eq!(env.run(&["run", p]).ok().summary(), (4, 0, 4, 0));
    assert!(env
        .run(&["gc"])
        .ok()
        .stdout
        .contains("freed 0 files, 0 bytes"));
}

#[test]
fn show_prints_provenance_and_audit_rerun_reproduces_bit_for_bit() {
    let env = Env::new();
    let p = env.write("p.toml", PIPELINE);
    let p = p.to_str().unwrap();
    env.run(&["run", p]).ok();
    let show = env.run(&["show", "ft"]).ok().stdout;
    for needle in [
        "key components:",
        "code toy-train",
        "param epochs",
        "input from",
        "model.bin",
        "candle",
        "threads",
        "started",
        "duration",
    ] {
        assert!(show.contains(needle), "missing {needle}:\n{show}");
    }
    let key = env.record("ft")["key"].as_str().unwrap().to_string();
    assert!(env
        .run(&["show", &key[..10]])
        .ok()
        .stdout
        .contains("node      ft"));
    assert_ne!(env.run(&["show", "nonexistent"]).code, 0);

    let a = env
        .run(&["audit", p, "--rerun", "ft", "--rerun", "eval"])
        .ok();
    assert!(
        a.stdout
            .contains("ok    rerun ft: 1 output files bit-identical"),
        "{}",
        a.stdout
    );
    assert!(a.stdout.contains("ok    rerun eval"), "{}", a.stdout);
}

/// `semiflow report FILE --out <env>/report`: the output directory and its report.md.
fn report(env: &Env, pipeline: &str) -> (std::path::PathBuf, String) {
    let out = env.dir.path().join("report");
    env.run(&["report", pipeline, "--out", out.to_str().unwrap()])
        .ok();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    (out, md)
}

#[test]
fn report_writes_markdown_and_svg_plots() {
    let env = Env::new();
    let p = env.write("p.toml", PIPELINE);
    let p = p.to_str().unwrap();
    env.run(&["run", p]).ok();
    let (out, md) = report(&env, p);
    assert!(
        md.contains("| method | model node | split | mse | top1 |"),
        "{md}"
    );
    assert!(md.contains("| eval | eval | test |"), "{md}");
    assert!(
        md.contains("## Stage times") && md.contains("| pre | "),
        "{md}"
    );
    for n in ["pre", "ft", "other"] {
        let svg = std::fs::read_to_string(out.join(format!("loss-{n}.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<polyline"), "{n}");
    }
}

/// A pipeline that reuses another's artifacts under other node names (cifar10-seeds.toml's
/// seed-0 nodes are cifar10.toml's) gets plots named after its own nodes.
#[test]
fn report_names_reused_artifacts_after_this_pipelines_nodes() {
    let env = Env::new();
    let p = env.write("p.toml", PIPELINE);
    env.run(&["run", p.to_str().unwrap()]).ok();
    let renamed = PIPELINE
        .replace("[nodes.pre]", "[nodes.encoder]")
        .replace("from = \"pre\"", "from = \"encoder\"");
    let q = env.write("q.toml", &renamed);
    let q = q.to_str().unwrap();
    assert!(env.run(&["run", q]).ok().built().is_empty());
    let (out, md) = report(&env, q);
    assert!(md.contains("![encoder](loss-encoder.svg)"), "{md}");
    assert!(!md.contains("![pre]"), "{md}");
    let svg = std::fs::read_to_string(out.join("loss-encoder.svg")).unwrap();
    assert!(svg.contains("encoder: training loss"), "{svg}");
}

/// Node names are shared by everything in a store (another pipeline, or this one with `--set`):
/// `report` and `audit` follow the keys the file gives its nodes now, not the latest record
/// under each name.
#[test]
fn report_and_audit_follow_current_keys_not_latest_names() {
    let env = Env::new();
    let p = env.write("p.toml", PIPELINE);
    let p = p.to_str().unwrap();
    env.run(&["run", p]).ok();
    let (_, before) = report(&env, p);
    // Same node names, other keys.
    env.run(&["run", p, "--set", "pre.epochs=2"]).ok();
    let (_, after) = report(&env, p);
    assert_eq!(before, after);
    let audit = env.run(&["audit", p]).ok();
    assert_eq!(
        audit.stdout.matches("\nok    ").count() + usize::from(audit.stdout.starts_with("ok    ")),
        4,
        "{}",
        audit.stdout
    );
}
