"""Conversion time of zoo models, and the size of the cached .keras against the .pth.

    python benchmarks/bench_zoo_convert.py [NAME ...]     (default: solov2_light_r18 solov2_r50_3x)

No network: for each entry it writes a stand-in checkpoint of the real architecture and size
(the model's own random weights, under the entry's key names, in the serialization its
host's files have: legacy for WXinlong's 2020 files, zip for mmdetection's) and times
``solo_tf.zoo.convert(name, checkpoint=...)`` - reading the .pth, building the model at the
test scale, loading, saving the .keras - in a temporary ``$SOLO_TF_HOME``. The published
files hold the same tensors (plus, for some, an optimizer state), so their .pth sizes and
the conversion time are close to these.
"""

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the torch-free .pth writer


def stand_in_state(model, layout):
    import keras

    from solo_tf.reference_weights import layout_key, reference_targets
    from solo_tf.weights import torchvision_key

    state = {}
    for layer in model.get_layer("backbone").layers:
        base = f"backbone.{torchvision_key(layer.name)}"
        if isinstance(layer, keras.layers.Conv2D):
            state[f"{base}.weight"] = keras.ops.convert_to_numpy(layer.kernel).transpose(3, 2, 0, 1)
        elif isinstance(layer, keras.layers.BatchNormalization):
            for leaf, var in (("weight", layer.gamma), ("bias", layer.beta), ("running_mean", layer.moving_mean),
                              ("running_var", layer.moving_variance)):
                state[f"{base}.{leaf}"] = keras.ops.convert_to_numpy(var)
            state[f"{base}.num_batches_tracked"] = np.array(0, np.int64)
    for key, var, _ in reference_targets(model):
        value = keras.ops.convert_to_numpy(var)
        state[layout_key(key, layout)] = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value
    return state


def main(names):
    from pth_writer import write_pth

    from solo_tf.model import SOLO
    from solo_tf.zoo import convert, get, zoo_config

    print("| model | .pth (stand-in) | cached .keras | conversion |")
    print("| --- | --- | --- | --- |")
    for name in names:
        entry = get(name)
        with tempfile.TemporaryDirectory() as home:
            os.environ["SOLO_TF_HOME"] = home
            cfg = zoo_config(entry)
            model = SOLO(cfg.model)
            pth = write_pth(Path(home) / entry.filename,
                            {"meta": {"epoch": 36}, "state_dict": stand_in_state(model, entry.layout)},
                            legacy=entry.layout == "mmdet1")
            del model
            start = time.perf_counter()
            keras_path = convert(name, checkpoint=pth)
            seconds = time.perf_counter() - start
            print(f"| {name} | {pth.stat().st_size / 1e6:.0f} MB | {keras_path.stat().st_size / 1e6:.0f} MB "
                  f"| {seconds:.1f} s |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["solov2_light_r18", "solov2_r50_3x"])
