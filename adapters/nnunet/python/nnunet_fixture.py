"""nnU-Net v2 fixtures for iris's tests and benchmarks, made with nnU-Net's own code, and nnU-Net's
own predictions to compare iris with.

    python nnunet_fixture.py model RESULTS --dataset 901 --name Tiny --labels a b c [options]
        An nnU-Net v2 results tree: RESULTS/Dataset901_Tiny/<trainer>__<plans>__<configuration>/
        with dataset.json, plans.json and fold_<f>/checkpoint_final.pth (random weights), the
        network built by the trainer's build_network_architecture from the plans, as nnU-Net's
        predictor rebuilds it. Prints the trained-model folder.

    python nnunet_fixture.py totalsegmentator WEIGHTS --template task.json [--size small|full]
        TotalSegmentator v2's weights folder for its `total` task, as TotalSegmentator lays it out
        (WEIGHTS/Dataset291_TotalSegmentator_part1_organs_1559subj/nnUNetTrainerNoMirroring__nnUNetPlans__3d_fullres/
        …, the five 1.5 mm parts and the 3 mm fast model Dataset297), in the old plans format its
        weights use, each part's labels named as TotalSegmentator names them (from iris's task
        template), random weights. `full`: TotalSegmentator's network (6 stages, 32→320 features,
        128³ patches at 1.5 mm); `small` (default): the same layout with a small network.

    python nnunet_fixture.py predict MODEL_FOLDER CT.nii.gz OUT_PREFIX [--folds 0 ...] [--threads N]
        nnUNetPredictor on a canonical (RAS) CT given as arrays in (z, y, x) order, the order iris's
        sliding window uses: nnU-Net's preprocessing (crop to non-zero, CT normalisation,
        resampling to the model's spacing), then predict_logits_from_preprocessed_data. Writes
        OUT_PREFIX.logits.f32 (float32, [classes, z, y, x], C order), OUT_PREFIX.labels.u8 (argmax)
        and OUT_PREFIX.json (shapes, the crop's bounding box, timings); with --float32-accumulation
        also OUT_PREFIX.logits32.f32, the same predictor accumulating in float32.

    python nnunet_fixture.py zoom CT.nii.gz OUT_PREFIX --spacing X Y Z
        TotalSegmentator's resampling around nnU-Net (its change_spacing: scipy.ndimage.zoom) on a
        canonical CT: OUT_PREFIX.hu.i32 (the CT at the spacing, order 1, truncated to int32),
        OUT_PREFIX.labels.u8 (a deterministic label volume on that grid) and OUT_PREFIX.back.u8
        (those labels zoomed back to the CT's shape, order 0); all (z, y, x), x fastest.
"""

import argparse
import json
import os
import sys
import time
import warnings


def nnunet_environment():
    warnings.filterwarnings("ignore")
    for name in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.environ.setdefault(name, "/nonexistent")


# TotalSegmentator v2's `total` models: dataset id, folder, trainer, spacing (mm).
TOTALSEGMENTATOR_MODELS = [
    (291, "Dataset291_TotalSegmentator_part1_organs_1559subj", "totalseg-291-organs", "nnUNetTrainerNoMirroring", 1.5),
    (292, "Dataset292_TotalSegmentator_part2_vertebrae_1532subj", "totalseg-292-vertebrae", "nnUNetTrainerNoMirroring", 1.5),
    (293, "Dataset293_TotalSegmentator_part3_cardiac_1559subj", "totalseg-293-cardiac", "nnUNetTrainerNoMirroring", 1.5),
    (294, "Dataset294_TotalSegmentator_part4_muscles_1559subj", "totalseg-294-muscles", "nnUNetTrainerNoMirroring", 1.5),
    (295, "Dataset295_TotalSegmentator_part5_ribs_1559subj", "totalseg-295-ribs", "nnUNetTrainerNoMirroring", 1.5),
    (297, "Dataset297_TotalSegmentator_total_3mm_1559subj", "totalseg-297-fast", "nnUNetTrainer_4000epochs_NoMirroring", 3.0),
]

# TotalSegmentator's CT intensity statistics (the order of magnitude of its plans'
# foreground_intensity_properties_per_channel; exact values are the weights' own).
CT_INTENSITIES = {"max": 3071.0, "mean": 44.4, "median": 47.0, "min": -1024.0,
                  "percentile_00_5": -1004.0, "percentile_99_5": 1588.0, "std": 398.9}


