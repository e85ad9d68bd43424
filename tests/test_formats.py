"""The data formats people have: LabelMe folders, Ultralytics YOLO-seg datasets and folders
of instance-label PNGs, each made here with multi-part objects and (where the format has
them) ignore regions. Each is read as a source of its own, converted to COCO with every
object kept and the same masks, trained on, and a bad polygon (or object) is named."""

import base64
import io
import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("pycocotools")
from PIL import Image  # noqa: E402

from solo_tf.config import DataConfig  # noqa: E402
from solo_tf.data.coco import CocoDataset  # noqa: E402
from solo_tf.data.errors import DataError  # noqa: E402
from solo_tf.data.labelme import LabelMeFolder, LabelMeSourceConfig  # noqa: E402
from solo_tf.data.masks import MaskFolder, MasksSourceConfig  # noqa: E402
from solo_tf.data.yolo import YoloSourceConfig  # noqa: E402

H = W = 64


def _png_bytes(seed, mode="RGB"):
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8), mode).save(buf, format="PNG")
    return buf.getvalue()


def _write_image(path, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_png_bytes(seed))


def _records(data_config, split="train", num_classes=2):
    from solo_tf.data.sources import open_data

    src = open_data(data_config, (split,), num_classes)[split]
    return {int(r["image_id"]): r for r in src.records.as_numpy_iterator()}, src


def _same_as_coco(records, coco_json, image_dir):
    """The converted COCO files read back as the source's own records: same images, masks, classes."""
    coco = CocoDataset(coco_json, image_dir, progress=False)
    assert sorted(coco.image_ids) == sorted(records)
    for k in range(len(coco)):
        a = coco.load(k)
        b = records[int(a["image_id"])]
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["classes"], b["classes"])
        np.testing.assert_array_equal(a["masks"], b["masks"])


def _train_on_coco(tmp_path, result, num_classes=2):
    from conftest import tiny_model_config

    from solo_tf.config import Config, TrainConfig
    from solo_tf.data.coco import CocoSourceConfig
    from solo_tf.tasks import train

    data = DataConfig(source="coco", max_instances=6, flip=False, coco=CocoSourceConfig(**result["data"]["coco"]))
    cfg = Config(name="converted", model=tiny_model_config("solov2", image_size=(64, 64), num_classes=num_classes),
                 data=data, train=TrainConfig(epochs=1, batch_size=2, steps_per_epoch=2, warmup_iters=1))
    run = train(cfg, tmp_path / "run", validation=False, verbose=0)
    assert run.steps == 2 and np.isfinite(run.history["loss"][-1])
    return run


# --- LabelMe -------------------------------------------------------------------------------------
def _shape(label, points, shape_type="polygon", group_id=None, **kw):
    return {"label": label, "points": points, "group_id": group_id, "shape_type": shape_type, "flags": {}, **kw}


def _labelme(folder, name, shapes, seed, embed=False):
    folder.mkdir(parents=True, exist_ok=True)
    data = {"version": "5.5.0", "flags": {}, "shapes": shapes, "imagePath": f"{name}.png", "imageData": None,
            "imageHeight": H, "imageWidth": W}
    if embed:
        data["imageData"] = base64.b64encode(_png_bytes(seed)).decode()
    else:
        _write_image(folder / f"{name}.png", seed)
    (folder / f"{name}.json").write_text(json.dumps(data))


def _mask_shape(label, x1, y1, crop):
    buf = io.BytesIO()
    Image.fromarray(crop.astype(np.uint8) * 255).save(buf, format="PNG")
    return _shape(label, [[x1, y1], [x1 + crop.shape[1] - 1, y1 + crop.shape[0] - 1]], "mask",
                  mask=base64.b64encode(buf.getvalue()).decode())


