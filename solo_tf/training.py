"""The reference training recipe as Keras objects: warm-up + step-decay schedule, SGD.

SGD with momentum 0.9, weight decay 1e-4, gradient clip-norm 35, lr 0.01 per 16 images,
linear warm-up over 500 iterations from 1/3 of the lr, x0.1 at epochs 27 and 33 of 36.

Weight decay for SGD is PyTorch's (:class:`TorchSGD`): the L2 term ``wd * w`` is added to
the gradient before momentum, as the reference's ``torch.optim.SGD`` does. Keras' own
``weight_decay`` is decoupled (``w -= lr * wd * w``, outside momentum): at momentum 0.9
that decays ~10x less than the reference. AdamW keeps Keras' decoupled decay, as AdamW is
defined.
"""

from __future__ import annotations

import dataclasses
import math

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


@keras.saving.register_keras_serializable(package="solo_tf")
class TorchSGD(keras.optimizers.SGD):
    """SGD with momentum and weight decay exactly as ``torch.optim.SGD`` (dampening 0).

    Per variable w with (clipped) gradient g, learning rate lr at this step:

        d   = g + weight_decay * w          # coupled L2: decay goes through momentum
        buf = momentum * buf + d            # buf starts at 0, so buf = d on the first step
        w  -= lr * (d + momentum * buf)     if nesterov
        w  -= lr * buf                      otherwise

    Two differences from ``keras.optimizers.SGD``: the decay is coupled (Keras subtracts
    ``lr * wd * w`` outside momentum, ~1/(1 - momentum) times weaker in steady state), and
    the momentum buffer holds gradients, not lr-scaled steps, so a learning-rate change
    (warm-up, step decay) applies at once to the whole update, as in PyTorch. With
    ``weight_decay`` None/0 and a constant lr the two optimizers take the same steps.

    Clipping (``global_clipnorm``, ...) acts on g before the decay is added, like
    ``clip_grad_norm_`` before ``optimizer.step()`` in the reference. Variables excluded
    with ``exclude_from_weight_decay`` get no decay. Arguments as ``keras.optimizers.SGD``.
    """

    def _apply_weight_decay(self, variables):
        # The base class would apply decoupled decay here, before update_step; the coupled
        # decay is part of update_step instead.
        return

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        d = ops.cast(gradient, variable.dtype)
        if self.weight_decay and self._use_weight_decay(variable):
            d = ops.add(d, ops.multiply(ops.cast(self.weight_decay, variable.dtype), variable))
        if self.momentum == 0:
            self.assign_sub(variable, ops.multiply(lr, d))
            return
        momentum = ops.cast(self.momentum, variable.dtype)
        buf = self.momentums[self._get_variable_index(variable)]
        self.assign(buf, ops.add(ops.multiply(momentum, buf), d))
        step = ops.add(d, ops.multiply(momentum, buf)) if self.nesterov else buf
        self.assign_sub(variable, ops.multiply(lr, step))


