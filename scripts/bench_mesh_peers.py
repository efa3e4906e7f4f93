#!/usr/bin/env python3
"""Peer tools for scripts/bench-mesh.sh: one operation per invocation, so each timed run is its own
process with its own wall time and peak RSS.

    bench_mesh_peers.py make-input SEG LABELS OUT.nii.gz OUT_STATS.json
        label map SEG upsampled (nearest neighbour) to 512×512×300 uint8, same world extent, and the
        SegmentationStats JSON naming and colouring its labels from LABELS (total_labels.json)
    bench_mesh_peers.py vtk IN.nii.gz OUT_DIR [--reduction-percent 75] [--details FILE]
        nibabel read → vtkSurfaceNets3D (all labels present, smoothing with VTK's defaults, triangles)
        → vtkQuadricDecimation → OUT_DIR/scene.glb (vtkGLTFWriter) and OUT_DIR/model.obj (vtkOBJWriter);
        prints (and writes to FILE) one JSON line: triangles, per-stage seconds, SMP backend, file sizes
    bench_mesh_peers.py iris-details OUT_DIR FILE
        triangles (sum of manifest.json's labels), labels, bounding box and file sizes of an iris output
    bench_mesh_peers.py check-labels MANIFEST STATS     a surface in MANIFEST for every label of STATS
    bench_mesh_peers.py check-glb FILE.glb              well-formed binary glTF 2.0 (header, JSON + BIN chunks)
    bench_mesh_peers.py check-bounds IN.nii.gz OBJ...   the OBJs' vertex boxes agree within two voxels
    bench_mesh_peers.py versions                        one "name version" line per peer package
    bench_mesh_peers.py measure OUTFILE -- CMD...       run CMD, write "wall_s peak_rss_kib" (no GNU time)
    bench_mesh_peers.py report RESULTS.tsv META.json    Markdown section from the measurements
    bench_mesh_peers.py record FILE SECTION.md          put SECTION between FILE's mesh markers

Only make-input, vtk and check-bounds import numpy, nibabel or VTK; the rest use the standard library. Imports are
done inside each operation so a run pays only for the libraries it uses.
"""

import argparse
import json
import os
import sys

SHAPE = (512, 512, 300)

START_MARKER = "<!-- mesh:start -->"
END_MARKER = "<!-- mesh:end -->"

# Goals from the issue for iris on this input (2 cores).
GOAL_MAX_WALL_S = 3.0
GOAL_MAX_RSS_BYTES = 1.5e9


def file_size(path):
    return os.path.getsize(path) if os.path.isfile(path) else None


# --- input ---


def nearest_indices(n_src, n_dst):
    """Source index of each destination voxel: the source voxel holding the destination voxel's centre."""
    import numpy as np

    idx = np.floor((np.arange(n_dst) + 0.5) * n_src / n_dst).astype(np.int64)
    return np.clip(idx, 0, n_src - 1)


