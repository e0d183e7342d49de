//! The scheduler: runs the selected nodes of a plan in dependency order, skipping cache hits,
//! running independent nodes in parallel (up to `--jobs` threads), and committing each result.
//!
//! Invariants:
//! - A node runs only when all its inputs are done (built or cached), so its key is computable.
//! - Outputs go to `<store>/tmp/…/out`, are ingested into `objects/` (fsynced) and only then is the
//!   record file written, then the index entry committed and flushed ([`Store::commit`]); the
//!   node's resume dir is removed after that. A crash before the
//!   commit leaves the resume checkpoint, so the next run resumes; a crash after leaves a record
//!   whose blobs are all present.
//! - Input artifacts are laid out per run as hard links under `<store>/tmp/…/in/<role>/<i>/` (the
//!   objects are read-only) and removed with the run's scratch dir: nothing outside `tmp/` depends
//!   on them, so there is no stale view to invalidate when a blob is rebuilt.
//! - A failed node's descendants are blocked; independent branches go on.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use semiflow_stages::api::{self, Cancelled, KindSpec, Progress, RunCtx, StageOutput};

use crate::key::{Key, KeyInput};
use crate::plan::{Plan, PlanNode};
use crate::progress::NodeProgress;
use crate::store::fingerprint::dataset_fingerprint;
use crate::store::{InputRef, Miss, Provenance, Record, Store};

/// Set by the Ctrl-C handler; stages stop at their next step.
pub static CANCEL: AtomicBool = AtomicBool::new(false);

/// Options of `semiflow run`.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub jobs: usize,
    /// Node names (or base names) to rebuild even when cached.
    pub force: Vec<String>,
    /// Re-hash every blob of a hit before trusting it.
    pub verify: bool,
    /// Run nodes as Slurm jobs instead of threads of this process.
    pub slurm: Option<crate::slurm::SlurmOptions>,
}

/// How a run ended.
#[derive(Debug, Default)]
pub struct Summary {
    pub selected: usize,
    pub ran: usize,
    pub cached: usize,
    pub failed: usize,
    pub blocked: usize,
    pub interrupted: bool,
    /// Records of the selected nodes that finished (built or cached), in plan order.
    pub records: Vec<Record>,
}

impl Summary {
    /// The exact last line of `semiflow run`.
    pub fn line(&self) -> String {
        format!(
            "semiflow: {} nodes: {} ran, {} cached, {} failed",
            self.selected, self.ran, self.cached, self.failed
        )
    }
}

/// The stage kind named `name`, or an error telling where to look.
pub fn kind_spec(name: &str) -> Result<&'static KindSpec> {
    api::kind(name)
        .ok_or_else(|| anyhow!("unknown stage kind `{name}`; `semiflow kinds` lists them"))
}

/// Whether `node` is named (by full or base name) in `patterns`.
pub fn matches_any(node: &PlanNode, patterns: &[String]) -> bool {
    patterns.iter().any(|p| *p == node.name || *p == node.base)
}

/// The cache key of `node` given its inputs' artifact hashes by role.
pub fn node_key(
    store: &Store,
    node: &PlanNode,
    inputs: &BTreeMap<String, Vec<String>>,
) -> Result<Key> {
    let spec = kind_spec(&node.kind)?;
    let fingerprint = match &node.dataset_root {
        Some(root) => Some(
            dataset_fingerprint(&store.index, root)
                .with_context(|| format!("fingerprinting the dataset of {}", node.name))?,
        ),
        None => None,
    };
    Ok(Key::compute(&KeyInput {
        kind: &node.kind,
        kind_version: spec.version,
        params: &node.params,
        inputs,
        dataset: fingerprint.as_deref(),
        seed: node.seed,
        numerics: spec.numerics_version(),
    }))
}

pub use crate::graph::needed;

