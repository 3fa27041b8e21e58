"""Benchmark of `tf_lsh_ops.sparse_gather_matmul` against plain TensorFlow.

For each (N, K) configuration, with D = 128 and B = 128, three methods compute the outputs of a
layer of N neurons of which each example uses K (random uniform indices in [0, N)):

* `op`: `sparse_gather_matmul(inputs, weights, biases, indices)` -> [B, K]; its gradient is a
  dense `d_inputs` and `tf.IndexedSlices` for `weights` / `biases` over the distinct rows used.
* `gather_einsum`: `tf.gather(weights, indices)` -> [B, K, D], `tf.einsum("bd,bkd->bk")`, plus
  the gathered biases, differentiated by autodiff (its gradients are `tf.IndexedSlices` with B*K
  rows, duplicates not summed).
* `dense`: `tf.matmul(inputs, weights, transpose_b=True) + biases` over all N neurons -> [B, N],
  differentiated by autodiff (dense gradients).

Two times are measured per method: `forward` (outputs only) and `forward_backward` (outputs and
the gradients w.r.t. inputs, weights and biases, given a fixed random upstream gradient; the
outputs are returned too so that the forward pass cannot be pruned).

The section `shared_active_set` times the op on one set of K distinct neuron ids shared by the
whole batch (indices [1, K]) against `gather_matmul`, `tf.matmul(inputs, tf.gather(weights,
indices[0]), transpose_b=True)` plus the gathered biases, in the same two phases; it reports the
medians, the op's speedups and a check against gather_matmul (part of `all_checks_ok`), no target.

`weights` and `biases` are `tf.Variable`s, as in training, and each method has its own copy: once
a variable has been read sparsely (`tf.gather` on it, or a sparse optimizer update), TensorFlow
switches it to copy-on-read mode, and from then on every dense read (`ReadVariableOp`, which is
how the op and `tf.matmul` see the variable) copies the whole [N, D] matrix. Sharing variables
would thus charge the op and dense for gather_einsum's gathers. The op's cost in that situation,
which is what training with sparse updates will see, is reported as the informational method
`op_copy_on_read` (the op on variables that were read sparsely once before timing); it is not
part of the speedups or targets.

Each method is a `tf.function`, traced once before timing and warmed up; the methods of a
configuration are then timed round-robin (so that background load affects all of them alike) with
`time.perf_counter`, with Python's garbage collector paused (as `timeit` does), and the median is
reported. Every returned tensor (including the parts of
`tf.IndexedSlices`, never densified) is resolved with `memoryview` (zero-copy on CPU; `.numpy()`
would copy) inside the timed region.

Also reported: speedups of the op over the two baselines, the op's achieved bandwidth over weight
rows (forward: B*K*D*4 bytes; forward+backward: 2*B*K*D*4 bytes read for the outputs and
d_inputs plus U*D*4 bytes of d_weights written, U = distinct rows), a correctness check of the
op against the baselines, the time of a trivial tf.function call (a floor for every median), the
machine's memory-copy bandwidth (NumPy on every core, read + written bytes as STREAM counts them;
the higher of a measure before and one after the configs) and pass/fail of the performance
targets.

Usage: python benchmarks/bench_sparse_gather_matmul.py [--quick | --full] [--threads N]
Prints one JSON document to stdout; progress goes to stderr.
"""

import json
import statistics
import sys
import time

import numpy as np
import tensorflow as tf

try:
    from benchmarks import _common
except ModuleNotFoundError:  # Run as a script: the benchmarks folder is on sys.path.
    import _common

import tf_lsh_ops  # noqa: E402  (after _common, which finds it)

BATCH = 128
DIM = 128
SEED = 0
BYTES_PER_FLOAT = 4
METHODS = ("op", "gather_einsum", "dense", "op_copy_on_read")
SHARED_METHODS = ("op", "gather_matmul")
PHASES = ("forward", "forward_backward")

