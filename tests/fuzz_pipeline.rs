//! Fuzzing the pipeline loader (what `semiflow validate` runs) on mutated pipeline files.
//!
//! Seeds: every shipped file under `pipelines/` and `pipelines/tuning/` (read at test time, their
//! dataset roots pointed at an existing directory so the seeds themselves are valid) plus a few
//! small hand-written files. Mutations: byte flips, truncation, deleted / duplicated / swapped
//! lines, inserted keys, values and table headers, values replaced by values of other types,
//! random unicode, very long strings and keys, deeply nested arrays / inline tables / dotted keys,
//! and large sweeps.
//!
//! Properties, per mutated file: the loader never panics, returns within a time bound, and every
//! error it reports names the pipeline file. A smaller number of cases runs through the real
//! binary (`semiflow validate FILE`): exit code 0 or 1, no panic, the file named on stderr.
//!
//! Case counts: `PROPTEST_CASES` (default 5000 in-process; the binary gets a 25th of that, at
//! least 8). Failures are persisted by proptest under `tests/proptest-regressions/`; each bug
//! found also has a plain regression test at the end of this file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};

/// A case that takes longer than this counts as a hang (normal cases take milliseconds).
const CASE_TIME_LIMIT: Duration = Duration::from_secs(5);

fn cases_from_env(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/proptest-regressions/fuzz_pipeline.txt"
        )))),
        // A failing case is rerun many times while shrinking; a hang costs CASE_TIME_LIMIT each.
        max_shrink_time: 120_000,
        ..Config::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds

/// A scratch tree shaped like the repository: `pipelines/`, `pipelines/tuning/` and
/// `data/cifar10-small/`, so the shipped files' relative dataset roots resolve.
struct Tree {
    dir: tempfile::TempDir,
    /// (seed name, text).
    seeds: Vec<(String, String)>,
}

impl Tree {
    fn pipelines(&self) -> PathBuf {
        self.dir.path().join("pipelines")
    }
}

/// Small hand-written pipelines (roots relative to `pipelines/`).
const HAND_WRITTEN: &[(&str, &str)] = &[
    (
        "minimal",
        r#"[pipeline]
name = "m"

[datasets.d]
format = "image-folder"
root = "../data/cifar10-small"

[nodes.p]
kind = "pretrain"
data = "d"
"#,
    ),
    (
        "sweep-defaults",
        r#"[pipeline]
name = "s"
seed = 7
description = "sweeps, defaults and a seed placeholder"

[datasets.d]
format = "idx"
root = "${SEMIFLOW_FUZZ_SURELY_UNSET:-../data/cifar10-small}"
limit_train = 100

[sweep]
f = [0.01, 0.1, 0.5]
s = [1, 2]

[defaults.finetune]
data = "d"
epochs = 2

[nodes.pre]
kind = "pretrain"
data = "d"
model = { depth = 10, width = 0.125 }

[nodes.split]
kind = "split"
data = "d"
fraction = "${sweep.f}"

[nodes.ft]
kind = "finetune"
from = "pre"
labels = "split"
seed = "${sweep.s}"

[nodes.ev]
kind = "eval"
data = "d"
models = ["ft"]
"#,
    ),
    (
        "inline",
        r#"pipeline = { name = "inline" }
datasets = { d = { format = "cifar-bin", root = "../data/cifar10-small" } }
nodes.pre = { kind = "pretrain", data = "d", epochs = 1 }
nodes.sup = { kind = "supervised", labels = "sp", data = "d" }
nodes.sp = { kind = "split", data = "d", fraction = 0.1, holdout = 0.1 }
"#,
    ),
];