/// A node whose key is known and that must be built, waiting for a free job slot.
struct Ready {
    key: Key,
    inputs: BTreeMap<String, Vec<InputRef>>,
    forced: bool,
}

enum State {
    Waiting,
    Ready(Box<Ready>),
    Running,
    Done { record: Box<Record>, ran: bool },
    Failed,
    Blocked(String),
}

/// Run the selected nodes. Errors are per node (reported, counted); `Err` only for store failures
/// that make going on pointless.
pub fn run(
    store: Arc<Store>,
    plan: Arc<Plan>,
    selection: &[usize],
    opts: &RunOptions,
) -> Result<Summary> {
    let need = needed(plan.as_ref(), selection);
    // Jobs a killed coordinator submitted may still be writing temp files and checkpoints: no
    // sweep until they are adopted and finished.
    let journaled = crate::slurm::journals(&store.root).len();
    if journaled == 0 {
        let swept = store.sweep_leftovers()?;
        if swept > 0 {
            tracing::info!("removed {swept} temp files left by an interrupted run");
        }
    } else {
        tracing::info!("{journaled} Slurm jobs journaled by an earlier run; adopting them as their nodes come up");
    }
    let mut slurm = match &opts.slurm {
        Some(o) => Some(crate::slurm::Slurm::new(
            store.clone(),
            plan.clone(),
            o.clone(),
            opts.verify,
        )?),
        None => None,
    };
    let mut selected = vec![false; plan.nodes.len()];
    for &i in selection {
        selected[i] = true;
    }
    let mut states: Vec<State> = (0..plan.nodes.len()).map(|_| State::Waiting).collect();
    let (tx, rx) = mpsc::channel::<(usize, Result<Record>)>();
    let jobs = match &slurm {
        Some(s) => s.max_jobs(),
        None => opts.jobs.max(1),
    };
    let mut running = 0usize;
    // Keys being built now. Two nodes can share a key (an unswept copy of a swept node, say):
    // the second waits for the first and then finds its record, instead of training twice.
    let mut building: BTreeMap<String, usize> = BTreeMap::new();
    let mut summary = Summary {
        selected: selection.len(),
        ..Summary::default()
    };
    loop {
        let mut progressed = true;
        while progressed {
            progressed = false;
            for i in 0..plan.nodes.len() {
                if !need[i] {
                    continue;
                }
                if let State::Ready(ready) = &states[i] {
                    if running >= jobs
                        || CANCEL.load(Ordering::Relaxed)
                        || building.contains_key(&ready.key.hex)
                    {
                        continue;
                    }
                    building.insert(ready.key.hex.clone(), i);
                    let State::Ready(ready) = std::mem::replace(&mut states[i], State::Running)
                    else {
                        unreachable!()
                    };
                    running += 1;
                    progressed = true;
                    if let Some(slurm) = slurm.as_mut() {
                        slurm.start(i, ready.key, ready.inputs, ready.forced);
                        continue;
                    }
                    let (store, plan, tx) = (store.clone(), plan.clone(), tx.clone());
                    std::thread::Builder::new()
                        .name(format!("node-{i}"))
                        .spawn(move || {
                            let Ready {
                                key,
                                inputs,
                                forced,
                            } = *ready;
                            let result = build_node(&store, &plan, i, &key, inputs, forced);
                            let _ = tx.send((i, result));
                        })
                        .context("spawning a worker thread")?;
                    continue;
                }
                if !matches!(states[i], State::Waiting) {
                    continue;
                }
                let next = assess(&store, plan.as_ref(), i, &states, &selected, opts)?;
                if !matches!(next, State::Waiting) {
                    states[i] = next;
                    progressed = true;
                }
            }
        }
        if running == 0 {
            break;
        }
        let finished = match slurm.as_mut() {
            Some(slurm) => slurm.wait()?,
            None => vec![rx.recv().expect("workers hold a sender until they send")],
        };
        for (i, result) in finished {
            running -= 1;
            building.retain(|_, j| *j != i);
            if let Ok(record) = &result {
                // Twins of this key, ready but held back: assess them again, now as cache hits.
                for state in states.iter_mut() {
                    if matches!(state, State::Ready(r) if r.key.hex == record.key && !r.forced) {
                        *state = State::Waiting;
                    }
                }
            }
            let node = &plan.nodes[i];
            match result {
                Ok(record) => {
                    tracing::info!(
                        "{}: built in {:.1}s ({})",
                        node.name,
                        record.provenance.duration_s,
                        crate::key::short(&record.key)
                    );
                    states[i] = State::Done {
                        record: Box::new(record),
                        ran: true,
                    };
                }
                Err(e) => {
                    let log = store.last_attempt(&node.name)?.map(|k| store.log_path(&k));
                    let log = log.map(|p| p.display().to_string()).unwrap_or_default();
                    if e.downcast_ref::<Cancelled>().is_some() {
                        summary.interrupted = true;
                        tracing::error!("{}: interrupted; log: {log}", node.name);
                    } else {
                        tracing::error!("node {} failed: {e:#}\n  log: {log}", node.name);
                    }
                    states[i] = State::Failed;
                }
            }
        }
    }
    if let Some(slurm) = &slurm {
        slurm.report_timings();
    }
    for &i in selection {
        match &states[i] {
            State::Done { record, ran } => {
                if *ran {
                    summary.ran += 1;
                } else {
                    summary.cached += 1;
                }
                summary.records.push((**record).clone());
            }
            State::Failed => summary.failed += 1,
            State::Blocked(why) => {
                summary.blocked += 1;
                eprintln!("blocked: {} ({why})", plan.nodes[i].name);
            }
            // Left waiting only after Ctrl-C.
            State::Waiting | State::Ready(_) | State::Running => summary.interrupted = true,
        }
    }
    if CANCEL.load(Ordering::Relaxed) {
        summary.interrupted = true;
    }
    // Workers may still hold the store while the process exits; make memo entries durable now.
    store.index.flush()?;
    Ok(summary)
}

