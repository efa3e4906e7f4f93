//! Short versions of the reliability suites of RELIABILITY.md, on both backends: SIGKILLs
//! (chaos), every message delivered twice and late (duplicates), the bad-input corpus and
//! malformed messages, and a burst of studies (load). The long runs are `scripts/reliability.sh`.
//!
//! The suites run the service binaries as child processes and the moto runs need a moto server:
//! without them the tests skip with a message, unless `IRIS_TEST_STRICT=1` (`scripts/test.sh`,
//! which builds the binaries and starts moto first).

use std::path::{Path, PathBuf};
use std::time::Duration;

use iris_core::testing;
use iris_dev::reliability::bad_inputs::{BadInputPlan, run_bad_inputs};
use iris_dev::reliability::chaos::{ChaosPlan, run_chaos};
use iris_dev::reliability::duplicates::{DuplicatesPlan, run_duplicates};
use iris_dev::reliability::load::{LoadPlan, run_load};
use iris_dev::reliability::{Service, Target};

/// The directory of the service binaries, or `None` (skipped) when they are not built.
fn binaries(test: &str) -> Option<PathBuf> {
    let segment = testing::workspace_binary(test, "iris-segment")?;
    segment.parent().map(PathBuf::from)
}

fn moto(test: &str) -> Option<Target> {
    testing::moto_url(test).map(|endpoint_url| Target::Moto { endpoint_url })
}

async fn chaos(target: Target, binaries: &Path) {
    let plan = ChaosPlan { studies: 6, kills: 8, seed: 7, ..ChaosPlan::default() };
    let report = run_chaos(&target, binaries, &plan).await.expect("the suite runs");
    eprintln!("{}", report.to_markdown());
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    assert_eq!(report.kills.values().sum::<usize>(), 8, "every kill landed while a job was unfinished");
    assert_eq!((report.completed, report.failed_as_expected), (4, 2));
}

async fn duplicates(target: Target) {
    let plan = DuplicatesPlan { studies: 3, max_delay: Duration::from_millis(1500) };
    let report = run_duplicates(&target, &plan).await.expect("the suite runs");
    eprintln!("{}", report.to_markdown());
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    assert_eq!(report.jobs, 4, "one job per upload");
    // Three completed jobs of seven states and a failed one of three, each seen once.
    assert_eq!(report.distinct_states, 3 * 7 + 3);
    assert!(report.copies_delivered >= 16, "{} copies", report.copies_delivered);
}

async fn bad_inputs(target: Target, binaries: &Path) {
    let report = run_bad_inputs(&target, binaries, &BadInputPlan::default()).await.expect("the suite runs");
    eprintln!("{}", report.to_markdown());
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    assert!(report.uploads.len() > 30, "{} uploads", report.uploads.len());
    assert_eq!(report.dead_lettered.values().sum::<u64>(), report.malformed_messages as u64);
    assert_eq!(report.peak_rss.len(), Service::ALL.len());
}

async fn load(target: Target, binaries: &Path) {
    let plan = LoadPlan { studies: 12, ..LoadPlan::default() };
    let report = run_load(&target, binaries, &plan).await.expect("the suite runs");
    eprintln!("{}", report.to_markdown());
    assert!(report.problems.is_empty(), "{:#?}", report.problems);
    assert_eq!(report.completed, 12);
    assert!(report.studies_per_minute() > 0.0 && report.queue_age_p99_all >= 0.0);
    assert_eq!(report.queue_age_seconds.len(), 3, "a queue wait for every stage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_sigkills_leave_every_job_as_an_undisturbed_run_ends_it_embedded() {
    const TEST: &str = "chaos_sigkills_leave_every_job_as_an_undisturbed_run_ends_it_embedded";
    let Some(binaries) = binaries(TEST) else { return };
    chaos(Target::Embedded, &binaries).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_sigkills_leave_every_job_as_an_undisturbed_run_ends_it_on_moto() {
    const TEST: &str = "chaos_sigkills_leave_every_job_as_an_undisturbed_run_ends_it_on_moto";
    let (Some(binaries), Some(target)) = (binaries(TEST), moto(TEST)) else { return };
    chaos(target, &binaries).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_delivered_twice_and_late_changes_nothing_embedded() {
    duplicates(Target::Embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_delivered_twice_and_late_changes_nothing_on_moto() {
    const TEST: &str = "every_message_delivered_twice_and_late_changes_nothing_on_moto";
    let Some(target) = moto(TEST) else { return };
    duplicates(target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_input_fails_with_its_code_and_malformed_messages_are_dead_lettered_embedded() {
    const TEST: &str = "each_bad_input_fails_with_its_code_and_malformed_messages_are_dead_lettered_embedded";
    let Some(binaries) = binaries(TEST) else { return };
    bad_inputs(Target::Embedded, &binaries).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_bad_input_fails_with_its_code_and_malformed_messages_are_dead_lettered_on_moto() {
    const TEST: &str = "each_bad_input_fails_with_its_code_and_malformed_messages_are_dead_lettered_on_moto";
    let (Some(binaries), Some(target)) = (binaries(TEST), moto(TEST)) else { return };
    bad_inputs(target, &binaries).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_studies_all_completes_embedded() {
    const TEST: &str = "a_burst_of_studies_all_completes_embedded";
    let Some(binaries) = binaries(TEST) else { return };
    load(Target::Embedded, &binaries).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_studies_all_completes_on_moto() {
    const TEST: &str = "a_burst_of_studies_all_completes_on_moto";
    let (Some(binaries), Some(target)) = (binaries(TEST), moto(TEST)) else { return };
    load(target, &binaries).await;
}