fn tree() -> Tree {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data/cifar10-small");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(dir.path().join("pipelines/tuning")).unwrap();
    let data = data.display().to_string();
    let mut seeds = Vec::new();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    for sub in ["", "tuning"] {
        let mut files: Vec<PathBuf> = std::fs::read_dir(shipped.join(sub))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        for f in files {
            // Environment-variable roots fall back to a directory that exists here.
            let text = std::fs::read_to_string(&f)
                .unwrap()
                .replace("/tmp/cifar10}", &format!("{data}}}"))
                .replace("/usr/share/datasets/fashion-mnist}", &format!("{data}}}"));
            let name = Path::new(sub).join(f.file_name().unwrap());
            seeds.push((name.display().to_string(), text));
        }
    }
    assert!(seeds.len() >= 10, "shipped pipelines not found");
    for (name, text) in HAND_WRITTEN {
        seeds.push((format!("{name}.toml"), text.to_string()));
    }
    Tree { dir, seeds }
}

// ---------------------------------------------------------------------------------------------
// Mutations

#[derive(Debug, Clone)]
enum Mutation {
    FlipByte(Index, u8),
    Truncate(Index),
    DeleteLine(Index),
    DuplicateLine(Index),
    SwapLines(Index, Index),
    /// Insert a whole line (a `key = value`, a table header, ...) before a line.
    InsertLine(Index, String),
    /// Replace the value of a `key = value` line (any type for any type).
    ReplaceValue(Index, String),
    /// Insert text at a byte offset (moved to the next character boundary).
    InsertText(Index, String),
    /// Add `vars` sweep variables of `values` values each, used by one node's string.
    SweepBomb {
        vars: usize,
        values: usize,
    },
}

const KEYS: &[&str] = &[
    "kind",
    "seed",
    "checkpoint_every",
    "data",
    "from",
    "labels",
    "teacher",
    "models",
    "init",
    "holdout",
    "epochs",
    "lr",
    "model",
    "depth",
    "width",
    "batch_size",
    "fraction",
    "format",
    "root",
    "name",
    "description",
    "optimizer",
    "split",
    "head_layer",
    "temperature",
    "label_fraction",
    "train",
    "test",
    "limit_train",
    "limit_test",
    "knn_monitor",
    "queries",
    "bank",
    "pipeline",
    "datasets",
    "sweep",
    "defaults",
    "nodes",
];

const NAMES: &[&str] = &[
    "pretrain",
    "split",
    "finetune",
    "supervised",
    "distill",
    "eval",
    "dataset",
    "cifar10",
    "fashion_mnist",
    "d",
    "pre",
    "ft",
    "image-folder",
    "cifar-bin",
    "idx",
    "sgd",
    "lars",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(KEYS).prop_map(str::to_string),
        2 => "[a-z_][a-z0-9_-]{0,10}",
        1 => "\\PC{0,8}".prop_map(|s| format!("{s:?}")),
        1 => prop::collection::vec(prop::sample::select(KEYS), 2..5).prop_map(|k| k.join(".")),
        // Very long key.
        1 => (1usize..20_000).prop_map(|n| "k".repeat(n)),
    ]
}

fn string_value() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(NAMES).prop_map(|s| format!("{s:?}")),
        2 => "\\PC{0,16}".prop_map(|s| format!("{s:?}")),
        2 => prop::sample::select(&[
            "${sweep.label_fraction}",
            "${sweep.frac}",
            "${sweep.nope}",
            "${sweep.}",
            "${",
            "${}",
            "${sweep.f}${sweep.s}",
            "x${sweep.f}y",
            "${HOME}",
            "${SEMIFLOW_FUZZ_SURELY_UNSET}",
            "${SEMIFLOW_FUZZ_SURELY_UNSET:-}",
            "${SEMIFLOW_FUZZ_SURELY_UNSET:-../data/cifar10-small}",
            "${1BAD}",
            "..",
            "",
            " ",
            "/",
        ][..])
        .prop_map(|s| format!("{s:?}")),
        // TOML string flavours.
        1 => "[a-z\\\\'\" ]{0,12}".prop_map(|s| format!("'{s}'")),
        1 => "\\PC{0,12}".prop_map(|s| format!("\"\"\"{s}\"\"\"")),
        1 => "[a-z\\\\]{0,12}".prop_map(|s| format!("'''{s}'''")),
        // Very long string.
        1 => (1usize..200_000).prop_map(|n| format!("\"{}\"", "é".repeat(n))),
    ]
}

