//! Malformed pipelines: each must fail validation with a message that names the place
//! (`file:line:col` or `--set #N:1:col`), the key, and what is wrong.

#[path = "pipeline_support/mod.rs"]
mod support;

use support::Scratch;

/// Seven lines; case bodies appended to it start at line 8.
const HEAD: &str = r#"[pipeline]
name = "t"

[datasets.cifar10]
format = "image-folder"
root = "data"

"#;

/// The `[datasets.cifar10]` table of `HEAD`.
const DATASET: &str = "[datasets.cifar10]\nformat = \"image-folder\"\nroot = \"data\"\n";

/// Pretrain node at lines 8-10.
const PRETRAIN: &str = r#"[nodes.pretrain]
kind = "pretrain"
data = "cifar10"
"#;

struct Case {
    name: &'static str,
    text: String,
    overrides: &'static [&'static str],
    /// Expected in the rendered error.
    fragment: &'static str,
    /// Where the first diagnostic points: `None` for the file, `Some(n)` for `--set #n`.
    set: Option<usize>,
    line: usize,
    col: usize,
}

fn case(name: &'static str, text: String, fragment: &'static str, line: usize, col: usize) -> Case {
    Case {
        name,
        text,
        overrides: &[],
        fragment,
        set: None,
        line,
        col,
    }
}

fn set_case(
    name: &'static str,
    overrides: &'static [&'static str],
    fragment: &'static str,
    col: usize,
) -> Case {
    Case {
        name,
        text: format!("{HEAD}{PRETRAIN}epochs = 3\n"),
        overrides,
        fragment,
        set: Some(1),
        line: 1,
        col,
    }
}

