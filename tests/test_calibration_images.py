"""int8 export of a model with no training data beside it (a zoo model): calibrated on the
user's own photos (--calibration-images), or a clear error saying so."""

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

DATA = Path(__file__).resolve().parent / "data"
MODEL = DATA / "solov2_tiny_v2.keras"  # no config.yaml beside it


def test_int8_calibrates_on_the_users_photos_or_says_how(tmp_path, capsys):
    from solo_tf.cli import main

    model = Path(shutil.copy(MODEL, tmp_path / "model.keras"))
    assert main(["export", "--model", str(model), "--format", "tflite", "--quantize", "int8"]) == 1
    err = capsys.readouterr().err
    assert "--calibration-images DIR" in err and not (tmp_path / "model_int8.tflite").exists()

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.RandomState(0)
    for i, size in enumerate([(48, 80), (64, 64), (90, 40)]):
        Image.fromarray(rng.randint(0, 255, (*size, 3), np.uint8)).save(photos / f"p{i}.png")
    (photos / "notes.txt").write_text("not a photo")
    (photos / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    assert main(["export", "--model", str(model), "--format", "tflite", "--quantize", "int8",
                 "--calibration-images", str(photos), "--calibration", "8"]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out.strip().splitlines()[-1])
    assert result["quantize"] == "int8" and Path(result["path"]).stat().st_size > 0
    assert "broken.jpg" in out.err and "notes.txt" in out.err  # named, skipped
    assert "3 images (asked for 8)" in out.err

    assert main(["export", "--model", str(model), "--format", "onnx", "--calibration-images", str(photos)]) == 1
    assert "applies to --quantize int8 only" in capsys.readouterr().err
