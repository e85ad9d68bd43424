"""Procedural "shapes" instance-segmentation dataset: pure numpy, deterministic by seed.

Every image is drawn from its own random stream seeded by ``(seed, index)``, so image ``i``
is the same whatever else is generated, in any order, in any process. Objects are filled
shapes of random class, size (about 8% to 60% of the image side, so they land on several
pyramid levels), rotation and colour, drawn over a textured background (gradient, stripes,
soft blobs and noise; never flat). Later shapes occlude earlier ones: the instance masks are
the visible parts, so they never overlap, and an object left with less than
``min_visible`` of its area (or fewer than ``min_area`` pixels) is removed before painting, so no unlabelled
fragment appears in the image.

As a data source (``data.source: shapes``, settings in ``data.shapes``,
:class:`ShapesSourceConfig`): ``train`` is images ``0 .. num_train-1``, ``val`` images
``VAL_INDEX_OFFSET + i`` for ``i < num_val`` (disjoint from train); ``image_id`` is the index
within the split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from solo_tf.data.errors import DataError
from solo_tf.data.registry import Split, register_source

NAME = "shapes"
CLASS_NAMES = ("circle", "rectangle", "triangle", "ellipse", "star", "ring")
# Validation images are drawn from generator indices far above any training index, so the
# two splits never share an image whatever num_train is.
VAL_INDEX_OFFSET = 1 << 40


class ShapesGenerator:
    """Draws images with instance masks and class labels.

    Args:
        image_size: (H, W) of the generated images.
        max_objects: most shapes drawn per image (before occlusion removal).
        min_objects: fewest shapes drawn per image. Occlusion can remove some, but every
            image keeps at least one object.
        seed: dataset seed; image ``index`` is drawn from ``SeedSequence([seed, index])``.
        min_size, max_size: object size range as a fraction of the shorter image side.
        min_visible: fraction of an object's area that must stay visible for it to be kept.
        min_area: fewest visible pixels for an object to be kept (drops border slivers);
            default a quarter of the smallest object's square, at least 4.

    ``sample(index)`` returns ``dict(image=(H, W, 3) uint8, masks=(n, H, W) uint8 0/1,
    classes=(n,) int32)`` with ``classes`` indexing :data:`CLASS_NAMES`.
    """

    class_names = CLASS_NAMES

    def __init__(
        self,
        image_size=(128, 128),
        max_objects=6,
        min_objects=1,
        seed=0,
        min_size=0.08,
        max_size=0.6,
        min_visible=0.2,
        min_area=None,
    ):
        h, w = (int(v) for v in image_size)
        if h < 8 or w < 8:
            raise ValueError(f"ShapesGenerator: image_size must be at least 8x8, got {image_size}")
        if not 1 <= int(min_objects) <= int(max_objects):
            raise ValueError(
                f"ShapesGenerator: need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}"
            )
        if not 0 < min_size <= max_size:
            raise ValueError(f"ShapesGenerator: need 0 < min_size <= max_size, got {min_size}, {max_size}")
        if int(seed) < 0:
            raise ValueError(f"ShapesGenerator: seed must be >= 0, got {seed}")
        self.image_size = (h, w)
        self.max_objects = int(max_objects)
        self.min_objects = int(min_objects)
        self.seed = int(seed)
        self.min_size = float(min_size)
        self.max_size = float(max_size)
        self.min_visible = float(min_visible)
        if min_area is None:
            min_area = max(4, round(0.25 * (self.min_size * min(h, w)) ** 2))
        self.min_area = int(min_area)
        # Pixel-centre coordinates, shared by every draw.
        self._yy = np.arange(h, dtype=np.float32)[:, None] + 0.5
        self._xx = np.arange(w, dtype=np.float32)[None, :] + 0.5

    @property
    def num_classes(self) -> int:
        return len(CLASS_NAMES)

    def sample(self, index: int) -> dict:
        """Image ``index``: ``image`` (H, W, 3) uint8, ``masks`` (n, H, W) uint8, ``classes`` (n,) int32."""
        index = int(index)
        if index < 0:
            raise ValueError(f"ShapesGenerator.sample: index must be >= 0, got {index}")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, index]))
        h, w = self.image_size
        image = self._background(rng)

        # Redraw in the rare case that nothing survives (a lone border sliver), so every
        # image has at least one object; the redraw comes from the same stream, so it is
        # still deterministic.
        for _ in range(16):
            full, classes = self._layout(rng)
            if len(full):
                break
        owner = np.full((h, w), -1, np.int64)
        for k in range(len(full)):
            owner[full[k]] = k
        masks = owner[None] == np.arange(len(full))[:, None, None]
        for k in range(len(full)):
            self._paint(rng, image, masks[k])
        return dict(
            image=np.clip(image, 0, 255).astype(np.uint8),
            masks=masks.astype(np.uint8),
            classes=classes,
        )

    def _layout(self, rng):
        """Draw min..max shapes; return the survivors' unoccluded masks (n, H, W) and classes."""
        h, w = self.image_size
        n = int(rng.integers(self.min_objects, self.max_objects + 1))
        shapes = [self._random_shape(rng) for _ in range(n)]
        full = np.stack([m for m, _ in shapes])  # (n, H, W) bool, unoccluded
        classes = np.array([c for _, c in shapes], np.int32)
        # Visible part = own mask minus everything drawn later. Dropping an object only
        # un-occludes earlier ones, so one pass leaves every survivor above the threshold.
        area = full.reshape(n, -1).sum(1)
        covered_after = np.zeros((h, w), bool)
        keep = np.zeros(n, bool)
        for k in range(n - 1, -1, -1):
            visible = np.count_nonzero(full[k] & ~covered_after)
            keep[k] = visible >= max(self.min_visible * area[k], self.min_area, 1)
            if keep[k]:
                covered_after |= full[k]
        return full[keep], classes[keep]

    # --- background -------------------------------------------------------------------------
    def _background(self, rng) -> np.ndarray:
        """(H, W, 3) float32: linear gradient + stripes + soft blobs + noise."""
        h, w = self.image_size
        yy, xx = self._yy / h, self._xx / w
        c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
        theta = rng.uniform(0, 2 * np.pi)
        t = np.cos(theta) * xx + np.sin(theta) * yy  # (H, W)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        img = c0 + (c1 - c0) * t[..., None]

        # Stripes: a sinusoid at a random angle and period, tinted per channel.
        phi = rng.uniform(0, np.pi)
        freq = rng.uniform(3, 12)
        stripes = np.sin(2 * np.pi * freq * (np.cos(phi) * xx + np.sin(phi) * yy) + rng.uniform(0, 2 * np.pi))
        img += stripes[..., None] * rng.uniform(8, 30, 3).astype(np.float32)

        # Soft blobs: a few Gaussians of random colour shift.
        for _ in range(int(rng.integers(1, 4))):
            cy, cx = rng.uniform(0, 1, 2)
            s = rng.uniform(0.05, 0.3)
            g = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
            img += g[..., None] * rng.uniform(-50, 50, 3).astype(np.float32)

        img += rng.normal(0, rng.uniform(3, 10), (h, w, 1)).astype(np.float32)
        return img

    # --- objects ----------------------------------------------------------------------------
    def _random_shape(self, rng):
        """One shape: ((H, W) bool mask, class index)."""
        h, w = self.image_size
        side = min(h, w)
        # Log-uniform size so small and large objects are equally common per octave.
        size = side * np.exp(rng.uniform(np.log(self.min_size), np.log(self.max_size)))
        r = size / 2
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        cls = int(rng.integers(len(CLASS_NAMES)))
        angle = rng.uniform(0, 2 * np.pi)
        name = CLASS_NAMES[cls]

        # Work in the shape's bounding window only.
        y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, h)
        x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, w)
        mask = np.zeros((h, w), bool)
        if y1 <= y0 or x1 <= x0:
            return mask, cls
        dy = self._yy[y0:y1] - cy
        dx = self._xx[:, x0:x1] - cx
        ca, sa = np.cos(angle), np.sin(angle)
        u = ca * dx + sa * dy  # rotated frame
        v = -sa * dx + ca * dy

        if name == "circle":
            win = dx * dx + dy * dy <= r * r
        elif name == "ring":
            inner = r * rng.uniform(0.45, 0.7)
            d2 = dx * dx + dy * dy
            win = (d2 <= r * r) & (d2 >= inner * inner)
        elif name == "ellipse":
            b = r * rng.uniform(0.35, 0.7)
            win = (u / r) ** 2 + (v / b) ** 2 <= 1
        elif name == "rectangle":
            b = r * rng.uniform(0.4, 1.0)
            s = r / np.sqrt(1 + (b / r) ** 2)  # inscribe the rectangle in the size circle
            win = (np.abs(u) <= s) & (np.abs(v) <= s * b / r)
        elif name == "triangle":
            a = angle + np.array([0, 2 * np.pi / 3, 4 * np.pi / 3]) + rng.uniform(-0.3, 0.3, 3)
            win = _polygon(dx, dy, r * np.cos(a), r * np.sin(a))
        else:  # star
            k = int(rng.integers(5, 7))
            a = angle + np.arange(2 * k) * np.pi / k
            rad = np.where(np.arange(2 * k) % 2 == 0, r, r * rng.uniform(0.4, 0.55))
            win = _polygon(dx, dy, rad * np.cos(a), rad * np.sin(a))
        mask[y0:y1, x0:x1] = win
        return mask, cls

    def _paint(self, rng, image, mask):
        """Fill ``mask`` with a colour far from the background under it, lightly shaded."""
        if not mask.any():
            return
        under = image[mask].mean(0)
        for _ in range(8):
            colour = rng.uniform(0, 255, 3).astype(np.float32)
            if np.abs(colour - under).sum() > 150:
                break
        else:
            colour = np.where(under > 127, 30.0, 225.0).astype(np.float32)
        ys, xs = np.nonzero(mask)
        # A mild gradient across the object keeps it from being a flat stamp.
        shade = rng.uniform(-0.25, 0.25, 2) * 40
        rel_y = (ys - ys.mean()) / max(float(np.ptp(ys)), 1.0)
        rel_x = (xs - xs.mean()) / max(float(np.ptp(xs)), 1.0)
        image[ys, xs] = colour + (shade[0] * rel_y + shade[1] * rel_x)[:, None]