def old_style_configuration(spacing, patch, features, stages, batch_size=2):
    """A 3d_fullres configuration in the old plans format (as TotalSegmentator's weights have it)."""
    pools = [[1, 1, 1]] + [[2, 2, 2]] * (stages - 1)
    return {
        "data_identifier": "nnUNetPlans_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": batch_size,
        "patch_size": list(patch),
        "median_image_size_in_voxels": [max(p * 2, p) for p in patch],
        "spacing": list(spacing),
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "UNet_class_name": "PlainConvUNet",
        "UNet_base_num_features": features[0],
        "n_conv_per_stage_encoder": [2] * stages,
        "n_conv_per_stage_decoder": [2] * (stages - 1),
        "num_pool_per_axis": [stages - 1] * 3,
        "pool_op_kernel_sizes": pools,
        "conv_kernel_sizes": [[3, 3, 3]] * stages,
        "unet_max_num_features": features[-1],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "batch_dice": False,
    }


def new_style_configuration(spacing, patch, features, batch_size=2):
    """A 3d_fullres configuration in the current plans format."""
    stages = len(features)
    return {
        "data_identifier": "nnUNetPlans_3d_fullres",
        "preprocessor_name": "DefaultPreprocessor",
        "batch_size": batch_size,
        "patch_size": list(patch),
        "median_image_size_in_voxels": [max(p * 2, p) for p in patch],
        "spacing": list(spacing),
        "normalization_schemes": ["CTNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": stages,
                "features_per_stage": list(features),
                "conv_op": "torch.nn.modules.conv.Conv3d",
                "kernel_sizes": [[3, 3, 3]] * stages,
                "strides": [[1, 1, 1]] + [[2, 2, 2]] * (stages - 1),
                "n_conv_per_stage": [2] * stages,
                "n_conv_per_stage_decoder": [2] * (stages - 1),
                "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-05, "affine": True},
                "dropout_op": None,
                "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU",
                "nonlin_kwargs": {"inplace": True},
            },
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
        },
        "batch_dice": False,
    }


def write_model(results, dataset_id, dataset_name, labels, configuration, trainer, folds, seed,
                transpose_forward=(0, 1, 2), plans_name="nnUNetPlans", configuration_name="3d_fullres",
                folder_name=None, intensities=None):
    """Writes one trained-model folder; returns its path."""
    nnunet_environment()
    import torch
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    import nnunetv2

    dataset_folder = folder_name or f"Dataset{dataset_id:03d}_{dataset_name}"
    model_folder = os.path.join(results, dataset_folder, f"{trainer}__{plans_name}__{configuration_name}")
    os.makedirs(model_folder, exist_ok=True)
    transpose_backward = [list(transpose_forward).index(axis) for axis in range(3)]
    plans = {
        "dataset_name": dataset_folder,
        "plans_name": plans_name,
        "original_median_spacing_after_transp": configuration["spacing"],
        "original_median_shape_after_transp": configuration["median_image_size_in_voxels"],
        "image_reader_writer": "SimpleITKIO",
        "transpose_forward": list(transpose_forward),
        "transpose_backward": transpose_backward,
        "configurations": {configuration_name: configuration},
        "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": dict(intensities or CT_INTENSITIES)},
    }
    dataset = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, **{name: index + 1 for index, name in enumerate(labels)}},
        "numTraining": 1,
        "file_ending": ".nii.gz",
        "name": dataset_folder,
    }
    with open(os.path.join(model_folder, "plans.json"), "w") as out:
        json.dump(plans, out, indent=1)
    with open(os.path.join(model_folder, "dataset.json"), "w") as out:
        json.dump(dataset, out, indent=1)
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration_name)
    trainer_class = recursive_find_python_class(os.path.join(nnunetv2.__path__[0], "training", "nnUNetTrainer"),
                                                trainer, "nnunetv2.training.nnUNetTrainer")
    if trainer_class is None:
        raise SystemExit(f"nnU-Net has no trainer {trainer}")
    mirror_axes = None if "NoMirroring" in trainer else (0, 1, 2)
    for fold in folds:
        torch.manual_seed(seed + int(fold))
        network = trainer_class.build_network_architecture(plans_manager, configuration_manager, 1, len(labels) + 1,
                                                           enable_deep_supervision=False)
        # He-initialised weights give every class nearly the same logit; scale the last layer so
        # random networks still draw distinct regions (what a comparison needs).
        with torch.no_grad():
            last = [m for m in network.modules() if isinstance(m, torch.nn.Conv3d)][-1]
            last.weight.mul_(25.0)
        checkpoint = {
            "network_weights": network.state_dict(),
            "optimizer_state": None,
            "grad_scaler_state": None,
            "logging": {},
            "_best_ema": None,
            "current_epoch": 0,
            "init_args": {"plans": plans, "configuration": configuration_name, "fold": int(fold),
                          "dataset_json": dataset, "device": "cpu"},
            "trainer_name": trainer,
            "inference_allowed_mirroring_axes": mirror_axes,
        }
        fold_folder = os.path.join(model_folder, f"fold_{fold}")
        os.makedirs(fold_folder, exist_ok=True)
        torch.save(checkpoint, os.path.join(fold_folder, "checkpoint_final.pth"))
    return model_folder


