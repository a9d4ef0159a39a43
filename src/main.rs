use clap::Parser;

/// mimalloc: the service allocates many small short-lived values per message and per
/// imported line (JSON trees, HL7 fields); glibc's allocator showed as a third of the
/// importer's CPU (see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    radiology::cli::run(radiology::cli::Cli::parse()).await
}
