//! Command-line interface: argument parsing (clap derive) and one small function per verb.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::plan::Plan;
use crate::store::{Store, WaitPolicy};

#[derive(Debug, Parser)]
#[command(
    name = "semiflow",
    version,
    about = "SimCLRv2 semi-supervised learning as a cached, resumable pipeline"
)]
pub struct Cli {
    /// Store directory (default: $SEMIFLOW_STORE, else ./artifacts).
    #[arg(long, global = true, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// Fail at once if another process holds the store instead of waiting.
    #[arg(long, global = true)]
    pub no_wait: bool,
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less log output (warnings and errors only).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExecutorKind {
    Local,
    Slurm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// torchvision's ResNet `state_dict` keys (conv1, bn1, layerN.M.*, fc).
    Torchvision,
    /// semiflow's own names (encoder.*, head.*, classifier.*).
    Safetensors,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DagFormat {
    Text,
    Dot,
    Mermaid,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pipeline: build what is not cached, in dependency order.
    Run {
        file: PathBuf,
        /// Override a parameter: `node.key=value` (recorded in provenance).
        #[arg(long = "set", value_name = "NODE.KEY=VALUE")]
        set: Vec<String>,
        /// Compute every training and eval node on this device: `cpu`, `cuda` or `cuda:N` (sets
        /// the `device` of each such node, over its own; part of the cache key unless `cpu`).
        #[arg(long, value_name = "DEVICE", value_parser = parse_device)]
        device: Option<String>,
        /// Run only these nodes (their inputs must be cached).
        #[arg(long, value_name = "NODE")]
        only: Vec<String>,
        /// Run this node and everything it depends on.
        #[arg(long, value_name = "NODE")]
        until: Option<String>,
        /// Rebuild these nodes even when cached.
        #[arg(long, value_name = "NODE")]
        force: Vec<String>,
        /// Say what would run and why, run nothing.
        #[arg(long)]
        dry_run: bool,
        /// Nodes to run at once.
        #[arg(long, short = 'j', default_value_t = 1)]
        jobs: usize,
        /// Re-hash every cached blob before trusting it (and, with Slurm, every blob a job wrote
        /// before committing it).
        #[arg(long)]
        verify: bool,
        /// Where nodes run: `local` (threads of this process) or `slurm` (one sbatch job per
        /// node; the store and this binary must be on a shared filesystem). Default: the
        /// pipeline's `[executor] kind`, else local.
        #[arg(long, value_enum)]
        executor: Option<ExecutorKind>,
        /// Slurm partition of every job (a node's `resources.partition` wins).
        #[arg(long, value_name = "NAME")]
        partition: Option<String>,
        /// Slurm jobs queued or running at once (default 100).
        #[arg(long, value_name = "N")]
        max_jobs: Option<usize>,
        /// Seconds between two job-state queries (one sacct or squeue call for all of the run's
        /// jobs; default 3; raise it on busy shared clusters).
        #[arg(long, value_name = "SECONDS")]
        poll_interval: Option<f64>,
        /// How Slurm job states are learned: sacct (needs accounting), squeue (+ scontrol and the
        /// job's result file), or auto (sacct where accounting works, else squeue; the default).
        #[arg(long, value_enum, value_name = "HOW")]
        state_query: Option<crate::slurm::StateQuery>,
        /// Resubmit a Slurm job that ended without a result up to N times (training nodes resume
        /// from their last epoch checkpoint).
        #[arg(long, value_name = "N")]
        retries: Option<u32>,
    },
    /// Run one node from a task file the coordinator wrote into the store (what a Slurm job
    /// runs). Reads objects, writes objects, checkpoints and a result manifest; never opens the
    /// index nor takes the store's lock.
    Exec { task: PathBuf },
    /// Check a pipeline file without running anything.
    Validate {
        file: PathBuf,
        #[arg(long = "set", value_name = "NODE.KEY=VALUE")]
        set: Vec<String>,
        /// Compute every training and eval node on this device: `cpu`, `cuda` or `cuda:N` (sets
        /// the `device` of each such node, over its own; part of the cache key unless `cpu`).
        #[arg(long, value_name = "DEVICE", value_parser = parse_device)]
        device: Option<String>,
    },
    /// Every node's key and state, and why it would run.
    Status {
        file: PathBuf,
        #[arg(long = "set", value_name = "NODE.KEY=VALUE")]
        set: Vec<String>,
        /// Compute every training and eval node on this device: `cpu`, `cuda` or `cuda:N` (sets
        /// the `device` of each such node, over its own; part of the cache key unless `cpu`).
        #[arg(long, value_name = "DEVICE", value_parser = parse_device)]
        device: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Print the pipeline's DAG.
    Dag {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t = DagFormat::Text)]
        format: DagFormat,
    },
    /// Show the provenance record of a node (latest) or key.
    Show {
        target: String,
        #[arg(long)]
        json: bool,
    },
    /// Print the log of a node's latest run.
    Log { target: String },
    /// Write a node's model as a safetensors file other tools load (torchvision's ResNet key
    /// names, or semiflow's own) plus a JSON sidecar (FILE with .json): architecture, input
    /// scaling, class names.
    Export {
        /// A node that has run (pretrain, finetune, supervised, distill) or a key.
        target: String,
        #[arg(long, value_enum, default_value_t = ExportFormat::Torchvision)]
        format: ExportFormat,
        /// The .safetensors file to write.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Verify the pipeline's blobs and optionally re-execute nodes to check reproducibility.
    Audit {
        file: PathBuf,
        /// Re-hash every blob (otherwise presence and size only).
        #[arg(long)]
        verify: bool,
        /// Re-execute this node in a scratch dir and compare outputs.
        #[arg(long, value_name = "NODE")]
        rerun: Vec<String>,
        /// Accept a rerun whose metrics are within this absolute tolerance.
        #[arg(long, value_name = "X")]
        tolerance: Option<f64>,
        /// Check the pipeline's claims against the verdicts in the report's claims.json: fail if
        /// one that held no longer holds.
        #[arg(long)]
        claims: bool,
        /// The report directory whose claims.json `--claims` compares with (default: <store>/report).
        #[arg(long, value_name = "DIR")]
        report: Option<PathBuf>,
        /// Rerun on this device (`cpu`, `cuda`, `cuda:N`) instead of the recorded one; metrics are
        /// then compared within --tolerance (default 0.02).
        #[arg(long, value_name = "DEVICE", value_parser = parse_device)]
        rerun_on: Option<String>,
        /// The overrides the pipeline ran with (selects the records to audit).
        #[arg(long = "set", value_name = "NODE.KEY=VALUE")]
        set: Vec<String>,
        /// The `--device` the pipeline ran with (selects the records to audit).
        #[arg(long, value_name = "DEVICE", value_parser = parse_device)]
        device: Option<String>,
    },
    /// Remove blobs, checkpoints and temp files that no record needs.
    Gc {
        #[arg(long)]
        dry_run: bool,
    },
    /// Rebuild the index from the record files (after a damaged or lost index); removes temp
    /// files of interrupted runs; moves unreadable record files to quarantine/.
    Repair,
    /// Write a Markdown metrics table and SVG plots.
    Report {
        file: PathBuf,
        /// Output directory (default: <store>/report).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Print the claims' verdicts as JSON.
        #[arg(long)]
        json: bool,
        /// The overrides the pipeline ran with (selects the records to report).
        #[arg(long = "set", value_name = "NODE.KEY=VALUE")]
        set: Vec<String>,
        /// The `--device` the pipeline ran with (selects the records to report).
        #[arg(long, value_name = "DEVICE", value_parser = parse_device)]
        device: Option<String>,
    },
    /// List the stage kinds.
    Kinds,
}

/// The pipeline front end: the only place the CLI turns a file into a plan.
mod frontend {
    use super::*;

    pub fn load(file: &Path, overrides: &[String]) -> Result<Plan> {
        crate::pipeline::load(file, overrides).map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// [`load`], then with `--device D`: once more with `nodes.X.device=D` added to the overrides
    /// for every node table X whose kind takes a device (so provenance records them).
    pub fn load_on(file: &Path, overrides: &[String], device: Option<&str>) -> Result<Plan> {
        let plan = load(file, overrides)?;
        let Some(device) = device else {
            return Ok(plan);
        };
        let mut sets = overrides.to_vec();
        let mut seen = std::collections::BTreeSet::new();
        for n in &plan.nodes {
            if semiflow_stages::device::DEVICE_KINDS.contains(&n.kind.as_str())
                && seen.insert(n.base.as_str())
            {
                sets.push(format!("nodes.{}.device={device}", n.base));
            }
        }
        load(file, &sets)
    }

    pub fn select(plan: &Plan, only: &[String], until: Option<&str>) -> Result<Vec<usize>> {
        crate::graph::select(plan, only, until)
    }

    pub fn render(plan: &Plan, format: DagFormat) -> String {
        let f = match format {
            DagFormat::Text => crate::graph::Format::Text,
            DagFormat::Dot => crate::graph::Format::Dot,
            DagFormat::Mermaid => crate::graph::Format::Mermaid,
        };
        crate::graph::render(plan, f)
    }
}

/// `--device`: `cpu`, `cuda` or `cuda:N`, written back in canonical form (`cuda:0` is `cuda`).
fn parse_device(s: &str) -> Result<String, String> {
    semiflow_stages::device::DeviceChoice::parse(s).map(|d| d.to_string())
}

/// Parse arguments, run the verb, return the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    crate::logging::init(cli.verbose as i8 - cli.quiet as i8);
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            // Pipeline diagnostics already render as `error: file:line:col: ...`.
            let msg = format!("{e:#}");
            if msg.starts_with("error:") {
                eprintln!("{msg}");
            } else {
                eprintln!("error: {msg}");
            }
            1
        }
    }
}

