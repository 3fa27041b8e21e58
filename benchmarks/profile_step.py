"""Where the time of one tf-lsh training step goes, on the Amazon-670K shape (random sparse
batches) or on the generated small shape (`--shape small`: its own batches, the README model
with one shared set of 1,000 labels).

Times each stage of `LSHClassifier.train_step` alone (median of several runs, each stage a
`tf.function`, on one batch), then the whole step over `--batches` distinct batches in turn
(as `fit` goes through a dataset), and prints JSON. Stages: the sparse first layer forward
and backward, hashing the hidden activations, the table query, the output gather-matmul
forward and backward, the two SparseAdam updates, and the loss.

    python benchmarks/profile_step.py [--quick] [--shape small] [--batch-wide]

It also runs the compiled step under TensorFlow's profiler and reports the time of each op
inside the step (`ops_in_step`).
"""

import argparse
import collections
import glob
import itertools
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
import _common  # noqa: E402
import extreme_classification  # noqa: E402

import keras_layers  # noqa: E402
import tf_lsh_ops  # noqa: E402
from keras_layers import datasets  # noqa: E402


def median_seconds(fn, repeats):
    fn()
    times = []
    with _common.gc_paused():
        for _ in range(repeats):
            start = time.perf_counter()
            result = fn()
            tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, result)
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def time_ops_in_step(step, iterator, steps):
    """Milliseconds per step spent in each op of the compiled step, from TensorFlow's profiler.

    Unlike stages timed alone, these are the ops as the step runs them: each op's kernel time
    (`Compute`), summed over its calls and averaged over `steps` steps; what the step's wall
    time holds beyond their sum is the executor, Python and waiting between ops.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    for _ in range(3):
        step(next(iterator))
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        with _common.gc_paused():
            start = time.perf_counter()
            for _ in range(steps):
                tf.nest.map_structure(lambda t: t.numpy(), step(next(iterator)))
            wall = (time.perf_counter() - start) / steps
        tf.profiler.experimental.stop()
        (path,) = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
        space = xplane_pb2.XSpace()
        with open(path, "rb") as f:
            space.ParseFromString(f.read())
    per_op = collections.Counter()
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):  # the threads that run op kernels
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if ":" in name and "::" not in name:  # "scope/op_name:OpType"; not bookkeeping
                    per_op[name] += event.duration_ps / 1e9 / steps
    top = dict(per_op.most_common(12))
    return {
        "step_wall_ms": wall * 1e3,
        "ops_total_ms": sum(per_op.values()),
        "top_ops_ms": top,
        "other_ops_ms": sum(per_op.values()) - sum(top.values()),
        "other_ops": len(per_op) - len(top),
        "op_types": sorted({name.rsplit(":", 1)[1] for name in per_op}),
    }


def random_batch(num_features, num_labels, batch, rng):
    nnz = 75
    rows = np.repeat(np.arange(batch), nnz)
    cols = np.sort(rng.choice(num_features, (batch, nnz), replace=True), axis=1).ravel()
    x = tf.sparse.reorder(
        tf.SparseTensor(
            np.stack([rows, cols], 1), rng.random(batch * nnz, np.float32), [batch, num_features]
        )
    )
    labels = rng.integers(0, num_labels, (batch, 5)).astype(np.int32)
    return x, tf.constant(labels)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a 100k-label layer, fewer runs")
    parser.add_argument(
        "--shape",
        default="amazon670k",
        choices=["amazon670k", "small"],
        help="small: the generated small data's batches, batch-wide, 1,000 active labels",
    )
    parser.add_argument("--active", type=int, default=None, help="3,000 (Amazon), 1,000 (small)")
    parser.add_argument("--batch-wide", action="store_true", help="one active set per batch")
    parser.add_argument("--threads", type=int, default=None, help="TF intra/inter-op threads")
    parser.add_argument(
        "--batches", type=int, default=32, help="distinct batches the whole step cycles through"
    )
    parser.add_argument(
        "--no-fuse",
        action="store_true",
        help="apply SparseAdam after the gradients (output and first layer), unfused",
    )
    args = parser.parse_args(argv)
    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    repeats = 3 if args.quick else 7
    rng = np.random.default_rng(0)
    if args.shape == "small":
        train, _ = datasets.synthetic_extreme_classification("small")
        num_features, num_labels = train.num_features, train.num_labels
        args.active, args.batch_wide = args.active or 1000, True
        data_batches = list(itertools.islice(iter(train.dataset(128, shuffle=True)), args.batches))
        labels_per_example = train.labels_per_example
    else:
        num_features, num_labels = (50_000, 100_000) if args.quick else (135_909, 670_091)
        args.active = args.active or 3000
        data_batches = [
            random_batch(num_features, num_labels, 128, rng) for _ in range(args.batches)
        ]
        labels_per_example = 5.0
    model = extreme_classification.build_lsh_model(
        num_features,
        num_labels,
        args.active,
        labels_per_example=labels_per_example,
        batch_wide=args.batch_wide,
    )
    model.fuse_output_update = model.fuse_first_layer_update = not args.no_fuse
    optimizer = keras_layers.SparseAdam(1e-3)
    model.compile(optimizer=optimizer)
    optimizer.build(model.trainable_variables)
    x, labels = data_batches[0]
    body, head = model.body, model.head

    features = body(x)
    codes = head.tables.hash(features, "query")
    ids, _ = head.active_outputs(features, labels)
    # What the layer hands the op: one [1, k] set for a batch-wide layer.
    op_ids = ids[:1] if head.batch_wide else ids
    logits = tf_lsh_ops.sparse_gather_matmul(features, head.kernel, head.bias, op_ids)
    grad_logits = tf.random.normal(tf.shape(logits))

    def head_backward():
        with tf.GradientTape() as tape:
            tape.watch(features)
            out = tf_lsh_ops.sparse_gather_matmul(features, head.kernel, head.bias, op_ids)
        return tape.gradient(out, [features, head.kernel, head.bias], output_gradients=grad_logits)

    def body_forward_backward():
        with tf.GradientTape() as tape:
            out = body(x, training=True)
        return tape.gradient(out, body.trainable_variables, output_gradients=tf.ones_like(out))

    head_grads = tf.function(head_backward)()
    active_loss = keras_layers.ACTIVE_LOSSES[model.active_loss][0]
    stages = {
        "body_forward_backward": tf.function(body_forward_backward),
        "hash_queries": tf.function(lambda: head.tables.hash(features, "query")),
        "query_tables": tf.function(
            lambda: tf_lsh_ops.query_tables(
                codes,
                head.tables.ids,
                head.tables.counts,
                k=head.num_active,
                num_neurons=head.units,
                fill_random=True,
                labels=labels,
                batch_wide=head.batch_wide,
            )
        ),
        "gather_matmul_forward": tf.function(
            lambda: tf_lsh_ops.sparse_gather_matmul(features, head.kernel, head.bias, op_ids)
        ),
        "gather_matmul_backward": tf.function(head_backward),
        "loss_and_its_gradient": tf.function(  # the model's loss over the active set
            lambda: tf.gradients(active_loss(ids, logits, labels), logits)
        ),
        "sparse_adam_output_layer": tf.function(
            lambda: optimizer.apply(head_grads[1:], [head.kernel, head.bias])
        ),
    }
    results = {name: median_seconds(fn, repeats) for name, fn in stages.items()}
    # The whole step goes through distinct batches, as fit does: one batch repeated keeps its
    # rows (and their optimizer moments) in cache, which hides the cost of scattered rows.
    iterator = itertools.cycle(data_batches)
    model.train_step(next(iterator))  # trace
    step = tf.function(model.train_step)
    results["whole_train_step"] = median_seconds(lambda: step(next(iterator)), repeats)
    results["unique_output_rows"] = int(tf.size(tf.unique(tf.reshape(ids, [-1]))[0]))
    ops_in_step = time_ops_in_step(step, iterator, 10 if args.quick else 30)
    print(
        json.dumps(
            {
                "threads": args.threads or os.cpu_count(),
                "shape": {
                    "name": args.shape,
                    "features": num_features,
                    "labels": num_labels,
                    "active": args.active,
                    "batch": 128,
                },
                "distinct_batches": args.batches,
                "seconds": results,
                "note": "stages timed alone; their sum differs from the whole step",
                "ops_in_step": ops_in_step,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