def write_labelme(root):
    """train/: 3 images, 6 objects (a two-part dog, a two-part cat, a mask, a circle), one
    __ignore__ region and a point; val/: 1 image, 2 objects."""
    ring = np.zeros((10, 12), bool)
    ring[2:8, 2:10] = True
    ring[4:6, 4:8] = False
    _labelme(root / "train", "a", [
        _shape("cat", [[5, 5], [25, 6], [12, 24]]),
        _shape("dog", [[30, 30], [40, 40]], "rectangle", group_id=1),
        _shape("dog", [[45, 5], [60, 15]], "rectangle", group_id=1),  # the same dog, behind a tree
        _shape("__ignore__", [[2, 40], [20, 40], [20, 60], [2, 60]]),
        _shape("dog", [[50, 50]], "point"),  # not a region: counted, left out
    ], seed=1)
    _labelme(root / "train" / "sub", "b", [
        _shape("cat", [[32, 32], [32, 44]], "circle"),
        _shape("dog", [[2, 2], [20, 2], [20, 12]]),
    ], seed=2, embed=True)
    _labelme(root / "train", "c", [
        _mask_shape("cat", 40, 40, ring),
        _shape("cat", [[2, 2], [12, 2], [12, 12], [2, 12]], group_id=2),
        _shape("cat", [[20, 2], [30, 2], [30, 12]], group_id=2),
    ], seed=3)
    _labelme(root / "val", "d", [_shape("cat", [[5, 5], [25, 5], [25, 25]]),
                                 _shape("dog", [[30, 30], [50, 30], [40, 50]])], seed=4)
    return root


def test_labelme_folder_is_read_grouped_and_converted_whole(tmp_path, capsys):
    from solo_tf.tasks import convert

    root = write_labelme(tmp_path / "lm")
    data = DataConfig(source="labelme", max_instances=6,
                      labelme=LabelMeSourceConfig(train=str(root / "train"), val=str(root / "val")))
    records, src = _records(data)
    assert src.class_names == ("cat", "dog") and src.category_ids == (1, 2)
    assert sum(len(r["classes"]) for r in records.values()) == 6
    a = records[1]  # a.json: cat, then the two-part dog; the ignore region is not an object
    np.testing.assert_array_equal(a["classes"], [0, 1])
    dog = a["masks"][1]  # its two parts, each as pycocotools draws it alone
    assert dog[35, 35] and dog[10, 50] and not dog[20, 40]
    assert dog.sum() == _polygon_area([30, 30, 40, 30, 40, 40, 30, 40]) + _polygon_area([45, 5, 60, 5, 60, 15, 45, 15])
    assert not a["masks"][:, 50, 10].any()  # under the ignore region
    c = records[2]  # files in path order: a, c, sub/b
    assert c["masks"][0][42, 45] and not c["masks"][0][44, 45] and c["masks"][0].sum() == ring_area()
    assert c["masks"][1][5, 5] and c["masks"][1][4, 25] and not c["masks"][1][5, 16]  # two parts, one cat
    reader = LabelMeFolder(root / "train", progress=False)
    assert reader.stats["not_regions"] == 1 and reader.stats["ignore_regions"] == 1

    result = convert(data, tmp_path / "coco", progress=False)
    train = json.loads(result["train"].read_text())
    objects = [a for a in train["annotations"] if not a["iscrowd"]]
    crowd = [a for a in train["annotations"] if a["iscrowd"]]
    assert len(objects) == result["num_objects"]["train"] == 6 and result["num_objects"]["val"] == 2
    assert len(crowd) == 2 and {a["category_id"] for a in crowd} == {1, 2}  # the region, for every class
    assert result["ignore_regions"] == {"train": 1, "val": 0}
    rle = [a["image_id"] for a in objects if isinstance(a["segmentation"], dict)]
    assert rle == [2]  # polygons stay polygons; the mask shape of c is an RLE
    _same_as_coco(records, result["train"], result["images"]["train"])
    val_records, _ = _records(data, "val")
    _same_as_coco(val_records, result["val"], result["images"]["val"])
    _train_on_coco(tmp_path, result)


