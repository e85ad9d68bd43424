import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
mask_utils = pytest.importorskip("pycocotools.mask")
Image = pytest.importorskip("PIL.Image")

from solo_tf.config import Config, DataConfig, LabelsConfig  # noqa: E402
from solo_tf.data.coco import CocoSourceConfig  # noqa: E402
from solo_tf.data.coco import CocoDataset, rle_string_counts  # noqa: E402
from solo_tf.data.errors import BadRecordLog, DataError, data_error_from  # noqa: E402
from solo_tf.data.registry import Split  # noqa: E402
from solo_tf.data.sources import coco_source, load_source, open_sources, split_records  # noqa: E402

# Fixture: three images.
#   image 11 (40 x 50): a polygon (category 5 "car"), a compressed RLE (category 9 "dog"),
#                       and a crowd region (excluded from the targets)
#   image 12 (30 x 30): an uncompressed RLE (category 5)
#   image 13 (20 x 24): no annotations (a negative)
# Categories 9, 5, 7 -> contiguous indices by id: 5 -> 0, 7 -> 1, 9 -> 2.
SIZES = {11: (40, 50), 12: (30, 30), 13: (20, 24)}
POLYGON = [10.0, 5.0, 30.0, 5.0, 30.0, 20.0, 10.0, 20.0]


def disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)


def uncompressed_counts(mask):
    """Column-major run lengths starting with a 0-run, as COCO's uncompressed RLE."""
    flat = np.asarray(mask, np.uint8).flatten(order="F")
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return counts


def rle_mask(h, w):
    return disc(h, w, 28, 38, 7)


def uncompressed_mask(h, w):
    m = np.zeros((h, w), np.uint8)
    m[3:12, 5:25] = 1
    return m


def crowd_mask(h, w):
    m = np.zeros((h, w), np.uint8)
    m[30:38, 2:12] = 1
    return m


def write_image(path, h, w, seed):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def coco_json():
    h, w = SIZES[11]
    rle = mask_utils.encode(np.asfortranarray(rle_mask(h, w)))
    crowd = mask_utils.encode(np.asfortranarray(crowd_mask(h, w)))
    h2, w2 = SIZES[12]
    return {
        "images": [
            {"id": iid, "file_name": f"img_{iid}.png", "height": hh, "width": ww} for iid, (hh, ww) in SIZES.items()
        ],
        "annotations": [
            {"id": 1, "image_id": 11, "category_id": 5, "segmentation": [POLYGON], "iscrowd": 0},
            {"id": 2, "image_id": 11, "category_id": 9, "iscrowd": 0,
             "segmentation": {"size": [h, w], "counts": rle["counts"].decode()}},
            {"id": 3, "image_id": 11, "category_id": 9, "iscrowd": 1,
             "segmentation": {"size": [h, w], "counts": crowd["counts"].decode()}},
            {"id": 4, "image_id": 12, "category_id": 5, "iscrowd": 0,
             "segmentation": {"size": [h2, w2], "counts": uncompressed_counts(uncompressed_mask(h2, w2))}},
        ],
        "categories": [{"id": 9, "name": "dog"}, {"id": 5, "name": "car"}, {"id": 7, "name": "unused"}],
    }


def write_coco(root, data=None, images=True):
    """Writes root/images/*.png and root/annotations.json; returns (json path, image dir)."""
    image_dir = root / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    if images:
        for iid, (h, w) in SIZES.items():
            write_image(image_dir / f"img_{iid}.png", h, w, iid)
    ann = root / "annotations.json"
    ann.write_text(json.dumps(coco_json() if data is None else data))
    return ann, image_dir


@pytest.fixture
def coco_files(tmp_path):
    return write_coco(tmp_path)


def by_id(records):
    return {int(r["image_id"]): r for r in records}


def tf_records(ds):
    split = Split(ds, ds.class_names, bad_records=ds.bad)
    return [tf.nest.map_structure(lambda t: t.numpy(), r) for r in split_records(split, skip_bad=ds.skip_bad)]


