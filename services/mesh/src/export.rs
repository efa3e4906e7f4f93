//! The files of the mesh stage: Wavefront OBJ + MTL (one object, group and material per label),
//! and the manifest (`manifest.json`) describing every file and label. The GLB and STL writers
//! live in `glb.rs` and `stl.rs`.
//!
//! Vertex positions are world RAS millimetres. The output is byte-identical for the same input
//! (no timestamps, fixed number formatting, labels in id order).

use std::io::Write;

use iris_core::labels::LabelTable;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::finish::{bounding_box_mm, signed_volume_mm3, surface_area_mm2};
use crate::label_mesh::LabelMesh;
use crate::surface::SkippedLabel;

/// Version of the manifest's layout, raised on incompatible changes.
pub const MANIFEST_FORMAT_VERSION: u32 = 2;

/// Coordinate system of the vertex positions, as written in the manifest.
pub const COORDINATE_SYSTEM: &str = "RAS, millimetres";

/// One label's finished mesh with what the manifest says of it.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshedLabel {
    pub mesh: LabelMesh,
    /// Voxels of the label in the label map.
    pub voxels: u64,
    /// Triangles before simplification.
    pub extracted_triangles: usize,
    /// The label's name made safe and unique for OBJ groups, materials and file names.
    pub file_name: String,
}

/// `manifest.json`: what the mesh files contain, label by label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshManifest {
    /// [`MANIFEST_FORMAT_VERSION`].
    pub format_version: u32,
    /// The model that produced the label map.
    pub model: String,
    /// False when the segmentation must not be used for diagnosis.
    pub diagnostic: bool,
    /// [`COORDINATE_SYSTEM`]: vertex positions of the OBJ, STL and manifest are world RAS
    /// millimetres; the GLB's root node turns them into glTF metres, +Y up.
    pub coordinate_system: String,
    /// How the meshes were made.
    pub settings: ManifestSettings,
    pub files: ManifestFiles,
    /// One entry per label with a surface, in id order (the order of the OBJ's groups and the GLB's nodes).
    pub labels: Vec<ManifestLabel>,
    /// Labels present in the label map that have no surface.
    pub skipped: Vec<SkippedLabel>,
}

/// The settings the meshes were made with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestSettings {
    /// Share of the extracted triangles simplification was asked to remove.
    pub reduction_percent: u8,
    /// 3D Slicer-style smoothing factor (0–1).
    pub smoothing: f64,
    /// Labels with fewer voxels get no surface.
    pub minimum_voxels: u64,
    /// GLB geometry encoding: `float`, `quantized` or `meshopt`.
    pub glb_geometry: String,
}

/// File names of the mesh files, relative to the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFiles {
    pub glb: String,
    pub obj: String,
    pub mtl: String,
}

/// One label's surface in the mesh files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestLabel {
    pub id: u16,
    /// The label's name in the label table (the GLB node and mesh name; not sanitised).
    pub name: String,
    /// Display colour, sRGB 0–255 (the GLB material holds it converted to linear).
    pub color: [u8; 3],
    pub voxels: u64,
    pub vertices: usize,
    /// Triangles in the files, after simplification.
    pub triangles: usize,
    /// Triangles extracted before simplification.
    pub extracted_triangles: usize,
    pub surface_area_mm2: f64,
    /// Volume enclosed by the surface in millilitres.
    pub enclosed_volume_ml: f64,
    /// Volume of the label's voxels in millilitres.
    pub voxel_volume_ml: f64,
    pub bounding_box_mm: ManifestBoundingBox,
    /// Name of the label's object (`o`) and group (`g`) in the OBJ.
    pub obj_group: String,
    /// Name of the label's material (`usemtl` in the OBJ, `newmtl` in the MTL).
    pub material: String,
    /// The label's binary STL file, when STL files were asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stl: Option<String>,
}

/// Axis-aligned bounding box of a surface's vertices in world millimetres (all zero without vertices).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ManifestBoundingBox {
    pub min: [f64; 3],
    pub max: [f64; 3],
}

