"""Exact resume after a real kill: SIGKILL mid-training, restart, and the end state is the
uninterrupted run's, bit for bit.

A child process trains a small `LSHClassifier` (an LSHDense hidden layer in its body, an
LSHDense head over 80 labels, `SparseAdam`) for STEPS steps, deterministically (fixed seeds
and data order, one thread, TF_DETERMINISTIC_OPS=1), saving a `tf.train.Checkpoint` of model
and optimizer after every step, and `LSHRebuildCallback(period=PERIOD)` rebuilding the hash
tables of both layers. The test:

1. starts an uninterrupted run and a second run side by side;
2. SIGKILLs the second one as soon as it reports step KILL_AFTER checkpointed (it is then
   already in a later step, possibly writing the next checkpoint);
3. restarts it: it restores the latest checkpoint (built model, built optimizer) and trains
   the remaining batches;
4. compares weights, hash tables, layer state and optimizer slots of both runs bit for bit,
   and checks that rebuilds happened before the kill and after the restart, at the steps of
   the uninterrupted run.
"""

import importlib.util
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

if importlib.util.find_spec("keras_layers") is None:  # Not installed: use this source tree.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

STEPS, PERIOD, KILL_AFTER = 14, 3, 4
TIMEOUT = 120  # seconds for any one child to reach its next milestone

_CHILD = r"""
import os, sys
import numpy as np
import tensorflow as tf

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
tf.config.experimental.enable_op_determinism()
import keras
from keras_layers import LSHClassifier, LSHDense, LSHRebuildCallback, SparseAdam

workdir, steps, period = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
batch, dim, labels = 16, 20, 80

rng = np.random.default_rng(7)
prototypes = rng.standard_normal((labels, dim)).astype(np.float32)
y = rng.integers(0, labels, (steps * batch, 2)).astype(np.int32)
y[rng.random(len(y)) < 0.5, 1] = -1
x = (prototypes[y[:, 0]] + 0.3 * rng.standard_normal((len(y), dim))).astype(np.float32)

keras.utils.set_random_seed(0)
body = keras.Sequential(
    [keras.Input((dim,)), LSHDense(48, activation="relu", active=12, num_tables=4, seed=3)]
)
model = LSHClassifier(body, LSHDense(labels, active=16, num_tables=4, seed=5))
optimizer = SparseAdam(0.02)
model.compile(optimizer)

checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
manager = tf.train.CheckpointManager(checkpoint, os.path.join(workdir, "ckpt"), max_to_keep=3)
start = 0
if manager.latest_checkpoint:
    model.build((None, dim))
    optimizer.build(model.trainable_variables)
    checkpoint.restore(manager.latest_checkpoint).assert_consumed()
    start = int(optimizer.iterations.numpy())
print(f"START {start}", flush=True)


class SaveEveryStep(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        step = int(optimizer.iterations.numpy())
        manager.save(checkpoint_number=step)
        print(f"SAVED {step}", flush=True)


rebuilds = LSHRebuildCallback(period=period, verbose=1)
model.fit(
    x[start * batch :],
    y[start * batch :],
    batch_size=batch,
    epochs=1,
    shuffle=False,
    verbose=0,
    callbacks=[rebuilds, SaveEveryStep()],
)
state = {"model/" + v.path: v.numpy() for v in model.weights}
state.update({"optimizer/" + v.path: v.numpy() for v in optimizer.variables})
np.savez(os.path.join(workdir, "final.npz"), **state)
print("DONE", flush=True)
"""


class Child:
    """A training child; its stdout lines arrive in a queue, read by a thread."""

    def __init__(self, workdir):
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
            TF_DETERMINISTIC_OPS="1",
            PYTHONHASHSEED="0",
            CUDA_VISIBLE_DEVICES="",
        )
        self.lines = []
        self._queue = queue.Queue()
        self.process = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(workdir), str(STEPS), str(PERIOD)],
            env=env,
            # `python -c` puts the working directory first on sys.path: keep the checkout off it.
            cwd=tempfile.gettempdir(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._stderr = []
        threading.Thread(
            target=self._pump, args=(self.process.stdout, self._queue), daemon=True
        ).start()
        threading.Thread(target=self._pump, args=(self.process.stderr, None), daemon=True).start()

    def _pump(self, stream, sink):
        for line in stream:
            (sink.put if sink is not None else self._stderr.append)(line.rstrip("\n"))
        if sink is not None:
            sink.put(None)

    def wait_for(self, pattern):
        """Reads lines until one matches `pattern`; returns the match."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                line = self._queue.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"no {pattern!r} within {TIMEOUT} s: {self.log()}") from None
            if line is None:
                self.process.wait(timeout=TIMEOUT)
                raise AssertionError(
                    f"child exited ({self.process.returncode}) before {pattern!r}: {self.log()}"
                )
            self.lines.append(line)
            match = re.fullmatch(pattern, line)
            if match:
                return match

    def log(self):
        return "\n".join(["stdout:", *self.lines, "stderr (tail):", *self._stderr[-30:]])

    def kill(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=TIMEOUT)

    def rebuild_steps(self):
        return [
            int(m.group(1))
            for m in (re.match(r"LSHRebuildCallback: step (\d+):", line) for line in self.lines)
            if m
        ]


def test_sigkill_and_resume_equals_uninterrupted_training(tmp_path):
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    straight_dir.mkdir()
    killed_dir.mkdir()
    children = []
    try:
        straight = Child(straight_dir)
        killed = Child(killed_dir)
        children += [straight, killed]
        assert killed.wait_for(r"START (\d+)").group(1) == "0"
        killed.wait_for(rf"SAVED {KILL_AFTER}")
        killed.kill()  # mid-way through a later step, maybe while it writes a checkpoint
        assert killed.process.returncode == -signal.SIGKILL, killed.log()
        before_kill = killed.rebuild_steps()

        resumed = Child(killed_dir)
        children.append(resumed)
        start = int(resumed.wait_for(r"START (\d+)").group(1))
        resumed.wait_for("DONE")
        straight.wait_for("DONE")
        for child in (straight, resumed):
            assert child.process.wait(timeout=TIMEOUT) == 0, child.log()
    finally:
        for child in children:
            child.kill()

    # The restart resumed from a checkpoint at or after the reported one, before the end.
    assert KILL_AFTER <= start < STEPS, start
    rebuilds = straight.rebuild_steps()
    assert rebuilds == list(range(PERIOD, STEPS + 1, PERIOD)), rebuilds
    assert before_kill and before_kill[0] == PERIOD, before_kill  # rebuilt before the kill
    after = resumed.rebuild_steps()
    assert after == [s for s in rebuilds if s > start] and after, (start, after)

    want = np.load(straight_dir / "final.npz")
    got = np.load(killed_dir / "final.npz")
    assert sorted(got.files) == sorted(want.files)
    names = " ".join(want.files)
    for part in (
        "table_ids",
        "table_counts",
        "neuron_codes",
        "neuron_fingerprints",
        "kernel",
        "momentum",
        "iteration",
    ):
        assert part in names, part  # tables, weights and optimizer slots are all compared
    for name in want.files:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        assert np.array_equal(got[name], want[name]), name
    iterations = [name for name in want.files if name.endswith("iteration")]
    assert all(int(want[name]) == STEPS for name in iterations), iterations


if __name__ == "__main__":
    import pytest

    sys.exit(pytest.main([__file__, "-q"]))