fn cases() -> Vec<Case> {
    vec![
        case("toml syntax", format!("{HEAD}{PRETRAIN}epochs = \n"), "TOML syntax", 11, 10),
        case("duplicate key", format!("{HEAD}{PRETRAIN}epochs = 1\nepochs = 2\n"), "duplicate key", 12, 1),
        case(
            "unknown key with suggestion",
            format!("{HEAD}{PRETRAIN}epoch = 3\n"),
            "nodes.pretrain.epoch: unknown key `epoch` in [nodes.pretrain]\n",
            11,
            1,
        ),
        case("wrong type", format!("{HEAD}{PRETRAIN}epochs = \"ten\"\n"), "nodes.pretrain.epochs: invalid type: string \"ten\"", 11, 10),
        case("missing kind", format!("{HEAD}[nodes.pretrain]\ndata = \"cifar10\"\n"), "nodes.pretrain.kind: missing required key `kind`", 8, 1),
        case(
            "unknown kind",
            format!("{HEAD}[nodes.pretrain]\nkind = \"pretrian\"\n"),
            "unknown stage kind `pretrian`\n",
            9,
            8,
        ),
        case(
            "missing required dataset param",
            "[pipeline]\nname = \"t\"\n\n[datasets.cifar10]\nroot = \"data\"\n".to_string() + PRETRAIN,
            "datasets.cifar10: missing required key `format`",
            4,
            1,
        ),
        case(
            "missing required reference",
            format!("{HEAD}{PRETRAIN}[nodes.ft]\nkind = \"finetune\"\nlabels = \"s\"\n[nodes.s]\nkind = \"split\"\ndata = \"cifar10\"\nfraction = 0.1\n"),
            "nodes.ft.from: missing required key `from`",
            11,
            1,
        ),
        case(
            "undefined node",
            format!("{HEAD}{PRETRAIN}[nodes.finetune]\nkind = \"finetune\"\nfrom = \"pretrain2\"\nlabels = \"x\"\n"),
            "node `finetune` references undefined node `pretrain2` in key `from`",
            13,
            8,
        ),
        case(
            "wrong kind of node",
            format!("{HEAD}{PRETRAIN}[nodes.finetune]\nkind = \"finetune\"\nfrom = \"pretrain\"\nlabels = \"pretrain\"\n"),
            "`pretrain` is a pretrain node, but `labels` must name a node of kind split",
            14,
            10,
        ),
        case(
            "dataset where a node is expected",
            format!("{HEAD}{PRETRAIN}[nodes.eval]\nkind = \"eval\"\nmodels = [\"pretrain\", \"cifar10\"]\n"),
            "`cifar10` is a dataset, but `models` must name a node of kind finetune or supervised or distill or pretrain",
            13,
            23,
        ),
        case(
            "undefined dataset",
            format!("{HEAD}[nodes.pretrain]\nkind = \"pretrain\"\ndata = \"cifar100\"\n"),
            "node `pretrain` references undefined dataset `cifar100` in key `data`",
            10,
            8,
        ),
        case(
            "dataset root missing",
            format!("[pipeline]\nname = \"t\"\n\n[datasets.cifar10]\nformat = \"idx\"\nroot = \"no/such/dir\"\n\n{PRETRAIN}"),
            "datasets.cifar10.root: dataset root ",
            6,
            8,
        ),
        case(
            "unset environment variable in root",
            format!("[pipeline]\nname = \"t\"\n[datasets.cifar10]\nformat = \"idx\"\nroot = \"${{SEMIFLOW_TEST_SURELY_UNSET}}/c\"\n{PRETRAIN}"),
            "environment variable `SEMIFLOW_TEST_SURELY_UNSET` is not set",
            5,
            8,
        ),
        case(
            "undefined sweep variable",
            format!("{HEAD}[sweep]\nlabel_fraction = [0.1]\nseed = [0, 1]\n\n[nodes.split]\nkind = \"split\"\ndata = \"cifar10\"\nfraction = \"${{sweep.lr}}\"\n"),
            "`${sweep.lr}` is not a sweep variable; defined: label_fraction, seed",
            15,
            12,
        ),
        case("empty sweep list", format!("{HEAD}[sweep]\nlabel_fraction = []\n{PRETRAIN}"), "sweep variable `label_fraction` has no values", 9, 18),
        case(
            "cycle",
            format!(
                "{HEAD}[nodes.a]\nkind = \"distill\"\ndata = \"cifar10\"\nteacher = \"b\"\n\n[nodes.b]\nkind = \"distill\"\ndata = \"cifar10\"\nteacher = \"a\"\n"
            ),
            "cycle: a → b → a",
            11,
            11,
        ),
        case(
            "nested unknown key",
            format!("{HEAD}{PRETRAIN}model = {{ depth = 18, widht = 0.5 }}\n"),
            "nodes.pretrain.model.widht: unknown key `widht` in [nodes.pretrain.model]",
            11,
            23,
        ),
        case("pipeline without name", format!("[pipeline]\nseed = 1\n{DATASET}{PRETRAIN}"), "pipeline.name: missing required key `name`", 1, 1),
        case("unknown top-level table", format!("{HEAD}[node.pretrain]\nkind = \"pretrain\"\n"), "unknown key `node` at the top level", 8, 2),
        case("unknown key in [pipeline]", format!("[pipeline]\nname = \"t\"\nsed = 3\n{DATASET}{PRETRAIN}"), "unknown key `sed` in [pipeline]", 3, 1),
        case(
            "kind-level check",
            format!("{HEAD}[nodes.split]\nkind = \"split\"\ndata = \"cifar10\"\n"),
            "nodes.split: set exactly one of `fraction` and `per_class`",
            8,
            1,
        ),
        case(
            "bad value at one sweep point",
            format!("{HEAD}[sweep]\nf = [0.5, \"half\"]\n[nodes.split]\nkind = \"split\"\ndata = \"cifar10\"\nfraction = \"${{sweep.f}}\"\n"),
            "(in sweep point split[f=half])",
            13,
            12,
        ),
        case(
            "dataset declared as a node",
            format!("{HEAD}[nodes.d]\nkind = \"dataset\"\nformat = \"idx\"\n"),
            "datasets are declared as [datasets.NAME], not as nodes",
            9,
            8,
        ),
        case(
            "sweep variable in a reference",
            format!("{HEAD}[sweep]\nd = [\"cifar10\"]\n[nodes.pretrain]\nkind = \"pretrain\"\ndata = \"${{sweep.d}}\"\n"),
            "references cannot use placeholders",
            12,
            8,
        ),
        case(
            "duplicate sweep value",
            format!("{HEAD}[sweep]\nf = [0.1, 0.1]\n{PRETRAIN}"),
            "value 0.1 appears twice",
            9,
            11,
        ),
        case("negative seed", format!("{HEAD}{PRETRAIN}seed = -1\n"), "expected a non-negative integer, found -1", 11, 8),
        case(
            "defaults for an unknown kind",
            format!("{HEAD}[defaults.finetun]\nepochs = 3\n{PRETRAIN}"),
            "defaults.finetun: [defaults.finetun] names no stage kind",
            8,
            11,
        ),
        case(
            "kind in defaults",
            format!("{HEAD}[defaults.pretrain]\nkind = \"pretrain\"\n{PRETRAIN}"),
            "`kind` cannot have a default",
            9,
            1,
        ),
        case(
            "bad default reported at its own line",
            format!("{HEAD}[defaults.pretrain]\nepoch = 3\n\n{PRETRAIN}"),
            "nodes.pretrain.epoch: unknown key `epoch` in [nodes.pretrain]",
            9,
            1,
        ),
        case(
            "defaults that no node uses",
            format!("{HEAD}[defaults.finetune]\nepochs = 3\n{PRETRAIN}"),
            "[defaults.finetune] applies to no node",
            8,
            11,
        ),
        set_case("--set unknown node", &["pretrian.epochs=5"], "names unknown node `pretrian`", 1),
        set_case("--set without =", &["pretrain.epochs"], "`--set pretrain.epochs` has no `=`", 1),
        set_case("--set unknown key", &["pretrain.epoch=5"], "unknown key `epoch` in [nodes.pretrain]", 10),
        set_case("--set wrong type", &["pretrain.model.depth=[1]"], "nodes.pretrain.model.depth: invalid type: sequence", 22),
        set_case("--set into a non-table", &["pretrain.epochs.x=1"], "`nodes.pretrain.epochs` is an integer", 10),
    ]
}

