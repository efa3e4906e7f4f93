//! The architecture's invariants, checked on the crate graph itself (`cargo tree`, the
//! dependencies a crate's code links, dev-dependencies excluded): a service library cannot name an
//! SDK it does not depend on, so these tests are what keeps "domain code never sees an SDK" true.
//! See ARCHITECTURE.md, "Invariants".

use std::collections::BTreeSet;
use std::process::Command;

/// The packages `package` links, itself excluded (normal and build dependencies, host platform).
fn linked(package: &str) -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = Command::new(cargo)
        .args(["tree", "--locked", "-p", package, "-e", "normal,build", "--prefix", "none", "--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(output.status.success(), "cargo tree -p {package}: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .filter(|name| *name != package)
        .map(str::to_owned)
        .collect()
}

/// The packages of `linked` that `forbidden` names (exact names, or prefixes ending in `*`).
fn offending(linked: &BTreeSet<String>, forbidden: &[&str]) -> Vec<String> {
    linked
        .iter()
        .filter(|name| {
            forbidden.iter().any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => name.as_str() == *pattern,
            })
        })
        .cloned()
        .collect()
}

/// What no domain crate may link: the SDKs, SQLite, the inference library, and every adapter.
const ADAPTERS_AND_SDKS: &[&str] = &[
    "aws-sdk-*",
    "aws-config",
    "rusqlite",
    "libsqlite3-sys",
    "ort",
    "ort-sys",
    "lambda_runtime",
    "iris-aws",
    "iris-embedded",
    "iris-backends",
    "iris-onnxruntime",
];

#[test]
fn the_core_links_no_adapter_sdk_or_volume_code() {
    let linked = linked("iris-core");
    let mut forbidden = ADAPTERS_AND_SDKS.to_vec();
    forbidden.extend(["iris-volume", "nifti", "ndarray", "dicom-*", "iris-ingest", "iris-segment", "iris-mesh"]);
    assert_eq!(offending(&linked, &forbidden), Vec::<String>::new());
}

#[test]
fn no_service_library_links_an_adapter_or_sdk() {
    for service in ["iris-ingest", "iris-segment", "iris-mesh", "iris-notify"] {
        assert_eq!(offending(&linked(service), ADAPTERS_AND_SDKS), Vec::<String>::new(), "{service}");
    }
}

#[test]
fn ingest_segment_and_mesh_never_depend_on_one_another() {
    let services = ["iris-ingest", "iris-segment", "iris-mesh", "iris-notify"];
    for service in services {
        let others: Vec<&str> = services.iter().copied().filter(|other| *other != service).collect();
        assert_eq!(offending(&linked(service), &others), Vec::<String>::new(), "{service}");
    }
}

#[test]
fn notify_and_its_lambda_link_neither_sqlite_nor_the_volume_code() {
    let volume_code = ["rusqlite", "libsqlite3-sys", "iris-embedded", "iris-volume", "nifti", "ndarray"];
    assert_eq!(offending(&linked("iris-notify"), &volume_code), Vec::<String>::new(), "iris-notify");
    let lambda = linked("iris-websocket-lambda");
    assert_eq!(offending(&lambda, &volume_code), Vec::<String>::new(), "iris-websocket-lambda");
    assert!(lambda.contains("iris-aws") && lambda.contains("iris-notify"), "{lambda:?}");
}

#[test]
fn each_adapter_family_stands_alone_and_only_the_wiring_crate_knows_both() {
    assert_eq!(offending(&linked("iris-aws"), &["iris-embedded", "rusqlite", "ort"]), Vec::<String>::new());
    assert_eq!(offending(&linked("iris-embedded"), &["iris-aws", "aws-sdk-*", "ort"]), Vec::<String>::new());
    let nnunet = linked("iris-nnunet");
    assert_eq!(
        offending(&nnunet, &["iris-aws", "iris-embedded", "aws-sdk-*", "rusqlite", "ort"]),
        Vec::<String>::new()
    );
    let onnx = linked("iris-onnxruntime");
    assert_eq!(offending(&onnx, &["iris-aws", "iris-embedded", "aws-sdk-*", "rusqlite"]), Vec::<String>::new());
    let wiring = linked("iris-backends");
    assert!(wiring.contains("iris-aws") && wiring.contains("iris-embedded"), "{wiring:?}");
    assert_eq!(offending(&wiring, &["iris-ingest", "iris-segment", "iris-mesh", "iris-notify"]), Vec::<String>::new());
}

/// The reliability suites and benchmarks live in `iris-dev`, which no shipped binary links.
#[test]
fn the_developer_tools_ship_in_no_production_binary() {
    for shipped in ["iris", "iris-websocket-lambda"] {
        assert_eq!(offending(&linked(shipped), &["iris-dev"]), Vec::<String>::new(), "{shipped}");
    }
}
