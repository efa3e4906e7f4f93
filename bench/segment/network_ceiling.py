#!/usr/bin/env python3
"""How fast ONNX Runtime's CPU kernels run one tile of a model, and how much room is left.

    network_ceiling.py --model DIR [--threads N] [--runs 3] [--record BENCHMARKS.md | -]

The sliding window's end-to-end speed on the CPU is bounded by the network: Rust and the Python
reference run the same ONNX Runtime kernels on the same tiles (equal labels need equal logits), so
what is left to win is measured here, on one random patch of the model's size:

- the network's arithmetic (multiply-adds of every Conv and ConvTranspose, from ONNX shape
  inference) and the rate the kernels reach;
- one tile on N intra-op threads against one tile on 1 thread (how well ONNX Runtime spreads a
  tile over the cores);
- N processes each running tiles on 1 thread at once (what running tiles side by side instead
  would give);
- settings that could make the same kernels faster without changing their arithmetic' order
  (session config entries, and glibc's transparent huge pages for ONNX Runtime's allocations),
  each on N threads in a process of its own, against the defaults in a process of its own;
- ONNX Runtime's own profile of one tile: where the time goes, per operator type.

Prints a Markdown section and records it in BENCHMARKS.md between <!-- segment-ceiling:start -->
and <!-- segment-ceiling:end --> unless --record is "-". Needs onnxruntime, onnx and numpy
(scripts/onnx-env.sh install).
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import re
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import shape_inference


def network_flops(model_path: Path, patch: list[int]) -> float:
    """Floating-point operations (2 per multiply-add) of the Conv and ConvTranspose nodes."""
    model = onnx.load(str(model_path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for index, value in enumerate([1, 1, *patch]):
        dims[index].ClearField("dim_param")
        dims[index].dim_value = value
    model = shape_inference.infer_shapes(model)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*model.graph.value_info, *model.graph.output, *model.graph.input]
    }
    weights = {t.name: list(t.dims) for t in model.graph.initializer}
    flops = 0.0
    for node in model.graph.node:
        if node.op_type == "Conv":
            flops += 2.0 * np.prod(shapes[node.output[0]]) * np.prod(weights[node.input[1]][1:])
        elif node.op_type == "ConvTranspose":
            weight = weights[node.input[1]]
            flops += 2.0 * np.prod(shapes[node.input[0]]) * weight[1] * np.prod(weight[2:])
    return flops


# Settings tried on N threads: a name, session config entries, extra environment for the process.
SETTINGS = [
    ("defaults", {}, {}),
    ("`session.set_denormal_as_zero=1`", {"session.set_denormal_as_zero": "1"}, {}),
    ("`session.dynamic_block_base=4`", {"session.dynamic_block_base": "4"}, {}),
    ("`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`", {}, {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}),
]


def session_for(model_path: str, threads: int, config: dict[str, str], profile: str | None = None):
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    if profile:
        options.enable_profiling = True
        options.profile_file_prefix = profile
    return ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])


def tile_seconds(
    model_path: str, patch: list[int], threads: int, runs: int, config: dict[str, str] | None = None
) -> list[float]:
    """Seconds per `session.run` on one random patch, after one warm-up run."""
    session = session_for(model_path, threads, config or {})
    tile = np.random.default_rng(0).standard_normal((1, 1, *patch), dtype=np.float32)
    name = session.get_inputs()[0].name
    session.run(None, {name: tile})
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {name: tile})
        seconds.append(time.perf_counter() - start)
    return seconds


def _one_thread_worker(arguments: tuple[str, list[int], int]) -> list[float]:
    return tile_seconds(arguments[0], arguments[1], 1, arguments[2])


def _settings_worker(arguments: tuple[str, list[int], int, int, dict[str, str]]) -> list[float]:
    return tile_seconds(*arguments)


def in_own_process(function, arguments, environment: dict[str, str]):
    """`function(arguments)` in a fresh process started with `environment` added (glibc reads its
    tunables at start-up)."""
    saved = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            return pool.apply(function, (arguments,))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def operator_shares(model_path: str, patch: list[int], threads: int) -> list[tuple[str, float, int]]:
    """(operator type, share of kernel time, nodes) from ONNX Runtime's profile of one run."""
    with tempfile.TemporaryDirectory() as directory:
        session = session_for(model_path, threads, {}, profile=os.path.join(directory, "profile"))
        tile = np.random.default_rng(0).standard_normal((1, 1, *patch), dtype=np.float32)
        session.run(None, {session.get_inputs()[0].name: tile})
        events = json.loads(Path(session.end_profiling()).read_text())
    time_by_op: Counter[str] = Counter()
    nodes: Counter[str] = Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            time_by_op[event["args"]["op_name"]] += event["dur"]
            nodes[event["args"]["op_name"]] += 1
    total = sum(time_by_op.values())
    return [(op, duration / total, nodes[op]) for op, duration in time_by_op.most_common()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="directory with card.json and model.onnx")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--record", default="BENCHMARKS.md", help='file to record into, "-" for none')
    args = parser.parse_args()
    card = json.loads((args.model / "card.json").read_text())
    patch = card["patch_size"]
    model_path = str(args.model / "model.onnx")
    flops = network_flops(args.model / "model.onnx", patch)

    threaded = tile_seconds(model_path, patch, args.threads, args.runs)
    single = tile_seconds(model_path, patch, 1, args.runs)
    # N processes at once, one thread each: each finishes `runs` tiles; throughput is N × runs
    # tiles over the slowest process's time.
    with multiprocessing.get_context("spawn").Pool(args.threads) as pool:
        started = time.perf_counter()
        side_by_side = pool.map(_one_thread_worker, [(model_path, patch, args.runs)] * args.threads)
    side_by_side_per_tile = max(sum(s) for s in side_by_side) / (args.threads * args.runs)
    settings = [
        (name, in_own_process(_settings_worker, (model_path, patch, args.threads, args.runs, config), environment))
        for name, config, environment in SETTINGS
    ]
    shares = operator_shares(model_path, patch, args.threads)

    median = lambda values: float(np.median(values))  # noqa: E731
    threaded_s, single_s = median(threaded), median(single)
    fmt = lambda values: ", ".join(f"{v:.2f}" for v in values)  # noqa: E731
    lines = [
        f"Measured by `bench/segment/network_ceiling.py` on {datetime.date.today()} ({os.cpu_count()} cores, "
        f"ONNX Runtime {ort.__version__}, CPU execution provider): model `{card['name']}`, one random "
        f"{'×'.join(map(str, patch))} patch, {args.runs} timed runs after a warm-up, medians.",
        "",
        "| | seconds per tile | runs | network rate |",
        "|---|---|---|---|",
        f"| one tile on {args.threads} intra-op threads | {threaded_s:.2f} s | {fmt(threaded)} | "
        f"{flops / threaded_s / 1e9:.0f} GFLOP/s |",
        f"| one tile on 1 thread | {single_s:.2f} s | {fmt(single)} | {flops / single_s / 1e9:.0f} GFLOP/s |",
        f"| {args.threads} processes side by side, 1 thread each | {side_by_side_per_tile:.2f} s (throughput) | "
        f"{'; '.join(fmt(s) for s in side_by_side)} | {flops / side_by_side_per_tile / 1e9:.0f} GFLOP/s |",
        "",
        f"The network is {flops / 1e9:.0f} GFLOP per tile (Conv and ConvTranspose multiply-adds). "
        f"{args.threads} threads run a tile {single_s / threaded_s:.2f}× faster than 1 thread "
        f"({100 * single_s / threaded_s / args.threads:.0f} % of linear); running tiles side by side instead "
        f"would change the time per tile by {100 * (side_by_side_per_tile / threaded_s - 1):+.1f} %.",
        "",
        f"Settings that keep the kernels' arithmetic, each on {args.threads} threads in a process of its own "
        f"(the defaults too):",
        "",
        "| setting | seconds per tile (median) | runs | against the defaults |",
        "|---|---|---|---|",
        *(
            f"| {name} | {median(runs):.2f} s | {fmt(runs)} | {100 * (median(runs) / median(settings[0][1]) - 1):+.1f} % |"
            for name, runs in settings
        ),
        "",
        "Where one tile's kernel time goes (ONNX Runtime's profile, one run): "
        + ", ".join(f"{op} {100 * share:.1f} % ({count} nodes)" for op, share, count in shares)
        + ".",
    ]
    section = "\n".join(lines)
    print(section)
    if args.record != "-":
        text = Path(args.record).read_text()
        block = f"<!-- segment-ceiling:start -->\n{section}\n<!-- segment-ceiling:end -->"
        if "<!-- segment-ceiling:start -->" in text:
            text = re.sub(
                r"<!-- segment-ceiling:start -->.*?<!-- segment-ceiling:end -->", lambda _: block, text, flags=re.S
            )
        else:
            text = text.rstrip("\n") + "\n\n## Segment: how fast the network itself runs (CPU)\n\n" + block + "\n"
        Path(args.record).write_text(text)


if __name__ == "__main__":
    main()
