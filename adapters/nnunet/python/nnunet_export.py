"""Exports an nnU-Net v2 trained model to ONNX for iris, with nnU-Net's own code.

    python nnunet_export.py MODEL_FOLDER OUT_ONNX FACTS_JSON [--folds 0 1 ...] [--checkpoint NAME]

MODEL_FOLDER is a trained-model folder (`dataset.json`, `plans.json`, `fold_*/<checkpoint>`, e.g.
`Dataset291_.../nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres`). The network is built the way
`nnUNetPredictor.initialize_from_trained_model_folder` builds it (the trainer's
`build_network_architecture` from the plans, the checkpoint's weights). Several folds become one
graph that averages their logits, as `nnUNetPredictor.predict_logits_from_preprocessed_data` does.
A `transpose_forward` other than the identity is put inside the graph (input transposed on the
way in, logits back on the way out), so the graph takes tiles in the volume's own (z, y, x) order.

The graph has one input `input` [N, C, pz, py, px] (float32, the batch dynamic) and one output
`logits` [N, classes, pz, py, px]. Before it is written, the graph is run by ONNX Runtime when
available and by torch on the same random tile, and the largest difference is reported.

FACTS_JSON receives what iris needs for the model's card, read through nnU-Net's own classes:
the patch size and spacing (z, y, x), the intensity normalisation and its properties, the
labels, the mirror axes the checkpoint allows at inference, the trainer and configuration.
Exit code 0 on success; 2 with a one-line reason on stderr when the model cannot be exported.
"""