def make_input(seg_path, labels_path, out_path, stats_path):
    """Nearest-neighbour upsampling of SEG to SHAPE. Destination voxel d has its centre at continuous
    source index (d + 0.5)·n_src/n_dst − 0.5, so the affine is A·[diag(s), (s − 1)/2] with
    s = n_src/n_dst per axis: the world extent (outer faces of the voxels) is SEG's."""
    import nibabel as nib
    import numpy as np

    src = nib.load(seg_path)
    data = np.asanyarray(src.dataobj)
    if data.ndim != 3:
        raise SystemExit(f"error: {seg_path} has shape {data.shape}, expected 3-D")
    if not np.issubdtype(data.dtype, np.integer) or data.min() < 0 or data.max() > 255:
        raise SystemExit(f"error: {seg_path} is not a uint8-range label map ({data.dtype}, {data.min()}..{data.max()})")
    idx = [nearest_indices(n_src, n_dst) for n_src, n_dst in zip(data.shape, SHAPE)]
    up = np.empty(SHAPE, dtype=np.uint8)
    # Slice by slice along z keeps the temporaries small.
    plane = data.astype(np.uint8)[np.ix_(idx[0], idx[1], np.arange(data.shape[2]))]
    for k, src_k in enumerate(idx[2]):
        up[:, :, k] = plane[:, :, src_k]
    scale = np.array([n_src / n_dst for n_src, n_dst in zip(data.shape, SHAPE)])
    affine = src.affine.copy()
    affine[:3, :3] = src.affine[:3, :3] * scale  # columns scaled
    affine[:3, 3] = src.affine[:3, :3] @ ((scale - 1.0) / 2.0) + src.affine[:3, 3]
    img = nib.Nifti1Image(up, affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, out_path)

    with open(labels_path) as f:
        table = {entry["id"]: entry for entry in json.load(f)["labels"]}
    voxel_ml = float(abs(np.linalg.det(affine[:3, :3]))) / 1000.0
    counts = np.bincount(up.ravel(), minlength=256)
    labels = []
    for label_id in np.nonzero(counts)[0]:
        if label_id == 0:
            continue
        entry = table.get(int(label_id))
        if entry is None:
            raise SystemExit(f"error: label {label_id} of {seg_path} is not in {labels_path}")
        voxels = int(counts[label_id])
        labels.append({
            "id": int(label_id),
            "name": entry["name"],
            "color": [int(c) for c in entry["rgb"]],
            "voxels": voxels,
            "volume_ml": voxels * voxel_ml,
            "mean_hu": None,
            "std_hu": None,
        })
    stats = {
        "model": "totalseg-example",
        "diagnostic": True,
        "dims": list(SHAPE),
        "voxel_volume_ml": voxel_ml,
        "labels": labels,
    }
    with open(stats_path, "w") as f:
        json.dump(stats, f, indent=1)
        f.write("\n")
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    print(
        f"made {out_path}: {SHAPE[0]}×{SHAPE[1]}×{SHAPE[2]} uint8 from {data.shape}, "
        f"spacing {', '.join(f'{s:.4f}' for s in spacing)} mm, {len(labels)} labels; stats → {stats_path}"
    )


# --- the VTK peer ---


