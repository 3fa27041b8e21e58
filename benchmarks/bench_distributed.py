"""Benchmark of distributed training on `tf.distribute.MultiWorkerMirroredStrategy`.

Real clusters of worker processes on 127.0.0.1 (tests/cluster_util.py's `LocalCluster`: free
ports, one `TF_CONFIG` each, one intra-op thread each) train the extreme-classification network
of the benchmarks (`SparseInputDense(128, relu)` over a bag of words, an `LSHDense` output over
every label, `LSHClassifier`, `SparseAdam`) on the generated data
(`keras_layers.datasets.synthetic_extreme_classification`, seed 0) with `model.fit`, without
table rebuilds (their cost is in `shard_costs`). Reported:

* `training`: steps per second (median step, after warm-up) with one worker and with two
  workers, at the same global batch (two workers each take half) and at the same per-worker
  batch; examples per second; bytes sent per worker per step on the wire (TCP `bytes_sent` of
  every connection to a cluster port, read with `ss` at the start and the end of the timed
  steps; gRPC framing included); the same with the gradients exchanged densely (the
  `IndexedSlices` converted to dense tensors before the all-reduce, then Keras' dense Adam).
* `gradients`: per gradient, the rows a worker contributes per step (measured on the
  training batches) and the bytes of TensorFlow's collective exchange of an `IndexedSlices`
  (all-gather of lengths, then of padded values and indices) against a dense ring all-reduce
  of the same variable (`keras_layers.distributed.gradient_exchange_bytes`).
* `collectives`: in the two-worker cluster, the step's gradient exchange alone, timed (median
  of repeated runs) and measured on the wire, sparse and dense: the time a step spends in
  communication; and the primitives of a label-sharded output layer (all-gather of a batch of
  features, all-reduce of their gradient, all-reduce of per-example softmax statistics).
* `shard_costs`: one output-layer shard alone (one process, one thread): seconds per step of
  the LSH output layer's forward, backward and SparseAdam update for a global batch, against
  its number of labels: the measured per-shard costs that docs/distributed.md extrapolates to
  Amazon-670K and 100M labels.

On one 2-core machine, two workers show the overhead of distribution (gRPC over loopback,
synchronisation), not a speed-up: each worker has one core, the same as a single worker, and
other processes may share the cores (the load average is reported).

Usage: python benchmarks/bench_distributed.py [--quick | --full]   (JSON on stdout)
"""

import json
import os
import re
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402, F401  (first: it finds tf-lsh)

SETTINGS = {
    # shape: (num_features, num_labels); batch: the global batch of the strong-scaling runs.
    "quick": {
        "shape": (50_000, 100_000),
        "hidden": 128,
        "active": 1_000,
        "batch": 128,
        "warmup": 4,
        "steps": 12,
        "collective_reps": 10,
        "shard_units": [25_000, 50_000, 100_000],
        "timeout": 300,
    },
    "full": {
        "shape": (135_909, 670_091),
        "hidden": 128,
        "active": 3_000,
        "batch": 256,
        "warmup": 4,
        "steps": 15,
        "collective_reps": 10,
        "shard_units": [50_000, 100_000, 200_000, 400_000, 670_091],
        "timeout": 1800,
    },
}


# ------------------------------------------------------------------------------------ workers


def _ss_bytes_sent(ports):
    """Total TCP bytes_sent over the connections with a local or remote port in `ports`."""
    out = subprocess.run(["ss", "-tinH"], capture_output=True, text=True, check=True).stdout
    total, count = 0, 0
    lines = out.splitlines()
    for head, info in zip(lines[::2], lines[1::2], strict=False):
        fields = head.split()
        if len(fields) < 5:
            continue
        local, peer = fields[3].rsplit(":", 1)[-1], fields[4].rsplit(":", 1)[-1]
        if int(local) in ports or int(peer) in ports:
            match = re.search(r"bytes_sent:(\d+)", info)
            total += int(match.group(1)) if match else 0
            count += 1
    return total, count


