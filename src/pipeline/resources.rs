//! `resources = { ... }` of a node (or `[defaults.KIND]`) and the `[executor]` table: how nodes
//! run, never what they compute, so neither is part of any cache key.
//!
//! ```toml
//! [executor]
//! kind = "slurm"          # or "local" (default); `--executor` wins
//! partition = "cpu"       # default partition of every job; `--partition` wins
//! max_jobs = 50           # jobs queued or running at once; `--max-jobs` wins
//! poll_interval = 5       # seconds between two job-state queries; `--poll-interval` wins
//! retries = 2             # resubmissions of a failed job; `--retries` wins
//! state_query = "auto"    # "sacct" (needs accounting), "squeue", or "auto"; `--state-query` wins
//! unknown_state_timeout = "10m"  # report a job whose state cannot be learned after this long
//!
//! [defaults.pretrain]
//! resources = { cpus = 8, mem = "16G", gpus = 0, time = "4h", partition = "cpu", extra = ["--qos=long"] }
//! ```

use super::error::{Problem, Problems};
use super::schema::{check_keys, read_u64, type_problem};
use super::spanned::{join, Kind, Table, Value};
use crate::plan::{ExecutorSettings, Resources};

const RESOURCE_KEYS: &[&str] = &["cpus", "mem", "gpus", "time", "partition", "extra"];
const EXECUTOR_KEYS: &[&str] = &[
    "kind",
    "partition",
    "max_jobs",
    "poll_interval",
    "retries",
    "state_query",
    "unknown_state_timeout",
];

pub(super) fn read_resources(v: &Value, path: &str, problems: &mut Problems) -> Resources {
    let mut r = Resources::default();
    let Kind::Table(t) = &v.kind else {
        problems.push(
            type_problem(v, path, "a table")
                .help("write e.g. `resources = { cpus = 2, mem = \"4G\", time = \"1h\" }`"),
        );
        return r;
    };
    check_keys(t, RESOURCE_KEYS, path, "resource keys", problems);
    let u32_at = |key: &str, problems: &mut Problems| {
        t.get(key)
            .and_then(|v| read_u64(v, &join(path, key), problems))
            .map(|n| n.min(u32::MAX as u64) as u32)
    };
    r.cpus = u32_at("cpus", problems);
    r.gpus = u32_at("gpus", problems);
    if let Some(v) = t.get("mem") {
        r.mem = match &v.kind {
            Kind::Integer(i) if *i > 0 => Some(format!("{i}M")),
            Kind::String(s) if valid_mem(s) => Some(s.clone()),
            _ => {
                problems.push(
                    Problem::at(
                        &v.span,
                        join(path, "mem"),
                        "expected a memory size such as \"4G\" or \"500M\" (or megabytes)",
                    )
                    .help("Slurm's --mem units: K, M, G, T"),
                );
                None
            }
        };
    }
    if let Some(v) = t.get("time") {
        let text = match &v.kind {
            Kind::Integer(i) if *i > 0 => Some(i.to_string()),
            Kind::String(s) => Some(s.clone()),
            _ => None,
        };
        r.time = match text.as_deref().and_then(slurm_time) {
            Some(t) => Some(t),
            None => {
                problems.push(
                    Problem::at(&v.span, join(path, "time"), "expected a time limit")
                        .help("whole minutes (`90`), `\"30m\"`, `\"2h\"`, `\"1d\"`, or Slurm's `\"1:30:00\"` / `\"2-00:00:00\"`"),
                );
                None
            }
        };
    }
    if let Some(v) = t.get("partition") {
        match v.as_str() {
            Some(s) if !s.trim().is_empty() => r.partition = Some(s.to_string()),
            _ => problems.push(type_problem(
                v,
                &join(path, "partition"),
                "a partition name",
            )),
        }
    }
    if let Some(v) = t.get("extra") {
        match &v.kind {
            Kind::Array(items) if items.iter().all(|i| i.as_str().is_some()) => {
                r.extra = items
                    .iter()
                    .filter_map(|i| i.as_str())
                    .map(String::from)
                    .collect();
            }
            _ => problems.push(
                type_problem(v, &join(path, "extra"), "an array of strings")
                    .help("sbatch arguments, e.g. `extra = [\"--qos=long\"]`"),
            ),
        }
    }
    r
}