fn scalar() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => string_value(),
        2 => any::<i64>().prop_map(|i| i.to_string()),
        2 => (-3i64..300).prop_map(|i| i.to_string()),
        1 => prop::sample::select(&[
            "0",
            "-0",
            "+1",
            "1_000",
            "0x10",
            "0o777",
            "0b101",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775809",
            "99999999999999999999999999",
            "0xFFFFFFFFFFFFFFFFFF",
            "1e309",
            "-1e309",
            "nan",
            "inf",
            "-inf",
            "+nan",
            "1e-400",
            "5e-4",
            "0.0",
            "-0.0",
            "1.7976931348623157e308",
            "true",
            "false",
            "1979-05-27T07:32:00Z",
            "1979-05-27",
            "07:32:00",
            "1979-05-27T00:32:00.999999-07:00",
        ][..])
        .prop_map(str::to_string),
        2 => any::<f64>().prop_map(|f| format!("{f:?}")),
        1 => any::<bool>().prop_map(|b| b.to_string()),
    ]
}

fn value() -> impl Strategy<Value = String> {
    let nested = scalar().prop_recursive(4, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec((key(), inner), 0..5).prop_map(|kv| {
                let items: Vec<String> =
                    kv.into_iter().map(|(k, v)| format!("{k} = {v}")).collect();
                format!("{{ {} }}", items.join(", "))
            }),
        ]
    });
    prop_oneof![
        6 => nested,
        // Deeply nested arrays and inline tables.
        1 => (1usize..3000).prop_map(|d| format!("{}1{}", "[".repeat(d), "]".repeat(d))),
        1 => (1usize..3000).prop_map(|d| format!("{}1{}", "{ a = ".repeat(d), " }".repeat(d))),
        // Unbalanced nesting.
        1 => (1usize..3000).prop_map(|d| "[".repeat(d)),
        // Large arrays.
        1 => (0usize..5000).prop_map(|n| {
            format!("[{}]", (0..n).map(|i| i.to_string()).collect::<Vec<_>>().join(","))
        }),
    ]
}

fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (key(), value()).prop_map(|(k, v)| format!("{k} = {v}")),
        2 => (prop::sample::select(&["nodes", "datasets", "defaults", "sweep", "pipeline", "x"][..]),
              prop::sample::select(NAMES))
            .prop_map(|(t, n)| format!("[{t}.{n}]")),
        1 => prop::sample::select(&[
            "[pipeline]", "[sweep]", "[nodes]", "[datasets]", "[defaults]", "[[nodes]]",
            "[[nodes.pretrain]]", "[[sweep]]", "[]", "[nodes.]", "[nodes.\"a b\"]",
            "[nodes.'ünï']", "kind", "=", "= 1", "#", "\"", "'''", "\"\"\"", "\u{0}", "\r",
            "\u{feff}", "[nodes.pretrain.model]", "[nodes.split.fraction]",
        ][..])
        .prop_map(str::to_string),
        // Deeply nested tables.
        1 => (1usize..500).prop_map(|d| format!("[{}]", vec!["t"; d].join("."))),
        1 => (1usize..500).prop_map(|d| format!("{} = 1", vec!["k"; d].join("."))),
        1 => "\\PC{0,40}",
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Mutation::FlipByte(i, x)),
        2 => any::<Index>().prop_map(Mutation::Truncate),
        3 => any::<Index>().prop_map(Mutation::DeleteLine),
        3 => any::<Index>().prop_map(Mutation::DuplicateLine),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        5 => (any::<Index>(), line()).prop_map(|(i, l)| Mutation::InsertLine(i, l)),
        5 => (any::<Index>(), value()).prop_map(|(i, v)| Mutation::ReplaceValue(i, v)),
        2 => (any::<Index>(), "\\PC{1,8}|[\u{80}-\u{10ffff}]{1,4}")
            .prop_map(|(i, s)| Mutation::InsertText(i, s)),
        1 => (1usize..8, 1usize..40).prop_map(|(vars, values)| Mutation::SweepBomb { vars, values }),
    ]
}

