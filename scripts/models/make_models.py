#!/usr/bin/env python3
"""Makes the ONNX segmentation models the tests and benchmarks use (docs/segmentation.md).

    make_models.py tiny --out DIR
        the small deterministic test models committed under services/segment/tests/models/:
        DIR/tiny-threshold, DIR/tiny-random-a, DIR/tiny-random-b (model.onnx + card.json each)
        and DIR/tiny-merge/task.json. Reruns write byte-identical files.
    make_models.py unet --out DIR [--classes 118] [--patch Z Y X] [--spacing Z Y X] [--seed N] [--name NAME]
        an nnU-Net-shaped 3D U-Net (TotalSegmentator's 3 mm topology) with random weights, for
        benchmarks: about 120 MB, generated on demand, never committed.
    make_models.py pointwise --out DIR [--classes 118] [--patch Z Y X] [--spacing Z Y X] [--seed N]
        one 1x1x1 convolution to --classes outputs with random weights: the window's own memory and
        time on large volumes without a network's cost (scripts/bench-segment-memory.sh).

Needs onnx and numpy only (scripts/onnx-env.sh install; run with the venv's python).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8  # the IR version of opset 17 (onnx 1.12), so older runtimes load the files too
PRODUCER = "iris-oculus scripts/models/make_models.py"
REPO = Path(__file__).resolve().parents[2]
TOTAL_LABELS = REPO.parent / "shared" / "data" / "totalseg" / "total_labels.json"


# ---------------------------------------------------------------------------------------------
# Graph building


class Graph:
    """Accumulates nodes and initializers of a [N, 1, Z, Y, X] -> [N, C, Z, Y, X] network."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.params = 0
        self.count = 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def init(self, name: str, array: np.ndarray) -> str:
        array = np.ascontiguousarray(array, dtype=np.float32)
        self.inits.append(numpy_helper.from_array(array, name))
        self.params += array.size
        return name

    def conv(self, x: str, weight: np.ndarray, bias: np.ndarray, stride: int = 1) -> str:
        n = self.name("conv")
        k = weight.shape[2]
        pad = k // 2
        w = self.init(f"{n}.weight", weight)
        b = self.init(f"{n}.bias", bias)
        self.nodes.append(
            helper.make_node(
                "Conv", [x, w, b], [n], name=n, kernel_shape=[k, k, k], pads=[pad] * 6, strides=[stride] * 3
            )
        )
        return n

    def conv_transpose(self, x: str, weight: np.ndarray, bias: np.ndarray) -> str:
        n = self.name("upconv")
        w = self.init(f"{n}.weight", weight)
        b = self.init(f"{n}.bias", bias)
        self.nodes.append(
            helper.make_node("ConvTranspose", [x, w, b], [n], name=n, kernel_shape=[2, 2, 2], strides=[2, 2, 2])
        )
        return n

    def instance_norm(self, x: str, scale: np.ndarray, bias: np.ndarray) -> str:
        n = self.name("norm")
        s = self.init(f"{n}.scale", scale)
        b = self.init(f"{n}.bias", bias)
        self.nodes.append(helper.make_node("InstanceNormalization", [x, s, b], [n], name=n, epsilon=1e-5))
        return n

    def leaky_relu(self, x: str) -> str:
        n = self.name("lrelu")
        self.nodes.append(helper.make_node("LeakyRelu", [x], [n], name=n, alpha=0.01))
        return n

    def concat(self, xs: list[str]) -> str:
        n = self.name("concat")
        self.nodes.append(helper.make_node("Concat", xs, [n], name=n, axis=1))
        return n

    def model(self, last: str, channels: int, batch: int | str, graph_name: str) -> onnx.ModelProto:
        self.nodes.append(helper.make_node("Identity", [last], ["logits"], name="logits"))
        inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 1, "Z", "Y", "X"])
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, channels, "Z", "Y", "X"])
        graph = helper.make_graph(self.nodes, graph_name, [inp], [out], initializer=self.inits)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=PRODUCER, ir_version=IR_VERSION
        )
        onnx.checker.check_model(model)
        return model


# ---------------------------------------------------------------------------------------------
# Writing


