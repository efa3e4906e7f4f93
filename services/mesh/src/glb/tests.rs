//! Tests of the GLB writer: the three geometry encodings read back with the gltf crate, bounds,
//! names and colours, and the errors.

use super::*;

/// Two closed labels (one with a name full of spaces and non-ASCII) and one without triangles.
fn sample_meshes() -> Vec<LabelMesh> {
    let centre = [12.5, -40.0, 95.25];
    let tetrahedron_corners = [[1.0, 1.0, 1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]]
        .map(|corner: [f32; 3]| std::array::from_fn(|axis| centre[axis] + 20.0 * corner[axis]));
    let tetrahedron = convex_mesh(
        3,
        "Vena cava inferior – 下大静脈 ✓",
        [200, 120, 80],
        tetrahedron_corners.to_vec(),
        &[[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]],
    );
    let cube_corners: Vec<[f32; 3]> = (0..8)
        .map(|corner| {
            let sign = |bit: u32| if corner & (1 << bit) == 0 { -1.0 } else { 1.0 };
            [-30.0 + 15.5 * sign(0), 22.25 + 15.5 * sign(1), 130.0 + 15.5 * sign(2)]
        })
        .collect();
    let cube_faces = [
        [0, 1, 3],
        [0, 3, 2],
        [4, 5, 7],
        [4, 7, 6],
        [0, 1, 5],
        [0, 5, 4],
        [2, 3, 7],
        [2, 7, 6],
        [0, 2, 6],
        [0, 6, 4],
        [1, 3, 7],
        [1, 7, 5],
    ];
    let cube = convex_mesh(7, "Aorta", [255, 0, 10], cube_corners, &cube_faces);
    let empty = LabelMesh {
        label: 9,
        name: "Empty label".to_owned(),
        color_srgb: [1, 2, 3],
        positions: vec![[0.0; 3]],
        normals: vec![[0.0, 0.0, 1.0]],
        triangles: Vec::new(),
    };
    vec![tetrahedron, empty, cube]
}

/// A convex mesh with every face turned to wind counter-clockwise seen from outside and vertex
/// normals pointing away from the centroid.
fn convex_mesh(label: u16, name: &str, color_srgb: [u8; 3], positions: Vec<[f32; 3]>, faces: &[[u32; 3]]) -> LabelMesh {
    let centroid: [f64; 3] = std::array::from_fn(|axis| {
        positions.iter().map(|position| f64::from(position[axis])).sum::<f64>() / positions.len() as f64
    });
    let point = |index: u32| positions[index as usize].map(f64::from);
    let triangles = faces
        .iter()
        .map(|&[a, b, c]| {
            let normal = cross(subtract(point(b), point(a)), subtract(point(c), point(a)));
            let outward = subtract(point(a), centroid);
            if dot(normal, outward) > 0.0 { [a, b, c] } else { [a, c, b] }
        })
        .collect();
    let normals = positions
        .iter()
        .map(|position| {
            let direction = subtract(position.map(f64::from), centroid);
            let length = dot(direction, direction).sqrt();
            direction.map(|component| (component / length) as f32)
        })
        .collect();
    LabelMesh { label, name: name.to_owned(), color_srgb, positions, normals, triangles }
}

fn subtract(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    std::array::from_fn(|axis| a[axis] - b[axis])
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    (0..3).map(|axis| a[axis] * b[axis]).sum()
}

fn cross(a: [f64; 3], b: [f64; 3]) -> [f64; 3] {
    [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]
}

/// The meshes that get a node: those with triangles, in input order.
fn written(meshes: &[LabelMesh]) -> Vec<&LabelMesh> {
    meshes.iter().filter(|mesh| !mesh.triangles.is_empty()).collect()
}

/// Applies a column-major 4×4 matrix (as `gltf` returns it, `matrix[column][row]`) to a point.
fn transform_point(matrix: [[f32; 4]; 4], point: [f64; 3]) -> [f64; 3] {
    std::array::from_fn(|row| {
        (0..3).map(|column| f64::from(matrix[column][row]) * point[column]).sum::<f64>() + f64::from(matrix[3][row])
    })
}