fn split_lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
}

fn join_lines(lines: &[Vec<u8>]) -> Vec<u8> {
    lines.join(&b'\n')
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    match m {
        Mutation::FlipByte(i, x) => {
            if !bytes.is_empty() {
                let at = i.index(bytes.len());
                bytes[at] ^= x;
            }
        }
        Mutation::Truncate(i) => {
            let at = i.index(bytes.len() + 1);
            bytes.truncate(at);
        }
        Mutation::DeleteLine(i) => {
            let mut lines = split_lines(bytes);
            lines.remove(i.index(lines.len()));
            *bytes = join_lines(&lines);
        }
        Mutation::DuplicateLine(i) => {
            let mut lines = split_lines(bytes);
            let at = i.index(lines.len());
            lines.insert(at, lines[at].clone());
            *bytes = join_lines(&lines);
        }
        Mutation::SwapLines(a, b) => {
            let mut lines = split_lines(bytes);
            let (a, b) = (a.index(lines.len()), b.index(lines.len()));
            lines.swap(a, b);
            *bytes = join_lines(&lines);
        }
        Mutation::InsertLine(i, l) => {
            let mut lines = split_lines(bytes);
            lines.insert(i.index(lines.len() + 1), l.as_bytes().to_vec());
            *bytes = join_lines(&lines);
        }
        Mutation::ReplaceValue(i, v) => {
            let mut lines = split_lines(bytes);
            // The i-th `key = value` line (wrapping), if any.
            let with_value: Vec<usize> = (0..lines.len())
                .filter(|&n| lines[n].contains(&b'=') && !lines[n].starts_with(b"#"))
                .collect();
            if !with_value.is_empty() {
                let n = with_value[i.index(with_value.len())];
                let eq = lines[n].iter().position(|&b| b == b'=').unwrap();
                lines[n].truncate(eq + 1);
                lines[n].push(b' ');
                lines[n].extend_from_slice(v.as_bytes());
                *bytes = join_lines(&lines);
            }
        }
        Mutation::InsertText(i, s) => {
            let mut at = i.index(bytes.len() + 1);
            // Keep valid UTF-8 valid (byte flips make invalid UTF-8 often enough).
            while at < bytes.len() && (bytes[at] & 0xC0) == 0x80 {
                at += 1;
            }
            bytes.splice(at..at, s.bytes());
        }
        Mutation::SweepBomb { vars, values } => {
            let mut lines = split_lines(bytes);
            let names: Vec<String> = (0..*vars).map(|v| format!("fuzz{v}")).collect();
            let decl: Vec<Vec<u8>> = names
                .iter()
                .map(|n| {
                    let vals: Vec<String> = (0..*values).map(|k| k.to_string()).collect();
                    format!("{n} = [{}]", vals.join(", ")).into_bytes()
                })
                .collect();
            let uses = format!(
                "tag = \"{}\"",
                names
                    .iter()
                    .map(|n| format!("${{sweep.{n}}}"))
                    .collect::<String>()
            )
            .into_bytes();
            // Into the first node table, then into [sweep] (or a new one at the end).
            if let Some(n) = lines.iter().position(|l| l.starts_with(b"[nodes.")) {
                lines.insert(n + 1, uses);
            }
            match lines.iter().position(|l| l.trim_ascii() == b"[sweep]") {
                Some(s) => {
                    for (k, d) in decl.into_iter().enumerate() {
                        lines.insert(s + 1 + k, d);
                    }
                }
                None => {
                    lines.push(b"[sweep]".to_vec());
                    lines.extend(decl);
                }
            }
            *bytes = join_lines(&lines);
        }
    }
}

