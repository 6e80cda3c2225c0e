"""Trained segmentation models: versioned folders, the input grid they were
trained on, and the pairs of images and labels they are trained from.

Used by the workflows ``train-segmentation`` and ``segment``
(``notebooks/workflows``); the functions work in any notebook too.

A model is a folder ``<models_dir>/<name>/v<N>/``:

``model.pt``
    the network's weights (a PyTorch ``state_dict``);
``model.json``
    what it takes to use the model again and what it was made from: the
    architecture and its arguments, the label names, the input grid and
    intensity normalisation, the training series and their hash, seed,
    epochs, final loss and per-label Dice, the SHA-256 of ``model.pt`` and
    the versions of imaginghub, MONAI and PyTorch (see :func:`save_model`);
any other files the training wrote (``loss.png``).

Versions are never changed once written: :func:`save_model` writes a new
folder ``v<N+1>`` next to the others (in a temporary folder first, so that a
half-written version never shows), and :func:`load_model` refuses weights
whose SHA-256 is not the one ``model.json`` recorded.

A model is named by a reference: ``"phantom-unet@2"`` (version 2),
``"phantom-unet"`` (its latest version) or the path of a model folder
(``"~/models/phantom-unet/v2"``, ``"./my-model"``).

The input grid (``model.json``'s ``input``): a series is resampled (linear
interpolation) onto a cube of ``size`` voxels of ``spacing`` mm whose axes
are the patient axes (LPS: ``i`` to the left, ``j`` posterior, ``k``
superior, whatever the series' own orientation) and whose centre is the
centre of the series' volume. So an axial and an oblique series of the same
anatomy look the same to the network. Intensities are divided by the
series' 99th percentile (``normalisation``), which keeps air at 0 (the value
outside the series, too). Predictions (class probabilities) are resampled
back onto the series' own grid and the most probable class taken there.
"""

from .grid import (grid_affine, input_spec, labels_to_grid, normalise, predict, resample,
                   to_input, to_series_grid)
from .metrics import dice_per_label
from .registry import (ARCHITECTURE_MODULES, DEFAULT_MODELS_DIR, FORMAT, INFO, WEIGHTS, Model,
                       ModelError, ModelIntegrityError, ModelNotFound, build_network,
                       check_name, load_model, model_info, package_versions, resolve_model,
                       save_model, versions)
from .training import (check_labels, reference_segmentation, segmentation_record, train,
                       training_data, training_dice, training_pairs)

__all__ = [
    "ARCHITECTURE_MODULES", "DEFAULT_MODELS_DIR", "FORMAT", "INFO", "WEIGHTS", "Model",
    "ModelError", "ModelIntegrityError", "ModelNotFound", "build_network", "check_labels",
    "check_name",
    "dice_per_label", "grid_affine", "input_spec", "labels_to_grid", "load_model",
    "model_info", "normalise", "package_versions", "predict", "reference_segmentation",
    "resample", "resolve_model", "save_model", "segmentation_record", "to_input",
    "to_series_grid", "train", "training_data", "training_dice", "training_pairs", "versions",
]
