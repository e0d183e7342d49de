//! The `semiflow` binary: process setup, then the CLI in `semiflow::cli`.

// mimalloc: training allocates a fresh buffer per op; glibc's returning memory to the OS cost
// more than half the step time (PERF-NOTES.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Without RAYON_NUM_THREADS candle re-reads /proc/cpuinfo on every matmul (PERF-NOTES.md).
    // Set before any thread exists, so no other thread can be reading the environment.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    std::process::exit(semiflow::cli::main());
}