fn open_store(cli_store: Option<&Path>, no_wait: bool) -> Result<Store> {
    let root = Store::locate(cli_store);
    Store::open(
        &root,
        if no_wait {
            WaitPolicy::Fail
        } else {
            WaitPolicy::Wait
        },
    )
}

fn dispatch(cli: Cli) -> Result<i32> {
    let store_flag = cli.store.clone();
    let store = || open_store(store_flag.as_deref(), cli.no_wait);
    match cli.command {
        Command::Run {
            file,
            set,
            device,
            only,
            until,
            force,
            dry_run,
            jobs,
            verify,
            executor,
            partition,
            max_jobs,
            poll_interval,
            retries,
            state_query,
        } => {
            let plan = frontend::load_on(&file, &set, device.as_deref())?;
            let ex = &plan.executor;
            let use_slurm = match executor {
                Some(k) => k == ExecutorKind::Slurm,
                None => ex.kind.as_deref() == Some("slurm"),
            };
            let slurm = use_slurm.then(|| {
                let d = crate::slurm::SlurmOptions::default();
                crate::slurm::SlurmOptions {
                    partition: partition.or_else(|| ex.partition.clone()),
                    max_jobs: max_jobs.or(ex.max_jobs).unwrap_or(d.max_jobs).max(1),
                    poll_interval: poll_interval
                        .or(ex.poll_interval)
                        .filter(|s| *s > 0.0)
                        .map_or(d.poll_interval, std::time::Duration::from_secs_f64),
                    retries: retries.or(ex.retries).unwrap_or(0),
                    state_query: state_query
                        .or_else(|| {
                            ex.state_query
                                .as_deref()
                                .and_then(crate::slurm::StateQuery::parse)
                        })
                        .unwrap_or(d.state_query),
                    unknown_state_timeout: ex
                        .unknown_state_timeout
                        .map_or(d.unknown_state_timeout, std::time::Duration::from_secs_f64),
                }
            });
            let selection = frontend::select(&plan, &only, until.as_deref())?;
            for f in &force {
                if !plan.nodes.iter().any(|n| n.name == *f || n.base == *f) {
                    bail!("--force {f}: no such node in {}", file.display());
                }
            }
            let store = store()?;
            if dry_run {
                let rows = crate::explain::status(&store, &plan, &selection, &force)?;
                crate::explain::print_text(&rows, true);
                return Ok(0);
            }
            install_ctrlc();
            let opts = crate::exec::RunOptions {
                jobs,
                force,
                verify,
                slurm,
            };
            let summary = crate::exec::run(Arc::new(store), Arc::new(plan), &selection, &opts)?;
            crate::report::print_eval_table(&summary.records);
            println!("{}", summary.line());
            if summary.interrupted {
                eprintln!(
                    "interrupted: rerun the same command to resume; training nodes continue from their last epoch checkpoint"
                );
                return Ok(130);
            }
            Ok(if summary.failed + summary.blocked == 0 {
                0
            } else {
                1
            })
        }
        Command::Exec { task } => Ok(match crate::slurm::worker(&task) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {e:#}");
                1
            }
        }),
        Command::Validate { file, set, device } => {
            let plan = frontend::load_on(&file, &set, device.as_deref())?;
            for n in &plan.nodes {
                crate::exec::kind_spec(&n.kind).with_context(|| format!("node {}", n.name))?;
            }
            println!("{}: ok ({} nodes)", file.display(), plan.nodes.len());
            Ok(0)
        }
        Command::Status {
            file,
            set,
            device,
            json,
        } => {
            let plan = frontend::load_on(&file, &set, device.as_deref())?;
            let all: Vec<usize> = (0..plan.nodes.len()).collect();
            let root = Store::locate(store_flag.as_deref());
            // A Slurm coordinator holds the store for the whole run: show its journaled jobs
            // instead of waiting for it.
            let store = match Store::open(&root, WaitPolicy::Fail) {
                Ok(s) => s,
                Err(_) if !crate::slurm::journals(&root).is_empty() => {
                    println!(
                        "store {} is held by a running `semiflow run`; its Slurm jobs:",
                        root.display()
                    );
                    crate::slurm::print_journal(&root)?;
                    return Ok(0);
                }
                Err(e) if cli.no_wait => return Err(e),
                Err(_) => store()?,
            };
            let mut rows = crate::explain::status(&store, &plan, &all, &[])?;
            if !crate::slurm::journals(&root).is_empty() {
                let states = crate::slurm::journal_states(&root);
                for r in &mut rows {
                    if let Some((id, state)) = states.get(&r.key) {
                        r.reasons.push(format!("Slurm job {id} {state}"));
                    }
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                crate::explain::print_text(&rows, false);
            }
            Ok(0)
        }
        Command::Dag { file, format } => {
            let plan = frontend::load(&file, &[])?;
            print!("{}", frontend::render(&plan, format));
            Ok(0)
        }
        Command::Show { target, json } => {
            let rec = crate::show::find(&store()?, &target)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rec)?);
            } else {
                crate::show::print(&rec);
            }
            Ok(0)
        }
        Command::Export {
            target,
            format,
            out,
        } => {
            let naming = match format {
                ExportFormat::Torchvision => {
                    semiflow_stages::model::torchvision::Naming::Torchvision
                }
                ExportFormat::Safetensors => {
                    semiflow_stages::model::torchvision::Naming::Safetensors
                }
            };
            let e = crate::export::export(&store()?, &target, naming, &out)?;
            println!(
                "exported {} ({}, key {}): {} tensors to {}, sidecar {}",
                e.record.node,
                e.record.kind,
                crate::key::short(&e.record.key),
                e.tensors,
                e.file.display(),
                e.sidecar.display()
            );
            Ok(0)
        }
        Command::Log { target } => {
            let path = crate::show::log_path(&store()?, &target)?;
            if path.exists() {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()))?;
                print!("{text}");
            }
            // A Slurm job's own output (the worker's stderr, slurmstepd's messages).
            for p in crate::show::slurm_logs(&path) {
                let text = std::fs::read_to_string(&p)
                    .with_context(|| format!("reading {}", p.display()))?;
                println!("=== Slurm output {} ===", p.display());
                print!("{text}");
            }
            Ok(0)
        }
        Command::Audit {
            file,
            verify,
            rerun,
            tolerance,
            rerun_on,
            set,
            device,
            claims,
            report,
        } => {
            let plan = frontend::load_on(&file, &set, device.as_deref())?;
            let opts = crate::audit::AuditOptions {
                verify,
                rerun,
                tolerance,
                rerun_on,
            };
            let store = store()?;
            let mut ok = crate::audit::audit(&store, &plan, &opts)?;
            if claims {
                let dir = report.unwrap_or_else(|| store.root.join("report"));
                ok &= crate::audit::claims(&store, &plan, &dir)?;
            }
            println!("audit: {}", if ok { "pass" } else { "FAIL" });
            Ok(if ok { 0 } else { 1 })
        }
        Command::Gc { dry_run } => {
            let r = crate::gc::gc(&store()?, dry_run)?;
            println!(
                "gc: {} {} files, {} bytes{}",
                if dry_run { "would free" } else { "freed" },
                r.files,
                r.bytes,
                if dry_run { " (dry run)" } else { "" }
            );
            Ok(0)
        }
        Command::Repair => {
            let root = Store::locate(store_flag.as_deref());
            let policy = if cli.no_wait {
                WaitPolicy::Fail
            } else {
                WaitPolicy::Wait
            };
            let (_store, r) = Store::repair(&root, policy)?;
            if let Some(why) = &r.old_index_problem {
                println!("old index unusable: {why}");
            }
            if r.exported > 0 {
                println!(
                    "wrote {} records that only the old index held as files",
                    r.exported
                );
            }
            for (path, why) in &r.quarantined {
                println!("quarantined {} ({why})", path.display());
            }
            if let Some(old) = &r.old_index {
                println!("old index moved to {} (gc removes it)", old.display());
            }
            if r.leftovers > 0 {
                println!("removed {} temp files of interrupted runs", r.leftovers);
            }
            println!(
                "repair: index rebuilt from {} records, {} names, {} attempts in {:.2}s",
                r.records, r.names, r.attempts, r.seconds
            );
            Ok(0)
        }
        Command::Report {
            file,
            out,
            set,
            device,
            json,
        } => {
            let plan = frontend::load_on(&file, &set, device.as_deref())?;
            let store = store()?;
            let out = out.unwrap_or_else(|| store.root.join("report"));
            let written = crate::report::report(&store, &plan, &out)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&written.claims)?);
                return Ok(0);
            }
            for f in written.files {
                println!("{}", out.join(f).display());
            }
            Ok(0)
        }
        Command::Kinds => {
            let reg = semiflow_stages::api::registry();
            let w = reg.iter().map(|k| k.name.len()).max().unwrap_or(0);
            for k in reg {
                println!("{:<w$}  v{:<3} {}", k.name, k.version, k.summary);
            }
            Ok(0)
        }
    }
}

/// First Ctrl-C: stages stop at their next step and the run ends cleanly (resumable).
/// Second Ctrl-C: exit at once (epoch checkpoints already on disk stay valid).
fn install_ctrlc() {
    let _ = ctrlc::set_handler(|| {
        use std::sync::atomic::Ordering;
        if crate::exec::CANCEL.swap(true, Ordering::SeqCst) {
            eprintln!("semiflow: aborted");
            std::process::exit(130);
        }
        eprintln!("semiflow: stopping at the next step (Ctrl-C again to abort now)");
    });
}
