"""One 128³ tile of a real CT through the same nnU-Net network twice: in PyTorch (the network
nnUNetPredictor builds from the checkpoint) and in ONNX Runtime (the model.onnx `iris model import`
exported from it). No sliding window, no resampling: what is left is the two runtimes' kernels.
Prints the logits' difference and how often their argmax agrees. Runs in nnU-Net's venv.

    python tile_torch_vs_ort.py TRAINED_MODEL_FOLDER MODEL_ONNX CT_AT_MODEL_SPACING.nii.gz
"""

import os
import sys

for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
    os.environ.setdefault(key, "/tmp")

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import onnxruntime  # noqa: E402
import torch  # noqa: E402
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor  # noqa: E402


def main():
    folder, onnx_path, ct_path = sys.argv[1:4]
    torch.set_num_threads(2)
    predictor = nnUNetPredictor(tile_step_size=0.8, use_mirroring=False, device=torch.device("cpu"),
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(folder, use_folds=("0",), checkpoint_name="checkpoint_final.pth")
    image = nib.load(ct_path)
    data = np.asarray(image.dataobj, dtype=np.float32).transpose(2, 1, 0)[None]
    spacing = [float(s) for s in image.header.get_zooms()[:3][::-1]]
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    normalised, _, _ = preprocessor.run_case_npy(data, None, {"spacing": spacing}, predictor.plans_manager,
                                                 predictor.configuration_manager, predictor.dataset_json)
    patch = [int(p) for p in predictor.configuration_manager.patch_size]
    tile = np.zeros((1, 1, *patch), np.float32)  # zero-padded where the CT is thinner, as nnU-Net pads
    region = tuple(slice(0, min(p, n)) for p, n in zip(patch, normalised.shape[1:]))
    tile[(0, 0, *region)] = normalised[(0, *region)]
    network = predictor.network
    network.load_state_dict(predictor.list_of_parameters[0])
    network.eval()
    with torch.inference_mode():
        from_torch = network(torch.from_numpy(tile)).numpy()
    session = onnxruntime.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    from_ort = session.run(None, {"input": tile})[0]
    ordered = np.sort(from_torch, axis=1)
    margin = ordered[:, -1] - ordered[:, -2]
    agree = float((from_torch.argmax(1) == from_ort.argmax(1)).mean() * 100)
    print(f"tile {patch} of {ct_path}: mean |logit| {np.abs(from_torch).mean():.3f}, "
          f"max |torch - onnxruntime| {np.abs(from_torch - from_ort).max():.4f}, "
          f"argmax equal on {agree:.3f} % of voxels, median top-2 margin {np.median(margin):.3f}")


if __name__ == "__main__":
    main()
