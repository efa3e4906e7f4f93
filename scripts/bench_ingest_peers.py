#!/usr/bin/env python3
"""Peer tools for scripts/bench-ingest.sh: one operation per invocation, so each run is its own
process with its own wall time and peak RSS.

    bench_ingest_peers.py make-input OUT.nii.gz [SLICES] 512×512×SLICES (default 300) int16 CT-like volume, LPS affine
    bench_ingest_peers.py make-zip DIR OUT.zip           zip a DICOM series (flat, deflated)
    bench_ingest_peers.py make-long-series DIR OUT N     N slices: DIR's slices repeated along the slice normal
    bench_ingest_peers.py nibabel IN.nii.gz OUT.nii.gz   load + as_closest_canonical + save
    bench_ingest_peers.py simpleitk-nifti IN OUT         ReadImage + DICOMOrient("RAS") + WriteImage(compressed)
    bench_ingest_peers.py dicom2nifti DIR OUT.nii.gz     dicom_series_to_nifti, JPEG 2000 via pylibjpeg-openjpeg
    bench_ingest_peers.py simpleitk-dicom DIR OUT        GDCM series reader + DICOMOrient("RAS") + WriteImage
    bench_ingest_peers.py compare REF OUT [OUT...]       same grid and voxels once both are RAS (nibabel)
    bench_ingest_peers.py versions                       one "name version" line per peer package
    bench_ingest_peers.py measure OUTFILE -- CMD...      run CMD, write "wall_s peak_rss_kib" (no GNU time)
    bench_ingest_peers.py report RESULTS.tsv META.json    Markdown section from the measurements
    bench_ingest_peers.py record FILE SECTION.md          put SECTION between FILE's ingest markers

The last four use only the standard library.

Imports are done inside each operation so a run pays only for the libraries it uses.
"""

import sys

# SimpleITK's DICOMOrient takes the DICOM convention: each letter names the direction an axis
# increases TOWARDS, in ITK's LPS world. Checked against nibabel with SimpleITK 2.5 (ITK 5.4):
# "RAS" gives nibabel axcodes ('R', 'A', 'S') and the same affine as as_closest_canonical
# ("LPI", the "from" reading of the older itk::OrientImageFilter enums, gives ('L', 'P', 'I')).
SITK_RAS = "RAS"

SHAPE = (512, 512, 300)
SPACING = (0.8, 0.8, 1.5)