import argparse
import copy
import json
import os
import sys
import warnings


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model_folder")
    parser.add_argument("out_onnx")
    parser.add_argument("facts_json")
    parser.add_argument("--folds", nargs="*", default=None)
    parser.add_argument("--checkpoint", default="checkpoint_final.pth")
    parser.add_argument("--opset", type=int, default=18)
    args = parser.parse_args()

    warnings.filterwarnings("ignore")
    os.environ.setdefault("nnUNet_raw", "/nonexistent")
    os.environ.setdefault("nnUNet_preprocessed", "/nonexistent")
    os.environ.setdefault("nnUNet_results", "/nonexistent")
    import numpy as np
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    folder = args.model_folder
    for required in ("dataset.json", "plans.json"):
        if not os.path.isfile(os.path.join(folder, required)):
            fail(f"{folder} is not an nnU-Net trained-model folder: {required} is missing")
    folds = args.folds
    if not folds:
        folds = sorted(
            name[len("fold_"):]
            for name in os.listdir(folder)
            if name.startswith("fold_") and os.path.isfile(os.path.join(folder, name, args.checkpoint))
        )
        if not folds:
            fail(f"no fold_*/{args.checkpoint} in {folder}")

    # What iris cannot run is refused before the weights are loaded (a regions-based model's
    # outputs would not even match a label-based network).
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    with open(os.path.join(folder, "dataset.json")) as source:
        dataset_json = json.load(source)
    with open(os.path.join(folder, "plans.json")) as source:
        plans_json = json.load(source)
    if PlansManager(plans_json).get_label_manager(dataset_json).has_regions:
        fail("the model is trained on regions (overlapping classes, regions_class_order in dataset.json); "
             "iris runs label-based models, one class per voxel")
    channel_names = dataset_json.get("channel_names") or dataset_json.get("modality") or {}
    if len(channel_names) != 1:
        fail(f"the model takes {len(channel_names)} input channels; iris runs single-channel CT models")

    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    try:
        predictor.initialize_from_trained_model_folder(folder, use_folds=tuple(folds),
                                                       checkpoint_name=args.checkpoint)
    except Exception as error:  # nnU-Net's own message says what is wrong with the folder
        fail(f"nnU-Net could not load the model: {type(error).__name__}: {error}")

    plans = predictor.plans_manager
    configuration = predictor.configuration_manager
    labels = predictor.label_manager
    dataset = predictor.dataset_json
    channels = dataset.get("channel_names") or dataset.get("modality") or {}
    schemes = list(configuration.normalization_schemes)
    if len(configuration.patch_size) != 3:
        fail(f"configuration {predictor.configuration_manager} is not 3-D (patch {configuration.patch_size})")

    transpose_forward = list(plans.transpose_forward)
    transpose_backward = list(plans.transpose_backward)

    networks = []
    for parameters in predictor.list_of_parameters:
        network = copy.deepcopy(predictor.network)
        network.load_state_dict(parameters)
        network.eval()
        networks.append(network)

    class Exported(torch.nn.Module):
        """The folds' mean logits, on tiles in the volume's own axis order."""

        def __init__(self, members):
            super().__init__()
            self.members = torch.nn.ModuleList(members)

        def forward(self, x):
            if transpose_forward != [0, 1, 2]:
                x = x.permute(0, 1, *[axis + 2 for axis in transpose_forward])
            logits = self.members[0](x)
            for member in self.members[1:]:
                logits = logits + member(x)
            if len(self.members) > 1:
                logits = logits / len(self.members)
            if transpose_backward != [0, 1, 2]:
                logits = logits.permute(0, 1, *[axis + 2 for axis in transpose_backward])
            return logits

    model = Exported(networks).eval()
    # The patch in the volume's own order: network axis i is volume axis transpose_forward[i].
    patch = [0, 0, 0]
    spacing = [0.0, 0.0, 0.0]
    for network_axis, volume_axis in enumerate(transpose_forward):
        patch[volume_axis] = int(configuration.patch_size[network_axis])
        spacing[volume_axis] = float(configuration.spacing[network_axis])
    mirror_axes = predictor.allowed_mirroring_axes
    mirror_axes = sorted(int(transpose_forward[axis]) for axis in mirror_axes) if mirror_axes else []

    example = torch.randn(1, len(channels), *patch, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(example).numpy()
    batch = torch.export.Dim("batch", min=1, max=64)
    try:
        torch.onnx.export(model, (example,), args.out_onnx, input_names=["input"], output_names=["logits"],
                          dynamic_shapes=({0: batch},), opset_version=args.opset, dynamo=True,
                          external_data=False, verbose=False)
    except Exception as error:
        fail(f"torch could not export the network to ONNX: {type(error).__name__}: {error}")

    checked_by = None
    max_difference = None
    try:
        import onnxruntime
        session = onnxruntime.InferenceSession(args.out_onnx, providers=["CPUExecutionProvider"])
        got = session.run(None, {"input": example.numpy()})[0]
        max_difference = float(np.max(np.abs(got - expected)))
        checked_by = f"onnxruntime {onnxruntime.__version__}"
    except ImportError:
        pass

    names = {int(value): name for name, value in dataset["labels"].items()
             if not isinstance(value, (list, tuple))}
    ignore = labels.ignore_label
    output_labels = [label for label in labels.all_labels if label != ignore]
    if output_labels != list(range(len(output_labels))):
        fail(f"the model's labels {output_labels} are not 0, 1, 2, …")
    intensity = plans.foreground_intensity_properties_per_channel.get("0")
    facts = {
        "trainer": predictor.trainer_name,
        "configuration": checkpoint_configuration(folder, folds[0], args.checkpoint),
        "folds": [str(fold) for fold in folds],
        "checkpoint": args.checkpoint,
        "dataset_name": plans.dataset_name,
        "plans_name": plans.plans_name,
        "input_channels": len(channels),
        "channel_names": list(channels.values()),
        "normalization_schemes": schemes,
        "intensity_properties": intensity,
        "patch_size_zyx": patch,
        "spacing_zyx": spacing,
        "transpose_forward": transpose_forward,
        "mirror_axes_zyx": mirror_axes,
        "labels": {str(label): names.get(label, f"label_{label}") for label in output_labels},
        "outputs": int(labels.num_segmentation_heads),
        "opset": args.opset,
        "torch": torch.__version__,
        "nnunetv2": version_of("nnunetv2"),
        "check": {"by": checked_by, "max_abs_difference": max_difference},
    }
    with open(args.facts_json, "w") as out:
        json.dump(facts, out, indent=1)


def checkpoint_configuration(folder, fold, checkpoint_name):
    import torch
    checkpoint = torch.load(os.path.join(folder, f"fold_{fold}", checkpoint_name), map_location="cpu",
                            weights_only=False)
    return checkpoint["init_args"]["configuration"]


def version_of(package):
    try:
        from importlib.metadata import version
        return version(package)
    except Exception:
        return None


if __name__ == "__main__":
    main()