def run_vtk(in_path, out_dir, reduction, details_path):
    import time

    started = time.perf_counter()
    # The SMP backend is read when VTK's SMP tools start; STDThread uses every core (the PyPI wheel's
    # default is Sequential). VTK_SMP_IMPLEMENTATION_TYPE / VTK_SMP_MAX_THREADS override.
    backend = os.environ.setdefault("VTK_SMP_IMPLEMENTATION_TYPE", "STDThread")
    import nibabel as nib
    import numpy as np
    from vtkmodules.util.numpy_support import numpy_to_vtk
    from vtkmodules.vtkCommonCore import vtkSMPTools, vtkVersion
    from vtkmodules.vtkCommonDataModel import vtkImageData, vtkMultiBlockDataSet
    from vtkmodules.vtkCommonTransforms import vtkTransform
    from vtkmodules.vtkFiltersCore import vtkQuadricDecimation, vtkSurfaceNets3D
    from vtkmodules.vtkFiltersGeneral import vtkTransformFilter
    from vtkmodules.vtkIOGeometry import vtkGLTFWriter, vtkOBJWriter

    if not vtkSMPTools.SetBackend(backend):
        print(f"warning: VTK has no SMP backend {backend!r}; using {vtkSMPTools.GetBackend()}", file=sys.stderr)
    imported = time.perf_counter()

    # Read: nibabel, the voxels as a C-contiguous (z, y, x) view so x varies fastest as VTK wants.
    img = nib.load(in_path)
    data = np.asarray(img.dataobj)
    if data.dtype != np.uint8:
        data = data.astype(np.uint8)
    flat = np.ascontiguousarray(data.transpose(2, 1, 0)).ravel()
    del data
    present = np.nonzero(np.bincount(flat, minlength=256))[0]
    present = [int(v) for v in present if v != 0]
    affine = img.affine
    linear = affine[:3, :3]
    spacing = np.sqrt((linear**2).sum(axis=0))
    diagonal = np.allclose(linear, np.diag(np.diag(linear))) and bool(np.all(np.diag(linear) > 0))
    image = vtkImageData()
    image.SetDimensions(*img.shape[:3])
    scalars = numpy_to_vtk(flat, deep=False)
    scalars.SetName("labels")
    image.GetPointData().SetScalars(scalars)
    if diagonal:
        # RAS with a positive diagonal affine: VTK's image geometry is the NIfTI's, no transform.
        image.SetSpacing(*spacing)
        image.SetOrigin(*affine[:3, 3])
    else:
        # Anything else: mesh on an axis-aligned grid with the same spacing at the origin, then carry
        # the vertices to world by A·diag(1/spacing) and the translation.
        image.SetSpacing(*spacing)
        image.SetOrigin(0.0, 0.0, 0.0)
        print("note: the affine is not a positive diagonal; the mesh is moved to world with a vtkTransform",
              file=sys.stderr)
    read_done = time.perf_counter()

    nets = vtkSurfaceNets3D()
    nets.SetInputData(image)
    nets.SetNumberOfLabels(len(present))
    for i, value in enumerate(present):
        nets.SetLabel(i, value)
    nets.SmoothingOn()  # VTK's default smoothing settings otherwise
    nets.SetOutputMeshTypeToTriangles()  # vtkQuadricDecimation takes triangles only
    nets.Update()
    surface = nets.GetOutput()
    if not diagonal:
        to_world = np.eye(4)
        to_world[:3, :3] = linear / spacing
        to_world[:3, 3] = affine[:3, 3]
        transform = vtkTransform()
        transform.SetMatrix(to_world.ravel().tolist())
        move = vtkTransformFilter()
        move.SetInputData(surface)
        move.SetTransform(transform)
        move.Update()
        surface = move.GetOutput()
    nets_done = time.perf_counter()
    triangles_before = surface.GetNumberOfPolys()

    decimate = vtkQuadricDecimation()
    decimate.SetInputData(surface)
    decimate.SetTargetReduction(reduction)
    decimate.Update()
    decimated = decimate.GetOutput()
    decimate_done = time.perf_counter()
    triangles_after = decimated.GetNumberOfPolys()

    os.makedirs(out_dir, exist_ok=True)
    glb_path = os.path.join(out_dir, "scene.glb")
    obj_path = os.path.join(out_dir, "model.obj")
    # vtkGLTFWriter takes a multiblock of "buildings", each a multiblock of polydata pieces; a .glb
    # name makes it write binary glTF with the buffers inside.
    building = vtkMultiBlockDataSet()
    building.SetNumberOfBlocks(1)
    building.SetBlock(0, decimated)
    scene = vtkMultiBlockDataSet()
    scene.SetNumberOfBlocks(1)
    scene.SetBlock(0, building)
    gltf = vtkGLTFWriter()
    gltf.SetFileName(glb_path)
    gltf.SetInputData(scene)
    gltf.Write()
    glb_done = time.perf_counter()
    obj = vtkOBJWriter()
    obj.SetFileName(obj_path)
    obj.SetInputData(decimated)
    obj.Write()
    obj_done = time.perf_counter()

    details = {
        "tool": "vtk",
        "vtk": vtkVersion.GetVTKVersion(),
        "smp_backend": vtkSMPTools.GetBackend(),
        "smp_threads": vtkSMPTools.GetEstimatedNumberOfThreads(),
        "dims": list(img.shape[:3]),
        "labels": len(present),
        "affine_diagonal": diagonal,
        "smoothing": bool(nets.GetSmoothing()),
        "smoothing_iterations": nets.GetNumberOfIterations(),
        "relaxation_factor": nets.GetRelaxationFactor(),
        "constraint_scale": nets.GetConstraintScale(),
        "target_reduction": reduction,
        "triangles_before": triangles_before,
        "triangles": triangles_after,
        "vertices": decimated.GetNumberOfPoints(),
        "bounds_mm": list(decimated.GetBounds()),
        "seconds": {
            "imports": round(imported - started, 3),
            "read": round(read_done - imported, 3),
            "surface_nets": round(nets_done - read_done, 3),
            "decimation": round(decimate_done - nets_done, 3),
            "write_glb": round(glb_done - decimate_done, 3),
            "write_obj": round(obj_done - glb_done, 3),
            "total": round(obj_done - started, 3),
        },
        "glb_bytes": file_size(glb_path),
        "obj_bytes": file_size(obj_path),
    }
    line = json.dumps(details)
    print(line)
    if details_path:
        with open(details_path, "w") as f:
            f.write(line + "\n")
    ok = details["glb_bytes"] and details["obj_bytes"] and triangles_after > 0
    return 0 if ok else 1


