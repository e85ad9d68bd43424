"""Grid targets computed inside the tf.data pipeline (TensorFlow backend only).

The category and owner grids of every level are small ((B, S, S) int32 each) and depend
only on boxes, centres and classes, so the input pipeline can compute them on the host
while the accelerator trains; the mask targets are still gathered in ``compute_loss``
from the ground-truth masks and the owner grid. The function is the same
``solo_tf.targets.assign_grids`` the model runs when the grids are not supplied
(``train.targets_in: model``, and always on JAX, where no tf.data graph can host it).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from solo_tf.decoder import MASK_STRIDE
from solo_tf.targets import assign_grids


def grid_targets_supported() -> bool:
    """The pipeline can host keras.ops only when Keras runs on TensorFlow."""
    return keras.backend.backend() == "tensorflow"


def add_grid_targets(dataset: tf.data.Dataset, model_config) -> tf.data.Dataset:
    """Map batched ``(images, y[, meta])`` to the same with ``grid_category_{l}`` /
    ``grid_owner_{l}`` (B, S, S) int32 added to ``y``."""
    if not grid_targets_supported():
        raise RuntimeError(
            "train.targets_in='pipeline' needs the TensorFlow backend (tf.data cannot run "
            f"{keras.backend.backend()} ops); use train.targets_in='model'"
        )
    cfg = model_config

    def _add(images, y, *rest):
        valid = tf.logical_and(
            tf.reduce_max(tf.cast(y["masks"], tf.int32), axis=[2, 3]) > 0, tf.cast(y["classes"], tf.int32) >= 0
        )

        def on(canvas):
            return assign_grids(
                y["classes"], y["boxes"], y["centers"], valid, canvas, cfg.num_grids, cfg.scale_ranges, cfg.pos_scale,
            )

        canvases = cfg.canvases
        if len(canvases) == 1:
            grids = on(canvases[0])
        else:  # an orientation-grouped batch: its canvas from its stride-4 mask targets
            main = tf.equal(tf.shape(y["masks"])[2] * MASK_STRIDE, canvases[0][0])
            grids = tf.cond(main, lambda: on(canvases[0]), lambda: on(canvases[1]))
        y = dict(y)
        for lvl, (category, owner) in enumerate(grids):
            y[f"grid_category_{lvl}"] = category
            y[f"grid_owner_{lvl}"] = owner
        return (images, y, *rest)

    return dataset.map(_add, num_parallel_calls=tf.data.AUTOTUNE)
