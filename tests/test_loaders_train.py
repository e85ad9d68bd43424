"""A tiny model trains a few steps from each loader (COCO JSON, CIS680 h5/npy), through
``solo-tf train``, and the COCO category ids travel with the saved model."""

import json

import numpy as np

from conftest import tiny_model_config
from solo_tf.config import Config, DataConfig, LabelsConfig, TrainConfig
from solo_tf.data.coco import CocoSourceConfig


def _train(tmp_path, data, num_classes, capsys):
    import keras

    from solo_tf.cli import main

    cfg = Config(
        name="loader",
        model=tiny_model_config("solov2", image_size=(64, 64), num_classes=num_classes),
        data=data,
        train=TrainConfig(epochs=1, batch_size=2, steps_per_epoch=3, warmup_iters=1),
    )
    path = tmp_path / "cfg.yaml"
    cfg.to_yaml(path)
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert np.isfinite(summary["final_loss"])
    return keras.saving.load_model(out / "model.keras")


def test_tiny_model_trains_from_coco(tmp_path, capsys):
    from test_coco import write_coco

    ann, images = write_coco(tmp_path / "coco")
    data = DataConfig(source="coco", max_instances=4,
                      coco=CocoSourceConfig(train_annotations=str(ann), train_images=str(images)), flip=False)
    model = _train(tmp_path, data, 3, capsys)
    # categories 5 "car", 7 "unused", 9 "dog" -> contiguous 0, 1, 2
    assert model.labels_config.category_ids == [5, 7, 9]
    assert model.labels_config.class_names == ["car", "unused", "dog"]


def test_tiny_model_trains_from_cis680(tmp_path, capsys):
    from test_cis680 import data_config, write_cis680

    paths = write_cis680(tmp_path / "cis")
    model = _train(tmp_path, data_config(paths), 3, capsys)
    assert model.labels_config.class_names == ["vehicle", "person", "animal"]


def test_cis680_without_trust_flag_explains_pickle(tmp_path, capsys):
    from solo_tf.cli import main
    from test_cis680 import data_config, write_cis680

    paths = write_cis680(tmp_path / "cis")
    data = data_config(paths)
    data.cis680.trust_pickle = False
    cfg = Config(name="x", model=tiny_model_config("solov2", num_classes=3), data=data,
                 train=TrainConfig(epochs=1, batch_size=2, steps_per_epoch=1))
    cfg.to_yaml(tmp_path / "c.yaml")
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "pickle" in err and "labels.npy" in err


def test_convert_command_writes_coco(tmp_path, capsys):
    from solo_tf.cli import main
    from test_cis680 import write_cis680

    p = write_cis680(tmp_path / "cis")
    out = tmp_path / "coco"
    args = ["convert", "--images", str(p["images"]), "--masks", str(p["masks"]), "--labels", str(p["labels"]),
            "--bboxes", str(p["bboxes"]), "--out", str(out)]
    assert main(args) == 1  # object arrays need the trust flag
    assert "--trust-pickle" in capsys.readouterr().err
    assert main(args + ["--trust-pickle"]) == 0
    ann = json.loads((out / "annotations.json").read_text())
    assert len(ann["images"]) == len(list((out / "images").glob("*.png"))) > 0
    assert {c["name"] for c in ann["categories"]} == {"vehicle", "person", "animal"}


def test_evaluate_command_on_a_coco_json(tmp_path, capsys):
    """`solo-tf evaluate --data FILE.json` scores against that annotation file (image folder
    found beside it), with the category ids the model was trained with."""
    from solo_tf.cli import main
    from solo_tf.model import SOLO
    from test_coco import write_coco

    ann, _ = write_coco(tmp_path / "coco")
    model = SOLO(tiny_model_config("solov2", image_size=(64, 64), num_classes=3),
                 labels_config=LabelsConfig(class_names=["car", "unused", "dog"], category_ids=[5, 7, 9]))
    model.save(tmp_path / "model.keras")
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(tmp_path / "model.keras"), "--data", str(ann), "--out", str(out)]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["num_images"] == 3
    assert 0.0 <= metrics["AP"] <= 1.0
    for r in json.loads((out / "results.json").read_text()):
        assert r["category_id"] in (5, 7, 9) and r["image_id"] in (11, 12, 13)
    assert main(["evaluate", "--model", str(tmp_path / "model.keras"), "--data", str(tmp_path / "nope.json")]) == 1
    assert "nope.json" in capsys.readouterr().err