/// The next state of a waiting node: still waiting (inputs not done), blocked, failed (no key),
/// done (cache hit) or ready to build.
fn assess(
    store: &Store,
    plan: &Plan,
    i: usize,
    states: &[State],
    selected: &[bool],
    opts: &RunOptions,
) -> Result<State> {
    let node = &plan.nodes[i];
    // Any input failed or blocked → blocked; any input not done yet → wait.
    for &j in node.inputs.values().flatten() {
        let why = match &states[j] {
            State::Done { .. } => continue,
            State::Failed => format!("input {} failed", plan.nodes[j].name),
            // An unselected, unbuilt input: pass its reason on, it names the input.
            State::Blocked(why) if !selected[j] => why.clone(),
            State::Blocked(_) => format!("input {} is blocked", plan.nodes[j].name),
            _ => return Ok(State::Waiting),
        };
        if selected[i] {
            tracing::warn!("{} blocked: {why}", node.name);
        }
        return Ok(State::Blocked(why));
    }
    if CANCEL.load(Ordering::Relaxed) {
        return Ok(State::Waiting);
    }
    let inputs = input_refs(plan, i, states);
    let hashes = inputs
        .iter()
        .map(|(r, v)| (r.clone(), v.iter().map(|x| x.artifact.clone()).collect()))
        .collect();
    let key = match node_key(store, node, &hashes) {
        Ok(k) => k,
        Err(e) => {
            tracing::error!("{} failed: {e:#}", node.name);
            return Ok(State::Failed);
        }
    };
    let forced = selected[i] && matches_any(node, &opts.force);
    if !forced {
        match store.lookup(&key.hex, opts.verify)? {
            Ok(record) => {
                tracing::debug!("{}: cached ({})", node.name, crate::key::short(&key.hex));
                if selected[i] {
                    store.note_name(&node.name, &key.hex)?;
                }
                return Ok(State::Done {
                    record: Box::new(record),
                    ran: false,
                });
            }
            Err(Miss::NoRecord) => {}
            Err(miss @ Miss::Blob { .. }) => {
                tracing::warn!("{}: {miss}; rebuilding", node.name);
                if let Miss::Blob {
                    hash,
                    problem: crate::store::BlobProblem::Corrupt { .. },
                    ..
                } = &miss
                {
                    let moved = store.quarantine(hash)?;
                    tracing::warn!("moved damaged blob to {}", moved.display());
                }
            }
        }
    }
    if !selected[i] {
        return Ok(State::Blocked(format!(
            "{} is not built and not selected (add it to --only or use --until)",
            node.name
        )));
    }
    Ok(State::Ready(Box::new(Ready {
        key,
        inputs,
        forced,
    })))
}