def _polygon(dx, dy, px, py):
    """Even-odd point-in-polygon test. dx (1, w), dy (h, 1); px, py (V,) vertices -> (h, w) bool."""
    inside = np.zeros(np.broadcast_shapes(dx.shape, dy.shape), bool)
    qx, qy = np.roll(px, 1), np.roll(py, 1)
    for ax, ay, bx, by in zip(px, py, qx, qy):
        if ay == by:
            continue
        crosses = (ay > dy) != (by > dy)  # (h, 1)
        x_at = ax + (dy - ay) * (bx - ax) / (by - ay)  # (h, 1)
        inside ^= crosses & (dx < x_at)
    return inside


# --- the data source ----------------------------------------------------------------------------
@dataclass
class ShapesSourceConfig:
    """``data.source: shapes``: the embedded procedural generator."""

    num_train: int = 2000
    num_val: int = 200
    image_size: tuple[int, int] = (128, 128)
    max_objects: int = 6
    object_size: tuple[float, float] = (0.08, 0.6)  # object size range, fraction of the short side

    def validate(self) -> None:
        if not isinstance(self.num_train, int) or self.num_train <= 0:
            raise ValueError(f"data.shapes.num_train must be a positive integer, got {self.num_train!r}")
        if not isinstance(self.num_val, int) or self.num_val < 0:
            raise ValueError(f"data.shapes.num_val must be an integer >= 0, got {self.num_val!r}")
        if not isinstance(self.max_objects, int) or self.max_objects <= 0:
            raise ValueError(f"data.shapes.max_objects must be a positive integer, got {self.max_objects!r}")
        lo, hi = self.object_size
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"data.shapes.object_size must be (lo, hi) with 0 < lo <= hi <= 1, "
                             f"got {self.object_size}")


