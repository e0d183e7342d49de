//! Valid pipelines: sweep expansion, sharing, references, canonical parameters, overrides, order,
//! and the DAG views built on the plan.

#[path = "pipeline_support/mod.rs"]
mod support;

use semiflow::graph::{self, Format};
use semiflow::plan::Plan;
use serde_json::json;
use support::{Scratch, SIMCLR};

fn names(plan: &Plan) -> Vec<&str> {
    plan.nodes.iter().map(|n| n.name.as_str()).collect()
}

fn node<'p>(plan: &'p Plan, name: &str) -> &'p semiflow::plan::PlanNode {
    &plan.nodes[plan
        .index_of(name)
        .unwrap_or_else(|| panic!("no node {name} in {:?}", names(plan)))]
}

fn input_names<'p>(plan: &'p Plan, name: &str, role: &str) -> Vec<&'p str> {
    node(plan, name).inputs[role]
        .iter()
        .map(|&i| plan.nodes[i].name.as_str())
        .collect()
}

#[test]
fn sweep_expands_users_and_shares_the_rest() {
    let scratch = Scratch::new(SIMCLR);
    let plan = scratch.load(&[]).unwrap();
    assert_eq!(
        names(&plan),
        [
            "dataset.cifar10",
            "pretrain",
            "split[label_fraction=0.01]",
            "split[label_fraction=0.1]",
            "finetune[label_fraction=0.01,seed=0]",
            "finetune[label_fraction=0.01,seed=1]",
            "finetune[label_fraction=0.1,seed=0]",
            "finetune[label_fraction=0.1,seed=1]",
            "eval[label_fraction=0.01,seed=0]",
            "eval[label_fraction=0.01,seed=1]",
            "eval[label_fraction=0.1,seed=0]",
            "eval[label_fraction=0.1,seed=1]",
        ]
    );
    assert_eq!(plan.name, "cifar10-simclrv2");
    assert_eq!(
        plan.sweep,
        vec![
            ("label_fraction".to_string(), vec![json!(0.01), json!(0.1)]),
            ("seed".to_string(), vec![json!(0), json!(1)])
        ]
    );

    // One pretrain feeds every fine-tune; each fine-tune reads the split of its own point.
    let ft = "finetune[label_fraction=0.1,seed=1]";
    assert_eq!(input_names(&plan, ft, "from"), ["pretrain"]);
    assert_eq!(
        input_names(&plan, ft, "labels"),
        ["split[label_fraction=0.1]"]
    );
    assert_eq!(
        input_names(&plan, "eval[label_fraction=0.1,seed=1]", "models"),
        [ft]
    );
    assert_eq!(input_names(&plan, "pretrain", "data"), ["dataset.cifar10"]);

    let ft = node(&plan, ft);
    assert_eq!(
        (ft.base.as_str(), ft.kind.as_str()),
        ("finetune", "finetune")
    );
    assert_eq!(
        ft.point,
        [
            ("label_fraction".to_string(), json!(0.1)),
            ("seed".to_string(), json!(1))
        ]
        .into_iter()
        .collect()
    );
    assert_eq!(ft.seed, 1, "seed from the sweep");
    assert_eq!(node(&plan, "pretrain").seed, 7, "pipeline seed by default");
    assert_eq!(
        node(&plan, "split[label_fraction=0.01]").params,
        json!({"fraction": 0.01, "per_class": null})
    );
    assert!(node(&plan, "pretrain").point.is_empty());
}

#[test]
fn nodes_come_in_dependency_order_whatever_the_file_order() {
    let text = r#"
[pipeline]
name = "reversed"

[nodes.eval]
kind = "eval"
models = ["student", "ft"]

[nodes.student]
kind = "distill"
teacher = "ft"
data = "d"

[nodes.ft]
kind = "finetune"
from = "pre"
labels = "split"

[nodes.split]
kind = "split"
data = "d"
per_class = 4

[nodes.pre]
kind = "pretrain"
data = "d"

[datasets.d]
format = "idx"
root = "data"
"#;
    let plan = Scratch::new(text).load(&[]).unwrap();
    assert_eq!(
        names(&plan),
        ["dataset.d", "split", "pre", "ft", "student", "eval"]
    );
    for (i, n) in plan.nodes.iter().enumerate() {
        assert!(
            n.inputs.values().flatten().all(|&j| j < i),
            "{} reads a later node",
            n.name
        );
    }
    // A list reference keeps the order it was written in.
    assert_eq!(input_names(&plan, "eval", "models"), ["student", "ft"]);
    let g = graph::build(&plan);
    // split, pre, student → d; ft → pre, split; student → ft; eval → student, ft.
    assert_eq!((g.node_count(), g.edge_count()), (6, 8));
    assert!(petgraph::algo::toposort(&g, None).is_ok());
}

