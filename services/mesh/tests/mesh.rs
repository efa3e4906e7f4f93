//! The mesh stage's library, end to end on small label maps built in code: surfaces closed and
//! manifold, near the label boundary, enclosing the label's volume, overlaying the volume in any
//! storage orientation; the files (GLB, OBJ + MTL, STL, manifest) agreeing with each other.

use std::collections::{BTreeMap, HashMap};

use iris_core::ErrorCode;
use iris_core::labels::{LabelDescription, LabelTable};
use iris_mesh::finish::{signed_volume_mm3, surface_area_mm2};
use iris_mesh::surface::{CornerGraph, ExtractionSettings, extract_topologies};
use iris_mesh::{DEFAULT_MESH_SETTINGS, GlbGeometry, LabelMesh, MeshSettings, MeshedLabel, export_scene, mesh_labels};
use iris_volume::volume::{Affine, Volume};

// ---------------------------------------------------------------------------------------------
// Label maps and checks

/// A label map of `dims` where `label_at(i, j, k)` gives each voxel's label.
fn label_map(dims: [usize; 3], affine: Affine, label_at: impl Fn(usize, usize, usize) -> u8) -> Volume<u8> {
    let mut voxels = Vec::with_capacity(dims.iter().product());
    for k in 0..dims[2] {
        for j in 0..dims[1] {
            for i in 0..dims[0] {
                voxels.push(label_at(i, j, k));
            }
        }
    }
    Volume::new(dims, affine, voxels).unwrap()
}

fn diagonal_affine(spacing: [f64; 3], signs: [f64; 3], origin: [f64; 3]) -> Affine {
    Affine([
        [spacing[0] * signs[0], 0.0, 0.0, origin[0]],
        [0.0, spacing[1] * signs[1], 0.0, origin[1]],
        [0.0, 0.0, spacing[2] * signs[2], origin[2]],
        [0.0, 0.0, 0.0, 1.0],
    ])
}

/// A small deterministic generator (no dependency needed for test noise).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn table(ids: &[u16]) -> LabelTable {
    LabelTable {
        model: "test".to_owned(),
        diagnostic: true,
        labels: ids
            .iter()
            .map(|&id| LabelDescription {
                id,
                name: format!("structure {id} é"),
                color: [(id * 40 % 256) as u8, 128, (255 - id * 30 % 256) as u8],
            })
            .collect(),
    }
}

fn settings(reduction_percent: u8, smoothing: f64) -> MeshSettings {
    let mut settings = DEFAULT_MESH_SETTINGS;
    settings.minimum_voxels = 1;
    settings.simplification.reduction_percent = reduction_percent;
    settings.smoothing.factor = smoothing;
    settings
}

/// Every directed edge is used exactly once and its reverse exactly once: the surface is closed,
/// edge-manifold and consistently wound. Also no index out of range and no degenerate triangle.
fn assert_closed_manifold(mesh: &LabelMesh, what: &str) {
    let mut directed: HashMap<(u32, u32), u32> = HashMap::new();
    for triangle in &mesh.triangles {
        assert!(triangle.iter().all(|&v| (v as usize) < mesh.positions.len()), "{what}: index out of range");
        assert!(
            triangle[0] != triangle[1] && triangle[1] != triangle[2] && triangle[0] != triangle[2],
            "{what}: degenerate triangle {triangle:?}"
        );
        for n in 0..3 {
            *directed.entry((triangle[n], triangle[(n + 1) % 3])).or_default() += 1;
        }
    }
    for (&(a, b), &count) in &directed {
        assert_eq!(count, 1, "{what} (label {}): edge {a}->{b} used {count} times", mesh.label);
        assert_eq!(directed.get(&(b, a)), Some(&1), "{what} (label {}): edge {a}->{b} has no twin", mesh.label);
    }
}