# --- loading ---------------------------------------------------------------------------------
def test_records_have_the_expected_tensors(coco_files):
    ann, image_dir = coco_files
    ds = CocoDataset(ann, image_dir, progress=False)
    recs = by_id(tf_records(ds))
    assert sorted(recs) == [11, 12, 13]

    h, w = SIZES[11]
    r = recs[11]
    assert r["image"].dtype == np.uint8 and r["image"].shape == (h, w, 3)
    np.testing.assert_array_equal(r["image"], np.asarray(Image.open(image_dir / "img_11.png").convert("RGB")))
    assert r["masks"].dtype == np.uint8 and r["masks"].shape == (2, h, w)
    np.testing.assert_array_equal(r["classes"], [0, 2])  # car (id 5), dog (id 9); crowd left out
    poly = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([POLYGON], h, w)))
    np.testing.assert_array_equal(r["masks"][0], poly)
    ys, xs = np.nonzero(r["masks"][0])  # the 20 x 15 rectangle, within a pixel
    assert 9 <= xs.min() <= 11 and 29 <= xs.max() <= 30 and 4 <= ys.min() <= 6 and 19 <= ys.max() <= 20
    np.testing.assert_array_equal(r["masks"][1], rle_mask(h, w))
    assert set(np.unique(r["masks"])) <= {0, 1}

    h2, w2 = SIZES[12]
    np.testing.assert_array_equal(recs[12]["masks"], uncompressed_mask(h2, w2)[None])
    np.testing.assert_array_equal(recs[12]["classes"], [0])

    assert recs[13]["masks"].shape == (0, *SIZES[13]) and recs[13]["classes"].shape == (0,)
    assert ds.stats == {"images": 3, "negatives": 1, "objects": 3, "crowd": 1, "images_skipped": 0}
    assert ds.bad.total == 0


def test_masks_match_pycocotools_annToMask(coco_files):
    from pycocotools.coco import COCO

    ann, image_dir = coco_files
    ref = COCO(str(ann))
    ds = CocoDataset(ann, image_dir, progress=False)
    for k in range(len(ds)):
        r = ds.load(k)
        iid = int(r["image_id"])
        anns = [a for a in ref.loadAnns(ref.getAnnIds(imgIds=[iid])) if not a["iscrowd"]]
        assert len(anns) == len(r["masks"])
        for a, m in zip(anns, r["masks"]):
            np.testing.assert_array_equal(m, ref.annToMask(a))


def test_category_map_is_contiguous_by_id_and_round_trips(coco_files, tmp_path):
    ann, image_dir = coco_files
    ds = CocoDataset(ann, image_dir, progress=False)
    assert ds.category_map == {0: {"id": 5, "name": "car"}, 1: {"id": 7, "name": "unused"},
                               2: {"id": 9, "name": "dog"}}
    assert ds.class_names == ("car", "unused", "dog") and ds.num_classes == 3
    # Saved with a model as JSON (string keys) and read back, another file with its
    # categories listed differently maps to the same indices.
    saved = json.loads(json.dumps(ds.category_map))
    data = coco_json()
    data["categories"] = [{"id": 5, "name": "car"}, {"id": 9, "name": "dog"}]
    ann2, _ = write_coco(tmp_path / "other", data)
    ds2 = CocoDataset(ann2, image_dir, category_map=saved, progress=False)
    assert ds2.category_map == ds.category_map
    np.testing.assert_array_equal(by_id(tf_records(ds2))[11]["classes"], [0, 2])


def test_bad_category_map_is_rejected(coco_files):
    ann, image_dir = coco_files
    with pytest.raises(DataError, match="keys must be 0..1"):
        CocoDataset(ann, image_dir, category_map={0: {"id": 5, "name": "car"}, 2: {"id": 9, "name": "dog"}},
                    progress=False)