def _worker(args):
    import keras
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(2)

    import keras_layers
    from keras_layers import datasets, distributed

    config = json.loads(os.environ["TF_CONFIG"])
    hosts = config["cluster"]["worker"]
    ports = {int(h.rsplit(":", 1)[1]) for h in hosts}
    workers = len(hosts)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    chief = distributed.is_chief(strategy)
    features, labels = args["shape"]
    global_batch = args["per_worker_batch"] * workers
    steps = args["warmup"] + args["steps"]
    train, _ = datasets.synthetic_extreme_classification(
        (features, labels, global_batch * (steps + 2), 64), seed=0
    )
    dataset = train.dataset(global_batch, drop_remainder=True).repeat()
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = dataset.with_options(options)

    rows_file = args["out"] + f".rows{strategy.cluster_resolver.task_id or 0}"

    class RecordingSparseAdam(keras_layers.SparseAdam):
        """Records the rows of each local gradient (before the all-reduce); with
        `exchange="dense"`, all-reduces every gradient as a dense tensor (then dense Adam)."""

        def _backend_update_step(self, grads, trainable_variables, learning_rate):
            for grad, variable in zip(grads, trainable_variables, strict=True):
                if isinstance(grad, tf.IndexedSlices):
                    name = variable.path if hasattr(variable, "path") else variable.name
                    shape = variable.shape
                    tf.print(
                        name,
                        tf.shape(grad.indices)[0],
                        grad.indices.dtype.size,
                        shape[0],
                        int(np.prod(shape[1:])),
                        output_stream=f"file://{rows_file}",
                    )
            if args["exchange"] == "dense":
                grads = [
                    tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads
                ]
            return super()._backend_update_step(grads, trainable_variables, learning_rate)

    optimizer_class = RecordingSparseAdam
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras_layers.LSHClassifier(
            keras_layers.SparseInputDense(args["hidden"], activation="relu", name="hidden"),
            keras_layers.LSHDense(labels, active=args["active"], num_tables=16, name="output"),
        )
        model.compile(optimizer=optimizer_class(1e-3))

    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends, self.wire = [], {}

        def on_train_batch_end(self, batch, logs=None):
            float(logs["loss"])  # the step has finished
            self.ends.append(time.perf_counter())
            if batch + 1 in (args["warmup"], steps) and workers > 1 and chief:
                self.wire[batch + 1] = _ss_bytes_sent(ports)

    timer = Timer()
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0, callbacks=[timer])
    result = {
        "workers": workers,
        "exchange": args["exchange"],
        "per_worker_batch": args["per_worker_batch"],
        "global_batch": global_batch,
        "fit_seconds": time.perf_counter() - start,
        "step_seconds": list(np.diff(timer.ends[args["warmup"] - 1 :])),
    }
    if timer.wire:
        (before, _), (after, connections) = timer.wire[args["warmup"]], timer.wire[steps]
        result["wire_bytes_per_worker_per_step"] = (after - before) / args["steps"] / workers
        result["connections"] = connections

    # Rows this worker contributed to each sparse gradient, step by step (the timed steps).
    rows, shapes = {}, {}
    with open(rows_file) as f:
        for line in f:
            name, count, index_bytes, dense_rows, width = line.split()
            name = "/".join(name.split("/")[-2:])  # e.g. "output/kernel"
            rows.setdefault(name, []).append(int(count))
            shapes[name] = {
                "index_bytes": int(index_bytes),
                "dense_rows": int(dense_rows),
                "width": int(width),
            }
    rows = {name: counts[args["warmup"] :] for name, counts in rows.items()}
    result["rows"] = rows
    result["shapes"] = shapes

    if workers > 1 and args.get("collectives"):
        result["collectives"] = _time_collectives(strategy, model, rows, shapes, args, ports, chief)
    if chief:
        with open(args["out"], "w") as f:
            json.dump(result, f)