def iris_details(out_dir, details_path):
    """What iris wrote into OUT_DIR: triangles from manifest.json, the overall box, file sizes."""
    manifest_path = os.path.join(out_dir, "manifest.json")
    with open(manifest_path) as f:
        manifest = json.load(f)
    labels = manifest.get("labels", [])
    lows, highs = [], []
    for label in labels:
        box = label.get("bounding_box_mm")
        if box:
            lows.append(box["min"])
            highs.append(box["max"])
    bounds = None
    if lows:
        bounds = []
        for axis in range(3):
            bounds += [min(b[axis] for b in lows), max(b[axis] for b in highs)]
    details = {
        "tool": "iris",
        "labels": len(labels),
        "triangles": sum(int(label.get("triangles", 0)) for label in labels),
        "bounds_mm": bounds,
        "glb_bytes": file_size(os.path.join(out_dir, "scene.glb")),
        "obj_bytes": file_size(os.path.join(out_dir, "model.obj")),
        "mtl_bytes": file_size(os.path.join(out_dir, "model.mtl")),
    }
    line = json.dumps(details)
    print(line)
    with open(details_path, "w") as f:
        f.write(line + "\n")
    missing = [name for name, key in (("scene.glb", "glb_bytes"), ("model.obj", "obj_bytes")) if not details[key]]
    if missing or not details["triangles"]:
        print(f"error: iris's output in {out_dir} lacks " + (" and ".join(missing) or "triangles"), file=sys.stderr)
        return 1
    return 0


# --- checks ---


def check_labels(manifest_path, stats_path):
    """Every label of the stats JSON (each present in the input) has a non-empty surface in the manifest."""
    with open(manifest_path) as f:
        meshed = {label["id"]: label for label in json.load(f).get("labels", [])}
    with open(stats_path) as f:
        wanted = json.load(f)["labels"]
    missing = [f"{label['id']} {label['name']}" for label in wanted if not meshed.get(label["id"], {}).get("triangles")]
    if missing:
        print(f"MISMATCH {manifest_path}: no surface for " + ", ".join(missing))
        return False
    print(f"ok {manifest_path}: a surface for each of the {len(wanted)} labels")
    return True


def check_glb(path):
    """Binary glTF 2.0: the header's length is the file's, a JSON chunk first, then one BIN chunk."""
    import struct

    with open(path, "rb") as f:
        data = f.read()
    problems = []
    if len(data) < 20:
        problems.append("shorter than a header")
    else:
        magic, version, length = struct.unpack_from("<4sII", data, 0)
        if magic != b"glTF" or version != 2:
            problems.append(f"header {magic!r} version {version}")
        if length != len(data):
            problems.append(f"header length {length} != file size {len(data)}")
        chunks, offset = [], 12
        while offset + 8 <= len(data):
            size, kind = struct.unpack_from("<I4s", data, offset)
            chunks.append((kind, size, offset + 8))
            offset += 8 + size
        if [kind for kind, _, _ in chunks] != [b"JSON", b"BIN\0"]:
            problems.append(f"chunks {[kind for kind, _, _ in chunks]}")
        else:
            _, size, start = chunks[0]
            try:
                doc = json.loads(data[start:start + size])
                meshes = len(doc.get("meshes", []))
                if not meshes:
                    problems.append("no meshes")
            except ValueError as error:
                problems.append(f"JSON chunk: {error}")
    if problems:
        print(f"BAD {path}: " + "; ".join(problems))
        return False
    print(f"ok {path}: glTF 2.0, {len(data)} bytes, {meshes} meshes")
    return True


