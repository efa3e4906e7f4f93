#!/usr/bin/env python3
"""Python reference of the segment service's ONNX sliding-window inference (docs/segmentation.md).

    reference.py --volume volume.nii.gz (--model DIR | --task TASK_JSON --models-root ROOT)
                 --out labels.nii.gz [--threads 2] [--timings timings.json] [--fast] [--roi-subset a,b]

Follows the algorithm of docs/segmentation.md step by step, with the arithmetic in the precision the
document names (f64 normalisation and resampling, f32 inference output, f32 accumulation), so the
Rust implementation gives the same labels voxel for voxel. Needs onnxruntime, numpy and nibabel only
(scripts/onnx-env.sh install). The volume must be the canonical one (int16 HU, RAS voxel axes); the
label map is written on the same grid with the same affine.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import math
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import onnxruntime as ort

# The classical model's CT check (services/segment/src/classical.rs, check_ct_like), used for
# cards with ct_only: the document names the code (not_ct_like) but not the criterion.
CT_LIKE_FAT_OR_AIR_HU = -50
CT_LIKE_TISSUE_HU = -200
CT_LIKE_MINIMUM_RANGE_HU = 300


class Failure(Exception):
    """A job failure with the service's error code."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


class Timer:
    def __init__(self) -> None:
        self.t = dict.fromkeys(
            ("read_s", "preprocess_s", "inference_s", "accumulate_s", "postprocess_s", "write_s"), 0.0
        )
        self.tiles = 0
        self.runs = 0

    def add(self, key: str, start: float) -> float:
        now = time.perf_counter()
        self.t[key] += now - start
        return now


# ---------------------------------------------------------------------------------------------
# Models and tasks


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_card(model_dir: Path) -> dict:
    card = json.loads((model_dir / "card.json").read_text())
    if card.get("format_version") != 1:
        raise Failure("bad_model", f"{model_dir}: card format_version {card.get('format_version')!r} is not 1")
    if card.get("axis_order") != "zyx":
        raise Failure("bad_model", f"{model_dir}: axis_order {card.get('axis_order')!r} is not \"zyx\"")
    norm = card["normalization"]
    if norm.get("scheme") != "ct":
        raise Failure("bad_model", f"{model_dir}: normalization scheme {norm.get('scheme')!r} is not \"ct\"")
    if not 0.0 < float(card["tile_step"]) <= 1.0:
        raise Failure("bad_model", f"{model_dir}: tile_step {card['tile_step']} is not in (0, 1]")
    if len(card["spacing_mm"]) != 3 or len(card["patch_size"]) != 3:
        raise Failure("bad_model", f"{model_dir}: spacing_mm and patch_size need 3 values")
    if any(a not in (0, 1, 2) for a in card["mirror_axes"]):
        raise Failure("bad_model", f"{model_dir}: mirror_axes {card['mirror_axes']} are not spatial axes 0..2")
    if int(card["batch_size"]) < 1:
        raise Failure("bad_model", f"{model_dir}: batch_size {card['batch_size']} < 1")
    return card