def test_source_goes_through_the_pipeline(coco_files):
    from conftest import tiny_model_config

    from solo_tf.data.pipeline import prepare
    from solo_tf.data.sources import RecordSource

    ann, image_dir = coco_files
    data = DataConfig(source="coco", max_instances=4, coco=CocoSourceConfig(train_annotations=str(ann), train_images=str(image_dir)), flip=False)
    src = coco_source(data, "train", num_classes=3)
    assert isinstance(src, RecordSource)
    assert src.class_names == ("car", "unused", "dog") and src.num_records == 3
    assert src.category_ids == (5, 7, 9)  # the file's ids, in class-index order
    assert coco_source(data, "val", num_classes=3) is None  # no val file configured
    model = tiny_model_config(image_size=(64, 64), num_classes=3)
    batches = list(prepare(src.records, model, data, batch_size=3, training=True))
    assert len(batches) == 1
    images, y = batches[0]
    assert images.shape == (3, 64, 64, 3) and y["masks"].shape == (3, 4, 16, 16)
    n_obj = sorted(int(v) for v in tf.reduce_sum(tf.cast(y["classes"] >= 0, tf.int32), 1).numpy())
    assert n_obj == [0, 1, 2]
    assert set(np.unique(y["classes"].numpy())) <= {-1, 0, 2}


def test_training_order_is_reshuffled_each_epoch(tmp_path):
    root = tmp_path / "many"
    data = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "x"}]}
    (root / "images").mkdir(parents=True)
    for iid in range(1, 13):
        write_image(root / "images" / f"{iid}.png", 8, 8, iid)
        data["images"].append({"id": iid, "file_name": f"{iid}.png", "height": 8, "width": 8})
    ann = root / "a.json"
    ann.write_text(json.dumps(data))
    cfg = DataConfig(source="coco", max_instances=4, coco=CocoSourceConfig(train_annotations=str(ann), train_images=str(root / "images")), seed=3)
    src = coco_source(cfg, "train", num_classes=1)
    epochs = [[int(r["image_id"]) for r in src.records] for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(1, 13))
    assert epochs[0] != epochs[1]


def _count_json_reads(monkeypatch):
    reads = []
    original = CocoDataset._read_json

    def counted(self):
        reads.append(self.annotation_file.name)
        return original(self)

    monkeypatch.setattr(CocoDataset, "_read_json", counted)
    return reads


def _train_val_config(coco_files, tmp_path):
    ann, image_dir = coco_files
    val = coco_json()
    val["categories"] = [{"id": 9, "name": "dog"}, {"id": 5, "name": "car"}]  # no id 7: own map would differ
    val_ann = tmp_path / "val.json"
    val_ann.write_text(json.dumps(val))
    cfg = Config()
    cfg.model.num_classes = 3
    cfg.data = DataConfig(source="coco", max_instances=4, flip=False,
                          coco=CocoSourceConfig(train_annotations=str(ann), train_images=str(image_dir),
                                                val_annotations=str(val_ann), val_images=str(image_dir)))
    return cfg


def test_val_split_gets_the_training_category_map_and_each_file_is_read_once(coco_files, tmp_path, monkeypatch):
    from solo_tf.data.pipeline import build_datasets

    cfg = _train_val_config(coco_files, tmp_path)
    reads = _count_json_reads(monkeypatch)
    src = open_sources(cfg)
    assert src["val"].category_map == src["train"].category_map == {
        0: {"id": 5, "name": "car"}, 1: {"id": 7, "name": "unused"}, 2: {"id": 9, "name": "dog"}}
    assert sorted(reads) == ["annotations.json", "val.json"]
    # image 11 holds a car and a dog: train's numbering (car 0, dog 2), not val's own (dog 0, car 1)
    by_image = {int(r["image_id"]): sorted(r["classes"].numpy().tolist()) for r in src["val"].records}
    assert by_image[11] == [0, 2]

    reads.clear()
    _, _, info = build_datasets(cfg)
    assert sorted(reads) == ["annotations.json", "val.json"]  # the trainer's ids come from the source
    assert info["category_ids"] == [5, 7, 9] and info["class_names"] == ["car", "unused", "dog"]


