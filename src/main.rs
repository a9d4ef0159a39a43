use clap::Parser;

/// mimalloc: the service allocates many small short-lived values per message and per
/// imported line (JSON trees, HL7 fields); glibc's allocator showed as a third of the
/// importer's CPU (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    // No transparent huge pages for this process: mimalloc asks for them on its memory,
    // and 2 MiB made resident for a few live kilobytes raised the importer's peak RSS
    // by about a quarter (180 MiB instead of 140 MiB) with no measurable gain in speed
    // (see BENCHMARKS.md). Done before the runtime's threads start allocating.
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_THP_DISABLE) takes no pointers; it sets a flag of this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(radiology::cli::run(radiology::cli::Cli::parse()))
}