/// The documented RAS millimetre → glTF metre mapping, written out independently of the matrix.
fn ras_millimetres_to_gltf_metres(point: [f64; 3]) -> [f64; 3] {
    [-0.001 * point[0], 0.001 * point[2], 0.001 * point[1]]
}

fn assert_close(actual: [f64; 3], expected: [f64; 3], tolerance: f64, what: &str) {
    for axis in 0..3 {
        assert!(
            (actual[axis] - expected[axis]).abs() <= tolerance,
            "{what}: {actual:?} vs {expected:?} (tolerance {tolerance})"
        );
    }
}

fn little_endian_u32(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes([bytes[offset], bytes[offset + 1], bytes[offset + 2], bytes[offset + 3]])
}

/// The JSON and BIN chunks of a GLB, after checking the container: header, lengths, chunk
/// types, 4-byte alignment and padding.
fn glb_chunks(glb: &[u8]) -> (&[u8], Option<&[u8]>) {
    assert_eq!(&glb[0..4], b"glTF", "magic");
    assert_eq!(little_endian_u32(glb, 4), 2, "version");
    assert_eq!(little_endian_u32(glb, 8) as usize, glb.len(), "total length");
    let json_length = little_endian_u32(glb, 12) as usize;
    assert_eq!(little_endian_u32(glb, 16), GLB_CHUNK_JSON);
    assert_eq!(json_length % 4, 0, "JSON chunk length is a multiple of 4");
    let json = &glb[20..20 + json_length];
    let unpadded = json.trim_ascii_end();
    assert!(json[unpadded.len()..].iter().all(|byte| *byte == b' '), "JSON padded with spaces");
    assert!(serde_json::from_slice::<Value>(unpadded).is_ok(), "JSON chunk parses");
    let binary_start = 20 + json_length;
    if binary_start == glb.len() {
        return (json, None);
    }
    assert_eq!(binary_start % 4, 0, "BIN chunk aligned");
    let binary_length = little_endian_u32(glb, binary_start) as usize;
    assert_eq!(little_endian_u32(glb, binary_start + 4), GLB_CHUNK_BIN);
    assert_eq!(binary_length % 4, 0, "BIN chunk length is a multiple of 4");
    assert_eq!(binary_start + 8 + binary_length, glb.len(), "BIN chunk is the last chunk");
    (json, Some(&glb[binary_start + 8..]))
}

fn json_root(glb: &[u8]) -> Root {
    Root::from_slice(glb_chunks(glb).0).expect("the JSON chunk is a glTF root")
}

fn write(meshes: &[LabelMesh], geometry: GlbGeometry) -> Vec<u8> {
    write_glb(meshes, geometry, "iris-mesh test").expect("the sample meshes are valid")
}

/// Reads a document without validation, checking that the only validation findings are the
/// extensions `gltf` does not implement (it rejects any required extension it lacks).
fn unvalidated_document(glb: &[u8], geometry: GlbGeometry) -> gltf::Gltf {
    match gltf::Gltf::from_slice(glb) {
        Ok(_) => assert_eq!(geometry, GlbGeometry::Float, "{geometry}: only float geometry needs no extension"),
        Err(gltf::Error::Validation(errors)) => {
            assert!(!errors.is_empty());
            for (path, error) in &errors {
                assert!(
                    path.as_str().starts_with("extensionsRequired[")
                        && *error == gltf_json::validation::Error::Unsupported,
                    "{geometry}: unexpected validation error {path:?}: {error:?}"
                );
            }
        }
        Err(error) => panic!("{geometry}: not a readable GLB: {error}"),
    }
    gltf::Gltf::from_slice_without_validation(glb).expect("readable GLB")
}

fn label_of(extras: &gltf_json::Extras) -> Value {
    let raw = extras.as_ref().expect("extras present");
    serde_json::from_str(raw.get()).expect("extras are JSON")
}

