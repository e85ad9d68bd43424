"""The one preprocessing path (solo_tf.preprocess): training, inference and serving graphs
letterbox an image into the same tensor, and the inverse puts detections back in place."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from solo_tf import preprocess  # noqa: E402
from solo_tf.config import DataConfig, ModelConfig  # noqa: E402
from solo_tf.data.pipeline import prepare  # noqa: E402

HERE = Path(__file__).resolve().parent
CANVAS = (64, 96)
# (h, w): landscape, portrait, odd sizes, larger and smaller than the canvas
SIZES = [(60, 150), (150, 70), (37, 91), (333, 500), (40, 40)]
JAX_SIZES = SIZES[:3]
SIGNATURE = {
    "image": tf.TensorSpec((None, None, 3), tf.uint8),
    "masks": tf.TensorSpec((None, None, None), tf.uint8),
    "classes": tf.TensorSpec((None,), tf.int32),
    "image_id": tf.TensorSpec((), tf.int64),
}


def image_with_box(h, w, seed=0):
    """A textured image with one rectangle object covering the middle third (box x1 y1 x2 y2)."""
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    y1, y2, x1, x2 = h // 3, 2 * h // 3, w // 3, 2 * w // 3
    masks = np.zeros((1, h, w), np.uint8)
    masks[0, y1:y2, x1:x2] = 1
    image[y1:y2, x1:x2] = (250, 30, 30)
    return image, masks, np.array([x1, y1, x2, y2], np.float32)


def pipeline_batch(images_masks, canvas=CANVAS, **data):
    """The training pipeline's output without augmentation: (images, y, meta) numpy."""
    records = [{"image": im, "masks": m, "classes": np.zeros(len(m), np.int32), "image_id": np.int64(i)}
               for i, (im, m) in enumerate(images_masks)]
    ds = tf.data.Dataset.from_generator(lambda: iter(records), output_signature=SIGNATURE)
    model = ModelConfig(image_size=canvas, num_classes=1)
    data = DataConfig(**{"flip": False, "max_instances": 2, **data})
    out = prepare(ds, model, data, len(records), training=bool(data.multiscale), with_meta=True,
                  drop_remainder=False)
    return tf.nest.map_structure(lambda t: t.numpy(), next(iter(out)))


# --- geometry ------------------------------------------------------------------------------------
def test_geometry_fits_the_canvas_and_rounds_half_to_even():
    assert preprocess.letterbox_geometry((100, 150), (128, 128)) == ((85, 128), 128 / 150)
    assert preprocess.letterbox_geometry((150, 100), (128, 128)) == ((128, 85), 128 / 150)
    # scale 5/10 = 1/2: heights 2.5 and 3.5 round half to even (2 and 4), as Python's round
    assert preprocess.letterbox_geometry((5, 10), (64, 5)) == ((2, 5), 0.5)
    assert preprocess.letterbox_geometry((7, 10), (64, 5)) == ((4, 5), 0.5)
    # an image far smaller than the canvas is enlarged, never beyond it
    assert preprocess.letterbox_geometry((10, 20), (64, 64)) == ((32, 64), 3.2)


def test_geometry_for_multiscale_short_side_long_side_and_canvas_caps():
    g = preprocess.letterbox_geometry
    assert g((300, 400), (800, 1088), short_side=600) == ((600, 800), 2.0)
    assert g((300, 900), (800, 1088), short_side=600, max_long_side=1000) == ((333, 1000), 1000 / 900)
    assert g((300, 400), (800, 1088), short_side=900) == ((800, 1067), 800 / 300)  # the canvas caps it


def test_geometry_is_the_same_integer_result_in_a_graph_and_on_the_host():
    @tf.function(input_signature=[tf.TensorSpec((2,), tf.int32), tf.TensorSpec((), tf.int32)])
    def graph(hw, short):
        (nh, nw), scale = preprocess.letterbox_geometry((hw[0], hw[1]), (800, 1088), short, 1333)
        return tf.stack([nh, nw]), scale

    rng = np.random.default_rng(0)
    for h, w, short in zip(rng.integers(1, 4000, 200), rng.integers(1, 4000, 200), rng.integers(300, 900, 200)):
        valid, scale = preprocess.letterbox_geometry((int(h), int(w)), (800, 1088), int(short), 1333)
        g_valid, g_scale = graph(tf.constant([h, w], tf.int32), tf.constant(short, tf.int32))
        assert tuple(g_valid.numpy()) == valid and g_scale.numpy() == np.float32(scale)
        assert abs(valid[0] - max(h * scale, 1)) <= 0.5 + 1e-9 and abs(valid[1] - max(w * scale, 1)) <= 0.5 + 1e-9


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="image height and width"):
        preprocess.letterbox_geometry((0, 10), (64, 64))
    with pytest.raises(ValueError, match="canvas_size"):
        preprocess.letterbox_geometry((10, 10), (0, 64))
    with pytest.raises(ValueError, match="expected an image"):
        preprocess.letterbox(np.zeros((4, 4)), (64, 64))


