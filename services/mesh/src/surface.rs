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

use iris_volume::memory::large_zeroed_vec;
use iris_volume::volume::Volume;
use rayon::prelude::*;
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

/// The grid corners (points between voxels, at half-integer voxel coordinates) on the boundary
/// of any label, numbered in memory order, with the edges between them that smoothing follows.
///
/// A corner is on a boundary when the eight voxels around it do not all hold the same value
/// (voxels outside the volume hold 0). An edge between two such corners is a boundary edge when
/// the four voxels around it do not all hold the same value, and a junction edge when they hold
/// three or more different values (where three or more regions meet).
#[derive(Debug, Clone, PartialEq)]
pub struct CornerGraph {
    /// Voxel dimensions of the label map; corners are one more on each axis.
    dims: [usize; 3],
    /// `row_start[r]..row_start[r + 1]`: the nodes of corner row `r = ck * (ny + 1) + cj`, in
    /// increasing `ci` (nodes are numbered in memory order, so each row's are consecutive).
    row_start: Vec<u32>,
    /// Corner coordinates (corner index on each axis) of each node.
    corners: Vec<[u32; 3]>,
    /// `stencil[stencil_start[n]..stencil_start[n + 1]]`: the nodes whose mean node `n` is smoothed
    /// towards (its boundary-edge neighbours; only its junction-edge neighbours on a junction line;
    /// none where junction lines meet or end, which keeps the node fixed).
    stencil_start: Vec<u32>,
    stencil: Vec<u32>,
}

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

impl CornerGraph {
    /// Builds the graph of a label map's boundary corners (see the type's documentation).
    pub fn build(labels: &Volume<u8>) -> Result<CornerGraph, TooManyCorners> {
        let dims = labels.dims();
        let corner_dims = dims.map(|n| n + 1);
        let corner_count = corner_dims.iter().map(|&n| n as u64).product::<u64>();
        let max = u64::from(u32::MAX) - 1;
        if corner_count > max {
            return Err(TooManyCorners { corners: corner_count, max });
        }

        let started = std::time::Instant::now();
        // 1. Each corner layer's boundary corners and their edge flags.
        let layers: Vec<(Vec<u32>, Vec<u8>)> =
            (0..corner_dims[2]).into_par_iter().map(|ck| boundary_corners_of_layer(labels, ck)).collect();

        let found = started.elapsed();
        // 2. Node numbers, in memory order, and the first node of each corner row. Each layer's
        // nodes are consecutive, so every layer fills its own part of the arrays, in parallel.
        let rows_per_layer = corner_dims[1];
        let layer_sizes: Vec<usize> = layers.iter().map(|(indices, _)| indices.len()).collect();
        let total: usize = layer_sizes.iter().sum();
        let layer_start: Vec<usize> = prefix_sums(&layer_sizes);
        let mut row_start: Vec<u32> = vec![0; rows_per_layer * corner_dims[2] + 1];
        let mut corners: Vec<[u32; 3]> = large_zeroed_vec(total);
        let mut flags: Vec<u8> = vec![0; total];
        split_mut(&mut corners, &layer_sizes)
            .into_par_iter()
            .zip(split_mut(&mut flags, &layer_sizes))
            .zip(row_start.par_chunks_mut(rows_per_layer))
            .zip(layers.par_iter())
            .enumerate()
            .for_each(|(ck, (((corners, flags), row_start), (indices, layer_flags)))| {
                let mut at = 0;
                for (cj, row_start) in row_start.iter_mut().enumerate() {
                    // Fits: fewer corners than u32::MAX - 1 (checked above).
                    *row_start = (layer_start[ck] + at) as u32;
                    while let Some(&index) = indices.get(at)
                        && index as usize / corner_dims[0] == cj
                    {
                        corners[at] = [index % corner_dims[0] as u32, cj as u32, ck as u32];
                        at += 1;
                    }
                }
                flags.copy_from_slice(layer_flags);
            });
        drop(layers);
        row_start[rows_per_layer * corner_dims[2]] = total as u32;
        let numbered = started.elapsed();

        // 3. Smoothing stencils, a corner layer at a time, then put together (in parallel too).
        let partial = CornerGraph { dims, row_start, corners, stencil_start: Vec::new(), stencil: Vec::new() };
        let stencils: Vec<(Vec<u8>, Vec<u32>)> =
            (0..corner_dims[2]).into_par_iter().map(|ck| partial.stencils_of_layer(ck, &flags)).collect();
        let stencil_sizes: Vec<usize> = stencils.iter().map(|(_, nodes)| nodes.len()).collect();
        let stencil_base = prefix_sums(&stencil_sizes);
        let mut stencil_start: Vec<u32> = large_zeroed_vec(total + 1);
        let mut stencil: Vec<u32> = large_zeroed_vec(stencil_base[stencil_base.len() - 1]);
        split_mut(&mut stencil_start[1..], &layer_sizes)
            .into_par_iter()
            .zip(split_mut(&mut stencil, &stencil_sizes))
            .zip(stencils.par_iter().zip(&stencil_base[..stencil_sizes.len()]))
            .for_each(|((ends, nodes), ((lengths, layer_nodes), &base))| {
                // Each node's stencil ends where the next one's starts.
                let mut end = base as u32;
                for (slot, &length) in ends.iter_mut().zip(lengths) {
                    end += u32::from(length);
                    *slot = end;
                }
                nodes.copy_from_slice(layer_nodes);
            });
        tracing::debug!(
            find_ms = found.as_millis() as u64,
            number_ms = (numbered - found).as_millis() as u64,
            stencil_ms = (started.elapsed() - numbered).as_millis() as u64,
            "corner graph phases"
        );
        Ok(CornerGraph { stencil_start, stencil, ..partial })
    }

