//! The Slurm executor: each ready node becomes one `sbatch` job running `semiflow exec TASKFILE`
//! on whichever machine Slurm picks; the store directory (and the binary) must be on a filesystem
//! every node shares. Nothing here is a scheduler or a protocol of our own: Slurm queues and runs
//! the jobs, the shared filesystem carries the task and the result.
//!
//! Per node key `K`, under `<store>/jobs/K/` (not `tmp/`, which a restarted coordinator sweeps):
//! - `task.json`: what the worker runs ([`Task`]), written by the coordinator before `sbatch`;
//! - `job.sh`: the batch script (`exec <semiflow> exec <task.json>`);
//! - `job.json`: the journal ([`Journal`]): the job id, written durably right after `sbatch`
//!   returned, so a coordinator killed with kill -9 and started again adopts the job instead of
//!   submitting it twice;
//! - `out-<job>/`: the stage's output dir (`Task::out_dir` names `out`; each job adds its id);
//!   the worker ingests it into `objects/` itself;
//! - `result.json`: the worker's result manifest ([`WorkerResult`]), fsynced, written last.
//!
//! Invariants:
//! - Workers never open sled nor take the store's LOCK: they read objects, write objects (temp +
//!   hash + fsync + rename; identical content from two workers is harmless), their checkpoints in
//!   `resume/K/`, their log, and `result.json`.
//! - The coordinator commits a record ([`Store::commit`]) only after checking every blob the
//!   result names (present with its size; re-hashed with `--verify`). A job that ends without a
//!   result leaves no record: it is retried (`--retries`, resuming from its epoch checkpoint) or
//!   reported failed with its Slurm state, job id and log.
//! - Job states: one batched query per poll for all jobs this coordinator watches. Where the
//!   cluster has working accounting, `sacct -j <ids> --starttime=<earliest submission>` (it
//!   still knows jobs the controller forgot); else `squeue -j <ids>` plus `scontrol show job` for
//!   a job that left the queue, plus the job's own result file for one Slurm forgot (no
//!   accounting needed). sacct lags sbatch by a moment: jobs it does not know yet are asked of
//!   squeue in the same poll. A job whose state cannot be learned (no answer names it, no result
//!   file) for `unknown_state_timeout` is reported, never waited on forever.
//! - Jobs are submitted with `--no-requeue`: a job lost with its machine ends `NODE_FAIL` and
//!   `--retries` (counted, logged, resuming from the last epoch checkpoint) decides what happens,
//!   not Slurm's silent requeue.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::exec::{invoke_stage, kind_spec, materialize_inputs, CANCEL};
use crate::key::Key;
use crate::plan::{Plan, PlanNode};
use crate::store::records::write_durably;
use crate::store::{Blobs, FileEntry, InputRef, Provenance, Record, Store};

/// Settings of the Slurm executor (`[executor]`, overridden by flags).
#[derive(Debug, Clone)]
pub struct SlurmOptions {
    /// Default partition (a node's `resources.partition` wins).
    pub partition: Option<String>,
    /// Jobs queued or running at once.
    pub max_jobs: usize,
    /// Time between two job-state queries.
    pub poll_interval: Duration,
    /// Resubmissions of a job that ended without a result.
    pub retries: u32,
    /// How job states are learned.
    pub state_query: StateQuery,
    /// How long a job's state may stay unknown (no query names it or queries fail, and it left no
    /// result file) before it is reported.
    pub unknown_state_timeout: Duration,
}

/// `[executor] state_query` / `--state-query`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StateQuery {
    /// sacct where the cluster's accounting works, else squeue.
    Auto,
    /// sacct only (an error at start where accounting does not work).
    Sacct,
    /// squeue + scontrol + the job's result file (needs no accounting).
    Squeue,
}

impl StateQuery {
    pub fn parse(s: &str) -> Option<StateQuery> {
        match s {
            "auto" => Some(StateQuery::Auto),
            "sacct" => Some(StateQuery::Sacct),
            "squeue" => Some(StateQuery::Squeue),
            _ => None,
        }
    }
}

/// The method a coordinator uses (chosen once, at start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Sacct,
    Squeue,
}

impl Default for SlurmOptions {
    fn default() -> Self {
        SlurmOptions {
            partition: None,
            max_jobs: 100,
            poll_interval: Duration::from_secs(3),
            retries: 0,
            state_query: StateQuery::Auto,
            unknown_state_timeout: Duration::from_secs(600),
        }
    }
}

/// What one job runs: written by the coordinator, read by `semiflow exec`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Task {
    pub node: String,
    pub base: String,
    #[serde(default)]
    pub point: BTreeMap<String, serde_json::Value>,
    pub kind: String,
    pub params: serde_json::Value,
    pub key: String,
    /// Input artifacts by role; the worker lays them out from `objects/` itself.
    pub inputs: BTreeMap<String, Vec<InputRef>>,
    pub dataset_root: Option<PathBuf>,
    pub seed: u64,
    pub checkpoint_every: usize,
    /// Absolute store root.
    pub store: PathBuf,
    pub out_dir: PathBuf,
    pub resume_dir: PathBuf,
    pub log: PathBuf,
    pub result: PathBuf,
}

/// The worker's result manifest: everything the coordinator needs for the record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerResult {
    pub key: String,
    pub artifact: String,
    pub manifest_size: u64,
    pub files: BTreeMap<String, FileEntry>,
    pub metrics: BTreeMap<String, f64>,
    pub series: BTreeMap<String, Vec<f64>>,
    pub details: serde_json::Value,
    pub host: String,
    pub threads: usize,
    pub started: String,
    /// Seconds since the Unix epoch when `semiflow exec` started (overhead figures).
    #[serde(default)]
    pub exec_start_unix: f64,
    pub duration_s: f64,
    pub numerics: Option<semiflow_stages::numerics::NumericsInfo>,
    pub job_id: Option<String>,
    pub semiflow_version: String,
    pub git_commit: String,
    pub candle_version: String,
}

