//! Voxel-grid arithmetic, 6-connected components and slice-wise hole filling for the classical model.

/// Dimensions of a voxel grid in NIfTI order (axis 0 fastest) and neighbour arithmetic.
#[derive(Debug, Clone, Copy)]
pub(super) struct Grid {
    dims: [usize; 3],
}

impl Grid {
    pub(super) fn new(dims: [usize; 3]) -> Self {
        Grid { dims }
    }

    pub(super) fn voxel_count(&self) -> usize {
        self.dims[0] * self.dims[1] * self.dims[2]
    }

    pub(super) fn slice_len(&self) -> usize {
        self.dims[0] * self.dims[1]
    }

    /// Calls `visit` with the linear index of each of the up to six face neighbours of `index`.
    #[inline]
    pub(super) fn for_each_face_neighbour(&self, index: usize, mut visit: impl FnMut(usize)) {
        let [nx, ny, nz] = self.dims;
        let slice_len = nx * ny;
        let i = index % nx;
        let j = (index / nx) % ny;
        let k = index / slice_len;
        if i > 0 {
            visit(index - 1);
        }
        if i + 1 < nx {
            visit(index + 1);
        }
        if j > 0 {
            visit(index - nx);
        }
        if j + 1 < ny {
            visit(index + nx);
        }
        if k > 0 {
            visit(index - slice_len);
        }
        if k + 1 < nz {
            visit(index + slice_len);
        }
    }
}

/// 6-connected components of a boolean mask, numbered 1, 2, … in order of their first voxel
/// (so the numbering is deterministic); 0 marks voxels outside the mask.
pub(super) struct ConnectedComponents {
    pub(super) component_of_voxel: Vec<u32>,
    /// `sizes[c - 1]` is the voxel count of component `c`.
    pub(super) sizes: Vec<u64>,
}

impl ConnectedComponents {
    /// Labels the components with an explicit-stack flood fill (no recursion).
    /// Precondition: `mask.len() == grid.voxel_count() <= u32::MAX`.
    pub(super) fn label(grid: Grid, mask: &[bool]) -> Self {
        let mut component_of_voxel = vec![0u32; mask.len()];
        let mut sizes: Vec<u64> = Vec::new();
        let mut stack: Vec<usize> = Vec::new();
        for start in 0..mask.len() {
            if !mask[start] || component_of_voxel[start] != 0 {
                continue;
            }
            sizes.push(0);
            let component = sizes.len() as u32;
            let mut size = 0u64;
            component_of_voxel[start] = component;
            stack.push(start);
            while let Some(index) = stack.pop() {
                size += 1;
                grid.for_each_face_neighbour(index, |neighbour| {
                    if mask[neighbour] && component_of_voxel[neighbour] == 0 {
                        component_of_voxel[neighbour] = component;
                        stack.push(neighbour);
                    }
                });
            }
            if let Some(last) = sizes.last_mut() {
                *last = size;
            }
        }
        ConnectedComponents { component_of_voxel, sizes }
    }

    pub(super) fn count(&self) -> usize {
        self.sizes.len()
    }

    /// The component with the most voxels (the lowest-numbered one among equals).
    pub(super) fn largest(&self) -> Option<u32> {
        let mut best: Option<(u32, u64)> = None;
        for (slot, &size) in self.sizes.iter().enumerate() {
            if best.is_none_or(|(_, best_size)| size > best_size) {
                best = Some((slot as u32 + 1, size));
            }
        }
        best.map(|(component, _)| component)
    }

    /// Mask of the voxels whose component satisfies `keep` (called with ids ≥ 1 only).
    pub(super) fn mask_of(&self, keep: impl Fn(u32) -> bool) -> Vec<bool> {
        self.component_of_voxel.iter().map(|&component| component != 0 && keep(component)).collect()
    }
}

/// In every axial slice (fixed index along axis 2), finds the holes of `mask`: 4-connected groups
/// of unmasked pixels that do not touch the slice border. Each hole for which `accept` (given the
/// linear voxel indices of the hole) returns true is added to the mask.
pub(super) fn fill_holes_in_axial_slices(grid: Grid, mask: &mut [bool], accept: impl Fn(&[usize]) -> bool) {
    let mut hole_voxels: Vec<usize> = Vec::new();
    let [nx, ny, nz] = grid.dims;
    let slice_len = grid.slice_len();
    // 0 = not yet visited, 1 = unmasked and connected to the border, 2 = visited hole pixel.
    let mut state = vec![0u8; slice_len];
    let mut stack: Vec<usize> = Vec::new();
    let mut hole: Vec<usize> = Vec::new();
    for k in 0..nz {
        let base = k * slice_len;
        let slice = &mut mask[base..base + slice_len];
        state.fill(0);
        let neighbours_in_slice = |pixel: usize, visit: &mut dyn FnMut(usize)| {
            let i = pixel % nx;
            let j = pixel / nx;
            if i > 0 {
                visit(pixel - 1);
            }
            if i + 1 < nx {
                visit(pixel + 1);
            }
            if j > 0 {
                visit(pixel - nx);
            }
            if j + 1 < ny {
                visit(pixel + nx);
            }
        };
        // Flood the unmasked pixels reachable from the border.
        let border_pixels =
            (0..nx).flat_map(|i| [i, i + nx * (ny - 1)]).chain((0..ny).flat_map(|j| [nx * j, nx * j + nx - 1]));
        for pixel in border_pixels {
            if !slice[pixel] && state[pixel] == 0 {
                state[pixel] = 1;
                stack.push(pixel);
            }
        }
        while let Some(pixel) = stack.pop() {
            neighbours_in_slice(pixel, &mut |neighbour| {
                if !slice[neighbour] && state[neighbour] == 0 {
                    state[neighbour] = 1;
                    stack.push(neighbour);
                }
            });
        }
        // Every other unmasked pixel belongs to a hole; collect each hole and ask whether to fill it.
        for start in 0..slice_len {
            if slice[start] || state[start] != 0 {
                continue;
            }
            hole.clear();
            state[start] = 2;
            stack.push(start);
            while let Some(pixel) = stack.pop() {
                hole.push(pixel);
                neighbours_in_slice(pixel, &mut |neighbour| {
                    if !slice[neighbour] && state[neighbour] == 0 {
                        state[neighbour] = 2;
                        stack.push(neighbour);
                    }
                });
            }
            hole_voxels.clear();
            hole_voxels.extend(hole.iter().map(|&pixel| base + pixel));
            if accept(&hole_voxels) {
                for &pixel in &hole {
                    slice[pixel] = true;
                }
            }
        }
    }
}