#[test]
fn writing_a_default_out_does_not_change_params() {
    let with = |settings: &str| {
        let text = format!("[pipeline]\nname = \"p\"\n[datasets.d]\nformat = \"idx\"\nroot = \"data\"\n[nodes.pre]\nkind = \"pretrain\"\ndata = \"d\"\n{settings}");
        Scratch::new(&text).load(&[]).unwrap().nodes[1]
            .params
            .clone()
    };
    let implicit = with("");
    assert_eq!(
        implicit,
        json!({"epochs": 10, "model": {"depth": 18, "width": 1.0}, "lr": 0.3})
    );
    assert_eq!(
        with("epochs = 10\nmodel = { depth = 18, width = 1.0 }\nlr = 0.3\n"),
        implicit
    );
    assert_eq!(with("model = { depth = 18 }\n"), implicit);
    // Engine keys are not parameters.
    assert_eq!(with("seed = 3\ncheckpoint_every = 5\n"), implicit);
    assert_ne!(with("model = { width = 0.25 }\n"), implicit);
}

#[test]
fn overrides_are_applied_and_recorded() {
    let scratch = Scratch::new(SIMCLR);
    let sets = [
        "pretrain.epochs=30",
        "pretrain.model.width=0.5",
        "split.fraction=0.2",
        "finetune.checkpoint_every=0",
    ];
    let plan = scratch.load(&sets).unwrap();
    assert_eq!(plan.overrides, sets);
    let pre = node(&plan, "pretrain");
    assert_eq!(pre.params["epochs"], json!(30));
    assert_eq!(pre.params["model"], json!({"depth": 18, "width": 0.5}));
    // The split no longer uses the sweep, so only the fine-tune seeds remain swept.
    assert_eq!(node(&plan, "split").params["fraction"], json!(0.2));
    assert_eq!(node(&plan, "finetune[seed=1]").checkpoint_every, 0);
    assert_eq!(plan.nodes.len(), 1 + 1 + 1 + 2 + 2);
    // A sweep can be narrowed from the command line.
    let plan = scratch
        .load(&["sweep.label_fraction=[0.5]", "sweep.seed=[3]"])
        .unwrap();
    assert_eq!(plan.nodes.len(), 1 + 1 + 1 + 1 + 1);
    assert_eq!(node(&plan, "finetune[label_fraction=0.5,seed=3]").seed, 3);
    // Overriding the pipeline seed reaches nodes without their own.
    let plan = scratch.load(&["pipeline.seed=42"]).unwrap();
    assert_eq!(node(&plan, "pretrain").seed, 42);
}

#[test]
fn datasets_become_nodes_with_resolved_roots() {
    let text = r#"
[pipeline]
name = "p"

[datasets.used]
format = "cifar-bin"
root = "${SEMIFLOW_TEST_SURELY_UNSET:-data}"
train = "data_batch"

[datasets.unused]
format = "idx"
root = "data"

[nodes.pre]
kind = "pretrain"
data = "used"
"#;
    let scratch = Scratch::new(text);
    let plan = scratch.load(&[]).unwrap();
    assert_eq!(
        names(&plan),
        ["dataset.used", "pre"],
        "only referenced datasets become nodes"
    );
    let d = &plan.nodes[0];
    assert_eq!(d.kind, "dataset");
    assert_eq!(
        d.params,
        json!({"format": "cifar-bin", "train": "data_batch", "test": "test"})
    );
    let root = d.dataset_root.as_ref().unwrap();
    assert!(root.is_absolute());
    assert_eq!(
        root.canonicalize().unwrap(),
        scratch.path().join("data").canonicalize().unwrap()
    );
    assert_eq!(plan.nodes[1].dataset_root, None);
    assert_eq!(plan.nodes[1].checkpoint_every, 1);
}

#[test]
fn a_whole_placeholder_keeps_the_sweep_value_type() {
    // `per_class` is an integer parameter: "${sweep.n}" must arrive as 40, not "40".
    // (Interpolation inside longer strings is unit-tested in `pipeline::subst`.)
    let text = r#"
[pipeline]
name = "p"
[datasets.d]
format = "idx"
root = "data"
[sweep]
n = [4, 40]
[nodes.split]
kind = "split"
data = "d"
per_class = "${sweep.n}"
"#;
    let plan = Scratch::new(text).load(&[]).unwrap();
    assert_eq!(node(&plan, "split[n=40]").params["per_class"], json!(40));
}

