"""Thread safety: the ops called from several Python threads at once give the serial results.

Eager ops release the GIL while their kernels run, so the threads really run the kernels
concurrently (and each kernel also shards its work over TensorFlow's pool). Every thread runs
a fixed workload of every op (both gather paths, with shared read-only variables, forward
and gradient; sparse_input_matmul and its gradient, fused with Adam and with the rowwise
rule; all hash families, dense and sparse; hash_params; build, update and query, per example
and batch-wide;
a tf.function traced once and called from every thread); the results must equal, bit for bit,
those of the same workloads run one after the other. Meanwhile `sparse_adam_apply` updates
disjoint rows of one shared set of variables from every thread (the updates commute, so the
final values must equal the serial ones), and a reader gathers from that variable while it is
being updated (under the variable's lock: no torn rows, no crash).
"""

import concurrent.futures
import os
import sys
import threading

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

try:
    import tf_lsh_ops  # noqa: E402
except ModuleNotFoundError:  # Not installed: use the source tree this file belongs to.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import tf_lsh_ops  # noqa: E402

THREADS = 6
ROUNDS = 3
DIM, UNITS, BATCH, ACTIVE = 48, 600, 64, 24
L, K = 6, 5

_rng = np.random.default_rng(0)
WEIGHTS = _rng.standard_normal((UNITS, DIM)).astype(np.float32)
BIASES = _rng.standard_normal(UNITS).astype(np.float32)
W_VAR, B_VAR = tf.Variable(WEIGHTS), tf.Variable(BIASES)  # read by every thread
PARAMS = tf_lsh_ops.hash_params("srp", DIM, L, K, mips=True, seed=1)
CODES = tf_lsh_ops.lsh_hash(
    WEIGHTS, PARAMS, family="srp", num_tables=L, num_hashes=K, mips="data", max_norm=30.0
)
IDS, COUNTS = tf_lsh_ops.build_tables(CODES, bucket_bits=K, capacity=16, overflow="reservoir")


@tf.function(input_signature=[tf.TensorSpec([None, DIM], tf.float32)])
def select_and_compute(x):
    codes = tf_lsh_ops.lsh_hash(x, PARAMS, family="srp", num_tables=L, num_hashes=K, mips="query")
    active = tf_lsh_ops.query_tables(
        codes, IDS, COUNTS, k=ACTIVE, num_neurons=UNITS, fill_random=True, seed=3
    )
    return active, tf_lsh_ops.sparse_gather_matmul(x, W_VAR, B_VAR, active)


