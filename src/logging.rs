//! tracing setup: human-readable lines on stderr (kept clear of progress bars) and, while a node
//! runs on a thread, the same events appended to that node's log file in the store.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// A node's open log file, shared by the worker thread and its progress reporter.
pub type NodeLog = Arc<Mutex<File>>;

thread_local! {
    static CURRENT: RefCell<Option<NodeLog>> = const { RefCell::new(None) };
}

/// Run `f` with events on this thread also appended to `log`.
pub fn with_node_log<T>(log: NodeLog, f: impl FnOnce() -> T) -> T {
    CURRENT.with(|c| *c.borrow_mut() = Some(log));
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            CURRENT.with(|c| *c.borrow_mut() = None);
        }
    }
    let _reset = Reset;
    f()
}

/// Append one line to a node log (used for progress events that must land in the file).
pub fn append(log: &NodeLog, level: &str, msg: &str) {
    if let Ok(mut f) = log.lock() {
        let _ = writeln!(f, "{} {level:>5} {msg}", crate::timefmt::now_rfc3339());
    }
}

struct FileLayer;

#[derive(Default)]
struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for FileLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() == crate::progress::PROGRESS_TARGET {
            return;
        }
        CURRENT.with(|c| {
            if let Some(log) = c.borrow().as_ref() {
                let mut text = Text::default();
                event.record(&mut text);
                append(log, event.metadata().level().as_str(), &text.0);
            }
        });
    }
}

/// stderr writer that pauses the progress bars while a line is written.
struct BarSafeStderr;

impl Write for BarSafeStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        crate::progress::bars().suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Install the global subscriber. `verbosity`: -1 quiet (warnings), 0 info, 1 debug, 2+ trace.
/// `RUST_LOG` overrides the stderr filter.
pub fn init(verbosity: i8) {
    let level = match verbosity {
        i8::MIN..=-1 => Level::WARN,
        0 => Level::INFO,
        1 => Level::DEBUG,
        _ => Level::TRACE,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level.as_str()));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(|| BarSafeStderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_filter(filter);
    // sled's own debug chatter is noise in a node's log.
    let file = FileLayer.with_filter(
        tracing_subscriber::filter::Targets::new()
            .with_default(Level::DEBUG)
            .with_target("sled", Level::WARN),
    );
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .try_init();
}
