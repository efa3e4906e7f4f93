//! `iris-dev`: the project's own tools, never shipped: the reliability suites of RELIABILITY.md and
//! the pipeline benchmarks of BENCHMARKS.md. `cargo run -p iris-dev -- reliability chaos …`,
//! `cargo run -p iris-dev -- bench handoff …`. The suites run the service binaries as child
//! processes: build them first (`cargo build --workspace --bins`; the scripts do).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use iris_core::config::IrisConfig;
use iris_dev::{Suite, bench, reliability};

#[derive(Debug, Parser)]
#[command(name = "iris-dev", version, about = "IRIS Oculus developer tools: reliability suites and benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Benchmarks: print figures and optionally record them in BENCHMARKS.md.
    Bench {
        #[command(subcommand)]
        benchmark: Benchmark,
    },
    /// Accuracy evaluations: print figures and optionally record them in BENCHMARKS.md.
    Eval {
        #[command(subcommand)]
        evaluation: Evaluation,
    },
    /// Reliability suites (RELIABILITY.md): the services under SIGKILLs, duplicate delivery, bad
    /// input and load, on a private deployment; exit 1 if any promise broke.
    Reliability {
        #[command(subcommand)]
        suite: ReliabilitySuite,
        /// Where to run: the embedded backends in a temporary directory, or a private set of
        /// resources on moto server (--moto-url).
        #[arg(long, value_enum, default_value = "embedded", global = true)]
        on: SuiteTarget,
        /// The moto server for --on moto (scripts/moto.sh start prints it).
        #[arg(long, env = "IRIS_MOTO_URL", global = true)]
        moto_url: Option<String>,
        /// Write the report into this Markdown file's section for the suite and backend.
        #[arg(long, value_name = "FILE", global = true)]
        record: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ReliabilitySuite {
    /// SIGKILL a random service at random moments while studies run; outputs must equal an
    /// undisturbed run's.
    Chaos {
        #[arg(long, default_value_t = 20)]
        studies: usize,
        #[arg(long, default_value_t = 50)]
        kills: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Every queue message delivered twice, the copy late (out of order).
    Duplicates {
        #[arg(long, default_value_t = 8)]
        studies: usize,
        #[arg(long, default_value_t = 1500)]
        max_delay_ms: u64,
    },
    /// The malformed-upload corpus and malformed queue messages.
    BadInputs {
        /// Peak resident memory no service may exceed (far below the smallest production task's
        /// 512 MiB: every refusal must come before the allocation a lying header asks for).
        #[arg(long, default_value_t = 256)]
        memory_cap_mib: u64,
    },
    /// Many small studies uploaded at once.
    Load {
        #[arg(long, default_value_t = 200)]
        studies: usize,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
    },
}

#[derive(Debug, Subcommand)]
enum Evaluation {
    /// The classical model against TotalSegmentator's label maps: lungs and bone Dice per CT.
    Classical {
        /// A CT: NIfTI, a DICOM file or zip, or a directory of one DICOM series. Repeat for
        /// several cases, each followed by its --reference.
        #[arg(long, required = true)]
        ct: Vec<PathBuf>,
        /// TotalSegmentator's label map of the CT before it (same grid).
        #[arg(long, required = true)]
        reference: Vec<PathBuf>,
        /// TotalSegmentator's class table (`total_labels.json`).
        #[arg(long)]
        labels: PathBuf,
        /// Write the table into this Markdown file's classical-dice section.
        #[arg(long, value_name = "FILE")]
        record: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SuiteTarget {
    Embedded,
    Moto,
}

#[derive(Debug, Subcommand)]
enum Benchmark {
    /// Stage hand-off latency on the embedded backends (object written → next stage starts).
    Handoff {
        /// Studies to run (each gives three hand-offs).
        #[arg(long, default_value_t = 40)]
        jobs: usize,
        /// Write the figures into this Markdown file's handoff section.
        #[arg(long, value_name = "FILE")]
        record: Option<PathBuf>,
    },
    /// WebSocket notification latency on the embedded backends (state recorded → message received).
    NotifyLatency {
        /// Studies to run, one after another.
        #[arg(long, default_value_t = 100)]
        jobs: usize,
        /// Write the figures into this Markdown file's notify-latency section.
        #[arg(long, value_name = "FILE")]
        record: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match iris::process::config_from_env() {
        Ok(config) => config,
        Err(code) => return code,
    };
    iris::process::run_command(config.log_format, "warn", dispatch(cli.command, config))
}

async fn dispatch(command: Command, config: IrisConfig) -> anyhow::Result<ExitCode> {
    match command {
        Command::Bench { benchmark: Benchmark::Handoff { jobs, record } } => {
            bench::handoff(&config, jobs, record.as_deref()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { benchmark: Benchmark::NotifyLatency { jobs, record } } => {
            bench::notify_latency(&config, jobs, record.as_deref()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Eval { evaluation: Evaluation::Classical { ct, reference, labels, record } } => {
            iris_dev::evaluate_classical(&ct, &reference, &labels, record.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Reliability { suite, on, moto_url, record } => {
            let target = match (on, moto_url) {
                (SuiteTarget::Embedded, _) => reliability::Target::Embedded,
                (SuiteTarget::Moto, Some(endpoint_url)) => reliability::Target::Moto { endpoint_url },
                (SuiteTarget::Moto, None) => anyhow::bail!("--on moto needs --moto-url or IRIS_MOTO_URL"),
            };
            let suite = match suite {
                ReliabilitySuite::Chaos { studies, kills, seed } => {
                    Suite::Chaos(reliability::chaos::ChaosPlan { studies, kills, seed, ..Default::default() })
                }
                ReliabilitySuite::Duplicates { studies, max_delay_ms } => {
                    Suite::Duplicates(reliability::duplicates::DuplicatesPlan {
                        studies,
                        max_delay: Duration::from_millis(max_delay_ms),
                    })
                }
                ReliabilitySuite::BadInputs { memory_cap_mib } => {
                    Suite::BadInputs(reliability::bad_inputs::BadInputPlan { memory_cap_bytes: memory_cap_mib << 20 })
                }
                ReliabilitySuite::Load { studies, concurrency } => {
                    Suite::Load(reliability::load::LoadPlan { studies, concurrency, ..Default::default() })
                }
            };
            iris_dev::run_suite(suite, &target, record.as_deref()).await
        }
    }
}