def make_input(out_path, slices=SHAPE[2]):
    """Deterministic CT-like phantom: air, an elliptic body with smooth soft-tissue variation,
    a bone ring, two lungs, a spine, noise, and constant padding outside the reconstruction circle;
    stored LPS like a DICOM-derived file."""
    import nibabel as nib
    import numpy as np

    nx, ny, nz = SHAPE[0], SHAPE[1], int(slices)
    shape = (nx, ny, nz)
    rng = np.random.default_rng(20261123)
    data = np.empty(shape, dtype=np.int16)
    # In-plane grid in mm from the centre (x: voxel axis 0 towards L, y: axis 1 towards P).
    x = (np.arange(nx, dtype=np.float32) - (nx - 1) / 2) * SPACING[0]
    y = (np.arange(ny, dtype=np.float32) - (ny - 1) / 2) * SPACING[1]
    xx, yy = np.meshgrid(x, y, indexing="ij")
    outside_fov = np.hypot(xx / SPACING[0], yy / SPACING[1]) > nx / 2
    for k in range(nz):
        t = k / (nz - 1)  # 0 (inferior) .. 1 (superior)
        # The body's cross-section changes slowly along z.
        a = 170.0 + 15.0 * np.sin(np.pi * t)
        b = 115.0 + 10.0 * np.cos(2.0 * np.pi * t)
        r = np.sqrt((xx / a) ** 2 + (yy / b) ** 2)
        # Soft tissue ~40 HU with ±20 HU smooth variation.
        soft = 40.0 + 20.0 * np.sin(xx / 23.0 + 3.0 * t) * np.cos(yy / 17.0 - 2.0 * t)
        hu = np.where(r <= 1.0, soft, -1000.0).astype(np.float32)
        # Two lungs ~-850 HU in the upper two thirds of the volume.
        if t > 0.3:
            lung_scale = min(1.0, (t - 0.3) / 0.15)
            for cx in (-70.0, 70.0):
                rl = np.sqrt(((xx - cx) / (50.0 * lung_scale)) ** 2 + ((yy + 5.0) / (62.0 * lung_scale)) ** 2)
                hu[rl <= 1.0] = -850.0 + 30.0 * np.sin(xx[rl <= 1.0] / 11.0)
        # Subcutaneous fat layer just inside the skin.
        hu[(r > 0.93) & (r <= 1.0)] = -90.0
        # Bone ring (ribs / skull-like shell) ~700 HU.
        hu[(r > 0.80) & (r <= 0.86)] = 700.0
        # Spine: a vertebral body of bone behind the centre.
        rs = np.sqrt((xx / 18.0) ** 2 + ((yy - 58.0) / 14.0) ** 2)
        hu[rs <= 1.0] = 400.0
        # Noise: ~12 HU in tissue, less in air (reconstruction clips far below -1000).
        noise = rng.standard_normal(hu.shape, dtype=np.float32)
        hu += np.where(r <= 1.0, 12.0, 4.0) * noise
        # Outside the reconstruction circle the scanner pads with a constant.
        hu[outside_fov] = -1024.0
        data[:, :, k] = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    # LPS: voxel axes increase towards patient Left, Posterior, Superior (nibabel's world is RAS+).
    affine = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    affine[:3, 3] = [(nx - 1) / 2 * SPACING[0], (ny - 1) / 2 * SPACING[1], -(nz - 1) / 2 * SPACING[2]]
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, out_path)  # nibabel's default gzip level


def make_zip(series_dir, out_path):
    import os
    import zipfile

    names = sorted(n for n in os.listdir(series_dir) if os.path.isfile(os.path.join(series_dir, n)))
    with zipfile.ZipFile(out_path, "w", zipfile.ZIP_DEFLATED) as z:
        for name in names:
            z.write(os.path.join(series_dir, name), name)