/// `jobs/K/job.json`: the job a coordinator submitted for key K.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Journal {
    pub job_id: String,
    pub node: String,
    pub key: String,
    /// 1 for the first submission.
    pub attempt: u32,
    pub submitted: String,
    pub partition: Option<String>,
    pub log: PathBuf,
}

pub fn jobs_dir(store: &Path) -> PathBuf {
    store.join("jobs")
}

fn job_dir(store: &Path, key: &str) -> PathBuf {
    jobs_dir(store).join(key)
}

/// Slurm's own output file of one job (stdout and stderr of `semiflow exec`, and slurmstepd's
/// messages such as `CANCELLED ... DUE TO TIME LIMIT`).
pub fn slurm_log(store: &Path, key: &str, job_id: &str) -> PathBuf {
    store.join("logs").join(format!("{key}.slurm-{job_id}.out"))
}

/// Every journaled job of a store (jobs submitted and not yet committed or given up).
pub fn journals(store: &Path) -> Vec<Journal> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(jobs_dir(store)) {
        for e in rd.flatten() {
            if let Ok(bytes) = std::fs::read(e.path().join("job.json")) {
                if let Ok(j) = serde_json::from_slice::<Journal>(&bytes) {
                    out.push(j);
                }
            }
        }
    }
    out
}

