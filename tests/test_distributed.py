"""Distributed training with `tf.distribute` through `model.fit` (keras_layers/distributed.py).

Contracts under test:
  - A real two-process `MultiWorkerMirroredStrategy` cluster on 127.0.0.1 (free ports chosen at
    run time, `TF_CONFIG` per process, every process killed at the end even on failure) trains
    an `LSHClassifier` with an `LSHDense` hidden layer and an `LSHDense` output layer with
    `model.fit`: after every step both workers hold bit-identical weights and hash tables; at
    the end also bit-identical optimizer slots and step counters; they rebuild the tables at
    the same steps and take the same drift decisions; the gradients reach `SparseAdam` as
    `tf.IndexedSlices` after the all-reduce; and the per-batch loss curve equals a
    single-process run on the same global batches within 1e-4 (float summation order: the
    all-reduce sums two half-batch gradients).
  - `MirroredStrategy` over two logical CPUs in one process: the same, replica by replica; and
    the random fill of an active set differs between replicas (its seed has the replica id).
  - A worker killed with SIGKILL in the middle of an epoch, and the cluster restarted with
    `keras_layers.distributed.BackupAndRestore`: training resumes from the chief's backup and
    ends with bit-identical weights, optimizer slots and tables to the uninterrupted run
    (deterministic mode: `enable_op_determinism`, one intra-op thread, no shuffling).
  - Outside `SUPPORTED_KERAS` distributed `fit` refuses with `UnsupportedKerasVersionError`
    (the version is faked); training without a strategy is not affected.

The worker processes run this file: `python tests/test_distributed.py worker OUT [options]`.
Each test takes 10-30 s on two cores (most of it starting TensorFlow in the workers).
"""

import argparse
import hashlib
import os
import pickle
import signal
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

try:
    import tf_lsh_ops  # noqa: E402, F401
except ModuleNotFoundError:  # Not installed: use the source tree this file belongs to.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import tf_lsh_ops  # noqa: E402, F401

import cluster_util  # noqa: E402  (after keras_layers is found: it imports it)

from keras_layers import (  # noqa: E402
    LSHClassifier,
    LSHDense,
    LSHRebuildCallback,
    PrecisionAtK,
    SparseAdam,
    distributed,
    lsh_layers,
)

# ---------------------------------------------------------------------------------------------
# The job: shared by the worker processes and the single-process reference
# ---------------------------------------------------------------------------------------------

INPUT_DIM = 24
HIDDEN = 64
LABELS = 400
GLOBAL_BATCH = 32
STEPS_PER_EPOCH = 6
EPOCHS = 3
REBUILD_PERIOD = 4
HANG_AT_STEP = STEPS_PER_EPOCH + 3  # the middle of the second epoch
DRIFT_THRESHOLD = 0.12


def make_data():
    """Learnable multi-label data: each label has a prototype; an example is the sum of its
    labels' prototypes plus noise. 1 to 3 labels, -1 padded."""
    rng = np.random.default_rng(0)
    prototypes = rng.standard_normal((LABELS, INPUT_DIM)).astype(np.float32)
    total = GLOBAL_BATCH * STEPS_PER_EPOCH + GLOBAL_BATCH
    labels = np.full((total, 3), -1, np.int32)
    x = 0.3 * rng.standard_normal((total, INPUT_DIM)).astype(np.float32)
    for i in range(total):
        count = rng.integers(1, 4)
        labels[i, :count] = rng.choice(LABELS, count, replace=False)
        x[i] += prototypes[labels[i, :count]].sum(axis=0)
    train = GLOBAL_BATCH * STEPS_PER_EPOCH
    return (x[:train], labels[:train]), (x[train:], labels[train:])


def make_dataset(x, y):
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    options = tf.data.Options()
    # Each worker takes its half of every global batch (in order): the global batches are
    # those of the single-process run.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


class RecordingSparseAdam(SparseAdam):
    """Records, while tracing, whether each (all-reduced) gradient arrives sparse."""

    def update_step(self, gradient, variable, learning_rate):
        self.gradient_kinds = getattr(self, "gradient_kinds", {})
        self.gradient_kinds[variable.name] = type(gradient).__name__
        return super().update_step(gradient, variable, learning_rate)


def build_model():
    def lsh(units, active, seed, name):
        return LSHDense(
            units,
            activation="relu" if units == HIDDEN else None,
            active=active,
            active_rule="frequency",  # tables, for the hidden layer too
            num_tables=4,
            # No random fill: the active sets are a function of the weights and the example,
            # so the distributed run computes exactly what the single-process run does.
            fill_random=False,
            seed=seed,
            kernel_initializer=keras.initializers.GlorotUniform(seed=10 + seed),
            name=name,
        )

    # Fixed names: variable paths do not depend on how many models the process made before.
    model = LSHClassifier(
        keras.Sequential([lsh(HIDDEN, 16, 1, "hidden")], name="body"),
        lsh(LABELS, 24, 2, "output"),
        top_k=1,
        name="classifier",
    )
    model.compile(optimizer=RecordingSparseAdam(1e-2), metrics=[PrecisionAtK(1)])
    return model