def write_model(d: Path, name: str, model: onnx.ModelProto, card: dict) -> Path:
    """Writes d/model.onnx and d/card.json (with the sha256 of the file as written)."""
    d.mkdir(parents=True, exist_ok=True)
    onnx_path = d / "model.onnx"
    onnx_path.write_bytes(model.SerializeToString())
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    full = {
        "format_version": 1,
        "name": name,
        "description": card["description"],
        "onnx_sha256": digest,
        "axis_order": "zyx",
        "spacing_mm": [float(v) for v in card["spacing_mm"]],
        "patch_size": [int(v) for v in card["patch_size"]],
        "tile_step": float(card["tile_step"]),
        "mirror_axes": list(card["mirror_axes"]),
        "batch_size": int(card["batch_size"]),
        "normalization": {
            "scheme": "ct",
            "clip_hu": [float(v) for v in card["clip_hu"]],
            "mean": float(card["mean"]),
            "std": float(card["std"]),
        },
        "labels": [{"id": i, "name": n} for i, n in card["labels"]],
        "ct_only": True,
        "diagnostic": False,
    }
    write_json(d / "card.json", full)
    print(f"{d}: model.onnx {onnx_path.stat().st_size} bytes, sha256 {digest}", file=sys.stderr)
    return d


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


# ---------------------------------------------------------------------------------------------
# Tiny test models


def tiny_threshold() -> onnx.ModelProto:
    # The card normalises v = (clip(HU, -1024, 2000) - 0) / 1000, so v = HU / 1000 in range.
    # A 1x1x1 convolution gives logits linear in v:
    #   l0 = 0                      (background)
    #   l1 = 4 v + 2 = 4 (v + 0.5)  > l0 exactly when v > -0.5, i.e. HU > -500
    #   l2 = 8 v + 1 = l1 + 4 (v - 0.25)  > l1 exactly when v > 0.25, i.e. HU > +250
    # and l2 < l0 for every v < -0.125, so l2 never wins below -500 HU. Ties go to the lower class
    # (first maximum), so -500 HU is background and +250 HU soft tissue. All weights are exact in f32.
    g = Graph()
    weight = np.array([0.0, 4.0, 8.0], dtype=np.float32).reshape(3, 1, 1, 1, 1)
    bias = np.array([0.0, 2.0, 1.0], dtype=np.float32)
    last = g.conv("input", weight, bias)
    return g.model(last, 3, "N", "tiny_threshold")


def tiny_random(seed: int, channels: int, batch: int | str, logit_scale: float, class_bias: list[float]) -> onnx.ModelProto:
    """Conv3d 3x3x3 1->8, InstanceNormalization, LeakyRelu, Conv3d 3x3x3 8->channels."""
    rng = np.random.default_rng(seed)
    g = Graph()
    hidden = 8
    w1 = rng.standard_normal((hidden, 1, 3, 3, 3)) * math.sqrt(2.0 / 27.0)
    b1 = rng.standard_normal(hidden) * 0.1
    scale = 1.0 + 0.25 * rng.standard_normal(hidden)
    shift = 0.5 * rng.standard_normal(hidden)
    w2 = rng.standard_normal((channels, hidden, 3, 3, 3)) * math.sqrt(2.0 / (hidden * 27)) * logit_scale
    b2 = np.asarray(class_bias, dtype=np.float64)
    x = g.conv("input", w1, b1)
    x = g.instance_norm(x, scale, shift)
    x = g.leaky_relu(x)
    x = g.conv(x, w2, b2)
    return g.model(x, channels, batch, f"tiny_random_{seed}")


