//! The `semiflow` binary: process setup, then the CLI in `semiflow::cli`.

// mimalloc: training allocates a fresh buffer per op; glibc's returning memory to the OS cost
// more than half the step time when this was first profiled (that measurement was not kept; the
// later profile, with mimalloc, is in bench/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Without RAYON_NUM_THREADS candle re-reads /proc/cpuinfo on every matmul: its CPU matmul asks
    // `utils::get_num_threads` each time, which then counts physical cores with
    // `num_cpus::get_physical` (vendor/candle-core/src/utils.rs).
    // Set before any thread exists, so no other thread can be reading the environment.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    keep_freed_memory_mapped();
    std::process::exit(semiflow::cli::main());
}

/// Turns mimalloc's purging off, so freed memory stays mapped for reuse: otherwise every large op
/// result page-faults fresh zeroed pages from the kernel (11k faults per small-ResNet training
/// step, ~10% of its CPU time; bench/README.md). `MIMALLOC_PURGE_DELAY` in the environment would
/// not do: mimalloc reads its variables before main runs.
fn keep_freed_memory_mapped() {
    // `mi_option_purge_delay` is 15 in mimalloc.h (v2 and v3); libmimalloc-sys names no constant.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: a plain option setter of the linked mimalloc; called before any other thread starts.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}
