"""Benchmark of the LSH ops (`tf_lsh_ops.lsh`): table build, update and query costs, and recall.

For an output layer of N neurons of width D = 128 (Amazon-670K's: N = 670,091; N = 100,000 with
--quick) with random Gaussian weights, two table settings are measured:

* `default`: SimHash (`"srp"`) with MIPS, K = 9 bits, L = 50 tables, capacity 128.
* `slide`: SLIDE's: densified WTA (`"dwta"`), K = 6 hashes of bin size 8 (18 bits), L = 50,
  capacity 128. Its tables take L * 2^18 * 128 * 4 bytes = 6.7 GB; a setting whose peak (two
  copies of the tables, as during an update) would exceed half the available memory is run with
  capacity 32 instead, and the skipped capacity is reported with the memory it needs.

Parts of the report:

* `build`: per setting, `hash_s` (`lsh_hash` of the [N, D] weights; for SimHash including the
  max norm for MIPS), `build_s` (`build_tables` from those codes), and an incremental rebuild
  after 5% of the neurons (random) moved by a small step: `rehash_s` (`lsh_hash` of their new
  weights) and `update_s` (`update_tables`). Called eagerly, `update_tables` cannot update its
  inputs in place (Python still holds them), so it copies the tables first: `update_empty_s`
  (the same call with no neurons) is that copy, and `update_incremental_s` the difference;
  `fingerprints_s` (`row_fingerprints` of the [N, D] weights) is what `HashTables.refresh`
  reads to find the neurons that moved, so a refresh costs about fingerprints_s + rehash_s +
  update_s against hash_s + build_s for a full rebuild. Also:
  the first (cold) build time, the build time with `overflow="reservoir"`, the fraction of
  (neuron, table) entries the buckets hold (`stored_fraction`, < 1 when buckets overflow), the
  fraction of neurons in at least one table (`coverage`, with the default FIFO overflow and
  with reservoir sampling) and, for SimHash, the time of the plain `tf.matmul` of the weights by
  the projections, a reference for the hashing cost.
* `query`: for B = 128 Gaussian queries and k = 5% of N and k = 3000: `lsh_hash` of the queries
  (`hash_queries_s`) and `query_tables` (rule "frequency", without / with `fill_random`),
  against the exact `tf.math.top_k(tf.matmul(queries, weights, transpose_b=True), k)` over all N
  (`exact_s`); `speedup_vs_exact` = exact_s / (hash_queries_s + query_s). Also recall@k (below)
  of these active sets.
* `recall`: recall@k = the fraction of each query's exact top-10 inner products that its active
  set contains, averaged over the batch, at k = 5% of N, for a grid of (variant, K, L) over "srp"
  (with MIPS), "srp_cosine" (SimHash without MIPS, for comparison), "wta" and "dwta" (bin size
  8), at a smaller N (50,000; 20,000 with --quick), on
  two data sets: `gaussian` (i.i.d. Gaussian weights and queries) and `clustered` ("trained-
  like": each neuron is a noisy copy of one of N / 50 random centres, scaled to a power-law
  norm; each query is a ReLU of a noisy centre, as a hidden layer's output). `recall` uses
  `fill_random=True` (exactly k ids, as a layer uses them), `recall_lsh` only the ids the tables
  found (`lsh_fraction` of k); the random baseline is k / N. Grid tables have capacity 128,
  halved until they fit in 256 MiB (reported per row), and each point is built with both
  overflow policies ("fifo", the default, and "reservoir"), with their `coverage`.
* `memory`: table bytes (`table_ids` + `table_counts`) of each setting, run or skipped.

Each timed function is warmed up (build parts: the first call, kept), then timed round-robin
with `time.perf_counter`, outputs resolved with `memoryview`; medians are reported. Other
processes may share the CPUs, so timings can be noisy.

Usage: python benchmarks/bench_lsh.py [--quick | --full] [--threads N]
Prints one JSON document to stdout; progress goes to stderr.
"""