/// The bytes of element `index` of an accessor: view offset + accessor offset + index × stride.
fn element_bytes<'a>(binary: &'a [u8], accessor: &gltf::Accessor, index: usize) -> &'a [u8] {
    let view = accessor.view().expect("accessor has a view");
    assert_eq!(view.buffer().index(), 0, "data lives in the BIN chunk");
    let stride = view.stride().unwrap_or(accessor.size());
    let start = view.offset() + accessor.offset() + index * stride;
    &binary[start..start + accessor.size()]
}

fn expected_linear(value: u8) -> f64 {
    let encoded = f64::from(value) / 255.0;
    if encoded <= 0.04045 { encoded / 12.92 } else { ((encoded + 0.055) / 1.055).powf(2.4) }
}

#[test]
fn geometry_option_parses_and_prints() {
    let cases = [
        ("float", Some(GlbGeometry::Float)),
        ("quantized", Some(GlbGeometry::Quantized)),
        ("meshopt", Some(GlbGeometry::MeshoptCompressed)),
        ("Float", None),
        ("draco", None),
        ("", None),
    ];
    for (text, expected) in cases {
        match expected {
            Some(geometry) => {
                assert_eq!(GlbGeometry::parse(text), Ok(geometry));
                assert_eq!(text.parse::<GlbGeometry>(), Ok(geometry));
                assert_eq!(geometry.as_str(), text);
                assert_eq!(geometry.to_string(), text);
            }
            None => {
                let error = GlbGeometry::parse(text).expect_err(text);
                assert_eq!(error.given, text);
                assert!(error.to_string().contains("\"meshopt\""));
            }
        }
    }
    for geometry in GlbGeometry::ALL {
        assert_eq!(GlbGeometry::parse(geometry.as_str()), Ok(geometry));
    }
}

#[test]
fn container_is_well_formed_for_every_geometry() {
    let meshes = sample_meshes();
    for geometry in GlbGeometry::ALL {
        let glb = write(&meshes, geometry);
        let (_, binary) = glb_chunks(&glb);
        let binary = binary.expect("geometry goes into a BIN chunk");
        let root = json_root(&glb);
        assert_eq!(root.buffers[0].byte_length.0 as usize, binary.len(), "{geometry}: buffer 0 is the BIN chunk");
        assert!(root.buffers[0].uri.is_none());
        for view in &root.buffer_views {
            assert_eq!(view.byte_offset.unwrap_or_default().0 % 4, 0, "{geometry}: view aligned");
            let buffer = &root.buffers[view.buffer.value()];
            assert!(view.byte_offset.unwrap_or_default().0 + view.byte_length.0 <= buffer.byte_length.0);
        }
        assert_eq!(root.asset.version, "2.0");
        assert_eq!(root.asset.generator.as_deref(), Some("iris-mesh test"));
    }
}

