#!/usr/bin/env python3
"""Moves fuzz corpus entries that carry bytes of the real test files out of the committed corpus.

    python3 scripts/fuzz_keep_real_data_out.py DATA_DIR CORPUS_DIR SEEDS_DIR [COMMITTED...]

The real files in DATA_DIR (../shared/data/totalseg: the CT, the label map, the DICOM series;
their NOTICE.md asks that they never be copied into the repository) seed the fuzzers, so
libFuzzer's mutations of them end up in CORPUS_DIR. An entry is moved to SEEDS_DIR (ignored by
git) when it holds any WINDOW consecutive bytes found in a real file, as stored or, for
gzip-compressed files, decompressed. Windows with fewer than MIN_DISTINCT distinct byte values
(runs of zeros, padding) are not counted: they are in every file; nor are windows found in a file
that is, or is under, a COMMITTED path (the repository's own synthetic DICOM and NIfTI fixtures and seeds share
standard headers, UIDs and codec markers with the real files). Prints how many entries moved.
Scripts/fuzz.sh runs it after `cargo fuzz cmin`.
"""

import gzip
import sys
from pathlib import Path

WINDOW = 32
# An entry is checked at every STRIDE-th offset, so a shared run of WINDOW + STRIDE - 1 bytes or
# more is always found.
STRIDE = 8
MIN_DISTINCT = 6


def file_bytes(place: Path):
    for path in [place] if place.is_file() else sorted(place.rglob("*")):
        if not path.is_file() or path.suffix in (".md", ".json"):
            continue
        content = path.read_bytes()
        yield content
        if content[:2] == b"\x1f\x8b":
            yield gzip.decompress(content)


def informative(window: bytes) -> bool:
    return len(set(window)) >= MIN_DISTINCT


def main() -> int:
    data_dir, corpus_dir, seeds_dir = (Path(argument) for argument in sys.argv[1:4])
    if not data_dir.is_dir():
        print(f"fuzz-filter: {data_dir} is absent: nothing to compare with, corpus left as is", file=sys.stderr)
        return 0
    windows = set()
    for content in file_bytes(data_dir):
        for start in range(len(content) - WINDOW + 1):
            window = content[start : start + WINDOW]
            if informative(window):
                windows.add(hash(window))
    for committed in sys.argv[4:]:
        for content in file_bytes(Path(committed)):
            for start in range(len(content) - WINDOW + 1):
                windows.discard(hash(content[start : start + WINDOW]))
    seeds_dir.mkdir(parents=True, exist_ok=True)
    moved = 0
    for entry in sorted(corpus_dir.iterdir()):
        if not entry.is_file():
            continue
        content = entry.read_bytes()
        for start in range(0, max(len(content) - WINDOW + 1, 0), STRIDE):
            window = content[start : start + WINDOW]
            if hash(window) in windows and informative(window):
                entry.rename(seeds_dir / f"found-{entry.name}")
                moved += 1
                break
    print(f"fuzz-filter: {corpus_dir}: {moved} entries holding bytes of the real files moved to {seeds_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