import dataclasses
import gc
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

DIM = 128
BATCH = 128
SEED = 0
TOP = 10
ACTIVE_FRACTION = 0.05
FIXED_ACTIVE = 3000
AMAZON_670K = 670_091
BYTES_PER_INT = 4
SIMHASH_FAMILIES = ("srp", "sparse_srp")

# Incremental update: this fraction of the neurons moves by UPDATE_STEP times their typical
# coordinate scale (1 / sqrt(D)) per coordinate.
UPDATE_FRACTION = 0.05
UPDATE_STEP = 0.1

TABLE_SETTINGS = {
    "default": {"family": "srp", "num_hashes": 9, "num_tables": 50, "capacity": 128},
    "slide": {
        "family": "dwta",
        "num_hashes": 6,
        "bin_size": 8,
        "num_tables": 50,
        "capacity": 128,
    },
}
FALLBACK_CAPACITY = 32
MEMORY_FRACTION = 0.5  # A setting runs if twice its tables fit in this part of MemAvailable.

GRID_CAPACITY = 128
GRID_TABLE_BUDGET_BYTES = 256 * 2**20
GRID_BIN_SIZE = 8
# Hash variants of the recall grid: "srp_cosine" is SimHash without the MIPS transform.
GRID_VARIANTS = {
    "srp": {"family": "srp"},
    "srp_cosine": {"family": "srp", "mips": False},
    "wta": {"family": "wta"},
    "dwta": {"family": "dwta"},
}

# Clustered data: neurons per centre, noise relative to a centre, Pareto shape of the norms.
CLUSTER_SIZE = 50
CLUSTER_NOISE = 0.5
NORM_PARETO_SHAPE = 3.0

MODES = {
    "full": {
        "build_neurons": AMAZON_670K,
        "grid_neurons": 50_000,
        "grid_hashes": {
            "srp": (6, 9, 12, 15),
            "srp_cosine": (6, 9, 12, 15),
            "wta": (2, 3, 4, 6),
            "dwta": (2, 3, 4, 6),
        },
        "grid_tables": (10, 25, 50, 100),
        "build_reps": 3,
        "warmup": 2,
        "reps": 10,
        "min_reps": 3,
        "budget_s": 60.0,
    },
    "quick": {
        "build_neurons": 100_000,
        "grid_neurons": 20_000,
        "grid_hashes": {"srp": (9,), "srp_cosine": (9,), "wta": (3,), "dwta": (3,)},
        "grid_tables": (10, 50),
        "build_reps": 2,
        "warmup": 1,
        "reps": 5,
        "min_reps": 2,
        "budget_s": 3.0,
    },
}

log = _common.make_logger("bench_lsh")


# --- Hashing and table helpers. ---------------------------------------------------------------


def is_simhash(setting):
    return setting["family"] in SIMHASH_FAMILIES


def uses_mips(setting):
    """SimHash uses the MIPS transform unless the setting says `"mips": False`."""
    return is_simhash(setting) and setting.get("mips", True)


def setting_bits(setting):
    return tf_lsh_ops.bucket_bits(
        setting["family"], setting["num_hashes"], setting.get("bin_size", GRID_BIN_SIZE)
    )


def table_bytes(num_tables, bits, capacity):
    """Bytes of `table_ids` [L, 2^bits, capacity] plus `table_counts` [L, 2^bits]."""
    return num_tables * 2**bits * (capacity + 1) * BYTES_PER_INT


def make_params(setting):
    return tf_lsh_ops.hash_params(
        setting["family"],
        dim=DIM,
        num_tables=setting["num_tables"],
        num_hashes=setting["num_hashes"],
        bin_size=setting.get("bin_size", GRID_BIN_SIZE),
        mips=uses_mips(setting),
        seed=SEED,
    )


def _hash_attrs(setting):
    return {
        "family": setting["family"],
        "num_tables": setting["num_tables"],
        "num_hashes": setting["num_hashes"],
    }