#[test]
fn nodes_meshes_and_materials_are_named_and_labelled_for_every_geometry() {
    let meshes = sample_meshes();
    let expected = written(&meshes);
    for geometry in GlbGeometry::ALL {
        let glb = write(&meshes, geometry);
        let document = unvalidated_document(&glb, geometry);
        let scene = document.default_scene().expect("default scene");
        let roots: Vec<_> = scene.nodes().collect();
        assert_eq!(roots.len(), 1, "{geometry}: one root node");
        assert_eq!(roots[0].name(), Some(ROOT_NODE_NAME));
        assert!(roots[0].mesh().is_none());
        let children: Vec<_> = roots[0].children().collect();
        assert_eq!(children.len(), expected.len(), "{geometry}: one node per label with triangles");
        assert_eq!(document.meshes().count(), expected.len());
        assert_eq!(document.materials().count(), expected.len());
        for (node, mesh) in children.iter().zip(&expected) {
            assert_eq!(node.name(), Some(mesh.name.as_str()), "{geometry}: node name");
            assert_eq!(label_of(node.extras()), json!({ "label": mesh.label }));
            let gltf_mesh = node.mesh().expect("label node has a mesh");
            assert_eq!(gltf_mesh.name(), Some(mesh.name.as_str()), "{geometry}: mesh name");
            assert_eq!(label_of(gltf_mesh.extras()), json!({ "label": mesh.label }));
            let primitives: Vec<_> = gltf_mesh.primitives().collect();
            assert_eq!(primitives.len(), 1);
            let primitive = &primitives[0];
            assert_eq!(primitive.mode(), gltf::mesh::Mode::Triangles);
            let positions = primitive.get(&gltf::Semantic::Positions).expect("POSITION");
            let normals = primitive.get(&gltf::Semantic::Normals).expect("NORMAL");
            let indices = primitive.indices().expect("indices");
            assert_eq!(positions.count(), mesh.positions.len(), "{geometry}: POSITION count");
            assert_eq!(normals.count(), mesh.normals.len(), "{geometry}: NORMAL count");
            assert_eq!(indices.count(), 3 * mesh.triangles.len(), "{geometry}: index count");
            assert_eq!(indices.data_type(), gltf::accessor::DataType::U16, "{geometry}: small labels use u16");
            let material = primitive.material();
            assert_eq!(material.name(), Some(mesh.name.as_str()), "{geometry}: material name");
            assert!(!material.double_sided());
            assert_eq!(material.alpha_mode(), gltf::material::AlphaMode::Opaque);
            let pbr = material.pbr_metallic_roughness();
            let base_colour = pbr.base_color_factor();
            for (actual, srgb) in base_colour.iter().zip(mesh.color_srgb) {
                let expected_value = expected_linear(srgb);
                assert!(
                    (f64::from(*actual) - expected_value).abs() <= 1e-6,
                    "{geometry}: sRGB {srgb} of {:?} became {actual}, not {expected_value}",
                    mesh.color_srgb,
                );
            }
            assert_eq!(base_colour[3], 1.0);
            assert_eq!(pbr.metallic_factor(), 0.0);
            assert_eq!(pbr.roughness_factor(), MATERIAL_ROUGHNESS);
        }
    }
}

#[test]
fn linear_colour_covers_both_branches_of_the_srgb_curve() {
    // 10/255 ≈ 0.0392 is on the linear segment, 200/255 on the power segment.
    assert_eq!(srgb_to_linear(0), 0.0);
    assert_eq!(srgb_to_linear(255), 1.0);
    assert!((f64::from(srgb_to_linear(10)) - 10.0 / 255.0 / 12.92).abs() < 1e-7);
    assert!((f64::from(srgb_to_linear(200)) - 0.577_580_4).abs() < 1e-6);
}

#[test]
fn root_matrix_maps_ras_millimetres_to_gltf_metres() {
    let glb = write(&sample_meshes(), GlbGeometry::Float);
    let document = gltf::Gltf::from_slice(&glb).expect("float GLB validates");
    let root = document.default_scene().and_then(|scene| scene.nodes().next()).expect("root node");
    let matrix = root.transform().matrix();
    // The f32 matrix entries are 0.001 to within 5e-8 relative.
    assert_close(transform_point(matrix, [10.0, 20.0, 30.0]), [-0.01, 0.03, 0.02], 1e-8, "(10, 20, 30) mm");
    for point in [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [-3.5, 250.0, -1200.0]] {
        assert_close(transform_point(matrix, point), ras_millimetres_to_gltf_metres(point), 1e-7, "root matrix");
    }
    let linear: [[f64; 3]; 3] = std::array::from_fn(|row| std::array::from_fn(|column| f64::from(matrix[column][row])));
    let determinant = dot(linear[0], cross(linear[1], linear[2]));
    assert!((determinant - 1e-9).abs() < 1e-15, "proper rotation × 0.001³, got {determinant}");
}

