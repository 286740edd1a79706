//! `webhooks-host`: the command-line entry point.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use webhooks_host::config::{CheckPluginArgs, Cli, Command, LogFormat, LogLevel, ServeConfig};
use webhooks_host::telemetry::{self, Exporter};

/// Every call allocates and frees its store, instance state, lowered lists and requests: with
/// glibc's allocator that was a seventh of the host's CPU during a drain.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Clients that pick rustls' process-wide provider (the trace exporter's) find ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if !error.use_stderr() => {
            // --help and --version.
            let _ = error.print();
            return ExitCode::SUCCESS;
        }
        Err(error) if error.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // No command at all: the usage, on standard error, as a mistake.
            let _ = error.print();
            return ExitCode::from(2);
        }
        Err(error) => {
            eprintln!("webhooks-host: {}", one_line(&error.render().to_string()));
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Command::Serve(config) => serve(*config),
        Command::CheckPlugin(args) => check_plugin(&args),
        Command::Import(config) => import(*config),
    }
}

/// Makes mimalloc commit arena memory as it is used and give freed pages back at once: with
/// its defaults (arenas committed up front, purges after 1 s, arena purges after 10 s) a
/// 60,000-delivery drain peaked 17 MiB higher. Set from the loader, before mimalloc's own
/// constructor (priority 101) reserves its first arena: from `main` it would be too late.
#[cfg(target_os = "linux")]
#[used]
#[unsafe(link_section = ".init_array.00100")]
static RETURN_FREED_MEMORY: extern "C" fn() = return_freed_memory;

#[cfg(target_os = "linux")]
extern "C" fn return_freed_memory() {
    // The numbers of `mi_option_e` in the mimalloc 3 that libmimalloc-sys 0.1.49 builds (the
    // version is pinned); its Rust constants still follow mimalloc 2.
    const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: stores two integers in mimalloc's option table; nothing else runs yet.
    unsafe {
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}

/// One line naming the option and its variable, as operators' scripts expect, with the valid
/// values when clap lists them.
fn one_line(rendered: &str) -> String {
    let mut lines = rendered.lines().map(str::trim);
    let mut line = lines
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_owned();
    if let Some(values) = lines.find(|l| l.starts_with("[possible values:")) {
        line.push(' ');
        line.push_str(values);
    }
    line
}

/// Reports on a component; exit 0 when it implements the world, 1 when not.
fn check_plugin(args: &CheckPluginArgs) -> ExitCode {
    use webhooks_host::runtime::{Limits, inspect};
    let file = args.file.display();
    let inspection = match inspect(&args.file, &Limits::default()) {
        Ok(inspection) => inspection,
        Err(error) => {
            eprintln!("webhooks-host: {file}: {error}");
            return ExitCode::FAILURE;
        }
    };
    match &inspection.verdict {
        Ok(()) => println!(
            "ok: {file} implements the webhooks world ({})",
            inspection.world.as_deref().unwrap_or(webhooks_host::runtime::WORLD)
        ),
        Err(error) => println!("refused: {file}: {error}"),
    }
    println!("sha256: {}", inspection.sha256);
    println!("size: {} bytes", inspection.size);
    println!("compile: {:.0} ms", inspection.compile_time.as_secs_f64() * 1000.0);
    println!("imports:");
    for name in &inspection.imports {
        println!("  {name}");
    }
    println!("exports:");
    for name in &inspection.exports {
        println!("  {name}");
    }
    if inspection.verdict.is_ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn serve(config: ServeConfig) -> ExitCode {
    match run(config, webhooks_host::server::serve) {
        Ok(()) => ExitCode::SUCCESS,
        Err(line) => {
            // Exactly one line, naming the variable at fault.
            eprintln!("webhooks-host: {line}");
            ExitCode::FAILURE
        }
    }
}

/// Imports the Go service's table and prints the counts; exit 1 with one line on failure.
fn import(config: ServeConfig) -> ExitCode {
    match run(config, webhooks_host::server::import) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(line) => {
            eprintln!("webhooks-host: {line}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command on the async runtime with the log and the trace exporter set up; the
/// exporter is flushed once the runtime is gone, since its client blocks. Answers the
/// command's result, or its failure as one line.
fn run<T, F>(config: ServeConfig, command: impl FnOnce(ServeConfig) -> F) -> Result<T, String>
where
    F: std::future::Future<Output = Result<T, webhooks_host::server::StartupError>>,
{
    let exporter = init_logging(&config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let result = runtime.block_on(command(config));
    drop(runtime);
    if let Some(exporter) = exporter {
        exporter.shutdown();
    }
    result.map_err(|e| e.to_string())
}

/// The log on standard error, and the trace exporter when an endpoint is configured (a value
/// that is not an OTLP/HTTP endpoint is logged once and ignored).
fn init_logging(config: &ServeConfig) -> Option<Exporter> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let level = match config.log_level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    };
    // Our crate at the configured level; dependencies only when they warn.
    let filter = EnvFilter::new(format!("warn,webhooks_host={level}"));
    let log = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let log = match config.log_format {
        LogFormat::Json => log.json().flatten_event(true).with_filter(filter).boxed(),
        LogFormat::Text => log.with_ansi(false).with_filter(filter).boxed(),
    };
    let otlp = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok();
    let (endpoint, refused) = match telemetry::endpoint(config.jaeger_url.as_deref(), otlp.as_deref()) {
        Ok(endpoint) => (endpoint, None),
        Err(reason) => (None, Some(reason)),
    };
    let (exporter, traces) = match endpoint.as_deref().map(|endpoint| Exporter::start(endpoint)) {
        Some(Ok((exporter, layer))) => (
            Some(exporter),
            Some(layer.with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                meta.target() == telemetry::SPANS
            }))),
        ),
        Some(Err(reason)) => {
            eprintln!("webhooks-host: {reason}");
            (None, None)
        }
        None => (None, None),
    };
    tracing_subscriber::registry().with(log).with(traces).init();
    if let Some(reason) = refused {
        tracing::warn!("{reason}");
    }
    if let Some(endpoint) = endpoint.filter(|_| exporter.is_some()) {
        tracing::info!(%endpoint, "exporting traces over OTLP");
    }
    exporter
}