def obj_bounds(path):
    """Smallest box holding every vertex ("v x y z" lines) of an OBJ file: [xmin, xmax, ymin, ...]."""
    lo = [float("inf")] * 3
    hi = [float("-inf")] * 3
    with open(path, "rb") as f:
        for line in f:
            if line.startswith(b"v "):
                xyz = line.split()[1:4]
                for axis in range(3):
                    v = float(xyz[axis])
                    if v < lo[axis]:
                        lo[axis] = v
                    if v > hi[axis]:
                        hi[axis] = v
    return [b for axis in range(3) for b in (lo[axis], hi[axis])]


def check_bounds(input_path, obj_paths):
    """The OBJs' vertex boxes agree within two voxels of the input's coarsest spacing (world RAS mm)."""
    import nibabel as nib
    import numpy as np

    affine = nib.load(input_path).affine
    tolerance = 2.0 * float(np.sqrt((affine[:3, :3] ** 2).sum(axis=0)).max())
    boxes = [(path, obj_bounds(path)) for path in obj_paths]
    ref_path, ref = boxes[0]
    ok = True
    for path, box in boxes:
        text = ", ".join(f"{box[2 * a]:.1f}..{box[2 * a + 1]:.1f}" for a in range(3))
        worst = max(abs(a - b) for a, b in zip(box, ref))
        if worst > tolerance:
            ok = False
            print(f"MISMATCH {path}: box {text} mm is {worst:.2f} mm from {ref_path}'s (tolerance {tolerance:.2f} mm)")
        else:
            print(f"ok {path}: box {text} mm, within {worst:.2f} mm of {ref_path}'s (tolerance {tolerance:.2f} mm)")
    return ok


# --- measuring, reporting, recording ---


def versions():
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("vtk", "nibabel", "numpy"):
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


def load_runs(results_path):
    """RESULTS.tsv rows (tool, rep, wall_s, peak_rss_kib, ok|failed, own_s, details.json) by tool."""
    runs = {}
    with open(results_path) as f:
        for line in f:
            if not line.strip():
                continue
            tool, _rep, wall, rss, ok, own, details_path = line.rstrip("\n").split("\t")
            entry = runs.setdefault(tool, {"wall": [], "rss": [], "own": [], "details": [], "failed": False})
            if ok != "ok":
                entry["failed"] = True
                continue
            entry["wall"].append(float(wall))
            entry["rss"].append(int(rss))
            if own:
                entry["own"].append(float(own))
            if details_path and os.path.isfile(details_path):
                with open(details_path) as d:
                    entry["details"].append(json.load(d))
    return runs


def mib(n):
    return f"{n / 2**20:.1f} MiB" if n else "–"