pub(super) fn read_executor(t: &Table, problems: &mut Problems) -> ExecutorSettings {
    check_keys(t, EXECUTOR_KEYS, "executor", "keys of [executor]", problems);
    let mut e = ExecutorSettings::default();
    if let Some(v) = t.get("kind") {
        match v.as_str() {
            Some(s @ ("local" | "slurm")) => e.kind = Some(s.to_string()),
            _ => problems.push(
                Problem::at(&v.span, "executor.kind", "expected \"local\" or \"slurm\"")
                    .help("write `kind = \"slurm\"`"),
            ),
        }
    }
    if let Some(v) = t.get("partition") {
        match v.as_str() {
            Some(s) if !s.trim().is_empty() => e.partition = Some(s.to_string()),
            _ => problems.push(type_problem(v, "executor.partition", "a partition name")),
        }
    }
    if let Some(v) = t.get("max_jobs") {
        e.max_jobs = read_u64(v, "executor.max_jobs", problems).map(|n| n.max(1) as usize);
    }
    if let Some(v) = t.get("retries") {
        e.retries = read_u64(v, "executor.retries", problems).map(|n| n.min(100) as u32);
    }
    if let Some(v) = t.get("poll_interval") {
        e.poll_interval = match v.kind {
            Kind::Integer(i) if i > 0 => Some(i as f64),
            Kind::Float(f) if f > 0.0 => Some(f),
            _ => {
                problems.push(type_problem(
                    v,
                    "executor.poll_interval",
                    "a positive number of seconds",
                ));
                None
            }
        };
    }
    if let Some(v) = t.get("state_query") {
        match v.as_str() {
            Some(s @ ("auto" | "sacct" | "squeue")) => e.state_query = Some(s.to_string()),
            _ => problems.push(
                Problem::at(
                    &v.span,
                    "executor.state_query",
                    "expected \"auto\", \"sacct\" or \"squeue\"",
                )
                .help("\"sacct\" needs Slurm accounting; \"auto\" uses it where it works, else squeue"),
            ),
        }
    }
    if let Some(v) = t.get("unknown_state_timeout") {
        let secs = match &v.kind {
            Kind::Integer(i) if *i > 0 => Some(*i as f64),
            Kind::Float(f) if *f > 0.0 => Some(*f),
            Kind::String(s) => duration_secs(s),
            _ => None,
        };
        if secs.is_none() {
            problems.push(
                Problem::at(
                    &v.span,
                    "executor.unknown_state_timeout",
                    "expected a positive duration",
                )
                .help("seconds (`120`), or `\"90s\"`, `\"10m\"`, `\"1h\"`"),
            );
        }
        e.unknown_state_timeout = secs;
    }
    e
}

/// `"90s"`, `"10m"`, `"1h"`, `"2d"` or a plain number of seconds, as seconds (positive only).
pub fn duration_secs(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().last()? {
        (i, c @ ('s' | 'm' | 'h' | 'd')) => (&s[..i], c),
        _ => (s, 's'),
    };
    let n: f64 = num
        .trim()
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n > 0.0)?;
    Some(
        n * match unit {
            'm' => 60.0,
            'h' => 3600.0,
            'd' => 86_400.0,
            _ => 1.0,
        },
    )
}

fn valid_mem(s: &str) -> bool {
    let digits = s.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
    !digits.is_empty() && digits.len() + 1 >= s.len() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// A time limit in a form `sbatch --time` takes: `N` (minutes), `Nm`, `Nh`, `Nd` converted;
/// `[D-]H:MM[:SS]` passed through.
pub fn slurm_time(s: &str) -> Option<String> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if s.bytes()
        .all(|b| b.is_ascii_digit() || b == b':' || b == b'-')
    {
        return s
            .bytes()
            .next()
            .filter(u8::is_ascii_digit)
            .map(|_| s.to_string());
    }
    let (num, unit) = s.split_at(s.len() - 1);
    let n: u64 = num.parse().ok()?;
    let minutes = match unit {
        "m" => n,
        "h" => n * 60,
        "d" => n * 24 * 60,
        _ => return None,
    };
    (minutes > 0).then(|| minutes.to_string())
}

#[cfg(test)]
mod tests {
    use super::{duration_secs, slurm_time};

    #[test]
    fn durations() {
        assert_eq!(duration_secs("90s"), Some(90.0));
        assert_eq!(duration_secs("10m"), Some(600.0));
        assert_eq!(duration_secs("1.5h"), Some(5400.0));
        assert_eq!(duration_secs("2d"), Some(172_800.0));
        assert_eq!(duration_secs("45"), Some(45.0));
        assert_eq!(duration_secs("0s"), None);
        assert_eq!(duration_secs("-5s"), None);
        assert_eq!(duration_secs("soon"), None);
        assert_eq!(duration_secs("s"), None);
    }

    #[test]
    fn time_limits() {
        assert_eq!(slurm_time("1").as_deref(), Some("1"));
        assert_eq!(slurm_time("2h").as_deref(), Some("120"));
        assert_eq!(slurm_time("1d").as_deref(), Some("1440"));
        assert_eq!(slurm_time("1:30:00").as_deref(), Some("1:30:00"));
        assert_eq!(slurm_time("soon"), None);
        assert_eq!(slurm_time("0m"), None);
    }
}
