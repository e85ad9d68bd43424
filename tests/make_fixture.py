"""Writes tests/data/solov2_tiny_v2.keras and its expected outputs (run once per config version).

    python tests/make_fixture.py

The fixture pins the saved-model format: tests/test_fixture.py loads the file in the current
code and requires the same raw outputs and detections as when it was written.
"""
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main():
    import keras

    from conftest import tiny_model_config
    from solo_tf.config import LabelsConfig, PostprocessConfig
    from solo_tf.inference import build_inference_model
    from solo_tf.saving import save_model
    from solo_tf.model import SOLO

    keras.utils.set_random_seed(7)
    model = SOLO(tiny_model_config("solov2", image_size=(64, 64), num_classes=3),
                 labels_config=LabelsConfig(class_names=["a", "b", "c"], category_ids=[3, 5, 9]),
                 postprocess_config=PostprocessConfig(score_thr=0.0, update_thr=0.0, max_per_img=5))
    images = np.random.RandomState(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    raw = model.predict(images, verbose=0)
    dets = build_inference_model(model, model.postprocess_config).predict(images, verbose=0)
    out = HERE / "data"
    out.mkdir(exist_ok=True)
    save_model(model, out / "solov2_tiny_v2.keras")
    np.savez_compressed(out / "solov2_tiny_v2_expected.npz", images=images,
                        **{f"raw_{k}": np.asarray(v) for k, v in raw.items()},
                        **{f"det_{k}": np.asarray(v) for k, v in dets.items()})


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    main()