def cmd_tiny(args: argparse.Namespace) -> None:
    out = Path(args.out)
    write_model(
        out / "tiny-threshold",
        "tiny-threshold",
        tiny_threshold(),
        {
            "description": "Test model: a 1x1x1 convolution thresholding HU: 0 below -500 HU, "
            "1 (soft tissue) from -500 to +250 HU, 2 (dense) above +250 HU. Not a real model.",
            "spacing_mm": [6, 6, 6],
            "patch_size": [16, 16, 16],
            "tile_step": 0.5,
            "mirror_axes": [],
            "batch_size": 1,
            "clip_hu": [-1024, 2000],
            "mean": 0,
            "std": 1000,
            "labels": [(1, "soft_tissue"), (2, "dense")],
        },
    )
    write_model(
        out / "tiny-random-a",
        "tiny-random-a",
        tiny_random(seed=1001, channels=3, batch="N", logit_scale=4.0, class_bias=TINY_A_BIAS),
        {
            "description": "Test model: two random 3x3x3 convolutions (instance norm, leaky ReLU between); "
            "anisotropic spacing, mirroring over axes 0 and 2, batches of 2. Not a real model.",
            "spacing_mm": [4.5, 4.0, 4.0],
            "patch_size": [16, 24, 24],
            "tile_step": 0.5,
            "mirror_axes": [0, 2],
            "batch_size": 2,
            "clip_hu": [-1000, 1000],
            "mean": -200,
            "std": 400,
            "labels": [(1, "organ_a1"), (2, "organ_a2")],
        },
    )
    write_model(
        out / "tiny-random-b",
        "tiny-random-b",
        tiny_random(seed=2002, channels=4, batch=1, logit_scale=4.0, class_bias=TINY_B_BIAS),
        {
            "description": "Test model: two random 3x3x3 convolutions (instance norm, leaky ReLU between); "
            "tile step 0.8 and a fixed batch dimension of 1. Not a real model.",
            "spacing_mm": [6, 6, 6],
            "patch_size": [16, 16, 16],
            "tile_step": 0.8,
            "mirror_axes": [],
            "batch_size": 1,
            "clip_hu": [-1000, 1000],
            "mean": -200,
            "std": 400,
            "labels": [(1, "organ_b1"), (2, "organ_b2"), (3, "organ_b3")],
        },
    )
    task = {
        "format_version": 1,
        "name": "tiny-merge",
        "description": "Test task: tiny-random-a then tiny-random-b merged into one label table "
        "(tiny-random-b's organ_b2 dropped; its labels win where both models label a voxel).",
        "labels": [
            {"id": 1, "name": "organ_b1", "color": [230, 25, 75]},
            {"id": 3, "name": "organ_a1", "color": [60, 180, 75]},
            {"id": 7, "name": "organ_a2", "color": [0, 130, 200]},
            {"id": 9, "name": "organ_b3", "color": [245, 130, 48]},
        ],
        "models": [
            {"model": "tiny-random-a", "label_map": {"1": 3, "2": 7}},
            {"model": "tiny-random-b", "label_map": {"1": 1, "3": 9}},
        ],
    }
    write_json(out / "tiny-merge" / "task.json", task)
    print(f"{out / 'tiny-merge'}: task.json", file=sys.stderr)


# Final-layer biases chosen (by running bench/segment/reference.py on TotalSegmentator's
# example_ct_sm) so that every class of the random models gets a sizeable share of the voxels.
TINY_A_BIAS = [4.5, 0.0, 0.0]
TINY_B_BIAS = [2.0, 3.0, 0.0, 0.0]


# ---------------------------------------------------------------------------------------------
# nnU-Net-shaped U-Net for benchmarks


def total_label_names(classes: int) -> list[tuple[int, str]]:
    names: dict[int, str] = {}
    if TOTAL_LABELS.is_file():
        for label in json.loads(TOTAL_LABELS.read_text())["labels"]:
            names[int(label["id"])] = label["name"]
    else:
        print(f"make_models.py: {TOTAL_LABELS} not found; naming labels class_N", file=sys.stderr)
    return [(i, names.get(i, f"class_{i}")) for i in range(1, classes)]


