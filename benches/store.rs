//! Store benchmarks (not tests; numbers printed for bench/README.md):
//! - `repair` of a store with 10,000 record files (target < 5 s);
//! - the cost the record file adds to one node's commit: `RecordFiles::write_record` (temp file,
//!   fsync, rename, directory fsync; target < 5 ms) next to the whole `Store::commit`.
//!
//!   cargo bench --bench store            (SEMIFLOW_BENCH_RECORDS=N to change the 10,000)
//!
//! The records are synthetic but shaped like real ones (~4 KB: 25 key components, a 100-point
//! loss curve, a 10×10 confusion matrix); their blobs are not created (repair reads no blob).

use std::collections::BTreeMap;
use std::time::Instant;

use semiflow::store::{FileEntry, Provenance, Record, RecordFiles, Store, WaitPolicy};

fn record(i: usize) -> Record {
    let key = blake3::hash(format!("key {i}").as_bytes())
        .to_hex()
        .to_string();
    let h = |s: &str| {
        blake3::hash(format!("{s} {i}").as_bytes())
            .to_hex()
            .to_string()
    };
    Record {
        key,
        node: format!("finetune[label_fraction=0.01,seed={i}]"),
        base: "finetune".into(),
        point: [("seed".to_string(), serde_json::json!(i))]
            .into_iter()
            .collect(),
        kind: "finetune".into(),
        params: serde_json::json!({"epochs": 30, "lr": 0.2, "optimizer": "sgd", "batch_size": 256}),
        components: (0..25)
            .map(|c| (format!("param p{c}"), format!("{}", c as f64 * 0.1)))
            .collect(),
        inputs: BTreeMap::new(),
        artifact: h("artifact"),
        manifest_size: 180,
        files: [(
            "model.safetensors".to_string(),
            FileEntry {
                hash: h("model"),
                size: 1 << 20,
            },
        )]
        .into_iter()
        .collect(),
        metrics: [("loss".to_string(), 0.123456789), ("top1".to_string(), 0.5)]
            .into_iter()
            .collect(),
        series: [(
            "loss".to_string(),
            (0..100).map(|e| 1.0 / (e as f64 + 1.7)).collect(),
        )]
        .into_iter()
        .collect(),
        details: serde_json::json!({"confusion": vec![vec![17; 10]; 10]}),
        provenance: Provenance {
            semiflow_version: "0.1.0".into(),
            git_commit: "0123456789ab".into(),
            candle_version: "0.11.1".into(),
            host: "bench".into(),
            threads: 2,
            seed: i as u64,
            pipeline: "bench".into(),
            overrides: vec![],
            started: "2026-12-05T00:00:00Z".into(),
            duration_s: 1.5,
            numerics: None,
            ..Provenance::default()
        },
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let n: usize = std::env::var("SEMIFLOW_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let dir =
        tempfile::tempdir_in(std::env::var("SEMIFLOW_BENCH_DIR").unwrap_or_else(|_| ".".into()))
            .expect("a temp dir");
    let root = dir.path().join("store");
    std::fs::create_dir_all(root.join("tmp")).unwrap();

    // Record-file write alone, and the whole commit (file + name pointer + sled insert + flush).
    let files = RecordFiles::new(&root);
    let mut write_ms = Vec::new();
    let t = Instant::now();
    for i in 0..n {
        let rec = record(i);
        let t0 = Instant::now();
        files.write_record(&rec).unwrap();
        write_ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let fill_s = t.elapsed().as_secs_f64();
    let size = std::fs::metadata(files.record_path(&record(0).key))
        .unwrap()
        .len();
    println!("record files: {n} written in {fill_s:.2} s ({size} bytes each)");
    println!(
        "record file write (temp + fsync + rename + dir fsync): median {:.3} ms, max {:.3} ms",
        median(write_ms.clone()),
        write_ms.iter().cloned().fold(0.0, f64::max)
    );

    let t = Instant::now();
    let (store, report) = Store::repair(&root, WaitPolicy::Fail).unwrap();
    println!(
        "repair of {} records ({} names): {:.2} s (wall {:.2} s)",
        report.records,
        report.names,
        report.seconds,
        t.elapsed().as_secs_f64()
    );

    let mut commit_ms = Vec::new();
    for i in n..n + 200 {
        let rec = record(i);
        let t0 = Instant::now();
        store.commit(&rec).unwrap();
        commit_ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    println!(
        "Store::commit (record file + name pointer file + sled insert + flush): median {:.3} ms over 200",
        median(commit_ms)
    );
}