def make_long_series(series_dir, out_dir, count):
    """A longer series from a real one: its slices (compressed pixel data untouched) cycled in
    position order and placed `count` times along the slice normal at the series' own spacing, each
    with a new SOPInstanceUID and InstanceNumber. For measuring how memory and time scale."""
    import os

    import numpy as np
    import pydicom
    from pydicom.uid import generate_uid

    count = int(count)
    paths = [os.path.join(series_dir, n) for n in sorted(os.listdir(series_dir))]
    slices = [pydicom.dcmread(p) for p in paths if os.path.isfile(p)]
    orientation = np.array(slices[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(orientation[:3], orientation[3:])
    slices.sort(key=lambda ds: float(np.dot(normal, np.array(ds.ImagePositionPatient, dtype=float))))
    first = np.array(slices[0].ImagePositionPatient, dtype=float)
    spacing = float(np.dot(normal, np.array(slices[1].ImagePositionPatient, dtype=float) - first))
    os.makedirs(out_dir, exist_ok=True)
    series_uid = generate_uid(entropy_srcs=["iris-bench-long-series", str(count)])
    for k in range(count):
        ds = slices[k % len(slices)]
        position = first + k * spacing * normal
        ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
        ds.InstanceNumber = k + 1
        uid = generate_uid(entropy_srcs=["iris-bench-long-series", str(count), str(k)])
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.SeriesInstanceUID = series_uid
        if "SliceLocation" in ds:
            ds.SliceLocation = f"{position[2]:.6f}"
        ds.save_as(os.path.join(out_dir, f"IM{k + 1:05d}.dcm"), enforce_file_format=True)


def run_nibabel(in_path, out_path):
    import nibabel as nib

    img = nib.load(in_path)
    canonical = nib.as_closest_canonical(img)
    nib.save(canonical, out_path)


def run_simpleitk_nifti(in_path, out_path):
    import SimpleITK as sitk

    img = sitk.ReadImage(in_path)
    img = sitk.DICOMOrient(img, SITK_RAS)
    sitk.WriteImage(img, out_path, useCompression=True)


def run_dicom2nifti(series_dir, out_path):
    # dicom2nifti requires python-gdcm, which pydicom would otherwise try first for JPEG 2000;
    # the benchmark names pylibjpeg-openjpeg as the decoder, so leave it the only one.
    from pydicom.pixels.decoders.base import JPEG2000LosslessDecoder, JPEG2000Decoder

    for decoder in (JPEG2000LosslessDecoder, JPEG2000Decoder):
        for plugin in list(decoder.available_plugins):
            if plugin != "pylibjpeg":
                decoder.remove_plugin(plugin)
    import dicom2nifti

    dicom2nifti.dicom_series_to_nifti(series_dir, out_path, reorient_nifti=True)


def run_simpleitk_dicom(series_dir, out_path):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(series_dir))
    img = reader.Execute()
    img = sitk.DICOMOrient(img, SITK_RAS)
    sitk.WriteImage(img, out_path, useCompression=True)


def compare(ref_path, out_paths):
    """Exit 1 unless every output has the reference's shape, affine and voxel values once both are
    brought to RAS with nibabel. Also requires each output to be stored RAS already."""
    import nibabel as nib
    import numpy as np

    ref = nib.as_closest_canonical(nib.load(ref_path))
    ref_data = np.asanyarray(ref.dataobj)
    ok = True
    for path in out_paths:
        img = nib.load(path)
        stored = "".join(nib.aff2axcodes(img.affine))
        can = nib.as_closest_canonical(img)
        data = np.asanyarray(can.dataobj)
        problems = []
        if stored != "RAS":
            problems.append(f"stored {stored}, not RAS")
        if can.shape != ref.shape:
            problems.append(f"shape {can.shape} != {ref.shape}")
        elif not np.allclose(can.affine, ref.affine, atol=1e-3):
            problems.append(f"affine differs:\n{can.affine}\nvs\n{ref.affine}")
        elif not np.array_equal(data, ref_data):
            diff = int(np.count_nonzero(data != ref_data))
            problems.append(f"{diff} voxels differ (max |Δ| {np.max(np.abs(data.astype(np.float64) - ref_data))})")
        if problems:
            ok = False
            print(f"MISMATCH {path} vs {ref_path}: " + "; ".join(problems))
        else:
            print(
                f"ok {path}: stored RAS, shape {can.shape}, {img.get_data_dtype()}, affine and voxels equal to {ref_path}"
            )
    return ok


def versions():
    from importlib.metadata import version, PackageNotFoundError

    for dist in ("nibabel", "SimpleITK", "dicom2nifti", "pydicom", "pylibjpeg", "pylibjpeg-openjpeg", "numpy"):
        try:
            print(dist, version(dist))
        except PackageNotFoundError:
            print(dist, "not-installed")


def measure(out_file, cmd):
    """Fallback when GNU time is missing: wall seconds and peak RSS (KiB) of one child process."""
    import resource
    import subprocess
    import time

    started = time.perf_counter()
    rc = subprocess.call(cmd)
    wall = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux
    with open(out_file, "w") as f:
        f.write(f"{wall:.3f} {peak_kib}\n")
    return rc


START_MARKER = "<!-- ingest:start -->"
END_MARKER = "<!-- ingest:end -->"

# (job key, tool key) → how each row is labelled; the first tool of each job is iris.
JOBS = [
    ("nifti", "512×512×300 i16 `.nii.gz` (LPS) → canonical RAS `.nii.gz`", ["iris", "nibabel", "simpleitk-nifti"]),
    ("dicom", "shared DICOM series (JPEG 2000) → NIfTI", ["iris", "dicom2nifti", "simpleitk-dicom"]),
    (
        "dicom300",
        "the shared series' slices repeated to 300 (JPEG 2000) → NIfTI",
        ["iris", "dicom2nifti", "simpleitk-dicom"],
    ),
]
TOOL_LABEL = {
    "iris": "**iris**",
    "nibabel": "nibabel {nibabel}",
    "simpleitk-nifti": "SimpleITK {SimpleITK}",
    "dicom2nifti": "dicom2nifti {dicom2nifti} + pylibjpeg-openjpeg {pylibjpeg-openjpeg}",
    "simpleitk-dicom": "SimpleITK {SimpleITK} (GDCM series reader)",
}
GOAL_MIN_SPEEDUP = {"nibabel": 3.0, "dicom2nifti": 2.0}
GOAL_MAX_RSS_RATIO = 2.5


def report(results_path, meta_path):
    """Markdown for BENCHMARKS.md from RESULTS.tsv (job, tool, rep, wall_s, peak_rss_kib, ok) and META.json."""
    import json
    import statistics

    with open(meta_path) as f:
        meta = json.load(f)
    runs = {}
    with open(results_path) as f:
        for line in f:
            if not line.strip():
                continue
            job, tool, _rep, wall, rss, ok, own = line.rstrip("\n").split("\t")
            entry = runs.setdefault((job, tool), {"wall": [], "rss": [], "own": [], "failed": False})
            if ok == "ok":
                entry["wall"].append(float(wall))
                entry["rss"].append(int(rss))
                if own:
                    entry["own"].append(float(own))
            else:
                entry["failed"] = True
    versions = meta["versions"]
    mib = 1024 * 1024
    reps = meta["reps"]
    out = []
    peak = "GNU time's %M" if meta["timer"] == "gnu-time" else "getrusage of the child"
    out.append(
        f"Measured by `{meta['command']}` on {meta['date']} ({meta['nproc']} cores, {meta['cpu']}, "
        f"{meta['mem']}, load average {meta['load']} at the start): {meta['iris']} against its peers, "
        f"each run as its own process, {reps} run{'s' if reps != 1 else ''} per tool, interleaved. Wall time is the whole process "
        "(start, imports, read, convert, write), median of the runs; peak RSS is the largest maximum "
        f"resident set of the runs ({peak}). Ratios are the peer's figure over iris's: above 1× means "
        "iris is faster or smaller."
    )
    out.append("")
    out.append("| job | tool | wall (median) | wall ÷ iris | peak RSS | RSS ÷ iris | RSS ÷ raw volume |")
    out.append("|---|---|--:|--:|--:|--:|--:|")
    goals = []
    all_ok = True
    for job, title, tools in JOBS:
        raw = meta.get("raw_bytes", {}).get(job)
        if raw is None:
            out.append(f"| {title} | skipped: {meta.get('skipped', {}).get(job, 'not run')} | | | | | |")
            continue
        base = runs.get((job, "iris"), {"wall": [], "rss": [], "failed": True})
        base_wall = statistics.median(base["wall"]) if base["wall"] and not base["failed"] else None
        base_rss = max(base["rss"]) if base["rss"] and not base["failed"] else None
        peer_walls = {}
        for i, tool in enumerate(tools):
            label = TOOL_LABEL[tool].format(**versions)
            first = f"{title}<br>raw volume {raw / mib:.1f} MiB" if i == 0 else ""
            entry = runs.get((job, tool))
            if entry is None or entry["failed"] or not entry["wall"]:
                all_ok = False
                out.append(f"| {first} | {label} | failed | | | | |")
                continue
            wall = statistics.median(entry["wall"])
            rss = max(entry["rss"])
            if tool != "iris":
                peer_walls[tool] = wall
            wall_ratio = f"{wall / base_wall:.2f}×" if base_wall else "–"
            rss_ratio = f"{rss / base_rss:.2f}×" if base_rss else "–"
            out.append(
                f"| {first} | {label} | {wall:.2f} s | {wall_ratio} | {rss / 1024:.0f} MiB | {rss_ratio} "
                f"| {rss * 1024 / raw:.2f}× |"
            )
        if base_wall is None:
            goals.append(f"- {title}: iris failed, no goals checked")
            continue
        if peer_walls:
            fastest = min(peer_walls, key=peer_walls.get)
            speedup = peer_walls[fastest] / base_wall
            goals.append(
                f"- {title}: faster than the fastest peer ({TOOL_LABEL[fastest].format(**versions)}): "
                f"{speedup:.2f}× — {'met' if speedup > 1.0 else 'NOT met'}"
            )
        for tool, need in GOAL_MIN_SPEEDUP.items():
            if tool in peer_walls:
                speedup = peer_walls[tool] / base_wall
                goals.append(
                    f"- {title}: at least {need:g}× {tool}: {speedup:.2f}× — {'met' if speedup >= need else 'NOT met'}"
                )
        rss_ratio = base_rss * 1024 / raw
        goals.append(
            f"- {title}: iris peak RSS ≤ {GOAL_MAX_RSS_RATIO:g}× the raw volume ({raw / mib:.1f} MiB): "
            f"{base_rss / 1024:.0f} MiB = {rss_ratio:.2f}× — {'met' if rss_ratio <= GOAL_MAX_RSS_RATIO else 'NOT met'}"
            + (" (a small series: the process's own baseline weighs here)" if raw < 64 * mib else "")
        )
    own = [
        f"{ {'nifti': 'NIfTI', 'dicom': 'DICOM', 'dicom300': 'DICOM × 300'}[job]} {statistics.median(e['own']):.2f} s"
        for job, _, _ in JOBS
        for e in [runs.get((job, "iris"))]
        if e and e["own"] and not e["failed"]
    ]
    if own:
        out.append("")
        out.append(
            "iris's own timer (from before reading the input to after writing the outputs, so without process "
            "start), median: " + "; ".join(own) + "."
        )
    out.append("")
    out.append("Goals (from the issue):")
    out.append("")
    out.extend(goals)
    out.append("")
    out.append("Checked in the same run (nibabel, both brought to RAS): " + "; ".join(meta["checks"]) + ".")
    out.append("")
    out.append("What each tool ran (`peers.py` is `scripts/bench_ingest_peers.py`, in a venv with " +
               ", ".join(f"{k} {v}" for k, v in versions.items()) + "):")
    out.append("")
    for line in meta["commands"]:
        out.append(f"- {line}")
    print("\n".join(out))
    return 0 if all_ok else 1


def record(path, section_path):
    """Replace what lies between the ingest markers in PATH (append the section if they are missing)."""
    import os

    with open(section_path) as f:
        section = f.read().strip("\n")
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
    block = f"{START_MARKER}\n{section}\n{END_MARKER}"
    if START_MARKER in text and END_MARKER in text and text.index(START_MARKER) < text.index(END_MARKER):
        head, rest = text.split(START_MARKER, 1)
        _, tail = rest.split(END_MARKER, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n## Ingest speed and memory\n\n" + block + "\n"
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    op, args = argv[1], argv[2:]
    two = {
        "make-zip": make_zip,
        "nibabel": run_nibabel,
        "simpleitk-nifti": run_simpleitk_nifti,
        "dicom2nifti": run_dicom2nifti,
        "simpleitk-dicom": run_simpleitk_dicom,
    }
    if op == "make-input" and len(args) in (1, 2):
        make_input(*args)
    elif op == "make-long-series" and len(args) == 3:
        make_long_series(*args)
    elif op in two and len(args) == 2:
        two[op](*args)
    elif op == "compare" and len(args) >= 2:
        return 0 if compare(args[0], args[1:]) else 1
    elif op == "versions" and not args:
        versions()
    elif op == "report" and len(args) == 2:
        return report(*args)
    elif op == "record" and len(args) == 2:
        record(*args)
    elif op == "measure" and len(args) >= 3 and args[1] == "--":
        return measure(args[0], args[2:])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