#[test]
fn float_geometry_reads_back_exactly_through_gltf() {
    let meshes = sample_meshes();
    let glb = write(&meshes, GlbGeometry::Float);
    let document = gltf::Gltf::from_slice(&glb).expect("float GLB passes gltf validation");
    assert_eq!(document.extensions_required().count(), 0);
    let binary = document.blob.as_deref().expect("BIN chunk");
    let root = document.default_scene().and_then(|scene| scene.nodes().next()).expect("root node");
    let root_matrix = root.transform().matrix();
    for (node, mesh) in root.children().zip(written(&meshes)) {
        let node_matrix = node.transform().matrix();
        assert_eq!(
            node_matrix,
            gltf::scene::Transform::Decomposed {
                translation: [0.0; 3],
                rotation: [0.0, 0.0, 0.0, 1.0],
                scale: [1.0; 3]
            }
            .matrix()
        );
        let primitive = node.mesh().and_then(|gltf_mesh| gltf_mesh.primitives().next()).expect("primitive");
        let position_accessor = primitive.get(&gltf::Semantic::Positions).expect("POSITION");
        assert_eq!(position_accessor.data_type(), gltf::accessor::DataType::F32);
        assert_eq!(position_accessor.dimensions(), gltf::accessor::Dimensions::Vec3);
        let (minimum, maximum) = float_bounds(&mesh.positions);
        assert_eq!(position_accessor.min(), Some(json!(minimum)));
        assert_eq!(position_accessor.max(), Some(json!(maximum)));
        let reader = primitive.reader(|buffer| (buffer.index() == 0).then_some(binary));
        let positions: Vec<[f32; 3]> = reader.read_positions().expect("positions").collect();
        let normals: Vec<[f32; 3]> = reader.read_normals().expect("normals").collect();
        let indices: Vec<u32> = reader.read_indices().expect("indices").into_u32().collect();
        assert_eq!(positions, mesh.positions);
        assert_eq!(normals, mesh.normals);
        assert_eq!(indices, mesh.triangles.iter().flatten().copied().collect::<Vec<_>>());
        for position in &positions {
            let world = transform_point(root_matrix, transform_point(node_matrix, position.map(f64::from)));
            let expected = ras_millimetres_to_gltf_metres(position.map(f64::from));
            assert_close(world, expected, 2e-8, "float position in glTF metres");
        }
    }
}