# Grids and timing budgets: `reps` rounds at most, but a configuration stops after the round
# that exceeds `budget_s` seconds (at least `min_reps` rounds). `shared_configs` are the (N, K)
# of the shared_active_set section.
MODES = {
    "full": {
        "neurons": (10_000, 100_000, 670_000),
        "active": (64, 1024, 3000),
        "shared_configs": ((670_000, 3000), (100_000, 1024)),
        "warmup": 3,
        "reps": 15,
        "min_reps": 5,
        "budget_s": 60.0,
    },
    "quick": {
        "neurons": (10_000, 100_000),
        "active": (64, 1024),
        "shared_configs": ((100_000, 1024),),
        "warmup": 2,
        "reps": 5,
        "min_reps": 3,
        "budget_s": 4.0,
    },
}

# Targets: the op at least this much faster than gather+einsum (forward+backward) at this config,
# and faster than dense whenever K / N is at most this fraction.
TARGET_GATHER_CONFIG = (670_000, 3000)
TARGET_GATHER_SPEEDUP = 2.0
TARGET_DENSE_MAX_FRACTION = 0.05
# ... and the op's forward reads weight rows at least this fraction of the machine's copy
# bandwidth at TARGET_GATHER_CONFIG.
TARGET_BANDWIDTH_FRACTION = 0.5
CHECK_TOLERANCE = 1e-4


log = _common.make_logger("bench_sparse_gather_matmul")
configure_threads = _common.configure_threads
machine_info = _common.machine_info
materialise = _common.materialise
timed_call = _common.timed_call


def parse_args(argv):
    return _common.mode_parser(__doc__.splitlines()[0]).parse_args(argv)


# --- The methods: a forward function each, and its forward+backward by autodiff. ------------


def _with_gradients(forward):
    """Forward+backward of `forward(x, w, b, idx)`: returns outputs and d_x, d_w, d_b."""

    def forward_backward(x, w, b, idx, upstream):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = forward(x, w, b, idx)
        grads = tape.gradient(out, [x, w, b], output_gradients=upstream)
        return out, grads

    return tf.function(forward), tf.function(forward_backward)


def _op_forward(x, w, b, idx):
    return tf_lsh_ops.sparse_gather_matmul(x, w, b, idx)


def _gather_einsum_forward(x, w, b, idx):
    rows = tf.gather(w, idx)  # [B, K, D]
    return tf.einsum("bd,bkd->bk", x, rows) + tf.gather(b, idx)


def _dense_forward(x, w, b, idx):
    del idx  # Every neuron is computed.
    return tf.matmul(x, w, transpose_b=True) + b


def _gather_matmul_forward(x, w, b, idx):
    active = idx[0]  # One set of neurons for the whole batch.
    return tf.matmul(x, tf.gather(w, active), transpose_b=True) + tf.gather(b, active)


FORWARDS = {
    "op": _op_forward,
    "gather_einsum": _gather_einsum_forward,
    "dense": _dense_forward,
    "op_copy_on_read": _op_forward,
}
SHARED_FORWARDS = {"op": _op_forward, "gather_matmul": _gather_matmul_forward}


# --- Data and timing. -------------------------------------------------------------------------


def make_variables(weights, biases, copy_on_read):
    """A fresh (weights, biases) variable pair; optionally read sparsely once (copy-on-read)."""
    variables = (tf.Variable(weights, name="weights"), tf.Variable(biases, name="biases"))
    if copy_on_read:
        for variable in variables:
            tf.gather(variable, [0])  # Any sparse access switches the variable for good.
    return variables


def random_layer(neurons, rng):
    """Random (weights, biases) of a layer of `neurons` neurons, as NumPy arrays."""
    weights = rng.standard_normal((neurons, DIM), dtype=np.float32) * np.float32(DIM**-0.5)
    biases = rng.standard_normal(neurons, dtype=np.float32)
    return weights, biases


def make_data(neurons, active, rng):
    """Random inputs, per-method variables, indices and upstream gradients for one config."""
    weights, biases = random_layer(neurons, rng)
    return {
        "x": tf.constant(rng.standard_normal((BATCH, DIM), dtype=np.float32)),
        "variables": {
            method: make_variables(weights, biases, method == "op_copy_on_read")
            for method in METHODS
        },
        "idx": tf.constant(rng.integers(0, neurons, (BATCH, active), dtype=np.int32)),
        "upstream_sparse": tf.constant(rng.standard_normal((BATCH, active), dtype=np.float32)),
        "upstream_dense": tf.constant(rng.standard_normal((BATCH, neurons), dtype=np.float32)),
    }


