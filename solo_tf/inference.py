"""Inference: images of any size in, per-image instances out.

* :class:`SOLODecoder` wraps :func:`solo_tf.decoder.decode` as a Keras layer, so
  :func:`build_inference_model` is one functional graph (raw images -> fixed-size
  detections) that predicts, saves and exports as it is.
* :class:`Predictor` letterboxes images of any size into the model's canvas, runs that
  graph in batches, and maps the masks back to each original image.
"""

from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np
from keras import layers, ops

from solo_tf.config import ModelConfig, PostprocessConfig, section_from_dict
from solo_tf.decoder import decode, postprocess_image


@keras.saving.register_keras_serializable(package="solo_tf")
class SOLODecoder(layers.Layer):
    """Raw head outputs (dict) -> ``detection_masks`` (B, K, H, W), ``detection_scores``
    (B, K), ``detection_classes`` (B, K), ``detection_boxes`` (B, K, 4),
    ``num_detections`` (B,), K = ``postprocess.max_per_img``."""

    def __init__(self, model_config, postprocess_config=None, **kwargs):
        super().__init__(**kwargs)
        self.model_config = (
            model_config if isinstance(model_config, ModelConfig) else section_from_dict(ModelConfig, model_config, "model")
        )
        pc = postprocess_config if postprocess_config is not None else PostprocessConfig()
        self.postprocess_config = (
            pc if isinstance(pc, PostprocessConfig) else section_from_dict(PostprocessConfig, pc, "postprocess")
        )

    def call(self, outputs):
        return decode(outputs, self.model_config, self.postprocess_config)

    def get_config(self):
        config = super().get_config()
        config.update(
            model_config=dataclasses.asdict(self.model_config),
            postprocess_config=dataclasses.asdict(self.postprocess_config),
        )
        return config


def build_inference_model(model, postprocess_config=None) -> keras.Model:
    """One graph: images (B, H, W, 3) RGB 0-255 -> fixed-size detections."""
    h, w = model.model_config.image_size
    images = keras.Input(shape=(h, w, 3), name="images")
    detections = SOLODecoder(model.model_config, postprocess_config, name="decoder")(model(images))
    return keras.Model(images, detections, name=f"{model.name}_inference")


def letterbox(image, image_size):
    """Fit one image into the canvas keeping its aspect ratio (the pipeline's resize).

    Args:
        image: (h, w, 3) uint8 or float RGB.
        image_size: (H, W) canvas.

    Returns:
        canvas (H, W, 3) float32 0-255 padded bottom/right, valid size (h', w'), scale.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image of shape (h, w, 3), got {image.shape}")
    h, w = image.shape[:2]
    height, width = image_size
    scale = min(height / h, width / w)
    nh, nw = max(1, min(height, int(round(h * scale)))), max(1, min(width, int(round(w * scale))))
    resized = ops.convert_to_numpy(
        ops.image.resize(image.astype("float32"), (nh, nw), interpolation="bilinear", antialias=True)
    )
    canvas = np.zeros((height, width, 3), np.float32)
    canvas[:nh, :nw] = np.clip(resized, 0, 255)
    return canvas, (nh, nw), scale


class Predictor:
    """Run a trained model on images of any size.

    Args:
        model: a :class:`solo_tf.model.SOLO` or a path to a ``.keras`` file.
        postprocess_config: decoder settings (defaults: DESIGN.md's).
        batch_size: images per forward pass.

    ``predict(images)`` returns one dict per image: ``masks`` (n, h, w) bool at the
    original size, ``scores`` (n,), ``classes`` (n,) int, ``labels`` (n,) class names,
    ``boxes`` (n, 4) x1 y1 x2 y2 in original pixels.
    """

    def __init__(self, model, postprocess_config=None, batch_size=4):
        if isinstance(model, (str, os.PathLike)):
            if not os.path.exists(model):
                raise FileNotFoundError(f"model file not found: {model}")
            model = keras.saving.load_model(model)
        self.model = model
        self.postprocess_config = postprocess_config or model.postprocess_config
        self.batch_size = int(batch_size)
        self.inference_model = build_inference_model(model, self.postprocess_config)
        cfg = model.model_config
        self.class_names = model.labels_config.names(cfg.num_classes)

    def predict(self, images):
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        results = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            boxed = [letterbox(im, self.model.model_config.image_size) for im in chunk]
            batch = np.stack([b[0] for b in boxed])
            dets = self.inference_model.predict_on_batch(batch)
            dets = {k: ops.convert_to_numpy(v) for k, v in dets.items()}
            for i, (im, (_, valid, _)) in enumerate(zip(chunk, boxed)):
                one = {k: v[i] for k, v in dets.items()}
                inst = postprocess_image(one, valid, np.asarray(im).shape[:2])
                inst["labels"] = [self.class_names[c] for c in inst["classes"]]
                results.append(inst)
        return results

    __call__ = predict