def _digest(variable):
    replicas = cluster_util.local_results(variable)
    return [hashlib.sha1(r.tobytes()).hexdigest()[:16] for r in replicas]


class StepRecorder(keras.callbacks.Callback):
    """Per step: the logged loss, and digests of every LSHDense's weights and tables on every
    local replica."""

    def __init__(self, hang_at_step=None, marker=None):
        super().__init__()
        self.hang_at_step, self.marker = hang_at_step, marker
        self.losses, self.digests, self.first_step = [], [], None

    def on_train_begin(self, logs=None):
        self.first_step = int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        self.losses.append((step, float(logs["loss"])))
        state = {}
        for layer in lsh_layers(self.model):
            tables = layer.tables
            variables = dict(
                kernel=layer.kernel,
                bias=layer.bias,
                table_ids=tables.ids,
                table_counts=tables.counts,
                neuron_codes=tables.codes,
                step=layer.step,
            )
            for name, variable in variables.items():
                state[f"{layer.name}/{name}"] = _digest(variable)
        self.digests.append((step, state))
        if step == self.hang_at_step:
            with open(self.marker, "w") as f:
                f.write(str(os.getpid()))
            while True:  # wait here to be killed
                time.sleep(1)


class DriftProbe(LSHRebuildCallback):
    """A dry-run drift schedule: measures and agrees, records, never rebuilds."""

    def __init__(self):
        super().__init__(
            period=2, schedule="drift", drift_threshold=DRIFT_THRESHOLD, sample_rows=64
        )
        self.checks = []

    def drift(self):
        local = self._local_drift()
        agreed = self._chief_value(local)
        self.checks.append((int(self.model.optimizer.iterations.numpy()), local, agreed))
        return agreed

    def _rebuild(self, step, full, index=1):
        for layer in self._layers:
            self._take_snapshot(layer)
        self.events.append((step, 0.0))
        return 0.0


def run_job(strategy, backup_dir=None, hang_at_step=None, marker=None):
    """Trains and evaluates under `strategy`; returns what the tests compare."""
    (x, y), (vx, vy) = make_data()
    with strategy.scope():
        model = build_model()
    recorder = StepRecorder(hang_at_step, marker)
    rebuild = LSHRebuildCallback(period=REBUILD_PERIOD)
    probe = DriftProbe()
    callbacks = [rebuild, probe, recorder]
    if backup_dir:  # first: the others see the restored state at train begin
        callbacks.insert(0, distributed.BackupAndRestore(backup_dir, delete_checkpoint=False))
    model.fit(make_dataset(x, y), epochs=EPOCHS, verbose=0, callbacks=callbacks)
    validation = model.evaluate(make_dataset(vx, vy), verbose=0, return_dict=True)
    variables = model.weights + model.optimizer.variables
    return {
        "losses": recorder.losses,
        "digests": recorder.digests,
        "first_step": recorder.first_step,
        "rebuilds": [step for step, _ in rebuild.events],
        "drift_checks": probe.checks,
        "drift_events": [step for step, _ in probe.events],
        "validation": validation,
        "gradient_kinds": dict(model.optimizer.gradient_kinds),
        "variables": {v.path: cluster_util.local_results(v) for v in variables},
        "replicas": strategy.num_replicas_in_sync,
    }


def _random_fills(strategy):
    """The active sets of one example on each replica, mostly random fill (one small table)."""
    with strategy.scope():
        layer = LSHDense(LABELS, active=48, num_tables=1, bucket_capacity=4, seed=5)
        layer.build((None, INPUT_DIM))
    x = tf.constant(make_data()[0][0][:1])
    ids = tf.function(lambda: strategy.run(lambda: layer.active_ids(x)))()
    return [np.sort(v.numpy()[0]) for v in strategy.experimental_local_results(ids)]


def _configure(deterministic=True):
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(2)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


def _write(result, path):
    with open(path + ".tmp", "wb") as f:
        pickle.dump(result, f)
    os.replace(path + ".tmp", path)


def _main(argv):
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["worker", "mirrored"])
    parser.add_argument("out")
    parser.add_argument("--backup")
    parser.add_argument("--hang-at-step", type=int)
    parser.add_argument("--marker")
    args = parser.parse_args(argv)
    if args.role == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
        _configure()
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        mirrored = run_job(strategy)
        single = run_job(tf.distribute.get_strategy())
        _write({"mirrored": mirrored, "single": single, "fills": _random_fills(strategy)}, args.out)
        return
    _configure()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    _write(run_job(strategy, args.backup, args.hang_at_step, args.marker), args.out)


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------

