//! [`CornerGraph`]: the grid corners on any label boundary, found in one parallel pass and kept
//! row by row (so its size follows the surfaces, not the grid), with the boundary and junction
//! edges smoothing follows.

use iris_volume::memory::large_zeroed_vec;
use iris_volume::volume::Volume;
use rayon::prelude::*;

use super::{TooManyCorners, insert_bit};

/// Flag bits of a corner: bit `axis` (0–2) when the edge towards +axis is a boundary edge,
/// bit `3 + axis` when it is a junction edge.
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

pub(super) const EDGE_BOUNDARY: u8 = 1;
pub(super) const EDGE_JUNCTION: u8 = 1 << 3;

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

fn distinct_count(values: &[u8; 4]) -> usize {
    let mut count = 0;
    for (n, value) in values.iter().enumerate() {
        if !values[..n].contains(value) {
            count += 1;
        }
    }
    count
}
