//! What tests share across crates: their prerequisites. A test that needs something a bare
//! `cargo test` does not have (a moto server, ONNX Runtime, nnU-Net's Python, the service binaries, the `../shared`
//! data kit) asks for it here; when it is missing the test prints `SKIPPED <test>: <why>` (even
//! under the harness's output capture) and passes, except that `IRIS_TEST_STRICT=1` (set by
//! `scripts/test.sh`, which provides moto, ONNX Runtime and the binaries) turns a missing moto,
//! runtime or binary into a failure, so CI cannot skip them silently. The data kit is never
//! required: it may be absent by design.

use std::path::{Path, PathBuf};

/// Something a test may need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prerequisite {
    /// A moto server (`IRIS_MOTO_URL`).
    Moto,
    /// ONNX Runtime's library and the reference's Python (the ONNX venv).
    OnnxRuntime,
    /// nnU-Net v2 and PyTorch (the nnU-Net venv), for the model importer and nnU-Net's predictor.
    Nnunet,
    /// The workspace's binaries, built (`cargo build --workspace --bins`).
    Binaries,
    /// `../shared/data/totalseg`, the real CT beside the repository.
    SharedData,
}

impl Prerequisite {
    fn how_to_get(self) -> &'static str {
        match self {
            Prerequisite::Moto => "run scripts/test.sh, or `export IRIS_MOTO_URL=$(scripts/moto.sh start)`",
            Prerequisite::OnnxRuntime => "run scripts/test.sh, or `scripts/onnx-env.sh install`",
            Prerequisite::Nnunet => "run scripts/test.sh, or `scripts/nnunet-env.sh install`",
            Prerequisite::Binaries => "run scripts/test.sh, or `cargo build --workspace --bins` first",
            Prerequisite::SharedData => "the ../shared kit is not beside the repository",
        }
    }

    fn strict_applies(self) -> bool {
        self != Prerequisite::SharedData
    }
}

/// True when every prerequisite but the data kit must be present (`IRIS_TEST_STRICT=1`).
pub fn strict() -> bool {
    std::env::var("IRIS_TEST_STRICT").is_ok_and(|value| value == "1")
}

/// `Some(value)` when the prerequisite was found; otherwise prints why `test` is skipped and
/// returns `None`, or panics when the run is strict.
pub fn prerequisite<T>(test: &str, what: Prerequisite, found: Result<T, String>) -> Option<T> {
    match found {
        Ok(value) => Some(value),
        Err(why) if strict() && what.strict_applies() => {
            panic!("IRIS_TEST_STRICT=1 but {test} lacks {what:?}: {why}")
        }
        Err(why) => {
            // Straight to stderr, not through `eprintln!`: the test harness captures the output of
            // a passing test, and a skip must be seen.
            let line = format!("SKIPPED {test}: {why} ({})\n", what.how_to_get());
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
            None
        }
    }
}

/// The moto server's URL (`IRIS_MOTO_URL`), or `None` with the skip printed.
pub fn moto_url(test: &str) -> Option<String> {
    let found = std::env::var("IRIS_MOTO_URL").map_err(|_| "IRIS_MOTO_URL is not set".to_owned());
    prerequisite(test, Prerequisite::Moto, found)
}

/// The repository's root, from a crate's manifest directory (crates sit one or two levels down).
pub fn repository_root(manifest_dir: &str) -> PathBuf {
    let mut directory = Path::new(manifest_dir).to_path_buf();
    while !directory.join("ARCHITECTURE.md").is_file() {
        if !directory.pop() {
            return Path::new(manifest_dir).to_path_buf();
        }
    }
    directory
}

/// A file of `../shared/data/totalseg/` beside the repository, or `None` with the skip printed.
pub fn shared_data(test: &str, manifest_dir: &str, file: &str) -> Option<PathBuf> {
    let path = repository_root(manifest_dir).join("../shared/data/totalseg").join(file);
    let found = if path.exists() { Ok(path) } else { Err(format!("{} is absent", file)) };
    prerequisite(test, Prerequisite::SharedData, found)
}

/// A binary of the workspace built beside the running test executable (`target/<profile>/`),
/// or `None` with the skip printed.
pub fn workspace_binary(test: &str, name: &str) -> Option<PathBuf> {
    let found = binaries_directory()
        .map(|directory| directory.join(name))
        .filter(|path| path.is_file())
        .ok_or_else(|| format!("the binary {name} is not built"));
    prerequisite(test, Prerequisite::Binaries, found)
}

/// `target/<profile>/`, where cargo puts the workspace's binaries: a test executable runs from
/// `target/<profile>/deps/`, a binary from `target/<profile>/` itself.
pub fn binaries_directory() -> Option<PathBuf> {
    let executable = std::env::current_exe().ok()?;
    let directory = executable.parent()?;
    if directory.file_name().is_some_and(|name| name == "deps") {
        directory.parent().map(Path::to_path_buf)
    } else {
        Some(directory.to_path_buf())
    }
}