    /// Number of boundary corners.
    pub fn node_count(&self) -> usize {
        self.corners.len()
    }

    /// The node at corner `(ci, cj, ck)`, if that corner is on a boundary.
    pub fn node_at(&self, corner: [usize; 3]) -> Option<u32> {
        let [ci, cj, ck] = corner;
        if ci > self.dims[0] || cj > self.dims[1] || ck > self.dims[2] {
            return None;
        }
        let nodes = self.row_nodes(ck * (self.dims[1] + 1) + cj);
        let within = &self.corners[nodes.clone()];
        within.binary_search_by_key(&(ci as u32), |corner| corner[0]).ok().map(|at| (nodes.start + at) as u32)
    }

    /// The nodes of corner row `row` (`ck * (ny + 1) + cj`).
    fn row_nodes(&self, row: usize) -> std::ops::Range<usize> {
        self.row_start[row] as usize..self.row_start[row + 1] as usize
    }

    /// The nodes of corner layer `ck` (consecutive: nodes are numbered in memory order).
    fn layer_nodes(&self, ck: usize) -> std::ops::Range<usize> {
        let rows_per_layer = self.dims[1] + 1;
        self.row_start[ck * rows_per_layer] as usize..self.row_start[(ck + 1) * rows_per_layer] as usize
    }

    /// The corner (corner index on each axis) of node `node`.
    pub fn corner(&self, node: u32) -> [u32; 3] {
        self.corners[node as usize]
    }

    /// The corner of every node, by node number.
    pub fn corners(&self) -> &[[u32; 3]] {
        &self.corners
    }

    /// The nodes node `node` is smoothed towards (empty: the node stays where it is).
    pub fn stencil(&self, node: usize) -> &[u32] {
        &self.stencil[self.stencil_start[node] as usize..self.stencil_start[node + 1] as usize]
    }

    /// The stencils of the nodes of corner layer `ck` from the edge flags (see the `stencil`
    /// field): each node's stencil length, and the stencils one after another. Each row's nodes are
    /// matched with those of the rows beside it by walking both in order of `ci`.
    fn stencils_of_layer(&self, ck: usize, flags: &[u8]) -> (Vec<u8>, Vec<u32>) {
        let rows_per_layer = self.dims[1] + 1;
        let layer = self.layer_nodes(ck);
        let mut lengths = Vec::with_capacity(layer.len());
        let mut stencils = Vec::with_capacity(layer.len() * 4);
        for cj in 0..rows_per_layer {
            let row = ck * rows_per_layer + cj;
            let nodes = self.row_nodes(row);
            if nodes.is_empty() {
                continue;
            }
            // The rows beside this one, in the order their edges are visited: +y, −y, +z, −z.
            let beside = |present: bool, row: usize| RowWalk::new(self, present.then_some(row));
            let mut walks = [
                beside(cj + 1 < rows_per_layer, row + 1),
                beside(cj > 0, row.wrapping_sub(1)),
                beside(ck < self.dims[2], row + rows_per_layer),
                beside(ck > 0, row.wrapping_sub(rows_per_layer)),
            ];
            for node in nodes.clone() {
                let ci = self.corners[node][0];
                let mut boundary = SmallNodeList::default();
                let mut junction = SmallNodeList::default();
                let mut visit = |neighbour: Option<usize>, edge_flags_of: Option<usize>, axis: usize| {
                    let (Some(neighbour), Some(owner)) = (neighbour, edge_flags_of) else {
                        return;
                    };
                    if flags[owner] & (EDGE_BOUNDARY << axis) != 0 {
                        boundary.push(neighbour as u32);
                        if flags[owner] & (EDGE_JUNCTION << axis) != 0 {
                            junction.push(neighbour as u32);
                        }
                    }
                };
                // The edge towards +axis is described by this node's flags, the edge towards −axis
                // by the lower neighbour's.
                let next = (node + 1 < nodes.end && self.corners[node + 1][0] == ci + 1).then_some(node + 1);
                let previous = (node > nodes.start && self.corners[node - 1][0] + 1 == ci).then(|| node - 1);
                visit(next, Some(node), 0);
                visit(previous, previous, 0);
                let [above_y, below_y, above_z, below_z] = walks.each_mut().map(|walk| walk.find(self, ci));
                visit(above_y, Some(node), 1);
                visit(below_y, below_y, 1);
                visit(above_z, Some(node), 2);
                visit(below_z, below_z, 2);
                let chosen = match junction.len {
                    0 => &boundary,
                    2 => &junction,
                    _ => &SmallNodeList::default(),
                };
                lengths.push(chosen.len as u8);
                stencils.extend_from_slice(&chosen.nodes[..chosen.len]);
            }
        }
        (lengths, stencils)
    }
}

