"""Published SOLO-family COCO checkpoints by name: the table (:mod:`solo_tf.zoo.registry`),
the verified, cached download (:mod:`solo_tf.zoo.download`) and the conversion to a cached
``.keras`` model (:mod:`solo_tf.zoo.convert`).

    from solo_tf.zoo import resolve_model
    from solo_tf.inference import Predictor

    predictor = Predictor("solov2_r50_3x")  # downloads and converts once (resolve_model)
"""

from solo_tf.zoo.convert import (
    REFERENCE_POSTPROCESS,
    convert,
    model_path,
    resolve_checkpoint,
    resolve_model,
    zoo_config,
)
from solo_tf.zoo.download import (
    ZooDownloadError,
    ZooHashError,
    checkpoint_path,
    fetch,
    home,
    sha256_of,
)
from solo_tf.zoo.registry import ENTRIES, ZooEntry, entries, entries_for, get, register

__all__ = [
    "ENTRIES", "REFERENCE_POSTPROCESS", "ZooDownloadError", "ZooEntry", "ZooHashError", "checkpoint_path", "convert",
    "entries", "entries_for", "fetch", "get", "home", "model_path", "register", "resolve_checkpoint",
    "resolve_model", "sha256_of", "zoo_config",
]
