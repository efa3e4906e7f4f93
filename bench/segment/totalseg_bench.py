"""Helpers of scripts/bench-segment-totalseg.sh: iris against the TotalSegmentator CLI and nnU-Net's
own predictor, as whole processes, on the same weights and input. Runs in nnU-Net's venv
(scripts/totalseg-env.sh), where TotalSegmentator, nnunetv2 and torch are installed.

    make-ct SHARED_CT OUT             the shared CT upsampled (linear) to 512×512×300, same field of view
    resample CT OUT                   CT at 1.5 mm by TotalSegmentator's own resampling (what its CLI
                                      hands nnU-Net for the `total` task)
    predict WEIGHTS CT OUT --threads N
                                      TotalSegmentator's five 1.5 mm parts through nnUNetPredictor in one
                                      process, set up as TotalSegmentator sets it up (tile step 0.8, no
                                      mirroring, everything on the device), the parts merged into the
                                      117 classes with TotalSegmentator's own class maps;
                                      --float32-accumulation: its two float16 sums made float32
    compare A B                       the share of voxels whose labels are equal (same grid required)
    measure OUT_JSON -- CMD...        run CMD, sampling the memory of its whole process tree (workers
                                      included) every 100 ms: wall seconds, peak of the tree's summed
                                      proportional set size (MiB), and the largest single process's
                                      peak resident set (MiB)
"""

import argparse
import json
import os
import subprocess
import sys
import time

# TotalSegmentator's `total` task: its five 1.5 mm parts, in the order its CLI runs them.
PARTS = {
    291: "class_map_part_organs",
    292: "class_map_part_vertebrae",
    293: "class_map_part_cardiac",
    294: "class_map_part_muscles",
    295: "class_map_part_ribs",
}


def command_make_ct(args):
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    image = nib.as_closest_canonical(nib.load(args.shared_ct))
    data = np.asarray(image.dataobj, dtype=np.float32)
    target = (512, 512, 300)
    zoom = [t / s for t, s in zip(target, data.shape)]
    big = ndimage.zoom(data, zoom, order=1, mode="nearest")
    assert big.shape == target, big.shape
    affine = image.affine.copy()
    affine[:3, :3] = affine[:3, :3] @ np.diag([1 / z for z in zoom])
    out = nib.Nifti1Image(np.round(big).astype(np.int16), affine)
    out.header.set_xyzt_units("mm", "sec")
    nib.save(out, args.out)
    print(json.dumps({"shape": list(big.shape), "spacing_mm": [round(float(s), 4) for s in out.header.get_zooms()]}))


def command_resample(args):
    import nibabel as nib
    import numpy as np
    from totalsegmentator.alignment import as_closest_canonical
    from totalsegmentator.resampling import change_spacing

    # As TotalSegmentator's nnUNet_predict_image does for `total`: canonical, then 1.5 mm, order 1.
    image = as_closest_canonical(nib.load(args.ct))
    resampled = change_spacing(image, [1.5, 1.5, 1.5], order=1, dtype=np.int32, nr_cpus=1)
    data = np.asarray(resampled.dataobj)
    out = nib.Nifti1Image(data.astype(np.int16), resampled.affine)
    out.header.set_xyzt_units("mm", "sec")
    nib.save(out, args.out)
    print(json.dumps({"shape": list(data.shape), "spacing_mm": [float(s) for s in out.header.get_zooms()]}))


def model_folder(weights, dataset_id):
    for name in sorted(os.listdir(weights)):
        if name.startswith(f"Dataset{dataset_id}_"):
            dataset = os.path.join(weights, name)
            trained = [d for d in sorted(os.listdir(dataset)) if d.endswith("__3d_fullres")]
            if len(trained) == 1:
                return os.path.join(dataset, trained[0])
    raise SystemExit(f"no Dataset{dataset_id}_*/*__3d_fullres in {weights}")