#[derive(Debug, Clone)]
struct Case {
    seed: Index,
    mutations: Vec<Mutation>,
}

fn case() -> impl Strategy<Value = Case> {
    (any::<Index>(), prop::collection::vec(mutation(), 1..5))
        .prop_map(|(seed, mutations)| Case { seed, mutations })
}

impl Case {
    /// The mutated file's bytes and the seed name.
    fn build<'t>(&self, tree: &'t Tree) -> (&'t str, Vec<u8>) {
        let (name, text) = &tree.seeds[self.seed.index(tree.seeds.len())];
        let mut bytes = text.as_bytes().to_vec();
        for m in &self.mutations {
            apply(&mut bytes, m);
        }
        (name, bytes)
    }
}

// ---------------------------------------------------------------------------------------------
// Running one case

/// Where to write a case: next to its seed (so relative roots still resolve), under a unique name.
fn case_path(tree: &Tree, seed_name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let seed = tree.pipelines().join(seed_name);
    let stem = seed.file_stem().unwrap().to_string_lossy().into_owned();
    seed.with_file_name(format!("fuzz-{n}-{stem}.toml"))
}

/// The loader's outcome: `Ok(node count)` or the rendered error.
type Outcome = Result<usize, String>;

/// `semiflow::pipeline::load` in a thread (the main thread's 8 MiB stack, like the binary), under
/// `catch_unwind`, bounded by [`CASE_TIME_LIMIT`].
fn load_bounded(path: &Path) -> Result<Outcome, TestCaseError> {
    let (tx, rx) = mpsc::channel();
    let p = path.to_path_buf();
    std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || {
            let r = std::panic::catch_unwind(|| {
                semiflow::pipeline::load(&p, &[])
                    .map(|plan| plan.nodes.len())
                    .map_err(|e| e.to_string())
            });
            let _ = tx.send(r.map_err(|e| panic_message(&*e)));
        })
        .unwrap();
    match rx.recv_timeout(CASE_TIME_LIMIT) {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(msg)) => Err(TestCaseError::fail(format!("the loader panicked: {msg}"))),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(TestCaseError::fail(format!(
            "the loader did not return within {CASE_TIME_LIMIT:?} (hang)"
        ))),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(TestCaseError::fail(
            "the loader thread died without a result",
        )),
    }
}

fn panic_message(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| e.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(non-string panic payload)".into())
}

/// The properties for one file: no panic, no hang, errors name the file.
fn check_in_process(path: &Path) -> Result<Outcome, TestCaseError> {
    let outcome = load_bounded(path)?;
    if let Err(msg) = &outcome {
        let name = path.display().to_string();
        // Every diagnostic is rendered `error: FILE:line:col: ...` or `error: FILE: ...`.
        for d in msg.split("\n\n").filter(|d| d.starts_with("error: ")) {
            prop_assert!(
                d.starts_with(&format!("error: {name}")),
                "a diagnostic does not name the file {name}:\n{d}"
            );
        }
        prop_assert!(
            msg.contains(&name),
            "the error does not name {name}:\n{msg}"
        );
    }
    Ok(outcome)
}

fn verdict<T, E>(r: &Result<T, E>) -> &'static str {
    if r.is_ok() {
        "passed"
    } else {
        "FAILED"
    }
}

fn write_case(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).unwrap();
}

// ---------------------------------------------------------------------------------------------
// The fuzz targets

