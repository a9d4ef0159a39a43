use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    radiology::cli::run(radiology::cli::Cli::parse()).await
}
