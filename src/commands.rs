//! The `iris` subcommands. Each returns the process exit code: 0 success (a COMPLETED job),
//! 1 a FAILED job, 2 an error before or around the job (bad arguments, I/O, timeout).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use iris_core::backends::Backends;
use iris_core::config::IrisConfig;
use iris_core::ids::{JobId, UserId};
use iris_core::job::{JobRecord, JobStatus, Stage};
use iris_core::ports::ObjectMetadata;
use iris_core::{Artifact, ErrorCode};
use iris_onnxruntime::OrtRuntime;
use iris_segment::NetworkRuntime;
use iris_volume::nifti_codec::{NiftiGeometry, encode_nifti_gz};
use iris_volume::phantom::{PhantomSpec, synthetic_ct};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use crate::{download_job_outputs, start_pipeline, submit_bytes, submit_file, wait_for_job};

/// Where and how `process` and `demo` report.
#[derive(Debug, Clone)]
pub struct ProcessOptions {
    pub user: UserId,
    pub out: Option<PathBuf>,
    pub json: bool,
    pub metadata: ObjectMetadata,
    pub timeout: Duration,
}

pub const EXIT_COMPLETED: u8 = 0;
pub const EXIT_FAILED: u8 = 1;

/// `iris process FILE`: the whole pipeline, in this process, on one file.
pub async fn process(config: &IrisConfig, file: &Path, options: &ProcessOptions) -> anyhow::Result<ExitCode> {
    let body = tokio::fs::read(file).await.with_context(|| format!("cannot read {}", file.display()))?;
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "upload".into());
    process_bytes(config, &name, body, options).await
}

/// `iris demo`: a synthetic CT phantom through the whole pipeline.
pub async fn demo(config: &IrisConfig, options: &ProcessOptions) -> anyhow::Result<ExitCode> {
    let spec = PhantomSpec::demo();
    let phantom = synthetic_ct(&spec);
    let geometry = NiftiGeometry::from_affine(phantom.dims(), phantom.affine());
    let body = encode_nifti_gz(&phantom, &geometry)?;
    eprintln!(
        "iris demo: synthetic CT phantom {}x{}x{} at {} mm, {} orientation",
        spec.dims[0],
        spec.dims[1],
        spec.dims[2],
        spec.spacing_mm,
        phantom.affine().orientation_code()?
    );
    process_bytes(config, "phantom-ct.nii.gz", body, options).await
}

async fn process_bytes(
    config: &IrisConfig,
    name: &str,
    body: Vec<u8>,
    options: &ProcessOptions,
) -> anyhow::Result<ExitCode> {
    let backends = open_backends(config).await?;
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let pipeline = start_pipeline(&backends, config, listener)?;
    let started = Instant::now();
    let submission = submit_bytes(backends.objects.as_ref(), &options.user, name, body, &options.metadata).await?;
    eprintln!("submitted as job {}", submission.job_id);
    let mut shown = 0;
    let waited = wait_for_job(&backends, &submission.job_id, options.timeout, |job| {
        // Every job passes every status in order, so statuses passed between two polls are shown too.
        let reached = if job.status == JobStatus::Failed { shown } else { job.status.rank() };
        for status in JobStatus::ALL.iter().filter(|s| s.rank() > shown && s.rank() <= reached) {
            eprintln!("  {:>7.2}s  {status}", started.elapsed().as_secs_f64());
        }
        if job.status == JobStatus::Failed {
            eprintln!("  {:>7.2}s  FAILED", started.elapsed().as_secs_f64());
        }
        shown = shown.max(reached);
    })
    .await;
    pipeline.stop().await;
    let job = waited?;
    let out = options.out.clone().unwrap_or_else(|| PathBuf::from("iris-out").join(job.job_id.as_str()));
    let files = download_job_outputs(backends.objects.as_ref(), &job.job_id, &out).await?;
    report(&job, Some((&out, files.keys().cloned().collect())), options.json)?;
    Ok(exit_code_of(&job))
}