def report(results_path, meta_path):
    """Markdown for BENCHMARKS.md from RESULTS.tsv and META.json; exit 1 when a tool has no good run."""
    import statistics

    with open(meta_path) as f:
        meta = json.load(f)
    runs = load_runs(results_path)
    versions_ = meta["versions"]
    inp = meta["input"]
    summary = {}
    for tool in ("iris", "vtk"):
        entry = runs.get(tool)
        if entry is None or entry["failed"] or not entry["wall"]:
            summary[tool] = None
            continue
        details = entry["details"][-1] if entry["details"] else {}
        summary[tool] = {
            "wall": statistics.median(entry["wall"]),
            "rss_kib": max(entry["rss"]),
            "runs": len(entry["wall"]),
            "own": statistics.median(entry["own"]) if entry["own"] else None,
            "details": details,
            "stage_medians": {
                stage: statistics.median(d["seconds"][stage] for d in entry["details"])
                for stage in (details.get("seconds") or {})
            },
        }
    iris, vtk = summary["iris"], summary["vtk"]
    peak = "GNU time's %M" if meta["timer"] == "gnu-time" else "getrusage of the child"
    out = [
        f"Measured by `{meta['command']}` on {meta['date']} ({meta['nproc']} cores, {meta['cpu']}, {meta['mem']}, "
        f"load average {meta['load']} at the start) at commit `{meta['commit']}`: {meta['iris']} against "
        f"VTK {versions_.get('vtk', '?')}. Each tool runs as its own process, interleaved: iris "
        f"{meta['reps']}×, VTK {meta['vtk_reps']}×. Wall time is the whole process (start, imports, read, mesh, "
        f"decimate, write GLB and OBJ), median of the runs; peak RSS is the largest maximum resident set of the "
        f"runs ({peak}).",
        "",
        f"Input: `{inp['name']}`, {inp['dims'][0]}×{inp['dims'][1]}×{inp['dims'][2]} uint8, "
        f"{inp['labels']} labels, spacing {' × '.join(f'{s:.3f}' for s in inp['spacing'])} mm "
        f"({mib(inp['bytes'])} gzipped) — the shared TotalSegmentator example label map "
        f"(`{inp['source']}`) upsampled by nearest neighbour to this grid, same world extent; names and colours "
        "from `total_labels.json` in the stats JSON beside it. Reduction "
        f"{meta['reduction_percent']:g} % (VTK: target reduction {meta['reduction_percent'] / 100:g}).",
        "",
        "| tool | wall (median) | peak RSS | triangles | GLB | OBJ |",
        "|---|--:|--:|--:|--:|--:|",
    ]
    for tool, label in (("iris", "**iris**"), ("vtk", f"VTK {versions_.get('vtk', '?')}")):
        s = summary[tool]
        if s is None:
            out.append(f"| {label} | failed | | | | |")
            continue
        d = s["details"]
        triangles = f"{d['triangles']:,}" if d.get("triangles") is not None else "–"
        if tool == "vtk" and d.get("triangles_before") is not None:
            triangles += f" (of {d['triangles_before']:,})"
        out.append(
            f"| {label} | {s['wall']:.2f} s | {s['rss_kib'] / 1024:.0f} MiB | {triangles} "
            f"| {mib(d.get('glb_bytes'))} | {mib(d.get('obj_bytes'))} |"
        )
    out.append("")
    if iris and vtk:
        out.append(
            f"VTK ÷ iris: wall {vtk['wall'] / iris['wall']:.1f}×, peak RSS {vtk['rss_kib'] / iris['rss_kib']:.1f}×"
            + (f", triangles {vtk['details']['triangles'] / iris['details']['triangles']:.2f}×"
               if vtk["details"].get("triangles") and iris["details"].get("triangles") else "")
            + "."
        )
        out.append("")
    if vtk:
        d = vtk["details"]
        st = vtk["stage_medians"]
        out.append(
            f"VTK's stages (its own clock, median): imports {st.get('imports', 0):.2f} s, nibabel read "
            f"{st.get('read', 0):.2f} s, vtkSurfaceNets3D {st.get('surface_nets', 0):.2f} s "
            f"({d.get('triangles_before', 0):,} triangles; smoothing on, VTK's defaults: "
            f"{d.get('smoothing_iterations')} iterations, relaxation {d.get('relaxation_factor')}, "
            f"constraint scale {d.get('constraint_scale')}), vtkQuadricDecimation {st.get('decimation', 0):.2f} s, "
            f"vtkGLTFWriter {st.get('write_glb', 0):.2f} s, vtkOBJWriter {st.get('write_obj', 0):.2f} s; "
            f"SMP backend {d.get('smp_backend')} with {d.get('smp_threads')} threads."
        )
        out.append("")
    if iris and iris["own"] is not None:
        out.append(
            f"iris's own timer (as `iris mesh` prints it; no process start), median: {iris['own']:.2f} s."
        )
        out.append("")
    out.append("Goals (from the issue, iris on this input):")
    out.append("")
    if iris:
        wall_ok = iris["wall"] <= GOAL_MAX_WALL_S
        rss_bytes = iris["rss_kib"] * 1024
        rss_ok = rss_bytes <= GOAL_MAX_RSS_BYTES
        out.append(f"- wall ≤ {GOAL_MAX_WALL_S:g} s: {iris['wall']:.2f} s — {'met' if wall_ok else 'NOT met'}")
        out.append(
            f"- peak RSS ≤ {GOAL_MAX_RSS_BYTES / 1e9:g} GB: {rss_bytes / 1e9:.2f} GB "
            f"({iris['rss_kib'] / 1024:.0f} MiB) — {'met' if rss_ok else 'NOT met'}"
        )
    else:
        out.append("- iris failed; no goal checked")
    if meta.get("checks"):
        out.append("")
        out.append("Checked in the same run: " + "; ".join(meta["checks"]) + ".")
    out.append("")
    out.append("What each tool ran (`peers.py` is `scripts/bench_mesh_peers.py`, in a venv with "
               + ", ".join(f"{k} {v}" for k, v in versions_.items()) + "):")
    out.append("")
    for line in meta["commands"]:
        out.append(f"- {line}")
    print("\n".join(out))
    return 0 if iris and vtk else 1