#[test]
fn select_only_and_until() {
    let plan = Scratch::new(SIMCLR).load(&[]).unwrap();
    let sel = |only: &[&str], until: Option<&str>| -> Vec<String> {
        let only: Vec<String> = only.iter().map(|s| s.to_string()).collect();
        graph::select(&plan, &only, until)
            .unwrap()
            .into_iter()
            .map(|i| plan.nodes[i].name.clone())
            .collect()
    };
    assert_eq!(sel(&[], None).len(), plan.nodes.len());
    assert_eq!(
        sel(&["split"], None),
        ["split[label_fraction=0.01]", "split[label_fraction=0.1]"]
    );
    assert_eq!(
        sel(&["pretrain", "split[label_fraction=0.1]"], None),
        ["pretrain", "split[label_fraction=0.1]"]
    );
    assert_eq!(
        sel(&[], Some("finetune[label_fraction=0.1,seed=0]")),
        [
            "dataset.cifar10",
            "pretrain",
            "split[label_fraction=0.1]",
            "finetune[label_fraction=0.1,seed=0]"
        ]
    );
    assert_eq!(
        sel(&[], Some("split")),
        [
            "dataset.cifar10",
            "split[label_fraction=0.01]",
            "split[label_fraction=0.1]"
        ]
    );
    let err = graph::select(&plan, &[], Some("pretrian"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no node named `pretrian`"), "{err}");
    assert!(graph::select(&plan, &["pretrain".into()], Some("eval")).is_err());
    assert_eq!(
        graph::descendants(&plan, plan.index_of("split[label_fraction=0.1]").unwrap()).len(),
        4
    );
}

#[test]
fn renders_text_dot_and_mermaid() {
    let plan = Scratch::new(SIMCLR).load(&[]).unwrap();
    let text = graph::render(&plan, Format::Text);
    assert!(text.starts_with("cifar10-simclrv2: 12 nodes\n"), "{text}");
    assert!(text.contains("finetune[label_fraction=0.01,seed=0]  finetune  <- from: pretrain; labels: split[label_fraction=0.01]\n"), "{text}");

    let dot = graph::render(&plan, Format::Dot);
    assert!(dot.starts_with("digraph \"cifar10-simclrv2\" {\n"), "{dot}");
    assert!(
        dot.contains("    0 [ label = \"dataset.cifar10\\l(dataset)\" shape=cylinder ]\n"),
        "{dot}"
    );
    assert!(dot.contains("    1 -> 4 [ label = \"from\" ]\n"), "{dot}");
    assert!(dot.trim_end().ends_with('}'));

    let mermaid = graph::render(&plan, Format::Mermaid);
    assert!(mermaid.starts_with("flowchart LR\n"));
    assert!(
        mermaid.contains("  n1[\"pretrain<br/>(pretrain)\"]\n"),
        "{mermaid}"
    );
    assert!(mermaid.contains("  n2 -->|labels| n4\n"), "{mermaid}");
    assert_eq!(
        mermaid.matches("-->").count(),
        graph::build(&plan).edge_count()
    );
    assert_eq!("mermaid".parse::<Format>().unwrap(), Format::Mermaid);
    assert!("svg".parse::<Format>().is_err());
}

#[test]
fn kind_defaults_fill_every_node_of_the_kind_unless_it_sets_the_key() {
    let text = r#"
[pipeline]
name = "defaults"

[datasets.cifar10]
format = "image-folder"
root = "data"

[sweep]
f = [0.01, 0.1]

[defaults.finetune]
from = "pretrain"
labels = "split"
epochs = 30
head_layer = 2
seed = 5

[defaults.pretrain]
data = "cifar10"
model = { depth = 50, width = 2.0 }

[nodes.pretrain]
kind = "pretrain"

[nodes.split]
kind = "split"
data = "cifar10"
fraction = "${sweep.f}"

[nodes.ft]
kind = "finetune"

[nodes.ft_short]
kind = "finetune"
epochs = 3
seed = 1
"#;
    let scratch = Scratch::new(text);
    let plan = scratch.load(&[]).unwrap();
    let pre = node(&plan, "pretrain");
    assert_eq!(pre.params["model"], json!({"depth": 50, "width": 2.0}));
    assert_eq!(input_names(&plan, "pretrain", "data"), ["dataset.cifar10"]);
    // References from the defaults carry the sweep of the node they name.
    let ft = node(&plan, "ft[f=0.1]");
    assert_eq!(
        (
            ft.params["epochs"].clone(),
            ft.params["head_layer"].clone(),
            ft.seed
        ),
        (json!(30), json!(2), 5)
    );
    assert_eq!(input_names(&plan, "ft[f=0.1]", "labels"), ["split[f=0.1]"]);
    let short = node(&plan, "ft_short[f=0.01]");
    assert_eq!(
        (
            short.params["epochs"].clone(),
            short.params["head_layer"].clone(),
            short.seed
        ),
        (json!(3), json!(2), 1)
    );

    // A default resolves to the same parameters (so the same cache key) as the key written in
    // the node.
    let written = text
        .replace("[nodes.ft]\nkind = \"finetune\"\n", "[nodes.ft]\nkind = \"finetune\"\nfrom = \"pretrain\"\nlabels = \"split\"\nepochs = 30\nhead_layer = 2\nseed = 5\n");
    let explicit = Scratch::new(&written).load(&[]).unwrap();
    assert_eq!(node(&explicit, "ft[f=0.1]").params, ft.params);

    // `--set defaults.KIND.key` changes the default; a node's own override still wins.
    let plan = scratch
        .load(&["defaults.finetune.epochs=7", "ft_short.head_layer=0"])
        .unwrap();
    assert_eq!(node(&plan, "ft[f=0.01]").params["epochs"], json!(7));
    assert_eq!(node(&plan, "ft_short[f=0.01]").params["epochs"], json!(3));
    assert_eq!(
        node(&plan, "ft_short[f=0.01]").params["head_layer"],
        json!(0)
    );
}
