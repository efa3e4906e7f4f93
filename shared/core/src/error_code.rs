//! The failure codes of a job: the only place they are spelled. A FAILED job's record, its
//! `JobFailed` event and every client see one of these (snake_case); the README's error table lists
//! exactly these (a test in this crate compares the two).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Defines [`ErrorCode`], its list and its spelling from one table, so none can miss a code.
macro_rules! error_codes {
    ($($variant:ident => $text:literal,)*) => {
        /// Why a job failed, as a stable machine-readable code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum ErrorCode {
            $($variant,)*
        }

        impl ErrorCode {
            /// Every code, in the README's order.
            pub const ALL: &[ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as it is written in records, events and messages.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $text,)*
                }
            }
        }
    };
}

error_codes! {
    // Ingest: the upload itself.
    UnsupportedFormat => "unsupported_format",
    CorruptFile => "corrupt_file",
    NotAVolume => "not_a_volume",
    TooLarge => "too_large",
    NoDicomImages => "no_dicom_images",
    NoPixelData => "no_pixel_data",
    NoCtSeries => "no_ct_series",
    InconsistentSeries => "inconsistent_series",
    UnevenSliceSpacing => "uneven_slice_spacing",
    GantryTilt => "gantry_tilt",
    UnsupportedTransferSyntax => "unsupported_transfer_syntax",
    BurnedInAnnotation => "burned_in_annotation",
    // Segment: the volume, the job's options and the model.
    NotCtLike => "not_ct_like",
    InvalidOption => "invalid_option",
    ModelNotFound => "model_not_found",
    ModelCardInvalid => "model_card_invalid",
    ModelChecksumMismatch => "model_checksum_mismatch",
    ModelInvalid => "model_invalid",
    ModelRuntimeUnavailable => "model_runtime_unavailable",
    GpuUnavailable => "gpu_unavailable",
    InferenceFailed => "inference_failed",
    // Mesh.
    NotALabelMap => "not_a_label_map",
    VolumeTooLarge => "volume_too_large",
    MeshExportFailed => "mesh_export_failed",
    // Any stage: storage, bugs, limits.
    UploadReplaced => "upload_replaced",
    MissingInput => "missing_input",
    StorageError => "storage_error",
    InternalError => "internal_error",
    TimedOut => "timed_out",
    RetriesExhausted => "retries_exhausted",
}

impl ErrorCode {
    pub fn parse(text: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.iter().copied().find(|code| code.as_str() == text)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_listed_once_and_serialises_as_its_spelling() {
        let mut seen = std::collections::BTreeSet::new();
        for &code in ErrorCode::ALL {
            assert!(seen.insert(code), "{code} listed twice");
            assert_eq!(serde_json::to_value(code).unwrap(), serde_json::Value::String(code.as_str().to_owned()));
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert_eq!(serde_json::from_value::<ErrorCode>(code.as_str().into()).unwrap(), code);
        }
        assert!(serde_json::from_str::<ErrorCode>("\"no_such_code\"").is_err());
    }
}
