//! The `lb` command line: `lb sim` replays a pcap through the pipeline, `lb check` validates a config.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod run;
use controlplane::{compile, config, sim};
use tracing_subscriber::EnvFilter;

/// A userspace L4/L7 load balancer.
#[derive(Parser, Debug)]
#[command(name = "lb", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Replay a pcap through the packet pipeline and write the transmitted frames to a pcap.
    Sim {
        /// The configuration (lb.toml).
        #[arg(long)]
        config: PathBuf,
        /// Ethernet pcap to replay.
        #[arg(long = "in", value_name = "PCAP")]
        input: PathBuf,
        /// Where to write the transmitted frames.
        #[arg(long = "out", value_name = "PCAP")]
        output: PathBuf,
    },
    /// Serve a configuration: open the port, start the workers, run until SIGINT or SIGTERM.
    Run {
        /// The configuration (lb.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Parse and compile a configuration; print every problem found.
    Check {
        /// The configuration (lb.toml).
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A server says what it serves; the one-shot commands stay quiet unless asked.
    let default_level = match cli.command {
        Command::Run { .. } => "info",
        _ => "warn",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Run { config } => {
            load_and_compile(&config).and_then(|(_, compiled)| run::run(&config, compiled))
        }
        Command::Sim {
            config,
            input,
            output,
        } => run_sim(&config, &input, &output),
        Command::Check { config } => run_check(&config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_and_compile(path: &Path) -> anyhow::Result<(config::Config, compile::Compiled)> {
    let cfg = config::load(path)?;
    // One problem per line, so a long list stays readable and greppable.
    let compiled = compile::compile(&cfg, 1).map_err(|e| {
        anyhow::anyhow!(
            "{}: {} problem(s) in the configuration:\n  {}",
            path.display(),
            e.problems.len(),
            e.problems.join("\n  ")
        )
    })?;
    tracing::info!(
        path = %path.display(),
        services = compiled.table.services.len(),
        "configuration compiled"
    );
    Ok((cfg, compiled))
}

fn run_sim(config: &Path, input: &Path, output: &Path) -> anyhow::Result<()> {
    let (_, compiled) = load_and_compile(config)?;
    let frames = sim::read_pcap(input)?;
    tracing::info!(frames = frames.len(), path = %input.display(), "replaying");
    let report = sim::run(&compiled, &frames);
    let tx = report.tx_frames(&frames);
    sim::write_pcap(output, &tx)?;

    let count = |name: &str| report.counts.get(name).copied().unwrap_or(0);
    println!("frames in: {}", frames.len());
    println!("tx: {}", count("tx"));
    println!("to-host: {}", count("to-host"));
    if count("to-l7") > 0 {
        println!("to-l7: {}", count("to-l7"));
    }
    for (name, n) in &report.counts {
        if name.starts_with("drop:") {
            println!("{name}: {n}");
        }
    }
    println!("spread (new flows, packets per backend):");
    for b in &report.backends {
        println!(
            "  {:<12} {:<9} {:<24} {:>6} flows {:>8} packets",
            b.service, b.mode, b.backend, b.new_flows, b.packets
        );
    }
    println!("written: {} frames to {}", tx.len(), output.display());
    Ok(())
}

fn run_check(config: &Path) -> anyhow::Result<()> {
    let (cfg, _) = load_and_compile(config)?;
    let backends: usize = cfg
        .services
        .iter()
        .flat_map(|s| &s.pools)
        .map(|p| p.backends.len())
        .sum();
    println!("ok: {} services, {} backends", cfg.services.len(), backends);
    Ok(())
}
