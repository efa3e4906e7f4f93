//! The developer tools behind `iris-dev`: the reliability suites ([`reliability`]: a private
//! deployment on the embedded backends or on moto, the service binaries as child processes that
//! can be SIGKILLed, the bad-input corpus, and the chaos, duplicate-delivery, bad-input and load
//! runs) and the pipeline benchmarks ([`bench`]: stage hand-off and notification latency). None of
//! this ships in a production binary.

pub mod bench;
pub mod classical_eval;
pub mod reliability;

use std::path::Path;
use std::process::ExitCode;

/// A reliability suite and its plan.
pub enum Suite {
    Chaos(reliability::chaos::ChaosPlan),
    Duplicates(reliability::duplicates::DuplicatesPlan),
    BadInputs(reliability::bad_inputs::BadInputPlan),
    Load(reliability::load::LoadPlan),
}

/// `iris-dev reliability …`: runs the suite, prints its report (Markdown), records it in `record`'s
/// `<suite>-<backend>` section, and exits 1 when any promise broke.
pub async fn run_suite(
    suite: Suite,
    target: &crate::reliability::Target,
    record: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    use crate::reliability::{bad_inputs, binaries_beside_this_executable, chaos, duplicates, load};
    let binaries = binaries_beside_this_executable()?;
    let (name, markdown, problems) = match suite {
        Suite::Chaos(plan) => {
            let report = chaos::run_chaos(target, &binaries, &plan).await?;
            ("chaos", report.to_markdown(), report.problems)
        }
        Suite::Duplicates(plan) => {
            let report = duplicates::run_duplicates(target, &plan).await?;
            ("duplicates", report.to_markdown(), report.problems)
        }
        Suite::BadInputs(plan) => {
            let report = bad_inputs::run_bad_inputs(target, &binaries, &plan).await?;
            ("bad-inputs", report.to_markdown(), report.problems)
        }
        Suite::Load(plan) => {
            let report = load::run_load(target, &binaries, &plan).await?;
            ("load", report.to_markdown(), report.problems)
        }
    };
    println!("{markdown}");
    if let Some(path) = record {
        let command: Vec<String> = std::env::args().collect();
        let body = format!(
            "{markdown}\nMeasured {} on {} cores by `{}`.\n",
            iris_core::time::Timestamp::now().to_rfc3339(),
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            command.join(" ").replace(&binaries.display().to_string(), "…"),
        );
        bench::replace_section(path, &format!("{name}-{}", target.name()), &body)?;
        println!("recorded in {}", path.display());
    }
    for problem in &problems {
        eprintln!("problem: {problem}");
    }
    Ok(if problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// `iris-dev eval classical`: each CT against its reference, printed as a Markdown table and
/// recorded in `record`'s `classical-dice` section.
pub fn evaluate_classical(
    cts: &[std::path::PathBuf],
    references: &[std::path::PathBuf],
    labels: &Path,
    record: Option<&Path>,
) -> anyhow::Result<()> {
    if cts.len() != references.len() {
        anyhow::bail!("{} CTs but {} references: give each --ct its --reference", cts.len(), references.len());
    }
    let names = classical_eval::read_class_names(labels)?;
    let mut evaluations = Vec::new();
    for (ct_path, reference_path) in cts.iter().zip(references) {
        let case = ct_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let ct = classical_eval::read_ct(ct_path)?;
        let reference = classical_eval::read_ct(reference_path)?;
        evaluations.push(classical_eval::evaluate(&case, &ct, &reference, &names)?);
    }
    let markdown = classical_eval::to_markdown(&evaluations);
    println!("{markdown}");
    if let Some(path) = record {
        let command: Vec<String> = std::env::args().collect();
        let body = format!(
            "{markdown}\nMeasured {} by `{}`.\n",
            iris_core::time::Timestamp::now().to_rfc3339(),
            command.join(" ")
        );
        bench::replace_section(path, "classical-dice", &body)?;
        println!("recorded in {}", path.display());
    }
    Ok(())
}
