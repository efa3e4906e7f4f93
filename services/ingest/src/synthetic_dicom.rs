//! Synthetic CT series written as real DICOM files (explicit VR little endian), for tests and
//! demonstrations: a phantom's slices, with patient attributes filled with a recognisable canary
//! so tests can prove that no identifier travels past ingest.

use std::io::Write;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

/// Appears in every identifying attribute of the synthetic files.
pub const PHI_CANARY: &str = "CANARYPHI";

const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
const MR_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.4";
const ENHANCED_CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2.1";
const EXPLICIT_VR_LITTLE_ENDIAN: &str = "1.2.840.10008.1.2.1";

/// One slice to write.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticSlice {
    pub series_number: u32,
    pub modality: &'static str,
    pub position: [f64; 3],
    pub orientation: [f64; 6],
    /// Row spacing, column spacing (mm).
    pub pixel_spacing: [f64; 2],
    pub rows: usize,
    pub columns: usize,
    /// Hounsfield units, row-major (columns fastest).
    pub hounsfield: Vec<i16>,
    /// False writes the file without PixelData.
    pub with_pixels: bool,
    /// BurnedInAnnotation YES (the pixels may show identifying text); NO otherwise.
    pub burned_in_annotation: bool,
}

/// Axial slices (ImageOrientationPatient 1\0\0\0\1\0) of `hounsfield(column, row, slice)`, `spacing`
/// mm apart starting at `origin`, in series 1.
pub fn axial_series(
    rows: usize,
    columns: usize,
    slices: usize,
    pixel_spacing: [f64; 2],
    slice_spacing: f64,
    origin: [f64; 3],
    hounsfield: impl Fn(usize, usize, usize) -> i16,
) -> Vec<SyntheticSlice> {
    (0..slices)
        .map(|k| SyntheticSlice {
            series_number: 1,
            modality: "CT",
            position: [origin[0], origin[1], origin[2] + k as f64 * slice_spacing],
            orientation: [1.0, 0.0, 0.0, 0.0, 1.0, 0.0],
            pixel_spacing,
            rows,
            columns,
            hounsfield: (0..rows)
                .flat_map(|j| (0..columns).map(move |i| (i, j)))
                .map(|(i, j)| hounsfield(i, j, k))
                .collect(),
            with_pixels: true,
            burned_in_annotation: false,
        })
        .collect()
}

/// The small axial CT series the tests start from (six slices of 8 × 10 pixels, 0.8 × 0.7 mm,
/// 2.5 mm apart, every voxel a distinct value), each slice passed to `change` (slice number, slice)
/// to make it good or bad in one way.
pub fn small_axial_series(mut change: impl FnMut(usize, &mut SyntheticSlice)) -> Vec<SyntheticSlice> {
    let mut slices =
        axial_series(8, 10, 6, [0.8, 0.7], 2.5, [-30.0, -40.0, 100.0], |i, j, k| (i * 10 + j * 3 + k) as i16 - 1000);
    for (k, slice) in slices.iter_mut().enumerate() {
        change(k, slice);
    }
    slices
}

/// Slices with any orientation: ImageOrientationPatient `orientation` (row direction, column
/// direction), slice `k` at `origin + k · slice_spacing · (row × column)`; otherwise as [`axial_series`].
#[allow(clippy::too_many_arguments)]
pub fn oriented_series(
    orientation: [f64; 6],
    rows: usize,
    columns: usize,
    slices: usize,
    pixel_spacing: [f64; 2],
    slice_spacing: f64,
    origin: [f64; 3],
    hounsfield: impl Fn(usize, usize, usize) -> i16,
) -> Vec<SyntheticSlice> {
    let [a, b, c, d, e, f] = orientation;
    let normal = [b * f - c * e, c * d - a * f, a * e - b * d];
    let mut series = axial_series(rows, columns, slices, pixel_spacing, slice_spacing, origin, hounsfield);
    for (k, slice) in series.iter_mut().enumerate() {
        slice.orientation = orientation;
        slice.position = [0, 1, 2].map(|axis| origin[axis] + k as f64 * slice_spacing * normal[axis]);
    }
    series
}