/// The artifacts a ready node reads, by role, from its inputs' records.
fn input_refs(plan: &Plan, i: usize, states: &[State]) -> BTreeMap<String, Vec<InputRef>> {
    plan.nodes[i]
        .inputs
        .iter()
        .map(|(role, idx)| {
            let refs = idx
                .iter()
                .map(|&j| match &states[j] {
                    State::Done { record, .. } => InputRef {
                        node: plan.nodes[j].name.clone(),
                        artifact: record.artifact.clone(),
                    },
                    _ => unreachable!("inputs are done before a node is keyed"),
                })
                .collect();
            (role.clone(), refs)
        })
        .collect()
}

/// Lay the input artifacts out under `dir/<role>/<i>/`; returns role → dirs for `RunCtx::inputs`.
pub fn materialize_inputs(
    blobs: &crate::store::Blobs,
    inputs: &BTreeMap<String, Vec<InputRef>>,
    dir: &Path,
) -> Result<BTreeMap<String, Vec<PathBuf>>> {
    let mut out = BTreeMap::new();
    for (role, refs) in inputs {
        let mut dirs = Vec::new();
        for (j, r) in refs.iter().enumerate() {
            let dest = dir.join(role).join(j.to_string());
            let manifest = blobs.read_manifest(&r.artifact).with_context(|| {
                format!(
                    "input {role} from {} (artifact {})",
                    r.node,
                    crate::key::short(&r.artifact)
                )
            })?;
            blobs.materialize(&manifest, &dest)?;
            dirs.push(dest);
        }
        out.insert(role.clone(), dirs);
    }
    Ok(out)
}

/// Call a stage kind, turning panics and non-finite metrics into errors (nothing gets stored).
pub fn invoke_stage(
    spec: &KindSpec,
    node: &PlanNode,
    inputs: &BTreeMap<String, Vec<PathBuf>>,
    out_dir: &Path,
    resume_dir: &Path,
    progress: &dyn Progress,
) -> Result<StageOutput> {
    let ctx = RunCtx {
        params: &node.params,
        inputs,
        dataset_root: node.dataset_root.as_deref(),
        out_dir,
        resume_dir,
        seed: node.seed,
        checkpoint_every: node.checkpoint_every,
        progress,
        cancel: &CANCEL,
    };
    let output = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (spec.run)(&ctx))) {
        Ok(r) => r?,
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            bail!("stage `{}` panicked: {msg}", spec.name);
        }
    };
    let bad_metric = output.metrics.iter().find(|(_, v)| !v.is_finite());
    let bad_series = output
        .series
        .iter()
        .find(|(_, v)| v.iter().any(|x| !x.is_finite()));
    if let Some((name, v)) = bad_metric {
        bail!(
            "stage `{}` reported metric {name} = {v}; nothing was stored",
            spec.name
        );
    }
    if let Some((name, _)) = bad_series {
        bail!(
            "stage `{}` reported a non-finite value in series {name}; nothing was stored",
            spec.name
        );
    }
    Ok(output)
}