#[test]
fn fuzz_loader_in_process() {
    let tree = tree();
    // The seeds themselves are valid: mutations start from files that reach every phase.
    for (name, text) in &tree.seeds {
        let p = case_path(&tree, name);
        write_case(&p, text.as_bytes());
        match check_in_process(&p).unwrap() {
            Ok(n) => assert!(n > 0, "{name}: no nodes"),
            Err(e) => panic!("seed {name} does not validate:\n{e}"),
        }
        std::fs::remove_file(&p).unwrap();
    }

    let cases = cases_from_env(5000);
    let (ran, valid, slowest) = (
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        std::sync::Mutex::new(Duration::ZERO),
    );
    let started = Instant::now();
    let mut runner = TestRunner::new(config(cases));
    let result = runner.run(&case(), |c| {
        ran.fetch_add(1, Ordering::Relaxed);
        let (seed, bytes) = c.build(&tree);
        let path = case_path(&tree, seed);
        write_case(&path, &bytes);
        let t = Instant::now();
        let outcome = check_in_process(&path);
        let took = t.elapsed();
        {
            let mut s = slowest.lock().unwrap();
            *s = (*s).max(took);
        }
        // A hung case's file stays (its thread may still read it).
        if !matches!(&outcome, Err(e) if e.to_string().contains("hang")) {
            let _ = std::fs::remove_file(&path);
        }
        if let Ok(Ok(_)) = outcome {
            valid.fetch_add(1, Ordering::Relaxed);
        }
        outcome.map(|_| ())
    });
    println!(
        "fuzz_pipeline (in-process loader): {cases} cases {} ({} loader runs incl. persisted \
         regressions and shrinking; {} mutated files still valid), slowest case {:?}, {:.1} s",
        verdict(&result),
        ran.load(Ordering::Relaxed),
        valid.load(Ordering::Relaxed),
        slowest.lock().unwrap(),
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn fuzz_validate_binary() {
    let tree = tree();
    let cases = (cases_from_env(5000) / 25).max(8);
    let ran = AtomicUsize::new(0);
    let started = Instant::now();
    let mut runner = TestRunner::new(config(cases));
    let result = runner.run(&case(), |c| {
        ran.fetch_add(1, Ordering::Relaxed);
        let (seed, bytes) = c.build(&tree);
        let path = case_path(&tree, seed);
        write_case(&path, &bytes);
        let r = validate_binary(&path);
        let _ = std::fs::remove_file(&path);
        r
    });
    println!(
        "fuzz_pipeline (`semiflow validate` binary): {cases} cases {} ({} runs), {:.1} s",
        verdict(&result),
        ran.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// `semiflow validate FILE` with a time bound: exit 0 or 1, no panic, the file named on failure.
fn validate_binary(path: &Path) -> Result<(), TestCaseError> {
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_semiflow"))
        .arg("validate")
        .arg(path)
        .env_remove("CIFAR10_ROOT")
        .env_remove("FASHION_MNIST_ROOT")
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Output is read while the process runs (a long message would fill a pipe otherwise).
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(CASE_TIME_LIMIT * 2) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
            return Err(TestCaseError::fail("`semiflow validate` hung"));
        }
    };
    let status = out.status;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let name = path.display().to_string();
    prop_assert!(
        !stderr.contains("panicked"),
        "`semiflow validate` panicked:\n{stderr}"
    );
    match status.code() {
        Some(0) => prop_assert!(stdout.contains(&name), "stdout:\n{stdout}"),
        Some(1) => prop_assert!(
            stderr.contains(&name),
            "stderr does not name {name}:\n{stderr}"
        ),
        other => {
            return Err(TestCaseError::fail(format!(
                "`semiflow validate` exited with {other:?} (a signal?):\n{stderr}"
            )))
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Regression tests: the exact minimized inputs of bugs the fuzzer found.

/// The seed `name` (as listed by [`tree`]) with `mutations` applied, written into `tree`.
fn mutated(tree: &Tree, name: &str, mutations: &[Mutation]) -> PathBuf {
    let (_, text) = tree.seeds.iter().find(|(n, _)| n == name).unwrap();
    let mut bytes = text.as_bytes().to_vec();
    for m in mutations {
        apply(&mut bytes, m);
    }
    let path = case_path(tree, name);
    write_case(&path, &bytes);
    path
}

/// Bug 1 (fuzzer, in-process): four sweep variables of 14 values each, used by the first node of
/// quickstart.toml, expanded every downstream node 38,416 times: `validate` ran for minutes
/// (seven variables of 39 values exhausted memory). Now: a bounded error naming the node.
#[test]
fn regression_sweep_bomb_is_rejected_quickly() {
    let tree = tree();
    let path = mutated(
        &tree,
        "quickstart.toml",
        &[Mutation::SweepBomb {
            vars: 4,
            values: 14,
        }],
    );
    let t = Instant::now();
    let err = check_in_process(&path).unwrap().unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(
        err.contains("more than the 10000 allowed")
            && err.contains("node `finetune` alone becomes 76832 nodes")
            && err.contains("`fuzz3` (14 values) × `label_fraction` (2 values)"),
        "{err}"
    );
    // The same through the binary (minimized by the binary fuzz target: 3 × 26 on cifar10-seeds).
    let path = mutated(
        &tree,
        "cifar10-seeds.toml",
        &[Mutation::SweepBomb {
            vars: 3,
            values: 26,
        }],
    );
    validate_binary(&path).unwrap();
    // Products beyond u64 (40^12) and beyond u128 (40^30) are reported the same way, without
    // expanding anything.
    let path = mutated(
        &tree,
        "minimal.toml",
        &[Mutation::SweepBomb {
            vars: 12,
            values: 40,
        }],
    );
    let err = check_in_process(&path).unwrap().unwrap_err();
    assert!(
        err.contains("node `p` alone becomes 16777216000000000000 nodes"),
        "{err}"
    );
    let path = mutated(
        &tree,
        "minimal.toml",
        &[Mutation::SweepBomb {
            vars: 30,
            values: 40,
        }],
    );
    let err = check_in_process(&path).unwrap().unwrap_err();
    assert!(
        err.contains("to more than 2^128 nodes") && err.contains("alone becomes more than 2^128"),
        "{err}"
    );
}

/// Sweeps up to the bound still expand; one node past it is refused.
#[test]
fn sweeps_expand_up_to_the_bound() {
    let tree = tree();
    let sweep = |f: usize, s: usize| {
        let fs: Vec<String> = (1..=f).map(|i| format!("{}", i as f64 / 1000.0)).collect();
        let ss: Vec<String> = (0..s).map(|i| i.to_string()).collect();
        format!(
            r#"[pipeline]
name = "bound"

[datasets.d]
format = "image-folder"
root = "../data/cifar10-small"

[sweep]
f = [{}]
s = [{}]

[nodes.split]
kind = "split"
data = "d"
fraction = "${{sweep.f}}"
seed = "${{sweep.s}}"
"#,
            fs.join(", "),
            ss.join(", ")
        )
    };
    let path = case_path(&tree, "bound.toml");
    write_case(&path, sweep(10, 10).as_bytes());
    assert_eq!(check_in_process(&path).unwrap().unwrap(), 1 + 100);
    // 1 dataset + 9,999 splits is the most; 1 + 10,000 is refused.
    write_case(&path, sweep(101, 99).as_bytes());
    assert_eq!(check_in_process(&path).unwrap().unwrap(), 1 + 9_999);
    write_case(&path, sweep(100, 100).as_bytes());
    let err = check_in_process(&path).unwrap().unwrap_err();
    assert!(
        err.contains("expands the pipeline to 10001 nodes, more than the 10000 allowed")
            && err.contains("node `split` alone becomes 10000 nodes")
            && err.contains("`f` (100 values) × `s` (100 values)"),
        "{err}"
    );
}