def record(path, section_path):
    """Replace what lies between the mesh markers in PATH (append the section if they are missing)."""
    with open(section_path) as f:
        section = f.read().strip("\n")
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
    else:
        text = "# Benchmarks\n"
    block = f"{START_MARKER}\n{section}\n{END_MARKER}"
    if START_MARKER in text and END_MARKER in text and text.index(START_MARKER) < text.index(END_MARKER):
        head, rest = text.split(START_MARKER, 1)
        _, tail = rest.split(END_MARKER, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n## Mesh speed and memory\n\n" + block + "\n"
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def main(argv):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="op", required=True)
    p = sub.add_parser("make-input", help="the 512×512×300 label map and its stats JSON")
    p.add_argument("seg")
    p.add_argument("labels")
    p.add_argument("out")
    p.add_argument("stats")
    p = sub.add_parser("vtk", help="the VTK peer: SurfaceNets3D + QuadricDecimation → GLB + OBJ")
    p.add_argument("input")
    p.add_argument("out_dir")
    p.add_argument("--reduction-percent", type=float, default=75.0,
                   help="vtkQuadricDecimation's target reduction, in percent of the triangles (default 75)")
    p.add_argument("--details", help="also write the JSON line to this file")
    p = sub.add_parser("iris-details", help="triangles and file sizes of an iris mesh output")
    p.add_argument("out_dir")
    p.add_argument("details")
    p = sub.add_parser("check-labels", help="a surface in MANIFEST for every label of STATS")
    p.add_argument("manifest")
    p.add_argument("stats")
    p = sub.add_parser("check-glb", help="a well-formed binary glTF 2.0 file")
    p.add_argument("glb")
    p = sub.add_parser("check-bounds", help="OBJ vertex boxes agree within two voxels of INPUT")
    p.add_argument("input")
    p.add_argument("objs", nargs="+")
    sub.add_parser("versions", help="peer package versions")
    p = sub.add_parser("measure", help="wall time and peak RSS of one command (no GNU time)")
    p.add_argument("out_file")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p = sub.add_parser("report", help="Markdown section")
    p.add_argument("results")
    p.add_argument("meta")
    p = sub.add_parser("record", help="put a section between the mesh markers")
    p.add_argument("file")
    p.add_argument("section")
    args = parser.parse_args(argv[1:])

    if args.op == "make-input":
        make_input(args.seg, args.labels, args.out, args.stats)
    elif args.op == "vtk":
        if not 0.0 <= args.reduction_percent < 100.0:
            parser.error("--reduction-percent must lie in [0, 100)")
        return run_vtk(args.input, args.out_dir, args.reduction_percent / 100.0, args.details)
    elif args.op == "iris-details":
        return iris_details(args.out_dir, args.details)
    elif args.op == "check-labels":
        return 0 if check_labels(args.manifest, args.stats) else 1
    elif args.op == "check-glb":
        return 0 if check_glb(args.glb) else 1
    elif args.op == "check-bounds":
        return 0 if check_bounds(args.input, args.objs) else 1
    elif args.op == "versions":
        versions()
    elif args.op == "measure":
        cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        if not cmd:
            parser.error("measure needs a command after --")
        return measure(args.out_file, cmd)
    elif args.op == "report":
        return report(args.results, args.meta)
    elif args.op == "record":
        record(args.file, args.section)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