def make_shared_data(neurons, active, rng):
    """As make_data, for one set of `active` distinct neurons shared by the batch ([1, K])."""
    weights, biases = random_layer(neurons, rng)
    return {
        "x": tf.constant(rng.standard_normal((BATCH, DIM), dtype=np.float32)),
        # A copy per method: gather_matmul's gathers switch its variables to copy-on-read.
        "variables": {
            method: make_variables(weights, biases, copy_on_read=False) for method in SHARED_METHODS
        },
        "idx": tf.constant(rng.choice(neurons, active, replace=False).astype(np.int32)[None]),
        "upstream_sparse": tf.constant(rng.standard_normal((BATCH, active), dtype=np.float32)),
    }


def call_args(method, phase, data):
    args = (data["x"], *data["variables"][method], data["idx"])
    if phase == "forward":
        return args
    upstream = data["upstream_dense" if method == "dense" else "upstream_sparse"]
    return args + (upstream,)


def call_overhead_s(reps=200):
    """Median time of calling a trivial tf.function on a [B, D] tensor, for scale."""
    fn = tf.function(lambda x: x + 1.0)
    x = tf.zeros([BATCH, DIM])
    materialise(fn(x))
    return statistics.median(timed_call(fn, (x,)) for _ in range(reps))


def build_functions(data, forwards=FORWARDS):
    """Traces every (method, phase) tf.function once; returns {(method, phase): fn}."""
    functions = {}
    for method, forward in forwards.items():
        for phase, fn in zip(PHASES, _with_gradients(forward), strict=True):
            fn.get_concrete_function(*call_args(method, phase, data))
            functions[(method, phase)] = fn
    return functions


def time_round_robin(functions, data, settings):
    """Warms up, then times all functions in turn; returns {(method, phase): [seconds]}."""
    jobs = {key: (fn, call_args(key[0], key[1], data)) for key, fn in functions.items()}
    times = _common.time_round_robin(
        jobs, **{key: settings[key] for key in ("warmup", "reps", "min_reps", "budget_s")}
    )
    for key, fn in functions.items():
        if fn.experimental_get_tracing_count() != 1:
            raise RuntimeError(f"{key} was retraced during timing")
    return times


# --- Correctness check (outside the timed region). ------------------------------------------


def _relative_error(actual, expected):
    actual, expected = tf.convert_to_tensor(actual), tf.convert_to_tensor(expected)
    scale = max(1.0, float(tf.reduce_max(tf.abs(expected))))
    return float(tf.reduce_max(tf.abs(actual - expected))) / scale


def _forward_backward(functions, method, data):
    return functions[(method, "forward_backward")](*call_args(method, "forward_backward", data))


def check_op(functions, data):
    """Max relative errors of the op against gather+einsum (and dense forward outputs)."""
    op_out, op_grads = _forward_backward(functions, "op", data)
    ref_out, ref_grads = _forward_backward(functions, "gather_einsum", data)
    dense_out = functions[("dense", "forward")](*call_args("dense", "forward", data))
    forward_errors = {
        "forward_vs_gather_einsum": _relative_error(op_out, ref_out),
        "forward_vs_dense": _relative_error(
            op_out, tf.gather(dense_out, data["idx"], batch_dims=1)
        ),
    }
    return _check_report(forward_errors, op_grads, ref_grads)


def check_shared(functions, data):
    """Max relative errors of the op against gather_matmul, for a shared active set."""
    op_out, op_grads = _forward_backward(functions, "op", data)
    ref_out, ref_grads = _forward_backward(functions, "gather_matmul", data)
    forward_errors = {"forward_vs_gather_matmul": _relative_error(op_out, ref_out)}
    return _check_report(forward_errors, op_grads, ref_grads)


