//! What every binary does before its own work: read the configuration from the environment, start
//! logging, and, for a service, open the backends it names and a shutdown token that SIGINT or
//! SIGTERM cancels (in-flight work then finishes).

use std::future::Future;
use std::process::ExitCode;

use iris_core::backends::Backends;
use iris_core::config::{IrisConfig, LogFormat};
use iris_core::runtime::cancel_on_shutdown_signals;
use tokio_util::sync::CancellationToken;

/// The exit code of a command that could not run: a bad configuration, or an error.
pub const EXIT_ERROR: u8 = 2;

/// The configuration from the environment; when it is invalid, says why and gives the exit code.
pub fn config_from_env() -> Result<IrisConfig, ExitCode> {
    IrisConfig::from_env().map_err(|error| {
        eprintln!("error: {error}");
        ExitCode::from(EXIT_ERROR)
    })
}

/// Runs a command to its exit code on a new async runtime, logging at `default_level` unless
/// `RUST_LOG` says otherwise; an error is printed and exits [`EXIT_ERROR`].
pub fn run_command(
    log_format: LogFormat,
    default_level: &str,
    command: impl Future<Output = anyhow::Result<ExitCode>>,
) -> ExitCode {
    iris_core::telemetry::init_with_default_level(log_format, default_level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    match runtime.block_on(command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// A service binary's start: configuration, logging, backends, shutdown signal.
pub struct ServiceProcess {
    pub config: IrisConfig,
    pub backends: Backends,
    pub shutdown: CancellationToken,
}

impl ServiceProcess {
    /// Reads the configuration, starts logging, opens the backends `IRIS_BACKEND` names and
    /// listens for SIGINT and SIGTERM. Call it on the service's async runtime.
    pub async fn start() -> anyhow::Result<ServiceProcess> {
        let config = IrisConfig::from_env()?;
        iris_core::telemetry::init(config.log_format);
        let backends = iris_backends::open(&config).await?;
        let shutdown = CancellationToken::new();
        cancel_on_shutdown_signals(shutdown.clone());
        Ok(ServiceProcess { config, backends, shutdown })
    }
}
