"""The checked-in model file of config version 2 loads and predicts as when it was saved;
configs saved by version 1 (everything inside model_config) still build a model."""

from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"


def test_checked_in_keras_file_loads_and_predicts_the_same():
    from solo_tf.inference import build_inference_model
    from solo_tf.saving import load_model

    model = load_model(DATA / "solov2_tiny_v2.keras")
    expected = np.load(DATA / "solov2_tiny_v2_expected.npz")
    assert model.labels_config.category_ids == [3, 5, 9] and model.postprocess_config.max_per_img == 5
    raw = model.predict(expected["images"], verbose=0)
    for k, v in raw.items():
        np.testing.assert_allclose(np.asarray(v), expected[f"raw_{k}"], rtol=1e-5, atol=1e-5, err_msg=k)
    dets = build_inference_model(model, model.postprocess_config).predict(expected["images"], verbose=0)
    np.testing.assert_array_equal(np.asarray(dets["num_detections"]), expected["det_num_detections"])
    np.testing.assert_array_equal(np.asarray(dets["detection_classes"]), expected["det_detection_classes"])
    np.testing.assert_allclose(np.asarray(dets["detection_scores"]), expected["det_detection_scores"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(dets["detection_masks"]), expected["det_detection_masks"], atol=1e-4)


def test_version_1_saved_config_is_migrated():
    from conftest import tiny_model_config
    from solo_tf.model import SOLO

    import dataclasses

    v1 = dataclasses.asdict(tiny_model_config("solo", num_classes=2))
    v1.update(class_names=["x", "y"], category_ids=[4, 8], max_instances=12, dice_weight=2.0)
    model = SOLO.from_config({"model_config": v1, "name": "old", "trainable": True})
    assert model.labels_config.class_names == ["x", "y"] and model.labels_config.category_ids == [4, 8]
    assert model.loss_config.dice_weight == 2.0 and model.model_config.variant == "solo"


def test_newer_saved_config_says_to_upgrade():
    import dataclasses

    import pytest

    from conftest import tiny_model_config
    from solo_tf.config import ConfigError
    from solo_tf.model import SOLO

    cfg = {"config_version": 99, "model_config": dataclasses.asdict(tiny_model_config()), "name": "new"}
    with pytest.raises(ConfigError, match="newer solo-tf"):
        SOLO.from_config(cfg)