def _check_report(forward_errors, op_grads, ref_grads):
    """The forward errors, the gradients' errors and `ok` (all within CHECK_TOLERANCE)."""
    errors = {
        **forward_errors,
        "d_inputs": _relative_error(op_grads[0], ref_grads[0]),
        # Densified here only, for the comparison; never in the timed functions.
        "d_weights": _relative_error(op_grads[1], ref_grads[1]),
        "d_biases": _relative_error(op_grads[2], ref_grads[2]),
        "gradients_are_indexed_slices": all(
            isinstance(g, tf.IndexedSlices) for g in op_grads[1:] + ref_grads[1:]
        ),
    }
    errors["ok"] = errors["gradients_are_indexed_slices"] and all(
        value <= CHECK_TOLERANCE for value in errors.values() if isinstance(value, float)
    )
    return errors


# --- Reporting. -------------------------------------------------------------------------------


def summarise(times, active, unique_rows):
    medians = {
        method: {phase: statistics.median(times[(method, phase)]) for phase in PHASES}
        for method in METHODS
    }
    op = medians["op"]
    speedup = {
        f"vs_{other}": {phase: medians[other][phase] / op[phase] for phase in PHASES}
        for other in ("gather_einsum", "dense")
    }
    row_bytes = DIM * BYTES_PER_FLOAT
    forward_bytes = BATCH * active * row_bytes
    backward_bytes = 2 * forward_bytes + unique_rows * row_bytes
    return {
        "median_s": medians,
        "speedup": speedup,
        "op_weight_bandwidth_gb_s": {
            "forward": forward_bytes / op["forward"] / 1e9,
            "forward_backward": backward_bytes / op["forward_backward"] / 1e9,
        },
        "op_weight_bytes": {"forward": forward_bytes, "forward_backward": backward_bytes},
        "op_copy_on_read_slowdown": {
            phase: medians["op_copy_on_read"][phase] / op[phase] for phase in PHASES
        },
        "reps": len(times[("op", "forward")]),
    }


def run_config(neurons, active, settings, rng):
    data = make_data(neurons, active, rng)
    unique_rows = int(np.unique(data["idx"].numpy()).size)
    functions = build_functions(data)
    check = check_op(functions, data)
    times = time_round_robin(functions, data, settings)
    result = {
        "N": neurons,
        "K": active,
        "active_fraction": active / neurons,
        "unique_rows": unique_rows,
        **summarise(times, active, unique_rows),
        "check": check,
    }
    return result


def run_shared_config(neurons, active, settings, rng):
    data = make_shared_data(neurons, active, rng)
    functions = build_functions(data, SHARED_FORWARDS)
    check = check_shared(functions, data)
    times = time_round_robin(functions, data, settings)
    medians = {
        method: {phase: statistics.median(times[(method, phase)]) for phase in PHASES}
        for method in SHARED_METHODS
    }
    return {
        "N": neurons,
        "K": active,
        "median_s": medians,
        "speedup_vs_gather_matmul": {
            phase: medians["gather_matmul"][phase] / medians["op"][phase] for phase in PHASES
        },
        "check": check,
    }


def evaluate_bandwidth_target(results, copy_gb_s):
    target = {
        "description": (
            f"op forward reads weight rows at >= {TARGET_BANDWIDTH_FRACTION:.0%} of the "
            f"machine's copy bandwidth at N={TARGET_GATHER_CONFIG[0]}, K={TARGET_GATHER_CONFIG[1]}"
        ),
        "copy_gb_s": copy_gb_s,
        "fraction": None,
        "status": "not_measured",
    }
    for r in results:
        if (r["N"], r["K"]) == TARGET_GATHER_CONFIG:
            target["fraction"] = r["op_weight_bandwidth_gb_s"]["forward"] / copy_gb_s
            target["status"] = "pass" if target["fraction"] >= TARGET_BANDWIDTH_FRACTION else "fail"
    return target