def _polygon_area(xy):
    from pycocotools import mask as mask_utils

    return int(mask_utils.area(mask_utils.frPyObjects([xy], H, W))[0])


def ring_area():
    ring = np.zeros((10, 12), bool)
    ring[2:8, 2:10] = True
    ring[4:6, 4:8] = False
    return int(ring.sum())


def test_labelme_bad_polygon_is_named_or_counted(tmp_path):
    root = write_labelme(tmp_path / "lm")
    _labelme(root / "train", "e", [_shape("dog", [[1, 1], [9, 9], [1, 9]]), _shape("cat", [[3, 3], [8, 8]])], 5)
    with pytest.raises(DataError, match=r"e\.json: shape 1 \(label 'cat'\): polygon with 2 points \(< 3\)"):
        LabelMeFolder(root / "train", progress=False)
    skipping = LabelMeFolder(root / "train", skip_bad=True, progress=False)
    assert skipping.bad.counts == {"polygon with < 3 points": 1}
    assert [i.class_index for i in skipping.instances(2)] == [1]  # e.json keeps its dog
    _labelme(tmp_path / "other", "f", [_shape("cat", [[3, "x"], [8, 8], [1, 2]])], 6)
    with pytest.raises(DataError, match=r"f\.json: shape 0 \(label 'cat'\): 'points' must be numbers"):
        LabelMeFolder(tmp_path / "other", progress=False)
    _labelme(root / "val", "g", [_shape("bird", [[1, 1], [9, 9], [1, 9]])], 7)
    with pytest.raises(DataError, match=r"g\.json: label 'bird' is not one of the 2 class names"):
        LabelMeFolder(root / "val", class_names=["cat", "dog"], progress=False)


def test_convert_command_from_labelme_then_train(tmp_path, capsys):
    from solo_tf.cli import main

    root = write_labelme(tmp_path / "lm")
    out = tmp_path / "coco"
    args = ["convert", "--from", "labelme", "--train", str(root / "train"), "--val", str(root / "val"),
            "--out", str(out)]
    assert main(args + ["--data", "x.yaml"]) == 2  # a flag of another format is refused
    assert "--data does not apply to --from labelme" in capsys.readouterr().err
    assert main(args + ["--seed", "3"]) == 2
    assert "--seed applies to --from cis680 only" in capsys.readouterr().err
    assert main(["convert", "--from", "cis680", "--out", str(out)]) == 2
    assert "takes --images, --masks and --labels (missing: --images, --masks, --labels)" in capsys.readouterr().err
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["num_objects"] == {"train": 6, "val": 2} and summary["skipped"] == 0
    assert summary["data"]["coco"]["train_annotations"] == str(out / "train.json")
    assert len(list((out / "images" / "train").iterdir())) == 3  # the embedded image written out too


# --- YOLO-seg ------------------------------------------------------------------------------------
BRIDGED = "0.1 0.1 0.3 0.1 0.3 0.3 0.6 0.6 0.8 0.6 0.8 0.8 0.6 0.8 0.6 0.6 0.3 0.3 0.1 0.3"


def write_yolo(root, extra_line=None):
    """images/train: a (2 objects, one of two parts joined by a bridge), b (1), c (no label
    file: a negative); val.txt lists images/val/d (1 object)."""
    for split, name, seed in (("train", "a", 1), ("train", "b", 2), ("train", "c", 3), ("val", "d", 4)):
        _write_image(root / "images" / split / f"{name}.png", seed)
    labels = root / "labels"
    (labels / "train").mkdir(parents=True)
    (labels / "val").mkdir(parents=True)
    lines = [f"1 {BRIDGED}", "0 0.5 0.05 0.95 0.05 0.95 0.4"] + ([extra_line] if extra_line else [])
    (labels / "train" / "a.txt").write_text("\n".join(lines) + "\n")
    (labels / "train" / "b.txt").write_text("0 0.2 0.5 0.5 0.5 0.5 0.9 0.2 0.9\n\n")
    (labels / "val" / "d.txt").write_text("1 0.1 0.1 0.9 0.1 0.5 0.9\n")
    (root / "val.txt").write_text("./images/val/d.png\n")
    (root / "data.yaml").write_text("path: .\ntrain: images/train\nval: val.txt\nnames:\n  0: circle\n  1: square\n")
    return root / "data.yaml"