#[test]
fn quantized_geometry_dequantises_within_half_a_step() {
    let meshes = sample_meshes();
    let glb = write(&meshes, GlbGeometry::Quantized);
    let document = unvalidated_document(&glb, GlbGeometry::Quantized);
    assert_eq!(document.extensions_used().collect::<Vec<_>>(), [KHR_MESH_QUANTIZATION]);
    assert_eq!(document.extensions_required().collect::<Vec<_>>(), [KHR_MESH_QUANTIZATION]);
    let binary = document.blob.as_deref().expect("BIN chunk");
    let root = document.default_scene().and_then(|scene| scene.nodes().next()).expect("root node");
    let root_matrix = root.transform().matrix();
    for (node, mesh) in root.children().zip(written(&meshes)) {
        let gltf::scene::Transform::Decomposed { translation, rotation, scale } = node.transform() else {
            panic!("label nodes carry translation / scale, not a matrix");
        };
        assert_eq!(rotation, [0.0, 0.0, 0.0, 1.0]);
        assert!(scale[0] > 0.0 && scale[0] == scale[1] && scale[1] == scale[2], "uniform scale {scale:?}");
        let step = f64::from(scale[0]);
        let node_matrix = node.transform().matrix();
        let primitive = node.mesh().and_then(|gltf_mesh| gltf_mesh.primitives().next()).expect("primitive");

        let positions = primitive.get(&gltf::Semantic::Positions).expect("POSITION");
        assert_eq!(positions.data_type(), gltf::accessor::DataType::I16);
        assert_eq!(positions.dimensions(), gltf::accessor::Dimensions::Vec3);
        assert!(!positions.normalized());
        assert_eq!(positions.view().and_then(|view| view.stride()), Some(8));
        let stored: Vec<[i16; 3]> = (0..positions.count())
            .map(|index| {
                let bytes = element_bytes(binary, &positions, index);
                std::array::from_fn(|axis| i16::from_le_bytes([bytes[2 * axis], bytes[2 * axis + 1]]))
            })
            .collect();
        let (minimum, maximum) = integer_bounds(&stored);
        assert_eq!(positions.min(), Some(json!(minimum)), "min is the stored integers");
        assert_eq!(positions.max(), Some(json!(maximum)), "max is the stored integers");
        for (quantized, original) in stored.iter().zip(&mesh.positions) {
            let dequantized: [f64; 3] =
                std::array::from_fn(|axis| f64::from(translation[axis]) + step * f64::from(quantized[axis]));
            assert_close(dequantized, original.map(f64::from), step * 0.5 * (1.0 + 1e-9), "dequantized mm");
            let through_node = transform_point(node_matrix, quantized.map(f64::from));
            assert_close(through_node, dequantized, 1e-4 * step, "node TRS is the dequantisation");
            let world = transform_point(root_matrix, through_node);
            let expected = ras_millimetres_to_gltf_metres(original.map(f64::from));
            assert_close(world, expected, 0.001 * step * (0.5 + 1e-3) + 2e-8, "quantized position in glTF metres");
        }
        // The grid spans the label: the extreme integers are near ±32 767, never beyond.
        assert!(minimum.iter().chain(&maximum).all(|value| value.unsigned_abs() <= 32_767));
        assert!(minimum.iter().chain(&maximum).any(|value| value.unsigned_abs() >= 32_700));

        let normals = primitive.get(&gltf::Semantic::Normals).expect("NORMAL");
        assert_eq!(normals.data_type(), gltf::accessor::DataType::I8);
        assert!(normals.normalized());
        assert_eq!(normals.view().and_then(|view| view.stride()), Some(4));
        for (index, original) in mesh.normals.iter().enumerate() {
            let bytes = element_bytes(binary, &normals, index);
            let decoded: [f64; 3] = std::array::from_fn(|axis| (f64::from(bytes[axis] as i8) / 127.0).max(-1.0));
            assert_close(decoded, original.map(f64::from), 0.5 / 127.0 + 1e-6, "normal");
        }

        let reader = primitive.reader(|buffer| (buffer.index() == 0).then_some(binary));
        let indices: Vec<u32> = reader.read_indices().expect("indices").into_u32().collect();
        assert_eq!(indices, mesh.triangles.iter().flatten().copied().collect::<Vec<_>>());
    }
}

/// Each triangle rotated (winding kept) so that its smallest index comes first.
fn rotated_to_smallest_first(indices: &[u32]) -> Vec<[u32; 3]> {
    indices
        .chunks_exact(3)
        .map(|triangle| {
            let first = (0..3).min_by_key(|corner| triangle[*corner]).unwrap_or(0);
            std::array::from_fn(|corner| triangle[(first + corner) % 3])
        })
        .collect()
}

