//! Logging: readable text locally, JSON in containers; level from `RUST_LOG` (default `info`).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber at `info` unless `RUST_LOG` says otherwise. Calling it twice is
/// harmless (the second call does nothing).
pub fn init(format: LogFormat) {
    init_with_default_level(format, "info");
}

/// As [`init`], with another default level (one-shot commands log only warnings by default).
pub fn init_with_default_level(format: LogFormat, default_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.compact().try_init(),
    };
}
