//! Wavefront OBJ and MTL files of the label surfaces, and the manifest (`manifest.json`)
//! describing them.
//!
//! The OBJ holds one object and group per label, named after the label, with its own material;
//! vertex positions are world RAS millimetres. The output is byte-identical for the same input
//! (no timestamps, fixed number formatting, labels in id order).

use std::collections::HashSet;
use std::io::Write;

use iris_shared::labels::{LabelDescription, LabelTable, fallback_label};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::surface::{Extraction, LabelSurface, SkippedLabel};

/// Version of the manifest's layout, raised on incompatible changes.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;

/// Coordinate system of the vertex positions, as written in the manifest.
pub const COORDINATE_SYSTEM: &str = "RAS, millimetres";

/// The contents of the OBJ and MTL files and the manifest describing them.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshArtifacts {
    pub obj: Vec<u8>,
    pub mtl: Vec<u8>,
    pub manifest: MeshManifest,
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
    /// [`COORDINATE_SYSTEM`]: vertex positions are world RAS millimetres.
    pub coordinate_system: String,
    pub files: ManifestFiles,
    /// One entry per label with a surface, in id order (the order of the OBJ's groups).
    pub labels: Vec<ManifestLabel>,
    /// Labels present in the label map that have no surface.
    pub skipped: Vec<SkippedLabel>,
}

/// File names of the mesh files, relative to the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFiles {
    pub obj: String,
    pub mtl: String,
}

/// One label's surface in the mesh files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestLabel {
    pub id: u16,
    /// The label's name in the label table (not sanitised; see `obj_group` for the OBJ name).
    pub name: String,
    /// Display colour, sRGB 0–255.
    pub color: [u8; 3],
    pub voxels: u64,
    pub vertices: usize,
    pub triangles: usize,
    pub surface_area_mm2: f64,
    /// Volume enclosed by the surface in millilitres (equals the voxel volume for this extraction).
    pub enclosed_volume_ml: f64,
    pub bounding_box_mm: ManifestBoundingBox,
    /// Name of the label's object (`o`) and group (`g`) in the OBJ.
    pub obj_group: String,
    /// Name of the label's material (`usemtl` in the OBJ, `newmtl` in the MTL).
    pub material: String,
}

/// Axis-aligned bounding box of a surface's vertices in world millimetres (all zero without vertices).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ManifestBoundingBox {
    pub min: [f64; 3],
    pub max: [f64; 3],
}

/// Writes the surfaces of an extraction as an OBJ file (one object and group per label, 1-based
/// vertex indices across the whole file), its MTL file (one material per label, coloured with
/// the label's colour), and the manifest.
///
/// Names and colours come from `table`; a label the table does not describe gets
/// [`fallback_label`]. Names are made safe for OBJ (whitespace, control characters and `#`
/// become `_`) and unique (a repeated name gets `_<id>` appended).
pub fn export_obj(
    extraction: &Extraction,
    table: &LabelTable,
    obj_file_name: &str,
    mtl_file_name: &str,
) -> MeshArtifacts {
    let entries = describe_surfaces(&extraction.surfaces, table);

    let bodies: Vec<Vec<u8>> = obj_pieces(&entries).par_iter().map(ObjPiece::format).collect();
    let labels: Vec<ManifestLabel> = entries.par_iter().map(manifest_label).collect();

    let mut obj = obj_header(table, mtl_file_name, &entries);
    obj.reserve(bodies.iter().map(Vec::len).sum());
    for body in &bodies {
        obj.extend_from_slice(body);
    }

    MeshArtifacts {
        obj,
        mtl: mtl_file(table, &entries),
        manifest: MeshManifest {
            format_version: MANIFEST_FORMAT_VERSION,
            model: table.model.clone(),
            diagnostic: table.diagnostic,
            coordinate_system: COORDINATE_SYSTEM.to_string(),
            files: ManifestFiles { obj: obj_file_name.to_string(), mtl: mtl_file_name.to_string() },
            labels,
            skipped: extraction.skipped.clone(),
        },
    }
}

