"""Input pipelines (TensorFlow ``tf.data``): the embedded shapes generator, COCO, CIS680.

Sources yield unbatched records (``image`` (h, w, 3) uint8, ``masks`` (n, h, w) uint8,
``classes`` (n,) int32, ``image_id`` int64); :mod:`solo_tf.data.pipeline` turns them into
model batches. Nothing heavy is imported here: ``import solo_tf.data`` does not load
TensorFlow; import the submodule you need.
"""