fn exit_code_of(job: &JobRecord) -> ExitCode {
    ExitCode::from(if job.status == JobStatus::Completed { EXIT_COMPLETED } else { EXIT_FAILED })
}

/// Prints the final job record: text for people, or JSON on stdout.
fn report(job: &JobRecord, outputs: Option<(&Path, Vec<String>)>, json: bool) -> anyhow::Result<()> {
    if json {
        let mut value = serde_json::to_value(job)?;
        if let (Some((directory, files)), Some(object)) = (&outputs, value.as_object_mut()) {
            object.insert("outputDir".into(), serde_json::json!(directory.display().to_string()));
            object.insert("outputFiles".into(), serde_json::json!(files));
        }
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("job {}  {}", job.job_id, job.status);
    println!("  user      {}", job.user_id);
    println!("  created   {}", job.created_at);
    if job.run > 1 {
        println!("  run       {} (the upload was made again after the job failed)", job.run);
        for past in &job.previous_runs {
            let error =
                past.error.as_ref().map_or_else(|| "unknown".to_owned(), |e| format!("{}: {}", e.code, e.message));
            println!("    run {} failed at {}: {error}", past.run, past.failed_at);
        }
    }
    let durations = job.stage_durations_ms();
    for stage in Stage::ALL {
        if let Some(record) = job.stages.get(&stage) {
            let took = durations.get(&stage).map(|ms| format!("{ms} ms")).unwrap_or_else(|| "unfinished".into());
            println!(
                "  {:<9} {took} ({} attempt{})",
                stage.as_str(),
                record.attempts,
                if record.attempts == 1 { "" } else { "s" }
            );
        }
    }
    if let Some(error) = &job.error {
        println!("  error     {} — {}", error.code, error.message);
    }
    if let Some((directory, files)) = outputs {
        println!("  outputs   {}", directory.display());
        for file in files {
            println!("            {file}");
        }
    }
    Ok(())
}

/// `iris run`: every service and the WebSocket gateway until SIGINT/SIGTERM; optional inbox.
pub async fn run(config: &IrisConfig, inbox: Option<PathBuf>, user: UserId) -> anyhow::Result<ExitCode> {
    let backends = open_backends(config).await?;
    let listener = TcpListener::bind(config.websocket_bind)
        .await
        .with_context(|| format!("cannot listen on {} (set IRIS_WS_BIND)", config.websocket_bind))?;
    let pipeline = start_pipeline(&backends, config, listener)?;
    let url = format!("ws://{}", pipeline.websocket_address);
    let gateway_file = config.gateway_file();
    tokio::fs::write(&gateway_file, serde_json::to_vec(&serde_json::json!({ "url": url, "pid": std::process::id() }))?)
        .await
        .with_context(|| format!("cannot write {}", gateway_file.display()))?;
    let shutdown = pipeline.shutdown_token();
    iris_core::runtime::cancel_on_shutdown_signals(shutdown.clone());
    eprintln!("iris run: data in {}, WebSocket gateway at {url}", config.data_dir.display());
    let inbox_task = inbox.map(|directory| {
        eprintln!("iris run: watching inbox {}", directory.display());
        let (objects, shutdown) = (backends.objects.clone(), shutdown.clone());
        tokio::spawn(async move { crate::inbox::watch_inbox(objects, directory, user, shutdown).await })
    });
    pipeline.run_until_shutdown().await;
    if let Some(task) = inbox_task {
        let _ = task.await;
    }
    let _ = tokio::fs::remove_file(&gateway_file).await;
    eprintln!("iris run: stopped");
    Ok(ExitCode::SUCCESS)
}

/// `iris submit FILE`: upload into the data directory a running `iris run` serves.
pub async fn submit(
    config: &IrisConfig,
    file: &Path,
    user: &UserId,
    metadata: &ObjectMetadata,
) -> anyhow::Result<ExitCode> {
    let backends = open_backends(config).await?;
    let submission = submit_file(backends.objects.as_ref(), user, file, metadata).await?;
    println!("{}", submission.job_id);
    eprintln!("submitted as job {}", submission.job_id);
    Ok(ExitCode::SUCCESS)
}

/// `iris status [JOB]`: one job's record, or the user's recent jobs.
pub async fn status(config: &IrisConfig, job: Option<&str>, user: &UserId, json: bool) -> anyhow::Result<ExitCode> {
    let backends = open_backends(config).await?;
    match job {
        Some(job) => {
            let job_id = JobId::parse(job)?;
            let Some(record) = backends.jobs.get(&job_id).await? else { bail!("no job {job_id}") };
            report(&record, None, json)?;
            Ok(exit_code_of(&record))
        }
        None => {
            let jobs = backends.jobs.list_by_user(user, 50).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else if jobs.is_empty() {
                println!("no jobs for user {user}");
            } else {
                for job in jobs {
                    println!("{}  {:<10}  {}  run {}", job.job_id, job.status.as_str(), job.created_at, job.run);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `iris watch JOB`: a WebSocket client printing each state change until the job ends.
pub async fn watch(config: &IrisConfig, job: &str, user: &UserId, url: Option<String>) -> anyhow::Result<ExitCode> {
    let url = match url {
        Some(url) => url,
        None => {
            let path = config.gateway_file();
            let text = tokio::fs::read_to_string(&path).await.with_context(|| {
                format!("no running gateway found ({} missing; is `iris run` running?)", path.display())
            })?;
            let value: serde_json::Value = serde_json::from_str(&text)?;
            value["url"].as_str().context("gateway.json has no url")?.to_owned()
        }
    };
    let token = iris_notify::auth::TokenSigner::load_or_create(&config.data_dir)?.issue(
        user,
        iris_notify::auth::DEFAULT_TOKEN_LIFETIME,
        iris_core::time::Timestamp::now(),
    )?;
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("{url}/?token={token}"))
        .await
        .with_context(|| format!("cannot connect to {url}"))?;
    socket.send(Message::text(serde_json::json!({"action": "subscribe", "jobId": job}).to_string())).await?;
    while let Some(frame) = socket.next().await {
        let Message::Text(text) = frame? else { continue };
        println!("{text}");
        let value: serde_json::Value = serde_json::from_str(text.as_str()).unwrap_or_default();
        match value["type"].as_str() {
            Some("error") => return Ok(ExitCode::from(2)),
            Some("jobState") => match value["event"]["status"].as_str() {
                Some("COMPLETED") => return Ok(ExitCode::from(EXIT_COMPLETED)),
                Some("FAILED") => return Ok(ExitCode::from(EXIT_FAILED)),
                _ => {}
            },
            _ => {}
        }
    }
    bail!("the gateway closed the connection before the job ended")
}

/// `iris token issue --user NAME`: a token for the WebSocket gateway, on stdout.
pub fn issue_token(config: &IrisConfig, user: &UserId, lifetime: Duration) -> anyhow::Result<ExitCode> {
    let signer = iris_notify::auth::TokenSigner::load_or_create(&config.data_dir)?;
    println!("{}", signer.issue(user, lifetime, iris_core::time::Timestamp::now())?);
    Ok(ExitCode::SUCCESS)
}

/// `iris token public-key`: the key that verifies `iris token issue`'s tokens, on stdout.
pub fn print_public_key(config: &IrisConfig) -> anyhow::Result<ExitCode> {
    let signer = iris_notify::auth::TokenSigner::load_or_create(&config.data_dir)?;
    println!("{}", signer.verifier().public_key_text());
    Ok(ExitCode::SUCCESS)
}

/// `iris ingest INPUT --out DIR`: ingest's logic on a local file.
pub fn ingest_file(config: &IrisConfig, input: &Path, out: &Path) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let limits = iris_ingest::IngestLimits { max_upload_bytes: config.max_upload_bytes, max_voxels: config.max_voxels };
    let name = input.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    // The volume is written as it is made (an axial DICOM series plane by plane, never held
    // whole), under a temporary name that becomes `volume.nii.gz` only once it is complete.
    let volume_path = out.join(Artifact::Volume.file());
    let partial_path = out.join(format!(".{}.partial", Artifact::Volume.file()));
    // Unbuffered: the volume arrives in whole gzip members of up to about 1 MiB, one write each.
    let mut sink =
        std::fs::File::create(&partial_path).with_context(|| format!("cannot write {}", partial_path.display()))?;
    let upload = iris_ingest::Upload::File(input.to_path_buf());
    let written = iris_ingest::ingest_upload_to(upload, &name, &limits, &mut sink)
        .map(|written| (written, std::io::Write::flush(&mut sink)));
    drop(sink);
    let (report, assembly) = match written {
        Ok((written, Ok(()))) => written,
        Ok((_, Err(error))) => {
            let _ = std::fs::remove_file(&partial_path);
            return Err(error).with_context(|| format!("cannot write {}", partial_path.display()));
        }
        Err(error) => {
            let _ = std::fs::remove_file(&partial_path);
            return stage_failure(error.code(), &error.to_string());
        }
    };
    std::fs::rename(&partial_path, &volume_path).with_context(|| format!("cannot write {}", volume_path.display()))?;
    write_outputs(out, &[(Artifact::IngestReport.file(), &iris_ingest::report_json(&report)?)])?;
    eprintln!(
        "ingested {} ({} → RAS, {}) in {:.3} s → {}",
        input.display(),
        report.original.orientation,
        assembly.description(),
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `iris segment INPUT --out DIR`: canonicalise and segment a local CT, labels on its own grid.
pub fn segment_file(
    config: &IrisConfig,
    input: &Path,
    out: &Path,
    model: Option<&Path>,
    fast: bool,
) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let runtime = OrtRuntime::new(&config.segment);
    let segmenter = match model {
        None => iris_segment::Segmenter::Classical { reason: None },
        Some(model) => {
            let options = iris_segment::SegmentOptions { fast, ..Default::default() };
            let plan = match iris_segment::load_local_plan(model, &options) {
                Ok(plan) => plan,
                Err(error) => return stage_failure(error.code(), &error.to_string()),
            };
            if let Err(error) = runtime.check() {
                return stage_failure(error.code(), &error.to_string());
            }
            iris_segment::Segmenter::Onnx(plan)
        }
    };
    let ingested = match ingest_local_file(config, input)? {
        Ok(ingested) => ingested,
        Err(code) => return Ok(code),
    };
    let canonical = iris_ingest::encode_outputs(&ingested)?;
    let outputs = match iris_segment::segment_canonical(
        &canonical.volume_nii_gz,
        &ingested.report,
        config.max_voxels,
        &segmenter,
        &runtime,
        &|_, _, _| {},
    ) {
        Ok(outputs) => outputs,
        Err(error) => return stage_failure(error.code(), &error.to_string()),
    };
    write_outputs(
        out,
        &[(Artifact::Labels.file(), &outputs.labels_nii_gz), (Artifact::Stats.file(), &outputs.stats_json)],
    )?;
    eprintln!("segmented {} in {:.3} s → {}", input.display(), started.elapsed().as_secs_f64(), out.display());
    for label in &outputs.stats.labels {
        eprintln!("  {:>3} {:<8} {:>10} voxels {:>10.1} ml", label.id, label.name, label.voxels, label.volume_ml);
    }
    Ok(ExitCode::SUCCESS)
}

/// `iris mesh INPUT --out DIR [--option NAME=VALUE]…`: surfaces of a local label map (names from
/// `--stats` or a `stats.json` beside INPUT when present); options as for a job
/// (`reduction-percent`, `smoothing`, `glb-geometry`, `stl`).
pub fn mesh_file(
    config: &IrisConfig,
    input: &Path,
    stats: Option<&Path>,
    options: &BTreeMap<String, String>,
    out: &Path,
) -> anyhow::Result<ExitCode> {
    let bytes = std::fs::read(input).with_context(|| format!("cannot read {}", input.display()))?;
    let beside = input.parent().map(|p| p.join(Artifact::Stats.file())).filter(|p| p.is_file());
    let table = match stats.map(Path::to_owned).or(beside) {
        Some(path) => {
            let json = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
            iris_mesh::label_table_from_stats(&json)?
        }
        None => iris_core::labels::LabelTable { model: "unknown".into(), diagnostic: false, labels: Vec::new() },
    };
    let settings = match iris_mesh::MeshSettings::from_job_options(options) {
        Ok(settings) => settings,
        Err(error) => return stage_failure(error.code(), &error.to_string()),
    };
    let started = Instant::now();
    let artifacts = match iris_mesh::mesh_label_map(&bytes, &table, &settings, config.max_voxels) {
        Ok(artifacts) => artifacts,
        Err(error) => return stage_failure(error.code(), &error.to_string()),
    };
    let manifest = artifacts.manifest_json()?;
    let mut files: Vec<(&str, &Vec<u8>)> = artifacts.files.iter().map(|(name, bytes)| (name.as_str(), bytes)).collect();
    files.push((iris_mesh::MANIFEST_FILE, &manifest));
    write_outputs(out, &files)?;
    let triangles: usize = artifacts.manifest.labels.iter().map(|l| l.triangles).sum();
    let extracted: usize = artifacts.manifest.labels.iter().map(|l| l.extracted_triangles).sum();
    eprintln!(
        "meshed {} labels ({extracted} triangles extracted, {triangles} kept) in {:.3} s → {}",
        artifacts.manifest.labels.len(),
        started.elapsed().as_secs_f64(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Ingest's logic on a local file: the ingested volume, or the exit code of a reported failure.
fn ingest_local_file(
    config: &IrisConfig,
    input: &Path,
) -> anyhow::Result<Result<iris_ingest::convert::IngestedVolume, ExitCode>> {
    let bytes = std::fs::read(input).with_context(|| format!("cannot read {}", input.display()))?;
    let limits = iris_ingest::IngestLimits { max_upload_bytes: config.max_upload_bytes, max_voxels: config.max_voxels };
    let name = input.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match iris_ingest::ingest_upload(bytes, &name, &limits) {
        Ok(ingested) => Ok(Ok(ingested)),
        Err(error) => Ok(Err(stage_failure(error.code(), &error.to_string())?)),
    }
}

fn stage_failure(code: ErrorCode, message: &str) -> anyhow::Result<ExitCode> {
    eprintln!("error [{code}]: {message}");
    Ok(ExitCode::from(EXIT_FAILED))
}

fn write_outputs(directory: &Path, files: &[(&str, &Vec<u8>)]) -> anyhow::Result<()> {
    std::fs::create_dir_all(directory).with_context(|| format!("cannot create {}", directory.display()))?;
    for (name, bytes) in files {
        let path = directory.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// The backends the configuration names (`--backend` / `IRIS_BACKEND`).
pub async fn open_backends(config: &IrisConfig) -> anyhow::Result<Backends> {
    iris_backends::open(config).await.with_context(|| match config.backend {
        iris_core::config::BackendKind::Embedded => {
            format!("opening the data directory {}", config.data_dir.display())
        }
        iris_core::config::BackendKind::Aws => {
            "opening the AWS resources (do they exist? see `iris aws bootstrap`; endpoint from AWS_ENDPOINT_URL)"
                .to_owned()
        }
    })
}

/// `iris aws bootstrap`: create every AWS resource of the configuration; prints them as JSON.
pub async fn aws_bootstrap(config: &IrisConfig) -> anyhow::Result<ExitCode> {
    let clients = iris_aws::AwsClients::from_environment().await;
    let resources = iris_aws::bootstrap::bootstrap(config, &clients).await.context("creating the AWS resources")?;
    println!("{}", serde_json::to_string_pretty(&resources)?);
    Ok(ExitCode::SUCCESS)
}