/// `[0, a, a + b, …]`: where each of consecutive parts of the given sizes starts, and the total.
fn prefix_sums(sizes: &[usize]) -> Vec<usize> {
    let mut sums = Vec::with_capacity(sizes.len() + 1);
    sums.push(0);
    for &size in sizes {
        sums.push(sums[sums.len() - 1] + size);
    }
    sums
}

/// `slice` cut into consecutive parts of the given sizes (which must add up to at most its length).
fn split_mut<'a, T>(mut slice: &'a mut [T], sizes: &[usize]) -> Vec<&'a mut [T]> {
    let mut parts = Vec::with_capacity(sizes.len());
    for &size in sizes {
        let (part, rest) = std::mem::take(&mut slice).split_at_mut(size);
        parts.push(part);
        slice = rest;
    }
    parts
}

/// A walk along one corner row's nodes in increasing `ci`, finding the node at a given `ci`.
struct RowWalk {
    at: usize,
    end: usize,
}

impl RowWalk {
    fn new(graph: &CornerGraph, row: Option<usize>) -> RowWalk {
        let nodes = row.map_or(0..0, |row| graph.row_nodes(row));
        RowWalk { at: nodes.start, end: nodes.end }
    }

    /// The node at `ci`, if any; `ci` must not decrease from one call to the next.
    fn find(&mut self, graph: &CornerGraph, ci: u32) -> Option<usize> {
        while self.at < self.end && graph.corners[self.at][0] < ci {
            self.at += 1;
        }
        (self.at < self.end && graph.corners[self.at][0] == ci).then_some(self.at)
    }
}

/// Up to six nodes (a corner has six edges), without an allocation.
#[derive(Default)]
struct SmallNodeList {
    nodes: [u32; 6],
    len: usize,
}

impl SmallNodeList {
    fn push(&mut self, node: u32) {
        self.nodes[self.len] = node;
        self.len += 1;
    }
}

impl LabelTopology {
    /// Number of triangles the quads make.
    pub fn triangle_count(&self) -> usize {
        2 * self.quads.len()
    }
}

/// Flag bits of a corner: bit `axis` (0–2) when the edge towards +axis is a boundary edge,
/// bit `3 + axis` when it is a junction edge.
const EDGE_BOUNDARY: u8 = 1;
const EDGE_JUNCTION: u8 = 1 << 3;

/// The boundary corners of corner layer `ck` (index within the layer) and their flags.
fn boundary_corners_of_layer(labels: &Volume<u8>, ck: usize) -> (Vec<u32>, Vec<u8>) {
    let [nx, ny, nz] = labels.dims();
    let data = labels.voxels();
    // Voxels outside the volume hold 0.
    let outside = vec![0u8; nx];
    let row = |j: usize, k: usize| -> &[u8] {
        if j >= 1 && j <= ny && k >= 1 && k <= nz {
            let start = ((k - 1) * ny + (j - 1)) * nx;
            &data[start..start + nx]
        } else {
            &outside
        }
    };
    let mut indices = Vec::new();
    let mut flags = Vec::new();
    // Per voxel column i: the common value of the four rows around the corner row, or MIXED.
    const MIXED: u16 = u16::MAX;
    let mut columns = vec![0u16; nx];
    for cj in 0..=ny {
        // The four voxel rows around corner row (cj, ck): [y-1/z-1, y/z-1, y-1/z, y/z].
        let rows = [row(cj, ck), row(cj + 1, ck), row(cj, ck + 1), row(cj + 1, ck + 1)];
        // Fast path: four rows of background (most of a scan's air) hold no corner.
        if rows.iter().all(|row| row.iter().fold(0, |any, &value| any | value) == 0) {
            continue;
        }
        for (i, column) in columns.iter_mut().enumerate() {
            let first = rows[0][i];
            let same = first == rows[1][i] && first == rows[2][i] && first == rows[3][i];
            *column = if same { u16::from(first) } else { MIXED };
        }
        let value = |r: usize, i: usize| rows[r][i];
        for ci in 0..=nx {
            let left = if ci == 0 { 0 } else { columns[ci - 1] };
            let right = if ci == nx { 0 } else { columns[ci] };
            if left != MIXED && left == right {
                continue;
            }
            // The eight voxels around the corner, bit b = dx + 2dy + 4dz (dy, dz as in `rows`).
            let voxel = |dx: usize, r: usize| -> u8 {
                let i = ci + dx;
                if i == 0 || i > nx { 0 } else { value(r, i - 1) }
            };
            let block: [u8; 8] = std::array::from_fn(|b| voxel(b & 1, b >> 1));
            let mut corner_flags = 0u8;
            for axis in 0..3 {
                // The four voxels around the edge towards +axis: the block voxels with bit `axis` set.
                let around: [u8; 4] = std::array::from_fn(|n| block[insert_bit(n, axis, 1)]);
                let distinct = distinct_count(&around);
                if distinct >= 2 {
                    corner_flags |= EDGE_BOUNDARY << axis;
                }
                if distinct >= 3 {
                    corner_flags |= EDGE_JUNCTION << axis;
                }
            }
            indices.push((cj * (nx + 1) + ci) as u32);
            flags.push(corner_flags);
        }
    }
    (indices, flags)
}