def evaluate_targets(results):
    by_config = {(r["N"], r["K"]): r for r in results}
    n_target, k_target = TARGET_GATHER_CONFIG
    target = by_config.get(TARGET_GATHER_CONFIG)
    gather_target = {
        "description": (
            f"op >= {TARGET_GATHER_SPEEDUP:g}x faster than gather_einsum, forward+backward, "
            f"at N={n_target}, K={k_target}"
        ),
        "speedup": None,
        "status": "not_measured",
    }
    if target is not None:
        speedup = target["speedup"]["vs_gather_einsum"]["forward_backward"]
        gather_target["speedup"] = speedup
        gather_target["status"] = "pass" if speedup >= TARGET_GATHER_SPEEDUP else "fail"

    dense_configs = []
    for r in results:
        if r["active_fraction"] > TARGET_DENSE_MAX_FRACTION:
            continue
        speedup = r["speedup"]["vs_dense"]
        passed = all(speedup[phase] > 1.0 for phase in PHASES)
        dense_configs.append(
            {"N": r["N"], "K": r["K"], "speedup": speedup, "status": "pass" if passed else "fail"}
        )
    dense_target = {
        "description": (
            f"op faster than dense (forward and forward+backward) whenever "
            f"K/N <= {TARGET_DENSE_MAX_FRACTION:.0%}"
        ),
        "configs": dense_configs,
        "status": "pass" if all(c["status"] == "pass" for c in dense_configs) else "fail",
    }
    all_pass = gather_target["status"] == "pass" and dense_target["status"] == "pass"
    return {
        "op_vs_gather_einsum": gather_target,
        "op_vs_dense": dense_target,
        "all_pass": all_pass,
    }


def progress_line(result):
    """One stderr line: each method's forward and forward+backward medians, and the check."""
    parts = [
        f"{method} {times['forward'] * 1e3:.2f}/{times['forward_backward'] * 1e3:.2f} ms"
        for method, times in result["median_s"].items()
    ]
    return f"  fwd/fwd+bwd: {', '.join(parts)}; check ok={result['check']['ok']}"


def main(argv=None):
    args = parse_args(argv)
    configure_threads(args.threads)
    settings = MODES[args.mode]
    rng = np.random.default_rng(SEED)
    configs = [(n, k) for n in settings["neurons"] for k in settings["active"] if k <= n]

    results = []
    start = time.perf_counter()
    # The copy bandwidth drifts with this shared machine's load (32-42 GB/s within an hour):
    # measured before and after the configs, and the higher taken, so that a slow stretch
    # cannot make the op look close to it.
    copy_samples_gb_s = [_common.copy_bandwidth_gb_s()]
    for neurons, active in configs:
        log(f"N={neurons} K={active} ...")
        result = run_config(neurons, active, settings, rng)
        log(progress_line(result))
        results.append(result)

    shared_results = []
    for neurons, active in settings["shared_configs"]:
        log(f"shared active set: N={neurons} K={active} ...")
        result = run_shared_config(neurons, active, settings, rng)
        log(progress_line(result))
        shared_results.append(result)

    targets = evaluate_targets(results)
    copy_samples_gb_s.append(_common.copy_bandwidth_gb_s())
    copy_gb_s = max(copy_samples_gb_s)
    targets["op_bandwidth"] = evaluate_bandwidth_target(results, copy_gb_s)
    targets["all_pass"] = targets["all_pass"] and targets["op_bandwidth"]["status"] != "fail"
    report = {
        "benchmark": "sparse_gather_matmul",
        "mode": args.mode,
        "machine": machine_info(),
        "settings": {
            "B": BATCH,
            "D": DIM,
            "seed": SEED,
            "threads_flag": args.threads,
            "configs": [list(c) for c in configs],
            "shared_configs": [list(c) for c in settings["shared_configs"]],
            **{key: settings[key] for key in ("warmup", "reps", "min_reps", "budget_s")},
        },
        "results": results,
        "shared_active_set": shared_results,
        "tf_function_call_overhead_s": call_overhead_s(),
        "copy_bandwidth_gb_s": copy_gb_s,
        "copy_bandwidth_samples_gb_s": copy_samples_gb_s,  # before and after the configs
        # How far memory-bound work can scale with threads on this machine.
        "copy_bandwidth_one_thread_gb_s": _common.copy_bandwidth_gb_s(threads=1),
        "targets": targets,
        "all_checks_ok": all(r["check"]["ok"] for r in results + shared_results),
        "total_wall_s": time.perf_counter() - start,
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return report


if __name__ == "__main__":
    main()
