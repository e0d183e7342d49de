//! `[claims.*]`: malformed claim tables are reported at line:column with the key, and claims are
//! checked with exact verdicts (holds / fails / within noise) on real eval records through the
//! real binary (`semiflow report --json`, `semiflow audit --claims`).

mod real_support;
#[path = "pipeline_support/mod.rs"]
mod support;

use support::Scratch;

/// Lines 1-21: a dataset, a swept split, finetune and supervised nodes, an eval.
const HEAD: &str = r#"[pipeline]
name = "t"

[datasets.cifar10]
format = "image-folder"
root = "data"

[sweep]
label_fraction = [0.01, 0.1]

[nodes.split]
kind = "split"
data = "cifar10"
fraction = "${sweep.label_fraction}"

[nodes.finetune]
kind = "supervised"
labels = "split"
data = "cifar10"

[nodes.supervised]
kind = "supervised"
labels = "split"
data = "cifar10"
lr = 0.5

"#;

fn head_lines() -> usize {
    HEAD.lines().count()
}

/// (name, claim body after `[claims.c]`, expected fragment, line offset within the body, column).
fn cases() -> Vec<(&'static str, &'static str, &'static str, usize, usize)> {
    vec![
        (
            "missing better",
            "than = \"supervised\"\n",
            "claims.c.better: missing required key `better`",
            0,
            1,
        ),
        (
            "unknown node",
            "better = \"finetun\"\nthan = \"supervised\"\n",
            "claims.c.better: unknown node `finetun`",
            1,
            10,
        ),
        (
            "better not a string",
            "better = 3\nthan = \"supervised\"\n",
            "claims.c.better: expected a node name (string)",
            1,
            10,
        ),
        (
            "missing than",
            "better = \"finetune\"\n",
            "claims.c.than: missing required key `than`",
            0,
            1,
        ),
        (
            "unknown metric",
            "better = \"finetune\"\nthan = \"supervised\"\nmetric = \"top3\"\n",
            "claims.c.metric: unknown metric `top3`",
            3,
            10,
        ),
        (
            "unknown split",
            "better = \"finetune\"\nthan = \"supervised\"\nsplit = \"valid\"\n",
            "claims.c.split: unknown split `valid`",
            3,
            9,
        ),
        (
            "unknown kind",
            "better = \"finetune\"\nthan = \"supervised\"\nkind = \"worse\"\n",
            "claims.c.kind: unknown kind `worse`",
            3,
            8,
        ),
        (
            "margin not a number",
            "better = \"finetune\"\nthan = \"supervised\"\nmargin = \"2\"\n",
            "claims.c.margin: expected a number of percentage points",
            3,
            10,
        ),
        (
            "at not a table",
            "better = \"finetune\"\nthan = \"supervised\"\nat = 0.01\n",
            "claims.c.at: expected a table of sweep values",
            3,
            6,
        ),
        (
            "at unknown variable",
            "better = \"finetune\"\nthan = \"supervised\"\nat = { fraction = [0.01] }\n",
            "claims.c.at.fraction: `fraction` is not a sweep variable",
            3,
            8,
        ),
        (
            "at value not swept",
            "better = \"finetune\"\nthan = \"supervised\"\nat = { label_fraction = [0.05] }\n",
            "claims.c.at.label_fraction: 0.05 is not a value of sweep variable `label_fraction`",
            3,
            26,
        ),
        (
            "unknown key",
            "better = \"finetune\"\nthan = \"supervised\"\nmargn = 1\n",
            "claims.c.margn: unknown key `margn` in [claims.c]",
            3,
            1,
        ),
        (
            "description not a string",
            "better = \"finetune\"\nthan = \"supervised\"\ndescription = 1\n",
            "claims.c.description: expected a string",
            3,
            15,
        ),
        (
            "gain_over malformed",
            "better = \"finetune\"\nthan = \"supervised\"\ngain_over = \"finetune\"\n",
            "claims.c.gain_over: expected two node names",
            3,
            13,
        ),
        (
            "gain_over unknown node",
            "better = \"finetune\"\nthan = \"supervised\"\ngain_over = [\"finetune\", \"nope\"]\n",
            "claims.c.gain_over: unknown node `nope`",
            3,
            13,
        ),
        (
            "same node twice",
            "better = \"finetune\"\nthan = \"finetune\"\n",
            "`better` and `than` name the same node",
            0,
            1,
        ),
    ]
}