def workload(seed):
    """Every op once or more on inputs drawn from `seed`; the results as NumPy arrays."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((BATCH, DIM)).astype(np.float32)
    x[rng.random(x.shape) < 0.5] = 0.0
    sparse_x = tf.sparse.from_dense(x)
    out = []
    for family in tf_lsh_ops.HASH_FAMILIES:
        params = tf_lsh_ops.hash_params(family, DIM, L, 3, bin_size=4, seed=seed)
        args = dict(family=family, num_tables=L, num_hashes=3)
        out += [params, tf_lsh_ops.lsh_hash(x, params, **args)]
        out.append(tf_lsh_ops.lsh_hash(sparse_x, params, **args))
    codes = tf_lsh_ops.lsh_hash(x, PARAMS, family="srp", num_tables=L, num_hashes=K, mips="query")
    ids, counts = tf_lsh_ops.build_tables(
        CODES, bucket_bits=K, capacity=8, overflow="reservoir", seed=seed
    )
    moved = rng.choice(UNITS, 100, replace=False).astype(np.int32)
    new_codes = tf.gather(CODES, (moved + 1) % UNITS)
    ids, counts = tf_lsh_ops.update_tables(
        ids, counts, moved, tf.gather(CODES, moved), new_codes, overflow="reservoir", seed=seed
    )
    out += [ids, counts]
    for rule in tf_lsh_ops.QUERY_RULES:
        fill = rule != "threshold"
        active = tf_lsh_ops.query_tables(
            codes,
            ids,
            counts,
            k=ACTIVE,
            num_neurons=UNITS,
            rule=rule,
            min_count=2,
            fill_random=fill,
            seed=seed,
        )
        out.append(active)
    # One set for the batch: eager calls share the op's kernel, and with it the counts it
    # keeps between queries (one query at a time). With room for 256 ids a bucket, the batch
    # meets 98,304 slots, which the kernel counts in parts on its own threads.
    wide_ids, wide_counts = tf_lsh_ops.build_tables(CODES, bucket_bits=K, capacity=256)
    for table_ids, table_counts in ((ids, counts), (wide_ids, wide_counts)):
        out.append(
            tf_lsh_ops.query_tables(
                codes,
                table_ids,
                table_counts,
                k=ACTIVE,
                num_neurons=UNITS,
                fill_random=True,
                seed=seed,
                batch_wide=True,
            )
        )
    kernel, values = tf.constant(WEIGHTS.T), tf.constant(sparse_x.values)
    with tf.GradientTape() as tape:
        tape.watch([kernel, values])
        y = tf_lsh_ops.sparse_input_matmul(
            tf.SparseTensor(sparse_x.indices, values, sparse_x.dense_shape), kernel
        )
        loss = tf.reduce_sum(y * y)
    d_values, d_kernel = tape.gradient(loss, [values, kernel])
    out += [y, d_values, d_kernel.indices, d_kernel.values]
    # The same gradient fused with Adam, on this call's own kernel and moments.
    first_layer = [tf.Variable(WEIGHTS.T), tf.Variable(WEIGHTS.T * 0.1), tf.Variable(WEIGHTS.T**2)]
    tf_lsh_ops.sparse_input_matmul_adam(
        tf.SparseTensor(sparse_x.indices, values, sparse_x.dense_shape),
        first_layer[0],
        2 * y,
        first_layer[1:],
        learning_rate=0.01,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        step=2,
    )
    out += first_layer
    # And with the rowwise rule, which keeps one moment per kernel row.
    rowwise = [tf.Variable(WEIGHTS.T), tf.Variable(np.full([WEIGHTS.shape[1], 1], 0.1, np.float32))]
    tf_lsh_ops.sparse_input_matmul_rowwise_rmsprop(
        tf.SparseTensor(sparse_x.indices, values, sparse_x.dense_shape),
        rowwise[0],
        2 * y,
        rowwise[1],
        learning_rate=0.01,
        beta_2=0.999,
        epsilon=1e-7,
        step=2,
    )
    out += rowwise
    for weights, biases in ((WEIGHTS, BIASES), (W_VAR, B_VAR)):
        inputs = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            if not isinstance(weights, tf.Variable):
                weights, biases = tf.constant(weights), tf.constant(biases)
                tape.watch([weights, biases])
            y = tf_lsh_ops.sparse_gather_matmul(inputs, weights, biases, active)
            loss = tf.reduce_sum(y * y)
        dx, dw, db = tape.gradient(loss, [inputs, weights, biases])
        out += [y, dx, dw.indices, dw.values, db.indices, db.values]
    # Several threads reading one variable in place (a table refresh and a rebuild do).
    out.append(tf_lsh_ops.row_fingerprints(W_VAR))
    hash_args = dict(family="srp", num_tables=L, num_hashes=K, mips="data", max_norm=100.0)
    out.append(tf_lsh_ops.lsh_hash(W_VAR, PARAMS, **hash_args))
    out += list(select_and_compute(x))
    return [np.asarray(t) for t in out]


def adam_steps(seed, variables, thread_rows):
    """A few sparse_adam_apply steps on this thread's own rows of the shared variables."""
    rng = np.random.default_rng(seed)
    for step in range(1, 6):
        rows = rng.choice(thread_rows, 12).astype(np.int32)  # duplicates included
        grad = rng.standard_normal((12, DIM)).astype(np.float32)
        tf_lsh_ops.sparse_adam_apply(
            *variables,
            tf.IndexedSlices(tf.constant(grad), tf.constant(rows)),
            learning_rate=0.01,
            beta_1=0.9,
            beta_2=0.999,
            epsilon=1e-7,
            step=step,
        )


def adam_variables():
    return [tf.Variable(WEIGHTS), tf.Variable(np.zeros_like(WEIGHTS)), tf.Variable(WEIGHTS**2)]


def test_concurrent_calls_match_serial_results():
    seeds = list(range(THREADS))
    serial = [workload(s) for s in seeds]
    row_sets = np.array_split(np.random.default_rng(1).permutation(UNITS), THREADS)
    serial_adam = adam_variables()
    for s in seeds:
        adam_steps(s, serial_adam, row_sets[s])

    shared_adam = adam_variables()
    stop = threading.Event()
    reads = []

    def reader():
        # Reads the variable that sparse_adam_apply is updating: shapes and finite values only.
        active = np.arange(BATCH * ACTIVE, dtype=np.int32).reshape(BATCH, ACTIVE) % UNITS
        x = np.ones((BATCH, DIM), np.float32)
        while not stop.is_set():
            y = tf_lsh_ops.sparse_gather_matmul(x, shared_adam[0], B_VAR, active).numpy()
            assert y.shape == (BATCH, ACTIVE) and np.isfinite(y).all()
            reads.append(1)

    def thread_work(s):
        results = []
        for round_ in range(ROUNDS):
            results.append(workload(s))
            if round_ == 0:
                adam_steps(s, shared_adam, row_sets[s])
        return results

    with concurrent.futures.ThreadPoolExecutor(THREADS + 1) as pool:
        watcher = pool.submit(reader)
        futures = [pool.submit(thread_work, s) for s in seeds]
        concurrent_results = [f.result(timeout=300) for f in futures]
        stop.set()
        watcher.result(timeout=60)

    assert reads, "the reader never ran"
    for s, rounds in zip(seeds, concurrent_results, strict=True):
        for results in rounds:
            assert len(results) == len(serial[s])
            for i, (got, want) in enumerate(zip(results, serial[s], strict=True)):
                assert got.dtype == want.dtype and got.shape == want.shape, (s, i)
                assert np.array_equal(got, want), f"thread {s}, result {i} differs"
    for got, want in zip(shared_adam, serial_adam, strict=True):
        assert np.array_equal(got.numpy(), want.numpy())


if __name__ == "__main__":
    import pytest

    sys.exit(pytest.main([__file__, "-q"]))
