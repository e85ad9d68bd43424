"""int8 calibration data for :mod:`solo_tf.export.tflite`: canvases letterboxed as in training."""

from __future__ import annotations

import sys

import numpy as np

from solo_tf.export.files import ExportError


def calibration_canvases(calibration, canvas_size, config=None) -> np.ndarray:
    """Canvases (N, H, W, 3) float32 0-255 for int8 calibration.

    Args:
        calibration: an int N (the first N training images of ``config``'s data source,
            letterboxed as in training without augmentation) or an iterable of RGB images.
        canvas_size: (H, W).
        config: a :class:`solo_tf.config.Config` (needed for an int N).
    """
    from solo_tf.preprocess import letterbox

    if isinstance(calibration, (int, np.integer)) and not isinstance(calibration, bool):
        n = int(calibration)
        if n <= 0:
            raise ExportError(f"calibration must be a positive number of images, got {n}")
        if config is None:
            raise ExportError(
                "quantize='int8' calibrates on the model's training data: pass config= (the training "
                "config, or --config on the command line), or a list of images as calibration"
            )
        images = _training_images(config, n)
    else:
        images = list(calibration)
        if not images:
            raise ExportError("calibration: no images given")
    return np.stack([letterbox(np.asarray(im), canvas_size)[0] for im in images]).astype(np.float32)


def _training_images(config, n):
    """The first ``n`` images (h, w, 3) uint8 of the training split of ``config.data``."""
    from solo_tf.data.sources import load_source

    src = load_source(config, "train")
    if src is None or src.num_records == 0:
        raise ExportError(f"data.source={config.data.source!r} has no training images to calibrate on")
    images = [r["image"].numpy() for r in src.records.take(n)]
    if len(images) < n:
        print(f"[solo-tf] int8 calibration: the training split has {len(images)} images (asked for {n})",
              file=sys.stderr)
    return images