# --- one tensor for training, inference and serving -------------------------------------------
@pytest.mark.parametrize("h,w", SIZES)
def test_training_and_inference_preprocessing_give_the_same_tensor(h, w):
    image, masks, _ = image_with_box(h, w)
    images, _, meta = pipeline_batch([(image, masks)])
    canvas, valid, scale = preprocess.letterbox(image, CANVAS)
    canvas = np.asarray(canvas)
    assert tuple(meta["valid_size"][0]) == valid and meta["scale"][0] == np.float32(scale)
    np.testing.assert_array_equal(images[0], canvas)  # the same ops on the same backend: exact
    # and it is the image resized (bilinear, antialiased when it shrinks) top-left on zeros
    shrinks = valid[0] < h or valid[1] < w
    ref = tf.clip_by_value(tf.image.resize(image.astype(np.float32), valid, antialias=shrinks), 0, 255).numpy()
    np.testing.assert_allclose(canvas[: valid[0], : valid[1]], ref, atol=1e-4)
    # enlarging, the antialiased kernel is the same filter: skipping it changes nothing
    smooth = tf.clip_by_value(tf.image.resize(image.astype(np.float32), valid, antialias=True), 0, 255).numpy()
    np.testing.assert_allclose(canvas[: valid[0], : valid[1]], smooth, atol=5e-3)  # float32 rounding on 0-255
    assert (canvas[valid[0]:] == 0).all() and (canvas[:, valid[1]:] == 0).all()


def test_a_serving_graph_letterboxes_any_size_onto_the_fixed_canvas():
    @tf.function(input_signature=[tf.TensorSpec((None, None, None, 3), tf.uint8)])
    def serve(images):
        canvas, (nh, nw), scale = preprocess.letterbox(images, CANVAS)
        return canvas, tf.stack([nh, nw]), scale

    spec = serve.get_concrete_function().structured_outputs[0]
    assert tuple(spec.shape) == (None, *CANVAS, 3)
    for h, w in SIZES:
        image, _, _ = image_with_box(h, w, seed=h)
        canvas, valid, scale = serve(np.stack([image, image[::-1]]))
        host, host_valid, host_scale = preprocess.letterbox(image, CANVAS)
        assert tuple(valid.numpy()) == host_valid and scale.numpy() == np.float32(host_scale)
        np.testing.assert_array_equal(canvas[0].numpy(), np.asarray(host))
        np.testing.assert_array_equal(canvas[1].numpy(), np.asarray(preprocess.letterbox(image[::-1], CANVAS)[0]))


def test_multiscale_training_is_the_same_letterbox_at_a_drawn_short_side():
    image, masks, _ = image_with_box(60, 150)
    images, _, meta = pipeline_batch([(image, masks)] * 4, multiscale=(20, 60), max_long_side=120)
    found = 0
    for b in range(4):
        valid = tuple(meta["valid_size"][b])
        for short in range(20, 61):
            canvas, v, _ = preprocess.letterbox(image, CANVAS, short_side=short, max_long_side=120)
            if v == valid:
                np.testing.assert_array_equal(images[b], np.asarray(canvas))
                found += 1
                break
    assert found == 4