def _time_collectives(strategy, model, rows, shapes, args, ports, chief):
    """The step's gradient exchange alone, sparse and dense, and label-sharding primitives."""
    import numpy as np
    import tensorflow as tf

    hidden = args["hidden"]
    variables = {
        "hidden/kernel": model.body.kernel,
        "hidden/bias": model.body.bias,
        "output/kernel": model.head.kernel,
        "output/bias": model.head.bias,
    }
    typical = {name: int(np.median(values)) for name, values in rows.items()}

    def sparse_gradients():
        grads = []
        for name, variable in variables.items():
            shape = variable.shape
            if name not in typical:  # a dense gradient (the body's bias)
                grads.append(tf.zeros(shape))
                continue
            count = typical[name]
            index_dtype = tf.int64 if shapes[name]["index_bytes"] == 8 else tf.int32
            grads.append(
                tf.IndexedSlices(
                    tf.ones([count, *shape[1:]]),
                    tf.range(count, dtype=index_dtype) * (shape[0] // max(count, 1)),
                    tf.constant(list(shape), index_dtype),
                )
            )
        return grads

    def dense_gradients():
        return [tf.zeros(v.shape) for v in variables.values()]

    global_batch = args["per_worker_batch"] * strategy.num_replicas_in_sync

    def make(fn):
        @tf.function
        def run():
            def replica():
                context = tf.distribute.get_replica_context()
                return context.all_reduce(tf.distribute.ReduceOp.SUM, fn())

            return tf.nest.map_structure(
                lambda t: tf.reduce_sum(t.values if isinstance(t, tf.IndexedSlices) else t),
                strategy.experimental_local_results(strategy.run(replica))[0],
                expand_composites=False,
            )

        return run

    def features_gather():
        context = tf.distribute.get_replica_context()
        local = tf.ones([args["per_worker_batch"], hidden])
        gathered = context.all_gather(local, axis=0)  # every shard sees the global batch
        d_features = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.ones([global_batch, hidden]))
        stats = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.ones([global_batch, 2]))
        return [gathered, d_features, stats]

    jobs = {
        "gradients_sparse": make(sparse_gradients),
        "gradients_dense": make(dense_gradients),
        "label_sharding_primitives": make(features_gather),
    }
    out = {"typical_rows": typical}
    for name, fn in jobs.items():
        fn()  # trace and warm up
        fn()
        before = _ss_bytes_sent(ports)[0] if chief else 0
        times = []
        for _ in range(args["collective_reps"]):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        after = _ss_bytes_sent(ports)[0] if chief else 0
        out[name] = {
            "median_seconds": float(np.median(times)),
            "wire_bytes_per_worker": (after - before)
            / args["collective_reps"]
            / strategy.num_replicas_in_sync,
        }
    return out


def _shard_costs(args):
    """Seconds per step of one output-layer shard (forward, backward, SparseAdam), alone."""
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras_layers
    from keras_layers.losses import active_softmax_cross_entropy

    batch, hidden = args["batch"], args["hidden"]
    rng = np.random.default_rng(0)
    features = tf.constant(np.maximum(rng.standard_normal((batch, hidden)), 0).astype(np.float32))
    results = []
    total_labels, total_active = args["shape"][1], args["active"]
    for units in args["shard_units"]:
        # A shard of `units` labels keeps the same fraction of active labels.
        active = max(1, round(total_active * units / total_labels))
        labels = tf.constant(rng.integers(0, units, (batch, 4)).astype(np.int32))
        layer = keras_layers.LSHDense(units, active=active, num_tables=16, seed=1)
        layer.build((None, hidden))
        optimizer = keras_layers.SparseAdam(1e-3)
        optimizer.build(layer.trainable_variables)

        @tf.function
        def step(layer=layer, optimizer=optimizer, labels=labels):
            with tf.GradientTape() as tape:
                ids, logits = layer.active_outputs(features, labels=labels)
                loss = active_softmax_cross_entropy(ids, logits, labels)
            grads = tape.gradient(loss, layer.trainable_variables)
            optimizer.apply_gradients(zip(grads, layer.trainable_variables, strict=True))
            return loss

        step()
        times = []
        for _ in range(args["reps"]):
            start = time.perf_counter()
            float(step())
            times.append(time.perf_counter() - start)
        rebuild_start = time.perf_counter()
        layer.tables.rebuild()
        rebuild = time.perf_counter() - rebuild_start
        results.append(
            {
                "units": units,
                "active": active,
                "step_seconds": float(np.median(times)),
                "rebuild_seconds": rebuild,
                "weight_bytes": units * (hidden + 1) * 4,
                "table_bytes": layer.selector.memory_bytes,
            }
        )
        print(f"[bench_distributed] shard {units}: {results[-1]}", file=sys.stderr, flush=True)
    with open(args["out"], "w") as f:
        json.dump(results, f)


# ------------------------------------------------------------------------------------- driver


def _run_cluster(workers, args, directory, timeout):
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, os.path.join(checkout, "tests"))  # the test-only cluster helpers
    from cluster_util import LocalCluster

    out = os.path.join(
        directory, f"result-{workers}-{args['exchange']}-{args['per_worker_batch']}.json"
    )
    args = {**args, "out": out}
    env = dict(os.environ)  # this script finds the packages itself (above)
    log_dir = os.path.join(directory, os.path.basename(out)[:-5])
    os.makedirs(log_dir)
    with LocalCluster(
        [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(args)],
        num_workers=workers,
        env=env,
        log_dir=log_dir,
    ) as cluster:
        cluster.wait(timeout=timeout)
    with open(out) as f:
        return json.load(f)


