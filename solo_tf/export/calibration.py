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
                "quantize='int8' calibrates on the model's training data, and this model has no training "
                "config beside it: pass your own photos (--calibration-images DIR; in Python calibration= a "
                "list of RGB images) or the training config (--config, config=)"
            )
        try:
            images = _training_images(config, n)
        except (OSError, ValueError) as e:  # a config whose data is not on this machine (a zoo model's COCO)
            raise ExportError(f"int8 calibration could not read the training data of the config ({e}); pass "
                              f"your own photos instead: --calibration-images DIR") from None
    else:
        images = list(calibration)
        if not images:
            raise ExportError("calibration: no images given")
    return np.stack([letterbox(np.asarray(im), canvas_size)[0] for im in images]).astype(np.float32)


def images_from_paths(paths, n) -> list:
    """Up to ``n`` RGB images for calibration from image files, folders or globs (your own
    photos: ``solo-tf export --calibration-images DIR``), in name order. Files that are not
    readable images are named on stderr and skipped; none at all is an ExportError."""
    from solo_tf.media import SkipLog, expand_sources, read_image

    skipped = SkipLog(log=lambda line: print(f"[solo-tf] int8 calibration: {line}", file=sys.stderr))
    try:
        sources = [s for s in expand_sources(list(paths), skipped) if s.kind == "image"]
    except FileNotFoundError as e:
        raise ExportError(f"--calibration-images: {e}") from None
    images = []
    for s in sources:
        if len(images) >= n:
            break
        try:
            images.append(read_image(s.target))
        except ValueError as e:
            skipped.add(s.name, "unreadable image", str(e))
    if not images:
        raise ExportError(f"--calibration-images {' '.join(str(p) for p in paths)}: no readable images "
                          f"({skipped.summary()})")
    if len(images) < n:
        print(f"[solo-tf] int8 calibration: {len(images)} images (asked for {n})", file=sys.stderr)
    return images


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