/// The OBJ file (one object and group per label, 1-based vertex indices across the whole file,
/// normals as `vn` lines) and its MTL file (one material per label, in the label's colour).
pub fn write_obj_and_mtl(labels: &[MeshedLabel], table: &LabelTable, mtl_file_name: &str) -> (Vec<u8>, Vec<u8>) {
    let header = obj_header(table, mtl_file_name, labels);
    // About the size of the file (the lines' usual lengths), so it is seldom moved as it grows.
    let estimate: usize = labels
        .iter()
        .map(|label| {
            (OBJ_VERTEX_LINE_BYTES + OBJ_NORMAL_LINE_BYTES) * label.mesh.positions.len()
                + OBJ_FACE_LINE_BYTES * label.mesh.triangles.len()
                + 100
        })
        .sum();
    let mut obj = iris_volume::memory::large_vec_with_capacity(header.len() + estimate);
    obj.extend_from_slice(&header);
    // A few pieces at a time, formatted in parallel and appended in order: the pieces' memory is
    // reused from one batch to the next instead of holding a second copy of the whole file.
    for batch in obj_pieces(labels).chunks(OBJ_PIECES_PER_BATCH) {
        let bodies: Vec<Vec<u8>> = batch.par_iter().map(ObjPiece::format).collect();
        for body in &bodies {
            obj.extend_from_slice(body);
        }
    }
    (obj, mtl_file(table, labels))
}

/// The manifest of the mesh files. `stl_file` gives a label's STL file name when STL files are written.
pub fn build_manifest(
    labels: &[MeshedLabel],
    skipped: &[SkippedLabel],
    table: &LabelTable,
    settings: ManifestSettings,
    files: ManifestFiles,
    voxel_volume_ml: f64,
    stl_file: impl Fn(&MeshedLabel) -> Option<String> + Sync,
) -> MeshManifest {
    MeshManifest {
        format_version: MANIFEST_FORMAT_VERSION,
        model: table.model.clone(),
        diagnostic: table.diagnostic,
        coordinate_system: COORDINATE_SYSTEM.to_string(),
        settings,
        files,
        labels: labels.par_iter().map(|label| manifest_label(label, voxel_volume_ml, stl_file(label))).collect(),
        skipped: skipped.to_vec(),
    }
}

/// Unique names usable as OBJ object, group and material names and as file names, one per
/// `(id, name)`: whitespace, control characters, `#` (which starts an OBJ comment), path
/// separators and characters Windows forbids in file names become `_`; an empty name becomes
/// `label_<id>`; a repeated name gets `_<id>` appended.
pub fn safe_unique_names(labels: &[(u16, &str)]) -> Vec<String> {
    let mut used = std::collections::HashSet::new();
    labels
        .iter()
        .map(|&(id, name)| {
            let base = safe_name(name, id);
            let mut candidate = base.clone();
            let mut attempt = 1u32;
            while !used.insert(candidate.clone()) {
                candidate = if attempt == 1 { format!("{base}_{id}") } else { format!("{base}_{id}_{attempt}") };
                attempt += 1;
            }
            candidate
        })
        .collect()
}

fn safe_name(name: &str, id: u16) -> String {
    let safe: String = name
        .chars()
        .map(|c| if c.is_whitespace() || c.is_control() || "#/\\:*?\"<>|".contains(c) { '_' } else { c })
        .collect();
    if safe.is_empty() || safe.chars().all(|c| c == '.') { format!("label_{id}") } else { safe }
}

