"""The demo's held-out mask AP against training steps, from one `solo-tf demo` run.

Runs the demo exactly as `solo-tf demo` does (same config, seeds and step count) with a
callback that scores mask AP on the held-out images every ``--every`` steps (the schedule is
the demo's, shaped to its full length, so an early row is that run's state at that step,
not a shorter run's result). Prints one row per evaluation, then the demo's own summary.

    python benchmarks/demo_ap_curve.py                  # 2000 steps, a row every 250
    python benchmarks/demo_ap_curve.py --steps 3000 --every 500
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402


class APCurve(keras.callbacks.Callback):
    """Mask AP on the demo's held-out images every ``every`` training steps."""

    def __init__(self, every, config):
        super().__init__()
        self.every, self.config, self.rows = int(every), config, []
        self.start = time.monotonic()
        self.eval_seconds = 0.0

    def on_train_batch_end(self, batch, logs=None):
        from solo_tf.tasks import evaluate

        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        if step % self.every:
            return
        t = time.monotonic()
        m = evaluate(self.model, self.config)
        self.eval_seconds += time.monotonic() - t
        row = {"step": step, "AP": round(m["AP"], 4), "AP50": round(m["AP50"], 4),
               "train_s": round(time.monotonic() - self.start - self.eval_seconds, 1)}
        self.rows.append(row)
        print(f"{row['step']:>6} {row['AP']:>7.3f} {row['AP50']:>7.3f} {row['train_s']:>9.1f}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=None, help="default: the demo's (solo_tf.tasks.DEMO_STEPS)")
    p.add_argument("--every", type=int, default=250)
    p.add_argument("--out", help="keep the demo folder here (default: a temporary one)")
    args = p.parse_args()

    from solo_tf.config import load_config
    from solo_tf.tasks import DEMO_CONFIG, DEMO_STEPS, demo

    steps = args.steps or DEMO_STEPS
    curve = APCurve(args.every, load_config(DEMO_CONFIG))
    print(f"{DEMO_CONFIG}: {steps} steps, mask AP on the held-out images every {args.every}; cpus={os.cpu_count()}")
    print(f"{'step':>6} {'AP':>7} {'AP50':>7} {'train s':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        summary = demo(args.out or Path(tmp) / "demo", steps=steps, verbose=0, log=lambda _: None, callbacks=[curve])
    summary.pop("pictures", None)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
