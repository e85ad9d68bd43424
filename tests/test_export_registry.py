"""Export formats are plug-ins: a format registered from this file alone (no library edit) is
offered and run by ``solo-tf export``, on the checked-in tiny model (tests/data)."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parent / "data"
MODEL = DATA / "solov2_tiny_v2.keras"
EXPECTED = DATA / "solov2_tiny_v2_expected.npz"  # its detections at 64x64 (tests/make_fixture.py)


def write_fake(request):
    """The "fake" format: the inference graph's detections of the fixture's two images
    (zero-padded onto the export's canvas) as an ``.npz``; ``quantize="half"`` stores the
    scores in float16. Written as the built-in formats write theirs: the side JSON, then the
    file, each whole or not at all."""
    from solo_tf.export.files import file_result, metadata, staged_file, write_pair
    from solo_tf.inference import build_inference_model

    model, options = request.model, request.options
    h, w = options.canvas_for(model)
    images = np.load(EXPECTED)["images"]
    images = np.pad(images, [(0, 0), (0, h - images.shape[1]), (0, w - images.shape[2]), (0, 0)])
    graph = build_inference_model(model, options.postprocess, (h, w), full_size_masks=options.full_size_masks)
    dets = {k: np.asarray(v) for k, v in graph.predict(images, verbose=0).items()}
    if request.quantize == "half":
        dets["detection_scores"] = dets["detection_scores"].astype(np.float16)
    buffer = io.BytesIO()
    np.savez(buffer, **dets)
    meta = metadata(model, options, "fake", request.quantize, inputs={"images": f"(2, {h}, {w}, 3), the fixture's"})
    with staged_file(request.out, request.overwrite):
        write_pair(request.out, buffer.getvalue(), meta)
    return file_result(request.out, "fake", request.quantize, meta)


@pytest.fixture
def fake_format():
    from solo_tf.export import register_format, unregister_format

    fmt = register_format("fake", write_fake, suffix=".npz", quantizations=("none", "half"),
                          help="the fixture images' detections as an .npz (a test format)")
    yield fmt
    unregister_format("fake")


def _last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_a_format_registered_from_a_test_file_is_offered_and_run_by_the_cli(fake_format, tmp_path, capsys):
    from solo_tf import cli

    model = tmp_path / "model.keras"
    shutil.copy(MODEL, model)

    with pytest.raises(SystemExit) as e:
        cli.main(["export", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "--format {saved_model,tflite,onnx,fake}" in text and "fake: the fixture images' detections" in text
    assert "--quantize {none,fp16,dynamic,int8,half}" in text and "fake half" in text

    # the default destination beside the model, from the format's suffix; options reach the writer
    assert cli.main(["export", "--model", str(model), "--format", "fake", "--full-size-masks"]) == 0
    out = tmp_path / "model.npz"
    assert _last_json(capsys) == {"path": str(out), "format": "fake", "quantize": "none",
                                  "size_bytes": out.stat().st_size, "files": [str(out), f"{out}.json"]}
    got, expected = np.load(out), np.load(EXPECTED)
    np.testing.assert_array_equal(got["num_detections"], expected["det_num_detections"])
    np.testing.assert_array_equal(got["detection_classes"], expected["det_detection_classes"])
    np.testing.assert_allclose(got["detection_scores"], expected["det_detection_scores"], atol=1e-5)
    np.testing.assert_allclose(got["detection_masks"], expected["det_detection_masks"], atol=1e-4)
    meta = json.loads(Path(f"{out}.json").read_text())
    assert meta["format"] == "fake" and meta["canvas"] == [64, 64] and meta["category_ids"] == [3, 5, 9]
    assert meta["max_detections"] == 5  # the model's own post-processing

    # its own quantisation, at another canvas (stride-4 masks by default)
    assert cli.main(["export", "--model", str(model), "--format", "fake", "--quantize", "half",
                     "--image-size", "64", "96"]) == 0
    half = np.load(tmp_path / "model_half.npz")
    assert _last_json(capsys)["quantize"] == "half"
    assert half["detection_scores"].dtype == np.float16 and half["detection_masks"].shape == (2, 5, 16, 24)
    assert json.loads((tmp_path / "model_half.npz.json").read_text())["canvas"] == [64, 96]

    # --set postprocess.* flags beat the model's own settings (solo_tf.settings.resolve)
    assert cli.main(["export", "--model", str(model), "--format", "fake", "--out", str(tmp_path / "two.npz"),
                     "--set", "postprocess.max_per_img=2", "postprocess.score_thr=0.05"]) == 0
    capsys.readouterr()
    assert np.load(tmp_path / "two.npz")["detection_scores"].shape == (2, 2)
    assert json.loads((tmp_path / "two.npz.json").read_text())["max_detections"] == 2
    assert cli.main(["export", "--model", str(model), "--format", "fake", "--out", str(tmp_path / "x.npz"),
                     "--set", "model.num_classes=4"]) == 2
    assert "only postprocess.<field> can be set" in capsys.readouterr().err

    # an existing destination is refused as for the built-in formats
    assert cli.main(["export", "--model", str(model), "--format", "fake", "--full-size-masks"]) == 1
    assert "already exists" in capsys.readouterr().err

    # a quantisation only this format takes is refused for another, naming the one that takes it
    assert cli.main(["export", "--model", str(model), "--format", "onnx", "--quantize", "half"]) == 1
    assert "quantize='half' applies to fake only" in capsys.readouterr().err


def test_an_unregistered_format_is_not_offered(capsys):
    from solo_tf import cli
    from solo_tf.export import FORMATS

    assert "fake" not in FORMATS
    with pytest.raises(SystemExit) as e:
        cli.main(["export", "--model", str(MODEL), "--format", "fake"])
    assert e.value.code == 2 and "invalid choice: 'fake'" in capsys.readouterr().err


def test_register_format_refuses_a_taken_name_a_bad_name_and_no_destination():
    from solo_tf.export import ExportError, register_format

    with pytest.raises(ExportError, match="'tflite' is already registered"):
        register_format("tflite", write_fake, suffix=".tflite")
    with pytest.raises(ExportError, match="lower-case identifier"):
        register_format("Core ML", write_fake, suffix=".mlmodel")
    with pytest.raises(ExportError, match="folder=True or a file suffix"):
        register_format("coreml", write_fake)