/// Whether `sinfo` exists and answers (for tests and a clear error before the first sbatch).
pub fn cluster_problem() -> Option<String> {
    match Command::new("sinfo").args(["-h", "-o", "%a"]).output() {
        Err(e) => Some(format!(
            "`sinfo` cannot run ({e}): Slurm's client tools are not installed"
        )),
        Ok(o) if !o.status.success() => Some(format!(
            "`sinfo` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The worker: `semiflow exec TASKFILE`.

/// Run one task (inside a Slurm job). Never opens sled nor takes the store lock.
pub fn worker(task_path: &Path) -> Result<()> {
    let task: Task = serde_json::from_slice(
        &std::fs::read(task_path).with_context(|| format!("reading {}", task_path.display()))?,
    )
    .with_context(|| format!("parsing {}", task_path.display()))?;
    let spec = kind_spec(&task.kind)?;
    let exec_start_unix = unix_now();
    let job_id = std::env::var("SLURM_JOB_ID").ok();
    let host = crate::exec::host_name();
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&task.log)
        .with_context(|| format!("opening log {}", task.log.display()))?;
    let log = Arc::new(std::sync::Mutex::new(log_file));
    crate::logging::append(
        &log,
        "INFO",
        &format!(
            "=== node {} (kind {}) key {}: Slurm job {} on {host} ===",
            task.node,
            task.kind,
            task.key,
            job_id.as_deref().unwrap_or("-")
        ),
    );
    crate::logging::with_node_log(log.clone(), || -> Result<()> {
        let result = (|| -> Result<()> {
            let blobs = Blobs::new(&task.store);
            let _ = std::fs::remove_file(&task.result);
            // One output dir per job: a job submitted twice (a coordinator killed between
            // sbatch and its journal) must not mix its files with the other's.
            let tag = job_id
                .clone()
                .unwrap_or_else(|| format!("pid{}", std::process::id()));
            let out_dir = task.out_dir.with_file_name(format!("out-{tag}"));
            if out_dir.exists() {
                std::fs::remove_dir_all(&out_dir)?;
            }
            std::fs::create_dir_all(&out_dir)?;
            std::fs::create_dir_all(&task.resume_dir)?;
            let job_dir = task
                .result
                .parent()
                .expect("result has a parent")
                .to_path_buf();
            let in_dir = job_dir.join(format!("in-{}", job_id.as_deref().unwrap_or("local")));
            if in_dir.exists() {
                std::fs::remove_dir_all(&in_dir)?;
            }
            let input_dirs = materialize_inputs(&blobs, &task.inputs, &in_dir)?;
            let node = PlanNode {
                name: task.node.clone(),
                base: task.base.clone(),
                point: task.point.clone(),
                kind: task.kind.clone(),
                params: task.params.clone(),
                inputs: BTreeMap::new(),
                dataset_root: task.dataset_root.clone(),
                seed: task.seed,
                checkpoint_every: task.checkpoint_every,
                resources: Default::default(),
            };
            let started = SystemTime::now();
            let clock = Instant::now();
            tracing::info!("{}: running {} on {host}", task.node, task.kind);
            let progress = crate::progress::NodeProgress::new(&task.node, log.clone());
            let output = invoke_stage(
                spec,
                &node,
                &input_dirs,
                &out_dir,
                &task.resume_dir,
                &progress,
            );
            progress.finish();
            let output = output?;
            let duration_s = clock.elapsed().as_secs_f64();
            let (artifact, manifest) = blobs.ingest_dir(&out_dir)?;
            let _ = std::fs::remove_dir_all(&in_dir);
            let _ = std::fs::remove_dir_all(&out_dir);
            semiflow_stages::fault::point("worker-blobs-ingested");
            let threads = crate::exec::thread_count();
            let result = WorkerResult {
                key: task.key.clone(),
                artifact,
                manifest_size: manifest.to_bytes().len() as u64,
                files: manifest.files,
                metrics: output.metrics,
                series: output.series,
                details: output.details,
                host: host.clone(),
                threads,
                started: crate::timefmt::rfc3339(started),
                exec_start_unix,
                duration_s,
                numerics: Some(semiflow_stages::numerics::current(threads)),
                job_id: job_id.clone(),
                semiflow_version: env!("CARGO_PKG_VERSION").to_string(),
                git_commit: env!("SEMIFLOW_GIT_COMMIT").to_string(),
                candle_version: env!("SEMIFLOW_CANDLE_VERSION").to_string(),
            };
            let bytes = serde_json::to_vec_pretty(&result)?;
            write_durably(&job_dir, &task.result, &bytes, None)?;
            tracing::info!(
                "{}: done in {duration_s:.1}s; result {}",
                task.node,
                task.result.display()
            );
            Ok(())
        })();
        if let Err(e) = &result {
            tracing::error!("{}: {e:#}", task.node);
        }
        result
    })
}

// ---------------------------------------------------------------------------------------------
// The coordinator side.

/// A job this coordinator watches.
struct Job {
    i: usize,
    key: Key,
    inputs: BTreeMap<String, Vec<InputRef>>,
    job_id: String,
    attempt: u32,
    partition: Option<String>,
    submitted: Instant,
    submitted_unix: f64,
    started: Option<Instant>,
    /// Slurm's state as last seen (for the debug log).
    state: String,
    /// The machine(s) it runs on, once a query named them.
    host: Option<String>,
    /// Since when no query has named this job (and no result file exists).
    unknown_since: Option<Instant>,
    /// When the controller (squeue or scontrol, not accounting) last named this job.
    confirmed: Instant,
    adopted: bool,
}

/// Timings of one committed job, for the overhead figures (`-v` prints them).
#[derive(Debug, Clone, Copy)]
pub struct JobTiming {
    /// sbatch returned → first seen running (or finished).
    pub queued_s: f64,
    /// sbatch returned → `semiflow exec` started (clock of the job's host).
    pub to_exec_s: f64,
    /// sbatch returned → committed.
    pub total_s: f64,
    /// The stage's own time inside the job.
    pub stage_s: f64,
}

pub struct Slurm {
    store: Arc<Store>,
    plan: Arc<Plan>,
    opts: SlurmOptions,
    verify: bool,
    exe: PathBuf,
    root: PathBuf,
    run_id: String,
    jobs: Vec<Job>,
    /// Results ready to hand back without polling (sbatch failures).
    done: Vec<(usize, Result<Record>)>,
    method: Method,
    /// When this coordinator started (the earliest `--starttime` sacct needs for its own jobs).
    started_unix: f64,
    /// A query failed at the last poll (warned once until it answers again).
    query_failing: bool,
    last_poll: Option<Instant>,
    pub timings: Vec<JobTiming>,
}

impl Slurm {
    pub fn new(
        store: Arc<Store>,
        plan: Arc<Plan>,
        opts: SlurmOptions,
        verify: bool,
    ) -> Result<Slurm> {
        if let Some(why) = cluster_problem() {
            bail!("--executor slurm: {why}");
        }
        let (method, why) = choose_method(opts.state_query)?;
        let every = opts.poll_interval.as_secs_f64();
        match method {
            Method::Sacct => tracing::info!(
                "Slurm job states: sacct, one call every {every}s for all of this run's jobs \
                 (--starttime at the earliest submission); {why}"
            ),
            Method::Squeue => tracing::info!(
                "Slurm job states: squeue, one call every {every}s for all of this run's jobs, \
                 scontrol for a job that left the queue, the result file for one Slurm forgot; \
                 {why}"
            ),
        }
        let exe = std::env::current_exe().context("locating the semiflow binary")?;
        let root = std::path::absolute(&store.root)
            .with_context(|| format!("resolving {}", store.root.display()))?;
        std::fs::create_dir_all(jobs_dir(&root))?;
        let run_id = format!(
            "{:x}{:x}",
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
                & 0xffffff,
            std::process::id()
        );
        Ok(Slurm {
            store,
            plan,
            opts,
            verify,
            exe,
            root,
            run_id,
            jobs: Vec::new(),
            done: Vec::new(),
            method,
            started_unix: unix_now(),
            query_failing: false,
            last_poll: None,
            timings: Vec::new(),
        })
    }

    /// Jobs submitted or adopted and not yet handed back.
    pub fn in_flight(&self) -> usize {
        self.jobs.len() + self.done.len()
    }

    pub fn max_jobs(&self) -> usize {
        self.opts.max_jobs.max(1)
    }

    /// Start building node `i`: adopt the job a previous coordinator journaled for this key, else
    /// write the task file and submit a job.
    pub fn start(
        &mut self,
        i: usize,
        key: Key,
        inputs: BTreeMap<String, Vec<InputRef>>,
        forced: bool,
    ) {
        let node = &self.plan.nodes[i];
        let dir = job_dir(&self.root, &key.hex);
        if let Ok(bytes) = std::fs::read(dir.join("job.json")) {
            if let Ok(j) = serde_json::from_slice::<Journal>(&bytes) {
                tracing::info!(
                    "{}: adopting Slurm job {} (submitted {}, attempt {})",
                    node.name,
                    j.job_id,
                    j.submitted,
                    j.attempt
                );
                self.jobs.push(Job {
                    i,
                    key,
                    inputs,
                    job_id: j.job_id,
                    attempt: j.attempt,
                    partition: j.partition,
                    submitted: Instant::now(),
                    // sacct's --starttime must reach back to the job's submission.
                    submitted_unix: crate::timefmt::parse_rfc3339(&j.submitted)
                        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                        .map_or(0.0, |d| d.as_secs_f64()),
                    started: None,
                    state: "ADOPTED".into(),
                    host: None,
                    unknown_since: None,
                    confirmed: Instant::now(),
                    adopted: true,
                });
                return;
            }
        }
        if forced {
            let _ = std::fs::remove_dir_all(self.store.resume_dir(&key.hex));
        }
        if let Err(e) = self.store.note_attempt(&node.name, &key.hex) {
            self.done.push((i, Err(e)));
            return;
        }
        match self.submit(i, &key, &inputs, 1) {
            Ok(job) => self.jobs.push(Job { inputs, ..job }),
            Err(e) => self.done.push((i, Err(e))),
        }
    }

    /// Write the task and script, `sbatch` them, journal the job id.
    fn submit(
        &self,
        i: usize,
        key: &Key,
        inputs: &BTreeMap<String, Vec<InputRef>>,
        attempt: u32,
    ) -> Result<Job> {
        let node = &self.plan.nodes[i];
        let dir = job_dir(&self.root, &key.hex);
        std::fs::create_dir_all(&dir)?;
        let task = Task {
            node: node.name.clone(),
            base: node.base.clone(),
            point: node.point.clone(),
            kind: node.kind.clone(),
            params: node.params.clone(),
            key: key.hex.clone(),
            inputs: inputs.clone(),
            dataset_root: node.dataset_root.clone(),
            seed: node.seed,
            checkpoint_every: node.checkpoint_every,
            store: self.root.clone(),
            out_dir: dir.join("out"),
            resume_dir: self.root.join("resume").join(&key.hex),
            log: self.root.join("logs").join(format!("{}.log", key.hex)),
            result: dir.join("result.json"),
        };
        let task_path = dir.join("task.json");
        write_durably(&dir, &task_path, &serde_json::to_vec_pretty(&task)?, None)?;
        let script = dir.join("job.sh");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n# semiflow node {}\nexec {} exec {}\n",
                node.name,
                shell_quote(&self.exe.to_string_lossy()),
                shell_quote(&task_path.to_string_lossy())
            ),
        )?;
        let res = &node.resources;
        let partition = res
            .partition
            .clone()
            .or_else(|| self.opts.partition.clone());
        let mut cmd = Command::new("sbatch");
        cmd.arg("--parsable")
            .arg(format!("--job-name=sf.{}.{}", self.run_id, &key.hex[..12]))
            .arg(format!("--comment=semiflow {}", node.name))
            .arg(format!(
                "--output={}",
                self.root
                    .join("logs")
                    .join(format!("{}.slurm-%j.out", key.hex))
                    .display()
            ))
            .arg("--open-mode=append")
            // semiflow's --retries decides about a job lost with its machine (`extra` may say
            // --requeue: sbatch takes the last).
            .arg("--no-requeue")
            .arg(format!("--chdir={}", self.root.display()));
        if let Some(p) = &partition {
            cmd.arg(format!("--partition={p}"));
        }
        if let Some(c) = res.cpus {
            cmd.arg(format!("--cpus-per-task={c}"));
            cmd.env("RAYON_NUM_THREADS", c.to_string());
        } else {
            // The worker picks its own thread count (the bits do not depend on it).
            cmd.env_remove("RAYON_NUM_THREADS");
        }
        if let Some(m) = &res.mem {
            cmd.arg(format!("--mem={m}"));
        }
        if let Some(g) = res.gpus.filter(|g| *g > 0) {
            cmd.arg(format!("--gres=gpu:{g}"));
        }
        if let Some(t) = &res.time {
            cmd.arg(format!("--time={t}"));
        }
        cmd.args(&res.extra);
        cmd.arg(&script);
        let out = cmd.output().context("running sbatch")?;
        if !out.status.success() {
            bail!(
                "sbatch refused the job of {}: {}",
                node.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let job_id = stdout
            .trim()
            .split(';')
            .next()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| anyhow!("sbatch printed no job id: {stdout:?}"))?
            .to_string();
        let journal = Journal {
            job_id: job_id.clone(),
            node: node.name.clone(),
            key: key.hex.clone(),
            attempt,
            submitted: crate::timefmt::now_rfc3339(),
            partition: partition.clone(),
            log: slurm_log(&self.root, &key.hex, &job_id),
        };
        write_durably(
            &dir,
            &dir.join("job.json"),
            &serde_json::to_vec_pretty(&journal)?,
            None,
        )?;
        tracing::info!(
            "{}: submitted Slurm job {job_id}{} ({})",
            node.name,
            if attempt > 1 {
                format!(" (attempt {attempt})")
            } else {
                String::new()
            },
            crate::key::short(&key.hex)
        );
        Ok(Job {
            i,
            key: key.clone(),
            inputs: BTreeMap::new(),
            job_id,
            attempt,
            partition,
            submitted: Instant::now(),
            submitted_unix: unix_now(),
            started: None,
            state: "SUBMITTED".into(),
            host: None,
            unknown_since: None,
            confirmed: Instant::now(),
            adopted: false,
        })
    }

    /// Block until at least one job is finished (committed, failed or cancelled); return them.
    pub fn wait(&mut self) -> Result<Vec<(usize, Result<Record>)>> {
        loop {
            if !self.done.is_empty() {
                return Ok(std::mem::take(&mut self.done));
            }
            if self.jobs.is_empty() {
                return Ok(Vec::new());
            }
            if CANCEL.load(Ordering::Relaxed) {
                self.cancel_all();
                continue;
            }
            // The first poll of a fresh job comes soon; then one per interval.
            let due = match self.last_poll {
                None => Instant::now(),
                Some(t) => t + self.opts.poll_interval,
            };
            let now = Instant::now();
            if now < due {
                std::thread::sleep((due - now).min(Duration::from_millis(100)));
                continue;
            }
            self.last_poll = Some(Instant::now());
            self.poll()?;
        }
    }

    /// scancel every watched job; each is handed back as cancelled.
    fn cancel_all(&mut self) {
        let ids: Vec<String> = self.jobs.iter().map(|j| j.job_id.clone()).collect();
        eprintln!("semiflow: cancelling Slurm jobs {}", ids.join(" "));
        let _ = Command::new("scancel").args(&ids).status();
        for job in std::mem::take(&mut self.jobs) {
            let _ = std::fs::remove_file(job_dir(&self.root, &job.key.hex).join("job.json"));
            self.done.push((
                job.i,
                Err(anyhow::Error::new(semiflow_stages::api::Cancelled)),
            ));
        }
    }

    /// The `--starttime` of this coordinator's sacct calls: its own start or its earliest
    /// (adopted) job's submission, less 5 minutes for clocks that disagree.
    fn since_unix(&self) -> f64 {
        let earliest = self
            .jobs
            .iter()
            .map(|j| j.submitted_unix)
            .fold(self.started_unix, f64::min);
        (earliest - 300.0).max(0.0)
    }

    /// One batched state query for all watched jobs; finish those that ended.
    fn poll(&mut self) -> Result<()> {
        let ids: Vec<String> = self.jobs.iter().map(|j| j.job_id.clone()).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut answer = query_states(self.method, &refs, self.since_unix());
        let problems = answer.problems();
        match (&problems, self.query_failing) {
            (Some(p), false) => {
                let meanwhile = if answer.squeue_error.is_none() {
                    " (squeue answers for the jobs in the queue meanwhile)"
                } else {
                    ""
                };
                tracing::warn!(
                    "asking Slurm for job states failed ({p}); retrying every poll{meanwhile}"
                );
                self.query_failing = true;
            }
            (None, true) => {
                tracing::info!("Slurm answers job-state queries again");
                self.query_failing = false;
            }
            _ => {}
        }
        // Accounting can say RUNNING forever of a job the controller lost (a "runaway" job):
        // once per timeout, ask the controller about the jobs only sacct vouches for.
        let mut confirmed = std::collections::BTreeSet::new();
        let mut runaway = BTreeMap::new();
        let stale: Vec<String> = self
            .jobs
            .iter()
            .filter(|j| j.confirmed.elapsed() >= self.opts.unknown_state_timeout)
            .filter(|j| {
                (answer.infos.get(&j.job_id)).is_some_and(|i| i.from_sacct && is_active(&i.state))
            })
            .map(|j| j.job_id.clone())
            .collect();
        if !stale.is_empty() {
            let refs: Vec<&str> = stale.iter().map(String::as_str).collect();
            if let Ok(live) = squeue(&refs) {
                for id in stale {
                    if live.contains_key(&id) || scontrol_info(&id).is_some() {
                        confirmed.insert(id);
                    } else if let Some(i) = answer.infos.remove(&id) {
                        runaway.insert(id, i.detail);
                    }
                }
            }
        }
        let mut still = Vec::new();
        for mut job in std::mem::take(&mut self.jobs) {
            let result_path = job_dir(&self.root, &job.key.hex).join("result.json");
            let info = answer.infos.get(&job.job_id);
            if let Some(info) = info {
                if !info.from_sacct || confirmed.contains(&job.job_id) {
                    job.confirmed = Instant::now();
                }
                if job.partition.is_none() {
                    job.partition = info.partition.clone();
                }
                if info.host.is_some() {
                    job.host = info.host.clone();
                }
                if info.detail != job.state {
                    tracing::debug!(
                        "{}: Slurm job {} {}",
                        self.plan.nodes[job.i].name,
                        job.job_id,
                        info.detail
                    );
                    job.state = info.detail.clone();
                }
                if is_active(&info.state) {
                    job.unknown_since = None;
                    if info.state != "PENDING" && job.started.is_none() {
                        job.started = Some(Instant::now());
                    }
                    still.push(job);
                    continue;
                }
                if job.started.is_none() {
                    job.started = Some(Instant::now());
                }
                // COMPLETED: the worker exited 0, which it does only after writing its result;
                // a result file not there yet is a shared filesystem lagging: wait for it (at
                // most the unknown-state timeout).
                if info.state != "COMPLETED" || result_path.exists() {
                    let ending = Ending::Slurm(info.clone());
                    if let Some(r) = self.finish(job, ending) {
                        self.done.push(r);
                    }
                    continue;
                }
            } else if result_path.exists() {
                // Slurm no longer knows the job (or cannot be asked): its result decides.
                if let Some(r) = self.finish(job, Ending::Unknown(String::new())) {
                    self.done.push(r);
                }
                continue;
            }
            let since = *job.unknown_since.get_or_insert_with(Instant::now);
            if since.elapsed() < self.opts.unknown_state_timeout {
                still.push(job);
                continue;
            }
            let why = match info {
                Some(info) => format!(
                    "Slurm says it {}, but its result file {} never appeared: the store must be \
                     on a filesystem every compute node shares, at the same path",
                    info.detail,
                    result_path.display()
                ),
                None => match &problems {
                    _ if runaway.contains_key(&job.job_id) => format!(
                        "sacct says it is {}, but the controller does not know it (a runaway job \
                         in the accounting database: see `sacctmgr show runawayjobs`)",
                        runaway[&job.job_id]
                    ),
                    Some(p) => format!("Slurm cannot be asked ({p})"),
                    None if self.method == Method::Sacct => {
                        "sacct has no record of it, and squeue and scontrol do not know it"
                            .to_string()
                    }
                    None => "squeue and scontrol no longer know it (the controller forgets a \
                             finished job after MinJobAge), and it left no result file; without \
                             accounting nothing else records how it ended"
                        .to_string(),
                },
            };
            let why = format!("for {:.0}s: {why}", since.elapsed().as_secs_f64());
            if let Some(r) = self.finish(job, Ending::Unknown(why)) {
                self.done.push(r);
            }
        }
        // Resubmitted jobs were pushed by `finish`; keep them after the still-running ones.
        still.append(&mut self.jobs);
        self.jobs = still;
        Ok(())
    }

    /// A job left the queue: commit its result, or retry it, or report it. `None` when it was
    /// resubmitted (the new job is in `self.jobs`).
    fn finish(&mut self, job: Job, ending: Ending) -> Option<(usize, Result<Record>)> {
        let node = self.plan.nodes[job.i].name.clone();
        let dir = job_dir(&self.root, &job.key.hex);
        let result_path = dir.join("result.json");
        if result_path.exists() {
            let r = self.commit(&job, &result_path);
            if r.is_ok() {
                let _ = std::fs::remove_dir_all(&dir);
                let _ = std::fs::remove_dir_all(self.store.resume_dir(&job.key.hex));
            }
            return Some((job.i, r));
        }
        let log = slurm_log(&self.root, &job.key.hex, &job.job_id);
        let host = match &ending {
            Ending::Slurm(info) => info.host.clone(),
            Ending::Unknown(_) => None,
        }
        .or_else(|| job.host.clone());
        let on = host.map(|h| format!(" on {h}")).unwrap_or_default();
        let what = match &ending {
            Ending::Slurm(info) => format!("Slurm job {} ended {}{on}", job.job_id, info.detail),
            Ending::Unknown(why) => format!("Slurm job {}: state unknown {why}", job.job_id),
        };
        if job.attempt <= self.opts.retries && !CANCEL.load(Ordering::Relaxed) {
            tracing::warn!(
                "{node}: {what} without a result (attempt {} of {}); log: {}; resubmitting",
                job.attempt,
                self.opts.retries + 1,
                log.display()
            );
            match self.submit(job.i, &job.key, &job.inputs, job.attempt + 1) {
                Ok(new) => {
                    self.jobs.push(Job {
                        inputs: job.inputs,
                        ..new
                    });
                    return None;
                }
                Err(e) => return Some((job.i, Err(e))),
            }
        }
        let _ = std::fs::remove_file(dir.join("job.json"));
        let retry = if self.opts.retries == 0 {
            "rerun (or run with --retries N) to resubmit it"
        } else {
            "rerun to resubmit it"
        };
        let err = match &ending {
            Ending::Slurm(info) => {
                let mut state = info.state.clone();
                if info.detail != info.state {
                    state = info.detail.clone();
                }
                // The exit code tells something only of a job that exited by itself.
                let exit = match info.exit_code.as_deref() {
                    Some(c) if info.state == "FAILED" && c != "0:0" => format!(", exit code {c}"),
                    _ => String::new(),
                };
                anyhow!(
                    "Slurm job {} (attempt {}) ended without a result: Slurm state {state}{on}{exit}; {}; log: {}",
                    job.job_id,
                    job.attempt,
                    advice(&info.state, retry),
                    log.display()
                )
            }
            Ending::Unknown(why) => anyhow!(
                "Slurm job {} (attempt {}): Slurm state UNKNOWN {why}; check `sacct -j {}` \
                 (where the cluster has accounting), `scontrol show job {}` and the log, then \
                 {retry}; log: {}",
                job.job_id,
                job.attempt,
                job.job_id,
                job.job_id,
                log.display()
            ),
        };
        Some((job.i, Err(err)))
    }

    /// Check the worker's blobs, then commit the record.
    fn commit(&mut self, job: &Job, result_path: &Path) -> Result<Record> {
        let node = &self.plan.nodes[job.i];
        let res: WorkerResult = serde_json::from_slice(
            &std::fs::read(result_path)
                .with_context(|| format!("reading {}", result_path.display()))?,
        )
        .with_context(|| format!("parsing {}", result_path.display()))?;
        if res.key != job.key.hex {
            bail!(
                "{} names key {}, not {}",
                result_path.display(),
                res.key,
                job.key.hex
            );
        }
        let manifest = std::iter::once(("(manifest)", &res.artifact, res.manifest_size));
        let files = res.files.iter().map(|(n, e)| (n.as_str(), &e.hash, e.size));
        for (file, hash, size) in manifest.chain(files) {
            if let Err(problem) = self.store.blobs.check(hash, size, self.verify) {
                bail!(
                    "Slurm job {}: output {file} (blob {}) {problem}; nothing committed",
                    job.job_id,
                    crate::key::short(hash)
                );
            }
        }
        let exec_start_unix = res.exec_start_unix;
        let record = Record {
            key: job.key.hex.clone(),
            node: node.name.clone(),
            base: node.base.clone(),
            point: node.point.clone(),
            kind: node.kind.clone(),
            params: node.params.clone(),
            components: job.key.components.clone(),
            inputs: job.inputs.clone(),
            artifact: res.artifact,
            manifest_size: res.manifest_size,
            files: res.files,
            metrics: res.metrics,
            series: res.series,
            details: res.details,
            provenance: Provenance {
                semiflow_version: res.semiflow_version,
                git_commit: res.git_commit,
                candle_version: res.candle_version,
                host: res.host,
                threads: res.threads,
                seed: node.seed,
                pipeline: self.plan.name.clone(),
                overrides: self.plan.overrides.clone(),
                started: res.started,
                duration_s: res.duration_s,
                numerics: res.numerics,
                executor: Some("slurm".into()),
                job_id: Some(job.job_id.clone()),
                partition: job.partition.clone(),
            },
        };
        self.store.commit(&record)?;
        if !job.adopted {
            let t = JobTiming {
                to_exec_s: (exec_start_unix - job.submitted_unix).max(0.0),
                queued_s: job
                    .started
                    .map_or(0.0, |s| (s - job.submitted).as_secs_f64()),
                total_s: job.submitted.elapsed().as_secs_f64(),
                stage_s: record.provenance.duration_s,
            };
            tracing::debug!(
                "{}: Slurm job {}: submit→running seen {:.2}s, submit→commit {:.2}s, stage {:.2}s",
                node.name,
                job.job_id,
                t.queued_s,
                t.total_s,
                t.stage_s
            );
            self.timings.push(t);
        }
        Ok(record)
    }

    /// Print the overhead figures (`SEMIFLOW_SLURM_TIMINGS=1`): per committed job,
    /// submit→commit minus the stage's own time.
    pub fn report_timings(&self) {
        if std::env::var_os("SEMIFLOW_SLURM_TIMINGS").is_none() || self.timings.is_empty() {
            return;
        }
        let mut over: Vec<f64> = self
            .timings
            .iter()
            .map(|t| (t.total_s - t.stage_s).max(0.0))
            .collect();
        over.sort_by(f64::total_cmp);
        let mut to_exec: Vec<f64> = self.timings.iter().map(|t| t.to_exec_s).collect();
        to_exec.sort_by(f64::total_cmp);
        let pct = |v: &[f64], p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        eprintln!(
            "slurm-timings: jobs={} overhead_median_s={:.3} overhead_p90_s={:.3} overhead_max_s={:.3} submit_to_exec_median_s={:.3}",
            over.len(),
            pct(&over, 0.5),
            pct(&over, 0.9),
            pct(&over, 1.0),
            pct(&to_exec, 0.5)
        );
    }
}

/// How a job left the watch list.
enum Ending {
    /// A query named its final state.
    Slurm(JobInfo),
    /// Nothing named it for the unknown-state timeout (why), or nothing names it and its result
    /// file is there (empty).
    Unknown(String),
}

/// What to do about a job that ended without a result in Slurm state `state`.
fn advice(state: &str, retry: &str) -> String {
    match state {
        "FAILED" => "the job exited non-zero: its log says why".to_string(),
        "TIMEOUT" => format!(
            "it ran past its time limit: raise resources.time (a training node resumes from its \
             last epoch checkpoint), then {retry}"
        ),
        "OUT_OF_MEMORY" => {
            format!("it ran out of memory: raise resources.mem, then {retry}")
        }
        "NODE_FAIL" => format!(
            "the machine it ran on failed: {retry} (a training node resumes from its last epoch \
             checkpoint)"
        ),
        "BOOT_FAIL" => format!("its machine failed to boot: {retry}"),
        "PREEMPTED" => format!(
            "a job of higher priority preempted it: {retry} (a training node resumes from its \
             last epoch checkpoint)"
        ),
        "CANCELLED" => format!("it was cancelled (scancel, or an administrator): {retry}"),
        "DEADLINE" => format!("it hit its --deadline: {retry}"),
        _ => format!("its log may say why; {retry}"),
    }
}

/// Slurm states of jobs still queued or running.
fn is_active(state: &str) -> bool {
    matches!(
        state,
        "PENDING"
            | "RUNNING"
            | "CONFIGURING"
            | "COMPLETING"
            | "SUSPENDED"
            | "REQUEUED"
            | "REQUEUE_HOLD"
            | "REQUEUE_FED"
            | "RESIZING"
            | "SIGNALING"
            | "STAGE_OUT"
            | "STOPPED"
            | "ADOPTED"
            | "SUBMITTED"
    )
}

/// What one query says about one job.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobInfo {
    /// The state's first word: `CANCELLED` of sacct's `CANCELLED by 0`.
    pub state: String,
    /// The state as Slurm wrote it.
    pub detail: String,
    pub partition: Option<String>,
    /// The machine(s) it runs or ran on.
    pub host: Option<String>,
    /// `exit:signal`, where the query says.
    pub exit_code: Option<String>,
    pub reason: Option<String>,
    /// Said by accounting (sacct), not by the controller.
    pub from_sacct: bool,
}

impl JobInfo {
    fn new(state: &str, partition: &str, host: &str, exit_code: &str, reason: &str) -> JobInfo {
        let some = |s: &str| {
            let s = s.trim();
            (!s.is_empty() && !matches!(s, "None" | "None assigned" | "(null)" | "n/a"))
                .then(|| s.to_string())
        };
        let detail = state.trim().trim_end_matches('+').to_string();
        JobInfo {
            state: detail.split_whitespace().next().unwrap_or("").to_string(),
            detail,
            partition: some(partition),
            host: some(host),
            exit_code: some(exit_code),
            reason: some(reason),
            from_sacct: false,
        }
    }
}

/// The cluster's accounting: `Ok(AccountingStorageType)` where `sacct` answers, else why not.
fn accounting() -> Result<String, String> {
    let o = Command::new("scontrol")
        .args(["show", "config"])
        .output()
        .map_err(|e| format!("`scontrol show config` cannot run ({e})"))?;
    if !o.status.success() {
        return Err(format!(
            "`scontrol show config` failed ({})",
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    let storage = String::from_utf8_lossy(&o.stdout)
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "AccountingStorageType").then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    if storage.is_empty() || storage == "accounting_storage/none" {
        return Err(format!(
            "no accounting (AccountingStorageType = {})",
            if storage.is_empty() {
                "unset"
            } else {
                &storage
            }
        ));
    }
    // Configured is not working: slurmdbd may be down, or sacct restricted.
    match sacct(&["1"], unix_now() - 60.0) {
        Ok(_) => Ok(storage),
        Err(e) => Err(format!(
            "AccountingStorageType = {storage}, but sacct fails ({e:#})"
        )),
    }
}

/// The method for `want`, and why (for the log line at start).
pub fn choose_method(want: StateQuery) -> Result<(Method, String)> {
    Ok(match want {
        StateQuery::Squeue => (Method::Squeue, "as asked (state_query = \"squeue\")".into()),
        StateQuery::Sacct => match accounting() {
            Ok(s) => (
                Method::Sacct,
                format!("as asked (state_query = \"sacct\"; AccountingStorageType = {s})"),
            ),
            Err(why) => bail!(
                "state_query = \"sacct\", but this cluster has {why}: use state_query = \
                 \"squeue\" (or \"auto\") where accounting does not work"
            ),
        },
        StateQuery::Auto => match accounting() {
            Ok(s) => (
                Method::Sacct,
                format!("accounting works (AccountingStorageType = {s})"),
            ),
            Err(why) => (Method::Squeue, why),
        },
    })
}

/// What one poll learned.
#[derive(Default)]
struct Answer {
    infos: BTreeMap<String, JobInfo>,
    sacct_error: Option<String>,
    squeue_error: Option<String>,
}

impl Answer {
    fn problems(&self) -> Option<String> {
        let p: Vec<String> = [("sacct", &self.sacct_error), ("squeue", &self.squeue_error)]
            .into_iter()
            .filter_map(|(what, e)| e.as_ref().map(|e| format!("{what}: {e}")))
            .collect();
        (!p.is_empty()).then(|| p.join("; "))
    }
}

/// The states of `ids`: one `sacct` call (method sacct), then one `squeue` call for the jobs
/// sacct does not name (it lags sbatch by a moment; or every job, method squeue), then
/// `scontrol show job` for each job neither names.
fn query_states(method: Method, ids: &[&str], since_unix: f64) -> Answer {
    let mut a = Answer::default();
    let mut missing: Vec<&str> = ids.to_vec();
    if method == Method::Sacct {
        match sacct(ids, since_unix) {
            Ok(m) => {
                a.infos = m;
                missing.retain(|id| !a.infos.contains_key(*id));
            }
            Err(e) => a.sacct_error = Some(format!("{e:#}")),
        }
    }
    if !missing.is_empty() {
        match squeue(&missing) {
            Ok(m) => {
                for id in missing {
                    let info = match m.get(id) {
                        // squeue has no exit code: ask scontrol once, as the job ends.
                        Some(i) if !is_active(&i.state) => scontrol_info(id)
                            .filter(|s| s.state == i.state)
                            .unwrap_or_else(|| i.clone()),
                        Some(i) => i.clone(),
                        None => match scontrol_info(id) {
                            Some(i) => i,
                            None => continue,
                        },
                    };
                    a.infos.insert(id.to_string(), info);
                }
            }
            Err(e) => a.squeue_error = Some(format!("{e:#}")),
        }
    }
    a
}

/// One batched `sacct` for `ids`: job id → state. `since_unix` goes to `--starttime` (in UTC):
/// sacct looks only at jobs that existed after it, and without it at today's only.
pub fn sacct(ids: &[&str], since_unix: f64) -> Result<BTreeMap<String, JobInfo>> {
    let mut out = BTreeMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let since = SystemTime::UNIX_EPOCH + Duration::from_secs_f64(since_unix.max(0.0));
    let since = crate::timefmt::rfc3339(since);
    let o = Command::new("sacct")
        .env("TZ", "UTC")
        .args(["-X", "-n", "-P"])
        .arg("--format=JobIDRaw,State,ExitCode,Partition,NodeList,Reason")
        .arg(format!("--starttime={}", since.trim_end_matches('Z')))
        .arg("-j")
        .arg(ids.join(","))
        .output()
        .context("running sacct")?;
    if !o.status.success() {
        bail!("{}", String::from_utf8_lossy(&o.stderr).trim());
    }
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let f: Vec<&str> = line.split('|').collect();
        if f.len() >= 6 && !f[0].trim().is_empty() {
            let info = JobInfo {
                from_sacct: true,
                ..JobInfo::new(f[1], f[3], f[4], f[2], f[5])
            };
            out.insert(f[0].trim().to_string(), info);
        }
    }
    Ok(out)
}

/// One batched `squeue` for `ids`. Jobs Slurm no longer knows are absent.
pub fn squeue(ids: &[&str]) -> Result<BTreeMap<String, JobInfo>> {
    let mut out = BTreeMap::new();
    if ids.is_empty() {
        return Ok(out);
    }
    let o = Command::new("squeue")
        .args(["-h", "-t", "all", "-o", "%i|%T|%P|%N|%r", "-j"])
        .arg(ids.join(","))
        .output()
        .context("running squeue")?;
    let stderr = String::from_utf8_lossy(&o.stderr);
    if !o.status.success() {
        // A single id Slurm has forgotten makes squeue fail: that job is just absent.
        if stderr.contains("Invalid job id") {
            return Ok(out);
        }
        bail!("{}", stderr.trim());
    }
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let f: Vec<&str> = line.split('|').collect();
        if f.len() >= 5 && !f[0].trim().is_empty() {
            out.insert(
                f[0].trim().to_string(),
                JobInfo::new(f[1], f[2], f[3], "", f[4]),
            );
        }
    }
    Ok(out)
}

/// The state of a job that left the queue (`scontrol show job`), if Slurm still knows it.
fn scontrol_info(id: &str) -> Option<JobInfo> {
    let o = Command::new("scontrol")
        .args(["show", "job", "-o", id])
        .output()
        .ok()?;
    if !o.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&o.stdout);
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
            .unwrap_or("")
    };
    let state = field("JobState");
    (!state.is_empty()).then(|| {
        JobInfo::new(
            state,
            field("Partition"),
            field("NodeList"),
            field("ExitCode"),
            field("Reason"),
        )
    })
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Job id and Slurm state of every journaled job, by key (for `semiflow status`): squeue for the
/// jobs in the queue (sacct lags it by a moment), sacct (where accounting works) and scontrol
/// for the others.
pub fn journal_states(store: &Path) -> BTreeMap<String, (String, String)> {
    let journals = journals(store);
    let ids: Vec<&str> = journals.iter().map(|j| j.job_id.as_str()).collect();
    let since = journals
        .iter()
        .filter_map(|j| crate::timefmt::parse_rfc3339(&j.submitted))
        .filter_map(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
        .fold(unix_now(), f64::min)
        - 300.0;
    let mut infos = squeue(&ids).unwrap_or_default();
    let gone: Vec<&str> = ids
        .iter()
        .copied()
        .filter(|id| !infos.contains_key(*id))
        .collect();
    if !gone.is_empty() {
        let method = if accounting().is_ok() {
            Method::Sacct
        } else {
            Method::Squeue
        };
        infos.extend(query_states(method, &gone, since).infos);
    }
    journals
        .iter()
        .map(|j| {
            let state = infos
                .get(&j.job_id)
                .map_or_else(|| "UNKNOWN".to_string(), |i| i.detail.clone());
            (j.key.clone(), (j.job_id.clone(), state))
        })
        .collect()
}

/// `semiflow status` while a run holds the store: the journaled jobs with their Slurm states.
pub fn print_journal(store: &Path) -> Result<usize> {
    let journals = journals(store);
    let states = journal_states(store);
    let w = journals
        .iter()
        .map(|j| j.node.len())
        .max()
        .unwrap_or(4)
        .max(4);
    for j in &journals {
        let state = states.get(&j.key).map_or("UNKNOWN", |(_, s)| s.as_str());
        println!(
            "{:<w$}  job {:<8} {:<10} {}",
            j.node,
            j.job_id,
            state,
            crate::key::short(&j.key)
        );
    }
    Ok(journals.len())
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::JobInfo;

    #[test]
    fn job_info_takes_the_states_first_word_and_drops_placeholders() {
        let i = JobInfo::new("CANCELLED by 0", "debug", "vm", "0:15", "None");
        assert_eq!(i.state, "CANCELLED");
        assert_eq!(i.detail, "CANCELLED by 0");
        assert_eq!(i.partition.as_deref(), Some("debug"));
        assert_eq!(i.host.as_deref(), Some("vm"));
        assert_eq!(i.exit_code.as_deref(), Some("0:15"));
        assert_eq!(i.reason, None);
        let p = JobInfo::new("PENDING", "", "None assigned", "0:0", "Priority");
        assert_eq!(
            (p.state.as_str(), p.partition, p.host),
            ("PENDING", None, None)
        );
        assert_eq!(p.reason.as_deref(), Some("Priority"));
        // sacct marks truncated fields with `+`.
        assert_eq!(
            JobInfo::new("OUT_OF_MEMORY+", "", "", "", "").state,
            "OUT_OF_MEMORY"
        );
    }
}
