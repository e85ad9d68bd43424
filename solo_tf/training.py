"""The reference training recipe as Keras objects: warm-up + step-decay schedule, SGD.

SGD with momentum 0.9, weight decay 1e-4, gradient clip-norm 35, lr 0.01 per 16 images,
linear warm-up over 500 iterations from 1/3 of the lr, x0.1 at epochs 27 and 33 of 36.

Keras applies ``weight_decay`` decoupled from the gradient (``w -= lr * wd * w`` each
step); with SGD this equals PyTorch's L2 penalty up to how momentum sees it.
"""

from __future__ import annotations

import keras
from keras import ops

from solo_tf.config import TrainConfig


@keras.saving.register_keras_serializable(package="solo_tf")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """lr(step) = base_lr * warm-up factor * decay_factor ** (number of boundaries passed).

    Warm-up: linear from ``warmup_ratio`` to 1 over ``warmup_iters`` steps (mmcv "linear").
    ``boundaries`` are in steps (epoch boundaries times steps per epoch).
    """

    def __init__(self, base_lr, boundaries=(), decay_factor=0.1, warmup_iters=500, warmup_ratio=1.0 / 3.0):
        self.base_lr = float(base_lr)
        self.boundaries = [int(b) for b in boundaries]
        self.decay_factor = float(decay_factor)
        self.warmup_iters = int(warmup_iters)
        self.warmup_ratio = float(warmup_ratio)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        passed = 0.0
        for b in self.boundaries:
            passed = passed + ops.cast(step >= float(b), "float32")
        lr = self.base_lr * ops.power(self.decay_factor, passed)
        if self.warmup_iters > 0:
            frac = ops.minimum(step / float(self.warmup_iters), 1.0)
            lr = lr * (self.warmup_ratio + (1.0 - self.warmup_ratio) * frac)
        return lr

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "boundaries": self.boundaries,
            "decay_factor": self.decay_factor,
            "warmup_iters": self.warmup_iters,
            "warmup_ratio": self.warmup_ratio,
        }


def make_optimizer(train: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """SGD with the reference schedule; ``steps_per_epoch`` turns epoch boundaries into steps."""
    schedule = WarmupStepDecay(
        train.lr,
        boundaries=[e * steps_per_epoch for e in train.decay_epochs if e < train.epochs],
        decay_factor=train.decay_factor,
        warmup_iters=train.warmup_iters,
        warmup_ratio=train.warmup_ratio,
    )
    return keras.optimizers.SGD(
        learning_rate=schedule,
        momentum=train.momentum,
        weight_decay=train.weight_decay or None,
        global_clipnorm=train.clipnorm,
    )


def set_precision(train: TrainConfig) -> None:
    """Mixed precision (float16 compute, float32 variables and losses) when asked for."""
    keras.config.set_dtype_policy("mixed_float16" if train.mixed_precision else "float32")
