//! Progress bars (one per running node) and the stage-facing progress reporter.
//!
//! Bars draw on stderr only when it is a terminal; otherwise they are hidden and epoch lines in
//! the log carry the same information.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use semiflow_stages::api::Progress;

use crate::logging::{append, NodeLog};

/// tracing target of events that `NodeProgress` already appended to the node log itself.
pub const PROGRESS_TARGET: &str = "semiflow::progress";

/// The process-wide bar set.
pub fn bars() -> &'static MultiProgress {
    static BARS: OnceLock<MultiProgress> = OnceLock::new();
    BARS.get_or_init(|| {
        if std::io::stderr().is_terminal() {
            MultiProgress::new()
        } else {
            MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
        }
    })
}

/// Reports one node's progress to its bar and its log file.
pub struct NodeProgress {
    node: String,
    bar: ProgressBar,
    log: NodeLog,
    steps_per_epoch: std::sync::atomic::AtomicUsize,
    started: Instant,
}

impl NodeProgress {
    pub fn new(node: &str, log: NodeLog) -> NodeProgress {
        // A spinner until the stage says it trains (`begin`), then a bar with an ETA.
        let bar = bars().add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{prefix:.bold} {spinner} {msg} {elapsed}")
                .expect("valid template"),
        );
        bar.set_prefix(node.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        NodeProgress {
            node: node.to_string(),
            bar,
            log,
            steps_per_epoch: 0.into(),
            started: Instant::now(),
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
        bars().remove(&self.bar);
    }
}

impl Progress for NodeProgress {
    fn begin(&self, epochs: usize, steps_per_epoch: usize, start_epoch: usize) {
        use std::sync::atomic::Ordering;
        self.steps_per_epoch
            .store(steps_per_epoch, Ordering::Relaxed);
        self.bar.set_length((epochs * steps_per_epoch) as u64);
        self.bar
            .set_position((start_epoch * steps_per_epoch) as u64);
        self.bar.reset_eta();
        append(
            &self.log,
            "INFO",
            &format!("training: {epochs} epochs × {steps_per_epoch} steps, starting at epoch {start_epoch}"),
        );
    }

    fn step(&self, epoch: usize, step: usize, loss: f64, images_per_sec: f64) {
        let spe = self
            .steps_per_epoch
            .load(std::sync::atomic::Ordering::Relaxed);
        self.bar.set_position((epoch * spe + step + 1) as u64);
        self.bar.set_message(format!(
            "epoch {} step {} loss {loss:.4} {images_per_sec:.0} img/s",
            epoch + 1,
            step + 1
        ));
    }

    fn epoch(&self, epoch: usize, metrics: &BTreeMap<String, f64>) {
        let m: Vec<String> = metrics.iter().map(|(k, v)| format!("{k}={v:.6}")).collect();
        let line = format!(
            "{}: epoch {} done ({:.1}s): {}",
            self.node,
            epoch + 1,
            self.started.elapsed().as_secs_f64(),
            m.join(" ")
        );
        append(&self.log, "INFO", &line);
        // Written to the file above; the target keeps the file layer from writing it twice.
        tracing::debug!(target: PROGRESS_TARGET, "{line}");
    }

    fn message(&self, msg: &str) {
        append(&self.log, "INFO", msg);
        tracing::info!(target: PROGRESS_TARGET, "{}: {msg}", self.node);
    }
}