#[test]
fn meshopt_geometry_decodes_to_the_quantized_layout() {
    let meshes = sample_meshes();
    let quantized_glb = write(&meshes, GlbGeometry::Quantized);
    let compressed_glb = write(&meshes, GlbGeometry::MeshoptCompressed);
    let quantized = json_root(&quantized_glb);
    let quantized_binary = glb_chunks(&quantized_glb).1.expect("BIN chunk");
    let compressed = json_root(&compressed_glb);
    let compressed_binary = glb_chunks(&compressed_glb).1.expect("BIN chunk");

    assert_eq!(compressed.extensions_used, [EXT_MESHOPT_COMPRESSION, KHR_MESH_QUANTIZATION]);
    assert_eq!(compressed.extensions_required, [EXT_MESHOPT_COMPRESSION, KHR_MESH_QUANTIZATION]);
    // Same scene, accessors, meshes and materials as the quantized layout; only views and buffers differ.
    for (what, left, right) in [
        ("nodes", serde_json::to_value(&compressed.nodes), serde_json::to_value(&quantized.nodes)),
        ("meshes", serde_json::to_value(&compressed.meshes), serde_json::to_value(&quantized.meshes)),
        ("materials", serde_json::to_value(&compressed.materials), serde_json::to_value(&quantized.materials)),
        ("accessors", serde_json::to_value(&compressed.accessors), serde_json::to_value(&quantized.accessors)),
    ] {
        assert_eq!(left.expect("serialises"), right.expect("serialises"), "{what}");
    }

    assert_eq!(compressed.buffers.len(), 2);
    assert_eq!(compressed.buffers[0].byte_length.0 as usize, compressed_binary.len());
    let fallback = &compressed.buffers[1];
    assert!(fallback.uri.is_none(), "the fallback buffer has no data");
    let fallback_extension =
        fallback.extensions.as_ref().and_then(|extension| extension.others.get(EXT_MESHOPT_COMPRESSION));
    assert_eq!(fallback_extension, Some(&json!({ "fallback": true })));

    assert_eq!(compressed.buffer_views.len(), quantized.buffer_views.len());
    for (index, (view, plain_view)) in compressed.buffer_views.iter().zip(&quantized.buffer_views).enumerate() {
        assert_eq!(view.buffer.value(), 1, "view {index} declares its data in the fallback buffer");
        assert!(view.byte_offset.unwrap_or_default().0 + view.byte_length.0 <= fallback.byte_length.0);
        assert_eq!(view.byte_length, plain_view.byte_length);
        assert_eq!(view.byte_stride, plain_view.byte_stride);
        assert_eq!(view.target, plain_view.target);
        let extension = view
            .extensions
            .as_ref()
            .and_then(|extension| extension.others.get(EXT_MESHOPT_COMPRESSION))
            .expect("view has an EXT_meshopt_compression object");
        let field = |name: &str| extension[name].as_u64().unwrap_or_else(|| panic!("view {index}: {name}")) as usize;
        assert_eq!(field("buffer"), 0, "compressed bytes live in the BIN chunk");
        let (offset, length, stride, count) =
            (field("byteOffset"), field("byteLength"), field("byteStride"), field("count"));
        assert_eq!(offset % 4, 0);
        assert_eq!(stride * count, view.byte_length.0 as usize, "byteLength = byteStride × count");
        if let Some(parent_stride) = view.byte_stride {
            assert_eq!(parent_stride.0, stride);
        }
        let encoded = &compressed_binary[offset..offset + length];
        let plain_start = plain_view.byte_offset.unwrap_or_default().0 as usize;
        let plain = &quantized_binary[plain_start..plain_start + plain_view.byte_length.0 as usize];
        match extension["mode"].as_str() {
            Some("ATTRIBUTES") => {
                assert_eq!(encoded[0], 0xa0, "vertex codec version 0");
                let decoded = match stride {
                    4 => meshopt::decode_vertex_buffer::<[u8; 4]>(encoded, count).expect("decodes").concat(),
                    8 => meshopt::decode_vertex_buffer::<[u8; 8]>(encoded, count).expect("decodes").concat(),
                    other => panic!("unexpected attribute stride {other}"),
                };
                assert_eq!(decoded, plain, "view {index} decodes to the quantized bytes");
            }
            Some("TRIANGLES") => {
                assert_eq!(encoded[0], 0xe1, "index codec version 1");
                assert_eq!(count % 3, 0);
                let decoded: Vec<u32> = match stride {
                    2 => meshopt::decode_index_buffer::<u16>(encoded, count)
                        .expect("decodes")
                        .into_iter()
                        .map(u32::from)
                        .collect(),
                    4 => meshopt::decode_index_buffer::<u32>(encoded, count).expect("decodes"),
                    other => panic!("unexpected index stride {other}"),
                };
                let plain: Vec<u32> = plain
                    .chunks_exact(stride)
                    .map(|bytes| bytes.iter().rev().fold(0, |value, byte| value << 8 | u32::from(*byte)))
                    .collect();
                // The triangle codec keeps the triangle order and winding but may rotate the
                // three indices of a triangle.
                assert_eq!(rotated_to_smallest_first(&decoded), rotated_to_smallest_first(&plain), "view {index}");
            }
            other => panic!("unexpected mode {other:?}"),
        }
    }
}