/// A surface with its description and its names in the OBJ and MTL.
struct SurfaceEntry<'a> {
    surface: &'a LabelSurface,
    description: LabelDescription,
    obj_group: String,
    material: String,
}

/// Looks up each surface's description and gives it a unique OBJ-safe name.
fn describe_surfaces<'a>(surfaces: &'a [LabelSurface], table: &LabelTable) -> Vec<SurfaceEntry<'a>> {
    let mut used_names = HashSet::new();
    surfaces
        .iter()
        .map(|surface| {
            let description = table.find(surface.label).cloned().unwrap_or_else(|| fallback_label(surface.label));
            let base = obj_safe_name(&description.name, surface.label);
            let mut name = base.clone();
            let mut attempt = 1u32;
            while !used_names.insert(name.clone()) {
                name = if attempt == 1 {
                    format!("{base}_{}", surface.label)
                } else {
                    format!("{base}_{}_{attempt}", surface.label)
                };
                attempt += 1;
            }
            SurfaceEntry { surface, description, obj_group: name.clone(), material: name }
        })
        .collect()
}

/// A label name usable as an OBJ object, group and material name: whitespace, control
/// characters and `#` (which starts a comment) become `_`; an empty name becomes `label_<id>`.
fn obj_safe_name(name: &str, id: u16) -> String {
    let safe: String =
        name.chars().map(|c| if c.is_whitespace() || c.is_control() || c == '#' { '_' } else { c }).collect();
    if safe.is_empty() { format!("label_{id}") } else { safe }
}