/// World → voxel coordinates for a diagonal affine.
fn to_voxel(affine: &Affine, world: [f64; 3]) -> [f64; 3] {
    std::array::from_fn(|axis| (world[axis] - affine.0[axis][3]) / affine.0[axis][axis])
}

/// Distance in mm from a point (voxel coordinates) to the boundary of `label`: the faces between
/// its voxels and other voxels, searched within two voxels of the point.
fn distance_to_boundary_mm(labels: &Volume<u8>, label: u8, point: [f64; 3], spacing: [f64; 3]) -> f64 {
    let dims = labels.dims();
    let is_label = |v: [i64; 3]| {
        (0..3).all(|a| v[a] >= 0 && (v[a] as usize) < dims[a])
            && *labels.get(v[0] as usize, v[1] as usize, v[2] as usize) == label
    };
    let centre = point.map(|c| c.round() as i64);
    let mut best = f64::INFINITY;
    for dk in -2..=2 {
        for dj in -2..=2 {
            for di in -2..=2 {
                let voxel = [centre[0] + di, centre[1] + dj, centre[2] + dk];
                if !is_label(voxel) {
                    continue;
                }
                for axis in 0..3 {
                    for side in [-1i64, 1] {
                        let mut neighbour = voxel;
                        neighbour[axis] += side;
                        if is_label(neighbour) {
                            continue;
                        }
                        // The face: plane at voxel ± 0.5 on `axis`, a unit square on the others.
                        let mut squared = 0.0;
                        for a in 0..3 {
                            let delta = if a == axis {
                                point[a] - (voxel[a] as f64 + 0.5 * side as f64)
                            } else {
                                let low = voxel[a] as f64 - 0.5;
                                let high = voxel[a] as f64 + 0.5;
                                if point[a] < low {
                                    point[a] - low
                                } else if point[a] > high {
                                    point[a] - high
                                } else {
                                    0.0
                                }
                            };
                            squared += (delta * spacing[a]).powi(2);
                        }
                        best = best.min(squared.sqrt());
                    }
                }
            }
        }
    }
    best
}

fn ellipsoid(dims: [usize; 3], centre: [f64; 3], radii: [f64; 3]) -> impl Fn(usize, usize, usize) -> bool {
    let _ = dims;
    move |i, j, k| {
        let p = [i as f64, j as f64, k as f64];
        (0..3).map(|a| ((p[a] - centre[a]) / radii[a]).powi(2)).sum::<f64>() <= 1.0
    }
}

