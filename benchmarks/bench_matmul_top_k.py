"""Benchmark of `tf_lsh_ops.matmul_top_k` against `tf.math.top_k(tf.matmul(q, keys^T) + b, k)`.

What `LowRankSelector.select` computes every step for each hidden layer: the `k` best of
`units` sketch scores `queries @ keys^T + biases` per example (queries `[batch, dim]`, the
inputs through the sketch; keys `[units, dim]`). Three methods, each a `tf.function`:

* `op`: `matmul_top_k(queries, keys, biases, k)`: the fused op (no `[batch, units]` scores);
* `tf_top_k`: `tf.math.top_k(tf.matmul(queries, keys, transpose_b=True) + biases, k).indices`,
  what the op replaced;
* `scores_only`: `tf.matmul(queries, keys, transpose_b=True) + biases`, the scores without any
  selection: a floor for `tf_top_k`, shown for scale.

Inputs are standard normal (the sketch's scores have no ties). Each configuration's methods are
timed round-robin in this process (`_common.time_round_robin`: warm-up, then rounds until the
budget, garbage collector paused, outputs resolved with `memoryview`); medians are reported,
with `speedup` = tf_top_k / op. `check`: the op's ids equal tf_top_k's exactly on the same shapes
with entries in {-1, 0, 1} and distinct biases (scores exact in float32 and distinct, so any
order of summation agrees); `float_ids_equal` is the fraction of equal ids on the timed float
data (below 1 only if rounding orders near-ties differently). `all_checks_ok` is every check.
No timing target.

Usage: python benchmarks/bench_matmul_top_k.py [--quick | --full] [--threads N]
Prints one JSON document to stdout; progress goes to stderr.
"""

import json
import statistics
import sys

import numpy as np
import tensorflow as tf

try:
    from benchmarks import _common
except ModuleNotFoundError:  # Run as a script: the benchmarks folder is on sys.path.
    import _common

import tf_lsh_ops  # noqa: E402  (after _common, which finds it)

DIM = 32
SEED = 0
METHODS = ("op", "tf_top_k", "scores_only")

# (batch, k) pairs, the unit counts each is run at (k <= units), and the timing budget: up to
# `reps` rounds, stopping after the round that passes `budget_s` seconds (at least `min_reps`).
MODES = {
    "full": {
        "units": (1024, 4096, 16384, 65536),
        "batch_k": ((128, 50), (8, 50), (1, 50), (128, 3000)),
        "warmup": 5,
        "reps": 200,
        "min_reps": 20,
        "budget_s": 15.0,
    },
    "quick": {
        "units": (1024, 16384),
        "batch_k": ((128, 50), (1, 50)),
        "warmup": 2,
        "reps": 20,
        "min_reps": 5,
        "budget_s": 2.0,
    },
}

log = _common.make_logger("bench_matmul_top_k")


def _op(queries, keys, biases, k):
    return tf_lsh_ops.matmul_top_k(queries, keys, biases, k)


def _tf_top_k(queries, keys, biases, k):
    return tf.math.top_k(tf.matmul(queries, keys, transpose_b=True) + biases, k).indices


def _scores_only(queries, keys, biases, k):
    del k  # no selection
    return tf.matmul(queries, keys, transpose_b=True) + biases


FUNCTIONS = {"op": _op, "tf_top_k": _tf_top_k, "scores_only": _scores_only}


def float_data(batch, units, rng):
    return (
        tf.constant(rng.standard_normal((batch, DIM), dtype=np.float32)),
        tf.constant(rng.standard_normal((units, DIM), dtype=np.float32)),
        tf.constant(rng.standard_normal(units, dtype=np.float32)),
    )


def exact_data(batch, units, rng):
    """Scores exact in float32 and distinct within a row: integer products of at most DIM in
    magnitude plus distinct multiples of 2^-16 in [0, 1)."""
    return (
        tf.constant(rng.integers(-1, 2, (batch, DIM)).astype(np.float32)),
        tf.constant(rng.integers(-1, 2, (units, DIM)).astype(np.float32)),
        tf.constant((rng.permutation(units) / 2**16).astype(np.float32)),
    )


def run_config(batch, units, k, cfg, rng):
    functions = {name: tf.function(fn) for name, fn in FUNCTIONS.items()}
    data = float_data(batch, units, rng)
    jobs = {name: (functions[name], (*data, k)) for name in METHODS}
    times = _common.time_round_robin(
        jobs,
        warmup=cfg["warmup"],
        reps=cfg["reps"],
        min_reps=cfg["min_reps"],
        budget_s=cfg["budget_s"],
    )
    median_ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    exact = exact_data(batch, units, rng)
    check = bool(np.array_equal(functions["op"](*exact, k), functions["tf_top_k"](*exact, k)))
    float_equal = float(
        np.mean(functions["op"](*data, k).numpy() == functions["tf_top_k"](*data, k).numpy())
    )
    result = {
        "batch": batch,
        "units": units,
        "dim": DIM,
        "k": k,
        "reps": len(times["op"]),
        "median_ms": median_ms,
        "speedup": median_ms["tf_top_k"] / median_ms["op"],
        "op_over_scores_only": median_ms["op"] / median_ms["scores_only"],
        "check": check,
        "float_ids_equal": float_equal,
    }
    log(
        f"batch {batch} units {units} k {k}: op {median_ms['op']:.3f} ms, tf_top_k "
        f"{median_ms['tf_top_k']:.3f} ms, scores_only {median_ms['scores_only']:.3f} ms, "
        f"speedup {result['speedup']:.2f}, check {check}"
    )
    return result


def main(argv=None):
    args = _common.mode_parser(__doc__.splitlines()[0]).parse_args(argv)
    _common.configure_threads(args.threads)
    cfg = MODES[args.mode]
    rng = np.random.default_rng(SEED)
    configs = [
        run_config(batch, units, k, cfg, rng)
        for batch, k in cfg["batch_k"]
        for units in cfg["units"]
        if k <= units
    ]
    report = {
        "mode": args.mode,
        "settings": {**cfg, "dim": DIM, "seed": SEED, "methods": METHODS},
        "machine": _common.machine_info(),
        "configs": configs,
        "all_checks_ok": all(c["check"] for c in configs),
    }
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
