//! The accelerator strategy. The network leaves the CPU free, so cutting the next batch,
//! inference and accumulating the last batch run on three threads joined by bounded channels.
//! Each batch's logits are copied once out of the runtime into a recycled buffer that the
//! accumulator thread reads while the next batch runs.

use std::sync::mpsc::sync_channel;
use std::time::Instant;

use super::mirroring::{MirrorScratch, predict_with_mirroring};
use super::plan::TilePlan;
use super::{Accumulator, InferenceEngine, InferenceError, RunTimings, WindowSettings};

/// A batch's tile starts and their network input, or their logits.
type Batch = (Vec<[usize; 3]>, Vec<f32>);

/// Runs every tile of `plan`; the model grid's labels and what it cost.
pub(super) fn run(
    plan: &TilePlan,
    settings: &WindowSettings,
    engine: &mut dyn InferenceEngine,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<(Vec<u8>, RunTimings), InferenceError> {
    let per_tile = plan.logits_per_tile;
    let mut timings = RunTimings::default();
    let mut failure = None;
    let labels = std::thread::scope(|scope| {
        let (tile_sender, tile_receiver) = sync_channel::<Batch>(2);
        let (prediction_sender, prediction_receiver) = sync_channel::<Batch>(2);
        scope.spawn(move || {
            for batch in plan.batches() {
                if tile_sender.send((batch.to_vec(), plan.cut(batch, settings))).is_err() {
                    return;
                }
            }
        });
        // Used prediction buffers go back to the inference thread, so each is allocated once.
        let (recycle_sender, recycle_receiver) = sync_channel::<Vec<f32>>(4);
        let accumulator = scope.spawn(move || {
            let mut accumulator = Accumulator::new(settings.channels, &plan.padded, settings.patch);
            let mut done = 0;
            for (batch, prediction) in prediction_receiver {
                for (index, start) in batch.iter().enumerate() {
                    let logits = &prediction[index * per_tile..(index + 1) * per_tile];
                    accumulator.add_tile(*start, logits, &plan.gaussian);
                    done += 1;
                    progress(done, plan.tiles.len());
                }
                let _ = recycle_sender.try_send(prediction);
            }
            accumulator.finish()
        });
        let mut scratch = MirrorScratch::default();
        for (batch, input) in tile_receiver {
            if let Err(cancelled) = iris_core::cancel::check() {
                failure = Some(cancelled.into());
                break;
            }
            let mut prediction = recycle_receiver
                .try_recv()
                .unwrap_or_else(|_| iris_volume::memory::large_vec_with_capacity(plan.batch_size * per_tile));
            let timer = Instant::now();
            let result = predict_with_mirroring(
                engine,
                &input,
                plan.runs_in(&batch, settings),
                settings,
                &plan.combinations,
                &mut scratch,
                &mut |logits| {
                    // The accumulator thread reads this copy while the next batch runs.
                    prediction.clear();
                    prediction.extend_from_slice(&logits[..batch.len() * per_tile]);
                    Ok(())
                },
            );
            timings.inference += timer.elapsed();
            timings.network_runs += plan.runs_per_batch();
            match result {
                Ok(()) => {
                    if prediction_sender.send((batch, prediction)).is_err() {
                        break;
                    }
                }
                Err(error) => {
                    failure = Some(error);
                    break;
                }
            }
        }
        drop(prediction_sender);
        accumulator.join()
    });
    if let Some(error) = failure {
        return Err(error);
    }
    let labels = labels.map_err(|_| InferenceError::Internal("the accumulator thread panicked".to_owned()))?;
    Ok((labels, timings))
}