/// The block index with bit `axis` equal to `bit` and the other two bits taken from `n` (0–3),
/// in axis order.
fn insert_bit(n: usize, axis: usize, bit: usize) -> usize {
    let low = n & ((1 << axis) - 1);
    let high = (n >> axis) << (axis + 1);
    low | (bit << axis) | high
}

fn distinct_count(values: &[u8; 4]) -> usize {
    let mut count = 0;
    for (n, value) in values.iter().enumerate() {
        if !values[..n].contains(value) {
            count += 1;
        }
    }
    count
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

/// Inclusive voxel-index bounding box of one label.
#[derive(Debug, Clone, Copy)]
struct VoxelBounds {
    lowest: [usize; 3],
    highest: [usize; 3],
}

impl VoxelBounds {
    /// Number of voxels in the box.
    fn voxel_count(&self) -> usize {
        (0..3).map(|axis| self.highest[axis] - self.lowest[axis] + 1).product()
    }
}

/// Voxel count and inclusive bounding box of every label value, from one pass over a label map.
struct LabelCensus {
    voxels: [u64; 256],
    lowest: [[usize; 3]; 256],
    highest: [[usize; 3]; 256],
}

impl LabelCensus {
    fn empty() -> Self {
        LabelCensus { voxels: [0; 256], lowest: [[usize::MAX; 3]; 256], highest: [[0; 3]; 256] }
    }

    /// Counts a label map, slice by slice in parallel (the result does not depend on the order).
    fn of(labels: &Volume<u8>) -> Self {
        let [nx, ny, _] = labels.dims();
        labels
            .voxels()
            .par_chunks(nx * ny)
            .enumerate()
            .fold(LabelCensus::empty, |mut census, (k, slice)| {
                census.count_slice(slice, nx, k);
                census
            })
            .reduce(LabelCensus::empty, LabelCensus::merged)
    }

    fn count_slice(&mut self, slice: &[u8], nx: usize, k: usize) {
        for (j, row) in slice.chunks_exact(nx).enumerate() {
            let mut start = 0;
            // Runs of one value: one update per run.
            while start < row.len() {
                let value = row[start];
                let end = end_of_run(row, start, value);
                let value = usize::from(value);
                self.voxels[value] += (end - start) as u64;
                let (lowest, highest) = (&mut self.lowest[value], &mut self.highest[value]);
                lowest[0] = lowest[0].min(start);
                lowest[1] = lowest[1].min(j);
                lowest[2] = lowest[2].min(k);
                highest[0] = highest[0].max(end - 1);
                highest[1] = highest[1].max(j);
                highest[2] = highest[2].max(k);
                start = end;
            }
        }
    }

    fn merged(mut self, other: LabelCensus) -> LabelCensus {
        for value in 0..256 {
            self.voxels[value] += other.voxels[value];
            for axis in 0..3 {
                self.lowest[value][axis] = self.lowest[value][axis].min(other.lowest[value][axis]);
                self.highest[value][axis] = self.highest[value][axis].max(other.highest[value][axis]);
            }
        }
        self
    }
}

/// The four corners of each face of a voxel, as offsets (0 or 1 on each axis) from the voxel's
/// lowest corner, in counter-clockwise order seen from outside the voxel in voxel space.
/// Faces in the order −x, +x, −y, +y, −z, +z.
const FACE_CORNERS: [[[usize; 3]; 4]; 6] = [
    [[0, 0, 0], [0, 0, 1], [0, 1, 1], [0, 1, 0]],
    [[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 0, 1]],
    [[0, 0, 0], [1, 0, 0], [1, 0, 1], [0, 0, 1]],
    [[0, 1, 0], [0, 1, 1], [1, 1, 1], [1, 1, 0]],
    [[0, 0, 0], [0, 1, 0], [1, 1, 0], [1, 0, 0]],
    [[0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 1, 1]],
];

/// Voxels inside a run skipped at once when none of them has an exposed face (see [`extract_label`]).
const INTERIOR_BLOCK: usize = 16;

/// Marks a corner slot whose vertices are not made yet.
const NO_VERTEX: u32 = u32::MAX;

/// Builds the surface of one label from the voxels inside its bounding box. Voxels outside the
/// bounding box, and so outside the volume, are never of the label.
fn extract_label(
    labels: &Volume<u8>,
    graph: &CornerGraph,
    label: u8,
    voxels: u64,
    bounds: VoxelBounds,
) -> LabelTopology {
    let size = [0, 1, 2].map(|axis| bounds.highest[axis] - bounds.lowest[axis] + 1);
    let [nx, ny, _] = labels.dims();
    let data = labels.voxels();
    let (row_stride, slice_stride) = (nx, nx * ny);
    let mut builder = TopologyBuilder {
        labels,
        graph,
        label,
        origin: bounds.lowest,
        size,
        corners_per_row: size[0] + 1,
        lower: vec![NO_VERTEX; (size[0] + 1) * (size[1] + 1)],
        upper: vec![NO_VERTEX; (size[0] + 1) * (size[1] + 1)],
        lower_configs: vec![0; (size[0] + 1) * (size[1] + 1)],
        upper_configs: vec![0; (size[0] + 1) * (size[1] + 1)],
        slice: 0,
        vertex_nodes: Vec::new(),
        quads: Vec::new(),
    };
    for k in 0..size[2] {
        builder.begin_voxel_slice(k);
        for j in 0..size[1] {
            let row_start = labels.linear_index(bounds.lowest[0], bounds.lowest[1] + j, bounds.lowest[2] + k);
            let row = &data[row_start..row_start + size[0]];
            // Rows away from the box's faces: their y and z neighbours lie inside the box.
            let inner_rows = j > 0 && j + 1 < size[1] && k > 0 && k + 1 < size[2];
            // The label's voxels of the row: memchr skips to the next run of them.
            let mut next = 0;
            while let Some(found) = memchr::memchr(label, &row[next..]) {
                let run_start = next + found;
                let run_end = end_of_run(row, run_start, label);
                next = run_end;
                let mut i = run_start;
                while i < run_end {
                    // Voxels strictly inside the run (their x neighbours are of the label) whose
                    // four y and z neighbours are of the label too have no exposed face: skipped
                    // a block at a time, with one vectorised comparison of the four rows beside.
                    if inner_rows && i > run_start && i + INTERIOR_BLOCK < run_end {
                        let at = row_start + i;
                        let beside = [at - row_stride, at + row_stride, at - slice_stride, at + slice_stride];
                        let differs = beside.iter().fold(0u8, |any, &start| {
                            data[start..start + INTERIOR_BLOCK].iter().fold(any, |any, &value| any | (value ^ label))
                        });
                        if differs == 0 {
                            i += INTERIOR_BLOCK;
                            continue;
                        }
                    }
                    let index = row_start + i;
                    let exposed = [
                        i == 0 || data[index - 1] != label,
                        i + 1 == size[0] || data[index + 1] != label,
                        j == 0 || data[index - row_stride] != label,
                        j + 1 == size[1] || data[index + row_stride] != label,
                        k == 0 || data[index - slice_stride] != label,
                        k + 1 == size[2] || data[index + slice_stride] != label,
                    ];
                    for (face, is_exposed) in exposed.into_iter().enumerate() {
                        if is_exposed {
                            builder.add_face(i, j, face);
                        }
                    }
                    i += 1;
                }
            }
        }
    }
    LabelTopology { label: u16::from(label), voxels, vertex_nodes: builder.vertex_nodes, quads: builder.quads }
}

/// Accumulates one label's vertices and quads, two corner layers at a time: voxel slice `k`
/// (local) only touches corner layers `k` and `k + 1`.
struct TopologyBuilder<'a> {
    labels: &'a Volume<u8>,
    graph: &'a CornerGraph,
    label: u8,
    /// Voxel index of the bounding box's lowest voxel; local corner (0, 0, 0) is its lowest corner.
    origin: [usize; 3],
    size: [usize; 3],
    corners_per_row: usize,
    /// First vertex of each corner slot of the lower and upper corner layer, and the corner's
    /// configuration (see [`corner_groups`]) once its vertices exist.
    lower: Vec<u32>,
    upper: Vec<u32>,
    lower_configs: Vec<u16>,
    upper_configs: Vec<u16>,
    slice: usize,
    vertex_nodes: Vec<u32>,
    quads: Vec<[u32; 4]>,
}