/// One enhanced CT file (multi-frame) holding `slices` as frames, in the order given: orientation
/// and pixel spacing in the shared functional groups, each frame's position in its own group.
/// All slices must share size, orientation and spacing.
pub fn write_multiframe(slices: &[SyntheticSlice]) -> Result<Vec<u8>, String> {
    let first = slices.first().ok_or("no slices")?;
    let instance_uid = "1.2.826.0.1.3680043.10.999.77.1";
    let mut object = InMemDicomObject::new_empty();
    put_ct_pixel_module(&mut object, first.rows, first.columns);
    let mut put = |tag, vr, value: PrimitiveValue| object.put(DataElement::new(tag, vr, value));
    put(tags::SOP_CLASS_UID, VR::UI, ENHANCED_CT_IMAGE_STORAGE.into());
    put(tags::SOP_INSTANCE_UID, VR::UI, instance_uid.into());
    put(tags::SERIES_INSTANCE_UID, VR::UI, "1.2.826.0.1.3680043.10.999.77".into());
    put(tags::PATIENT_NAME, VR::PN, format!("{PHI_CANARY}^JANE").into());
    put(tags::PATIENT_ID, VR::LO, format!("{PHI_CANARY}-ID-0042").into());
    put(tags::MODALITY, VR::CS, "CT".into());
    put(tags::NUMBER_OF_FRAMES, VR::IS, slices.len().to_string().as_str().into());
    put(tags::KVP, VR::DS, "120".into());
    let item = |elements: Vec<DataElement<InMemDicomObject>>| InMemDicomObject::from_element_iter(elements);
    let sequence = |tag, items: Vec<InMemDicomObject>| {
        DataElement::new(tag, VR::SQ, dicom_core::value::DataSetSequence::from(items))
    };
    let shared = item(vec![
        sequence(
            tags::PLANE_ORIENTATION_SEQUENCE,
            vec![item(vec![DataElement::new(
                tags::IMAGE_ORIENTATION_PATIENT,
                VR::DS,
                PrimitiveValue::from(join(&first.orientation).as_str()),
            )])],
        ),
        sequence(
            tags::PIXEL_MEASURES_SEQUENCE,
            vec![item(vec![DataElement::new(
                tags::PIXEL_SPACING,
                VR::DS,
                PrimitiveValue::from(join(&first.pixel_spacing).as_str()),
            )])],
        ),
    ]);
    let per_frame: Vec<InMemDicomObject> = slices
        .iter()
        .map(|slice| {
            item(vec![sequence(
                tags::PLANE_POSITION_SEQUENCE,
                vec![item(vec![DataElement::new(
                    tags::IMAGE_POSITION_PATIENT,
                    VR::DS,
                    PrimitiveValue::from(join(&slice.position).as_str()),
                )])],
            )])
        })
        .collect();
    object.put(sequence(tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE, vec![shared]));
    object.put(sequence(tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE, per_frame));
    let stored: Vec<i16> =
        slices.iter().flat_map(|slice| slice.hounsfield.iter().map(|hu| hu.saturating_add(1024))).collect();
    object.put(DataElement::new(tags::PIXEL_DATA, VR::OW, PrimitiveValue::I16(stored.into())));
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(EXPLICIT_VR_LITTLE_ENDIAN)
        .media_storage_sop_class_uid(ENHANCED_CT_IMAGE_STORAGE)
        .media_storage_sop_instance_uid(instance_uid);
    let file = object.with_meta(meta).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.write_all(&mut bytes).map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// The image pixel module of these files (signed 16-bit, one sample) and the rescale that turns
/// stored values into HU (intercept -1024).
fn put_ct_pixel_module(object: &mut InMemDicomObject, rows: usize, columns: usize) {
    let mut put = |tag, vr, value: PrimitiveValue| object.put(DataElement::new(tag, vr, value));
    put(tags::SAMPLES_PER_PIXEL, VR::US, PrimitiveValue::from(1u16));
    put(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2".into());
    put(tags::ROWS, VR::US, PrimitiveValue::from(rows as u16));
    put(tags::COLUMNS, VR::US, PrimitiveValue::from(columns as u16));
    put(tags::BITS_ALLOCATED, VR::US, PrimitiveValue::from(16u16));
    put(tags::BITS_STORED, VR::US, PrimitiveValue::from(16u16));
    put(tags::HIGH_BIT, VR::US, PrimitiveValue::from(15u16));
    put(tags::PIXEL_REPRESENTATION, VR::US, PrimitiveValue::from(1u16));
    put(tags::RESCALE_INTERCEPT, VR::DS, "-1024".into());
    put(tags::RESCALE_SLOPE, VR::DS, "1".into());
}

fn join(values: &[f64]) -> String {
    values.iter().map(|v| format!("{v}")).collect::<Vec<_>>().join("\\")
}

/// The DICOM file of one slice (128-byte preamble, file meta group, data set).
pub fn write_slice(slice: &SyntheticSlice, instance: u32) -> Result<Vec<u8>, String> {
    let series_uid = format!("1.2.826.0.1.3680043.10.999.{}", slice.series_number);
    let instance_uid = format!("{series_uid}.{instance}");
    let class = if slice.modality == "MR" { MR_IMAGE_STORAGE } else { CT_IMAGE_STORAGE };
    let mut object = InMemDicomObject::new_empty();
    put_ct_pixel_module(&mut object, slice.rows, slice.columns);
    let mut put = |tag, vr, value: PrimitiveValue| object.put(DataElement::new(tag, vr, value));
    put(tags::SOP_CLASS_UID, VR::UI, class.into());
    put(tags::SOP_INSTANCE_UID, VR::UI, instance_uid.as_str().into());
    put(tags::STUDY_INSTANCE_UID, VR::UI, "1.2.826.0.1.3680043.10.999".into());
    put(tags::SERIES_INSTANCE_UID, VR::UI, series_uid.as_str().into());
    put(tags::PATIENT_NAME, VR::PN, format!("{PHI_CANARY}^JANE").into());
    put(tags::PATIENT_ID, VR::LO, format!("{PHI_CANARY}-ID-0042").into());
    put(tags::PATIENT_BIRTH_DATE, VR::DA, "19700101".into());
    put(tags::ACCESSION_NUMBER, VR::SH, format!("{PHI_CANARY}ACC").into());
    put(tags::INSTITUTION_NAME, VR::LO, format!("{PHI_CANARY} HOSPITAL").into());
    put(tags::REFERRING_PHYSICIAN_NAME, VR::PN, format!("{PHI_CANARY}^DR").into());
    put(tags::STUDY_DESCRIPTION, VR::LO, format!("{PHI_CANARY} CHEST").into());
    put(tags::SERIES_DESCRIPTION, VR::LO, format!("{PHI_CANARY} AXIAL").into());
    // OtherPatientIDs (retired, still written by many scanners).
    put(dicom_core::Tag(0x0010, 0x1000), VR::LO, format!("{PHI_CANARY}MRN123456").into());
    put(tags::PATIENT_ADDRESS, VR::LO, format!("1 {PHI_CANARY} STREET").into());
    put(tags::IMAGE_COMMENTS, VR::LT, format!("{PHI_CANARY} scanned after the fall").into());
    // A vendor's private block (creator, then its element), as scanners write them.
    put(dicom_core::Tag(0x0009, 0x0010), VR::LO, "ACME MEDICAL".into());
    put(dicom_core::Tag(0x0009, 0x1001), VR::LO, format!("{PHI_CANARY} PRIVATE").into());
    put(tags::BURNED_IN_ANNOTATION, VR::CS, if slice.burned_in_annotation { "YES" } else { "NO" }.into());
    put(tags::MODALITY, VR::CS, slice.modality.into());
    put(tags::SERIES_NUMBER, VR::IS, slice.series_number.to_string().as_str().into());
    put(tags::INSTANCE_NUMBER, VR::IS, instance.to_string().as_str().into());
    put(tags::IMAGE_POSITION_PATIENT, VR::DS, join(&slice.position).as_str().into());
    put(tags::IMAGE_ORIENTATION_PATIENT, VR::DS, join(&slice.orientation).as_str().into());
    put(tags::PIXEL_SPACING, VR::DS, join(&slice.pixel_spacing).as_str().into());
    put(tags::SLICE_THICKNESS, VR::DS, "2".into());
    put(tags::KVP, VR::DS, "120".into());
    if slice.with_pixels {
        // Stored values are HU + 1024 (RescaleIntercept -1024), as scanners commonly write them.
        let stored: Vec<i16> = slice.hounsfield.iter().map(|hu| hu.saturating_add(1024)).collect();
        put(tags::PIXEL_DATA, VR::OW, PrimitiveValue::I16(stored.into()));
    }
    let meta = FileMetaTableBuilder::new()
        .transfer_syntax(EXPLICIT_VR_LITTLE_ENDIAN)
        .media_storage_sop_class_uid(class)
        .media_storage_sop_instance_uid(instance_uid.as_str());
    let file = object.with_meta(meta).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    file.write_all(&mut bytes).map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// A zip of the slices' files (`series/IM000001.dcm`, …), plus any extra named entries.
pub fn zip_series(slices: &[SyntheticSlice], extra: &[(&str, Vec<u8>)]) -> Result<Vec<u8>, String> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (index, slice) in slices.iter().enumerate() {
        writer.start_file(format!("series/IM{:06}.dcm", index + 1), options).map_err(|e| e.to_string())?;
        writer.write_all(&write_slice(slice, index as u32 + 1)?).map_err(|e| e.to_string())?;
    }
    for (name, body) in extra {
        writer.start_file(*name, options).map_err(|e| e.to_string())?;
        writer.write_all(body).map_err(|e| e.to_string())?;
    }
    writer.finish().map(|cursor| cursor.into_inner()).map_err(|e| e.to_string())
}
