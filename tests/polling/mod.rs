//! Waiting for a condition in the integration tests (a process to reach a state, a file to appear).
#![allow(dead_code)]

use std::time::{Duration, Instant};

/// Polls `f` every 20 ms until it holds, failing after `timeout`.
pub fn wait_for(what: &str, timeout: Duration, f: impl FnMut() -> bool) {
    wait_for_every(what, timeout, Duration::from_millis(20), f)
}

/// Polls `f` every `poll` until it holds, failing after `timeout` (a longer `poll` where `f` asks
/// a daemon, e.g. Slurm's controller).
pub fn wait_for_every(what: &str, timeout: Duration, poll: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(poll);
    }
}