impl TopologyBuilder<'_> {
    fn begin_voxel_slice(&mut self, k: usize) {
        if k > 0 {
            std::mem::swap(&mut self.lower, &mut self.upper);
            std::mem::swap(&mut self.lower_configs, &mut self.upper_configs);
            self.upper.fill(NO_VERTEX);
        }
        self.slice = k;
    }

    /// Adds face `face` (see [`FACE_CORNERS`]) of local voxel (i, j) of the current slice.
    fn add_face(&mut self, i: usize, j: usize, face: usize) {
        let axis = face / 2;
        let (a1, a2) = other_axes(axis);
        let quad = FACE_CORNERS[face].map(|offset| {
            // The face, seen from its corner: the block offsets of its voxel are 1 - offset.
            let face_at_corner = axis * 4 + (1 - offset[a1]) + 2 * (1 - offset[a2]);
            self.vertex([i + offset[0], j + offset[1]], offset[2] == 1, face_at_corner)
        });
        self.quads.push(quad);
    }

    /// The vertex of block face `face_at_corner` at local corner `corner` of the lower or upper layer.
    fn vertex(&mut self, corner: [usize; 2], upper: bool, face_at_corner: usize) -> u32 {
        let slot = corner[1] * self.corners_per_row + corner[0];
        let existing = if upper { self.upper[slot] } else { self.lower[slot] };
        let (first, config) = if existing != NO_VERTEX {
            (existing, if upper { self.upper_configs[slot] } else { self.lower_configs[slot] })
        } else {
            let global = [
                self.origin[0] + corner[0],
                self.origin[1] + corner[1],
                self.origin[2] + self.slice + usize::from(upper),
            ];
            let config = self.corner_config(global);
            let groups = corner_groups(config);
            // A corner with a face of the label is on a boundary, so it has a node.
            let node = self.graph.node_at(global).unwrap_or(0);
            let first = self.vertex_nodes.len() as u32;
            self.vertex_nodes.extend(std::iter::repeat_n(node, usize::from(groups.count)));
            if upper {
                self.upper[slot] = first;
                self.upper_configs[slot] = config;
            } else {
                self.lower[slot] = first;
                self.lower_configs[slot] = config;
            }
            (first, config)
        };
        first + u32::from(corner_groups(config).group_of_face[face_at_corner])
    }

    /// Whether the voxel at global voxel coordinates `(i, j, k)` (possibly -1 or past the end:
    /// outside) is of the label.
    fn is_label(&self, voxel: [isize; 3]) -> bool {
        let inside = (0..3).all(|axis| {
            voxel[axis] >= self.origin[axis] as isize && voxel[axis] < (self.origin[axis] + self.size[axis]) as isize
        });
        inside && *self.labels.get(voxel[0] as usize, voxel[1] as usize, voxel[2] as usize) == self.label
    }

    /// The label's 8-bit block configuration at a global corner (bit b = dx + 2dy + 4dz for the
    /// voxel at corner - 1 + (dx, dy, dz)), and in bits 8–13 which half-edges pair faces around
    /// their outside voxels (see the module documentation).
    fn corner_config(&self, corner: [usize; 3]) -> u16 {
        let block = self.block_at(corner);
        let joined = diagonal_and_joined_half_edges(block);
        if joined == 0 {
            return u16::from(block);
        }
        let mut outside_pairing = 0u16;
        for axis in 0..3 {
            for side in 0..2 {
                if joined & (1 << (axis * 2 + side)) == 0 {
                    continue;
                }
                // The same edge seen from its other end: that corner's block, the other side.
                let mut other = corner.map(|c| c as isize);
                other[axis] += if side == 1 { 1 } else { -1 };
                let other_block = self.block_at_signed(other);
                if diagonal_and_joined_half_edges(other_block) & (1 << (axis * 2 + 1 - side)) != 0 {
                    outside_pairing |= 1 << (axis * 2 + side);
                }
            }
        }
        u16::from(block) | (outside_pairing << 8)
    }

    fn block_at(&self, corner: [usize; 3]) -> u8 {
        self.block_at_signed(corner.map(|c| c as isize))
    }

    fn block_at_signed(&self, corner: [isize; 3]) -> u8 {
        // Fast path: all eight voxels inside the bounding box (most corners).
        let inside = (0..3).all(|axis| {
            corner[axis] > self.origin[axis] as isize && corner[axis] < (self.origin[axis] + self.size[axis]) as isize
        });
        if inside {
            let [nx, ny, _] = self.labels.dims();
            let data = self.labels.voxels();
            let lowest =
                self.labels.linear_index(corner[0] as usize - 1, corner[1] as usize - 1, corner[2] as usize - 1);
            let mut block = 0u8;
            for b in 0..8 {
                let index = lowest + (b & 1) + ((b >> 1) & 1) * nx + (b >> 2) * nx * ny;
                block |= u8::from(data[index] == self.label) << b;
            }
            return block;
        }
        let mut block = 0u8;
        for b in 0..8 {
            let voxel = [
                corner[0] - 1 + (b & 1) as isize,
                corner[1] - 1 + ((b >> 1) & 1) as isize,
                corner[2] - 1 + (b >> 2) as isize,
            ];
            if self.is_label(voxel) {
                block |= 1 << b;
            }
        }
        block
    }
}