/// Text for a comment line: line breaks and other control characters become spaces.
fn comment_text(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

fn obj_header(table: &LabelTable, mtl_file_name: &str, entries: &[SurfaceEntry]) -> Vec<u8> {
    let vertices: usize = entries.iter().map(|e| e.surface.positions.len()).sum();
    let triangles: usize = entries.iter().map(|e| e.surface.triangles.len()).sum();
    let mut out = Vec::new();
    // Writing to a Vec<u8> cannot fail.
    let _ = writeln!(out, "# IRIS Oculus label surfaces");
    let _ = writeln!(out, "# model: {}", comment_text(&table.model));
    if !table.diagnostic {
        let _ = writeln!(out, "# NOT FOR DIAGNOSTIC USE");
    }
    let _ = writeln!(out, "# coordinates: {COORDINATE_SYSTEM}");
    let _ = writeln!(out, "# labels: {}, vertices: {vertices}, triangles: {triangles}", entries.len());
    let _ = writeln!(out, "mtllib {mtl_file_name}");
    out
}

/// Vertices or faces written per parallel task, so that one large label is also spread over threads.
const OBJ_LINES_PER_TASK: usize = 1 << 15;

/// A piece of the OBJ body, formatted independently of the others.
enum ObjPiece<'a> {
    /// The object, group and material lines that start a label.
    LabelStart(&'a SurfaceEntry<'a>),
    /// `v` lines.
    Vertices(&'a [[f32; 3]]),
    /// `f` lines; `first` is the 1-based OBJ index of the label's first vertex.
    Faces { triangles: &'a [[u32; 3]], first: u64 },
}

/// The pieces of the OBJ body in file order: per label its start, vertices, then faces whose
/// 1-based indices are offset by the vertices of the labels before it.
fn obj_pieces<'a>(entries: &'a [SurfaceEntry<'a>]) -> Vec<ObjPiece<'a>> {
    let mut pieces = Vec::new();
    let mut first = 1u64;
    for entry in entries {
        pieces.push(ObjPiece::LabelStart(entry));
        pieces.extend(entry.surface.positions.chunks(OBJ_LINES_PER_TASK).map(ObjPiece::Vertices));
        pieces.extend(
            entry.surface.triangles.chunks(OBJ_LINES_PER_TASK).map(|triangles| ObjPiece::Faces { triangles, first }),
        );
        first += entry.surface.positions.len() as u64;
    }
    pieces
}

impl ObjPiece<'_> {
    fn format(&self) -> Vec<u8> {
        match self {
            ObjPiece::LabelStart(entry) => {
                let mut out = Vec::new();
                let _ = writeln!(out, "o {}", entry.obj_group);
                let _ = writeln!(out, "g {}", entry.obj_group);
                let _ = writeln!(out, "usemtl {}", entry.material);
                out
            }
            ObjPiece::Vertices(positions) => {
                let mut out = Vec::with_capacity(36 * positions.len());
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
                let mut out = Vec::with_capacity(24 * triangles.len());
                for triangle in *triangles {
                    out.push(b'f');
                    for &vertex in triangle {
                        out.push(b' ');
                        push_decimal(&mut out, first + u64::from(vertex));
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
fn push_decimal(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

fn mtl_file(table: &LabelTable, entries: &[SurfaceEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = writeln!(out, "# IRIS Oculus label materials");
    let _ = writeln!(out, "# model: {}", comment_text(&table.model));
    for entry in entries {
        let [r, g, b] = entry.description.color.map(|channel| f64::from(channel) / 255.0);
        let _ = writeln!(out);
        let _ = writeln!(out, "newmtl {}", entry.material);
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

fn manifest_label(entry: &SurfaceEntry) -> ManifestLabel {
    let surface = entry.surface;
    let (min, max) = surface.bounding_box_mm().unwrap_or(([0.0; 3], [0.0; 3]));
    ManifestLabel {
        id: surface.label,
        name: entry.description.name.clone(),
        color: entry.description.color,
        voxels: surface.voxels,
        vertices: surface.positions.len(),
        triangles: surface.triangles.len(),
        surface_area_mm2: rounded(surface.surface_area_mm2(), MANIFEST_AREA_DECIMALS),
        enclosed_volume_ml: rounded(surface.signed_volume_mm3() / 1000.0, MANIFEST_VOLUME_DECIMALS),
        bounding_box_mm: ManifestBoundingBox {
            min: min.map(|v| rounded(v, MANIFEST_POSITION_DECIMALS)),
            max: max.map(|v| rounded(v, MANIFEST_POSITION_DECIMALS)),
        },
        obj_group: entry.obj_group.clone(),
        material: entry.material.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use iris_shared::volume::{Affine, Volume};

    use super::*;
    use crate::surface::{ExtractionSettings, extract_surfaces};

    /// One `g` group of a parsed OBJ file.
    #[derive(Debug, Default)]
    struct ParsedGroup {
        name: String,
        object: String,
        material: String,
        /// 1-based indices of the group's first vertex and one past its last.
        vertex_range: (usize, usize),
        faces: Vec<[usize; 3]>,
    }

    #[derive(Debug, Default)]
    struct ParsedObj {
        mtllib: Vec<String>,
        vertices: Vec<[f64; 3]>,
        groups: Vec<ParsedGroup>,
    }

    /// A minimal OBJ reader for what `export_obj` writes; panics on anything else.
    fn parse_obj(bytes: &[u8]) -> ParsedObj {
        let text = std::str::from_utf8(bytes).unwrap();
        let mut parsed = ParsedObj::default();
        let mut pending_object = String::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let Some(keyword) = words.next() else { continue };
            let rest: Vec<&str> = words.collect();
            match keyword {
                "#" => {}
                _ if keyword.starts_with('#') => {}
                "mtllib" => parsed.mtllib.push(rest.join(" ")),
                "o" => pending_object = rest.join(" "),
                "g" => {
                    assert_eq!(rest.len(), 1, "group name without whitespace: {line}");
                    let next = parsed.vertices.len() + 1;
                    parsed.groups.push(ParsedGroup {
                        name: rest[0].to_string(),
                        object: pending_object.clone(),
                        vertex_range: (next, next),
                        ..ParsedGroup::default()
                    });
                }
                "usemtl" => parsed.groups.last_mut().unwrap().material = rest.join(" "),
                "v" => {
                    assert_eq!(rest.len(), 3);
                    parsed.vertices.push([0, 1, 2].map(|n| rest[n].parse().unwrap()));
                    parsed.groups.last_mut().unwrap().vertex_range.1 = parsed.vertices.len() + 1;
                }
                "f" => {
                    assert_eq!(rest.len(), 3);
                    let face = [0, 1, 2].map(|n| rest[n].parse().unwrap());
                    parsed.groups.last_mut().unwrap().faces.push(face);
                }
                other => panic!("unexpected OBJ keyword {other}"),
            }
        }
        parsed
    }

    /// Material name → Kd colour, from an MTL file.
    fn parse_mtl(bytes: &[u8]) -> HashMap<String, [f64; 3]> {
        let text = std::str::from_utf8(bytes).unwrap();
        let mut materials = HashMap::new();
        let mut current = None;
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.first().copied() {
                Some("newmtl") => {
                    current = Some(words[1].to_string());
                    materials.insert(words[1].to_string(), [f64::NAN; 3]);
                }
                Some("Kd") => {
                    let colour = [1, 2, 3].map(|n| words[n].parse().unwrap());
                    materials.insert(current.clone().unwrap(), colour);
                }
                _ => {}
            }
        }
        materials
    }

    fn table() -> LabelTable {
        LabelTable {
            model: "test model".to_string(),
            diagnostic: false,
            labels: vec![
                LabelDescription { id: 1, name: "liver".to_string(), color: [221, 130, 101] },
                LabelDescription { id: 2, name: "left kidney".to_string(), color: [185, 102, 83] },
                LabelDescription { id: 4, name: "liver".to_string(), color: [0, 255, 7] },
            ],
        }
    }

    fn affine() -> Affine {
        Affine([[-0.8, 0.0, 0.0, 90.0], [0.0, 0.8, 0.0, -120.0], [0.0, 0.0, 2.0, -40.0], [0.0, 0.0, 0.0, 1.0]])
    }

    /// Label 1: a 3×3×3 cube; label 2: a 2×2×1 slab; label 4: one voxel; label 9 (not in the
    /// table): a 1×2×1 bar.
    fn label_map() -> Volume<u8> {
        let dims = [10, 8, 6];
        let mut voxels = vec![0u8; dims.iter().product()];
        for k in 0..dims[2] {
            for j in 0..dims[1] {
                for i in 0..dims[0] {
                    let label = match (i, j, k) {
                        (1..=3, 1..=3, 1..=3) => 1,
                        (6..=7, 1..=2, 2) => 2,
                        (8, 6, 4) => 4,
                        (5, 5..=6, 0) => 9,
                        _ => 0,
                    };
                    voxels[i + dims[0] * (j + dims[1] * k)] = label;
                }
            }
        }
        Volume::new(dims, affine(), voxels).unwrap()
    }

    fn export() -> (Extraction, MeshArtifacts) {
        let extraction = extract_surfaces(&label_map(), &ExtractionSettings { minimum_voxels: 1 });
        let artifacts = export_obj(&extraction, &table(), "model.obj", "model.mtl");
        (extraction, artifacts)
    }

    #[test]
    fn obj_has_one_named_group_per_label_with_faces_into_its_own_vertices() {
        let (extraction, artifacts) = export();
        let obj = parse_obj(&artifacts.obj);
        assert_eq!(obj.mtllib, ["model.mtl"]);
        let names: Vec<&str> = obj.groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["liver", "left_kidney", "liver_4", "label_9"]);
        assert_eq!(obj.groups.len(), extraction.surfaces.len());
        for (group, surface) in obj.groups.iter().zip(&extraction.surfaces) {
            assert_eq!(group.object, group.name);
            assert_eq!(group.material, group.name);
            let (start, end) = group.vertex_range;
            assert_eq!(end - start, surface.positions.len());
            assert_eq!(group.faces.len(), surface.triangles.len());
            for face in &group.faces {
                assert!(face.iter().all(|&v| v >= start && v < end), "face {face:?} outside {start}..{end}");
            }
            // Same vertices and faces as the surface, within the printed precision.
            for (n, position) in surface.positions.iter().enumerate() {
                let written = obj.vertices[start - 1 + n];
                assert!((0..3).all(|axis| (written[axis] - f64::from(position[axis])).abs() <= 5e-5));
            }
            for (face, triangle) in group.faces.iter().zip(&surface.triangles) {
                assert_eq!(*face, triangle.map(|v| v as usize + start));
            }
        }
        assert_eq!(obj.vertices.len(), extraction.surfaces.iter().map(|s| s.positions.len()).sum::<usize>());
    }

    #[test]
    fn materials_exist_and_carry_the_label_colours() {
        let (_, artifacts) = export();
        let obj = parse_obj(&artifacts.obj);
        let materials = parse_mtl(&artifacts.mtl);
        assert_eq!(materials.len(), obj.groups.len());
        let expected_colours: [[u8; 3]; 4] = [[221, 130, 101], [185, 102, 83], [0, 255, 7], fallback_label(9).color];
        for (group, expected) in obj.groups.iter().zip(expected_colours) {
            let kd = materials.get(&group.material).unwrap_or_else(|| panic!("no material {}", group.material));
            for channel in 0..3 {
                assert!((kd[channel] - f64::from(expected[channel]) / 255.0).abs() < 1e-6);
            }
        }
        let mtl = String::from_utf8(artifacts.mtl).unwrap();
        assert_eq!(mtl.matches("Ks 0 0 0\n").count(), 4);
        assert_eq!(mtl.matches("d 1\n").count(), 4);
        assert_eq!(mtl.matches("illum 1\n").count(), 4);
    }

    #[test]
    fn manifest_describes_each_label() {
        let (extraction, artifacts) = export();
        let manifest = &artifacts.manifest;
        assert_eq!(manifest.format_version, MANIFEST_FORMAT_VERSION);
        assert_eq!(manifest.model, "test model");
        assert!(!manifest.diagnostic);
        assert_eq!(manifest.coordinate_system, "RAS, millimetres");
        assert_eq!(manifest.files, ManifestFiles { obj: "model.obj".to_string(), mtl: "model.mtl".to_string() });
        assert_eq!(manifest.labels.iter().map(|l| l.id).collect::<Vec<_>>(), [1, 2, 4, 9]);
        assert_eq!(manifest.labels[1].name, "left kidney");
        assert_eq!(manifest.labels[1].obj_group, "left_kidney");
        assert_eq!(manifest.labels[3].name, "label_9");
        assert_eq!(manifest.labels[3].color, fallback_label(9).color);
        for (label, surface) in manifest.labels.iter().zip(&extraction.surfaces) {
            assert_eq!(label.voxels, surface.voxels);
            assert_eq!(label.vertices, surface.positions.len());
            assert_eq!(label.triangles, surface.triangles.len());
            let voxel_ml = affine().linear_determinant().abs() / 1000.0;
            assert!((label.enclosed_volume_ml - surface.voxels as f64 * voxel_ml).abs() <= 1e-6);
        }

        // Label 1 is a 3×3×3 voxel cube of 0.8 × 0.8 × 2 mm voxels: 2.4 × 2.4 × 6 mm.
        let cube = &manifest.labels[0];
        let (a, b, c) = (2.4, 2.4, 6.0);
        let area = 2.0 * (a * b + a * c + b * c);
        assert!((cube.surface_area_mm2 - area).abs() < 1e-5 * area, "f32 positions: about 1e-7 relative");
        assert!((cube.enclosed_volume_ml - a * b * c / 1000.0).abs() <= 1e-6);
        // Voxels 1..=3 span voxel coordinates 0.5..=3.5; x is flipped (LAS).
        let expected_min = [90.0 - 0.8 * 3.5, -120.0 + 0.8 * 0.5, -40.0 + 2.0 * 0.5];
        let expected_max = [90.0 - 0.8 * 0.5, -120.0 + 0.8 * 3.5, -40.0 + 2.0 * 3.5];
        for axis in 0..3 {
            assert!((cube.bounding_box_mm.min[axis] - expected_min[axis]).abs() < 1e-4);
            assert!((cube.bounding_box_mm.max[axis] - expected_max[axis]).abs() < 1e-4);
        }

        // A perfect 1 mm cube on an identity grid: area 6·a², volume a³.
        let volume = Volume::new([1, 1, 1], Affine::identity(), vec![3u8]).unwrap();
        let single = extract_surfaces(&volume, &ExtractionSettings { minimum_voxels: 1 });
        let manifest = export_obj(&single, &table(), "model.obj", "model.mtl").manifest;
        assert_eq!(manifest.labels[0].surface_area_mm2, 6.0);
        assert_eq!(manifest.labels[0].enclosed_volume_ml, 0.001);
        assert_eq!(manifest.labels[0].bounding_box_mm, ManifestBoundingBox { min: [-0.5; 3], max: [0.5; 3] });
    }

    #[test]
    fn manifest_lists_skipped_labels_and_round_trips_through_json() {
        let extraction = extract_surfaces(&label_map(), &ExtractionSettings { minimum_voxels: 3 });
        let manifest = export_obj(&extraction, &table(), "model.obj", "model.mtl").manifest;
        assert_eq!(manifest.labels.iter().map(|l| l.id).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(manifest.skipped.iter().map(|s| (s.label, s.voxels)).collect::<Vec<_>>(), [(4, 1), (9, 2)]);
        let json = serde_json::to_string_pretty(&manifest).unwrap();
        let back: MeshManifest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, manifest);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["labels"][0]["bounding_box_mm"]["min"].as_array().unwrap().len(), 3);
        assert_eq!(value["skipped"][0]["label"], 4);
    }

    #[test]
    fn export_is_byte_identical_across_runs() {
        let (_, first) = export();
        let (_, second) = export();
        assert_eq!(first.obj, second.obj);
        assert_eq!(first.mtl, second.mtl);
        assert_eq!(serde_json::to_vec(&first.manifest).unwrap(), serde_json::to_vec(&second.manifest).unwrap());
    }

    #[test]
    fn background_only_gives_a_valid_obj_without_groups() {
        let volume = Volume::new([3, 2, 2], affine(), vec![0u8; 12]).unwrap();
        let extraction = extract_surfaces(&volume, &ExtractionSettings { minimum_voxels: 1 });
        let artifacts = export_obj(&extraction, &table(), "model.obj", "model.mtl");
        let obj = parse_obj(&artifacts.obj);
        assert_eq!(obj.mtllib, ["model.mtl"]);
        assert!(obj.groups.is_empty() && obj.vertices.is_empty());
        assert!(parse_mtl(&artifacts.mtl).is_empty());
        assert!(artifacts.manifest.labels.is_empty() && artifacts.manifest.skipped.is_empty());
    }

    #[test]
    fn names_are_made_obj_safe_and_unique() {
        assert_eq!(obj_safe_name("left kidney", 2), "left_kidney");
        assert_eq!(obj_safe_name("a\tb\nc#d", 2), "a_b_c_d");
        assert_eq!(obj_safe_name("", 7), "label_7");
        assert_eq!(obj_safe_name("rein gauche é", 3), "rein_gauche_é");
        let surfaces: Vec<LabelSurface> = [1, 2, 3]
            .map(|label| LabelSurface { label, positions: Vec::new(), triangles: Vec::new(), voxels: 1 })
            .into();
        let table = LabelTable {
            model: "m".to_string(),
            diagnostic: true,
            labels: vec![
                LabelDescription { id: 1, name: "x".to_string(), color: [0; 3] },
                LabelDescription { id: 2, name: "x_2".to_string(), color: [0; 3] },
                LabelDescription { id: 3, name: "x".to_string(), color: [0; 3] },
            ],
        };
        let names: Vec<String> = describe_surfaces(&surfaces, &table).into_iter().map(|e| e.obj_group).collect();
        assert_eq!(names, ["x", "x_2", "x_3"]);
    }

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
    fn surfaces_with_bad_indices_do_not_panic() {
        let surface = LabelSurface {
            label: 1,
            positions: vec![[0.0; 3], [1.0, 0.0, 0.0]],
            triangles: vec![[0, 1, 99]],
            voxels: 1,
        };
        let extraction = Extraction { surfaces: vec![surface], skipped: Vec::new() };
        let artifacts = export_obj(&extraction, &table(), "model.obj", "model.mtl");
        assert_eq!(artifacts.manifest.labels[0].surface_area_mm2, 0.0);
        assert_eq!(artifacts.manifest.labels[0].enclosed_volume_ml, 0.0);
    }
}