def _summary(run):
    import numpy as np

    step = float(np.median(run["step_seconds"]))
    summary = {
        "workers": run["workers"],
        "exchange": run["exchange"],
        "global_batch": run["global_batch"],
        "per_worker_batch": run["per_worker_batch"],
        "median_step_seconds": step,
        "steps_per_second": 1.0 / step,
        "examples_per_second": run["global_batch"] / step,
    }
    if "wire_bytes_per_worker_per_step" in run:
        summary["wire_bytes_per_worker_per_step"] = run["wire_bytes_per_worker_per_step"]
    return summary


def main():
    from _common import machine_info, mode_parser

    parser = mode_parser(__doc__.split("\n")[0])
    parser.add_argument("--worker", help=argparse_suppress())
    parser.add_argument("--shard-costs", help=argparse_suppress())
    args = parser.parse_args()
    if args.worker:
        return _worker(json.loads(args.worker))
    if args.shard_costs:
        return _shard_costs(json.loads(args.shard_costs))

    from keras_layers.distributed import gradient_exchange_bytes

    settings = SETTINGS[args.mode]
    log = lambda message: print(f"[bench_distributed] {message}", file=sys.stderr, flush=True)  # noqa: E731
    batch = settings["batch"]
    common = {
        "shape": settings["shape"],
        "hidden": settings["hidden"],
        "active": settings["active"],
        "warmup": settings["warmup"],
        "steps": settings["steps"],
        "collective_reps": settings["collective_reps"],
    }
    runs = [
        (1, {"exchange": "sparse", "per_worker_batch": batch}),
        (2, {"exchange": "sparse", "per_worker_batch": batch // 2, "collectives": True}),
        (2, {"exchange": "sparse", "per_worker_batch": batch}),
        (2, {"exchange": "dense", "per_worker_batch": batch // 2}),
    ]
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench_distributed_") as directory:
        for workers, extra in runs:
            name = f"{workers}w_{extra['exchange']}_b{extra['per_worker_batch']}"
            log(f"cluster {name} ...")
            start = time.perf_counter()
            results[name] = _run_cluster(
                workers, {**common, **extra}, directory, settings["timeout"]
            )
            log(f"  {time.perf_counter() - start:.1f} s: {_summary(results[name])}")
        shard_out = os.path.join(directory, "shards.json")
        shard_args = {
            "shape": settings["shape"],
            "hidden": settings["hidden"],
            "active": settings["active"],
            "batch": batch,
            "shard_units": settings["shard_units"],
            "reps": 5,
            "out": shard_out,
        }
        log("shard costs ...")
        subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--shard-costs", json.dumps(shard_args)],
            check=True,
            timeout=settings["timeout"],
        )
        with open(shard_out) as f:
            shard_costs = json.load(f)

    import numpy as np

    hidden = settings["hidden"]
    two = results[f"2w_sparse_b{batch // 2}"]
    gradients, sparse_total, dense_total = {}, 0.0, 0.0
    for name, per_step in sorted(two["rows"].items()):
        shape = two["shapes"][name]
        median = float(np.median(per_step))
        sparse, dense = gradient_exchange_bytes(
            [median] * 2, 2, shape["width"], shape["dense_rows"], shape["index_bytes"]
        )
        gradients[name] = {
            **shape,
            "rows_per_worker_median": median,
            "rows_fraction": median / shape["dense_rows"],
            "sparse_bytes_per_worker": sparse,
            "dense_allreduce_bytes_per_worker": dense,
        }
        sparse_total, dense_total = sparse_total + sparse, dense_total + dense
    # The body's bias gradient is dense either way.
    bias = 2 * (2 - 1) / 2 * 4 * hidden
    gradients["total"] = {
        "sparse_bytes_per_worker": sparse_total + bias,
        "dense_allreduce_bytes_per_worker": dense_total + bias,
    }
    report = {
        "benchmark": "bench_distributed",
        "mode": args.mode,
        "machine": {**machine_info(), "loadavg": os.getloadavg()},
        "settings": settings,
        "training": {name: _summary(run) for name, run in results.items()},
        "gradients": gradients,
        "collectives": two.get("collectives"),
        "shard_costs": shard_costs,
        "note": (
            "One 2-core machine: each worker has one core and talks gRPC over loopback, so two "
            "workers show the overhead of distribution, not a speed-up."
        ),
    }
    json.dump(report, sys.stdout, indent=2)
    print()


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
