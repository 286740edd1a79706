//! `webhooks-host`: the command-line entry point.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use webhooks_host::config::{Cli, Command, LogFormat, LogLevel, ServeConfig};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            // --help and --version.
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            // One line naming the option and its variable, as operators' scripts expect.
            let rendered = error.render().to_string();
            let line = rendered.lines().next().unwrap_or("invalid arguments");
            eprintln!("webhooks-host: {}", line.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Serve(config) => serve(config),
    }
}

fn serve(config: ServeConfig) -> ExitCode {
    init_logging(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("webhooks-host: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(webhooks_host::server::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Exactly one line, naming the variable at fault.
            eprintln!("webhooks-host: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &ServeConfig) {
    let level = match config.log_level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    };
    // Our crate at the configured level; dependencies only when they warn.
    let filter = EnvFilter::new(format!("warn,webhooks_host={level}"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}
