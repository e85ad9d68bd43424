import json

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
h5py = pytest.importorskip("h5py")
pytest.importorskip("pycocotools")

from solo_tf.config import DataConfig  # noqa: E402
from solo_tf.data.cis680 import CIS680SourceConfig  # noqa: E402
from solo_tf.data.cis680 import CLASS_NAMES, Cis680Dataset  # noqa: E402
from solo_tf.data.errors import DataError  # noqa: E402
from solo_tf.data.registry import Split  # noqa: E402
from solo_tf.data.sources import cis680_source, open_data, split_records  # noqa: E402

H, W = 30, 40
LABELS = [[1], [2, 3], [], [3], [1, 2, 2], [2], [1], [3, 1], [2], [1]]  # 10 images, 13 objects


def make_arrays(labels=LABELS, seed=0):
    """Images (N, 3, H, W) uint8, masks (total, H, W) uint8, bboxes per image: one box each."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    images = rng.integers(0, 256, (n, 3, H, W), dtype=np.uint8)
    masks, boxes = [], []
    for lab in labels:
        b = []
        for _ in lab:
            y1, x1 = rng.integers(0, H - 8), rng.integers(0, W - 8)
            y2, x2 = y1 + rng.integers(3, 8), x1 + rng.integers(3, 8)
            m = np.zeros((H, W), np.uint8)
            m[y1:y2, x1:x2] = 1
            masks.append(m)
            b.append([x1, y1, x2, y2])
        boxes.append(np.array(b, np.float32).reshape(-1, 4))
    return images, np.array(masks, np.uint8).reshape(-1, H, W), boxes


def object_array(items):
    out = np.empty(len(items), dtype=object)
    for i, v in enumerate(items):
        out[i] = v
    return out


def write_cis680(root, labels=LABELS, images=None, masks=None, boxes=None, label_array=None):
    """Writes the four files in the CIS680 layout; returns their paths."""
    root.mkdir(parents=True, exist_ok=True)
    im, ma, bo = make_arrays(labels)
    images = im if images is None else images
    masks = ma if masks is None else masks
    boxes = bo if boxes is None else boxes
    paths = {k: root / n for k, n in [("images", "imgs.h5"), ("masks", "masks.h5"), ("labels", "labels.npy"),
                                       ("bboxes", "bboxes.npy")]}
    with h5py.File(paths["images"], "w") as f:
        f["data"] = images
    with h5py.File(paths["masks"], "w") as f:
        f["data"] = masks
    lab = object_array([np.array(v, np.int64) for v in labels]) if label_array is None else label_array
    np.save(paths["labels"], lab, allow_pickle=True)
    np.save(paths["bboxes"], object_array(boxes), allow_pickle=True)
    return paths


def tf_records(ds):
    """Every good image of a Cis680Dataset as records."""
    return split_records(Split(ds, ds.class_names, bad_records=ds.bad, indices=ds.indices))


def open_ds(paths, **kw):
    kw.setdefault("trust_pickle", True)
    kw.setdefault("progress", False)
    return Cis680Dataset(paths["images"], paths["masks"], paths["labels"], paths["bboxes"], **kw)


def data_config(paths, **kw):
    return DataConfig(source="cis680", max_instances=4,
                      cis680=CIS680SourceConfig(images=str(paths["images"]), masks=str(paths["masks"]),
                                                labels=str(paths["labels"]), bboxes=str(paths["bboxes"]),
                                                trust_pickle=True),
                      flip=False, **kw)


@pytest.fixture
def cis_files(tmp_path):
    return write_cis680(tmp_path / "cis")


def test_records_have_the_expected_tensors(cis_files):
    images, masks, _ = make_arrays()
    ds = open_ds(cis_files)
    assert len(ds) == 10 and ds.class_names == CLASS_NAMES
    recs = [tf.nest.map_structure(lambda t: t.numpy(), r) for r in tf_records(ds)]
    start = 0
    for i, (r, lab) in enumerate(zip(recs, LABELS)):
        assert r["image_id"] == i + 1
        assert r["image"].dtype == np.uint8 and r["image"].shape == (H, W, 3)
        np.testing.assert_array_equal(r["image"], images[i].transpose(1, 2, 0))
        assert r["masks"].dtype == np.uint8 and r["masks"].shape == (len(lab), H, W)
        np.testing.assert_array_equal(r["masks"], masks[start:start + len(lab)])  # consecutive ownership
        np.testing.assert_array_equal(r["classes"], np.array(lab) - 1)
        assert r["classes"].dtype == np.int32
        start += len(lab)


def test_object_arrays_need_trust_pickle(cis_files):
    with pytest.raises(DataError) as e:
        open_ds(cis_files, trust_pickle=False)
    msg = str(e.value)
    assert "labels.npy" in msg and "pickle" in msg and "arbitrary code" in msg and "--trust-pickle" in msg


def test_plain_label_array_loads_without_pickle(tmp_path):
    labels = [[1, 2], [3, 3], [2, 1]]
    paths = write_cis680(tmp_path, labels=labels, label_array=np.array(labels, np.int64))
    ds = Cis680Dataset(paths["images"], paths["masks"], paths["labels"], trust_pickle=False, progress=False)
    np.testing.assert_array_equal(ds.load(1)["classes"], [2, 2])


def test_split_is_seeded_80_20_and_disjoint(cis_files):
    ds = open_ds(cis_files)
    train, val = ds.split(0.2, seed=0)
    assert len(train) == 8 and len(val) == 2
    assert sorted(train + val) == list(range(10))
    assert ds.split(0.2, seed=0) == (train, val)
    assert ds.split(0.2, seed=1) != (train, val)


def test_source_splits_and_goes_through_the_pipeline(cis_files):
    from conftest import tiny_model_config

    from solo_tf.data.pipeline import prepare
    from solo_tf.data.sources import RecordSource

    cfg = data_config(cis_files, seed=5)
    tr = cis680_source(cfg, "train", num_classes=3)
    va = cis680_source(cfg, "val", num_classes=3)
    assert isinstance(tr, RecordSource) and tr.class_names == CLASS_NAMES
    assert tr.category_ids == (1, 2, 3)  # the label values, as `solo-tf convert` writes them
    assert (tr.num_records, va.num_records) == (8, 2)
    tr_ids = sorted(int(r["image_id"]) for r in tr.records)
    va_ids = sorted(int(r["image_id"]) for r in va.records)
    assert not set(tr_ids) & set(va_ids) and sorted(tr_ids + va_ids) == list(range(1, 11))
    assert sorted(int(r["image_id"]) for r in cis680_source(cfg, "test").records) == va_ids

    model = tiny_model_config(image_size=(64, 64), num_classes=3)
    batches = list(prepare(tr.records, model, cfg, batch_size=4, training=True))
    assert len(batches) == 2
    images, y = batches[0]
    assert images.shape == (4, 64, 64, 3) and y["masks"].shape == (4, 4, 16, 16)
    assert set(np.unique(y["classes"].numpy())) <= {-1, 0, 1, 2}
    with pytest.raises(DataError, match="has 3 classes .* model.num_classes is 80"):
        cis680_source(cfg, "train", num_classes=80)


def test_both_splits_come_from_one_scan_and_share_its_log(cis_files, monkeypatch):
    scans = []
    original = Cis680Dataset._scan_masks

    def counted(self, masks):
        scans.append(self.masks_h5)
        return original(self, masks)

    monkeypatch.setattr(Cis680Dataset, "_scan_masks", counted)
    both = open_data(data_config(cis_files, skip_bad=True), num_classes=3)
    assert len(scans) == 1
    assert both["train"].bad_records is both["val"].bad_records
    open_data(data_config(cis_files, skip_bad=True), num_classes=3)
    assert len(scans) == 2  # a second call scans again: nothing is cached between calls


def test_mask_count_must_equal_label_total(tmp_path):
    _, masks, _ = make_arrays()
    paths = write_cis680(tmp_path, masks=masks[:-1])
    for skip_bad in (False, True):
        with pytest.raises(DataError, match=r"masks.h5: holds 12 masks but labels.npy lists 13 labels"):
            open_ds(paths, skip_bad=skip_bad)


def test_mask_image_shape_mismatch(tmp_path):
    _, masks, _ = make_arrays()
    paths = write_cis680(tmp_path, masks=masks[:, :, :-2])
    with pytest.raises(DataError, match=r"masks.h5: masks are 30x38 .* images in imgs.h5 are 30x40"):
        open_ds(paths)


def test_label_out_of_range(tmp_path):
    labels = [list(v) for v in LABELS]
    labels[3] = [4]
    paths = write_cis680(tmp_path, labels=labels)
    with pytest.raises(DataError, match=r"labels.npy: image 3: label 4 out of range"):
        open_ds(paths)
    ds = open_ds(paths, skip_bad=True)
    assert ds.bad.counts == {"label out of range": 1}
    assert 3 not in ds.indices and len(ds) == 9
    assert "label out of range" in ds.bad.summary()
    ids = [int(r["image_id"]) for r in tf_records(ds)]
    assert 4 not in ids and len(ids) == 9


def test_empty_mask(tmp_path):
    _, masks, _ = make_arrays()
    masks[2] = 0  # image 1's second object (label 3)
    paths = write_cis680(tmp_path, masks=masks)
    with pytest.raises(DataError, match=r"masks.h5: mask 2 \(image 1, object 1\) is empty"):
        open_ds(paths)
    ds = open_ds(paths, skip_bad=True)
    assert ds.bad.counts == {"empty mask": 1}
    r = ds.load(1)
    np.testing.assert_array_equal(r["classes"], [1])  # only the person remains
    np.testing.assert_array_equal(r["masks"], masks[1:2])


def test_bboxes_must_match_labels(tmp_path):
    _, _, boxes = make_arrays()
    boxes[4] = boxes[4][:2]
    paths = write_cis680(tmp_path, boxes=boxes)
    with pytest.raises(DataError, match=r"bboxes.npy: image 4: bboxes must be \(3, 4\)"):
        open_ds(paths)
    assert open_ds(paths, skip_bad=True).bad.counts == {"bboxes do not match labels": 1}


def test_file_level_problems_name_the_file(tmp_path):
    paths = write_cis680(tmp_path)
    with pytest.raises(DataError, match=r"nope.h5: file not found"):
        Cis680Dataset(tmp_path / "nope.h5", paths["masks"], paths["labels"], trust_pickle=True, progress=False)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["images"] = np.zeros((1, 3, 4, 4), np.uint8)
    with pytest.raises(DataError, match=r"other.h5: no 'data' dataset"):
        Cis680Dataset(tmp_path / "other.h5", paths["masks"], paths["labels"], trust_pickle=True, progress=False)
    (tmp_path / "junk.h5").write_bytes(b"junk" * 10)
    with pytest.raises(DataError, match=r"junk.h5: not a readable HDF5 file"):
        Cis680Dataset(tmp_path / "junk.h5", paths["masks"], paths["labels"], trust_pickle=True, progress=False)
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY junk")
    with pytest.raises(DataError, match=r"junk.npy: not a valid .npy labels file"):
        Cis680Dataset(paths["images"], paths["masks"], tmp_path / "junk.npy", trust_pickle=True, progress=False)
    short = write_cis680(tmp_path / "short", label_array=object_array([np.array(v) for v in LABELS[:-1]]))
    with pytest.raises(DataError, match=r"labels.npy: has 9 labels entries but the images file has 10"):
        open_ds(short)


def test_convert_to_coco_round_trips(cis_files, tmp_path):
    from solo_tf.data.coco import CocoDataset
    from solo_tf.data.convert import convert_cis680_to_coco

    out = convert_cis680_to_coco(cis_files["images"], cis_files["masks"], cis_files["labels"], cis_files["bboxes"],
                                 tmp_path / "coco", trust_pickle=True, progress=False)
    assert out["num_images"] == 10 and out["num_objects"] == 13
    assert not [p for p in (tmp_path / "coco").rglob("*") if ".tmp" in p.name]  # no temp files left
    src = open_ds(cis_files)
    coco = CocoDataset(out["annotations"], out["images"], progress=False)
    assert coco.category_map == {0: {"id": 1, "name": "vehicle"}, 1: {"id": 2, "name": "person"},
                                 2: {"id": 3, "name": "animal"}}
    assert len(coco) == 10
    for k in range(len(coco)):
        a = coco.load(k)
        b = src.load(int(a["image_id"]) - 1)
        for key in ("image", "masks", "classes"):
            np.testing.assert_array_equal(a[key], b[key])
    train, val = src.split(0.2, 0)
    for name, idx in (("train", train), ("val", val)):
        ids = sorted(im["id"] for im in json.loads(out[name].read_text())["images"])
        assert ids == [i + 1 for i in idx]
    first = json.loads(out["annotations"].read_text())["annotations"][0]
    assert first["bbox"][2] > 0 and first["area"] == int(src.load(0)["masks"][0].sum())


def test_convert_needs_trust_pickle(cis_files, tmp_path):
    from solo_tf.data.convert import convert_cis680_to_coco

    with pytest.raises(DataError, match="--trust-pickle"):
        convert_cis680_to_coco(cis_files["images"], cis_files["masks"], cis_files["labels"], cis_files["bboxes"],
                               tmp_path / "coco", progress=False)
    assert not (tmp_path / "coco" / "annotations.json").exists()
