"""solo-tf benchmark: the model exported to every format, each run on the same validation images;
the table, the CSV and the JSON agree; int8's AP is measured on its own outputs."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import TINY_CANVAS

NUM_IMAGES = 6
MATCH_SCORE_FLOOR = 1e-3  # int8 scores move further than the float formats' tolerance
# the tiny model's data: 64 px shapes; config.yaml beside the model, so int8 calibrates on its training split
DATA_YAML = f"""\
data:
  max_instances: 6
  shapes:
    num_train: 16
    num_val: {NUM_IMAGES}
    image_size: [{TINY_CANVAS[0]}, {TINY_CANVAS[1]}]
    max_objects: 3
    object_size: [0.3, 0.6]
"""


@pytest.fixture(scope="module")
def model_file(tiny_trained, tmp_path_factory):
    from solo_tf.saving import save_model

    model, _ = tiny_trained("solov2")
    folder = tmp_path_factory.mktemp("bench_model")
    save_model(model, folder / "model.keras")
    (folder / "config.yaml").write_text(DATA_YAML)
    return folder / "model.keras"


def test_benchmark_every_format_table_csv_and_measured_int8(model_file, tmp_path, capsys):
    from solo_tf.benchmark import COLUMNS, DEFAULT_FORMATS
    from solo_tf.cli import main
    from solo_tf.evaluation import coco_mask_ap
    from solo_tf.settings import resolve
    from solo_tf.tasks import evaluation_data

    out = tmp_path / "bench"
    argv = ["benchmark", "--model", str(model_file), "--images", str(NUM_IMAGES), "--runs", "3",
            "--calibration", "8", "--threads", "2", "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["csv"] == str(out / "benchmark.csv")

    # the table: a header and one row per format, in order
    lines = captured.err.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("format "))
    assert lines[header].split()[:3] == ["format", "mask", "AP"]
    table = lines[header + 2: header + 2 + len(DEFAULT_FORMATS)]
    assert [line.split()[0] for line in table] == list(DEFAULT_FORMATS)

    # the CSV and the JSON hold the same rows as the table
    with open(out / "benchmark.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == COLUMNS
        csv_rows = list(reader)
    report = json.loads((out / "benchmark.json").read_text())
    rows = report["rows"]
    assert [r["format"] for r in csv_rows] == [r["format"] for r in rows] == list(DEFAULT_FORMATS)
    assert report["images"] == NUM_IMAGES and report["threads"] == 2
    for line, c, r in zip(table, csv_rows, rows):
        assert float(c["mask_AP"]) == pytest.approx(r["mask_AP"])
        assert int(c["size_bytes"]) == r["size_bytes"] > 0
        assert float(c["latency_ms"]) == pytest.approx(r["latency_ms"]) and r["latency_ms"] > 0
        assert c["matches_keras"] == r["matches_keras"] and line.endswith(r["matches_keras"])
        assert line.split()[1] == f"{100 * r['mask_AP']:.1f}"
        assert r["images"] == NUM_IMAGES and r["threads"]
    by = {r["format"]: r for r in rows}

    # the reference detects objects (the comparisons below are not vacuous); the float formats
    # reproduce it, so their AP is Keras's
    keras = by["keras"]
    assert keras["matches_keras"] == "reference" and keras["detections"] > 0 and keras["mask_AP"] > 0
    for name in ("saved_model", "tflite", "onnx"):
        assert by[name]["matches_keras"] == "yes", by[name]
        assert by[name]["AP_delta"] == pytest.approx(0.0, abs=5e-3)
        assert by[name]["AP_delta"] == pytest.approx(by[name]["mask_AP"] - keras["mask_AP"])

    # int8: its own detections (they differ from Keras's), scored by COCOeval against the same
    # ground truth: recomputing the AP from its results file gives the row's number
    int8 = by["tflite_int8"]
    assert int8["matches_keras"].startswith("no: worst mask IoU") and int8["max_score_diff"] > MATCH_SCORE_FLOOR
    results = {name: json.loads((out / f"results_{name}.json").read_text()) for name in ("keras", "tflite_int8")}
    assert results["tflite_int8"] != results["keras"]
    assert len(results["tflite_int8"]) == int8["detections"] > 0
    run = resolve(model_file)
    _, _, coco_gt = evaluation_data(run.config, max_images=NUM_IMAGES)
    assert coco_mask_ap(coco_gt, results["tflite_int8"])["AP"] == pytest.approx(int8["mask_AP"])
    assert coco_mask_ap(coco_gt, results["keras"])["AP"] == pytest.approx(keras["mask_AP"])
    assert int8["AP_delta"] == pytest.approx(int8["mask_AP"] - keras["mask_AP"])
    assert 0 <= int8["mask_AP"] <= 1 and 0 <= int8["box_AP"] <= 1
    assert "calibrated on 8 training images" in int8["note"] and "calibrated on 8 training images" in captured.err
    assert int8["size_bytes"] < by["tflite"]["size_bytes"]  # the backbone and pyramid weights in int8

    # the exports are in --out, written whole
    assert (out / "saved_model" / "1" / "saved_model.pb").is_file()
    for name in ("model.tflite", "model_fp16.tflite", "model_int8.tflite", "model.onnx"):
        assert (out / name).stat().st_size > 0
    assert not list(out.rglob(".*")), "temporary files left behind"


def test_bad_format_name_is_a_clear_error(tmp_path, capsys):
    from solo_tf.benchmark import BenchmarkError, benchmark_formats, parse_formats
    from solo_tf.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["benchmark", "--model", str(tmp_path / "m.keras"), "--formats", "keras,tflite_int4"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "unknown format 'tflite_int4'" in err and "tflite_int8" in err  # the bad name and the choices
    with pytest.raises(BenchmarkError, match="unknown format 'int8'"):
        benchmark_formats(tmp_path / "m.keras", formats=["int8"])  # before any file is opened
    assert parse_formats("onnx, tflite_int8,onnx") == ("keras", "onnx", "tflite_int8")
    with pytest.raises(BenchmarkError, match="runs must be a positive integer"):
        benchmark_formats(tmp_path / "m.keras", runs=0)


def test_missing_model_names_the_file(tmp_path, capsys):
    from solo_tf.cli import main

    missing = tmp_path / "nowhere" / "model.keras"
    assert main(["benchmark", "--model", str(missing), "--formats", "keras"]) == 1
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()  # nothing written for a run that could not start


def test_int8_without_training_data_calibrates_on_the_validation_images():
    from solo_tf.benchmark import _calibration_images

    samples = [{"canvas": np.full((64, 64, 3), i, np.uint8), "valid_size": (64, 40), "orig_size": (80, 50),
                "image_id": i} for i in range(3)]
    images, note = _calibration_images(SimpleNamespace(config_source="defaults"), None, 2, samples)
    assert [im.shape for im in images] == [(64, 40, 3)] * 2 and images[1].max() == 1  # the resized images
    assert "validation images" in note and "no training data" in note and "flattered" in note