/// Text for a comment line: line breaks and other control characters become spaces.
fn comment_text(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn obj_header(table: &LabelTable, mtl_file_name: &str, labels: &[MeshedLabel]) -> Vec<u8> {
    let vertices: usize = labels.iter().map(|l| l.mesh.positions.len()).sum();
    let triangles: usize = labels.iter().map(|l| l.mesh.triangles.len()).sum();
    let mut out = Vec::new();
    // Writing to a Vec<u8> cannot fail.
    let _ = writeln!(out, "# IRIS Oculus label surfaces");
    let _ = writeln!(out, "# model: {}", comment_text(&table.model));
    if !table.diagnostic {
        let _ = writeln!(out, "# NOT FOR DIAGNOSTIC USE");
    }
    let _ = writeln!(out, "# coordinates: {COORDINATE_SYSTEM}");
    let _ = writeln!(out, "# labels: {}, vertices: {vertices}, triangles: {triangles}", labels.len());
    let _ = writeln!(out, "mtllib {mtl_file_name}");
    out
}

/// Vertices or faces written per parallel task, so that one large label is also spread over threads.
const OBJ_LINES_PER_TASK: usize = 1 << 15;

/// Pieces formatted (in parallel) before they are appended to the file.
const OBJ_PIECES_PER_BATCH: usize = 16;

/// Usual lengths of a `v`, `vn` and `f` line, for sizing buffers (a longer line only grows one).
const OBJ_VERTEX_LINE_BYTES: usize = 36;
const OBJ_NORMAL_LINE_BYTES: usize = 30;
const OBJ_FACE_LINE_BYTES: usize = 40;

/// A piece of the OBJ body, formatted independently of the others.
enum ObjPiece<'a> {
    /// The object, group and material lines that start a label.
    LabelStart(&'a MeshedLabel),
    /// `v` lines.
    Vertices(&'a [[f32; 3]]),
    /// `vn` lines.
    Normals(&'a [[f32; 3]]),
    /// `f` lines (`f a//a b//b c//c`); `first` is the 1-based OBJ index of the label's first vertex.
    Faces { triangles: &'a [[u32; 3]], first: u64 },
}

/// The pieces of the OBJ body in file order: per label its start, vertices, then faces whose
/// 1-based indices are offset by the vertices of the labels before it.
fn obj_pieces(labels: &[MeshedLabel]) -> Vec<ObjPiece<'_>> {
    let mut pieces = Vec::new();
    let mut first = 1u64;
    for label in labels {
        let mesh = &label.mesh;
        pieces.push(ObjPiece::LabelStart(label));
        pieces.extend(mesh.positions.chunks(OBJ_LINES_PER_TASK).map(ObjPiece::Vertices));
        pieces.extend(mesh.normals.chunks(OBJ_LINES_PER_TASK).map(ObjPiece::Normals));
        pieces.extend(mesh.triangles.chunks(OBJ_LINES_PER_TASK).map(|triangles| ObjPiece::Faces { triangles, first }));
        first += mesh.positions.len() as u64;
    }
    pieces
}

impl ObjPiece<'_> {
    fn format(&self) -> Vec<u8> {
        match self {
            ObjPiece::LabelStart(label) => {
                let mut out = Vec::new();
                let _ = writeln!(out, "o {}", label.file_name);
                let _ = writeln!(out, "g {}", label.file_name);
                let _ = writeln!(out, "usemtl {}", label.file_name);
                out
            }
            ObjPiece::Normals(normals) => {
                let mut out = Vec::with_capacity(OBJ_NORMAL_LINE_BYTES * normals.len());
                for normal in *normals {
                    out.extend_from_slice(b"vn");
                    for &value in normal {
                        out.push(b' ');
                        push_fixed_4(&mut out, value);
                    }
                    out.push(b'\n');
                }
                out
            }
            ObjPiece::Vertices(positions) => {
                let mut out = Vec::with_capacity(OBJ_VERTEX_LINE_BYTES * positions.len());
                for position in *positions {
                    out.push(b'v');
                    for &value in position {
                        out.push(b' ');
                        push_fixed_4(&mut out, value);
                    }
                    out.push(b'\n');
                }
                out
            }
            ObjPiece::Faces { triangles, first } => {
                let mut out = Vec::with_capacity(OBJ_FACE_LINE_BYTES * triangles.len());
                let mut digits = itoa::Buffer::new();
                for triangle in *triangles {
                    out.push(b'f');
                    for &vertex in triangle {
                        let index = digits.format(first + u64::from(vertex)).as_bytes();
                        out.push(b' ');
                        out.extend_from_slice(index);
                        out.extend_from_slice(b"//");
                        out.extend_from_slice(index);
                    }
                    out.push(b'\n');
                }
                out
            }
        }
    }
}

/// Appends `value` with exactly four decimals (as `{:.4}`, but faster, and without a sign on zero).
fn push_fixed_4(out: &mut Vec<u8>, value: f32) {
    let scaled = (f64::from(value) * 1e4).round();
    if !scaled.is_finite() || scaled.abs() >= 1e18 {
        let _ = write!(out, "{value:.4}");
        return;
    }
    // In range: |scaled| < 1e18 fits an i64 exactly enough.
    let scaled = scaled as i64;
    if scaled < 0 {
        out.push(b'-');
    }
    let magnitude = scaled.unsigned_abs();
    push_decimal(out, magnitude / 10_000);
    let fraction = magnitude % 10_000;
    out.extend_from_slice(&[
        b'.',
        b'0' + (fraction / 1000) as u8,
        b'0' + (fraction / 100 % 10) as u8,
        b'0' + (fraction / 10 % 10) as u8,
        b'0' + (fraction % 10) as u8,
    ]);
}

/// Appends the decimal digits of `value`.
fn push_decimal(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

fn mtl_file(table: &LabelTable, labels: &[MeshedLabel]) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = writeln!(out, "# IRIS Oculus label materials");
    let _ = writeln!(out, "# model: {}", comment_text(&table.model));
    for label in labels {
        let [r, g, b] = label.mesh.color_srgb.map(|channel| f64::from(channel) / 255.0);
        let _ = writeln!(out);
        let _ = writeln!(out, "newmtl {}", label.file_name);
        let _ = writeln!(out, "Ka {r:.6} {g:.6} {b:.6}");
        let _ = writeln!(out, "Kd {r:.6} {g:.6} {b:.6}");
        let _ = writeln!(out, "Ks 0 0 0");
        let _ = writeln!(out, "d 1");
        let _ = writeln!(out, "illum 1");
    }
    out
}

/// Decimal places of the manifest's bounding boxes in mm (the OBJ's vertex precision).
const MANIFEST_POSITION_DECIMALS: i32 = 4;
/// Decimal places of the manifest's surface areas in mm².
const MANIFEST_AREA_DECIMALS: i32 = 4;
/// Decimal places of the manifest's enclosed volumes in ml (1e-3 mm³).
const MANIFEST_VOLUME_DECIMALS: i32 = 6;

/// Rounds to `decimals` decimal places, turning −0 into 0. Positions are f32, so further digits
/// are rounding noise; short decimals also keep `manifest.json` readable and exact through JSON.
fn rounded(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale + 0.0
}

fn manifest_label(label: &MeshedLabel, voxel_volume_ml: f64, stl: Option<String>) -> ManifestLabel {
    let mesh = &label.mesh;
    let (min, max) = bounding_box_mm(mesh).unwrap_or(([0.0; 3], [0.0; 3]));
    ManifestLabel {
        id: mesh.label,
        name: mesh.name.clone(),
        color: mesh.color_srgb,
        voxels: label.voxels,
        vertices: mesh.positions.len(),
        triangles: mesh.triangles.len(),
        extracted_triangles: label.extracted_triangles,
        surface_area_mm2: rounded(surface_area_mm2(mesh), MANIFEST_AREA_DECIMALS),
        enclosed_volume_ml: rounded(signed_volume_mm3(mesh) / 1000.0, MANIFEST_VOLUME_DECIMALS),
        voxel_volume_ml: rounded(label.voxels as f64 * voxel_volume_ml, MANIFEST_VOLUME_DECIMALS),
        bounding_box_mm: ManifestBoundingBox {
            min: min.map(|v| rounded(v, MANIFEST_POSITION_DECIMALS)),
            max: max.map(|v| rounded(v, MANIFEST_POSITION_DECIMALS)),
        },
        obj_group: label.file_name.clone(),
        material: label.file_name.clone(),
        stl,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_like_the_standard_formatting() {
        let fixed = |value: f32| {
            let mut out = Vec::new();
            push_fixed_4(&mut out, value);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(fixed(87.2), "87.2000");
        assert_eq!(fixed(-119.6), "-119.6000");
        assert_eq!(fixed(-0.5), "-0.5000");
        assert_eq!(fixed(0.0), "0.0000");
        assert_eq!(fixed(-0.0), "0.0000");
        assert_eq!(fixed(-0.00001), "0.0000");
        assert_eq!(fixed(1234.5678), format!("{:.4}", 1234.5678f32));
        assert_eq!(fixed(f32::NAN), "NaN");
        assert_eq!(fixed(f32::MAX), format!("{:.4}", f32::MAX));
        let mut state = 7u32;
        for _ in 0..10_000 {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let value = (state as f32 / u32::MAX as f32 - 0.5) * 1000.0;
            let ours: f64 = fixed(value).parse().unwrap();
            let standard: f64 = format!("{value:.4}").parse().unwrap();
            assert!((ours - standard).abs() < 1.5e-4, "{value}: {ours} against {standard}");
        }
        let decimal = |value: u64| {
            let mut out = Vec::new();
            push_decimal(&mut out, value);
            String::from_utf8(out).unwrap()
        };
        for value in [0, 1, 9, 10, 12_345, u64::from(u32::MAX), u64::MAX] {
            assert_eq!(decimal(value), value.to_string());
        }
    }

    #[test]
    fn names_are_made_safe_and_unique() {
        let names = safe_unique_names(&[
            (2, "left kidney"),
            (3, "a\tb\nc#d/e"),
            (7, ""),
            (8, "rein gauche é"),
            (1, "x"),
            (4, "x_4"),
            (5, "x"),
            (6, ".."),
        ]);
        assert_eq!(names, ["left_kidney", "a_b_c_d_e", "label_7", "rein_gauche_é", "x", "x_4", "x_5", "label_6"]);
    }
}
