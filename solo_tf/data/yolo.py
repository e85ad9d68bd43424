"""Ultralytics YOLO-seg datasets as a data source (``data.source: yolo``, :class:`YoloSourceConfig`).

The dataset YAML (``data.yaml``) names the classes and the splits::

    path: ../datasets/shapes     # dataset root: relative to the YAML's folder (else to the
                                 # working directory); default the YAML's folder
    train: images/train          # a folder of images (searched recursively), a .txt list of
    val: images/val              # image paths, or a list of those; relative to path
    names: [circle, square]      # or {0: circle, 1: square}

Each image ``.../images/.../x.jpg`` has its labels in ``.../labels/.../x.txt`` (the last
``images`` folder of the path replaced by ``labels``, as Ultralytics does; beside the image
when the path has none), one object per line: ``class x1 y1 x2 y2 ...``, a polygon in
coordinates normalised to [0, 1]. An image without a label file has no objects. Lines of a
``.txt`` list starting with ``./`` are relative to the list's folder, others to ``path``.
An object of several parts is one polygon joined by zero-width bridges (as Ultralytics'
COCO converter writes them): it rasterises to the union of its parts.

Class ``k`` is ``names[k]``; its category id is ``k + 1``, as ``solo-tf convert`` writes it.
Bad input raises :class:`~solo_tf.data.errors.DataError` naming the label file and line
(``labels/train/a.txt: line 3 (class 1): polygon with 2 points (< 3)``) or with
``skip_bad`` is counted (the rules of :mod:`solo_tf.data.annotated`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from solo_tf.data.annotated import (
    IMAGE_SUFFIXES,
    AnnotatedImage,
    AnnotatedImages,
    Scan,
    SkipImage,
    image_size,
    point_eval_at,
)
from solo_tf.data.errors import BadRecordLog, DataError, Progress
from solo_tf.data.registry import Split, register_source

NAME = "yolo"


@dataclass
class YoloSourceConfig:
    """``data.source: yolo``: an Ultralytics dataset YAML and which of its splits to use."""

    dataset: str | None = None  # the dataset YAML (names, path, train, val)
    train_split: str = "train"
    val_split: str = "val"  # or "test"


class YoloDataset:
    """A parsed, checked dataset YAML: ``root``, ``class_names`` and each split's image list."""

    def __init__(self, yaml_path):
        self.yaml_path = Path(yaml_path)
        try:
            data = yaml.safe_load(self.yaml_path.read_text())
        except FileNotFoundError:
            raise DataError(f"{self.yaml_path}: dataset YAML not found") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise DataError(f"{self.yaml_path}: not a readable YAML file: {e}") from None
        if not isinstance(data, dict) or "names" not in data:
            raise DataError(f"{self.yaml_path}: not an Ultralytics dataset YAML (no 'names')")
        self.data = data
        self.class_names = self._names(data["names"])
        nc = data.get("nc")
        if nc is not None and nc != len(self.class_names):
            raise DataError(f"{self.yaml_path}: nc is {nc} but 'names' has {len(self.class_names)} classes")
        self.root = self._root(data.get("path"))

    def _names(self, names):
        if isinstance(names, dict):
            keys = sorted(names, key=lambda k: (not isinstance(k, int), k))
            if keys != list(range(len(names))):
                raise DataError(f"{self.yaml_path}: 'names' keys must be 0..{len(names) - 1}, got {keys}")
            names = [names[k] for k in keys]
        if not isinstance(names, list) or not names or not all(isinstance(n, (str, int)) for n in names):
            raise DataError(f"{self.yaml_path}: 'names' must be a non-empty list or {{index: name}}, got "
                            f"{str(names)[:60]}")
        return tuple(str(n) for n in names)

    def _root(self, path):
        if path is None:
            return self.yaml_path.parent
        p = Path(str(path))
        if p.is_absolute():
            return p
        for base in (self.yaml_path.parent, Path.cwd()):
            if (base / p).is_dir():
                return base / p
        raise DataError(f"{self.yaml_path}: dataset path {path!r} is not a folder beside the YAML nor in "
                        f"{Path.cwd()}")

    def images(self, split: str) -> list[Path] | None:
        """The split's image files in order, or None when the YAML has no such split."""
        spec = self.data.get(split)
        if spec is None:
            return None
        files = []
        for entry in spec if isinstance(spec, list) else [spec]:
            p = Path(str(entry))
            p = p if p.is_absolute() else self.root / p
            if p.is_dir():
                files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
            elif p.suffix == ".txt" and p.is_file():
                for line in p.read_text().splitlines():
                    line = line.strip()
                    if line:
                        f = p.parent / line[2:] if line.startswith("./") else Path(line)
                        files.append(f if f.is_absolute() else self.root / f)
            else:
                raise DataError(f"{self.yaml_path}: {split} entry {entry!r}: {p} is not a folder or a .txt list")
        if not files:
            raise DataError(f"{self.yaml_path}: split {split!r} has no images")
        return files