# --- the inverse ---------------------------------------------------------------------------------
@pytest.mark.parametrize("h,w", [(60, 150), (150, 70), (333, 500)])
def test_the_inverse_puts_a_detection_back_on_the_original_image(h, w):
    image, masks, box = image_with_box(h, w)
    _, y, meta = pipeline_batch([(image, masks)])
    valid = tuple(meta["valid_size"][0])
    # the object's box on the canvas -> the original box, within one canvas pixel's worth
    back = np.asarray(preprocess.boxes_to_image(y["boxes"][0, :1], valid, (h, w)))[0]
    px = max(w / valid[1], h / valid[0])
    np.testing.assert_allclose(back, box, atol=px + 1e-3)
    # its stride-4 mask -> a mask over the original image that covers the object
    soft = np.asarray(preprocess.masks_to_image(y["masks"][0, :1].astype(np.float32), valid, (h, w), CANVAS))
    assert soft.shape == (1, h, w)
    mask, truth = soft[0] > 0.5, masks[0] > 0
    (ys, xs), (ty, tx) = np.nonzero(mask), np.nonzero(truth)
    np.testing.assert_allclose([xs.mean(), ys.mean()], [tx.mean(), ty.mean()], atol=2 * px)  # in place
    assert (mask & truth).sum() / (mask | truth).sum() > 0.7  # stride-4 cells of a small object: coarse
    # boxes past the valid region are clipped to the image
    far = np.asarray(preprocess.boxes_to_image(np.array([[-5.0, -5.0, 1e4, 1e4]]), valid, (h, w)))
    np.testing.assert_allclose(far, [[0, 0, w, h]])


def test_full_size_masks_invert_exactly_when_nothing_is_resized():
    masks = np.random.default_rng(0).random((3, 64, 96)).astype(np.float32)
    out = np.asarray(preprocess.masks_to_image(masks, (64, 96), (64, 96)))
    np.testing.assert_allclose(out, masks, atol=1e-6)
    none = preprocess.masks_to_image(np.zeros((0, 16, 24)), (40, 96), (50, 120), CANVAS)  # no detections
    assert np.asarray(none).shape == (0, 50, 120)


# --- JAX: tf.data still runs (on TF ops), the host path runs on JAX -----------------------------
JAX_CASE = r"""
import json, sys
import numpy as np
import keras
import tensorflow as tf
sys.path.insert(0, sys.argv[1])
from test_preprocess import CANVAS, JAX_SIZES, image_with_box, pipeline_batch
from solo_tf import preprocess

out = {"backend": keras.backend.backend(), "cases": []}
for h, w in JAX_SIZES:
    image, masks, box = image_with_box(h, w)
    images, y, meta = pipeline_batch([(image, masks)])
    canvas, valid, scale = preprocess.letterbox(image, CANVAS)
    canvas = np.asarray(canvas)
    soft = preprocess.masks_to_image(y["masks"][0, :1].astype("float32"), valid, (h, w), CANVAS)
    back = preprocess.boxes_to_image(y["boxes"][0, :1], valid, (h, w))
    out["cases"].append({
        "pipeline_valid": [int(v) for v in meta["valid_size"][0]], "host_valid": list(valid),
        "pipeline_image_sum": float(images[0].astype(np.float64).sum()),
        "max_diff": float(np.abs(images[0] - canvas).max()),
        "host_type": type(preprocess.letterbox(image, CANVAS).canvas).__module__,
        "box": np.asarray(back).tolist(), "mask_area": int((np.asarray(soft) > 0.5).sum()),
    })
print(json.dumps(out))
"""


def test_under_jax_the_pipeline_runs_and_agrees_with_the_jax_host_path():
    pytest.importorskip("jax")
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE)]))
    proc = subprocess.run([sys.executable, "-c", JAX_CASE, str(HERE)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["backend"] == "jax"
    assert len(result["cases"]) == len(JAX_SIZES)
    for (h, w), case in zip(JAX_SIZES, result["cases"]):
        assert case["host_type"].startswith("jax")
        assert case["pipeline_valid"] == case["host_valid"]  # integer geometry: the same on both
        # TF's and JAX's antialiased resizes differ in float rounding only: at most 1e-4 of the
        # network's input after the model's normalisation (std >= 57.12 per channel)
        assert case["max_diff"] / 57.12 < 1e-4, case["max_diff"]
        # tf.data ran the same TF ops as under the TensorFlow backend: the same image
        image, masks, _ = image_with_box(h, w)
        images, y, meta = pipeline_batch([(image, masks)])
        assert case["pipeline_image_sum"] == float(images[0].astype(np.float64).sum())
        valid = tuple(meta["valid_size"][0])
        np.testing.assert_allclose(case["box"], preprocess.boxes_to_image(y["boxes"][0, :1], valid, (h, w)),
                                   atol=1e-3)
        tf_area = int((np.asarray(preprocess.masks_to_image(
            y["masks"][0, :1].astype(np.float32), valid, (h, w), CANVAS)) > 0.5).sum())
        assert abs(case["mask_area"] - tf_area) <= 0.01 * tf_area + 2
