"""Shared by test_overfit.py: overfit a tiny model on one saved batch, print the losses.

Run as a script (``python overfit_case.py VARIANT BATCH.npz``) so the JAX backend can be
tested in a fresh process; the batch is made by the TensorFlow pipeline beforehand.
"""

import json
import sys

import numpy as np


def overfit(variant, batch_path, steps=80):
    import keras

    from conftest import tiny_model_config
    from solo_tf.model import SOLO

    d = np.load(batch_path)
    images = d["images"]
    y = {k[2:]: d[k] for k in d.files if k.startswith("y_")}
    # Seed 0 starts the tiny SOLOv2 (TF) on a plateau: Dice ~1.6 of 2.5 from step 30 to ~90,
    # before and after the variant restructure alike (the old code passed on a lucky last step).
    # Seeds 1-4 all pass the checks of test_overfit.py (1-3 reach Dice < 0.15).
    keras.utils.set_random_seed(1)
    cfg = tiny_model_config(variant, image_size=images.shape[1:3], num_classes=6)
    model = SOLO(cfg)
    model.compile(optimizer=keras.optimizers.Adam(3e-3, global_clipnorm=35.0))
    first = model.evaluate(images, y, batch_size=len(images), verbose=0, return_dict=True)
    model.fit(images, y, batch_size=len(images), epochs=steps, verbose=0, shuffle=False)
    last = model.evaluate(images, y, batch_size=len(images), verbose=0, return_dict=True)
    return {"backend": keras.backend.backend(), "first": first, "last": last}


if __name__ == "__main__":
    print(json.dumps(overfit(sys.argv[1], sys.argv[2])))
