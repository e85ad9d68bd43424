"""Convert the CIS680 h5/npy files to COCO instances JSON + PNG images (``solo-tf convert``).

Output (every file written to a temporary name, then renamed into place)::

    out_dir/images/000001.png ...     one RGB PNG per image, named by image id
    out_dir/annotations.json          all images, COCO instances, compressed-RLE masks
    out_dir/train.json, val.json      the same seeded split cis680_source uses

Category ids are the file's label values (1 vehicle, 2 person, 3 animal); image ids are
the h5 index + 1, as :class:`~solo_tf.data.cis680.Cis680Dataset` gives them, so results on
the converted data line up with the original. ``bbox`` and ``area`` come from the masks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from solo_tf.data.cis680 import CLASS_NAMES, Cis680Dataset
from solo_tf.data.errors import Progress
from solo_tf.io import atomic_path, write_json


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