def command_predict(args):
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ.setdefault(key, args.weights)
    import nibabel as nib
    import numpy as np
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from totalsegmentator.map_to_binary import class_map, class_map_5_parts

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    image = nib.load(args.ct)
    if nib.aff2axcodes(image.affine) != ("R", "A", "S"):
        raise SystemExit(f"{args.ct} is not in canonical RAS orientation")
    # The array iris's window sees: (z, y, x) of the canonical grid.
    data = np.asarray(image.dataobj, dtype=np.float32).transpose(2, 1, 0)[None]
    spacing_zyx = [float(s) for s in image.header.get_zooms()[:3][::-1]]
    class_map_inv = {name: class_id for class_id, name in class_map["total"].items()}
    combined = np.zeros(data.shape[1:], dtype=np.uint8)
    timings = {}
    for dataset_id, part in PARTS.items():
        part_started = time.perf_counter()
        predictor = nnUNetPredictor(tile_step_size=0.8, use_gaussian=True, use_mirroring=False,
                                    perform_everything_on_device=True, device=torch.device("cpu"),
                                    verbose=False, verbose_preprocessing=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(model_folder(args.weights, dataset_id), use_folds=("0",),
                                                       checkpoint_name="checkpoint_final.pth")
        if args.float32_accumulation:
            # nnU-Net's two accumulators (weighted logits, weights) in float32 instead of float16:
            # `_internal_predict_sliding_window_return_logits` allocates them as `torch.half`,
            # swapped for the call; everything else is nnU-Net's code. It separates nnU-Net's
            # algorithm from the rounding of its half-precision sums.
            half = torch.half
            try:
                torch.half = torch.float32
                seg = predictor.predict_single_npy_array(data, {"spacing": spacing_zyx}, None, None, False)
            finally:
                torch.half = half
        else:
            seg = predictor.predict_single_npy_array(data, {"spacing": spacing_zyx}, None, None, False)
        del predictor
        part_map = class_map_5_parts[part]
        lut = np.zeros(max(part_map) + 1, dtype=np.uint8)
        for local, name in part_map.items():
            lut[local] = class_map_inv[name]
        mapped = lut[np.asarray(seg, dtype=np.int64)]
        np.copyto(combined, mapped, where=mapped != 0)
        timings[part] = time.perf_counter() - part_started
    out = nib.Nifti1Image(np.ascontiguousarray(combined.transpose(2, 1, 0)), image.affine)
    nib.save(out, args.out)
    print(json.dumps({"total_s": time.perf_counter() - started, "parts_s": timings}))


def command_compare(args):
    import nibabel as nib
    import numpy as np

    a, b = nib.load(args.a), nib.load(args.b)
    if a.shape != b.shape or not np.allclose(a.affine, b.affine, atol=1e-3):
        raise SystemExit(f"different grids: {a.shape} {b.shape}\n{a.affine}\n{b.affine}")
    la, lb = np.asarray(a.dataobj).astype(np.int64), np.asarray(b.dataobj).astype(np.int64)
    equal = int((la == lb).sum())
    print(json.dumps({"voxels": int(la.size), "equal": equal, "equal_percent": 100.0 * equal / la.size,
                      "classes_a": int(len(np.unique(la))), "classes_b": int(len(np.unique(lb)))}))


def tree_memory_kib(root):
    """Memory of `root` and all its descendants, from /proc: (the sum of their proportional set
    sizes, the largest single resident set). PSS shares each page among the processes mapping it,
    so forked workers are not counted twice; the largest RSS is what GNU time reports."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    pss, largest, stack = 0, 0, [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/smaps_rollup") as rollup:
                for line in rollup:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                    elif line.startswith("Rss:"):
                        largest = max(largest, int(line.split()[1]))
        except OSError:
            continue
    return pss, largest


def command_measure(args):
    command = args.command[1:] if args.command and args.command[0] == "--" else args.command
    started = time.perf_counter()
    process = subprocess.Popen(command)
    peak_pss, peak_rss = 0, 0
    while process.poll() is None:
        pss, rss = tree_memory_kib(process.pid)
        peak_pss, peak_rss = max(peak_pss, pss), max(peak_rss, rss)
        time.sleep(0.1)
    wall = time.perf_counter() - started
    with open(args.out_json, "w") as out:
        json.dump({"wall_s": wall, "peak_mib": peak_pss / 1024, "largest_process_mib": peak_rss / 1024,
                   "exit_code": process.returncode}, out)
    if process.returncode != 0:
        raise SystemExit(f"{command[0]} exited with {process.returncode}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command_name", required=True)
    make_ct = commands.add_parser("make-ct")
    make_ct.add_argument("shared_ct")
    make_ct.add_argument("out")
    resample = commands.add_parser("resample")
    resample.add_argument("ct")
    resample.add_argument("out")
    predict = commands.add_parser("predict")
    predict.add_argument("weights")
    predict.add_argument("ct")
    predict.add_argument("out")
    predict.add_argument("--threads", type=int, required=True)
    predict.add_argument("--float32-accumulation", action="store_true")
    compare = commands.add_parser("compare")
    compare.add_argument("a")
    compare.add_argument("b")
    measure = commands.add_parser("measure")
    measure.add_argument("out_json")
    measure.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    {"make-ct": command_make_ct, "resample": command_resample, "predict": command_predict,
     "compare": command_compare, "measure": command_measure}[args.command_name](args)


if __name__ == "__main__":
    sys.exit(main())