#[test]
fn malformed_pipelines_are_reported_precisely() {
    let cases = cases();
    assert!(cases.len() >= 15);
    let mut failures = Vec::new();
    for c in &cases {
        let scratch = Scratch::new(&c.text);
        let err = match scratch.load(c.overrides) {
            Ok(_) => {
                failures.push(format!("{}: loaded without error", c.name));
                continue;
            }
            Err(e) => e,
        };
        let rendered = err.to_string();
        let first = err.first();
        let loc = first.location.as_ref().expect("every case has a location");
        let want_source = match c.set {
            None => scratch.file().display().to_string(),
            Some(n) => format!("--set #{n}"),
        };
        let problems = [
            (!rendered.contains(c.fragment)).then(|| format!("missing fragment {:?}", c.fragment)),
            (loc.source != want_source)
                .then(|| format!("source {} (want {want_source})", loc.source)),
            ((loc.line, loc.column) != (c.line, c.col))
                .then(|| format!("at {}:{} (want {}:{})", loc.line, loc.column, c.line, c.col)),
            (!rendered.starts_with(&format!(
                "error: {}:{}:{}: ",
                loc.source, loc.line, loc.column
            )))
            .then(|| "bad first line".to_string()),
        ];
        let problems: Vec<String> = problems.into_iter().flatten().collect();
        if !problems.is_empty() {
            failures.push(format!(
                "{}: {}\n---\n{rendered}\n---",
                c.name,
                problems.join("; ")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn help_lines_say_what_to_write_instead() {
    let help_of = |text: String, overrides: &[&str]| -> String {
        let err = Scratch::new(&text).load(overrides).unwrap_err();
        err.first().help.clone().unwrap_or_default()
    };
    assert!(
        help_of(format!("{HEAD}{PRETRAIN}epoch = 3\n"), &[]).starts_with("did you mean `epochs`?")
    );
    let kinds = help_of(format!("{HEAD}[nodes.p]\nkind = \"pretrian\"\n"), &[]);
    assert!(
        kinds.starts_with("did you mean `pretrain`? (known kinds: `dataset`, `pretrain`, `split`"),
        "{kinds}"
    );
    let nodes = help_of(format!("{HEAD}{PRETRAIN}[nodes.ft]\nkind = \"finetune\"\nfrom = \"pretrain2\"\nlabels = \"x\"\n"), &[]);
    assert!(nodes.starts_with("did you mean `pretrain`?"), "{nodes}");
    let sweep = help_of(format!("{HEAD}[sweep]\nlabel_fraction = [0.1]\n[nodes.s]\nkind = \"split\"\ndata = \"cifar10\"\nfraction = \"${{sweep.label_fracton}}\"\n"), &[]);
    assert_eq!(sweep, "did you mean `${sweep.label_fraction}`?");
    let defaults = help_of(
        format!("{HEAD}[defaults.finetun]\nepochs = 3\n{PRETRAIN}"),
        &[],
    );
    assert!(
        defaults.starts_with("did you mean `finetune`?"),
        "{defaults}"
    );
    let cycle = help_of(
        format!("{HEAD}[nodes.a]\nkind = \"distill\"\ndata = \"cifar10\"\nteacher = \"a\"\n"),
        &[],
    );
    assert!(
        cycle.starts_with("`a` reads `a` (key `teacher`)"),
        "{cycle}"
    );
}

#[test]
fn every_problem_in_a_phase_is_reported_in_file_order() {
    let text = format!("{HEAD}{PRETRAIN}epoch = 3\n[nodes.s]\nkind = \"split\"\ndata = \"cifar10\"\nfracton = 0.1\n");
    let err = Scratch::new(&text).load(&[]).unwrap_err();
    let at: Vec<_> = err
        .diagnostics
        .iter()
        .map(|d| (d.key.as_str(), d.line_col()))
        .collect();
    assert_eq!(
        at,
        [
            ("nodes.pretrain.epoch", Some((11, 1))),
            ("nodes.s.fracton", Some((15, 1)))
        ]
    );
    assert!(err.to_string().ends_with("2 errors in pipeline"));
}

#[test]
fn rendered_error_shows_the_line_and_a_caret() {
    let scratch = Scratch::new(&format!("{HEAD}{PRETRAIN}epoch = 3\n"));
    let err = scratch.load(&[]).unwrap_err().to_string();
    let file = scratch.file().display().to_string();
    let expected = format!(
        "error: {file}:11:1: nodes.pretrain.epoch: unknown key `epoch` in [nodes.pretrain]\n   |\n11 | epoch = 3\n   | ^^^^^\nhelp: did you mean `epochs`?"
    );
    assert!(err.starts_with(&expected), "{err}");
}

#[test]
fn unreadable_file_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let err = semiflow::pipeline::load_with(&missing, &[], &support::KINDS).unwrap_err();
    assert!(err.first().location.is_none());
    assert!(err.to_string().starts_with(&format!(
        "error: {}: cannot read the pipeline file",
        missing.display()
    )));
}