def test_yolo_dataset_is_read_and_converted_whole(tmp_path):
    from solo_tf.tasks import convert

    yaml_path = write_yolo(tmp_path / "yolo")
    data = DataConfig(source="yolo", max_instances=6, yolo=YoloSourceConfig(dataset=str(yaml_path)))
    records, src = _records(data)
    assert src.class_names == ("circle", "square") and src.num_records == 3
    assert [len(records[i]["classes"]) for i in (1, 2, 3)] == [2, 1, 0]
    square = records[1]["masks"][0]  # two squares joined by a zero-width bridge: one object
    assert square[12, 12] and square[44, 44] and not square[12, 44]
    assert abs(int(square.sum()) - 2 * 13 * 13) < 30
    result = convert(data, tmp_path / "coco", progress=False)
    assert result["num_objects"] == {"train": 3, "val": 1} and result["num_images"] == {"train": 3, "val": 1}
    _same_as_coco(records, result["train"], result["images"]["train"])
    _train_on_coco(tmp_path, result)


def test_yolo_bad_polygon_is_named_or_counted(tmp_path):
    from solo_tf.data.sources import open_data

    yaml_path = write_yolo(tmp_path / "yolo", extra_line="1 0.1 0.1 0.2 0.2")
    data = DataConfig(source="yolo", yolo=YoloSourceConfig(dataset=str(yaml_path)))
    with pytest.raises(DataError, match=r"labels/train/a\.txt: line 3 \(class 1\): polygon with 2 points \(< 3\)"):
        open_data(data, ("train",))
    data.skip_bad = True
    src = open_data(data, ("train",))["train"]
    assert src.bad_records.counts == {"polygon with < 3 points": 1}
    assert sum(len(r["classes"]) for r in src.records.as_numpy_iterator()) == 3
    for line, message in (("2 0.1 0.1 0.2 0.2 0.3 0.1", r"line 3: class 2 is not one of the 2 classes"),
                          ("0 0.1 0.1 0.2 1.7 0.3 0.1", r"line 3 \(class 0\): normalized coordinates outside")):
        yaml_path = write_yolo(tmp_path / f"y{len(message)}", extra_line=line)
        with pytest.raises(DataError, match=message):
            open_data(DataConfig(source="yolo", yolo=YoloSourceConfig(dataset=str(yaml_path))), ("train",))


# --- instance PNGs ----------------------------------------------------------------------------------
def write_masks(root, bad_class=False):
    """train/: a (object 1 of two parts, object 2, an ignore region; palette PNG) and b (one
    object, grey PNG); val/: c (one object)."""
    def split(folder, name, seed, objects, ignore=None, palette=False):
        _write_image(folder / "images" / f"{name}.png", seed)
        ids = np.zeros((H, W), np.uint8)
        cls = np.zeros((H, W), np.uint8)
        for value, c, boxes in objects:
            for y1, y2, x1, x2 in boxes:
                ids[y1:y2, x1:x2] = value
                cls[y1:y2, x1:x2] = c
        if ignore is not None:
            y1, y2, x1, x2 = ignore
            ids[y1:y2, x1:x2] = cls[y1:y2, x1:x2] = 255
        (folder / "instances").mkdir(parents=True, exist_ok=True)
        (folder / "classes").mkdir(parents=True, exist_ok=True)
        im = Image.fromarray(ids, "L")
        if palette:  # a palette PNG, as VOC stores them: the indices are the values
            im.putpalette(np.random.default_rng(0).integers(0, 256, 768, dtype=np.uint8).tobytes())
            assert im.mode == "P"
        im.save(folder / "instances" / f"{name}.png")
        Image.fromarray(cls, "L").save(folder / "classes" / f"{name}.png")

    second = (2, 1, [(30, 40, 30, 40)])
    split(root / "train", "a", 1, [(1, 2, [(2, 12, 2, 12), (50, 60, 50, 60)]), second], ignore=(40, 64, 0, 20),
          palette=True)
    split(root / "train", "b", 2, [(7, 1, [(10, 30, 10, 30)])])
    split(root / "val", "c", 3, [(1, 2, [(5, 25, 5, 25)])])
    if bad_class:  # object 2 of a lies over class values 1 and 2
        cls = np.asarray(Image.open(root / "train" / "classes" / "a.png")).copy()
        cls[30:35, 30:40] = 2
        Image.fromarray(cls, "L").save(root / "train" / "classes" / "a.png")
    return root