#[test]
fn malformed_claims_are_reported_at_their_key() {
    let mut failures = Vec::new();
    for (name, body, fragment, offset, col) in cases() {
        let text = format!("{HEAD}[claims.c]\n{body}");
        let scratch = Scratch::new(&text);
        std::fs::create_dir_all(scratch.path().join("data")).unwrap();
        let err = match scratch.load(&[]) {
            Ok(_) => {
                failures.push(format!("{name}: loaded without error"));
                continue;
            }
            Err(e) => e,
        };
        let rendered = err.to_string();
        let loc = err.first().location.clone().expect("a location");
        // The `[claims.c]` header is the line after HEAD.
        let line = head_lines() + 1 + offset;
        if !rendered.contains(fragment) || (loc.line, loc.column) != (line, col) {
            failures.push(format!(
                "{name}: want {fragment:?} at {line}:{col}, got {}:{}\n{rendered}",
                loc.line, loc.column
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Three small supervised networks on the tiny CIFAR-10 images; `twin` is `strong` under another
/// name (same key, identical results). Exact verdicts come from margins far outside any noise on
/// 100 test images (±2σ ≤ 20 points), so they do not depend on how well the networks learn.
fn pipeline(claims: &str) -> String {
    format!(
        r#"
[pipeline]
name = "claims"
seed = 0

[datasets.d]
format = "image-folder"
root = "{root}"

[sweep]
label_fraction = [0.5]

[nodes.split]
kind = "split"
data = "d"
fraction = "${{sweep.label_fraction}}"

[defaults.supervised]
labels = "split"
data = "d"
model = {{ depth = 10, width = 0.125 }}
batch_size = 32

[nodes.strong]
kind = "supervised"
epochs = 6
lr = 0.5

[nodes.weak]
kind = "supervised"
epochs = 1
lr = 0.1

[nodes.twin]
kind = "supervised"
epochs = 6
lr = 0.5
seed = 0

[nodes.eval]
kind = "eval"
data = "d"
models = ["strong", "weak", "twin"]

{claims}
"#,
        root = real_support::cifar_tiny().display()
    )
}

const CLAIMS: &str = r#"
[claims.holds]
better = "strong"
than = "weak"
margin = -60.0

[claims.fails]
better = "weak"
than = "strong"
margin = 60.0

[claims.noise]
better = "strong"
than = "twin"

[claims.tie_at_least]
better = "twin"
than = "strong"
kind = "at_least"
"#;

#[test]
fn claims_get_exact_verdicts_and_audit_notices_a_lost_claim() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let file = dir.path().join("p.toml");
    std::fs::write(&file, pipeline(CLAIMS)).unwrap();
    let run = |args: &[&str]| {
        let out = real_support::semiflow()
            .args(args)
            .arg("--store")
            .arg(&store)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let f = file.to_str().unwrap();
    let (code, _, err) = run(&["-q", "run", f]);
    assert_eq!(code, Some(0), "{err}");
    let report = dir.path().join("report");
    let r = report.to_str().unwrap();
    let (code, json, err) = run(&["report", f, "--out", r, "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let checks: serde_json::Value = serde_json::from_str(&json).unwrap();
    let verdict = |name: &str| -> String {
        let c = checks
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["claim"] == name)
            .unwrap_or_else(|| panic!("no check for {name}: {json}"));
        c["verdict"].as_str().unwrap().to_string()
    };
    assert_eq!(verdict("holds"), "holds", "{json}");
    assert_eq!(verdict("fails"), "fails", "{json}");
    assert_eq!(verdict("noise"), "within_noise", "{json}");
    assert_eq!(verdict("tie_at_least"), "holds", "{json}");
    // The binomial basis: 100 test images each.
    let first = &checks[0];
    assert_eq!(first["better"]["images"], 100.0, "{json}");
    let md = std::fs::read_to_string(report.join("report.md")).unwrap();
    assert!(md.contains("## Claims"), "{md}");
    assert!(md.contains("| **holds** |"), "{md}");

    // Same results: the audit passes.
    let (code, out, err) = run(&["audit", f, "--claims", "--report", r]);
    assert_eq!(code, Some(0), "{out}{err}");
    // The claim that held is now stated with a margin no result can meet: it no longer holds.
    std::fs::write(
        &file,
        pipeline(&CLAIMS.replace("margin = -60.0", "margin = 60.0")),
    )
    .unwrap();
    let (code, out, _) = run(&["audit", f, "--claims", "--report", r]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL  claim holds held in"), "{out}");
    assert!(out.contains("and now is FAILS"), "{out}");
}