def make_optimizer(train: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The configured optimizer (SGD by default) with the reference schedule;
    ``steps_per_epoch`` turns epoch boundaries into steps."""
    schedule = WarmupStepDecay(
        train.lr,
        boundaries=[e * steps_per_epoch for e in train.decay_epochs if e < train.epochs],
        decay_factor=train.decay_factor,
        warmup_iters=train.warmup_iters,
        warmup_ratio=train.warmup_ratio,
    )
    return _optimizer(train, schedule)


def _optimizer(train: TrainConfig, learning_rate):
    if train.optimizer == "adamw":  # decoupled decay, as AdamW is defined
        return keras.optimizers.AdamW(
            learning_rate=learning_rate, weight_decay=train.weight_decay, global_clipnorm=train.clipnorm
        )
    return TorchSGD(  # coupled L2, as torch.optim.SGD in the reference
        learning_rate=learning_rate,
        momentum=train.momentum,
        weight_decay=train.weight_decay or None,
        global_clipnorm=train.clipnorm,
    )


def precision_policy(train: TrainConfig) -> str:
    """The Keras dtype policy of ``train.mixed_precision``: float32, mixed_float16 (true or
    "float16") or mixed_bfloat16 ("bfloat16"); variables and the loss stay float32."""
    mp = train.mixed_precision
    if mp is False:
        return "float32"
    return "mixed_bfloat16" if mp == "bfloat16" else "mixed_float16"


def set_precision(train: TrainConfig) -> None:
    """Mixed precision (float16 / bfloat16 compute, float32 variables and losses) when asked for."""
    keras.config.set_dtype_policy(precision_policy(train))


class BudgetSchedule(keras.callbacks.Callback):
    """The reference schedule stretched over a wall-clock budget instead of epochs.

    Linear warm-up over ``warmup_iters`` steps from ``warmup_ratio``, then x``decay_factor``
    once each of ``decay_fractions`` of the budget has passed (default 27/36 and 33/36, the
    3x schedule's decay points; the tasks pass the config's, :func:`decay_fractions`). Sets the optimizer's learning rate before each batch, so the optimizer must
    have been built with a plain float learning rate.
    """

    def __init__(self, base_lr, budget_s, warmup_iters=500, warmup_ratio=1.0 / 3.0, decay_factor=0.1,
                 decay_fractions=(27 / 36, 33 / 36), clock=None):
        super().__init__()
        import time

        self.base_lr = float(base_lr)
        self.budget_s = float(budget_s)
        self.warmup_iters = int(warmup_iters)
        self.warmup_ratio = float(warmup_ratio)
        self.decay_factor = float(decay_factor)
        self.decay_fractions = tuple(decay_fractions)
        self.clock = clock or time.monotonic
        self.step = 0
        self.start = None

    def lr_at(self, step, elapsed_s):
        lr = self.base_lr * self.decay_factor ** sum(elapsed_s >= f * self.budget_s for f in self.decay_fractions)
        if self.warmup_iters > 0 and step < self.warmup_iters:
            lr *= self.warmup_ratio + (1.0 - self.warmup_ratio) * step / self.warmup_iters
        return lr

    def on_train_begin(self, logs=None):
        self.start = self.clock()

    def on_train_batch_begin(self, batch, logs=None):
        self.model.optimizer.learning_rate.assign(self.lr_at(self.step, self.clock() - self.start))
        self.step += 1


def make_budget_optimizer(train: TrainConfig) -> keras.optimizers.Optimizer:
    """As :func:`make_optimizer` with a float learning rate for :class:`BudgetSchedule`."""
    return _optimizer(train, train.lr * train.warmup_ratio)


# --- run control: fixed step counts, time budgets, learning-rate log, checkpoints -------------
# (callbacks the tasks layer puts around ``model.fit``; solo_tf.tasks.train wires them)

def decay_fractions(train: TrainConfig) -> tuple:
    """The configured step decays as fractions of the run: ``train.decay_epochs`` over
    ``train.epochs`` (the presets' 27 and 33 of 36, as the reference 3x schedule)."""
    return tuple(e / train.epochs for e in train.decay_epochs if e < train.epochs)


def make_steps_optimizer(train: TrainConfig, total_steps: int, fractions=None) -> keras.optimizers.Optimizer:
    """The configured optimizer with its schedule shaped to ``total_steps``: the step decays
    at the same fractions of the run as ``train.decay_epochs`` of ``train.epochs``
    (:func:`decay_fractions`, or ``fractions``), warm-up ``train.warmup_iters`` capped at a
    quarter of the run."""
    fractions = decay_fractions(train) if fractions is None else tuple(fractions)
    total_steps = int(total_steps)
    if total_steps <= 0:
        raise ValueError(f"total_steps must be > 0, got {total_steps}")
    schedule = WarmupStepDecay(
        train.lr,
        boundaries=[max(1, int(round(f * total_steps))) for f in fractions],
        decay_factor=train.decay_factor,
        warmup_iters=min(int(train.warmup_iters), total_steps // 4),
        warmup_ratio=train.warmup_ratio,
    )
    return _optimizer(train, schedule)


@dataclasses.dataclass
class RunPlan:
    """How long a run is and what its schedule follows (:func:`plan_run`).

    ``steps_per_epoch``: steps of one Keras epoch; ``repeat``: the training stream repeats
    (epochs shorter or longer than one pass over the data); ``total_steps``: the run's exact
    step count when it is shaped to one, else None; ``budget_schedule``: the decays follow
    the clock (a time budget alone, :class:`BudgetSchedule`); ``fractions``: where the
    step decays fall, as fractions of the run (:func:`decay_fractions`).
    """

    steps_per_epoch: int
    repeat: bool
    total_steps: int | None
    budget_schedule: bool
    fractions: tuple


def plan_run(train: TrainConfig, num_train: int, *, epochs=None, steps_per_epoch=None, total_steps=None,
             time_budget_s=None) -> RunPlan:
    """Shape a run: apply the overrides to ``train`` (in place: ``epochs``,
    ``steps_per_epoch``; a run of ``total_steps`` gets the epochs that hold them) and say how
    its schedule goes. The decay fractions are the config's own (``decay_epochs`` of
    ``epochs``), taken before any override, so a run shaped to steps or a time budget
    decays where the configured one would."""
    fractions = decay_fractions(train)
    if epochs is not None:
        train.epochs = int(epochs)
    if steps_per_epoch is not None:
        train.steps_per_epoch = int(steps_per_epoch)
    steps = train.steps_per_epoch or max(1, int(num_train) // train.batch_size)
    if total_steps is not None:
        total_steps = int(total_steps)
        if total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, got {total_steps}")
        steps = min(steps, total_steps)
        train.steps_per_epoch = steps
        train.epochs = math.ceil(total_steps / steps)
    train.validate()
    return RunPlan(steps_per_epoch=steps, repeat=bool(train.steps_per_epoch), total_steps=total_steps,
                   budget_schedule=time_budget_s is not None and total_steps is None, fractions=fractions)


def make_run_optimizer(train: TrainConfig, plan: RunPlan) -> keras.optimizers.Optimizer:
    """The optimizer of a planned run: its schedule shaped to ``plan.total_steps``, driven by
    the clock (:class:`BudgetSchedule`), or the configured epochs."""
    if plan.total_steps is not None:
        return make_steps_optimizer(train, plan.total_steps, plan.fractions)
    if plan.budget_schedule:
        return make_budget_optimizer(train)
    return make_optimizer(train, plan.steps_per_epoch)


def _mmss(seconds):
    return f"{int(seconds) // 60}:{int(seconds) % 60:02d}"


class TimeBudget(keras.callbacks.Callback):
    """Stop training at the end of the epoch in which ``seconds`` have passed; with
    ``report`` print one progress line per epoch (time used, steps, losses) to ``stream``
    (default stderr). ``stopped_early`` tells whether the budget ended the run."""

    def __init__(self, seconds, report=False, stream=None, clock=None):
        super().__init__()
        import time

        self.seconds = float(seconds)
        self.report = report
        self.stream = stream
        self.clock = clock or time.monotonic
        self.start = None
        self.steps = 0
        self.stopped_early = False

    def on_train_begin(self, logs=None):
        self.start = self.clock()

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1

    def on_epoch_end(self, epoch, logs=None):
        import sys

        elapsed = self.clock() - self.start
        if self.report:
            logs = logs or {}
            losses = "  ".join(f"{k} {logs[k]:.3f}" for k in ("loss", "focal_loss", "dice_loss") if k in logs)
            print(f"  [{_mmss(elapsed)} / {_mmss(self.seconds)}] step {self.steps:>5}  {losses}",
                  file=self.stream or sys.stderr, flush=True)
        if elapsed >= self.seconds and not self.model.stop_training:
            self.model.stop_training = True
            self.stopped_early = True


class StepLimit(keras.callbacks.Callback):
    """Stop training after exactly ``total_steps`` optimizer steps (the last epoch may be
    shorter than the others)."""

    def __init__(self, total_steps):
        super().__init__()
        self.total_steps = int(total_steps)
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps >= self.total_steps:
            self.model.stop_training = True


class LearningRateLogger(keras.callbacks.Callback):
    """Adds ``lr`` to each epoch's logs: the learning rate of the epoch's last step, so
    ``history.csv`` (put this callback before the CSVLogger) shows the warm-up and the
    step decays."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        opt = self.model.optimizer
        opt = getattr(opt, "inner_optimizer", opt)  # LossScaleOptimizer (mixed precision)
        schedule = getattr(opt, "_learning_rate", None)
        if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            # ``iterations`` already counts the last step: the schedule at iterations - 1
            # is the rate that step used (``optimizer.learning_rate`` is the next step's).
            step = max(int(ops.convert_to_numpy(opt.iterations)) - 1, 0)
            value = schedule(step)
        else:  # a float rate (BudgetSchedule assigns it before every step)
            value = opt.learning_rate
        logs["lr"] = float(ops.convert_to_numpy(value))


class ProgressReport(keras.callbacks.Callback):
    """One line per epoch to ``stream`` (default stderr): time used, steps done of
    ``total_steps``, losses. For runs whose length is set in steps (Keras would count
    epochs instead)."""

    def __init__(self, total_steps, stream=None, clock=None):
        super().__init__()
        import time

        self.total_steps = int(total_steps)
        self.stream = stream
        self.clock = clock or time.monotonic
        self.start = None
        self.steps = 0

    def on_train_begin(self, logs=None):
        self.start = self.clock()

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1

    def on_epoch_end(self, epoch, logs=None):
        import sys

        logs = logs or {}
        losses = "  ".join(f"{k} {logs[k]:.3f}" for k in ("loss", "focal_loss", "dice_loss") if k in logs)
        print(f"  [{_mmss(self.clock() - self.start)}] step {self.steps:>5} / {self.total_steps}  {losses}",
              file=self.stream or sys.stderr, flush=True)
