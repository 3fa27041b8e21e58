"""Helpers shared by the benchmark scripts: arguments, machine info, timing, memory.

Timing follows `bench_sparse_gather_matmul.py`: functions are warmed up, then timed in turn
(round-robin, so that background load affects all of them alike) with `time.perf_counter`, every
returned tensor being resolved with `memoryview` (zero-copy on CPU) inside the timed region; the
median is reported.
"""

import argparse
import concurrent.futures
import contextlib
import gc
import os
import platform
import sys
import time

import numpy as np
import tensorflow as tf

# The installed tf-lsh, with its built op library, if there is one; else this checkout's (the
# benchmarks import this module before tf_lsh_ops and keras_layers).
try:
    import tf_lsh_ops  # noqa: F401
except ModuleNotFoundError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_logger(name):
    """A function that prints `[name] message` to stderr."""

    def log(message):
        print(f"[{name}] {message}", file=sys.stderr, flush=True)

    return log


def mode_parser(description):
    """An argument parser with --quick / --full (default full) and --threads."""
    parser = argparse.ArgumentParser(description=description)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", dest="mode", action="store_const", const="quick")
    mode.add_argument("--full", dest="mode", action="store_const", const="full")
    parser.set_defaults(mode="full")
    parser.add_argument("--threads", type=int, default=None, help="intra/inter op threads")
    return parser


def configure_threads(threads):
    """Sets TF's thread pools; must run before any TF op."""
    if threads is not None:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def meminfo_bytes(field):
    """A field of /proc/meminfo (e.g. "MemAvailable") in bytes, or None where unavailable."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                name, value = line.split(":", 1)
                if name == field:
                    return int(value.split()[0]) * 1024
    except OSError:
        pass
    return None


def machine_info():
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads(),
        "memory_total_bytes": meminfo_bytes("MemTotal"),
    }


def materialise(result):
    """Blocks until every output (including IndexedSlices parts) is computed, without copying."""
    for tensor in tf.nest.flatten(result, expand_composites=True):
        memoryview(tensor)
    return result


def timed_call(fn, args=()):
    start = time.perf_counter()
    materialise(fn(*args))
    return time.perf_counter() - start


@contextlib.contextmanager
def gc_paused():
    """Collects, then keeps Python's garbage collector off (as `timeit` does).

    A full collection walks every object TensorFlow and Keras created (milliseconds); left on,
    it lands at random inside timed calls and adds the same noise to every method.
    """
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def time_round_robin(jobs, *, warmup, reps, min_reps=1, budget_s=float("inf")):
    """Times `jobs` ({name: (fn, args)}) in turn; returns {name: [seconds]}.

    Each job is warmed up `warmup` times; then up to `reps` rounds run, stopping after the round
    that exceeds `budget_s` seconds (once at least `min_reps` rounds ran). The garbage collector
    is paused while timing (`gc_paused`).
    """
    for fn, args in jobs.values():
        for _ in range(warmup):
            materialise(fn(*args))
    times = {name: [] for name in jobs}
    with gc_paused():
        start = time.perf_counter()
        for rep in range(reps):
            for name, (fn, args) in jobs.items():
                times[name].append(timed_call(fn, args))
            if rep + 1 >= min_reps and time.perf_counter() - start > budget_s:
                break
    return times


def copy_bandwidth_gb_s(megabytes=512, threads=None, reps=5):
    """The machine's memory-copy bandwidth, counted as STREAM's Copy does (bytes read + written).

    NumPy copies `megabytes` (far beyond the caches) split over `threads` Python threads (NumPy
    releases the GIL while copying; default: every core); the best of `reps` runs.
    """
    threads = threads or os.cpu_count()
    count = megabytes * 2**20 // 4
    source = np.ones(count, np.float32)
    target = np.empty_like(source)
    bounds = np.linspace(0, count, threads + 1).astype(int)
    parts = [(target[a:b], source[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    np.copyto(target, source)  # first touch outside the timing
    best = float("inf")
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for _ in range(reps):
            start = time.perf_counter()
            list(pool.map(lambda part: np.copyto(*part), parts))
            best = min(best, time.perf_counter() - start)
    return 2 * source.nbytes / best / 1e9
