//! The CPU strategy. The network already uses every core there, so accumulating alongside it
//! would only slow its threads down: tiles are cut, run and accumulated one batch after another,
//! each batch's logits read where the runtime wrote them (no copy of a gigabyte-sized output).

use std::time::{Duration, Instant};

use super::mirroring::{MirrorScratch, predict_with_mirroring};
use super::plan::TilePlan;
use super::{Accumulator, InferenceEngine, InferenceError, RunTimings, WindowSettings};

/// Runs every tile of `plan`; the model grid's labels and what it cost.
pub(super) fn run(
    plan: &TilePlan,
    settings: &WindowSettings,
    engine: &mut dyn InferenceEngine,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<(Vec<u8>, RunTimings), InferenceError> {
    let mut accumulator = Accumulator::new(settings.channels, &plan.padded, settings.patch);
    let (mut scratch, mut done, mut timings) = (MirrorScratch::default(), 0, RunTimings::default());
    let per_tile = plan.logits_per_tile;
    for batch in plan.batches() {
        let input = plan.cut(batch, settings);
        let timer = Instant::now();
        let mut accumulating = Duration::ZERO;
        predict_with_mirroring(
            engine,
            &input,
            plan.runs_in(batch, settings),
            settings,
            &plan.combinations,
            &mut scratch,
            &mut |logits| {
                let timer = Instant::now();
                for (index, start) in batch.iter().enumerate() {
                    accumulator.add_tile(*start, &logits[index * per_tile..(index + 1) * per_tile], &plan.gaussian);
                    done += 1;
                    progress(done, plan.tiles.len());
                }
                accumulating += timer.elapsed();
                Ok(())
            },
        )?;
        timings.inference += timer.elapsed().saturating_sub(accumulating);
        timings.accumulation += accumulating;
        timings.network_runs += plan.runs_per_batch();
    }
    let timer = Instant::now();
    let labels = accumulator.finish();
    timings.accumulation += timer.elapsed();
    Ok((labels, timings))
}