/// Build one node and commit its record (see the module invariants for the order of effects).
fn build_node(
    store: &Store,
    plan: &Plan,
    i: usize,
    key: &Key,
    inputs: BTreeMap<String, Vec<InputRef>>,
    forced: bool,
) -> Result<Record> {
    let node = &plan.nodes[i];
    let spec = kind_spec(&node.kind)?;
    store.note_attempt(&node.name, &key.hex)?;
    let log_path = store.log_path(&key.hex);
    let log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening log {}", log_path.display()))?;
    let log = Arc::new(Mutex::new(log_file));
    crate::logging::append(
        &log,
        "INFO",
        &format!(
            "=== node {} (kind {}) key {} ===",
            node.name, node.kind, key.hex
        ),
    );
    crate::logging::with_node_log(log.clone(), || {
        let scratch = store.scratch_dir(&format!("run-{}", &key.hex[..12]))?;
        let result = (|| {
            let resume_dir = store.resume_dir(&key.hex);
            if forced && resume_dir.exists() {
                std::fs::remove_dir_all(&resume_dir)?;
            }
            std::fs::create_dir_all(&resume_dir)?;
            let input_dirs = materialize_inputs(&store.blobs, &inputs, &scratch.join("in"))?;
            let out_dir = scratch.join("out");
            std::fs::create_dir_all(&out_dir)?;
            let started = SystemTime::now();
            let clock = Instant::now();
            tracing::info!(
                "{}: running {} ({})",
                node.name,
                node.kind,
                crate::key::short(&key.hex)
            );
            let progress = NodeProgress::new(&node.name, log.clone());
            let output = invoke_stage(spec, node, &input_dirs, &out_dir, &resume_dir, &progress);
            progress.finish();
            let output = output?;
            semiflow_stages::fault::point("stage-output-written");
            let (artifact, manifest) = store.blobs.ingest_dir(&out_dir)?;
            let record = Record {
                key: key.hex.clone(),
                node: node.name.clone(),
                base: node.base.clone(),
                point: node.point.clone(),
                kind: node.kind.clone(),
                params: node.params.clone(),
                components: key.components.clone(),
                inputs,
                manifest_size: manifest.to_bytes().len() as u64,
                artifact,
                files: manifest.files,
                metrics: output.metrics,
                series: output.series,
                details: output.details,
                provenance: provenance(plan, node, started, clock.elapsed().as_secs_f64()),
            };
            store.commit(&record)?;
            // The record is durable; the checkpoint is no longer needed.
            let _ = std::fs::remove_dir_all(&resume_dir);
            tracing::debug!(
                "{}: committed {}",
                node.name,
                crate::key::short(&record.artifact)
            );
            Ok(record)
        })();
        if let Err(e) = &result {
            tracing::error!("{}: {e:#}", node.name);
        }
        let _ = std::fs::remove_dir_all(&scratch);
        result
    })
}

/// Worker threads stages use: `RAYON_NUM_THREADS` (set by `main`) or the core count.
pub fn thread_count() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
}

fn provenance(plan: &Plan, node: &PlanNode, started: SystemTime, duration_s: f64) -> Provenance {
    Provenance {
        semiflow_version: env!("CARGO_PKG_VERSION").to_string(),
        git_commit: env!("SEMIFLOW_GIT_COMMIT").to_string(),
        candle_version: env!("SEMIFLOW_CANDLE_VERSION").to_string(),
        host: host_name(),
        threads: thread_count(),
        seed: node.seed,
        pipeline: plan.name.clone(),
        overrides: plan.overrides.clone(),
        started: crate::timefmt::rfc3339(started),
        duration_s,
        numerics: Some(semiflow_stages::numerics::current(thread_count())),
        ..Provenance::default()
    }
}

/// This machine's host name (provenance).
pub fn host_name() -> String {
    hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into())
}