if __name__ != "__main__":
    import pytest

    WORKER = [sys.executable, os.path.abspath(__file__)]

    def _env():
        """The workers import the same tf_lsh_ops and keras_layers as this process (installed,
        or this source tree)."""
        roots = [
            os.path.dirname(os.path.dirname(os.path.abspath(module.__file__)))
            for module in (tf_lsh_ops, distributed)
        ]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([*roots, *sys.path]))
        env["KERAS_BACKEND"] = "tensorflow"
        env.pop("TF_CONFIG", None)
        return env

    def _load(path):
        with open(path, "rb") as f:
            return pickle.load(f)

    def _run_cluster(directory, timeout, extra=lambda index: []):
        os.makedirs(directory, exist_ok=True)
        outs = [os.path.join(directory, f"out{i}.pkl") for i in range(2)]
        with cluster_util.LocalCluster(
            WORKER,
            num_workers=2,
            env=_env(),
            log_dir=directory,
            extra_args=lambda i: ["worker", outs[i], *extra(i)],
        ) as cluster:
            cluster.wait(timeout=timeout)
        return [_load(path) for path in outs]

    @pytest.fixture(scope="module")
    def cluster_run(tmp_path_factory):
        """One uninterrupted two-worker run (with a backup, as the restarted run has)."""
        directory = str(tmp_path_factory.mktemp("cluster"))
        backup = os.path.join(directory, "backup")
        start = time.perf_counter()
        results = _run_cluster(directory, timeout=120, extra=lambda i: ["--backup", backup])
        return results, time.perf_counter() - start

    @pytest.fixture(scope="module")
    def single_run():
        """The same job in this process, without a strategy."""
        return run_job(tf.distribute.get_strategy())

    def _assert_same_variables(a, b, what):
        assert a.keys() == b.keys()
        for path in a:
            for replica, (x, y) in enumerate(zip(a[path], b[path], strict=True)):
                assert np.array_equal(x, y), f"{what}: {path} differs (replica {replica})"

    def _assert_in_sync(results, single, what):
        """`results`: the per-worker (or per-process) job results of one synchronous run."""
        first = results[0]
        for other in results[1:]:
            # Every step: same weights and tables on every replica of every worker.
            assert len(first["digests"]) == len(other["digests"]) == EPOCHS * STEPS_PER_EPOCH
            for (step, state), (other_step, other_state) in zip(
                first["digests"], other["digests"], strict=True
            ):
                assert step == other_step
                assert state == other_state, f"{what}: workers differ after step {step}"
            _assert_same_variables(first["variables"], other["variables"], what)
            assert first["rebuilds"] == other["rebuilds"]
            assert first["drift_checks"] == other["drift_checks"]
            assert first["drift_events"] == other["drift_events"]
            assert first["validation"] == other["validation"]
        for state in (s for _, states in first["digests"] for s in states.values()):
            assert len(set(state)) == 1, f"{what}: local replicas differ"
        for values in first["variables"].values():
            assert all(np.array_equal(values[0], v) for v in values[1:])
        # Rebuilds at the scheduled steps; every drift decision taken from the agreed value.
        steps = EPOCHS * STEPS_PER_EPOCH
        assert first["rebuilds"] == list(range(REBUILD_PERIOD, steps + 1, REBUILD_PERIOD))
        assert [s for s, _, _ in first["drift_checks"]] == list(range(2, steps + 1, 2))
        assert first["drift_events"] == [
            s for s, _, d in first["drift_checks"] if d > DRIFT_THRESHOLD
        ]
        assert 0 < len(first["drift_events"]) < len(first["drift_checks"])  # both decisions
        assert all(local == agreed for _, local, agreed in first["drift_checks"])
        # The gradients reached the optimizer sparse, after the all-reduce.
        assert set(first["gradient_kinds"].values()) == {"IndexedSlices"}
        assert len({n.split(":")[0].split("/replica_")[0] for n in first["gradient_kinds"]}) == 4
        # The same global batches as one process: the same loss curve, up to summation order.
        losses = np.array([loss for _, loss in first["losses"]])
        reference = np.array([loss for _, loss in single["losses"]])
        np.testing.assert_allclose(losses, reference, rtol=0, atol=1e-4)
        assert losses[-1] < losses[0]  # and it learns
        assert first["rebuilds"] == single["rebuilds"]
        for path, values in first["variables"].items():
            reference = single["variables"][path][0]
            if values[0].dtype.kind == "f":
                np.testing.assert_allclose(values[0], reference, rtol=0, atol=1e-4)
            elif not any(s in path for s in ("table", "neuron_codes", "neuron_fingerprints")):
                np.testing.assert_array_equal(values[0], reference, err_msg=path)

    def test_two_worker_cluster_trains_in_sync(cluster_run, single_run):
        (worker0, worker1), seconds = cluster_run
        assert worker0["replicas"] == worker1["replicas"] == 2
        _assert_in_sync([worker0, worker1], single_run, "two-worker cluster")
        assert seconds < 90

    def test_mirrored_strategy_two_devices(tmp_path, single_run):
        out = str(tmp_path / "mirrored.pkl")
        # One process, two logical CPU devices (set before TensorFlow starts, hence the process).
        completed = subprocess.run(
            [*WORKER, "mirrored", out], env=_env(), capture_output=True, text=True, timeout=120
        )
        assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
        result = _load(out)
        mirrored = result["mirrored"]
        assert mirrored["replicas"] == 2
        _assert_in_sync([mirrored], result["single"], "MirroredStrategy")
        # Each replica draws its own random fill (the seed includes the replica id).
        first, second = result["fills"]
        assert not np.array_equal(first, second)
        # The subprocess' own single-device run (deterministic mode) and this process' agree.
        np.testing.assert_allclose(
            [loss for _, loss in result["single"]["losses"]],
            [loss for _, loss in single_run["losses"]],
            rtol=0,
            atol=1e-5,
        )

    def test_killed_worker_resumes_from_backup(cluster_run, tmp_path):
        (reference, _), _ = cluster_run
        backup = str(tmp_path / "backup")
        marker = str(tmp_path / "hanging")
        outs = [str(tmp_path / f"killed{i}.pkl") for i in range(2)]
        extra = {
            0: ["--backup", backup],
            1: ["--backup", backup, "--hang-at-step", str(HANG_AT_STEP), "--marker", marker],
        }
        with cluster_util.LocalCluster(
            WORKER,
            num_workers=2,
            env=_env(),
            log_dir=str(tmp_path),
            extra_args=lambda i: ["worker", outs[i], *extra[i]],
        ) as cluster:
            deadline = time.monotonic() + 90
            while not os.path.exists(marker):
                codes = [p.poll() for p in cluster.processes]
                assert all(c is None for c in codes), f"a worker exited: {codes}"
                assert time.monotonic() < deadline, "the worker never reached the kill step"
                time.sleep(0.1)
            # A real kill of worker 1 in the middle of epoch 2. The chief, waiting in the next
            # step's all-reduce, learns from the coordination service that worker 1 stopped
            # sending heartbeats (about 10 s) and exits with an UnavailableError.
            assert cluster.kill_worker(1) == -signal.SIGKILL
            deadline = time.monotonic() + 40
            while cluster.processes[0].poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert cluster.processes[0].poll() not in (None, 0), "the chief did not notice"
        assert not any(os.path.exists(p) for p in outs)
        with open(os.path.join(backup, "training_metadata.json")) as f:
            assert '"epoch": 1' in f.read()  # the chief's backup of the first epoch

        restarted = _run_cluster(
            str(tmp_path / "restart"), timeout=120, extra=lambda i: ["--backup", backup]
        )
        for result in restarted:
            # Resumed at the start of epoch 2 from the backup, not from scratch.
            assert result["first_step"] == STEPS_PER_EPOCH
            assert [s for s, _ in result["losses"]] == list(
                range(STEPS_PER_EPOCH + 1, EPOCHS * STEPS_PER_EPOCH + 1)
            )
            # Exactly the uninterrupted run's weights, optimizer slots and tables.
            _assert_same_variables(result["variables"], reference["variables"], "restarted")
            assert result["losses"] == reference["losses"][STEPS_PER_EPOCH:]
            assert result["digests"] == reference["digests"][STEPS_PER_EPOCH:]
            assert result["validation"] == reference["validation"]

    def test_refuses_outside_supported_keras(monkeypatch):
        low, high = distributed.SUPPORTED_KERAS
        distributed.check_keras_version(low)
        distributed.check_keras_version("3.15.1")
        for version in ("3.14.9", high, "3.16.0rc1", "4.0.0"):
            with pytest.raises(distributed.UnsupportedKerasVersionError, match="not supported"):
                distributed.check_keras_version(version)

        (x, y), _ = make_data()
        monkeypatch.setattr(keras, "__version__", "3.16.0")
        with tf.distribute.OneDeviceStrategy("/cpu:0").scope():
            model = build_model()
        with pytest.raises(distributed.UnsupportedKerasVersionError, match=r"Keras 3\.16\.0"):
            model.fit(make_dataset(x, y), epochs=1, verbose=0)
        # Without a strategy there is nothing to work around: training is not blocked.
        model = build_model()
        model.fit(make_dataset(x, y), epochs=1, verbose=0)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in ("worker", "mirrored"):
        _main(sys.argv[1:])
    else:
        import pytest

        sys.exit(pytest.main([__file__, "-q"]))