def open_session(model_dir: Path, card: dict, threads: int, provider: str = "cpu") -> ort.InferenceSession:
    onnx_path = model_dir / "model.onnx"
    digest = sha256_of(onnx_path)
    if digest != card["onnx_sha256"]:
        raise Failure("bad_model", f"{onnx_path}: sha256 {digest} differs from the card's {card['onnx_sha256']}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    providers = ["CUDAExecutionProvider"] if provider == "cuda" else ["CPUExecutionProvider"]
    session = ort.InferenceSession(str(onnx_path), sess_options=so, providers=providers)
    if session.get_providers()[0] != providers[0]:
        raise Failure("provider_unavailable", f"{providers[0]} is not available: {session.get_providers()}")
    return session


def plan_task(args: argparse.Namespace) -> tuple[dict, list[tuple[Path, dict, dict[int, int]]]]:
    """The task's labels and its models as (model dir, card, local id -> task id)."""
    if args.model is not None:
        model_dir = Path(args.model)
        card = load_card(model_dir)
        task = {"name": card["name"], "labels": [dict(l) for l in card["labels"]]}
        entries = [(model_dir, card, {int(l["id"]): int(l["id"]) for l in card["labels"]})]
        return task, entries
    task = json.loads(Path(args.task).read_text())
    if task.get("format_version") != 1:
        raise Failure("bad_task", f"{args.task}: format_version {task.get('format_version')!r} is not 1")
    models = task["models"]
    if args.fast:
        if not task.get("fast_models"):
            raise Failure("invalid_option", f"task {task.get('name')!r} has no fast_models (--fast)")
        models = task["fast_models"]
    by_name = {l["name"]: int(l["id"]) for l in task["labels"]}
    entries = []
    for m in models:
        model_dir = Path(args.models_root) / m["model"]
        card = load_card(model_dir)
        if "label_map" in m and m["label_map"] is not None:
            label_map = {int(k): int(v) for k, v in m["label_map"].items()}
        else:
            label_map = {int(l["id"]): by_name[l["name"]] for l in card["labels"] if l["name"] in by_name}
        entries.append((model_dir, card, label_map))
    return task, entries


def apply_roi_subset(task: dict, entries: list, roi: str | None) -> tuple[list, set[int] | None]:
    if not roi:
        return entries, None
    by_name = {l["name"]: int(l["id"]) for l in task["labels"]}
    names = [n.strip() for n in roi.split(",") if n.strip()]
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise Failure("bad_roi_subset", f"labels not in the task: {', '.join(unknown)}")
    keep = {by_name[n] for n in names}
    return [e for e in entries if keep & set(e[2].values())], keep


# ---------------------------------------------------------------------------------------------
# The algorithm, steps 1-10


def check_ct_like(hu: np.ndarray) -> None:
    lo, hi = int(hu.min()), int(hu.max())
    if lo > CT_LIKE_FAT_OR_AIR_HU:
        raise Failure("not_ct_like", f"no voxel is at or below {CT_LIKE_FAT_OR_AIR_HU} HU; the lowest is {lo}")
    if hi <= CT_LIKE_TISSUE_HU:
        raise Failure("not_ct_like", f"no voxel is above {CT_LIKE_TISSUE_HU} HU; the highest is {hi}")
    if hi - lo < CT_LIKE_MINIMUM_RANGE_HU:
        raise Failure("not_ct_like", f"values span only {lo} to {hi} HU")


def model_length(n: int, s: float, t: float) -> int:
    """Step 2: m = max(1, floor(n * s / t + 0.5)), in f64."""
    return max(1, math.floor(n * s / t + 0.5))


def resample_axis(x: np.ndarray, axis: int, s: float, t: float) -> np.ndarray:
    """Step 2 along one axis: linear interpolation in f64."""
    n = x.shape[axis]
    m = model_length(n, s, t)
    if m == n and s == t:
        return x
    o = np.arange(m, dtype=np.float64)
    c = (o + 0.5) * float(n) / float(m) - 0.5
    c = np.minimum(np.maximum(c, 0.0), float(n - 1))
    i0 = np.floor(c).astype(np.int64)
    i1 = np.minimum(i0 + 1, n - 1)
    w = c - i0.astype(np.float64)
    shape = [1, 1, 1]
    shape[axis] = m
    w = w.reshape(shape)
    a = np.take(x, i0, axis=axis)
    b = np.take(x, i1, axis=axis)
    return a * (1.0 - w) + b * w


def tile_starts(length: int, patch: int, tile_step: float) -> list[int]:
    """Step 4: nnU-Net's compute_steps_for_sliding_window for one axis."""
    step = patch * tile_step
    k = math.ceil((length - patch) / step) + 1
    if k > 1:
        actual = (length - patch) / (k - 1)
        return [round(actual * i) for i in range(k)]  # Python's round is round-half-even
    return [0]


def gaussian_map(patch: list[int]) -> np.ndarray:
    """Step 5: nnU-Net's compute_gaussian (sigma_scale 1/8, value_scaling_factor 10, float16)."""
    per_axis = []
    for p in patch:
        sigma = p / 8.0
        r = math.floor(4.0 * sigma + 0.5)
        centre = p // 2
        g = np.zeros(p, dtype=np.float64)
        for i in range(p):
            d = i - centre
            if abs(d) <= r:
                g[i] = math.exp(-float(d * d) / (2.0 * sigma * sigma))  # C libm exp, as Rust's f64::exp
        per_axis.append(g)
    gz, gy, gx = per_axis
    gmap = (((gz[:, None, None] * gy[None, :, None]) * gx[None, None, :]) * 10.0).astype(np.float16)
    nonzero = gmap[gmap != 0]
    gmap[gmap == 0] = nonzero.min()
    return gmap.astype(np.float32)


def channel_argmax(a: np.ndarray, out: np.ndarray) -> None:
    """Step 8: index of the first maximum over axis 0 (a running strict-greater comparison, which is
    np.argmax's first-maximum rule, without np.argmax's slow transposed copy for axis 0)."""
    best = a[0].copy()
    out[...] = 0
    for c in range(1, a.shape[0]):
        greater = a[c] > best
        np.copyto(best, a[c], where=greater)
        np.copyto(out, c, where=greater)


def run_model(
    hu_zyx: np.ndarray,
    spacing_zyx: list[float],
    card: dict,
    session: ort.InferenceSession,
    timer: Timer,
) -> np.ndarray:
    """Steps 1-9 for one model: local labels (int32) on the canonical grid, shape (Z, Y, X)."""
    t0 = time.perf_counter()
    norm = card["normalization"]
    lo, hi = (float(v) for v in norm["clip_hu"])
    mean, std = float(norm["mean"]), float(norm["std"])
    patch = [int(p) for p in card["patch_size"]]
    target = [float(t) for t in card["spacing_mm"]]
    n_labels = max(int(l["id"]) for l in card["labels"]) + 1

    # 1. Normalise in f64.
    x = (np.minimum(np.maximum(hu_zyx.astype(np.float64), lo), hi) - mean) / std
    # 2. Resample separably in f64: X (axis 2), then Y (axis 1), then Z (axis 0); round to f32.
    for axis in (2, 1, 0):
        x = resample_axis(x, axis, spacing_zyx[axis], target[axis])
    x = x.astype(np.float32)
    model_shape = x.shape
    # 3. Pad to at least the patch, centred.
    before = [max(0, (p - m) // 2) for p, m in zip(patch, model_shape)]
    pad = [(b, max(0, p - m) - b) for b, p, m in zip(before, patch, model_shape)]
    if any(b or a for b, a in pad):
        x = np.pad(x, pad, mode="constant", constant_values=np.float32(0.0))
    padded = x
    lz, ly, lx = padded.shape
    # 4. Tiles, ordered by Z start, then Y, then X.
    starts = [tile_starts(length, p, float(card["tile_step"])) for length, p in zip(padded.shape, patch)]
    tiles = list(itertools.product(*starts))
    # 5. Gaussian importance map.
    gmap = gaussian_map(patch)
    t0 = timer.add("preprocess_s", t0)

    # 6. Inference in batches, 7. accumulation, 8. argmax, streamed along Z (see "Memory bound").
    inp = session.get_inputs()[0]
    out_name = session.get_outputs()[0].name
    fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
    batch_size = int(card["batch_size"])
    if fixed_batch is not None and fixed_batch != batch_size:
        raise Failure("bad_model", f"the model's fixed batch {fixed_batch} differs from the card's {batch_size}")
    mirror = [a + 2 for a in card["mirror_axes"]]
    combos = [c for k in range(len(mirror)) for c in itertools.combinations(mirror, k + 1)]
    n_runs = np.float32(len(combos) + 1)

    pz, py, px = patch
    acc = np.zeros((n_labels, pz, ly, lx), dtype=np.float32)  # slices [base, base + pz) of the padded Z axis
    base = 0
    labels = np.zeros((lz, ly, lx), dtype=np.int32)

    def finalize(upto: int) -> None:
        """Reduces padded slices [base, upto) to labels and shifts the window to start at upto."""
        nonlocal base
        k = upto - base
        if k <= 0:
            return
        channel_argmax(acc[:, :k], labels[base:upto])
        base = upto
        if upto == lz:
            return
        if k < pz:
            acc[:, : pz - k] = acc[:, k:].copy()
        acc[:, max(0, pz - k) :] = 0.0

    def infer(batch: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        out = session.run([out_name], {inp.name: batch})[0]
        timer.add("inference_s", start)
        timer.runs += 1
        if out.dtype != np.float32 or out.ndim != 5 or out.shape[1] != n_labels:
            raise Failure("bad_model", f"output {out.dtype} {out.shape} is not float32 [N, {n_labels}, Z, Y, X]")
        return out

    for b0 in range(0, len(tiles), batch_size):
        batch_tiles = tiles[b0 : b0 + batch_size]
        n_real = len(batch_tiles)
        if fixed_batch is not None:
            batch_tiles = batch_tiles + [batch_tiles[-1]] * (fixed_batch - n_real)
        batch = np.stack([padded[z : z + pz, y : y + py, x0 : x0 + px] for z, y, x0 in batch_tiles])[:, None]
        t0 = timer.add("accumulate_s", t0)
        pred = infer(batch)
        t0 = time.perf_counter()
        if combos:
            for axes in combos:
                flipped = np.ascontiguousarray(np.flip(batch, axes))
                t0 = timer.add("accumulate_s", t0)
                out = infer(flipped)
                t0 = time.perf_counter()
                pred += np.flip(out, axes)
            pred /= n_runs
        for (z, y, x0), p in zip(batch_tiles[:n_real], pred[:n_real]):
            if z > base:
                finalize(z)
            np.multiply(p, gmap, out=p)
            acc[:, z - base : z - base + pz, y : y + py, x0 : x0 + px] += p
        t0 = timer.add("accumulate_s", t0)
    finalize(lz)
    timer.tiles += len(tiles)
    t0 = timer.add("accumulate_s", t0)

    # 8. Crop the padding; 9. back to the canonical grid by nearest neighbour.
    mz, my, mx = model_shape
    cropped = labels[before[0] : before[0] + mz, before[1] : before[1] + my, before[2] : before[2] + mx]
    index = []
    for n, m in zip(hu_zyx.shape, model_shape):
        o = np.arange(n, dtype=np.float64)
        index.append(np.minimum(m - 1, np.floor((o + 0.5) * float(m) / float(n)).astype(np.int64)))
    result = cropped[np.ix_(*index)]
    timer.add("postprocess_s", t0)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--volume", required=True, help="canonical volume.nii.gz (int16 HU, RAS)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model directory with card.json and model.onnx")
    src.add_argument("--task", help="task.json")
    ap.add_argument("--models-root", help="directory holding <model>/card.json for --task")
    ap.add_argument("--out", required=True, help="labels.nii.gz to write")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    ap.add_argument("--timings", help="also write the timings JSON here")
    ap.add_argument("--provider", choices=["cpu", "cuda"], default="cpu", help="ONNX Runtime execution provider")
    ap.add_argument("--fast", action="store_true", help="run the task's fast_models")
    ap.add_argument("--roi-subset", help="comma-separated task label names")
    args = ap.parse_args()
    if args.task is not None and args.models_root is None:
        ap.error("--task needs --models-root")

    timer = Timer()
    t_total = time.perf_counter()
    try:
        t0 = time.perf_counter()
        img = nib.load(args.volume)
        hu = np.asarray(img.dataobj)
        if hu.ndim != 3:
            raise Failure("bad_volume", f"{args.volume} has {hu.ndim} dimensions, not 3")
        if hu.dtype != np.int16:
            raise Failure("bad_volume", f"{args.volume} holds {hu.dtype} after scaling, not int16 HU")
        affine = img.affine
        # Spacing along X, Y, Z: the norms of the affine's columns (as shared::volume::Affine::spacing).
        lin = np.asarray(affine, dtype=np.float64)
        spacing_xyz = [math.sqrt(lin[0, c] * lin[0, c] + lin[1, c] * lin[1, c] + lin[2, c] * lin[2, c]) for c in range(3)]
        hu_zyx = hu.T  # the array is [x, y, z]; the tensor's view is (z, y, x)
        spacing_zyx = spacing_xyz[::-1]

        task, entries = plan_task(args)
        entries, keep = apply_roi_subset(task, entries, args.roi_subset)
        sessions = []
        for model_dir, card, label_map in entries:
            sessions.append(open_session(model_dir, card, args.threads, args.provider))
        t0 = timer.add("read_s", t0)

        if any(card.get("ct_only") for _, card, _ in entries):
            check_ct_like(hu)
        task_max = max([int(l["id"]) for l in task["labels"]] + [0])
        merged = np.zeros(hu_zyx.shape, dtype=np.uint16)
        t0 = timer.add("preprocess_s", t0)
        for (model_dir, card, label_map), session in zip(entries, sessions):
            local = run_model(hu_zyx, spacing_zyx, card, session, timer)
            t0 = time.perf_counter()
            # 10. Local to task ids; merge in task order, later non-background labels win.
            n_local = max(int(l["id"]) for l in card["labels"]) + 1
            lut = np.zeros(n_local, dtype=np.uint16)
            for local_id, task_id in label_map.items():
                if 0 < local_id < n_local and (keep is None or task_id in keep):
                    lut[local_id] = task_id
            mapped = lut[local]
            np.copyto(merged, mapped, where=mapped != 0)
            timer.add("postprocess_s", t0)

        t0 = time.perf_counter()
        dtype = np.uint8 if task_max <= 255 else np.uint16
        out_xyz = np.ascontiguousarray(merged.T).astype(dtype)
        header = img.header.copy()
        header.set_data_dtype(dtype)
        out_img = nib.Nifti1Image(out_xyz, affine, header)
        out_img.header.set_slope_inter(1.0, 0.0)
        nib.save(out_img, args.out)
        timer.add("write_s", t0)
    except Failure as e:
        print(f"reference.py: error: {e}", file=sys.stderr)
        return 1

    result = dict(timer.t)
    result["total_s"] = time.perf_counter() - t_total
    result["tiles"] = timer.tiles
    result["runs"] = timer.runs
    text = json.dumps(result, indent=2)
    print(text)
    if args.timings:
        Path(args.timings).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
