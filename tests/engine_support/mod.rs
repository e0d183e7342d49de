//! Shared helpers for the engine integration tests: a temp dir with a store, pipeline files, and
//! the real `semiflow` binary run with the test stage kinds enabled.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Env {
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// `(nodes, ran, cached, failed)` from the exact last line.
    pub fn summary(&self) -> (usize, usize, usize, usize) {
        let line = self
            .stdout
            .lines()
            .last()
            .unwrap_or_else(|| panic!("no output; stderr:\n{}", self.stderr));
        let rest = line
            .strip_prefix("semiflow: ")
            .unwrap_or_else(|| panic!("unexpected last line {line:?}; stderr:\n{}", self.stderr));
        let nums: Vec<usize> = rest
            .split(|c: char| !c.is_ascii_digit())
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(
            line,
            format!(
                "semiflow: {} nodes: {} ran, {} cached, {} failed",
                nums[0], nums[1], nums[2], nums[3]
            )
        );
        (nums[0], nums[1], nums[2], nums[3])
    }

    /// Nodes that were built (not cached) in this run, sorted.
    pub fn built(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .stderr
            .lines()
            .filter_map(|l| l.split_once(": built in "))
            .map(|(head, _)| head.rsplit(' ').next().unwrap().to_string())
            .collect();
        v.sort();
        v
    }

    pub fn ok(self) -> Run {
        assert_eq!(
            self.code, 0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

impl Env {
    pub fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        Env { dir, store }
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_semiflow"));
        c.args(args)
            .arg("--store")
            .arg(&self.store)
            .env_remove("SEMIFLOW_STORE")
            .env_remove("SEMIFLOW_TOY_VERSION")
            .env_remove("RUST_LOG");
        c
    }

    pub fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut c = self.cmd(args);
        for (k, v) in env {
            c.env(k, v);
        }
        finish(c.output().unwrap())
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, &[])
    }

    /// `show NODE --json` parsed.
    pub fn record(&self, node: &str) -> serde_json::Value {
        let r = self.run(&["show", node, "--json"]).ok();
        serde_json::from_str(&r.stdout).unwrap()
    }

    pub fn object_path(&self, hash: &str) -> PathBuf {
        self.store.join("objects").join(&hash[..2]).join(hash)
    }
}

pub fn finish(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Overwrite a read-only store object (tests only).
pub fn overwrite(path: &Path, bytes: &[u8]) {
    let mut perm = std::fs::metadata(path).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    std::fs::set_permissions(path, perm).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// A chain `pre → ft → eval` plus an independent `other` feeding `eval`.
pub const PIPELINE: &str = r#"
[pipeline]
name = "toy"
seed = 0

[nodes.pre]
kind = "toy-train"
epochs = 4

[nodes.ft]
kind = "toy-train"
from = "pre"
epochs = 2

[nodes.other]
kind = "toy-train"
lr = 0.01

[nodes.eval]
kind = "toy-eval"
models = ["ft", "other"]
"#;
