//! `iris`: the IRIS Oculus command. Parses arguments, loads configuration, starts logging and
//! hands over to `iris::commands`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use iris::commands::{self, ProcessOptions};
use iris_core::config::IrisConfig;
use iris_core::ids::UserId;
use iris_segment::sliding_window::Resampling;

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
    /// Segmentation models: import nnU-Net or TotalSegmentator models, put them in the object store,
    /// list them, remove them.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// AWS resources for `--backend aws`.
    Aws {
        #[command(subcommand)]
        command: AwsCommand,
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
        device: Option<iris_core::config::DeviceChoice>,
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
        /// Lifetime in hours (at most 24: longer tokens are refused when issued and when presented).
        #[arg(long, default_value_t = 12)]
        ttl_hours: u64,
    },
    /// Print the public key that verifies the tokens (the CDK app's tokenPublicKey, the Lambda
    /// authorizer's IRIS_TOKEN_PUBLIC_KEY).
    PublicKey,
}

#[derive(Debug, Subcommand)]
enum ModelCommand {
    /// Import a model as ONNX + card.json (needs nnU-Net's venv: scripts/nnunet-env.sh install).
    Import {
        #[command(subcommand)]
        source: ImportSource,
    },
    /// Put model folders (card.json + model.onnx), task folders (task.json) or folders of them
    /// into the object store as models/<name>/, each checked against its card first.
    Push {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The name in the store (one model only; default: the folder's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// List the models and tasks in the object store.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a model or task from the object store.
    Rm { name: String },
}

#[derive(Debug, Subcommand)]
enum ImportSource {
    /// An nnU-Net v2 trained-model folder (dataset.json, plans.json, fold_*/checkpoint_final.pth).
    Nnunet {
        folder: PathBuf,
        /// Where the model folder is written.
        #[arg(long, value_name = "DIR", default_value = "models")]
        out: PathBuf,
        /// Its name (default: from the dataset, e.g. dataset901-liver).
        #[arg(long)]
        name: Option<String>,
        /// Folds to export, averaged as nnU-Net does (default: every fold with a checkpoint).
        #[arg(long, value_delimiter = ',')]
        folds: Option<Vec<String>>,
        #[arg(long, default_value = "checkpoint_final.pth")]
        checkpoint: String,
        /// nnU-Net's tile_step_size.
        #[arg(long, default_value_t = 0.5)]
        tile_step: f64,
        /// Tiles per network run.
        #[arg(long, default_value_t = 1)]
        batch_size: usize,
        /// The resampling around the network: half_pixel (iris's own) or totalsegmentator (the CT
        /// zoomed in HU as TotalSegmentator's change_spacing does, for models run behind it).
        #[arg(long, default_value = "half_pixel", value_parser = parse_resampling)]
        resampling: Resampling,
        /// Also push it into the object store.
        #[arg(long)]
        push: bool,
    },
    /// TotalSegmentator's weights folder (TOTALSEG_WEIGHTS_PATH, ~/.totalsegmentator/nnunet/results):
    /// its `total` task (five 1.5 mm parts, the 3 mm fast model) and the task merging them.
    Totalsegmentator {
        weights: PathBuf,
        #[arg(long, value_name = "DIR", default_value = "models")]
        out: PathBuf,
        /// Also push the models and the task into the object store.
        #[arg(long)]
        push: bool,
    },
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
    let mut config = match iris::process::config_from_env() {
        Ok(config) => config,
        Err(code) => return code,
    };
    if let Some(directory) = cli.data_dir.clone() {
        config.data_dir = directory;
    }
    match cli.backend {
        Some(BackendArgument::Embedded) => config.backend = iris_core::config::BackendKind::Embedded,
        Some(BackendArgument::Aws) => config.backend = iris_core::config::BackendKind::Aws,
        None => {}
    }
    let default_level = if matches!(cli.command, Command::Run { .. }) { "info" } else { "warn" };
    iris::process::run_command(config.log_format, default_level, dispatch(cli.command, config))
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
        Command::Model { command } => model_command(&config, command).await,
        Command::Token { command: TokenCommand::Issue { user: name, ttl_hours } } => {
            commands::issue_token(&config, &user(&name)?, Duration::from_secs(ttl_hours.saturating_mul(3600)))
        }
        Command::Token { command: TokenCommand::PublicKey } => commands::print_public_key(&config),
        Command::Aws { command: AwsCommand::Bootstrap } => commands::aws_bootstrap(&config).await,
        Command::Aws { command: AwsCommand::Contract } => {
            println!("{}", serde_json::to_string_pretty(&iris_aws::contract::pipeline_contract(&config))?);
            Ok(ExitCode::SUCCESS)
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

fn parse_resampling(text: &str) -> Result<Resampling, String> {
    Resampling::parse(text).ok_or_else(|| {
        format!("'{text}': {} or {}", Resampling::HalfPixel.as_str(), Resampling::TotalSegmentator.as_str())
    })
}

async fn model_command(config: &IrisConfig, command: ModelCommand) -> anyhow::Result<ExitCode> {
    match command {
        ModelCommand::Import {
            source:
                ImportSource::Nnunet { folder, out, name, folds, checkpoint, tile_step, batch_size, resampling, push },
        } => {
            let options = iris_nnunet::ImportOptions { name, folds, checkpoint, tile_step, batch_size, resampling };
            iris::models::import_nnunet(config, &folder, &out, &options, push).await
        }
        ModelCommand::Import { source: ImportSource::Totalsegmentator { weights, out, push } } => {
            iris::models::import_totalsegmentator(config, &weights, &out, push).await
        }
        ModelCommand::Push { paths, name } => iris::models::push(config, &paths, name.as_deref()).await,
        ModelCommand::List { json } => iris::models::list(config, json).await,
        ModelCommand::Rm { name } => iris::models::remove(config, &name).await,
    }
}