/// Three labels: a sphere, an ellipsoid touching it, and a box with a tunnel.
fn organs(dims: [usize; 3], affine: Affine) -> Volume<u8> {
    let sphere = ellipsoid(dims, [10.0, 12.0, 10.0], [7.0, 7.0, 7.0]);
    let oval = ellipsoid(dims, [24.0, 12.0, 11.0], [7.5, 5.0, 8.5]);
    label_map(dims, affine, |i, j, k| {
        if sphere(i, j, k) {
            1
        } else if oval(i, j, k) {
            2
        } else if (4..=26).contains(&i) && (20..=26).contains(&j) && (3..=18).contains(&k) && !(12..=16).contains(&k)
            || (4..=26).contains(&i) && (20..=26).contains(&j) && (12..=16).contains(&k) && !(23..=24).contains(&j)
        {
            3
        } else {
            0
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Topology

#[test]
fn every_two_by_two_by_two_pattern_gives_closed_manifold_surfaces_of_exact_volume() {
    for pattern in 1u32..256 {
        let volume = label_map([4, 4, 4], Affine::identity(), |i, j, k| {
            let inside = (1..=2).contains(&i) && (1..=2).contains(&j) && (1..=2).contains(&k);
            u8::from(inside && pattern & (1 << ((i - 1) + 2 * (j - 1) + 4 * (k - 1))) != 0)
        });
        let scene = mesh_labels(&volume, &table(&[1]), &settings(0, 0.0)).unwrap();
        let mesh = &scene.labels[0].mesh;
        assert_closed_manifold(mesh, &format!("pattern {pattern:08b}"));
        let expected = f64::from(pattern.count_ones());
        assert!((signed_volume_mm3(mesh) - expected).abs() < 1e-4, "pattern {pattern:08b}: volume");
    }
}

#[test]
fn random_label_maps_give_closed_manifold_surfaces_before_and_after_smoothing_and_simplification() {
    let mut random = Lcg(17);
    for case in 0..12 {
        let dims = [7 + random.below(6) as usize, 6 + random.below(6) as usize, 5 + random.below(6) as usize];
        let labels = 1 + random.below(4) as u8;
        let density = 2 + random.below(4);
        let values: Vec<u8> = (0..dims.iter().product::<usize>())
            .map(|_| if random.below(density) == 0 { 0 } else { 1 + random.below(u64::from(labels)) as u8 })
            .collect();
        let volume = Volume::new(dims, Affine::identity(), values).unwrap();
        for (reduction, smoothing) in [(0, 0.0), (0, 0.5), (90, 0.5), (50, 1.0)] {
            let scene = mesh_labels(&volume, &table(&[]), &settings(reduction, smoothing)).unwrap();
            for label in &scene.labels {
                let what = format!("case {case} {dims:?} reduction {reduction} smoothing {smoothing}");
                assert_closed_manifold(&label.mesh, &what);
                if reduction == 0 && smoothing == 0.0 {
                    let voxels = label.voxels as f64;
                    assert!((signed_volume_mm3(&label.mesh) - voxels).abs() < 1e-3 * voxels.max(1.0), "{what}");
                }
            }
        }
    }
}

#[test]
fn the_corner_graph_holds_exactly_the_boundary_corners_and_their_boundary_edges() {
    // Brute force from the definitions in `CornerGraph`'s documentation, on random label maps.
    let mut random = Lcg(29);
    for case in 0..10 {
        let dims = [3 + random.below(6) as usize, 2 + random.below(6) as usize, 2 + random.below(5) as usize];
        let values: Vec<u8> = (0..dims.iter().product::<usize>())
            .map(|_| if random.below(3) == 0 { 0 } else { 1 + random.below(3) as u8 })
            .collect();
        let volume = Volume::new(dims, Affine::identity(), values).unwrap();
        let graph = CornerGraph::build(&volume).unwrap();
        let voxel = |v: [isize; 3]| -> u8 {
            let inside = (0..3).all(|axis| v[axis] >= 0 && (v[axis] as usize) < dims[axis]);
            if inside { *volume.get(v[0] as usize, v[1] as usize, v[2] as usize) } else { 0 }
        };
        // The voxels around corner c (at c - 1 + offset), and around its edge towards +axis.
        let around_corner = |c: [usize; 3]| -> Vec<u8> {
            (0..8)
                .map(|b| voxel(std::array::from_fn(|axis| c[axis] as isize - 1 + ((b >> axis) & 1) as isize)))
                .collect()
        };
        let around_edge = |c: [usize; 3], axis: usize| -> Vec<u8> {
            around_corner(c).into_iter().enumerate().filter(|(b, _)| (b >> axis) & 1 == 1).map(|(_, v)| v).collect()
        };
        let distinct = |values: &[u8]| values.iter().collect::<std::collections::BTreeSet<_>>().len();
        let mut boundary_corners = 0;
        for ck in 0..=dims[2] {
            for cj in 0..=dims[1] {
                for ci in 0..=dims[0] {
                    let corner = [ci, cj, ck];
                    let node = graph.node_at(corner);
                    let on_boundary = distinct(&around_corner(corner)) > 1;
                    assert_eq!(node.is_some(), on_boundary, "case {case} corner {corner:?}");
                    let Some(node) = node else { continue };
                    boundary_corners += 1;
                    assert_eq!(graph.corner(node), corner.map(|c| c as u32), "case {case}");
                    // The stencil: boundary-edge neighbours, or only junction-edge ones on a junction line.
                    let mut boundary = Vec::new();
                    let mut junction = Vec::new();
                    for axis in 0..3 {
                        for step in [1isize, -1] {
                            let mut other = corner.map(|c| c as isize);
                            other[axis] += step;
                            if other[axis] < 0 || other[axis] as usize > dims[axis] {
                                continue;
                            }
                            let other = other.map(|c| c as usize);
                            let lower = if step == 1 { corner } else { other };
                            let count = distinct(&around_edge(lower, axis));
                            if count >= 2 {
                                boundary.push(graph.node_at(other).expect("a boundary edge ends on boundary corners"));
                            }
                            if count >= 3 {
                                junction.push(graph.node_at(other).unwrap());
                            }
                        }
                    }
                    let expected = match junction.len() {
                        0 => boundary,
                        2 => junction,
                        _ => Vec::new(),
                    };
                    assert_eq!(graph.stencil(node as usize), expected.as_slice(), "case {case} corner {corner:?}");
                }
            }
        }
        assert_eq!(graph.node_count(), boundary_corners, "case {case}");
        assert_eq!(graph.node_at([dims[0] + 1, 0, 0]), None, "case {case}: past the grid");
    }
}

#[test]
fn labels_below_the_minimum_are_skipped_and_listed_and_background_gives_nothing() {
    let volume = label_map([6, 6, 6], Affine::identity(), |i, j, k| match (i, j, k) {
        (1..=3, 1..=3, 1..=3) => 1,
        (5, 5, 5) => 2,
        _ => 0,
    });
    let mut settings = settings(0, 0.5);
    settings.minimum_voxels = 2;
    let scene = mesh_labels(&volume, &table(&[1, 2]), &settings).unwrap();
    assert_eq!(scene.labels.iter().map(|l| l.mesh.label).collect::<Vec<_>>(), [1]);
    assert_eq!(scene.skipped.iter().map(|s| (s.label, s.voxels)).collect::<Vec<_>>(), [(2, 1)]);
    assert!(scene.skipped[0].reason.contains("fewer than the minimum of 2"));

    let empty = Volume::new([3, 3, 3], Affine::identity(), vec![0u8; 27]).unwrap();
    let scene = mesh_labels(&empty, &table(&[]), &DEFAULT_MESH_SETTINGS).unwrap();
    assert!(scene.labels.is_empty() && scene.skipped.is_empty());
    let extraction = extract_topologies(&empty, &ExtractionSettings { minimum_voxels: 1 }).unwrap();
    assert_eq!(extraction.graph.node_count(), 0);
}

#[test]
fn labels_touching_the_volume_border_are_closed() {
    let volume = label_map([5, 4, 3], Affine::identity(), |i, _, k| {
        if i < 3 {
            1
        } else if k == 2 {
            2
        } else {
            0
        }
    });
    let scene = mesh_labels(&volume, &table(&[1, 2]), &settings(0, 0.0)).unwrap();
    for label in &scene.labels {
        assert_closed_manifold(&label.mesh, "border");
        assert!((signed_volume_mm3(&label.mesh) - label.voxels as f64).abs() < 1e-4);
    }
}

// ---------------------------------------------------------------------------------------------
// Geometry

#[test]
fn vertices_stay_near_the_label_boundary_and_volumes_are_kept() {
    let spacing = [0.8, 0.9, 1.5];
    let affine = diagonal_affine(spacing, [1.0; 3], [-40.0, 12.5, 100.0]);
    let volume = organs([34, 30, 22], affine);
    let diagonal = spacing.iter().map(|s| s * s).sum::<f64>().sqrt();
    let voxel_mm3 = spacing.iter().product::<f64>();
    for reduction in [0u8, 75, 90] {
        let scene = mesh_labels(&volume, &table(&[1, 2, 3]), &settings(reduction, 0.5)).unwrap();
        assert_eq!(scene.labels.len(), 3);
        for label in &scene.labels {
            let mesh = &label.mesh;
            assert_closed_manifold(mesh, &format!("organs reduction {reduction}"));
            let distances: Vec<f64> = mesh
                .positions
                .iter()
                .map(|p| {
                    let voxel = to_voxel(&affine, p.map(f64::from));
                    distance_to_boundary_mm(&volume, mesh.label as u8, voxel, spacing)
                })
                .collect();
            let mean = distances.iter().sum::<f64>() / distances.len() as f64;
            let max = distances.iter().copied().fold(0.0, f64::max);
            let smallest = spacing[0].min(spacing[1]).min(spacing[2]);
            assert!(mean <= 0.5 * smallest, "label {} reduction {reduction}: mean {mean} mm", mesh.label);
            assert!(max <= diagonal, "label {} reduction {reduction}: max {max} mm > {diagonal}", mesh.label);

            assert!(label.voxels >= 1000, "the test's labels are large enough for the volume bar");
            let voxel_volume = label.voxels as f64 * voxel_mm3;
            let enclosed = signed_volume_mm3(mesh);
            let error = (enclosed - voxel_volume).abs() / voxel_volume;
            assert!(error <= 0.05, "label {} reduction {reduction}: volume off by {:.2} %", mesh.label, 100.0 * error);
            // 75 % is reached; at 90 % a label this small may be simplified less, to keep its volume.
            let kept = mesh.triangles.len() as f64 / label.extracted_triangles as f64;
            match reduction {
                75 => assert!(kept <= 0.25 + 0.01, "label {}: kept {kept}", mesh.label),
                90 => assert!(kept <= 0.5, "label {}: kept {kept}", mesh.label),
                _ => assert_eq!(kept, 1.0),
            }
        }
    }
}

#[test]
fn smoothing_makes_a_sphere_round_without_shrinking_it() {
    let volume = label_map([24, 24, 24], Affine::identity(), |i, j, k| {
        u8::from(ellipsoid([24; 3], [11.5; 3], [9.0; 3])(i, j, k))
    });
    let spread = |mesh: &LabelMesh| {
        let radii: Vec<f64> = mesh
            .positions
            .iter()
            .map(|p| p.iter().map(|&c| (f64::from(c) - 11.5).powi(2)).sum::<f64>().sqrt())
            .collect();
        let mean = radii.iter().sum::<f64>() / radii.len() as f64;
        (mean, (radii.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / radii.len() as f64).sqrt())
    };
    let blocky = mesh_labels(&volume, &table(&[1]), &settings(0, 0.0)).unwrap();
    let smooth = mesh_labels(&volume, &table(&[1]), &settings(0, 0.5)).unwrap();
    let (blocky_mean, blocky_spread) = spread(&blocky.labels[0].mesh);
    let (smooth_mean, smooth_spread) = spread(&smooth.labels[0].mesh);
    assert!(smooth_spread < 0.5 * blocky_spread, "radius spread {smooth_spread} against {blocky_spread}");
    assert!((smooth_mean - blocky_mean).abs() < 0.25, "mean radius {smooth_mean} against {blocky_mean}");
    assert!(surface_area_mm2(&smooth.labels[0].mesh) < surface_area_mm2(&blocky.labels[0].mesh));
}

#[test]
fn neighbouring_labels_share_their_interface_after_smoothing() {
    // Two halves of a box: the faces between them must coincide exactly (same smoothed corners).
    let volume = label_map([12, 10, 10], Affine::identity(), |i, j, k| {
        let inside = (1..=10).contains(&i) && (1..=8).contains(&j) && (1..=8).contains(&k);
        if !inside {
            0
        } else if i + j / 3 <= 5 {
            1
        } else {
            2
        }
    });
    let scene = mesh_labels(&volume, &table(&[1, 2]), &settings(0, 0.5)).unwrap();
    let key = |p: &[f32; 3]| p.map(f32::to_bits);
    let first: std::collections::HashSet<_> = scene.labels[0].mesh.positions.iter().map(key).collect();
    let second: std::collections::HashSet<_> = scene.labels[1].mesh.positions.iter().map(key).collect();
    let shared = first.intersection(&second).count();
    // The interface is a staircase of about 8 × 10 voxel faces: well over 50 shared vertices.
    assert!(shared > 50, "only {shared} shared vertices");
}

#[test]
fn meshes_overlay_the_volume_for_ras_lps_and_las_storage() {
    // The same physical object stored three ways: vertices must land on the label in each, and
    // the three meshes must describe the same world-space surface.
    let dims = [34, 30, 22];
    let spacing = [0.8, 0.9, 1.5];
    let ras = organs(dims, diagonal_affine(spacing, [1.0, 1.0, 1.0], [-13.0, 7.0, 20.0]));
    let flip = |signs: [f64; 3]| {
        // Voxel (i, j, k) of the flipped storage is voxel (i', j', k') of RAS with i' = n-1-i on flipped axes.
        let origin: [f64; 3] = std::array::from_fn(|a| {
            let ras_origin = [-13.0, 7.0, 20.0][a];
            if signs[a] < 0.0 { ras_origin + spacing[a] * (dims[a] - 1) as f64 } else { ras_origin }
        });
        let affine = diagonal_affine(spacing, signs, origin);
        label_map(dims, affine, |i, j, k| {
            let source = [i, j, k];
            let index: [usize; 3] =
                std::array::from_fn(|a| if signs[a] < 0.0 { dims[a] - 1 - source[a] } else { source[a] });
            *ras.get(index[0], index[1], index[2])
        })
    };
    let storages = [("RAS", ras.clone()), ("LPS", flip([-1.0, -1.0, 1.0])), ("LAS", flip([-1.0, 1.0, 1.0]))];
    let mut volumes = Vec::new();
    for (name, volume) in &storages {
        let scene = mesh_labels(volume, &table(&[1, 2, 3]), &settings(75, 0.5)).unwrap();
        for label in &scene.labels {
            let mesh = &label.mesh;
            assert_closed_manifold(mesh, name);
            // Every vertex, pushed a voxel (the largest spacing) inwards and outwards along its normal.
            let (mut inside_hits, mut outside_hits, mut samples) = (0, 0, 0);
            for (position, normal) in mesh.positions.iter().zip(&mesh.normals) {
                let probe = |distance: f64| {
                    let world: [f64; 3] =
                        std::array::from_fn(|a| f64::from(position[a]) + distance * f64::from(normal[a]));
                    let voxel = to_voxel(volume.affine(), world).map(|c| c.round() as i64);
                    (0..3).all(|a| voxel[a] >= 0 && (voxel[a] as usize) < dims[a])
                        && *volume.get(voxel[0] as usize, voxel[1] as usize, voxel[2] as usize) == mesh.label as u8
                };
                samples += 1;
                inside_hits += usize::from(probe(-1.5));
                outside_hits += usize::from(!probe(1.5));
            }
            assert!(samples > 20);
            assert!(
                inside_hits as f64 >= 0.9 * samples as f64,
                "{name} label {}: {inside_hits}/{samples} inside",
                mesh.label
            );
            assert!(
                outside_hits as f64 >= 0.9 * samples as f64,
                "{name} label {}: {outside_hits}/{samples} outside",
                mesh.label
            );
            assert!(signed_volume_mm3(mesh) > 0.0, "{name}: outward winding");
        }
        volumes.push(scene.labels.iter().map(|l| signed_volume_mm3(&l.mesh)).collect::<Vec<_>>());
    }
    for other in &volumes[1..] {
        for (a, b) in volumes[0].iter().zip(other) {
            assert!((a - b).abs() / a < 0.02, "volumes differ between storages: {a} against {b}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Files

fn organ_artifacts(settings: &MeshSettings) -> (Vec<MeshedLabel>, iris_mesh::MeshArtifacts) {
    let volume = organs([34, 30, 22], diagonal_affine([0.8, 0.9, 1.5], [-1.0, -1.0, 1.0], [40.0, 30.0, -20.0]));
    let mut table = table(&[1, 2, 3]);
    table.labels[1].name = "left kidney".to_owned();
    let scene = mesh_labels(&volume, &table, settings).unwrap();
    let artifacts = export_scene(&scene, &table, settings).unwrap();
    (scene.labels, artifacts)
}

fn file<'a>(artifacts: &'a iris_mesh::MeshArtifacts, name: &str) -> &'a [u8] {
    &artifacts.files.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no {name}")).1
}

#[test]
fn glb_parses_and_names_colours_and_positions_round_trip() {
    let (labels, artifacts) = organ_artifacts(&DEFAULT_MESH_SETTINGS);
    let glb = file(&artifacts, "scene.glb");
    let gltf = gltf::Gltf::from_slice(glb).expect("the GLB parses");
    let blob = gltf.blob.as_deref().expect("a BIN chunk");
    let root = gltf.nodes().find(|n| n.children().count() > 0).expect("a root node");
    let children: Vec<_> = root.children().collect();
    assert_eq!(children.len(), labels.len());
    for (node, label) in children.iter().zip(&labels) {
        assert_eq!(node.name(), Some(label.mesh.name.as_str()));
        let mesh = node.mesh().unwrap();
        assert_eq!(mesh.name(), Some(label.mesh.name.as_str()));
        let primitive = mesh.primitives().next().unwrap();
        let colour = primitive.material().pbr_metallic_roughness().base_color_factor();
        for (channel, srgb) in label.mesh.color_srgb.iter().enumerate() {
            let srgb = f32::from(*srgb) / 255.0;
            let linear = if srgb <= 0.04045 { srgb / 12.92 } else { ((srgb + 0.055) / 1.055).powf(2.4) };
            assert!((colour[channel] - linear).abs() < 1e-5);
        }
        let reader = primitive.reader(|_| Some(blob));
        let positions: Vec<[f32; 3]> = reader.read_positions().unwrap().collect();
        assert_eq!(positions, label.mesh.positions);
        let indices: Vec<u32> = reader.read_indices().unwrap().into_u32().collect();
        assert_eq!(indices.len(), 3 * label.mesh.triangles.len());
    }
    // Quantized and meshopt-compressed variants parse too (meshopt: the JSON declares the extension).
    for geometry in [GlbGeometry::Quantized, GlbGeometry::MeshoptCompressed] {
        let mut settings = DEFAULT_MESH_SETTINGS;
        settings.glb_geometry = geometry;
        let (_, artifacts) = organ_artifacts(&settings);
        let glb = file(&artifacts, "scene.glb");
        assert_eq!(&glb[0..4], b"glTF");
        let json_length = u32::from_le_bytes(glb[12..16].try_into().unwrap()) as usize;
        let json: serde_json::Value = serde_json::from_slice(&glb[20..20 + json_length]).unwrap();
        let required: Vec<&str> =
            json["extensionsRequired"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert!(required.contains(&"KHR_mesh_quantization"), "{geometry:?}: {required:?}");
        assert_eq!(required.contains(&"EXT_meshopt_compression"), geometry == GlbGeometry::MeshoptCompressed);
        assert!(glb.len() < file(&organ_artifacts(&DEFAULT_MESH_SETTINGS).1, "scene.glb").len());
    }
}

#[test]
fn obj_groups_and_mtl_materials_match_the_manifest() {
    let mut settings = DEFAULT_MESH_SETTINGS;
    settings.write_stl = true;
    let (labels, artifacts) = organ_artifacts(&settings);
    let manifest = &artifacts.manifest;
    let obj = std::str::from_utf8(file(&artifacts, "model.obj")).unwrap();
    let mtl = std::str::from_utf8(file(&artifacts, "model.mtl")).unwrap();
    let mut groups: Vec<(String, usize, usize)> = Vec::new(); // (group, vertices, faces)
    let mut materials_used = Vec::new();
    for line in obj.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("g") => groups.push((words.next().unwrap().to_owned(), 0, 0)),
            Some("usemtl") => materials_used.push(words.next().unwrap().to_owned()),
            Some("v") => groups.last_mut().unwrap().1 += 1,
            Some("f") => groups.last_mut().unwrap().2 += 1,
            _ => {}
        }
    }
    assert_eq!(groups.len(), manifest.labels.len());
    let materials: Vec<&str> = mtl.lines().filter_map(|l| l.strip_prefix("newmtl ")).collect();
    for ((group, vertices, faces), entry) in groups.iter().zip(&manifest.labels) {
        assert_eq!(group, &entry.obj_group);
        assert_eq!(*vertices, entry.vertices);
        assert_eq!(*faces, entry.triangles);
        assert!(materials.contains(&entry.material.as_str()));
        assert!(materials_used.contains(&entry.material));
    }
    assert_eq!(manifest.labels[1].name, "left kidney");
    assert_eq!(manifest.labels[1].obj_group, "left_kidney");
    assert_eq!(manifest.files.glb, "scene.glb");
    // STL per label: 84 + 50 bytes per triangle, named in the manifest.
    for (entry, label) in manifest.labels.iter().zip(&labels) {
        let name = entry.stl.as_deref().expect("an STL name");
        let stl = file(&artifacts, name);
        assert_eq!(stl.len(), 84 + 50 * label.mesh.triangles.len());
        assert!(!stl.starts_with(b"solid"));
    }
    // The manifest's volumes are close to the voxel volumes; it round-trips through JSON.
    for entry in &manifest.labels {
        assert!((entry.enclosed_volume_ml - entry.voxel_volume_ml).abs() <= 0.05 * entry.voxel_volume_ml);
        assert!(entry.triangles < entry.extracted_triangles);
    }
    let json = artifacts.manifest_json().unwrap();
    let back: iris_mesh::MeshManifest = serde_json::from_slice(&json).unwrap();
    assert_eq!(&back, manifest);
}

#[test]
fn output_is_byte_identical_across_runs_and_thread_counts() {
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| organ_artifacts(&DEFAULT_MESH_SETTINGS).1)
    };
    let (one, four) = (run(1), run(4));
    assert_eq!(one.files, four.files);
    assert_eq!(one.manifest, four.manifest);
}

#[test]
fn options_are_read_from_the_job_and_bad_ones_are_refused_with_a_code() {
    let options = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    };
    let settings = MeshSettings::from_job_options(&options(&[
        ("reduction-percent", "75"),
        ("smoothing", "0.2"),
        ("glb-geometry", "Meshopt"),
        ("stl", "true"),
        ("fast", "true"),
    ]))
    .unwrap();
    assert_eq!(settings.simplification.reduction_percent, 75);
    assert_eq!(settings.smoothing.factor, 0.2);
    assert_eq!(settings.glb_geometry, GlbGeometry::MeshoptCompressed);
    assert!(settings.write_stl);
    assert_eq!(MeshSettings::from_job_options(&options(&[])).unwrap(), DEFAULT_MESH_SETTINGS);
    for (name, value) in [
        ("reduction-percent", "100"),
        ("reduction-percent", "-5"),
        ("reduction-percent", "half"),
        ("smoothing", "1.5"),
        ("smoothing", "NaN"),
        ("glb-geometry", "draco"),
        ("stl", "maybe"),
    ] {
        let error = MeshSettings::from_job_options(&options(&[(name, value)])).unwrap_err();
        assert_eq!(error.code(), ErrorCode::InvalidOption, "{name}={value}");
        assert!(error.to_string().contains(name), "{error}");
    }
}
