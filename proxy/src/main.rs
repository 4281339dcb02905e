//! `tern-proxy`: run the proxy, validate a config, or run the local demo.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tern_proxy::config::{self, Config, ConfigError};

/// mimalloc, not glibc's malloc: hyper takes a fresh 8 KiB read buffer on each side of every
/// request (it reserves while the last message still holds slices of the old one), and glibc
/// serves 8 KiB blocks from its shared bins, past its per-thread cache (≤ 1 KiB): ≈ 2.3k of the
/// ≈ 28.5k instructions of a request were malloc and free. mimalloc's per-thread pages serve
/// them from a free list. Built with `no_thp`: mimalloc otherwise asks for transparent huge
/// pages on its arenas, and a 2 MiB page per arena nearly doubled peak RSS (benches/results/
/// BASELINE.md, session 7).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "tern-proxy", version, about = "Tern's data-plane proxy")]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a config file (reloaded live on change and on SIGHUP).
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Worker threads (overrides the config; default: the CPUs this process may use).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Check a config file: print every problem with its place in the document.
    Validate { file: PathBuf },
    /// A local demo on loopback: two backends, a 90/10 canary split, the observed shares.
    Demo {
        #[arg(long, default_value = "10s", value_parser = humantime_duration)]
        duration: Duration,
    },
}

fn humantime_duration(s: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(s).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format, matches!(cli.command, Command::Demo { .. }));
    match cli.command {
        Command::Validate { file } => validate(&file),
        Command::Run { config, workers } => {
            // The control thread: admin, reload, signals. Workers get their own runtimes.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            block_on(rt, async {
                let opts = tern_proxy::app::RunOptions { config, workers };
                // ConfigError's message already names its cause: no chain to append.
                tern_proxy::app::run(opts)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))
            })
        }
        Command::Demo { duration } => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build();
            block_on(rt, tern_proxy::demo::run(duration))
        }
    }
}

/// Runs `main_future` on `rt`; any failure (the runtime itself included) is one line on
/// stderr and exit code 1.
fn block_on(
    rt: std::io::Result<tokio::runtime::Runtime>,
    main_future: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let result = match rt {
        Ok(rt) => rt.block_on(main_future),
        Err(e) => Err(anyhow::Error::new(e).context("cannot start the runtime")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn validate(file: &std::path::Path) -> ExitCode {
    let result = tern_proxy::app::read_config(file)
        .and_then(|text| Config::from_yaml(&text))
        .and_then(|c| config::validate(&c).map(|()| c));
    match result {
        Ok(c) => {
            for w in config::warnings(&c) {
                eprintln!("  warning: {w}");
            }
            let routes: usize = c.listeners.iter().map(|l| l.routes.len()).sum();
            println!(
                "{}: valid ({} listeners, {routes} routes, {} backends)",
                file.display(),
                c.listeners.len(),
                c.backends.len()
            );
            ExitCode::SUCCESS
        }
        Err(ConfigError::Invalid(problems)) => {
            eprintln!("{}: {} problem(s)", file.display(), problems.len());
            for p in problems {
                eprintln!("  {p}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
