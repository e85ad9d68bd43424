import numpy as np
from keras import ops

from solo_tf.config import TrainConfig
from solo_tf.training import WarmupStepDecay, make_optimizer


def test_warmup_then_step_decay():
    s = WarmupStepDecay(0.01, boundaries=[100, 200], decay_factor=0.1, warmup_iters=10, warmup_ratio=1 / 3)
    lr = lambda step: float(ops.convert_to_numpy(s(step)))  # noqa: E731
    np.testing.assert_allclose(lr(0), 0.01 / 3, rtol=1e-6)
    np.testing.assert_allclose(lr(5), 0.01 * (1 / 3 + 2 / 3 * 0.5), rtol=1e-6)
    np.testing.assert_allclose(lr(10), 0.01, rtol=1e-6)
    np.testing.assert_allclose(lr(99), 0.01, rtol=1e-6)
    np.testing.assert_allclose(lr(100), 0.001, rtol=1e-6)
    np.testing.assert_allclose(lr(250), 0.0001, rtol=1e-5)


def test_schedule_serializes():
    s = WarmupStepDecay(0.02, boundaries=[3], warmup_iters=0)
    t = WarmupStepDecay.from_config(s.get_config())
    assert t.get_config() == s.get_config()


def test_reference_optimizer_settings():
    train = TrainConfig(batch_size=8, epochs=36)
    opt = make_optimizer(train, steps_per_epoch=10)
    assert abs(train.lr - 0.005) < 1e-12  # 0.01 per 16 images, linear scaling
    assert opt.momentum == 0.9
    assert abs(opt.weight_decay - 1e-4) < 1e-12
    assert opt.global_clipnorm == 35.0
    sched = opt._learning_rate
    assert sched.boundaries == [270, 330]


def test_budget_schedule_decays_at_the_reference_fractions():
    from solo_tf.training import BudgetSchedule

    s = BudgetSchedule(0.01, budget_s=360, warmup_iters=10, warmup_ratio=1 / 3)
    np.testing.assert_allclose(s.lr_at(0, 0), 0.01 / 3)
    np.testing.assert_allclose(s.lr_at(10, 100), 0.01)
    np.testing.assert_allclose(s.lr_at(50, 269), 0.01)
    np.testing.assert_allclose(s.lr_at(50, 270), 0.001)  # 27/36 of the budget
    np.testing.assert_allclose(s.lr_at(50, 330), 0.0001)  # 33/36
