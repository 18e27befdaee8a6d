//! The `lb` command line: `lb sim` replays a pcap through the pipeline, `lb check` validates a config.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{Parser, Subcommand};

mod instance;
mod run;
use controlplane::{compile, config, diag, sim};
use testkit::lab;
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
    /// The namespace lab: a client, the balancer, pod and VM backends on this machine.
    Lab {
        #[command(subcommand)]
        action: LabAction,
    },
    /// Lab backend: HTTP and UDP echo servers that answer with NAME (run inside a lab namespace).
    #[command(hide = true)]
    LabBackend {
        /// The name every answer carries.
        #[arg(long)]
        name: String,
        /// TCP port to serve HTTP on (repeatable).
        #[arg(long)]
        http: Vec<u16>,
        /// UDP port to echo on (repeatable).
        #[arg(long)]
        udp: Vec<u16>,
    },
    /// Lab IP-in-IP decapsulation agent for VM backends (production uses the kernel's ipip/fou).
    #[command(hide = true)]
    LabDecap {
        /// Interface the tunnelled packets arrive on.
        #[arg(long)]
        dev: String,
    },
}

#[derive(Subcommand, Debug)]
enum LabAction {
    /// Build the lab, run the config, send requests, print the spread and counters, tear down.
    Demo {
        /// The configuration to run (its backends must be the lab's).
        #[arg(long, default_value = "lb.toml")]
        config: PathBuf,
        /// New connections (TCP) or datagrams (UDP) per service.
        #[arg(long, default_value_t = 300)]
        requests: usize,
    },
    /// Build the lab and run the config until Ctrl-C, then tear down.
    Up {
        /// The configuration to run.
        #[arg(long, default_value = "lb.toml")]
        config: PathBuf,
    },
    /// Delete namespaces left by a lab whose process was killed.
    Down {
        /// Name prefix of the lab's namespaces.
        #[arg(long, default_value = "lbdemo")]
        prefix: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `lb run` logs as its config says (RUST_LOG still wins), so the config is read first; a bad
    // one is reported below like any other error.
    let result = match cli.command {
        // Loaded (parsed and validated) once here; a problem comes back as the same report
        // `lb check` prints.
        Command::Run { config } => match config::load_with_text(&config) {
            Ok((cfg, text)) => {
                // What `lb check` refuses on this machine (cores not online, memory the config
                // cannot have) `lb run` refuses too, with the same report, before it allocates.
                let problems = cfg.check_host(&config::Host::current());
                if problems.is_empty() {
                    init_logging(&cfg.logging.level, cfg.logging.format);
                    run::run(&config, cfg, text)
                } else {
                    Err(diag::ConfigReport::from_problems(&config, &text, &problems).into())
                }
            }
            Err(report) => Err(report.into()),
        },
        command => {
            // The one-shot commands stay quiet unless asked.
            init_logging("warn", config::LogFormat::Text);
            run_command(command)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A config report carries its own `file:line:column` lines, snippets and count.
        Err(e) => match e.downcast_ref::<diag::ConfigReport>() {
            Some(report) => {
                eprint!("{}", report.render());
                ExitCode::FAILURE
            }
            None => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn init_logging(level: &str, format: config::LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        config::LogFormat::Text => fmt.init(),
        config::LogFormat::Json => fmt.json().init(),
    }
}

fn run_command(command: Command) -> anyhow::Result<()> {
    match command {
        // Handled in `main` (it sets up logging from the config).
        Command::Run { .. } => Ok(()),
        Command::Sim {
            config,
            input,
            output,
        } => run_sim(&config, &input, &output),
        Command::Check { config } => run_check(&config),
        Command::Lab { action } => run_lab(action),
        Command::LabBackend { name, http, udp } => {
            lab::backend::serve(&name, &http, &udp).map_err(Into::into)
        }
        Command::LabDecap { dev } => lab::decap::run(&dev).map_err(Into::into),
    }
}

/// Loads and compiles `path`; every problem (syntax, schema, rules) comes back as one
/// [`diag::ConfigReport`], which `main` renders with the source lines.
fn load_and_compile(path: &Path) -> anyhow::Result<(config::Config, compile::Compiled)> {
    let (cfg, compiled) = compile::check_file(path)?;
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

/// `lb check`: every problem, including a config this machine cannot run (cores, memory); then
/// the summary and the memory the config needs.
fn run_check(config: &Path) -> anyhow::Result<()> {
    let (cfg, _) = compile::check_file_on(config, &config::Host::current())?;
    let backends: usize = cfg
        .services
        .iter()
        .flat_map(|s| &s.pools)
        .map(|p| p.backends.len())
        .sum();
    println!("ok: {} services, {} backends", cfg.services.len(), backends);
    println!("memory: {}", cfg.memory_estimate());
    Ok(())
}

/// Ctrl-C and SIGTERM set this flag; the lab checks it between requests and tears down.
fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    Ok(stop)
}

fn run_lab(action: LabAction) -> anyhow::Result<()> {
    let lb_bin = std::env::current_exe()?;
    match action {
        LabAction::Demo { config, requests } => {
            load_and_compile(&config)?;
            let stop = stop_flag()?;
            let report = lab::demo(&lb_bin, &config, requests, &stop)?;
            println!("lab namespaces: {}", report.namespaces.join(" "));
            for (t, spread) in &report.spread {
                let total: usize = spread.values().sum();
                let kind = if t.udp {
                    "udp datagrams"
                } else {
                    "tcp connections"
                };
                let what = if t.request.is_some() {
                    "http route"
                } else {
                    "service"
                };
                println!(
                    "{what} {} ({} {}): {total} {kind}",
                    t.service,
                    t.addr,
                    if t.udp { "echo" } else { "http" }
                );
                for (backend, n) in spread {
                    println!(
                        "  {backend:<10} {n:>5}  {}",
                        "#".repeat((n * 50).div_ceil(total.max(1)))
                    );
                }
            }
            println!("balancer log (services served, final counters):");
            for line in report
                .lb_output
                .lines()
                .filter(|l| l.contains("serving") || l.contains("stopped") || !l.contains(" INFO "))
            {
                // Drop the timestamp: the log line's fields are what matters here.
                println!(
                    "  {}",
                    line.split_once(' ').map_or(line, |(_, rest)| rest.trim())
                );
            }
            println!("lab torn down");
            let failed: usize = report
                .spread
                .iter()
                .filter_map(|(_, s)| s.get("(failed)"))
                .sum();
            if failed > 0 {
                anyhow::bail!("{failed} request(s) failed");
            }
            Ok(())
        }
        LabAction::Up { config } => {
            load_and_compile(&config)?;
            let stop = stop_flag()?;
            let mut lab = lab::Lab::up(&lab::LabOptions {
                prefix: "lbdemo".into(),
                lb_bin,
                config,
            })?;
            lab.start_lb(std::time::Duration::from_secs(15))?;
            println!(
                "lab up; try: ip netns exec {} curl -s http://198.18.0.100/  (Ctrl-C tears it down)",
                lab.ns_name("cl")
            );
            while !stop.load(Ordering::Relaxed) && lab.lb_running() {
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            if let Some(exit) = lab.stop_lb() {
                print!("{}", exit.output);
            }
            println!("lab torn down");
            Ok(())
        }
        LabAction::Down { prefix } => {
            let swept = lab::sweep(&prefix)?;
            for name in swept.namespaces {
                println!("deleted namespace {name}");
            }
            for dir in swept.dirs {
                println!("deleted {}", dir.display());
            }
            Ok(())
        }
    }
}
