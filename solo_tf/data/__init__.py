"""Input pipelines: data sources (one module each) and the ``tf.data`` pipeline.

A data source is one module holding its config section (``data.<name>``), its numpy reader
and its registration (:func:`solo_tf.data.registry.register_source`):
:mod:`~solo_tf.data.shapes` (embedded generator), :mod:`~solo_tf.data.coco`,
:mod:`~solo_tf.data.cis680`, :mod:`~solo_tf.data.labelme`, :mod:`~solo_tf.data.yolo` and
:mod:`~solo_tf.data.masks` (the last three share :mod:`~solo_tf.data.annotated`).
:mod:`~solo_tf.data.catalog` lists them all; :mod:`~solo_tf.data.sources` turns any reader
into unbatched records (``image`` (h, w, 3) uint8, ``masks`` (n, h, w) uint8, ``classes``
(n,) int32, ``image_id`` int64); :mod:`~solo_tf.data.pipeline` turns records into model
batches; :mod:`~solo_tf.data.convert` writes COCO. Nothing heavy is imported here:
``import solo_tf.data`` does not load TensorFlow, and neither do the registry, the catalog
nor the source modules; import the submodule you need.
"""
