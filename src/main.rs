//! `iris`: the IRIS Oculus command. Parses arguments, loads configuration, starts logging and
//! hands over to `iris::commands`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use iris::commands::{self, ProcessOptions};
use iris_shared::config::IrisConfig;
use iris_shared::keys::UserId;

#[derive(Debug, Parser)]
#[command(name = "iris", version, about = "CT scans to labelled segmentations and 3D surface meshes", long_about = None)]
struct Cli {
    /// Data directory of the embedded backends (objects, SQLite). Overrides IRIS_DATA_DIR.
    #[arg(long, global = true, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Backends: embedded (directory + SQLite) or aws (S3, SQS, DynamoDB, EventBridge; endpoint
    /// from AWS_ENDPOINT_URL). Overrides IRIS_BACKEND.
    #[arg(long, global = true, value_enum)]
    backend: Option<BackendArgument>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole pipeline in this process on FILE (.nii/.nii.gz) and wait for the result.
    Process {
        file: PathBuf,
        #[command(flatten)]
        job: JobArguments,
    },
    /// Generate a synthetic CT phantom and run the whole pipeline on it.
    Demo {
        #[command(flatten)]
        job: JobArguments,
    },
    /// Run every service and the WebSocket gateway until stopped (Ctrl-C / SIGTERM).
    Run {
        /// Upload files dropped into this directory (moved to DIR/submitted/ once uploaded).
        #[arg(long, value_name = "DIR")]
        inbox: Option<PathBuf>,
        /// User that inbox files are uploaded as.
        #[arg(long, default_value = "local")]
        user: String,
    },
    /// Upload FILE for a running `iris run` to process; prints the job id.
    Submit {
        file: PathBuf,
        #[arg(long, default_value = "local")]
        user: String,
        /// Per-job option as object metadata, e.g. --option reduction-percent=75 (repeatable).
        #[arg(long = "option", value_name = "NAME=VALUE")]
        options: Vec<String>,
    },
    /// Show a job, or list the user's recent jobs.
    Status {
        job: Option<String>,
        #[arg(long, default_value = "local")]
        user: String,
        #[arg(long)]
        json: bool,
    },
    /// Follow a job over the WebSocket gateway of a running `iris run`, printing each state change.
    Watch {
        job: String,
        #[arg(long, default_value = "local")]
        user: String,
        /// Gateway URL (default: the one a running `iris run` wrote to the data directory).
        #[arg(long)]
        url: Option<String>,
    },
    /// WebSocket tokens, signed with the key pair in the data directory (created on first use).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// AWS resources for `--backend aws`.
    Aws {
        #[command(subcommand)]
        command: AwsCommand,
    },
    /// Benchmarks: print figures and optionally record them in BENCHMARKS.md.
    Bench {
        #[command(subcommand)]
        benchmark: Benchmark,
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
    /// Run ingest's logic on a local file (no queues).
    Ingest {
        input: PathBuf,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Run segment's logic on a local CT (no queues); labels are written on the input's grid.
    Segment {
        input: PathBuf,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// An ONNX model directory (card.json + model.onnx) or a task.json; default: the classical model.
        #[arg(long, value_name = "DIR|TASK_JSON")]
        model: Option<PathBuf>,
        /// Where ONNX models run (overrides IRIS_DEVICE).
        #[arg(long, value_name = "auto|cpu|gpu")]
        device: Option<iris_shared::config::DeviceChoice>,
        /// Run the task's fast models.
        #[arg(long)]
        fast: bool,
    },
    /// Run mesh's logic on a local label map (no queues).
    Mesh {
        input: PathBuf,
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// stats.json naming the labels (default: stats.json beside INPUT, if any).
        #[arg(long, value_name = "FILE")]
        stats: Option<PathBuf>,
        /// Share of triangles to remove, 0-99 (the job option reduction-percent; default 90).
        #[arg(long, value_name = "PERCENT")]
        reduction_percent: Option<String>,
        /// Job option as for `iris submit`, e.g. --option smoothing=0.3 --option stl=true (repeatable).
        #[arg(long = "option", value_name = "NAME=VALUE")]
        options: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum BackendArgument {
    Embedded,
    Aws,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Print a token for USER: connect with ws://HOST:PORT/?token=TOKEN (or Authorization: Bearer).
    Issue {
        #[arg(long)]
        user: String,
        /// Lifetime in hours.
        #[arg(long, default_value_t = 12)]
        ttl_hours: u64,
    },
    /// Print the public key that verifies the tokens (the CDK app's tokenPublicKey, the Lambda
    /// authorizer's IRIS_TOKEN_PUBLIC_KEY).
    PublicKey,
}

#[derive(Debug, Subcommand)]
enum AwsCommand {
    /// Create every AWS resource the pipeline needs (idempotent): bucket and notifications, queues
    /// with dead-letter queues, tables, event bus and rules. Names from the IRIS_* variables.
    Bootstrap,
    /// Print the resource contract (names, notification rules, queue settings, tables, event
    /// rules) as JSON; the CDK app reads the copy in cdk/pipeline-contract.json.
    Contract,
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

#[derive(Debug, clap::Args)]
struct JobArguments {
    /// Where to copy the job's outputs (default ./iris-out/<jobId>/).
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Print the final job record as JSON on stdout.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = "local")]
    user: String,
    /// Per-job option as object metadata (repeatable), e.g. --option fast=true.
    #[arg(long = "option", value_name = "NAME=VALUE")]
    options: Vec<String>,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut config = match IrisConfig::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    if let Some(directory) = cli.data_dir.clone() {
        config.data_dir = directory;
    }
    match cli.backend {
        Some(BackendArgument::Embedded) => config.backend = iris_shared::config::BackendKind::Embedded,
        Some(BackendArgument::Aws) => config.backend = iris_shared::config::BackendKind::Aws,
        None => {}
    }
    let default_level = if matches!(cli.command, Command::Run { .. }) { "info" } else { "warn" };
    iris_shared::telemetry::init_with_default_level(config.log_format, default_level);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(dispatch(cli.command, config)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn user(text: &str) -> anyhow::Result<UserId> {
    Ok(UserId::parse(text)?)
}

fn job_options(job: &JobArguments) -> anyhow::Result<ProcessOptions> {
    Ok(ProcessOptions {
        user: user(&job.user)?,
        out: job.out.clone(),
        json: job.json,
        metadata: iris::parse_options(&job.options).map_err(anyhow::Error::msg)?,
        timeout: Duration::from_secs(job.timeout_secs),
    })
}

async fn dispatch(command: Command, config: IrisConfig) -> anyhow::Result<ExitCode> {
    match command {
        Command::Process { file, job } => commands::process(&config, &file, &job_options(&job)?).await,
        Command::Demo { job } => commands::demo(&config, &job_options(&job)?).await,
        Command::Run { inbox, user: name } => commands::run(&config, inbox, user(&name)?).await,
        Command::Submit { file, user: name, options } => {
            let metadata = iris::parse_options(&options).map_err(anyhow::Error::msg)?;
            commands::submit(&config, &file, &user(&name)?, &metadata).await
        }
        Command::Status { job, user: name, json } => {
            commands::status(&config, job.as_deref(), &user(&name)?, json).await
        }
        Command::Watch { job, user: name, url } => commands::watch(&config, &job, &user(&name)?, url).await,
        Command::Token { command: TokenCommand::Issue { user: name, ttl_hours } } => {
            commands::issue_token(&config, &user(&name)?, Duration::from_secs(ttl_hours.saturating_mul(3600)))
        }
        Command::Token { command: TokenCommand::PublicKey } => commands::print_public_key(&config),
        Command::Aws { command: AwsCommand::Bootstrap } => commands::aws_bootstrap(&config).await,
        Command::Aws { command: AwsCommand::Contract } => {
            println!("{}", serde_json::to_string_pretty(&iris_aws::contract::pipeline_contract(&config))?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { benchmark: Benchmark::Handoff { jobs, record } } => {
            iris::bench::handoff(&config, jobs, record.as_deref()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench { benchmark: Benchmark::NotifyLatency { jobs, record } } => {
            iris::bench::notify_latency(&config, jobs, record.as_deref()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Reliability { suite, on, moto_url, record } => {
            let target = match (on, moto_url) {
                (SuiteTarget::Embedded, _) => iris::reliability::Target::Embedded,
                (SuiteTarget::Moto, Some(endpoint_url)) => iris::reliability::Target::Moto { endpoint_url },
                (SuiteTarget::Moto, None) => anyhow::bail!("--on moto needs --moto-url or IRIS_MOTO_URL"),
            };
            let suite = match suite {
                ReliabilitySuite::Chaos { studies, kills, seed } => {
                    commands::Suite::Chaos(iris::reliability::chaos::ChaosPlan {
                        studies,
                        kills,
                        seed,
                        ..Default::default()
                    })
                }
                ReliabilitySuite::Duplicates { studies, max_delay_ms } => {
                    commands::Suite::Duplicates(iris::reliability::duplicates::DuplicatesPlan {
                        studies,
                        max_delay: Duration::from_millis(max_delay_ms),
                    })
                }
                ReliabilitySuite::BadInputs { memory_cap_mib } => {
                    commands::Suite::BadInputs(iris::reliability::bad_inputs::BadInputPlan {
                        memory_cap_bytes: memory_cap_mib << 20,
                    })
                }
                ReliabilitySuite::Load { studies, concurrency } => {
                    commands::Suite::Load(iris::reliability::load::LoadPlan {
                        studies,
                        concurrency,
                        ..Default::default()
                    })
                }
            };
            commands::reliability(suite, &target, record.as_deref()).await
        }
        Command::Ingest { input, out } => commands::ingest_file(&config, &input, &out),
        Command::Segment { input, out, model, device, fast } => {
            let mut config = config;
            if let Some(device) = device {
                config.segment.device = device;
            }
            commands::segment_file(&config, &input, &out, model.as_deref(), fast)
        }
        Command::Mesh { input, out, stats, reduction_percent, options } => {
            let mut options = iris::parse_options(&options).map_err(anyhow::Error::msg)?;
            if let Some(percent) = reduction_percent {
                options.insert("reduction-percent".to_owned(), percent);
            }
            commands::mesh_file(&config, &input, stats.as_deref(), &options, &out)
        }
    }
}