def command_model(args):
    features = args.features
    configuration = (old_style_configuration(args.spacing, args.patch, features, len(features))
                     if args.old_plans else new_style_configuration(args.spacing, args.patch, features))
    folder = write_model(args.results, args.dataset, args.name, args.labels, configuration, args.trainer,
                         args.folds, args.seed, transpose_forward=tuple(args.transpose))
    print(folder)


def command_totalsegmentator(args):
    with open(args.template) as source:
        template = json.load(source)
    names = {label["id"]: label["name"] for label in template["labels"]}
    maps = {model["model"]: model["label_map"] for model in template["models"] + template["fast_models"]}
    for dataset_id, folder, model, trainer, spacing in TOTALSEGMENTATOR_MODELS:
        label_map = {int(local): task for local, task in maps[model].items()}
        labels = [names[label_map[local]] for local in range(1, max(label_map) + 1)]
        if args.size == "full":
            configuration = old_style_configuration([spacing] * 3, [128, 128, 128], [32, 320], 6)
        else:
            configuration = old_style_configuration([spacing] * 3, [32, 32, 32], [8, 32], 3)
        path = write_model(args.weights, dataset_id, None, labels, configuration, trainer, ["0"],
                           args.seed + dataset_id, folder_name=folder)
        print(path)


def command_predict(args):
    nnunet_environment()
    import numpy as np
    import nibabel as nib
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    image = nib.load(args.ct)
    if nib.aff2axcodes(image.affine) != ("R", "A", "S"):
        raise SystemExit(f"{args.ct} is not in canonical RAS orientation")
    # iris's window works on (z, y, x) of the canonical grid: the array nnU-Net gets.
    data = np.asarray(image.dataobj, dtype=np.float32).transpose(2, 1, 0)[None]
    spacing_zyx = [float(s) for s in image.header.get_zooms()[:3][::-1]]
    predictor = nnUNetPredictor(tile_step_size=args.tile_step, use_gaussian=True, use_mirroring=True,
                                device=torch.device("cpu"), verbose=False, allow_tqdm=False)
    folds = tuple(args.folds) if args.folds else None
    predictor.initialize_from_trained_model_folder(args.model_folder, use_folds=folds)
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    properties = {"spacing": spacing_zyx}
    preprocessed, _, properties = preprocessor.run_case_npy(data, None, properties, predictor.plans_manager,
                                                            predictor.configuration_manager,
                                                            predictor.dataset_json)
    prepared = time.perf_counter()
    data = torch.from_numpy(preprocessed)
    logits = predictor.predict_logits_from_preprocessed_data(data).float().numpy()
    predicted = time.perf_counter()
    logits = np.ascontiguousarray(logits, dtype=np.float32)
    logits.tofile(args.out_prefix + ".logits.f32")
    np.ascontiguousarray(np.argmax(logits, axis=0).astype(np.uint8)).tofile(args.out_prefix + ".labels.u8")
    if args.float32_accumulation:
        # The same predictor with its two accumulators (the weighted logits and the weights) in
        # float32 instead of float16: `_internal_predict_sliding_window_return_logits` allocates
        # them as `torch.half`, which is swapped for the call. Everything else is nnU-Net's own
        # code, the float16 Gaussian map included. It separates nnU-Net's algorithm from the
        # rounding of its half-precision sums.
        half = torch.half
        try:
            torch.half = torch.float32
            exact = predictor.predict_logits_from_preprocessed_data(data).float().numpy()
        finally:
            torch.half = half
        np.ascontiguousarray(exact, dtype=np.float32).tofile(args.out_prefix + ".logits32.f32")
    with open(args.out_prefix + ".json", "w") as out:
        json.dump({
            "logits_shape": list(logits.shape),
            "input_shape_zyx": list(data.shape[1:]),
            "crop_bbox_zyx": [[int(a), int(b)] for a, b in properties["bbox_used_for_cropping"]],
            "preprocess_s": prepared - started,
            "predict_s": predicted - prepared,
            "mirror_axes": list(predictor.allowed_mirroring_axes or []),
        }, out, indent=1)