def test_instance_pngs_are_read_and_converted_whole(tmp_path):
    from solo_tf.tasks import convert

    root = write_masks(tmp_path / "m")
    data = DataConfig(source="masks", max_instances=6, masks=MasksSourceConfig(
        train=str(root / "train"), val=str(root / "val"), class_names=["cell", "nucleus"]))
    records, _ = _records(data)
    a = records[1]
    np.testing.assert_array_equal(a["classes"], [1, 0])  # object 1: class value 2, object 2: value 1
    assert a["masks"][0].sum() == 200 and a["masks"][0][5, 5] and a["masks"][0][55, 55]  # two parts, one object
    assert not a["masks"][:, 50, 10].any()  # the ignore region is no object
    result = convert(data, tmp_path / "coco", progress=False)
    assert result["num_objects"] == {"train": 3, "val": 1} and result["ignore_regions"]["train"] == 1
    train = json.loads(result["train"].read_text())
    assert sum(a["iscrowd"] for a in train["annotations"]) == 2  # the region, once per class
    _same_as_coco(records, result["train"], result["images"]["train"])
    _train_on_coco(tmp_path, result)


def test_instance_png_bad_object_is_named_or_counted(tmp_path):
    from solo_tf.tasks import convert

    root = write_masks(tmp_path / "m", bad_class=True)
    reader = MaskFolder(root / "train", ["cell", "nucleus"], progress=False)
    with pytest.raises(DataError, match=r"instances/a\.png: object 2: lies over class value\(s\) 1, 2"):
        reader.load(0)
    data = DataConfig(source="masks", masks=MasksSourceConfig(train=str(root / "train"), class_names=["a", "b"]))
    with pytest.raises(DataError, match=r"object 2: lies over class value\(s\) 1, 2"):
        convert(data, tmp_path / "coco", progress=False)
    result = convert(data, tmp_path / "coco2", skip_bad=True, progress=False)
    assert result["num_images"]["train"] == 1 and result["bad"][0].counts == {"object without one class": 1}
    rgb = root / "train" / "instances" / "b.png"
    Image.open(rgb).convert("RGB").save(rgb)
    with pytest.raises(DataError, match=r"b\.png: instance PNG must be single-channel"):
        reader.load(1)


def test_evaluate_data_points_at_each_format(tmp_path):
    from solo_tf.config import Config
    from solo_tf.tasks import with_eval_data

    lm = write_labelme(tmp_path / "lm")
    yaml_path = write_yolo(tmp_path / "yolo")
    masks = write_masks(tmp_path / "m")
    cfg = Config()
    assert with_eval_data(cfg, lm / "val").data.labelme.val == str(lm / "val")
    assert with_eval_data(cfg, yaml_path).data.yolo.dataset == str(yaml_path)
    got = with_eval_data(cfg, masks / "val")
    assert (got.data.source, got.data.masks.val) == ("masks", str(masks / "val"))
    assert cfg.data.source == "shapes"  # the caller's config is left alone
