"""Input pipelines (TensorFlow ``tf.data``): the embedded shapes generator, COCO, CIS680.

:mod:`solo_tf.data.sources` opens a source's splits as unbatched records (``image``
(h, w, 3) uint8, ``masks`` (n, h, w) uint8, ``classes`` (n,) int32, ``image_id`` int64)
from the format readers (``shapes``, ``coco``, ``cis680``); :mod:`solo_tf.data.pipeline`
turns them into model batches. Nothing heavy is imported here: ``import solo_tf.data`` does not load
TensorFlow; import the submodule you need.
"""
