//! Tests of surface extraction: closed manifolds, vertex splitting, bounds.

use iris_volume::volume::{Affine, Volume};

use super::{ExtractionSettings, end_of_run, extract_topologies};

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