def unet(classes: int, seed: int) -> tuple[onnx.ModelProto, int]:
    features = [32, 64, 128, 256, 320, 320]
    rng = np.random.default_rng(seed)
    g = Graph()

    def he(shape: tuple[int, ...], fan_in: int, gain: float = 2.0) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(math.sqrt(gain / fan_in))

    def block(x: str, cin: int, cout: int, stride: int) -> str:
        x = g.conv(x, he((cout, cin, 3, 3, 3), cin * 27), np.zeros(cout, np.float32), stride)
        x = g.instance_norm(x, np.ones(cout, np.float32), np.zeros(cout, np.float32))
        return g.leaky_relu(x)

    skips = []
    x, cin = "input", 1
    for stage, f in enumerate(features):
        x = block(x, cin, f, 1 if stage == 0 else 2)
        x = block(x, f, f, 1)
        skips.append((x, f))
        cin = f
    for skip, f in reversed(skips[:-1]):
        x = g.conv_transpose(x, he((cin, f, 2, 2, 2), cin), np.zeros(f, np.float32))
        x = g.concat([x, skip])
        x = block(x, 2 * f, f, 1)
        x = block(x, f, f, 1)
        cin = f
    x = g.conv(x, he((classes, cin, 1, 1, 1), cin, gain=1.0), np.zeros(classes, np.float32))
    return g.model(x, classes, "N", "unet"), g.params


def cmd_unet(args: argparse.Namespace) -> None:
    if any(p % 32 for p in args.patch):
        sys.exit(f"make_models.py: patch {args.patch} must be divisible by 32 (five stride-2 stages)")
    if args.classes < 2:
        sys.exit("make_models.py: --classes must be at least 2")
    model, params = unet(args.classes, args.seed)
    write_benchmark_model(
        args,
        model,
        "Benchmark model: an nnU-Net-shaped 3D U-Net with TotalSegmentator's 3 mm topology "
        f"(features 32-320, 6 stages) and RANDOM weights (seed {args.seed}); its output means nothing. "
        "The spacing, patch, normalization (clip -1024..1500, mean 0, std 500) are made up.",
    )
    print(f"parameters: {params}")


def cmd_pointwise(args: argparse.Namespace) -> None:
    if args.classes < 2:
        sys.exit("make_models.py: --classes must be at least 2")
    rng = np.random.default_rng(args.seed)
    g = Graph()
    weight = rng.standard_normal((args.classes, 1, 1, 1, 1), dtype=np.float32)
    bias = rng.standard_normal(args.classes, dtype=np.float32)
    model = g.model(g.conv("input", weight, bias), args.classes, "N", "pointwise")
    write_benchmark_model(
        args,
        model,
        f"Benchmark model: one 1x1x1 convolution to {args.classes} outputs with RANDOM weights "
        f"(seed {args.seed}); its output means nothing. It measures the sliding window without a network's cost.",
    )


def write_benchmark_model(args: argparse.Namespace, model: onnx.ModelProto, description: str) -> None:
    """A benchmark model's directory: made-up CT normalisation, step 0.5, no mirroring, batch 1."""
    out = Path(args.out)
    write_model(
        out,
        args.name or out.name,
        model,
        {
            "description": description,
            "spacing_mm": args.spacing,
            "patch_size": args.patch,
            "tile_step": 0.5,
            "mirror_axes": [],
            "batch_size": 1,
            "clip_hu": [-1024, 1500],
            "mean": 0,
            "std": 500,
            "labels": total_label_names(args.classes),
        },
    )


def add_benchmark_arguments(parser: argparse.ArgumentParser, spacing: float) -> None:
    parser.add_argument("--out", required=True, help="model directory to write (model.onnx, card.json)")
    parser.add_argument("--classes", type=int, default=118)
    parser.add_argument("--patch", type=int, nargs=3, default=[128, 128, 128], metavar=("Z", "Y", "X"))
    parser.add_argument("--spacing", type=float, nargs=3, default=[spacing] * 3, metavar=("Z", "Y", "X"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", help="card name (default: the last component of --out)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tiny", help="the small deterministic test models")
    t.add_argument("--out", required=True)
    add_benchmark_arguments(sub.add_parser("unet", help="an nnU-Net-shaped U-Net with random weights, for benchmarks"), 3.0)
    add_benchmark_arguments(
        sub.add_parser("pointwise", help="a 1x1x1 convolution with random weights, for the window's memory"), 1.5
    )
    args = ap.parse_args()
    if args.cmd == "tiny":
        cmd_tiny(args)
    elif args.cmd == "unet":
        cmd_unet(args)
    else:
        cmd_pointwise(args)


if __name__ == "__main__":
    main()
