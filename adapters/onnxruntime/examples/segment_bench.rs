//! Runs one model or task on a canonical CT with the Rust sliding window and prints its timings as
//! JSON: the Rust side of `scripts/bench-segment.sh` and of the GPU check. The same arguments as
//! `bench/segment/reference.py`, so both run the same thing.
//!
//! cargo run --release -p iris-onnxruntime --example segment_bench -- \
//!     --volume volume.nii.gz --model DIR|TASK_JSON --out labels.nii.gz [--threads 2] [--device cpu]

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use iris_core::config::{DeviceChoice, SegmentSettings};
use iris_onnxruntime::OrtRuntime;
use iris_segment::{NetworkRuntime, SegmentOptions, load_local_plan, segment_with_plan};
use iris_volume::nifti_codec::{DecodeLimits, decode_nifti_hounsfield, encode_nifti_gz};

#[derive(Parser)]
struct Arguments {
    /// Canonical int16 CT (`volume.nii.gz` as ingest writes it).
    #[arg(long)]
    volume: PathBuf,
    /// A model directory (card.json + model.onnx) or a task.json.
    #[arg(long)]
    model: PathBuf,
    /// Label map on the canonical grid.
    #[arg(long)]
    out: PathBuf,
    /// ONNX Runtime intra-op threads (0: its default).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    #[arg(long)]
    fast: bool,
    #[arg(long)]
    timings: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).with_env_filter("info,ort=warn").init();
    let arguments = Arguments::parse();
    let started = Instant::now();
    let settings = SegmentSettings {
        default_model: String::new(),
        device: arguments.device,
        model_cache_dir: std::env::temp_dir(),
        onnx_runtime_library: std::env::var_os("ORT_DYLIB_PATH").map(PathBuf::from),
        onnx_threads: arguments.threads,
    };
    let runtime = OrtRuntime::new(&settings);
    runtime.check()?;
    let options = SegmentOptions { fast: arguments.fast, ..SegmentOptions::default() };
    let plan = load_local_plan(&arguments.model, &options)?;
    let bytes = std::fs::read(&arguments.volume).with_context(|| format!("reading {}", arguments.volume.display()))?;
    let (decoded, _) = decode_nifti_hounsfield(&bytes, &DecodeLimits { max_voxels: u64::MAX })?;
    let (geometry, ct) = (decoded.geometry, decoded.volume);
    let read_s = started.elapsed().as_secs_f64();
    let (labels, reports) = segment_with_plan(&ct, &plan, &runtime, &|_, _, _| {})?;
    let labels = ct.with_voxels(labels)?;
    let encode_started = Instant::now();
    std::fs::write(&arguments.out, encode_nifti_gz(&labels, &geometry)?)?;
    let write_s = encode_started.elapsed().as_secs_f64();
    let provider = runtime.network(&plan.models[0].0)?.execution_provider();
    let timings = serde_json::json!({
        "implementation": "rust",
        "execution_provider": provider,
        "read_s": read_s,
        "preprocess_s": reports.iter().map(|(_, r)| r.preprocess.as_secs_f64()).sum::<f64>(),
        "inference_s": reports.iter().map(|(_, r)| r.inference.as_secs_f64()).sum::<f64>(),
        "accumulation_s": reports.iter().map(|(_, r)| r.accumulation.as_secs_f64()).sum::<f64>(),
        "window_s": reports.iter().map(|(_, r)| r.total.as_secs_f64()).sum::<f64>(),
        "write_s": write_s,
        "total_s": started.elapsed().as_secs_f64(),
        "tiles": reports.iter().map(|(_, r)| r.tiles).sum::<usize>(),
        "runs": reports.iter().map(|(_, r)| r.network_runs).sum::<usize>(),
        "model_grids_zyx": reports.iter().map(|(_, r)| r.model_grid).collect::<Vec<_>>(),
        "canonical_dims_xyz": labels.dims(),
    });
    println!("{timings}");
    if let Some(path) = &arguments.timings {
        std::fs::write(path, format!("{timings:#}\n"))?;
    }
    Ok(())
}