def command_zoom(args):
    """TotalSegmentator's change_spacing around nnU-Net, on `ct`: its input zoom (scipy, order 1,
    mode nearest, float64 data truncated to int32) to `spacing` (x y z mm), and its label zoom
    (order 0) of a deterministic label volume on that grid back to the CT's shape. Arrays are
    written (z, y, x), x fastest, as iris lays them out."""
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    image = nib.load(args.ct)
    if nib.aff2axcodes(image.affine) != ("R", "A", "S"):
        raise SystemExit(f"{args.ct} is not in canonical RAS orientation")
    data = image.get_fdata()
    zoom = np.array(image.header.get_zooms()[:3]) / np.array(args.spacing)
    zoomed = ndimage.zoom(data, zoom, order=1, mode="nearest").astype(np.int32)
    np.ascontiguousarray(zoomed.transpose(2, 1, 0)).tofile(args.out_prefix + ".hu.i32")
    labels = (np.arange(zoomed.size, dtype=np.int64) * 7919 % 251).astype(np.uint8).reshape(zoomed.shape)
    np.ascontiguousarray(labels.transpose(2, 1, 0)).tofile(args.out_prefix + ".labels.u8")
    back = ndimage.zoom(labels.astype(np.float64), np.array(data.shape) / np.array(labels.shape), order=0,
                        mode="nearest").astype(np.uint8)
    assert back.shape == data.shape, (back.shape, data.shape)
    np.ascontiguousarray(back.transpose(2, 1, 0)).tofile(args.out_prefix + ".back.u8")
    print(json.dumps({"zoomed_xyz": list(zoomed.shape)}))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    model = commands.add_parser("model")
    model.add_argument("results")
    model.add_argument("--dataset", type=int, required=True)
    model.add_argument("--name", required=True)
    model.add_argument("--labels", nargs="+", required=True)
    model.add_argument("--spacing", type=float, nargs=3, required=True)
    model.add_argument("--patch", type=int, nargs=3, required=True)
    model.add_argument("--features", type=int, nargs="+", default=[8, 16])
    model.add_argument("--trainer", default="nnUNetTrainer")
    model.add_argument("--folds", nargs="+", default=["0"])
    model.add_argument("--transpose", type=int, nargs=3, default=[0, 1, 2])
    model.add_argument("--old-plans", action="store_true")
    model.add_argument("--seed", type=int, default=1)
    model.set_defaults(run=command_model)
    totalseg = commands.add_parser("totalsegmentator")
    totalseg.add_argument("weights")
    totalseg.add_argument("--template", required=True)
    totalseg.add_argument("--size", choices=["small", "full"], default="small")
    totalseg.add_argument("--seed", type=int, default=1)
    totalseg.set_defaults(run=command_totalsegmentator)
    predict = commands.add_parser("predict")
    predict.add_argument("model_folder")
    predict.add_argument("ct")
    predict.add_argument("out_prefix")
    predict.add_argument("--folds", nargs="*")
    predict.add_argument("--tile-step", type=float, default=0.5)
    predict.add_argument("--float32-accumulation", action="store_true",
                         help="also write OUT_PREFIX.logits32.f32: the predictor with float32 accumulators")
    predict.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    zoom = commands.add_parser("zoom", help=command_zoom.__doc__)
    zoom.add_argument("ct")
    zoom.add_argument("out_prefix")
    zoom.add_argument("--spacing", type=float, nargs=3, required=True)
    zoom.set_defaults(run=command_zoom)
    predict.set_defaults(run=command_predict)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    sys.exit(main())