/// Two-pass chamfer distance transform of one axial slice (3×3 mask, exact along the axes and the
/// diagonals, within 8 % elsewhere): on entry `distance` is 0 at the sources and infinite
/// elsewhere; on return each pixel holds its distance (mm) to the nearest source. The edge of the
/// slice is not a source.
pub(super) fn chamfer_distance_in_slice(nx: usize, ny: usize, spacing: [f64; 3], distance: &mut [f32]) {
    let (step_x, step_y) = (spacing[0] as f32, spacing[1] as f32);
    let step_diagonal = step_x.hypot(step_y);
    // Forward pass: neighbours above and to the left.
    for j in 0..ny {
        for i in 0..nx {
            let pixel = j * nx + i;
            let mut best = distance[pixel];
            if best == 0.0 {
                continue;
            }
            if i > 0 {
                best = best.min(distance[pixel - 1] + step_x);
            }
            if j > 0 {
                best = best.min(distance[pixel - nx] + step_y);
                if i > 0 {
                    best = best.min(distance[pixel - nx - 1] + step_diagonal);
                }
                if i + 1 < nx {
                    best = best.min(distance[pixel - nx + 1] + step_diagonal);
                }
            }
            distance[pixel] = best;
        }
    }
    // Backward pass: neighbours below and to the right.
    for j in (0..ny).rev() {
        for i in (0..nx).rev() {
            let pixel = j * nx + i;
            let mut best = distance[pixel];
            if best == 0.0 {
                continue;
            }
            if i + 1 < nx {
                best = best.min(distance[pixel + 1] + step_x);
            }
            if j + 1 < ny {
                best = best.min(distance[pixel + nx] + step_y);
                if i + 1 < nx {
                    best = best.min(distance[pixel + nx + 1] + step_diagonal);
                }
                if i > 0 {
                    best = best.min(distance[pixel + nx - 1] + step_diagonal);
                }
            }
            distance[pixel] = best;
        }
    }
}

/// For every voxel, its in-slice distance (mm) to the nearest voxel where `source` holds, passed
/// slice by slice to `visit(linear index, distance)`; one slice buffer at a time.
pub(super) fn for_each_in_slice_distance(
    grid: Grid,
    spacing: [f64; 3],
    source: impl Fn(usize) -> bool,
    mut visit: impl FnMut(usize, f32),
) {
    let [nx, ny, nz] = grid.dims;
    let slice_len = grid.slice_len();
    let mut distance = vec![0.0f32; slice_len];
    for k in 0..nz {
        let base = k * slice_len;
        for (pixel, value) in distance.iter_mut().enumerate() {
            *value = if source(base + pixel) { 0.0 } else { f32::INFINITY };
        }
        chamfer_distance_in_slice(nx, ny, spacing, &mut distance);
        for (pixel, &value) in distance.iter().enumerate() {
            visit(base + pixel, value);
        }
    }
}

impl ConnectedComponents {
    /// The radius (mm) of the largest disc that fits inside each component in some axial slice:
    /// `radii[c - 1]` for component `c`, measured to the nearest pixel outside every component.
    /// The edge of the field of view does not count as outside, so a limb cut by the field of
    /// view keeps its thickness (a slice wholly inside a component gives an infinite radius).
    pub(super) fn inscribed_radii_mm(&self, grid: Grid, spacing: [f64; 3]) -> Vec<f64> {
        let mut radii = vec![0.0f64; self.sizes.len()];
        for_each_in_slice_distance(
            grid,
            spacing,
            |index| self.component_of_voxel[index] == 0,
            |index, distance| {
                let component = self.component_of_voxel[index];
                if let Some(radius) = component.checked_sub(1).and_then(|slot| radii.get_mut(slot as usize)) {
                    *radius = radius.max(f64::from(distance));
                }
            },
        );
        radii
    }
}
