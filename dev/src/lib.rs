//! The developer tools behind `iris-dev`: the reliability suites ([`reliability`]: a private
//! deployment on the embedded backends or on moto, the service binaries as child processes that
//! can be SIGKILLed, the bad-input corpus, and the chaos, duplicate-delivery, bad-input and load
//! runs) and the pipeline benchmarks ([`bench`]: stage hand-off and notification latency). None of
//! this ships in a production binary.

pub mod bench;
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
