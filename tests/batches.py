"""Small ground-truth batches and images shared by the model, loss and variant tests."""

import numpy as np


def one_object_batch(batch=2, size=64, slots=4):
    """Image 0 holds one 32x24 rectangle of class 1; image 1 is empty.

    sqrt(32 * 24) = 27.7: positive on levels 0 (1..32) and 1 (16..64) of the tiny config.
    """
    masks = np.zeros((batch, slots, size // 4, size // 4), np.uint8)
    masks[0, 0, 4:10, 4:12] = 1  # rows 16..40, cols 16..48 at full resolution
    classes = np.full((batch, slots), -1, np.int32)
    classes[0, 0] = 1
    boxes = np.zeros((batch, slots, 4), np.float32)
    boxes[0, 0] = [16, 16, 48, 40]
    centers = np.zeros((batch, slots, 2), np.float32)
    centers[0, 0] = [31.5, 27.5]
    return dict(classes=classes, boxes=boxes, masks=masks, centers=centers)


def empty_batch(batch=2, size=64, slots=4):
    return dict(
        classes=np.full((batch, slots), -1, np.int32),
        boxes=np.zeros((batch, slots, 4), np.float32),
        masks=np.zeros((batch, slots, size // 4, size // 4), np.uint8),
        centers=np.zeros((batch, slots, 2), np.float32),
    )


def rectangles_batch(rects, size=(64, 64), slots=None):
    """One image per entry of ``rects``: a list of (class, x1, y1, x2, y2) in input pixels,
    multiples of 4; masks at stride 4, centres the rectangles' centres of mass."""
    h, w = size
    slots = slots or max(1, max(len(r) for r in rects))
    masks = np.zeros((len(rects), slots, h // 4, w // 4), np.uint8)
    classes = np.full((len(rects), slots), -1, np.int32)
    boxes = np.zeros((len(rects), slots, 4), np.float32)
    centers = np.zeros((len(rects), slots, 2), np.float32)
    for b, objects in enumerate(rects):
        for n, (cls, x1, y1, x2, y2) in enumerate(objects):
            masks[b, n, y1 // 4 : y2 // 4, x1 // 4 : x2 // 4] = 1
            classes[b, n] = cls
            boxes[b, n] = [x1, y1, x2, y2]
            centers[b, n] = [(x1 + x2 - 1) / 2, (y1 + y2 - 1) / 2]
    return dict(classes=classes, boxes=boxes, masks=masks, centers=centers)


def images(batch=2, size=64, seed=0):
    return np.random.RandomState(seed).uniform(0, 255, (batch, size, size, 3)).astype("float32")