def test_a_split_opened_alone_depends_only_on_the_config(coco_files, tmp_path):
    cfg = _train_val_config(coco_files, tmp_path)
    open_sources(cfg)  # opening train first leaves nothing behind
    cfg.model.num_classes = 2
    own = load_source(cfg, "val")
    assert own.category_map == {0: {"id": 5, "name": "car"}, 1: {"id": 9, "name": "dog"}}
    # a trained model's labels fix the numbering; names missing there come from the file
    cfg.model.num_classes = 3
    cfg.labels = LabelsConfig(category_ids=[5, 7, 9])
    fixed = load_source(cfg, "val")
    assert fixed.category_map == {0: {"id": 5, "name": "car"}, 1: {"id": 7, "name": "7"}, 2: {"id": 9, "name": "dog"}}


def test_num_classes_mismatch_names_the_file(coco_files):
    ann, image_dir = coco_files
    data = DataConfig(source="coco", max_instances=4, coco=CocoSourceConfig(train_annotations=str(ann), train_images=str(image_dir)))
    with pytest.raises(DataError, match=r"annotations.json: has 3 classes \(car, unused, dog\) but model.num_classes is 80"):
        coco_source(data, "train", num_classes=80)


def test_rle_string_parser_matches_pycocotools():
    rng = np.random.default_rng(0)
    for _ in range(20):
        m = (rng.random((13, 17)) < rng.random()).astype(np.uint8)
        rle = mask_utils.encode(np.asfortranarray(m))
        counts = rle_string_counts(rle["counts"].decode())
        assert counts == uncompressed_counts(m) or counts == [0] + uncompressed_counts(m)[1:]
        assert sum(counts) == m.size
    for garbage in ["\x00", "zz", "o", "P" * 9, "é"]:
        assert rle_string_counts(garbage) is None


# --- bad input -------------------------------------------------------------------------------
def mutate(fn):
    data = coco_json()
    fn(data)
    return data


def _ann(data, aid):
    return next(a for a in data["annotations"] if a["id"] == aid)


def _set(d, **kw):
    d.update(kw)


# (case name, mutation, message pattern (after the file name), skip reason, images kept with skip_bad)
BAD_CASES = [
    ("missing image", lambda d: _set(_ann(d, 4), image_id=99),
     r"annotation id 4 \(image 99\): image id 99 is not in 'images'", "annotation points to a missing image",
     {11: 2, 12: 0, 13: 0}),
    ("polygon < 3 points", lambda d: _ann(d, 1)["segmentation"].append([1.0, 1.0, 5.0, 5.0]),
     r"annotation id 1 \(image 11\): polygon 1 with 2 points \(< 3\)", "polygon with < 3 points",
     {11: 2, 12: 1, 13: 0}),
    ("only polygon < 3 points", lambda d: _set(_ann(d, 1), segmentation=[[1.0, 1.0, 5.0, 5.0]]),
     r"annotation id 1 \(image 11\): polygon 0 with 2 points \(< 3\)", "polygon with < 3 points",
     {11: 1, 12: 1, 13: 0}),
    ("RLE size field", lambda d: _ann(d, 2)["segmentation"].update(size=[41, 50]),
     r"annotation id 2 \(image 11\): RLE size \[41, 50\] != image size \[40, 50\]", "RLE size is not the image size",
     {12: 1, 13: 0}),
    ("RLE counts total", lambda d: _ann(d, 4)["segmentation"]["counts"].append(5),
     r"annotation id 4 \(image 12\): RLE runs cover 905 pixels, the 30x30 image has 900",
     "RLE size is not the image size", {11: 2, 13: 0}),
    ("label not in categories", lambda d: _set(_ann(d, 1), category_id=42),
     r"annotation id 1 \(image 11\): category_id 42 is not one of the 3 categories", "category id not in categories",
     {12: 1, 13: 0}),
    ("zero area", lambda d: _ann(d, 4)["segmentation"].update(counts=[900]),
     r"annotation id 4 \(image 12\): object has zero area", "zero-area object", {11: 2, 12: 0, 13: 0}),
    ("malformed RLE", lambda d: _ann(d, 2)["segmentation"].update(counts="\x01\x02"),
     r"annotation id 2 \(image 11\): RLE 'counts' is not a valid", "malformed RLE", {12: 1, 13: 0}),
    ("bad iscrowd", lambda d: _set(_ann(d, 4), iscrowd=2),
     r"annotation id 4 \(image 12\): iscrowd must be 0 or 1", "malformed annotation", {11: 2, 13: 0}),
    ("bad image entry", lambda d: _set(d["images"][2], height=-3),
     r"image id 13: height/width must be positive", "malformed image entry", {11: 2, 12: 1}),
]


