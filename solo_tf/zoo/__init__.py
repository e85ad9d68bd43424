"""Published SOLO-family COCO checkpoints by name (:mod:`solo_tf.zoo.registry`)."""

from solo_tf.zoo.registry import ENTRIES, ZooEntry, entries, entries_for, get, register

__all__ = ["ENTRIES", "ZooEntry", "entries", "entries_for", "get", "register"]