#[test]
fn index_width_follows_vertex_count() {
    for (vertex_count, expected) in [(65_535_usize, ComponentType::U16), (65_536, ComponentType::U32)] {
        let last = u32::try_from(vertex_count - 1).expect("fits");
        let mesh = LabelMesh {
            label: 1,
            name: "strip".to_owned(),
            color_srgb: [10, 20, 30],
            positions: (0..vertex_count).map(|index| [index as f32 * 0.01, (index % 7) as f32, 0.0]).collect(),
            normals: vec![[0.0, 0.0, 1.0]; vertex_count],
            triangles: vec![[0, 1, last], [last - 2, last - 1, last]],
        };
        for geometry in GlbGeometry::ALL {
            let root = json_root(&write(std::slice::from_ref(&mesh), geometry));
            let indices = root.meshes[0].primitives[0].indices.expect("indexed");
            let accessor = &root.accessors[indices.value()];
            let Checked::Valid(GenericComponentType(actual)) = accessor.component_type else {
                panic!("{geometry}: invalid index component type");
            };
            assert_eq!(actual, expected, "{geometry}");
            assert_eq!(accessor.count.0, 6);
        }
    }
}

#[test]
fn labels_without_triangles_get_no_node_and_no_labels_give_an_empty_scene() {
    let meshes = sample_meshes();
    for geometry in GlbGeometry::ALL {
        let root = json_root(&write(&meshes, geometry));
        assert!(root.nodes.iter().all(|node| node.name.as_deref() != Some("Empty label")), "{geometry}");
        assert_eq!(root.nodes.len(), 3);

        let glb = write(&meshes[1..2], geometry);
        let (_, binary) = glb_chunks(&glb);
        assert!(binary.is_none(), "{geometry}: no geometry, no BIN chunk");
        let document = gltf::Gltf::from_slice(&glb).expect("an empty scene is valid glTF");
        assert_eq!(document.extensions_used().count(), 0);
        assert_eq!(document.buffers().count(), 0);
        let root_node = document.default_scene().and_then(|scene| scene.nodes().next()).expect("root node");
        assert_eq!(root_node.name(), Some(ROOT_NODE_NAME));
        assert_eq!(root_node.children().count(), 0);
    }
}

#[test]
fn output_is_deterministic() {
    let meshes = sample_meshes();
    for geometry in GlbGeometry::ALL {
        assert_eq!(write(&meshes, geometry), write(&meshes.clone(), geometry), "{geometry}");
    }
}

#[test]
fn invalid_meshes_are_errors() {
    let valid = sample_meshes().swap_remove(0);
    let mut out_of_range = valid.clone();
    out_of_range.triangles[1][2] = 4;
    let mut missing_normal = valid.clone();
    missing_normal.normals.pop();
    let mut not_a_number = valid.clone();
    not_a_number.positions[2][1] = f32::NAN;
    let mut infinite_normal = valid.clone();
    infinite_normal.normals[3][0] = f32::INFINITY;
    for geometry in GlbGeometry::ALL {
        assert!(matches!(
            write_glb(std::slice::from_ref(&out_of_range), geometry, "test"),
            Err(GlbError::IndexOutOfRange { label: 3, index: 4, vertex_count: 4 })
        ));
        assert!(matches!(
            write_glb(std::slice::from_ref(&missing_normal), geometry, "test"),
            Err(GlbError::NormalCountMismatch { label: 3, positions: 4, normals: 3 })
        ));
        assert!(matches!(
            write_glb(std::slice::from_ref(&not_a_number), geometry, "test"),
            Err(GlbError::NonFiniteVertex { label: 3, vertex: 2 })
        ));
        assert!(matches!(
            write_glb(std::slice::from_ref(&infinite_normal), geometry, "test"),
            Err(GlbError::NonFiniteVertex { label: 3, vertex: 3 })
        ));
    }
}

#[test]
fn position_grid_handles_a_single_point() {
    let grid = PositionGrid::covering(&[[5.0, -6.0, 7.5]]);
    assert_eq!(grid, PositionGrid { translation: [5.0, -6.0, 7.5], step: 1.0 });
    assert_eq!(grid.quantize([5.0, -6.0, 7.5]), [0, 0, 0]);
}