@pytest.mark.parametrize("name,fn,pattern,reason,kept", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_annotations_raise_naming_file_and_record(tmp_path, name, fn, pattern, reason, kept):
    ann, image_dir = write_coco(tmp_path, mutate(fn))
    with pytest.raises(DataError, match=r"annotations.json: " + pattern) as e:
        CocoDataset(ann, image_dir, progress=False)
    assert e.value.reason == reason


@pytest.mark.parametrize("name,fn,pattern,reason,kept", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_annotations_skipped_and_counted(tmp_path, name, fn, pattern, reason, kept):
    ann, image_dir = write_coco(tmp_path, mutate(fn))
    ds = CocoDataset(ann, image_dir, skip_bad=True, progress=False)
    assert ds.bad.counts == {reason: 1}
    assert reason in ds.bad.summary() and "skipped 1 bad record" in ds.bad.summary()
    recs = by_id(tf_records(ds))
    assert {iid: len(r["classes"]) for iid, r in recs.items()} == kept


@pytest.mark.parametrize("text", ['{"images": [{"id": 1, "file_na', "", "[1, 2", "not json at all"])
def test_truncated_or_invalid_json_names_the_file(tmp_path, text):
    ann = tmp_path / "annotations.json"
    ann.write_text(text)
    for skip_bad in (False, True):  # a broken file is never a skippable record
        with pytest.raises(DataError, match=r"annotations.json: not valid JSON"):
            CocoDataset(ann, tmp_path, skip_bad=skip_bad, progress=False)


def test_missing_annotation_file_and_missing_lists(tmp_path):
    with pytest.raises(DataError, match=r"nope.json: annotation file not found"):
        CocoDataset(tmp_path / "nope.json", tmp_path, progress=False)
    ann = tmp_path / "a.json"
    ann.write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DataError, match=r"a.json: no 'categories' list"):
        CocoDataset(ann, tmp_path, progress=False)
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1}, {"id": 1}]}))
    with pytest.raises(DataError, match=r"a.json: category id 1 appears twice"):
        CocoDataset(ann, tmp_path, progress=False)


def test_missing_image_file_up_front(tmp_path):
    ann, image_dir = write_coco(tmp_path)
    (image_dir / "img_12.png").unlink()
    with pytest.raises(DataError, match=r"img_12.png: image file not found \(image id 12"):
        CocoDataset(ann, image_dir, progress=False)
    ds = CocoDataset(ann, image_dir, skip_bad=True, progress=False)
    assert ds.bad.counts == {"missing image file": 1} and sorted(by_id(tf_records(ds))) == [11, 13]


def test_missing_image_file_when_decoding(tmp_path):
    ann, image_dir = write_coco(tmp_path)
    ds = CocoDataset(ann, image_dir, check_images=False, progress=False)
    (image_dir / "img_12.png").unlink()
    with pytest.raises(DataError, match=r"img_12.png: image file not found"):
        ds.load(1)
    with pytest.raises(tf.errors.OpError, match=r"img_12.png: image file not found \(image id 12") as e:
        tf_records(ds)
    clean = data_error_from(e.value)  # the one-line message, without TF's traceback
    assert isinstance(clean, DataError) and "Traceback" not in str(clean)
    assert str(clean) == f"{image_dir / 'img_12.png'}: image file not found (image id 12 in annotations.json)"
    assert data_error_from(ValueError("unrelated")) is None


