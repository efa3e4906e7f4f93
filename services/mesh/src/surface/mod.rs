//! Boundary surfaces of the labels of a label map: which faces, and which vertices they share.
//!
//! A label's surface is made of the faces between its voxels and voxels of any other value (or
//! the outside of the volume, so every surface is closed). Each face becomes a quad whose corners
//! are corners of the voxel grid; smoothing later moves the corners (see `smoothing.rs`), which
//! makes this the topology of surface nets: one quad per boundary face, one vertex per grid
//! corner and surface sheet.
//!
//! **Vertices are split where a label touches itself along an edge or at a point**, so that every
//! surface is a closed 2-manifold: each edge is used by exactly two triangles, once in each
//! direction. At a grid corner the up to twelve faces of the 2×2×2 voxel block around it are
//! paired along the six half-edges leaving the corner:
//! - around a half-edge with one, two adjacent or three of its four voxels in the label, the two
//!   boundary faces pair up;
//! - around a half-edge whose two label voxels are diagonal (four boundary faces), the faces of
//!   the same label voxel pair up (the voxels are kept apart) — unless the two voxels are joined
//!   by face-adjacent label voxels within the blocks at *both* ends of the edge, in which case the
//!   faces of the same outside voxel pair up. The rule depends only on the edge, so both ends
//!   agree, and it never joins four faces at both ends.
//!
//! Each cycle of paired faces around a corner is one vertex. [`CornerGraph`] holds the grid
//! corners on any boundary (shared by every label touching them, which is what keeps the surfaces
//! of neighbouring labels together when they are smoothed).

mod census;
mod corner_graph;
mod corner_groups;
mod label;

use iris_volume::volume::Volume;
use serde::{Deserialize, Serialize};

/// The topology of one label's closed surface, before its vertices get positions.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelTopology {
    /// The label value in the label map.
    pub label: u16,
    /// Number of voxels of the label.
    pub voxels: u64,
    /// For each vertex, the [`CornerGraph`] node it sits on (several vertices may share a node).
    pub vertex_nodes: Vec<u32>,
    /// One quad per boundary face, counter-clockwise seen from outside the label in voxel space.
    pub quads: Vec<[u32; 4]>,
}

/// Settings of [`extract_topologies`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractionSettings {
    /// Labels with fewer voxels than this are not extracted but listed as skipped.
    pub minimum_voxels: u64,
}

/// The surfaces of every label of a label map and the corners they share.
#[derive(Debug, Clone, PartialEq)]
pub struct Extraction {
    /// The grid corners on any label boundary.
    pub graph: CornerGraph,
    /// One surface per extracted label, sorted by label id.
    pub topologies: Vec<LabelTopology>,
    /// Labels present in the label map but not extracted, sorted by label id.
    pub skipped: Vec<SkippedLabel>,
}

/// A label present in the label map that has no surface, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedLabel {
    pub label: u16,
    pub voxels: u64,
    pub reason: String,
}

/// The label map is too large to index its grid corners with 32 bits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the label map has {corners} grid corners, more than the {max} the mesh stage can index")]
pub struct TooManyCorners {
    pub corners: u64,
    pub max: u64,
}

pub use corner_graph::CornerGraph;

use census::{LabelCensus, VoxelBounds};
use label::extract_label;

/// Finds every label's surface: one parallel pass over the corners builds the [`CornerGraph`],
/// then the labels are extracted in parallel, each within its bounding box.
///
/// The output depends only on the input, not on the number of threads.
pub fn extract_topologies(labels: &Volume<u8>, settings: &ExtractionSettings) -> Result<Extraction, TooManyCorners> {
    let started = std::time::Instant::now();
    let graph = CornerGraph::build(labels)?;
    tracing::debug!(corners = graph.node_count(), graph_ms = started.elapsed().as_millis() as u64, "corner graph");
    let census = LabelCensus::of(labels);
    let mut work = Vec::new();
    let mut skipped = Vec::new();
    for label in 1..=u8::MAX {
        let voxels = census.voxels[usize::from(label)];
        if voxels == 0 {
            continue;
        }
        if voxels < settings.minimum_voxels {
            skipped.push(SkippedLabel {
                label: u16::from(label),
                voxels,
                reason: format!(
                    "{voxels} voxel{}, fewer than the minimum of {}",
                    if voxels == 1 { "" } else { "s" },
                    settings.minimum_voxels
                ),
            });
        } else {
            let bounds =
                VoxelBounds { lowest: census.lowest[usize::from(label)], highest: census.highest[usize::from(label)] };
            work.push((label, voxels, bounds));
        }
    }
    let topologies = crate::schedule::largest_first(
        work.len(),
        |n| work[n].2.voxel_count(),
        |n| {
            let (label, voxels, bounds) = work[n];
            extract_label(labels, &graph, label, voxels, bounds)
        },
    );
    Ok(Extraction { graph, topologies, skipped })
}

impl LabelTopology {
    /// Number of triangles the quads make.
    pub fn triangle_count(&self) -> usize {
        2 * self.quads.len()
    }
}

/// The block index with bit `axis` equal to `bit` and the other two bits taken from `n` (0–3),
/// in axis order.
fn insert_bit(n: usize, axis: usize, bit: usize) -> usize {
    let low = n & ((1 << axis) - 1);
    let high = (n >> axis) << (axis + 1);
    low | (bit << axis) | high
}

/// The end (first index past it) of the run of `value` in `row` that starts at `start`; eight
/// bytes at a time, since a label map's rows are long runs.
fn end_of_run(row: &[u8], start: usize, value: u8) -> usize {
    let pattern = u64::from_le_bytes([value; 8]);
    let mut end = start + 1;
    while let Some(word) = row[end..].first_chunk::<8>() {
        let difference = u64::from_le_bytes(*word) ^ pattern;
        if difference != 0 {
            return end + (difference.trailing_zeros() / 8) as usize;
        }
        end += 8;
    }
    while end < row.len() && row[end] == value {
        end += 1;
    }
    end
}

#[cfg(test)]
mod tests;