def max_row_norm(weights):
    return tf.reduce_max(tf.norm(weights, axis=1))


def hash_neurons(weights, params, setting, max_norm=None):
    """Bucket ids of the neurons; with MIPS, `max_norm` is computed if None."""
    if not uses_mips(setting):
        return tf_lsh_ops.lsh_hash(weights, params, **_hash_attrs(setting))
    if max_norm is None:
        max_norm = max_row_norm(weights)
    return tf_lsh_ops.lsh_hash(
        weights, params, mips="data", max_norm=max_norm, **_hash_attrs(setting)
    )


def hash_queries(queries, params, setting):
    mips = "query" if uses_mips(setting) else "none"
    return tf_lsh_ops.lsh_hash(queries, params, mips=mips, **_hash_attrs(setting))


def stored_fraction(counts, capacity, neurons):
    """Fraction of (neuron, table) entries the buckets hold (overflow drops the rest)."""
    num_tables = counts.shape[0]
    stored = tf.reduce_sum(tf.cast(tf.minimum(counts, capacity), tf.float64))
    return float(stored) / (neurons * num_tables)


def coverage(table_ids, neurons):
    """Fraction of the neurons held by at least one table (one table at a time, for memory)."""
    covered = np.zeros(neurons, bool)
    for table in range(table_ids.shape[0]):
        stored = table_ids[table].numpy().ravel()
        covered[stored[stored >= 0]] = True
    return float(covered.mean())


def recall_at_k(active, top):
    """Mean over rows of the fraction of `top[r]` (exact top ids) found in `active[r]`."""
    active, top = np.asarray(active), np.asarray(top)
    return float(np.mean([np.isin(t, a).mean() for t, a in zip(top, active, strict=True)]))


def lsh_fraction(active):
    """Mean fraction of the k slots that the tables filled (the rest is -1)."""
    return float(np.mean(np.asarray(active) >= 0))


def memory_entry(setting, capacity, neurons, run):
    bits = setting_bits(setting)
    total = table_bytes(setting["num_tables"], bits, capacity)
    return {
        "capacity": capacity,
        "table_bytes": total,
        "table_gib": total / 2**30,
        "mean_neurons_per_bucket": neurons / 2**bits,
        "run": run,
    }


# --- Data. -------------------------------------------------------------------------------------


def gaussian_data(neurons, rng):
    """Weights with i.i.d. N(0, 1/D) entries (a fresh layer) and N(0, 1) queries."""
    weights = rng.standard_normal((neurons, DIM), dtype=np.float32) * np.float32(DIM**-0.5)
    queries = rng.standard_normal((BATCH, DIM), dtype=np.float32)
    return weights, queries, {}