def _corrupt(path):
    raw = path.read_bytes()
    path.write_bytes(raw[:60])  # the header survives, the pixel data is cut off


@pytest.mark.parametrize("check_images", [True, False])
def test_corrupt_image_file_names_the_file(tmp_path, check_images):
    ann, image_dir = write_coco(tmp_path)
    _corrupt(image_dir / "img_11.png")
    ds = CocoDataset(ann, image_dir, check_images=check_images, progress=False)  # header still reads
    with pytest.raises(DataError, match=r"img_11.png: cannot decode image \(image id 11\)"):
        ds.load(0)
    with pytest.raises(tf.errors.OpError, match=r"img_11.png: cannot decode image"):
        tf_records(ds)
    skipping = CocoDataset(ann, image_dir, skip_bad=True, check_images=check_images, progress=False)
    assert sorted(by_id(tf_records(skipping))) == [12, 13]
    assert skipping.bad.counts == {"corrupt image file": 1}
    assert "img_11.png" in skipping.bad.summary()


def test_garbage_image_file_caught_up_front(tmp_path):
    ann, image_dir = write_coco(tmp_path)
    (image_dir / "img_13.png").write_bytes(b"definitely not a png")
    with pytest.raises(DataError, match=r"img_13.png: not a readable image \(image id 13\)"):
        CocoDataset(ann, image_dir, progress=False)


def test_image_shape_mismatch(tmp_path):
    ann, image_dir = write_coco(tmp_path)
    write_image(image_dir / "img_12.png", 31, 30, 0)
    with pytest.raises(DataError, match=r"img_12.png: image is 30x31 but annotations.json says 30x30"):
        CocoDataset(ann, image_dir, progress=False)
    ds = CocoDataset(ann, image_dir, check_images=False, progress=False)
    with pytest.raises(DataError, match=r"image is 30x31 but annotations.json says 30x30") as e:
        ds.load(1)
    assert e.value.reason == "image size is not the annotated size"
    ds = CocoDataset(ann, image_dir, skip_bad=True, progress=False)
    assert ds.bad.counts == {"image size is not the annotated size": 1} and len(ds) == 2


def test_bad_record_log_summary_counts_per_reason():
    log = BadRecordLog("x.json", examples=1)
    log.skip("zero-area object", "x.json: annotation id 1: zero")
    log.skip("zero-area object", "x.json: annotation id 2: zero")
    log.skip("missing image file", "a.png: not found")
    assert log.counts == {"zero-area object": 2, "missing image file": 1} and log.total == 3
    s = log.summary()
    assert s.splitlines()[0] == "x.json: skipped 3 bad records"
    assert "2  zero-area object" in s and "annotation id 1" in s and "annotation id 2" not in s
    with pytest.raises(DataError, match="boom") as e:
        log.handle(False, "why", "boom")
    assert e.value.reason == "why" and log.total == 3
    assert BadRecordLog("y").summary() == "y: no bad records"


def test_progress_is_printed_to_stderr(coco_files, capsys):
    ann, image_dir = coco_files
    CocoDataset(ann, image_dir)
    err = capsys.readouterr().err
    assert "scanning annotations.json: 4/4" in err and "checking images" in err


def test_records_skipped_while_decoding_are_counted_in_the_sources_log(tmp_path):
    from solo_tf.data.pipeline import build_datasets

    ann, image_dir = write_coco(tmp_path)
    _corrupt(image_dir / "img_12.png")  # the header is fine, so only decoding finds it
    cfg = Config()
    cfg.model.image_size, cfg.model.num_classes = (64, 64), 3
    cfg.train.batch_size = 1
    cfg.data = DataConfig(source="coco", max_instances=4, skip_bad=True,
                          coco=CocoSourceConfig(train_annotations=str(ann), train_images=str(image_dir)))
    train_ds, _, info = build_datasets(cfg)
    (log,) = info["bad_records"]
    assert log.total == 0
    assert len(list(train_ds)) == 2  # three images, one skipped
    assert log.counts == {"corrupt image file": 1} and "img_12.png" in log.summary()