/// The other two axes of `axis`, in increasing order.
fn other_axes(axis: usize) -> (usize, usize) {
    match axis {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    }
}

/// The vertices of one corner configuration: how many, and which one each block face belongs to.
#[derive(Debug, Clone, Copy)]
struct CornerGroups {
    count: u8,
    /// Vertex (0-based, within the corner) of each of the 12 block faces; unused for non-boundary faces.
    group_of_face: [u8; 12],
}

/// The two voxels (block indices) of block face `face` (`axis * 4 + u + 2v`, u and v the bits of
/// the other two axes in increasing order).
fn face_voxels(face: usize) -> (usize, usize) {
    let axis = face / 4;
    let (a1, a2) = other_axes(axis);
    let low = ((face & 1) << a1) | (((face >> 1) & 1) << a2);
    (low, low | (1 << axis))
}

/// The four block faces around the half-edge towards `side` (0: −, 1: +) of `axis`, in cyclic order.
fn faces_around_half_edge(axis: usize, side: usize) -> [usize; 4] {
    let (a1, a2) = other_axes(axis);
    // Faces of axis a1 and a2 whose voxels have bit `axis` = side; the face index stores the bits of
    // its own two other axes in increasing order.
    let face = |face_axis: usize, other: usize, bit_other: usize| -> usize {
        let (b1, b2) = other_axes(face_axis);
        let bit_of = |a: usize| {
            if a == axis {
                side
            } else if a == other {
                bit_other
            } else {
                0
            }
        };
        face_axis * 4 + bit_of(b1) + 2 * bit_of(b2)
    };
    [face(a1, a2, 0), face(a2, a1, 1), face(a1, a2, 1), face(a2, a1, 0)]
}