def clustered_data(neurons, rng):
    """Trained-like weights: noisy copies of centres with power-law norms; ReLU queries.

    Returns (weights, queries, {"top10_in_query_cluster": fraction of the exact top-10 ids in
    the query's own cluster}).
    """
    centres = rng.standard_normal((max(1, neurons // CLUSTER_SIZE), DIM)).astype(np.float32)
    assign = rng.integers(0, len(centres), neurons)
    directions = centres[assign] + CLUSTER_NOISE * rng.standard_normal((neurons, DIM))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    norms = 1.0 + rng.pareto(NORM_PARETO_SHAPE, neurons)
    weights = (directions * norms[:, None] * DIM**-0.5).astype(np.float32)
    query_assign = rng.integers(0, len(centres), BATCH)
    noisy = centres[query_assign] + CLUSTER_NOISE * rng.standard_normal((BATCH, DIM))
    queries = np.maximum(noisy, 0.0).astype(np.float32)
    top = exact_top(tf.constant(queries), tf.constant(weights), TOP)
    in_cluster = float(np.mean(assign[top] == query_assign[:, None]))
    return weights, queries, {"top10_in_query_cluster": in_cluster}


DATASETS = {"gaussian": gaussian_data, "clustered": clustered_data}


def exact_top(queries, weights, k):
    return tf.math.top_k(tf.matmul(queries, weights, transpose_b=True), k).indices.numpy()


# --- Build, update and query at the layer's size. ---------------------------------------------


@dataclasses.dataclass
class Tables:
    """A built setting, kept for the query part."""

    setting: dict
    params: tf.Tensor
    ids: tf.Tensor
    counts: tf.Tensor


def choose_capacity(setting, neurons):
    """(capacity to run, or None; memory entries of the capacities skipped for memory)."""
    available = _common.meminfo_bytes("MemAvailable")
    skipped = []
    for capacity in (setting["capacity"], FALLBACK_CAPACITY):
        entry = memory_entry(setting, capacity, neurons, run=False)
        peak = 2 * entry["table_bytes"]
        if available is None or peak <= MEMORY_FRACTION * available:
            return capacity, skipped
        entry["skipped_reason"] = (
            f"peak {peak / 2**30:.1f} GiB (two copies of the tables, as during an update) > "
            f"{MEMORY_FRACTION:.0%} of MemAvailable {available / 2**30:.1f} GiB"
        )
        skipped.append(entry)
    return None, skipped


def update_inputs(weights, codes, rng):
    """Random UPDATE_FRACTION of neurons, their old codes, and their moved weights."""
    neurons = int(weights.shape[0])
    count = max(1, round(UPDATE_FRACTION * neurons))
    ids = np.sort(rng.choice(neurons, count, replace=False)).astype(np.int32)
    step = UPDATE_STEP * DIM**-0.5 * rng.standard_normal((count, DIM), dtype=np.float32)
    ids = tf.constant(ids)
    return ids, tf.gather(codes, ids), tf.gather(weights, ids) + step


def time_update(tables, weights, codes, max_norm, settings, rng):
    """Times rehashing 5% moved neurons and `update_tables` (and its copy-only floor)."""
    ids, old_codes, moved = update_inputs(weights, codes, rng)
    setting = tables.setting

    def rehash():
        return hash_neurons(moved, tables.params, setting, max_norm=max_norm)

    new_codes = rehash()

    def update(count):
        return tf_lsh_ops.update_tables(
            tables.ids, tables.counts, ids[:count], old_codes[:count], new_codes[:count], seed=1
        )

    times = _common.time_round_robin(
        {
            "rehash": (rehash, ()),
            "update": (update, (int(ids.shape[0]),)),
            "update_empty": (update, (0,)),
            "fingerprints": (tf_lsh_ops.row_fingerprints, (weights,)),
        },
        warmup=1,
        reps=settings["build_reps"],
    )
    medians = {name: statistics.median(t) for name, t in times.items()}
    return {
        "updated_neurons": int(ids.shape[0]),
        "changed_code_fraction": float(tf.reduce_mean(tf.cast(old_codes != new_codes, tf.float32))),
        "rehash_s": medians["rehash"],
        "update_s": medians["update"],
        "update_empty_s": medians["update_empty"],
        "update_incremental_s": medians["update"] - medians["update_empty"],
        "fingerprints_s": medians["fingerprints"],
    }


def projection_matmul_s(weights, params, settings):
    """Median time of `weights @ projections`: the arithmetic of SimHash as one matmul."""
    projections = params[:DIM]
    fn = tf.function(lambda w, p: tf.matmul(w, p))
    times = _common.time_round_robin(
        {"matmul": (fn, (weights, projections))}, warmup=1, reps=settings["build_reps"]
    )
    return statistics.median(times["matmul"])


def build_setting(setting, capacity, weights, settings, rng):
    """Hashes and builds one setting (timed); returns (its report entry, its Tables)."""
    neurons = int(weights.shape[0])
    bits = setting_bits(setting)
    params = make_params(setting)

    def hash_all():
        return hash_neurons(weights, params, setting)

    def build(codes, overflow):
        return tf_lsh_ops.build_tables(
            codes, bucket_bits=bits, capacity=capacity, overflow=overflow, seed=SEED
        )

    cold_hash_s = _common.timed_call(hash_all)
    codes = hash_all()
    start = time.perf_counter()
    ids, counts = _common.materialise(build(codes, "fifo"))
    cold_build_s = time.perf_counter() - start
    reservoir_coverage = coverage(build(codes, "reservoir")[0], neurons)
    jobs = {
        "hash": (hash_all, ()),
        "build": (build, (codes, "fifo")),
        "build_reservoir": (build, (codes, "reservoir")),
    }
    times = _common.time_round_robin(jobs, warmup=0, reps=settings["build_reps"])
    tables = Tables(setting, params, ids, counts)
    max_norm = max_row_norm(weights) if uses_mips(setting) else None
    entry = {
        "bucket_bits": bits,
        "capacity": capacity,
        "hash_s": statistics.median(times["hash"]),
        "build_s": statistics.median(times["build"]),
        "build_reservoir_s": statistics.median(times["build_reservoir"]),
        "hash_cold_s": cold_hash_s,
        "build_cold_s": cold_build_s,
        "stored_fraction": stored_fraction(counts, capacity, neurons),
        "coverage": coverage(ids, neurons),
        "coverage_reservoir": reservoir_coverage,
        **time_update(tables, weights, codes, max_norm, settings, rng),
    }
    if is_simhash(setting):
        entry["reference_projection_matmul_s"] = projection_matmul_s(weights, params, settings)
    return entry, tables


def run_build(weights, settings, rng):
    """Builds every table setting that fits; returns (build report, memory report, tables)."""
    neurons = int(weights.shape[0])
    report, memory, built = {}, {}, {}
    for name, setting in TABLE_SETTINGS.items():
        capacity, skipped = choose_capacity(setting, neurons)
        memory[name] = skipped + (
            [memory_entry(setting, capacity, neurons, run=True)] if capacity else []
        )
        report[name] = {**setting, "skipped_capacities": [e["capacity"] for e in skipped]}
        if capacity is None:
            log(f"  {name}: skipped, tables too large for the available memory")
            continue
        log(f"  {name}: {setting}, capacity {capacity} ...")
        entry, built[name] = build_setting(setting, capacity, weights, settings, rng)
        report[name].update(entry)
        log(
            f"    hash {entry['hash_s']:.3f} s, build {entry['build_s']:.3f} s, "
            f"update {entry['update_s']:.3f} s (copy {entry['update_empty_s']:.3f} s)"
        )
    return report, memory, built


def query_jobs(tables, queries, k, neurons):
    """{name: (fn, args)} timing one setting's query hashing and table lookups."""
    setting = tables.setting
    hash_fn = tf.function(lambda q: hash_queries(q, tables.params, setting))
    codes = hash_fn(queries)

    def lookup(fill_random):
        return tf.function(
            lambda c, ids, counts: tf_lsh_ops.query_tables(
                c, ids, counts, k=k, num_neurons=neurons, fill_random=fill_random, seed=SEED
            )
        )

    table_args = (codes, tables.ids, tables.counts)
    return {
        "hash_queries": (hash_fn, (queries,)),
        "query": (lookup(False), table_args),
        "query_fill": (lookup(True), table_args),
    }


def call_job(job):
    fn, args = job
    return fn(*args)


def run_query(weights, queries, built, k, settings):
    """Times every built setting's query against the exact top-k over all neurons."""
    neurons = int(weights.shape[0])
    exact_fn = tf.function(lambda q, w: tf.math.top_k(tf.matmul(q, w, transpose_b=True), k))
    jobs = {"exact": (exact_fn, (queries, weights))}
    for name, tables in built.items():
        for part, job in query_jobs(tables, queries, k, neurons).items():
            jobs[(name, part)] = job
    keys = ("warmup", "reps", "min_reps", "budget_s")
    times = _common.time_round_robin(jobs, **{key: settings[key] for key in keys})
    median = {key: statistics.median(t) for key, t in times.items()}
    top = exact_fn(queries, weights).indices[:, :TOP].numpy()
    result = {"k": k, "active_fraction": k / neurons, "exact_s": median["exact"]}
    for name in built:
        total = median[(name, "hash_queries")] + median[(name, "query")]
        active = call_job(jobs[(name, "query")])
        filled = call_job(jobs[(name, "query_fill")])
        result[name] = {
            "hash_queries_s": median[(name, "hash_queries")],
            "query_s": median[(name, "query")],
            "query_fill_s": median[(name, "query_fill")],
            "total_s": total,
            "speedup_vs_exact": median["exact"] / total,
            "recall": recall_at_k(filled, top),
            "recall_lsh": recall_at_k(active, top),
            "lsh_fraction": lsh_fraction(active),
        }
    result["reps"] = len(times["exact"])
    return result


# --- Recall grid. ------------------------------------------------------------------------------


def grid_capacity(num_tables, bits):
    """GRID_CAPACITY, halved until the tables fit in GRID_TABLE_BUDGET_BYTES."""
    capacity = GRID_CAPACITY
    while capacity > 1 and table_bytes(num_tables, bits, capacity) > GRID_TABLE_BUDGET_BYTES:
        capacity //= 2
    return capacity


def policy_recall(codes, query_codes, top, bits, capacity, overflow, k):
    """Coverage and recall of tables built from `codes` with one overflow policy."""
    neurons = int(codes.shape[0])
    ids, counts = tf_lsh_ops.build_tables(
        codes, bucket_bits=bits, capacity=capacity, overflow=overflow, seed=SEED
    )
    args = (query_codes, ids, counts)
    active = tf_lsh_ops.query_tables(*args, k=k, num_neurons=neurons)
    filled = tf_lsh_ops.query_tables(*args, k=k, num_neurons=neurons, fill_random=True, seed=SEED)
    return {
        "coverage": coverage(ids, neurons),
        "recall": recall_at_k(filled, top),
        "recall_lsh": recall_at_k(active, top),
        "lsh_fraction": lsh_fraction(active),
    }, stored_fraction(counts, capacity, neurons)


def grid_point(codes, query_codes, top, num_tables, bits, k):
    """Recall of the first `num_tables` tables of precomputed codes, per overflow policy."""
    capacity = grid_capacity(num_tables, bits)
    point = {"L": num_tables, "capacity": capacity}
    for overflow in tf_lsh_ops.OVERFLOW_POLICIES:
        point[overflow], point["stored_fraction"] = policy_recall(
            codes[:, :num_tables], query_codes[:, :num_tables], top, bits, capacity, overflow, k
        )
    return point


def grid_variant(weights, queries, top, variant, num_hashes, settings, k):
    """Recall rows of one (variant, K) for every L of the grid (tables hashed once, sliced)."""
    max_tables = max(settings["grid_tables"])
    setting = {**GRID_VARIANTS[variant], "num_hashes": num_hashes, "num_tables": max_tables}
    params = make_params(setting)
    codes = hash_neurons(weights, params, setting)
    query_codes = hash_queries(queries, params, setting)
    bits = setting_bits(setting)
    rows = []
    for num_tables in settings["grid_tables"]:
        point = grid_point(codes, query_codes, top, num_tables, bits, k)
        rows.append({"variant": variant, "K": num_hashes, "bucket_bits": bits, **point})
    return rows


def best_rows(rows):
    """Per variant and overflow policy, the (K, L) of highest recall_lsh and its figures."""
    best = {}
    for row in rows:
        for overflow in tf_lsh_ops.OVERFLOW_POLICIES:
            candidate = {key: row[key] for key in ("K", "L", "capacity")} | row[overflow]
            current = best.setdefault(row["variant"], {}).get(overflow)
            if current is None or candidate["recall_lsh"] > current["recall_lsh"]:
                best[row["variant"]][overflow] = candidate
    return best


def run_recall_grid(settings, rng):
    neurons = settings["grid_neurons"]
    k = round(ACTIVE_FRACTION * neurons)
    report = {"N": neurons, "k": k, "top": TOP, "random_baseline": k / neurons, "datasets": {}}
    for name, make_data in DATASETS.items():
        weights, queries, info = make_data(neurons, rng)
        norms = np.linalg.norm(weights, axis=1)
        info["norm_max_over_median"] = float(norms.max() / np.median(norms))
        weights, queries = tf.constant(weights), tf.constant(queries)
        top = exact_top(queries, weights, TOP)
        rows = []
        for variant, hashes in settings["grid_hashes"].items():
            for num_hashes in hashes:
                rows += grid_variant(weights, queries, top, variant, num_hashes, settings, k)
                last = rows[-1]
                log(
                    f"  {name} {variant} K={num_hashes} L={last['L']}: "
                    f"lsh-only recall fifo {last['fifo']['recall_lsh']:.3f}, "
                    f"reservoir {last['reservoir']['recall_lsh']:.3f}"
                )
        report["datasets"][name] = {
            **info,
            "best_by_variant": best_rows(rows),
            "rows": rows,
        }
    return report


# --- Main. -------------------------------------------------------------------------------------


def settings_report(settings, args):
    return {
        "D": DIM,
        "B": BATCH,
        "seed": SEED,
        "threads_flag": args.threads,
        "table_settings": TABLE_SETTINGS,
        "fallback_capacity": FALLBACK_CAPACITY,
        "memory_fraction": MEMORY_FRACTION,
        "update_fraction": UPDATE_FRACTION,
        "update_step": UPDATE_STEP,
        "grid_capacity": GRID_CAPACITY,
        "grid_table_budget_bytes": GRID_TABLE_BUDGET_BYTES,
        "grid_bin_size": GRID_BIN_SIZE,
        "grid_variants": GRID_VARIANTS,
        "clustered": {
            "cluster_size": CLUSTER_SIZE,
            "noise": CLUSTER_NOISE,
            "norm_pareto_shape": NORM_PARETO_SHAPE,
        },
        **settings,
    }


def main(argv=None):
    args = _common.mode_parser(__doc__.splitlines()[0]).parse_args(argv)
    _common.configure_threads(args.threads)
    tf.get_logger().setLevel("ERROR")  # Each tf.function is traced once, by design.
    settings = MODES[args.mode]
    rng = np.random.default_rng(SEED)
    start = time.perf_counter()
    machine = {
        **_common.machine_info(),
        "memory_available_bytes_at_start": _common.meminfo_bytes("MemAvailable"),
    }

    neurons = settings["build_neurons"]
    log(f"build: N={neurons}, D={DIM} ...")
    weights, queries, _ = gaussian_data(neurons, rng)
    weights, queries = tf.constant(weights), tf.constant(queries)
    build, memory, built = run_build(weights, settings, rng)

    queries_report = {"N": neurons, "B": BATCH, "top": TOP, "results": []}
    for k in (round(ACTIVE_FRACTION * neurons), FIXED_ACTIVE):
        log(f"query: k={k} ...")
        queries_report["results"].append(run_query(weights, queries, built, k, settings))
    del weights, queries, built
    gc.collect()

    log(f"recall grid: N={settings['grid_neurons']} ...")
    recall = run_recall_grid(settings, rng)

    report = {
        "benchmark": "lsh",
        "mode": args.mode,
        "machine": machine,
        "settings": settings_report(settings, args),
        "build": {"N": neurons, "settings": build},
        "query": queries_report,
        "recall": recall,
        "memory": memory,
        "total_wall_s": time.perf_counter() - start,
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return report


if __name__ == "__main__":
    main()