class ShapesReader:
    """``count`` generated images from index ``offset`` on, as records (``image_id`` = i)."""

    def __init__(self, generator: ShapesGenerator, count: int, offset: int = 0):
        self.generator, self.count, self.offset = generator, int(count), int(offset)

    def __len__(self) -> int:
        return self.count

    def load(self, i: int) -> dict:
        s = self.generator.sample(int(i) + self.offset)
        return {"image": s["image"], "masks": s["masks"], "classes": s["classes"], "image_id": np.int64(i)}


def open_splits(data_config, splits, labels=None) -> dict:
    """The ``train`` / ``val`` splits of ``data_config.shapes`` (generated on the fly)."""
    shapes = data_config.shapes
    gen = ShapesGenerator(image_size=tuple(shapes.image_size), max_objects=shapes.max_objects,
                          seed=data_config.seed, min_size=shapes.object_size[0], max_size=shapes.object_size[1])
    out = {}
    for split in splits:
        if split not in ("train", "val"):
            raise DataError(f"shapes: split must be one of train, val; got {split!r}")
        count = shapes.num_train if split == "train" else shapes.num_val
        reader = ShapesReader(gen, count, 0 if split == "train" else VAL_INDEX_OFFSET)
        out[split] = Split(reader, CLASS_NAMES, image_size=gen.image_size, origin="the shapes source")
    return out


register_source(NAME, section=ShapesSourceConfig, open=open_splits)