/// Bit `axis * 2 + side` set for each half-edge of a block for which [`diagonal_and_joined`] holds,
/// from a table built on first use.
fn diagonal_and_joined_half_edges(block: u8) -> u8 {
    static TABLE: std::sync::OnceLock<[u8; 256]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        std::array::from_fn(|block| {
            let mut bits = 0u8;
            for axis in 0..3 {
                for side in 0..2 {
                    if diagonal_and_joined(block as u8, axis, side) {
                        bits |= 1 << (axis * 2 + side);
                    }
                }
            }
            bits
        })
    })[usize::from(block)]
}

/// True when the four voxels around the half-edge (axis, side) hold the label in two diagonal
/// voxels that are joined by face-adjacent label voxels within the block.
fn diagonal_and_joined(block: u8, axis: usize, side: usize) -> bool {
    let around: [usize; 4] = std::array::from_fn(|n| insert_bit(n, axis, side));
    let inside: Vec<usize> = around.iter().copied().filter(|&b| block & (1 << b) != 0).collect();
    if inside.len() != 2 || (inside[0] ^ inside[1]).count_ones() != 2 {
        return false;
    }
    // Flood fill from one over face-adjacent label voxels of the block.
    let mut reached = 1u8 << inside[0];
    loop {
        let mut grown = reached;
        for b in 0..8 {
            if reached & (1 << b) != 0 {
                for axis in 0..3 {
                    let neighbour = b ^ (1 << axis);
                    if block & (1 << neighbour) != 0 {
                        grown |= 1 << neighbour;
                    }
                }
            }
        }
        if grown == reached {
            break;
        }
        reached = grown;
    }
    reached & (1 << inside[1]) != 0
}

/// The vertices of a corner configuration (block bits and outside-pairing bits, see
/// [`TopologyBuilder::corner_config`]), from a table built on first use.
fn corner_groups(config: u16) -> CornerGroups {
    static TABLE: std::sync::OnceLock<Vec<CornerGroups>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| (0..1u32 << 14).map(|config| compute_corner_groups(config as u16)).collect())
        [usize::from(config)]
}

