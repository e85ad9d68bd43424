"""Datasets as COCO instances JSON + image files (``solo-tf convert``).

:func:`convert_to_coco` writes any source whose reader gives COCO entries (LabelMe,
YOLO-seg, instance-PNG folders: :class:`~solo_tf.data.annotated.AnnotatedImages`)::

    out_dir/images/train/000001_a.jpg ...   the image files, copied as they are (embedded
    out_dir/images/val/...                  LabelMe images written out), id-prefixed
    out_dir/train.json, out_dir/val.json    COCO instances: polygons stay polygons, masks
                                            are compressed RLE, ignore regions are crowd
                                            (one per category, so no class is scored there)

Category ids are the class index + 1, image ids 1, 2, ... per split, as the sources give
them when trained on directly, so results line up. Every file is written to a temporary
name, then renamed into place; the JSON files come last.

:func:`convert_cis680_to_coco` writes the CIS680 h5/npy files::

    out_dir/images/000001.png ...     one RGB PNG per image, named by image id
    out_dir/annotations.json          all images, COCO instances, compressed-RLE masks
    out_dir/train.json, val.json      the same seeded split cis680_source uses

Category ids are the file's label values (1 vehicle, 2 person, 3 animal); image ids are
the h5 index + 1, as :class:`~solo_tf.data.cis680.Cis680Dataset` gives them, so results on
the converted data line up with the original. ``bbox`` and ``area`` come from the masks.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from solo_tf.data.annotated import IGNORE, rle_of
from solo_tf.data.catalog import get_source
from solo_tf.data.cis680 import CLASS_NAMES, Cis680Dataset
from solo_tf.data.errors import DataError, Progress
from solo_tf.data.registry import SPLITS
from solo_tf.io import atomic_path, write_bytes, write_json


def _atomic_write_json(path: Path, obj) -> None:
    write_json(path, obj, compact=True)


def _atomic_write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def convert_cis680_to_coco(
    images_h5,
    masks_h5,
    labels_npy,
    bboxes_npy,
    out_dir,
    trust_pickle: bool = False,
    skip_bad: bool = False,
    val_fraction: float = 0.2,
    seed: int = 0,
    progress: bool = True,
) -> dict:
    """Write the CIS680 dataset as COCO files under ``out_dir``; returns what was written.

    Args:
        images_h5, masks_h5, labels_npy, bboxes_npy: the CIS680 files (``bboxes_npy`` may be
            None; it is only checked).
        out_dir: created if needed.
        trust_pickle: allow unpickling the object-array npy files (only for trusted files).
        skip_bad: skip and count bad images / objects instead of raising DataError.
        val_fraction, seed: the train/val split written to ``train.json`` / ``val.json``.

    Returns:
        ``{"annotations", "train", "val": json paths, "images": image folder,
        "num_images", "num_objects": ints, "bad": the BadRecordLog}``.
    """
    ds = Cis680Dataset(images_h5, masks_h5, labels_npy, bboxes_npy, trust_pickle=trust_pickle,
                       skip_bad=skip_bad, progress=progress)
    try:
        return _write(ds, Path(out_dir), val_fraction, seed, progress)
    finally:
        ds.close()


def _write(ds, out_dir, val_fraction, seed, progress):
    from pycocotools import mask as mask_utils

    image_dir = out_dir / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    categories = [{"id": k + 1, "name": name, "supercategory": name} for k, name in enumerate(CLASS_NAMES)]
    images, annotations = {}, {}
    next_ann = 1
    with Progress(len(ds), f"converting to {out_dir}", enabled=progress) as bar:
        for i in ds.indices:
            r = ds.load(i)
            iid = int(r["image_id"])
            h, w = r["image"].shape[:2]
            file_name = f"{iid:06d}.png"
            _atomic_write_png(image_dir / file_name, r["image"])
            images[i] = {"id": iid, "file_name": file_name, "height": int(h), "width": int(w)}
            anns = []
            if len(r["classes"]):
                rles = mask_utils.encode(np.asfortranarray(np.transpose(r["masks"], (1, 2, 0))))
                for c, rle, area, box in zip(r["classes"], rles, mask_utils.area(rles), mask_utils.toBbox(rles)):
                    anns.append({
                        "id": next_ann,
                        "image_id": iid,
                        "category_id": int(c) + 1,
                        "segmentation": {"size": [int(h), int(w)], "counts": rle["counts"].decode("ascii")},
                        "area": int(area),
                        "bbox": [float(v) for v in box],
                        "iscrowd": 0,
                    })
                    next_ann += 1
            annotations[i] = anns
            bar.update()

    def coco(indices, description):
        return {
            "info": {"description": description},
            "images": [images[i] for i in indices],
            "annotations": [a for i in indices for a in annotations[i]],
            "categories": categories,
        }

    train, val = ds.split(val_fraction, seed)
    paths = {"annotations": out_dir / "annotations.json", "train": out_dir / "train.json", "val": out_dir / "val.json"}
    src = f"CIS680 ({ds.images_h5.name}, {ds.masks_h5.name}, {ds.labels_npy.name})"
    _atomic_write_json(paths["annotations"], coco(ds.indices, f"{src}, all images"))
    _atomic_write_json(paths["train"], coco(train, f"{src}, train split (val_fraction={val_fraction}, seed={seed})"))
    _atomic_write_json(paths["val"], coco(val, f"{src}, val split (val_fraction={val_fraction}, seed={seed})"))
    return {
        **paths,
        "images": image_dir,
        "num_images": len(images),
        "num_objects": sum(len(a) for a in annotations.values()),
        "bad": ds.bad,
    }


# --- any source with COCO entries ------------------------------------------------------------
def convert_to_coco(data_config, out_dir, progress: bool = True) -> dict:
    """Write the ``train`` / ``val`` splits of ``data_config.source`` as COCO under ``out_dir``.

    Bad records raise DataError naming the file, or with ``data_config.skip_bad`` are
    skipped and counted (the returned ``bad`` logs).

    Returns:
        ``{"train", "val": json paths (val None without a val split), "images": {split: image
        folder}, "num_images", "num_objects", "ignore_regions": {split: int}, "bad": the
        BadRecordLogs, "data": the data section that trains on the result}``.
    """
    name = data_config.source
    opened = get_source(name).open(data_config, SPLITS, None)
    train = opened["train"]
    if not hasattr(train.reader, "coco_image"):
        raise DataError(f"data.source {name!r} cannot be converted to COCO: its reader gives no COCO entries")
    categories = [{"id": k + 1, "name": n, "supercategory": ""} for k, n in enumerate(train.class_names)]
    out_dir = Path(out_dir)
    result = {"images": {}, "num_images": {}, "num_objects": {}, "ignore_regions": {}, "bad": [],
              "data": {"source": "coco", "coco": {}}}
    for split in SPLITS:
        src = opened.get(split)
        if src is None:
            result[split] = None
            continue
        image_dir = out_dir / "images" / split
        coco, ignore_regions = _write_split(src, image_dir, categories, data_config.skip_bad, progress,
                                            f"converting {split}")
        path = write_json(out_dir / f"{split}.json", coco, compact=True)
        anns = coco["annotations"]
        result.update({split: path})
        result["images"][split] = image_dir
        result["num_images"][split] = len(coco["images"])
        result["num_objects"][split] = sum(1 for a in anns if not a["iscrowd"])
        result["ignore_regions"][split] = ignore_regions
        result["data"]["coco"].update({f"{split}_annotations": str(path), f"{split}_images": str(image_dir)})
        if src.bad_records is not None and all(src.bad_records is not b for b in result["bad"]):
            result["bad"].append(src.bad_records)
    return result


def _write_split(split, image_dir, categories, skip_bad, progress, desc) -> dict:
    from PIL import Image

    reader = split.reader
    indices = range(len(reader)) if split.indices is None else split.indices
    images, annotations, ignore_regions = [], [], 0
    with Progress(len(indices), desc, enabled=progress) as bar:
        for i in indices:
            bar.update()
            try:
                entry, instances = reader.coco_image(i)
                data = reader.read_bytes(i)
                try:
                    with Image.open(io.BytesIO(data)) as im:
                        size = im.size
                except Exception as e:  # corrupt header
                    raise DataError(f"{entry['file_name']}: not a readable image: {e}", "corrupt image file") from None
                if size != (entry["width"], entry["height"]):
                    raise DataError(f"{entry['file_name']}: image is {size[0]}x{size[1]} but its annotation says "
                                    f"{entry['width']}x{entry['height']}", "image size is not the annotated size")
            except DataError as e:
                if not skip_bad:
                    raise
                split.bad_records.skip(e.reason or "bad image", str(e))
                continue
            write_bytes(image_dir / entry["file_name"], data)
            images.append(entry)
            for inst in instances:
                anns = _annotations(inst, entry, categories, len(annotations) + 1)
                ignore_regions += inst.class_index == IGNORE
                annotations += anns
    coco = {"info": {"description": f"converted by solo-tf from {split.origin}"}, "images": images,
            "annotations": annotations, "categories": categories}
    return coco, ignore_regions


def _annotations(inst, entry, categories, next_id) -> list:
    """COCO annotations of one instance: one object, or for an ignore region one crowd
    annotation per category."""
    from pycocotools import mask as mask_utils

    h, w = entry["height"], entry["width"]
    rle = rle_of(inst.segmentation, h, w)
    compact = {"size": [h, w], "counts": rle["counts"]}
    box = [float(v) for v in mask_utils.toBbox(compact)]
    counts = rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]
    as_rle = {"size": [h, w], "counts": counts}
    if inst.class_index == IGNORE:
        return [{"id": next_id + k, "image_id": entry["id"], "category_id": c["id"], "segmentation": as_rle,
                 "area": rle["area"], "bbox": box, "iscrowd": 1} for k, c in enumerate(categories)]
    kind, value = inst.segmentation
    segmentation = [p.tolist() for p in value] if kind == "poly" else as_rle
    return [{"id": next_id, "image_id": entry["id"], "category_id": categories[inst.class_index]["id"],
             "segmentation": segmentation, "area": rle["area"], "bbox": box, "iscrowd": 0}]
