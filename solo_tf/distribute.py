"""Data-parallel training on existing engines: tf.distribute (TensorFlow) and
keras.distribution (JAX), and the one cross-replica sum the loss needs.

Strategies (``solo-tf train --strategy``, :func:`training_scope`):

* ``mirrored``: :class:`tf.distribute.MirroredStrategy` over this machine's GPUs (or
  its CPU);
* ``multiworker``: :class:`tf.distribute.MultiWorkerMirroredStrategy` over the machines
  named in ``TF_CONFIG`` (each runs the same command with its own ``task.index``);
* on JAX, either name gives :class:`keras.distribution.DataParallel` over every local
  device (multi-process JAX is set up by ``jax.distributed.initialize`` before solo-tf).

The batch is global: ``train.batch_size`` images per step over all replicas (each replica
gets ``batch_size / replicas``), so a config trains the same on one device or eight and the
learning rate (``train.base_lr`` per 16 images) needs no change.

The loss is normalised over the global batch, as on one device: the focal loss is divided
by the positives of ALL replicas (+1) and the Dice loss by all replicas' Dice positives.
Each replica returns its share (its own sums over the global count); tf.distribute sums the
replicas' gradients, which is then the gradient of the one-device loss. Dividing by each
replica's own count instead would weight an image by how few positives its replica's
other images have, and change the result with the number of devices. On JAX the loss is
one program over the global batch, so its counts are global already.

Only :func:`replica_sum` and :func:`num_replicas` are called from graph code; they import
TensorFlow lazily and only on the TensorFlow backend (where it is loaded already), so the
model runs where TensorFlow is absent.
"""

from __future__ import annotations

import contextlib
import json
import os

import keras

STRATEGIES = ("none", "mirrored", "multiworker")


def _replica_context():
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    return tf.distribute.get_replica_context()


def num_replicas() -> int:
    """Replicas training in sync (1 outside a tf.distribute strategy and on JAX)."""
    ctx = _replica_context()
    return 1 if ctx is None else int(ctx.num_replicas_in_sync)


def replica_sum(x):
    """``x`` summed over the replicas of a tf.distribute strategy (``x`` itself elsewhere).
    For counts, not for values that need gradients."""
    ctx = _replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return x
    import tensorflow as tf

    return ctx.all_reduce(tf.distribute.ReduceOp.SUM, x)


def is_multi_worker() -> bool:
    """Whether a tf.distribute multi-worker (collective all-reduce) strategy is running."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    in_mode = getattr(strategy.extended, "_in_multi_worker_mode", None)  # False without TF_CONFIG
    return bool(in_mode()) if callable(in_mode) else True


def tf_config_task():
    """(type, index) of this process in ``TF_CONFIG``, or None when it is not set."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        task = json.loads(raw).get("task", {})
    except ValueError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from None
    return task.get("type", "worker"), int(task.get("index", 0))


def is_chief() -> bool:
    """Whether this process writes the run's files: the only process, or worker 0 (or the
    ``chief``) of a ``TF_CONFIG`` cluster."""
    task = tf_config_task()
    return task is None or task[0] == "chief" or (task[0] == "worker" and task[1] == 0)


def make_strategy(name):
    """The distribution for ``name`` (one of :data:`STRATEGIES`): a tf.distribute strategy
    on TensorFlow, a keras.distribution on JAX (set globally), None for ``none``."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}; got {name!r}")
    if name == "none":
        return None
    if keras.backend.backend() == "jax":
        distribution = keras.distribution.DataParallel(devices=keras.distribution.list_devices())
        keras.distribution.set_distribution(distribution)
        return distribution
    if keras.backend.backend() != "tensorflow":
        raise ValueError(f"--strategy {name} needs the TensorFlow or JAX backend, not {keras.backend.backend()}")
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if tf_config_task() is None:
        raise ValueError("--strategy multiworker needs TF_CONFIG (the cluster and this worker's task); "
                         "see the README, Multi-device training")
    return tf.distribute.MultiWorkerMirroredStrategy()


def replicas_of(strategy) -> int:
    """The number of replicas a strategy from :func:`make_strategy` trains on."""
    if strategy is None:
        return 1
    if hasattr(strategy, "num_replicas_in_sync"):
        return int(strategy.num_replicas_in_sync)
    return len(strategy.device_mesh.devices.flatten())


@contextlib.contextmanager
def training_scope(strategy):
    """Build and compile the model inside this (the strategy's scope on TensorFlow)."""
    if strategy is not None and hasattr(strategy, "scope"):
        with strategy.scope():
            yield
    else:
        yield