fn compute_corner_groups(config: u16) -> CornerGroups {
    let block = (config & 0xff) as u8;
    let outside_pairing = config >> 8;
    let inside = |b: usize| block & (1 << b) != 0;
    let is_boundary = |face: usize| {
        let (a, b) = face_voxels(face);
        inside(a) != inside(b)
    };
    let mut parent: [usize; 12] = std::array::from_fn(|n| n);
    fn root(parent: &mut [usize; 12], mut n: usize) -> usize {
        while parent[n] != n {
            parent[n] = parent[parent[n]];
            n = parent[n];
        }
        n
    }
    let mut join = |a: usize, b: usize| {
        let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
        parent[ra.max(rb)] = ra.min(rb);
    };
    for axis in 0..3 {
        for side in 0..2 {
            let faces: Vec<usize> =
                faces_around_half_edge(axis, side).into_iter().filter(|&face| is_boundary(face)).collect();
            match faces.len() {
                2 => join(faces[0], faces[1]),
                4 => {
                    // Pair the faces sharing a label voxel, or an outside voxel where the edge says so.
                    let pair_inside = outside_pairing & (1 << (axis * 2 + side)) == 0;
                    let key = |face: usize| {
                        let (a, b) = face_voxels(face);
                        if inside(a) == pair_inside { a } else { b }
                    };
                    for (n, &first) in faces.iter().enumerate() {
                        for &second in &faces[n + 1..] {
                            if key(first) == key(second) {
                                join(first, second);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let mut group_of_face = [0u8; 12];
    let mut group_of_root = [u8::MAX; 12];
    let mut count = 0u8;
    for (face, group) in group_of_face.iter_mut().enumerate() {
        if !is_boundary(face) {
            continue;
        }
        let r = root(&mut parent, face);
        if group_of_root[r] == u8::MAX {
            group_of_root[r] = count;
            count += 1;
        }
        *group = group_of_root[r];
    }
    CornerGroups { count, group_of_face }
}

#[cfg(test)]
mod tests {
    use super::{ExtractionSettings, end_of_run, extract_topologies};
    use iris_volume::volume::{Affine, Volume};

    #[test]
    fn long_runs_give_exactly_the_exposed_faces() {
        // A box of label 1 with rows of 44 voxels (long enough for the interior to be skipped a
        // block at a time), a cube of label 2 and a one-voxel cavity inside it, and a dent in
        // its top face: every exposed face, and only those, must become a quad.
        let dims = [48usize, 20, 20];
        let label_at = |i: usize, j: usize, k: usize| -> u8 {
            if (20..23).contains(&i) && (8..11).contains(&j) && (8..11).contains(&k) {
                2
            } else if (i, j, k) == (30, 10, 9) || (i >= 35 && j == 17 && k >= 15) {
                0
            } else if (2..46).contains(&i) && (2..18).contains(&j) && (2..18).contains(&k) {
                1
            } else {
                0
            }
        };
        let mut voxels = Vec::new();
        for k in 0..dims[2] {
            for j in 0..dims[1] {
                for i in 0..dims[0] {
                    voxels.push(label_at(i, j, k));
                }
            }
        }
        let volume = Volume::new(dims, Affine::identity(), voxels).unwrap();
        let extraction = extract_topologies(&volume, &ExtractionSettings { minimum_voxels: 1 }).unwrap();
        for topology in &extraction.topologies {
            let label = topology.label as u8;
            let is_label = |v: [isize; 3]| {
                (0..3).all(|a| v[a] >= 0 && (v[a] as usize) < dims[a])
                    && label_at(v[0] as usize, v[1] as usize, v[2] as usize) == label
            };
            // Each face as its four grid corners, sorted.
            let mut expected = Vec::new();
            for k in 0..dims[2] as isize {
                for j in 0..dims[1] as isize {
                    for i in 0..dims[0] as isize {
                        if !is_label([i, j, k]) {
                            continue;
                        }
                        for axis in 0..3 {
                            for side in [0isize, 1] {
                                let mut beside = [i, j, k];
                                beside[axis] += 2 * side - 1;
                                if is_label(beside) {
                                    continue;
                                }
                                let (a1, a2) = ((axis + 1) % 3, (axis + 2) % 3);
                                let mut face: Vec<[u32; 3]> = [(0, 0), (1, 0), (1, 1), (0, 1)]
                                    .iter()
                                    .map(|&(d1, d2)| {
                                        let mut corner = [i, j, k];
                                        corner[axis] += side;
                                        corner[a1] += d1;
                                        corner[a2] += d2;
                                        corner.map(|c| c as u32)
                                    })
                                    .collect();
                                face.sort_unstable();
                                expected.push(face);
                            }
                        }
                    }
                }
            }
            let mut found: Vec<Vec<[u32; 3]>> = topology
                .quads
                .iter()
                .map(|quad| {
                    let mut face: Vec<[u32; 3]> = quad
                        .iter()
                        .map(|&vertex| extraction.graph.corner(topology.vertex_nodes[vertex as usize]))
                        .collect();
                    face.sort_unstable();
                    face
                })
                .collect();
            expected.sort_unstable();
            found.sort_unstable();
            assert_eq!(found.len(), expected.len(), "label {label}: quads against exposed faces");
            assert_eq!(found, expected, "label {label}");
        }
        assert_eq!(extraction.topologies.len(), 2);
    }

    #[test]
    fn run_ends_match_a_byte_by_byte_scan() {
        // Runs of every length from 1 to 20 at every offset within a word, and a row's end.
        for length in 1..=20usize {
            for offset in 0..9usize {
                for tail in [0usize, 1, 7, 8, 13] {
                    let mut row = vec![1u8; offset];
                    row.extend(std::iter::repeat_n(7u8, length));
                    row.extend(std::iter::repeat_n(9u8, tail));
                    let naive = (offset..row.len()).find(|&i| row[i] != 7).unwrap_or(row.len());
                    assert_eq!(end_of_run(&row, offset, 7), naive, "run of {length} at {offset}, {tail} after");
                    assert_eq!(naive, offset + length);
                }
            }
        }
    }
}