def label_path(image: Path) -> Path:
    """``.../images/.../x.jpg`` -> ``.../labels/.../x.txt`` (Ultralytics' img2label_paths)."""
    s = str(image)
    a, b = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    return Path(b.join(s.rsplit(a, 1))).with_suffix(".txt")


class YoloSplit(AnnotatedImages):
    """One split's images and label files, scanned and validated (see the module docstring)."""

    def __init__(self, images: list[Path], class_names, name: str, skip_bad: bool = False, progress: bool = True):
        bad = BadRecordLog(name)
        scan = Scan(bad, skip_bad)
        stats = {"objects": 0, "negatives": 0, "images_skipped": 0}
        entries = []
        with Progress(len(images), f"scanning {name}", enabled=progress) as bar:
            for path in images:
                try:
                    entries.append(self._scan(path, len(class_names), scan, stats))
                except SkipImage:
                    stats["images_skipped"] += 1
                bar.update()
        if bad.total and progress:
            print(bad.summary(), file=sys.stderr)
        super().__init__(entries, class_names, bad, stats)

    @staticmethod
    def _scan(path: Path, num_classes: int, scan: Scan, stats: dict) -> AnnotatedImage:
        labels = label_path(path)
        h, w = image_size(path, str(labels), scan)
        instances = []
        lines = labels.read_text().splitlines() if labels.is_file() else []
        for n, line in enumerate(lines, 1):
            values = line.split()
            if not values:
                continue
            where = f"{labels}: line {n}"
            try:
                cls = float(values[0])
                coords = [float(v) for v in values[1:]]
            except ValueError:
                scan.bad_image("malformed label line", f"{where}: not numbers: {line[:60]!r}")
            if not (cls.is_integer() and 0 <= cls < num_classes):
                scan.bad_image("class id not in names", f"{where}: class {values[0]} is not one of the "
                                                        f"{num_classes} classes in names")
            where += f" (class {int(cls)})"
            inst = scan.instance(int(cls), [scan.polygon(coords, h, w, where, normalized=True)], h, w, where)
            if inst is not None:
                instances.append(inst)
        stats["objects"] += len(instances)
        stats["negatives"] += not instances
        return AnnotatedImage(path, path.name, h, w, instances, str(labels))


def open_splits(data_config, splits, labels=None, progress: bool = True) -> dict:
    """``train`` / ``val`` as ``data.yolo.train_split`` / ``val_split`` of the dataset YAML
    (val is None when the YAML has no such split)."""
    section = data_config.yolo
    if section.dataset is None:
        raise DataError("data.source is 'yolo' but data.yolo.dataset (the dataset YAML) is not set")
    dataset = YoloDataset(section.dataset)
    out = {}
    for split in splits:
        if split not in ("train", "val"):
            raise DataError(f"yolo: split must be one of train, val; got {split!r}")
        key = section.train_split if split == "train" else section.val_split
        images = dataset.images(key)
        if images is None:
            if split == "train":
                raise DataError(f"{dataset.yaml_path}: no {key!r} split")
            out[split] = None
            continue
        reader = YoloSplit(images, dataset.class_names, f"{dataset.yaml_path} ({key})", data_config.skip_bad, progress)
        out[split] = Split(reader, dataset.class_names, tuple(range(1, len(dataset.class_names) + 1)), reader.bad,
                           shuffle=split == "train", origin=str(dataset.yaml_path))
    return out


def eval_data(section: YoloSourceConfig, path: Path, images=None) -> bool:
    """``evaluate --data data.yaml``: a dataset YAML with ``names`` (its ``val`` split)."""
    if path.suffix.lower() not in (".yaml", ".yml") or not path.is_file():
        return False
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    if not isinstance(data, dict) or "names" not in data:
        return False
    return point_eval_at(section, "dataset", path, images, "a YOLO dataset YAML")


register_source(NAME, section=YoloSourceConfig, open=open_splits, requires=("pycocotools", "PIL"),
                eval_data=eval_data)
