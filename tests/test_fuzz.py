"""Seeded fuzz test of every op: valid inputs match NumPy references, malformed ones raise.

Each call draws one op and random shapes (zero sizes included), values (NaN, +-Inf, -0.0,
ties, duplicates) and, half of the time, one malformed argument: a wrong rank, a mismatched
dimension, an index or code out of range (negative, huge, int32 limits), a size that
overflows int64, a non-scalar seed, a bad attribute or a wrong dtype. Malformed calls must
raise `tf.errors.InvalidArgumentError` or `ValueError` (TensorFlow's own attr type check and the
shape functions raise those too), and must leave variables untouched; valid calls must match a
short NumPy reference, bit for bit where the op is exact. A crash (abort, segfault) kills
pytest, which fails the run. About one call in ten runs inside a `tf.function` (the shape
functions then see static shapes).

Ops: sparse_gather_matmul and its gradient (tensors, and the resource-variable path),
hash_params, lsh_hash (dense and sparse, every family), build_tables, update_tables,
query_tables and sparse_adam_apply.

Environment:
  TF_LSH_FUZZ_CALLS  number of op calls (default 1500; the full run uses 10000 or more).
  TF_LSH_FUZZ_SEED   seed (default 0); call i draws from numpy's default_rng([seed, i]).
  TF_LSH_FUZZ_ONLY   comma-separated call numbers to replay (as a failure message names them).

The references replicate the ops' documented rules, including their SplitMix64 random
streams (cc/core/random.h) for hash parameters, reservoir sampling and the random fill.
"""

import collections
import math
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

try:
    import tf_lsh_ops  # noqa: E402
except ModuleNotFoundError:  # Not installed: use the source tree this file belongs to.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import tf_lsh_ops  # noqa: E402

from lsh_references import reference_fingerprint  # noqa: E402

from tf_lsh_ops._loader import ops  # noqa: E402

CALLS = int(os.environ.get("TF_LSH_FUZZ_CALLS", "1500"))
SEED = int(os.environ.get("TF_LSH_FUZZ_SEED", "0"))
ONLY = [int(i) for i in os.environ.get("TF_LSH_FUZZ_ONLY", "").split(",") if i.strip()]
GRAPH_SHARE = 0.1
REJECTED = (tf.errors.InvalidArgumentError, ValueError)
INT32_MAX, INT32_MIN = 2**31 - 1, -(2**31)
HUGE = 2**62
SIMHASH, WTA = ("srp", "sparse_srp"), ("wta", "dwta")
SPECIALS = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0], np.float32)


# ---------------------------------------------------------------------------------------------
# Random inputs
# ---------------------------------------------------------------------------------------------


def floats(rng, shape, special=0.0, zeros=0.0):
    """float32 normals of a random scale, some zeros and some NaN / +-Inf / -0.0."""
    x = rng.standard_normal(shape).astype(np.float32) * np.float32(rng.choice([0.1, 1, 100]))
    x[rng.random(shape) < zeros] = 0.0
    mask = rng.random(shape) < special
    x[mask] = rng.choice(SPECIALS, int(mask.sum()))
    return x


def special_rate(rng):
    return float(rng.choice([0.0, 0.0, 0.0, 0.05, 0.3]))


def wrong_rank(rng, a):
    """An array like `a` of another rank in 0..3 (its values repeated)."""
    rank = int(rng.choice([r for r in range(4) if r != np.ndim(a)]))
    out = np.zeros(tuple(rng.integers(1, 4, rank)), np.asarray(a).dtype)
    flat = np.asarray(a).reshape(-1)
    if flat.size:
        out.reshape(-1)[:] = np.resize(flat, out.size)
    return out


def any_seed(rng):
    return int(rng.choice([0, -1, 2**63 - 1, -(2**63), int(rng.integers(-(2**63), 2**63))]))


def bad_seed(rng):
    return [[1, 2], [3]][int(rng.integers(2))] if rng.random() < 0.8 else 2**64


def maybe_graph(rng, fn):
    """Runs `fn` eagerly, or (sometimes) traced and run as a tf.function."""
    if rng.random() >= GRAPH_SHARE:
        return fn()

    def graph_fn():
        out = fn()
        return None if isinstance(out, tf.Operation) else out  # sparse_adam_apply's op

    return tf.function(graph_fn, autograph=False)()


def rejects(fn, *variables, also=()):
    """`fn()` must raise InvalidArgumentError or ValueError (or `also`) and leave `variables`
    as they were."""
    before = [v.numpy().copy() for v in variables]
    try:
        fn()
    except REJECTED + also:
        pass
    else:
        raise AssertionError("a malformed input was accepted")
    for v, old in zip(variables, before, strict=True):
        assert np.array_equal(v.numpy(), old, equal_nan=True), "a rejected call changed a variable"


def pick(rng, mutations):
    """None (a valid call) half of the time, else the name of a mutation to apply."""
    return None if rng.random() < 0.5 else str(rng.choice(sorted(mutations)))


def assert_close(got, want, scale, what, rtol=1e-5):
    """float64 `want` with NaN / Inf exactly where `got` has them; else within rtol * scale."""
    got = np.asarray(got, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, want {want.shape}"
    with np.errstate(invalid="ignore"):
        tol = rtol * np.where(np.isfinite(scale), scale, 0.0) + 1e-6
        ok = np.where(
            np.isnan(want),
            np.isnan(got),
            np.where(np.isinf(want), got == want, np.abs(got - want) <= tol),
        )
    assert ok.all(), f"{what}: got {got[~ok][:4]}, want {want[~ok][:4]}"


# ---------------------------------------------------------------------------------------------
# The ops' random streams (cc/core/random.h: SplitMix64), for exact references
# ---------------------------------------------------------------------------------------------

M64 = 2**64 - 1
GOLDEN = 0x9E3779B97F4A7C15


def _mix(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


class SplitMix:
    def __init__(self, seed, stream=0):
        self.state = ((seed & M64) * GOLDEN + _mix((stream + 0x632BE59BD9B4E019) & M64)) & M64

    def next(self):
        self.state = (self.state + GOLDEN) & M64
        return _mix(self.state)

    def uniform(self, n):
        return (self.next() * n) >> 64

    def uniform_open(self):
        return ((self.next() >> 11) + 1.0) * 2.0**-53

    def normal(self):
        radius = math.sqrt(-2.0 * math.log(self.uniform_open()))
        return radius * math.cos(6.283185307179586 * self.uniform_open())


def probe_hash(h, attempt):
    z = (h * GOLDEN + attempt * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 31)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 29)


# ---------------------------------------------------------------------------------------------
# NumPy references
# ---------------------------------------------------------------------------------------------


def ref_gather(x, w, b, idx, g):
    """Forward, grad_inputs and per-row weight / bias gradients, with error scales."""
    x, w, b, g = (np.asarray(a, np.float64) for a in (x, w, b, g))
    mask = idx >= 0
    ids = np.where(mask, idx, 0)
    wk = np.where(mask[..., None], w[ids], 0.0)  # [B, K, D], zero at padding
    gm = np.where(mask, g, 0.0)
    rows = np.unique(idx[mask])
    with np.errstate(all="ignore"):
        out = np.where(mask, (x[:, None, :] * wk).sum(-1) + b[ids], 0.0)
        out_scale = np.where(mask, (np.abs(x[:, None, :] * wk)).sum(-1) + np.abs(b[ids]), 0.0)
        dx = (gm[..., None] * wk).sum(1)
        dx_scale = np.abs(gm[..., None] * wk).sum(1)
        dw = np.zeros((len(rows), x.shape[1]))
        dw_scale, db, db_scale = np.zeros_like(dw), np.zeros(len(rows)), np.zeros(len(rows))
        for r, neuron in enumerate(rows):
            bb, kk = np.nonzero(idx == neuron)
            terms = g[bb, kk, None] * x[bb]
            dw[r], dw_scale[r] = terms.sum(0), np.abs(terms).sum(0)
            db[r], db_scale[r] = g[bb, kk].sum(), np.abs(g[bb, kk]).sum()
    return (out, out_scale), (dx, dx_scale), rows, (dw, dw_scale), (db, db_scale)


def ref_hash_params(family, dim, total, bin_size, density, mips, seed):
    if family in SIMHASH:
        rows = dim + int(mips)
        density = 1.0 if family == "srp" else float(np.float32(density))
        random = SplitMix(seed, 1)
        out = np.empty(rows * total, np.float32)
        for i in range(out.size):
            if density >= 1.0:
                out[i] = random.normal()
            else:
                u = random.uniform_open()
                out[i] = 1.0 if u <= density / 2 else (-1.0 if u <= density else 0.0)
        return out.reshape(rows, total)
    random = SplitMix(seed, 2)
    out, perm, used = [], [], dim
    for _ in range(total * bin_size):
        if used == dim:
            perm = list(range(dim))
            for j in range(dim - 1, 0, -1):
                k = random.uniform(j + 1)
                perm[j], perm[k] = perm[k], perm[j]
            used = 0
        out.append(perm[used])
        used += 1
    return np.array(out, np.int32).reshape(total, bin_size)


def ref_srp(x, p, mips, max_norm, num_tables, num_hashes):
    """Codes, and a mask of the tables whose every bit is certain despite float32 rounding."""
    x, p = np.asarray(x, np.float64), np.asarray(p, np.float64)
    dim = x.shape[1]
    with np.errstate(all="ignore"):
        proj = (x[:, :, None] * p[None, :dim]).sum(1)
        scale = (np.abs(x[:, :, None] * p[None, :dim])).sum(1)
        tol = 1e-4 * scale
        if mips == "data":
            inv = 1.0 / float(np.float32(max_norm))
            rest = 1.0 - (x * x).sum(1, keepdims=True) * inv * inv
            extra = np.sqrt(np.where(rest > 0, rest, 0.0))  # std::max(0.f, NaN) is 0
            proj = proj * inv + extra * p[dim]
            tol = tol * inv + 1e-3 * np.abs(p[dim])  # sqrt amplifies rounding near 0
        certain = ~(np.abs(proj) <= tol + 1e-30)  # NaN bits are 0 either way
    bits = (proj > 0).reshape(-1, num_tables, num_hashes)
    codes = (bits.astype(np.int64) << np.arange(num_hashes)).sum(2)
    return codes, certain.reshape(-1, num_tables, num_hashes).all(2)


def ref_wta(x, bins, num_tables, num_hashes, densified):
    total, bin_size = bins.shape
    bits = int(math.log2(bin_size))
    codes = np.zeros((x.shape[0], num_tables), np.int64)
    for b in range(x.shape[0]):
        winners = []
        for h in range(total):
            best, best_value = -1, np.float32(0)
            for j, f in enumerate(bins[h]):
                v = x[b, f]
                if densified and v == 0:
                    continue
                if best < 0 or v > best_value:
                    best, best_value = j, v
            winners.append(best)

        def winner_of(h, winners=winners):
            if winners[h] >= 0:
                return winners[h]
            for attempt in range(1, 65):
                if winners[probe_hash(h, attempt) % total] >= 0:
                    return winners[probe_hash(h, attempt) % total]
            return 0

        for t in range(num_tables):
            for j in range(num_hashes):
                codes[b, t] |= winner_of(t * num_hashes + j) << (j * bits)
    return codes


def _insert(capacity, overflow, random, neuron, slots, counts, c):
    seen = int(counts[c])
    if seen < capacity:
        slots[c, seen] = neuron
    elif overflow == "fifo":
        slots[c, seen % capacity] = neuron
    else:
        j = random.uniform(seen + 1)
        if j < capacity:
            slots[c, j] = neuron
    counts[c] = min(seen + 1, INT32_MAX)


def ref_build(codes, bits, capacity, overflow, seed):
    num_neurons, num_tables = codes.shape
    ids = np.full((num_tables, 2**bits, capacity), -1, np.int32)
    counts = np.zeros((num_tables, 2**bits), np.int32)
    for t in range(num_tables):
        random = SplitMix(seed, t)
        for n in range(num_neurons):
            _insert(capacity, overflow, random, n, ids[t], counts[t], codes[n, t])
    return ids, counts


def ref_update(ids, counts, neurons, old, new, overflow, seed):
    ids, counts = ids.copy(), counts.copy()
    capacity = ids.shape[2]
    for t in range(ids.shape[0]):
        random = SplitMix(seed, t)
        for i, neuron in enumerate(neurons):
            before, after = old[i, t], new[i, t]
            if before == after:
                continue
            stored = min(int(counts[t, before]), capacity)
            slots = ids[t, before]
            for s in range(stored):
                if slots[s] == neuron:
                    slots[s], slots[stored - 1] = slots[stored - 1], -1
                    counts[t, before] = stored - 1
                    break
            _insert(capacity, overflow, random, neuron, ids[t], counts[t], after)
    return ids, counts


def ref_query(codes, ids, counts, k, n, rule, min_count, labels, batch_wide, fill, seed):
    """Active sets [batch or 1, k], or None where the op must fail (labels > k, bad ids)."""
    batch, num_tables = codes.shape
    capacity = ids.shape[2]
    groups = [range(batch)] if batch_wide else [[b] for b in range(batch)]
    out = []
    for stream, rows in enumerate(groups):
        active = []
        for r in rows:
            for label in labels[r]:
                if label >= 0 and label not in active:
                    active.append(int(label))
        if len(active) > k:
            return None
        found, hits = [], {}
        for r in rows:
            for t in range(num_tables):
                c = codes[r, t]
                for s in range(min(int(counts[t, c]), capacity)):
                    i = int(ids[t, c, s])
                    if not 0 <= i < n:
                        return None  # a filled slot naming no neuron of this layer
                    if i not in hits:
                        hits[i] = 0
                        found.append(i)
                    hits[i] += 1
        pool = [i for i in found if i not in active]
        if rule == "threshold":
            pool = [i for i in pool if hits[i] >= min_count]
        if rule != "union":
            pool = sorted(pool, key=lambda i: -hits[i])  # stable: ties in the order found
        active += pool[: k - len(active)]
        random = SplitMix(seed, stream)
        while fill and len(active) < k:
            i = random.uniform(n)
            if i not in active:
                active.append(i)
        out.append(active + [-1] * (k - len(active)))
    return np.array(out, np.int32).reshape(len(groups), k)


def ref_adam(var, m, v, rows, grad, lr, beta1, beta2, eps, step):
    """Lazy Adam in float32, operation by operation as documented (`sparse_adam_apply`):
    Adam's update suffers cancellation (v + (g^2 - v) * (1 - beta_2) with beta_2 = 0), so a
    float64 reference would not be comparable. Duplicate rows are summed in index order."""
    f = np.float32
    var, m, v = var.copy(), m.copy(), v.copy()
    beta1_power = tf.pow(f(beta1), f(step)).numpy()  # as the wrapper computes them
    beta2_power = tf.pow(f(beta2), f(step)).numpy()
    alpha = f(lr) * np.sqrt(f(1) - beta2_power) / (f(1) - beta1_power)
    with np.errstate(all="ignore"):
        for r in np.unique(rows):
            g = grad[rows == r][0].copy()
            for more in grad[rows == r][1:]:
                g += more
            m[r] += (g - m[r]) * (f(1) - f(beta1))
            v[r] += (g * g - v[r]) * (f(1) - f(beta2))
            var[r] -= alpha * m[r] / (np.sqrt(v[r]) + f(eps))
    return var, m, v


# ---------------------------------------------------------------------------------------------
# One fuzzed call per op
# ---------------------------------------------------------------------------------------------

GATHER_MUTATIONS = (
    "rank-inputs",
    "rank-weights",
    "rank-biases",
    "rank-indices",
    "dim",
    "rows",
    "batch",
    "index",
    "dtype",
    "grad-shape",
    "grouping",
)


def fuzz_gather(rng):
    mutation = pick(rng, GATHER_MUTATIONS)
    low = 1 if mutation in ("index", "grad-shape", "grouping") else 0
    batch, dim = int(rng.integers(low, 6)), int(rng.integers(0, 9))
    num_neurons, active = int(rng.integers(1, 12)), int(rng.integers(low, 7))
    rate = special_rate(rng)
    x, w = floats(rng, (batch, dim), rate), floats(rng, (num_neurons, dim), rate)
    b, g = floats(rng, (num_neurons,), rate), floats(rng, (batch, active), rate)
    idx = rng.integers(-1, num_neurons, (batch, active)).astype(np.int32)
    use_variables = rng.random() < 0.4
    args = dict(inputs=x, weights=w, biases=b, indices=idx)
    if mutation is not None:
        if mutation.startswith("rank-"):
            name = mutation[5:]
            args[name] = wrong_rank(rng, args[name])
        elif mutation == "dim":
            args["inputs"] = floats(rng, (batch, dim + int(rng.integers(1, 4))))
        elif mutation == "rows":
            args["biases"] = floats(rng, (num_neurons + int(rng.choice([-1, 1])),))
        elif mutation == "batch":  # neither the batch nor 1 (a set shared by the batch)
            args["indices"] = np.zeros((batch + 2 if batch == 0 else batch + 1, active), np.int32)
        elif mutation == "index":
            bad = [num_neurons, num_neurons + 7, -2, INT32_MIN, INT32_MAX]
            idx.reshape(-1)[rng.integers(idx.size)] = rng.choice(bad)
        elif mutation == "dtype":
            name = str(rng.choice(["inputs", "weights", "biases", "indices"]))
            args[name] = args[name].astype(np.int64 if name == "indices" else np.float64)
        if mutation in ("grad-shape", "grouping"):  # the raw gradient op
            idx[0, 0] = 0
            grouping = [t.numpy() for t in ops.tf_lsh_sparse_gather_matmul(x, w, b, idx)[1:]]
            if mutation == "grad-shape":
                wrong = [wrong_rank(rng, g), np.zeros((batch + 1, active), np.float32)]
                g = wrong[int(rng.integers(2))]
            else:
                corrupt_grouping(rng, *grouping, num_neurons, batch * active)
            rejects(lambda: ops.tf_lsh_sparse_gather_matmul_grad(x, w, *grouping, g, idx))
            return mutation
        weights, biases = args["weights"], args["biases"]
        if use_variables and weights.dtype == biases.dtype:
            weights, biases = tf.Variable(weights), tf.Variable(biases)
        rejects(
            lambda: maybe_graph(
                rng,
                lambda: tf_lsh_ops.sparse_gather_matmul(
                    args["inputs"], weights, biases, args["indices"]
                ),
            ),
            *[v for v in (weights, biases) if isinstance(v, tf.Variable)],
        )
        return mutation

    if use_variables:
        weights, biases = tf.Variable(w), tf.Variable(b)
    else:
        weights, biases = tf.constant(w), tf.constant(b)
    inputs = tf.constant(x)

    def forward_and_grads():
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            if not use_variables:
                tape.watch([weights, biases])
            out = tf_lsh_ops.sparse_gather_matmul(inputs, weights, biases, idx)
            loss = tf.reduce_sum(out * g)
        dx, dw, db = tape.gradient(loss, [inputs, weights, biases])
        return out, dx, dw.indices, dw.values, db.indices, db.values, dw.dense_shape

    got = [t.numpy() for t in maybe_graph(rng, forward_and_grads)]
    (out, out_s), (dx, dx_s), rows, (dw, dw_s), (db, db_s) = ref_gather(x, w, b, idx, g)
    assert_close(got[0], out, out_s, "output")
    assert_close(got[1], dx, dx_s, "grad_inputs")
    assert np.array_equal(got[2], rows) and np.array_equal(got[4], rows), (got[2], rows)
    assert_close(got[3], dw, dw_s, "grad_weights")
    assert_close(got[5], db, db_s, "grad_biases")
    assert tuple(got[6]) == w.shape
    return None


def corrupt_grouping(rng, rows, row_splits, positions, num_neurons, num_slots):
    """Breaks the forward op's grouping (rows, row_splits, positions) in place, one way."""
    kind = int(rng.integers(4))
    if kind == 0:  # a neuron out of range, or rows not increasing
        rows[rng.integers(len(rows))] = rng.choice([num_neurons, -1, INT32_MAX, INT32_MIN])
    elif kind == 1:  # splits not starting at 0, not ending at len(positions), not increasing
        i = int(rng.choice([0, len(row_splits) - 1]))
        row_splits[i] += rng.choice([-1, 1])
    elif kind == 2:
        positions[rng.integers(len(positions))] = rng.choice([num_slots, -1, INT32_MAX])
    elif len(rows) > 1:
        rows[1] = rows[0]
    else:
        row_splits[1] = row_splits[0]


HASH_PARAMS_MUTATIONS = (
    "family",
    "num_tables",
    "num_hashes",
    "bits",
    "dim",
    "bin_size",
    "density",
    "mips",
    "seed",
    "huge-dim",
)


def fuzz_hash_params(rng):
    mutation = pick(rng, HASH_PARAMS_MUTATIONS)
    family = str(rng.choice(HASH_FAMILIES))
    num_tables, num_hashes = int(rng.integers(1, 5)), int(rng.integers(1, 6))
    bin_size = int(rng.choice([2, 4, 8]))
    dim = int(rng.integers(bin_size, 30))
    kw = dict(
        bin_size=bin_size,
        density=float(rng.choice([1 / 3, 1.0, rng.uniform(0.01, 1.0)])),
        mips=bool(family in SIMHASH and rng.random() < 0.5),
        seed=any_seed(rng),
    )
    if mutation is not None:
        if mutation == "family":
            family = "minhash"
        elif mutation == "num_tables":
            num_tables = int(rng.choice([0, -3, 2**40]))
        elif mutation == "num_hashes":
            num_hashes = int(rng.choice([0, -1]))
        elif mutation == "bits":
            num_hashes = 31 if family in SIMHASH else 31 // int(math.log2(bin_size)) + 1
        elif mutation == "dim":
            dim = int(rng.choice([0, -5]))
        elif mutation == "huge-dim":
            dim, num_tables, num_hashes = HUGE, 2, 2  # [dim, 4] overflows int64; WTA: > int32
        elif mutation == "bin_size":
            family = str(rng.choice(WTA))
            kw["bin_size"] = int(rng.choice([0, 1, 3, 6, 2 ** int(math.log2(dim) + 1)]))
        elif mutation == "density":
            family = "sparse_srp"
            kw["density"] = float(rng.choice([0.0, -0.5, 1.5, np.nan]))
        elif mutation == "mips":
            family, kw["mips"] = str(rng.choice(WTA)), True
        elif mutation == "seed":
            kw["seed"] = bad_seed(rng)
        rejects(lambda: tf_lsh_ops.hash_params(family, dim, num_tables, num_hashes, **kw))
        return mutation
    got = maybe_graph(
        rng, lambda: tf_lsh_ops.hash_params(family, dim, num_tables, num_hashes, **kw)
    ).numpy()
    want = ref_hash_params(
        family, dim, num_tables * num_hashes, bin_size, kw["density"], kw["mips"], kw["seed"]
    )
    assert got.dtype == want.dtype and np.array_equal(got, want), (family, got, want)
    return None


HASH_FAMILIES = tf_lsh_ops.HASH_FAMILIES
LSH_HASH_MUTATIONS = (
    "rank-vectors",
    "dim",
    "params-rank",
    "params-size",
    "bin_size",
    "bins-range",
    "bits",
    "num_tables",
    "huge-num_tables",
    "mips-rows",
    "max_norm",
    "mips-wta",
    "family",
    "dtype",
    "sparse-index",
    "sparse-shape",
    "sparse-huge-batch",
    "sparse-huge-dim",
    "sparse-layout",
)


def _sparse(rng, x, dense_shape=None, extra_huge=False):
    """`x` as a SparseTensor: explicit zeros, split entries, shuffled; optionally entries at
    features beyond int32 (a WTA input that wide; its bins never reach them)."""
    rows, cols = np.nonzero(x != 0)
    values = x[rows, cols]
    if rng.random() < 0.3 and x.size:  # explicit zeros
        r, c = rng.integers(0, x.shape[0], 3), rng.integers(0, x.shape[1], 3)
        keep = x[r, c] == 0
        rows, cols = np.concatenate([rows, r[keep]]), np.concatenate([cols, c[keep]])
        values = np.concatenate([values, np.zeros(keep.sum(), np.float32)])
    if rng.random() < 0.3:  # each entry as two exact halves (repeats are summed)
        rows, cols = np.repeat(rows, 2), np.repeat(cols, 2)
        values = np.repeat(values / np.float32(2), 2)
    if extra_huge and x.shape[0]:
        count = int(rng.integers(1, 4))
        rows = np.concatenate([rows, rng.integers(0, x.shape[0], count)])
        cols = np.concatenate([cols, rng.integers(2**31, 2**40, count)])
        values = np.concatenate([values, floats(rng, (count,))])
    order = rng.permutation(len(rows))
    indices = np.stack([rows, cols], 1).astype(np.int64)[order].reshape(-1, 2)
    shape = x.shape if dense_shape is None else dense_shape
    return indices, values[order].astype(np.float32), np.array(shape, np.int64)


def fuzz_lsh_hash(rng):
    mutation = pick(rng, LSH_HASH_MUTATIONS) or ""
    family = str(rng.choice(HASH_FAMILIES))
    if mutation in ("mips-rows", "max_norm", "sparse-huge-dim"):
        family = str(rng.choice(SIMHASH))
    if mutation in ("bin_size", "bins-range", "bits", "mips-wta"):
        family = str(rng.choice(WTA))
    simhash = family in SIMHASH
    num_tables, num_hashes = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    if mutation == "sparse-huge-batch":
        num_tables = max(num_tables, 2)  # codes [2^62, L] overflow int64
    total, bin_size = num_tables * num_hashes, int(rng.choice([2, 4, 8]))
    batch, dim = (
        int(rng.integers(1 if mutation == "sparse-index" else 0, 8)),
        int(rng.integers(1, 24)),
    )
    x = floats(rng, (batch, dim), special_rate(rng), zeros=float(rng.choice([0, 0.5, 0.9])))
    if rng.random() < 0.3:
        x = np.round(x)  # ties
    mips = str(rng.choice(["none", "data", "query"])) if simhash else "none"
    rows = dim + (mips != "none")
    if simhash:
        choice = int(rng.integers(3))
        if choice == 0:
            seed = any_seed(rng)
            params = tf_lsh_ops.hash_params(
                family, dim, num_tables, num_hashes, mips=mips != "none", seed=seed
            ).numpy()
        elif choice == 1:
            params = rng.choice(np.float32([-1, 0, 1]), (rows, total))
        else:
            params = floats(rng, (rows, total))
    elif dim >= bin_size and rng.random() < 0.3:
        params = tf_lsh_ops.hash_params(
            family, dim, num_tables, num_hashes, bin_size=bin_size, seed=any_seed(rng)
        ).numpy()
    else:  # any coordinates, repeats included
        params = rng.integers(0, dim, (total, bin_size)).astype(np.int32)
    norms = np.sqrt((x.astype(np.float64) ** 2).sum(1))
    norm = max(norms[np.isfinite(norms)].max(initial=0.0), 1.0)
    max_norm = float(rng.choice([norm * 1.01, norm / 2, rng.uniform(0.1, 10), np.inf]))
    kw = dict(family=family, num_tables=num_tables, num_hashes=num_hashes, mips=mips)
    if mips == "data" or rng.random() < 0.5:
        kw["max_norm"] = max_norm
    sparse = mutation.startswith("sparse-") or rng.random() < 0.5
    vectors, raw = x, None  # raw: SparseTensor parts tf.SparseTensor would refuse

    if mutation == "rank-vectors":
        vectors, sparse = wrong_rank(rng, x), False
    elif mutation == "dim":  # inputs narrower or wider than the parameters expect
        if simhash:
            vectors = floats(rng, (batch, max(dim + int(rng.choice([-1, 1, 2])), 0)))
        else:
            params[rng.integers(total), rng.integers(bin_size)] = dim - 1
            vectors = x[:, : dim - 1]
    elif mutation == "params-rank":
        params = wrong_rank(rng, params)
    elif mutation == "params-size":
        if simhash:
            params = params[:-1] if rng.random() < 0.5 else params[:, :-1]
        else:
            params = np.resize(params, (total + int(rng.choice([-1, 1])), bin_size))
    elif mutation == "bin_size":
        params = rng.integers(0, dim, (total, int(rng.choice([1, 3, 6])))).astype(np.int32)
    elif mutation == "bins-range":
        bad = [-1, dim, INT32_MAX, INT32_MIN]
        params[rng.integers(total), rng.integers(bin_size)] = rng.choice(bad)
    elif mutation == "bits":  # more than 30 bits per bucket id
        kw["num_hashes"] = 30 // int(math.log2(bin_size)) + 1
        params = rng.integers(0, dim, (num_tables * kw["num_hashes"], bin_size))
        params = params.astype(np.int32)
    elif mutation == "num_tables":
        kw[str(rng.choice(["num_tables", "num_hashes"]))] = int(rng.choice([0, -2]))
    elif mutation == "huge-num_tables":
        kw["num_tables"] = int(rng.choice([2**31, HUGE, 2**70]))
    elif mutation == "mips-rows":  # projections without (or with) the MIPS row
        params = floats(rng, (dim + (mips == "none"), total))
        kw["max_norm"] = 1.0
    elif mutation == "max_norm":
        kw["mips"], params = "data", floats(rng, (dim + 1, total))
        kw["max_norm"] = [0.0, -1.0, np.nan, None, [1.0, 2.0]][int(rng.integers(5))]
    elif mutation == "mips-wta":
        kw["mips"], kw["max_norm"] = str(rng.choice(["data", "query"])), 1.0
    elif mutation == "family":
        kw["family"] = "minhash"
    elif mutation == "dtype":
        if rng.random() < 0.5:
            vectors, sparse = x.astype(np.float64), False
        else:
            params = params.astype(np.int32 if simhash else np.float32)
    elif mutation == "sparse-index":
        indices, values, shape = _sparse(rng, x)
        bad = [[batch, 0], [0, dim], [-1, 0], [0, -1], [2**40, 0]][int(rng.integers(5))]
        indices = np.concatenate([indices, [bad]]).astype(np.int64)
        vectors = tf.SparseTensor(indices, np.append(values, np.float32(1)), shape)
    elif mutation == "sparse-shape":
        vectors = tf.SparseTensor(np.zeros((0, 2), np.int64), np.zeros(0, np.float32), [-1, dim])
    elif mutation == "sparse-huge-batch":
        vectors = tf.SparseTensor(*_sparse(rng, x, dense_shape=(HUGE, dim)))
    elif mutation == "sparse-huge-dim":  # SimHash inputs at most 2^31 - 1 wide
        vectors = tf.SparseTensor(*_sparse(rng, x, dense_shape=(batch, 2**40)))
    elif mutation == "sparse-layout":
        indices, values, shape = _sparse(rng, x)
        broken = int(rng.integers(3))
        if broken == 0:
            indices = np.concatenate([indices, indices[:, :1]], 1)
        elif broken == 1:
            values = np.append(values, np.float32(1))
        else:
            shape = np.append(shape, 1)
        raw = (indices, values, shape)
    elif sparse:  # valid: sometimes a WTA input 2^40 wide, its extra features never binned
        huge = not simhash and rng.random() < 0.2
        vectors = tf.SparseTensor(*_sparse(rng, x, (batch, 2**40) if huge else None, huge))
    if sparse and isinstance(vectors, np.ndarray) and vectors.ndim == 2:
        vectors = tf.SparseTensor(*_sparse(rng, vectors))
    elif isinstance(vectors, np.ndarray) and rng.random() < 0.3:
        vectors = tf.Variable(vectors)  # rows read in place (the Resource* ops)

    if raw is not None:
        hash_op = ops.tf_lsh_lsh_srp_hash_sparse if simhash else ops.tf_lsh_lsh_wta_hash_sparse
        extra = [np.float32(1)] if simhash else []
        call = lambda: hash_op(  # noqa: E731
            *raw, params, *extra, num_tables=num_tables, num_hashes=num_hashes
        )
    else:
        call = lambda: tf_lsh_ops.lsh_hash(vectors, params, **kw)  # noqa: E731
    if mutation:
        rejects(lambda: maybe_graph(rng, call))
        return mutation
    got = maybe_graph(rng, call).numpy()
    assert got.dtype == np.int32 and got.shape == (batch, num_tables), got.shape
    if simhash:
        want, certain = ref_srp(x, params, mips, max_norm, num_tables, num_hashes)
        assert np.array_equal(got[certain], want[certain]), (got, want, certain)
    else:
        want = ref_wta(x, params, num_tables, num_hashes, densified=family == "dwta")
        assert np.array_equal(got, want), (family, got, want)
    return None


BUILD_MUTATIONS = ("rank", "no-tables", "code", "bits", "capacity", "overflow", "seed", "dtype")


def fuzz_build_tables(rng):
    mutation = pick(rng, BUILD_MUTATIONS)
    num_neurons = int(rng.integers(1 if mutation == "code" else 0, 40))
    num_tables, bits = int(rng.integers(1, 5)), int(rng.integers(1, 6))
    spread = int(rng.choice([2, 2**bits]))  # few buckets: they overflow
    codes = rng.integers(0, min(spread, 2**bits), (num_neurons, num_tables)).astype(np.int32)
    kw = dict(
        bucket_bits=bits,
        capacity=int(rng.integers(1, 7)),
        overflow=str(rng.choice(tf_lsh_ops.OVERFLOW_POLICIES)),
        seed=any_seed(rng),
    )
    if mutation is not None:
        if mutation == "rank":
            codes = wrong_rank(rng, codes)
        elif mutation == "no-tables":
            codes = codes[:, :0]
        elif mutation == "code":
            bad = [-1, 2**bits, INT32_MAX, INT32_MIN]
            codes[rng.integers(num_neurons), rng.integers(num_tables)] = rng.choice(bad)
        elif mutation == "bits":
            kw["bucket_bits"] = int(rng.choice([0, -1, 31, HUGE]))
        elif mutation == "capacity":
            kw["capacity"] = int(rng.choice([0, -2, 2**31, HUGE, 2**70]))
        elif mutation == "overflow":
            kw["overflow"] = "lifo"
        elif mutation == "seed":
            kw["seed"] = bad_seed(rng)
        elif mutation == "dtype":
            codes = codes.astype(rng.choice([np.int64, np.float32]))
        rejects(lambda: maybe_graph(rng, lambda: tf_lsh_ops.build_tables(codes, **kw)))
        return mutation
    ids, counts = maybe_graph(rng, lambda: tf_lsh_ops.build_tables(codes, **kw))
    want_ids, want_counts = ref_build(codes, bits, kw["capacity"], kw["overflow"], kw["seed"])
    assert np.array_equal(ids.numpy(), want_ids) and np.array_equal(counts.numpy(), want_counts)
    return None


def random_tables(rng, num_neurons, num_tables, bits, capacity):
    """Tables of `num_neurons` random codes, (often) with overflowing buckets."""
    spread = min(int(rng.choice([2, 2**bits])), 2**bits)
    codes = rng.integers(0, spread, (num_neurons, num_tables)).astype(np.int32)
    overflow = str(rng.choice(tf_lsh_ops.OVERFLOW_POLICIES))
    return codes, *ref_build(codes, bits, capacity, overflow, any_seed(rng))


UPDATE_MUTATIONS = (
    "rank",
    "tables-mismatch",
    "capacity",
    "codes-width",
    "codes-rows",
    "neuron",
    "duplicate",
    "code",
    "negative-count",
    "seed",
    "overflow",
    "dtype",
)


def fuzz_update_tables(rng):
    mutation = pick(rng, UPDATE_MUTATIONS)
    num_neurons, num_tables = int(rng.integers(1, 30)), int(rng.integers(1, 4))
    bits, capacity = int(rng.integers(1, 4)), int(rng.integers(1, 6))
    codes, ids, counts = random_tables(rng, num_neurons, num_tables, bits, capacity)
    low = 1 if mutation in ("neuron", "duplicate", "code") else 0
    count = int(rng.integers(low, num_neurons + 1))
    neurons = rng.choice(num_neurons + 5, count, replace=False).astype(np.int32)
    if count and rng.random() < 0.2:
        neurons[0] = INT32_MAX  # any non-negative id is a neuron
    old = np.where(
        (neurons < num_neurons)[:, None],
        codes[np.minimum(neurons, num_neurons - 1)],
        rng.integers(0, 2**bits, (count, num_tables)),
    ).astype(np.int32)
    new = rng.integers(0, 2**bits, (count, num_tables)).astype(np.int32)
    args = [ids, counts, neurons, old, new]
    kw = dict(overflow=str(rng.choice(tf_lsh_ops.OVERFLOW_POLICIES)), seed=any_seed(rng))
    if mutation is not None:
        if mutation == "rank":
            i = int(rng.integers(5))
            args[i] = wrong_rank(rng, args[i])
        elif mutation == "tables-mismatch":
            args[1] = np.zeros((num_tables + int(rng.integers(2)), 2**bits + 1), np.int32)
        elif mutation == "capacity":
            args[0] = ids[:, :, :0]
        elif mutation == "codes-width":
            i = int(rng.choice([3, 4]))
            args[i] = np.zeros((count, num_tables + 1), np.int32)
        elif mutation == "codes-rows":
            i = int(rng.choice([3, 4]))
            args[i] = np.zeros((count + 1, num_tables), np.int32)
        elif mutation == "neuron":
            neurons[rng.integers(count)] = rng.choice([-1, INT32_MIN])
        elif mutation == "duplicate":
            args[2] = np.append(neurons, neurons[rng.integers(count)])
            args[3], args[4] = np.concatenate([old, old[:1]]), np.concatenate([new, new[:1]])
        elif mutation == "code":
            target = old if rng.random() < 0.5 else new
            target[rng.integers(count), rng.integers(num_tables)] = rng.choice(
                [-1, 2**bits, INT32_MAX]
            )
        elif mutation == "negative-count":
            counts[rng.integers(num_tables), rng.integers(2**bits)] = rng.choice([-1, INT32_MIN])
        elif mutation == "seed":
            kw["seed"] = bad_seed(rng)
        elif mutation == "overflow":
            kw["overflow"] = "lifo"
        elif mutation == "dtype":
            i = int(rng.integers(5))
            args[i] = np.asarray(args[i]).astype(np.int64)
        rejects(lambda: maybe_graph(rng, lambda: tf_lsh_ops.update_tables(*args, **kw)))
        return mutation
    got_ids, got_counts = maybe_graph(rng, lambda: tf_lsh_ops.update_tables(*args, **kw))
    want_ids, want_counts = ref_update(ids, counts, neurons, old, new, kw["overflow"], kw["seed"])
    assert np.array_equal(got_ids.numpy(), want_ids), (got_ids, want_ids)
    assert np.array_equal(got_counts.numpy(), want_counts)
    return None


QUERY_MUTATIONS = (
    "k",
    "num_neurons",
    "min_count",
    "rule",
    "rank",
    "codes-width",
    "code",
    "capacity",
    "tables-mismatch",
    "label",
    "too-many-labels",
    "labels-batch",
    "bad-table-id",
    "seed",
    "dtype",
)


def fuzz_query_tables(rng):
    mutation = pick(rng, QUERY_MUTATIONS)
    num_neurons, num_tables = int(rng.integers(1, 40)), int(rng.integers(1, 4))
    if mutation == "too-many-labels":
        num_neurons = max(num_neurons, 2)
    bits, capacity = int(rng.integers(1, 5)), int(rng.integers(1, 6))
    _, ids, counts = random_tables(rng, num_neurons, num_tables, bits, capacity)
    if rng.random() < 0.2:  # counts a layer never writes are read as "nothing stored"
        counts[rng.integers(num_tables), rng.integers(2**bits)] = rng.choice([-3, 1000])
    low = 1 if mutation in ("code", "label", "labels-batch", "bad-table-id") else 0
    batch = int(rng.integers(low, 6))
    codes = rng.integers(0, 2**bits, (batch, num_tables)).astype(np.int32)
    batch_wide = bool(rng.random() < 0.3)
    k = int(rng.integers(1, num_neurons + 1))
    labels = None
    if rng.random() < 0.5 or mutation in ("label", "too-many-labels", "labels-batch"):
        width = int(rng.integers(1 if mutation else 0, 4))
        labels = rng.integers(-1, num_neurons, (batch, width)).astype(np.int32)
        for rows in [range(batch)] if batch_wide else [[b] for b in range(batch)]:
            seen = set()
            for r in rows:  # at most k distinct labels per active set
                for j in range(width):
                    label = int(labels[r, j])
                    if label >= 0 and label not in seen and len(seen) == k:
                        labels[r, j] = -1
                    elif label >= 0:
                        seen.add(label)
    kw = dict(
        k=k,
        num_neurons=num_neurons,
        rule=str(rng.choice(tf_lsh_ops.QUERY_RULES)),
        min_count=int(rng.integers(1, num_tables + 2)),
        fill_random=bool(rng.random() < 0.5),
        labels=labels,
        batch_wide=batch_wide,
        seed=any_seed(rng),
    )
    if rng.random() < 0.2:  # bad ids where no query reads them are fine
        if not (codes[:, 0] == 0).any():
            ids[0, 0, rng.integers(capacity)] = num_neurons + 3
        elif counts[0, 0] < capacity:
            ids[0, 0, rng.integers(max(counts[0, 0], 0), capacity)] = num_neurons + 3
    args = [codes, ids, counts]
    if mutation is not None:
        if mutation == "k":
            kw["k"] = int(rng.choice([0, -1, num_neurons + 1]))
        elif mutation == "num_neurons":
            kw["num_neurons"] = int(rng.choice([2**31, HUGE, 2**70]))
        elif mutation == "min_count":
            kw["min_count"] = int(rng.choice([0, -1]))
        elif mutation == "rule":
            kw["rule"] = "best"
        elif mutation == "rank":
            i = int(rng.integers(3))
            args[i] = wrong_rank(rng, args[i])
        elif mutation == "codes-width":
            args[0] = np.zeros((batch, num_tables + int(rng.choice([-1, 1]))), np.int32)
        elif mutation == "code":
            codes[rng.integers(batch), rng.integers(num_tables)] = rng.choice(
                [-1, 2**bits, INT32_MAX, INT32_MIN]
            )
        elif mutation == "capacity":
            args[1] = ids[:, :, :0]
        elif mutation == "tables-mismatch":
            args[2] = np.zeros((num_tables, 2**bits + 1), np.int32)
        elif mutation == "label":
            labels[rng.integers(batch), rng.integers(labels.shape[1])] = rng.choice(
                [num_neurons, -2, INT32_MAX, INT32_MIN]
            )
        elif mutation == "too-many-labels":
            kw["k"] = 1
            kw["labels"] = np.tile(np.int32([[0, 1]]), (max(batch, 1), 1))
            args[0] = rng.integers(0, 2**bits, (max(batch, 1), num_tables)).astype(np.int32)
        elif mutation == "labels-batch":
            kw["labels"] = np.zeros((batch + 1, labels.shape[1]), np.int32)
        elif mutation == "bad-table-id":
            b, t = rng.integers(batch), rng.integers(num_tables)
            bucket = codes[b, t]
            counts[t, bucket] = max(counts[t, bucket], 1)
            slot = rng.integers(min(counts[t, bucket], capacity))
            ids[t, bucket, slot] = rng.choice([num_neurons, -1, -7, INT32_MAX])
        elif mutation == "seed":
            kw["seed"] = bad_seed(rng)
        elif mutation == "dtype":
            i = int(rng.integers(3))
            args[i] = np.asarray(args[i]).astype(np.float32)
        rejects(lambda: maybe_graph(rng, lambda: tf_lsh_ops.query_tables(*args, **kw)))
        return mutation
    want = ref_query(
        codes,
        ids,
        counts,
        k,
        num_neurons,
        kw["rule"],
        kw["min_count"],
        labels if labels is not None else np.zeros((batch, 0), np.int32),
        batch_wide,
        kw["fill_random"],
        kw["seed"],
    )
    if want is None:  # a count set past what a bucket stores made a query read an empty slot
        rejects(lambda: tf_lsh_ops.query_tables(*args, **kw))
        return "count-past-stored"
    got = maybe_graph(rng, lambda: tf_lsh_ops.query_tables(*args, **kw)).numpy()
    assert np.array_equal(got, want), (kw, got, want)
    return None


ADAM_MUTATIONS = (
    "index",
    "indices-rank",
    "grad-rows",
    "grad-row-shape",
    "grad-rank",
    "slot-shape",
    "scalar-var",
    "var-dtype",
    "hyper-shape",
    "grad-dtype",
    "indices-dtype",
)


HYPER = ("learning_rate", "beta_1", "beta_2", "epsilon", "step")


def fuzz_sparse_adam(rng):
    mutation = pick(rng, ADAM_MUTATIONS)
    num_rows = int(rng.integers(1 if mutation == "index" else 0, 9))
    row_shape = tuple(rng.integers(0, 5, int(rng.integers(0, 3))))
    if mutation in ("grad-row-shape",):
        row_shape = row_shape or (3,)
    shape = (num_rows, *row_shape)
    count = int(rng.integers(1 if mutation == "index" else 0, 10)) if num_rows else 0
    rows = rng.integers(0, max(num_rows, 1), count).astype(rng.choice([np.int32, np.int64]))
    grad = floats(rng, (count, *row_shape), special_rate(rng) / 3)
    var0, m0 = floats(rng, shape), floats(rng, shape)
    v0 = rng.uniform(0, 1, shape).astype(np.float32)
    hyper = dict(
        learning_rate=float(rng.choice([1e-3, 0.1, rng.uniform(1e-4, 1)])),
        beta_1=float(rng.choice([0.0, 0.9, rng.uniform(0, 0.99)])),
        beta_2=float(rng.choice([0.0, 0.999, rng.uniform(0, 0.999)])),
        epsilon=float(rng.choice([1e-7, 1e-3, rng.uniform(1e-8, 1e-3)])),
        step=int(rng.choice([1, 2, rng.integers(1, 1000)])),
    )
    var, m, v = tf.Variable(var0), tf.Variable(m0), tf.Variable(v0)
    indices, values = rows, grad
    if mutation is not None:
        if mutation == "index":
            bad = [num_rows, -1, INT32_MAX, INT32_MIN] + ([2**40] if rows.dtype == np.int64 else [])
            indices = rows.copy()
            indices[rng.integers(count)] = rng.choice(bad)
        elif mutation == "indices-rank":
            indices = rows.reshape(-1, 1) if rng.random() < 0.5 else np.asarray(0, rows.dtype)
        elif mutation == "grad-rows":
            values = floats(rng, (count + 1, *row_shape))
        elif mutation == "grad-row-shape":
            wrong = list(row_shape)
            wrong[rng.integers(len(wrong))] += 1
            values = floats(rng, (count, *wrong))
        elif mutation == "grad-rank":
            values = floats(rng, (count, *row_shape, 1))
        elif mutation == "slot-shape":
            other = tf.Variable(floats(rng, (num_rows + 1, *row_shape)))
            m, v = (other, v) if rng.random() < 0.5 else (m, other)
        elif mutation == "scalar-var":
            var, m, v = tf.Variable(1.0), tf.Variable(0.0), tf.Variable(0.0)
            indices, values = np.zeros(0, np.int32), np.zeros(0, np.float32)
        elif mutation == "var-dtype":
            var = tf.Variable(var0.astype(np.float64))
        elif mutation == "hyper-shape":
            name = str(rng.choice(["learning_rate", "beta_1", "beta_2", "epsilon"]))
            hyper[name] = [hyper[name]] * 2
        elif mutation == "grad-dtype":
            values = grad.astype(np.float64)
        elif mutation == "indices-dtype":  # TF's attr check: Tindices is int32 or int64
            indices = rows.astype(np.float32)
        gradient = tf.IndexedSlices(tf.constant(values), tf.constant(indices))
        rejects(
            lambda: maybe_graph(
                rng, lambda: tf_lsh_ops.sparse_adam_apply(var, m, v, gradient, **hyper)
            ),
            var,
            m,
            v,
            # Float indices fail TF's own type check of the op's Tindices attr, before our code:
            # InvalidArgumentError eagerly, TypeError while tracing a tf.function.
            also=(TypeError,) if mutation == "indices-dtype" else (),
        )
        return mutation
    gradient = tf.IndexedSlices(tf.constant(grad), tf.constant(rows))
    maybe_graph(rng, lambda: tf_lsh_ops.sparse_adam_apply(var, m, v, gradient, **hyper))
    want = ref_adam(var0, m0, v0, rows, grad, *(hyper[h] for h in HYPER))
    for name, got, expected in zip(("var", "m", "v"), (var, m, v), want, strict=True):
        scale = np.abs(expected.astype(np.float64))
        assert_close(got.numpy(), expected.astype(np.float64), scale, name, rtol=1e-6)
    untouched = np.setdiff1d(np.arange(num_rows), rows)
    assert np.array_equal(var.numpy()[untouched], var0[untouched], equal_nan=True)
    return None


LOSS_MUTATIONS = ("ids-rank", "logits-shape", "labels-batch", "dtype")


def fuzz_active_softmax(rng):
    mutation = pick(rng, LOSS_MUTATIONS)
    batch, active = int(rng.integers(0, 6)), int(rng.integers(0, 8))
    num_labels = int(rng.integers(0, 4))
    ids = rng.integers(-1, 30, (batch, active)).astype(np.int32)
    labels = rng.integers(-1, 30, (batch, num_labels)).astype(np.int32)
    logits = floats(rng, (batch, active), special_rate(rng) / 4)
    if mutation == "ids-rank":
        ids = wrong_rank(rng, ids)
    elif mutation == "logits-shape":
        logits = floats(rng, (batch + int(rng.integers(0, 2)), active + 1))
    elif mutation == "labels-batch":
        labels = rng.integers(-1, 30, (batch + 1, num_labels)).astype(np.int32)
    elif mutation == "dtype":
        logits = logits.astype(np.float64)
    call = lambda: tf_lsh_ops.active_softmax_cross_entropy(ids, logits, labels)  # noqa: E731
    if mutation is not None:
        rejects(lambda: maybe_graph(rng, call))
        return mutation
    logits_t = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(logits_t)
        loss = tf_lsh_ops.active_softmax_cross_entropy(ids, logits_t, labels)
    grad = tape.gradient(loss, logits_t).numpy()
    assert loss.shape == () and grad.shape == logits.shape
    if np.all(np.isfinite(logits)):
        assert np.isfinite(float(loss)) and np.all(np.isfinite(grad))
        assert np.all(grad[ids < 0] == 0)
        if batch > 0 and rng.random() < 0.5:  # one active set for the batch: [1, K] ids
            shared = tf_lsh_ops.active_softmax_cross_entropy(ids[:1], logits, labels)
            tiled = tf_lsh_ops.active_softmax_cross_entropy(
                np.repeat(ids[:1], batch, axis=0), logits, labels
            )
            assert float(shared) == float(tiled)
    return None


GATHER_ADAM_MUTATIONS = ("moment-shape", "grouping", "grad-shape", "indices-batch")


def fuzz_gather_adam(rng):
    """The fused backward + Adam: bit for bit the unfused path when valid; rejected (variables
    untouched) when not."""
    mutation = pick(rng, GATHER_ADAM_MUTATIONS)
    batch, dim = int(rng.integers(1, 6)), int(rng.integers(1, 20))
    num_neurons, active = int(rng.integers(1, 30)), int(rng.integers(1, 8))
    shared = rng.random() < 0.3
    idx = rng.integers(-1, num_neurons, (1 if shared else batch, active)).astype(np.int32)
    idx[0, 0] = 0  # a grouping with at least one row, to corrupt
    x = floats(rng, (batch, dim))
    grad = floats(rng, (batch, active))
    state = [floats(rng, (num_neurons, dim)), floats(rng, (num_neurons,))]
    state += [floats(rng, (num_neurons, dim)), rng.uniform(0, 1, (num_neurons, dim))]
    state += [floats(rng, (num_neurons,)), rng.uniform(0, 1, (num_neurons,))]
    state = [a.astype(np.float32) for a in state]
    hyper = dict(learning_rate=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=3)
    fused = [tf.Variable(a) for a in state]
    w, b, *moments = fused
    _, grouping = tf_lsh_ops.sparse_gather_matmul_grouped(x, w, b, idx)
    grouping = [t.numpy() for t in grouping]
    indices = idx
    if mutation == "moment-shape":
        i = int(rng.integers(4))
        moments[i] = tf.Variable(
            floats(rng, (num_neurons + 1, dim) if i < 2 else (num_neurons + 1,))
        )
    elif mutation == "grouping":
        corrupt_grouping(rng, *grouping, num_neurons, idx.size)
    elif mutation == "grad-shape":
        grad = floats(rng, (batch, active + 1))
    elif mutation == "indices-batch":
        indices = rng.integers(0, num_neurons, (batch + 1, active)).astype(np.int32)
    call = lambda: tf_lsh_ops.sparse_gather_matmul_adam(  # noqa: E731
        x, w, b, indices, grouping, grad, moments, **hyper
    )
    if mutation is not None:
        rejects(call, *fused)
        return mutation
    fused_dx = call().numpy()
    plain = [tf.Variable(a) for a in state]
    with tf.GradientTape() as tape:
        x_t = tf.constant(x)
        tape.watch(x_t)
        out = tf_lsh_ops.sparse_gather_matmul(x_t, plain[0], plain[1], idx)
    dx, dw, db = tape.gradient(out, [x_t, plain[0], plain[1]], output_gradients=grad)
    tf_lsh_ops.sparse_adam_apply(plain[0], plain[2], plain[3], dw, **hyper)
    tf_lsh_ops.sparse_adam_apply(plain[1], plain[4], plain[5], db, **hyper)
    assert np.array_equal(fused_dx, dx.numpy(), equal_nan=True)
    for a, c in zip(plain, fused, strict=True):
        assert np.array_equal(a.numpy(), c.numpy(), equal_nan=True)
    return None


SPARSE_INPUT_MUTATIONS = (
    "kernel-rank",
    "kernel-rows",
    "entry-outside",
    "dense-shape",
    "indices-rank",
    "dtype",
    "grad-shape",
)


def _sparse_input_case(rng):
    """(batch, num_features, units, entries, values, dense_shape) of a random first layer's
    input: entries in any order, repeats allowed (they add up), empty batches too."""
    batch, num_features = int(rng.integers(0, 6)), int(rng.integers(1, 12))
    units, nnz = int(rng.integers(0, 9)), int(rng.integers(0, 16))
    at = np.stack([rng.integers(0, max(batch, 1), nnz), rng.integers(0, num_features, nnz)], 1)
    at = at[: nnz if batch else 0].astype(np.int64)
    values = floats(rng, (len(at),))
    return batch, num_features, units, at, values, np.array([batch, num_features], np.int64)


def fuzz_sparse_input_matmul(rng):
    mutation = pick(rng, SPARSE_INPUT_MUTATIONS)
    batch, num_features, units, at, values, shape = _sparse_input_case(rng)
    kernel = floats(rng, (num_features, units))
    g = floats(rng, (batch, units))
    if mutation is not None:
        if mutation == "kernel-rank":
            kernel = wrong_rank(rng, kernel)
        elif mutation == "kernel-rows":
            kernel = floats(rng, (num_features + int(rng.choice([-1, 1, 5])), units))
        elif mutation == "entry-outside":
            at = np.concatenate([at, [[int(rng.integers(0, 9)), num_features]]]).astype(np.int64)
            at[-1] = rng.choice([[batch, 0], [0, num_features], [-1, 0], [0, -1]])
            values = floats(rng, (len(at),))
        elif mutation == "dense-shape":
            wrong_shapes = [np.array([-1, num_features]), np.array([batch], np.int64)]
            shape = wrong_shapes[int(rng.integers(2))]
        elif mutation == "indices-rank":
            at = wrong_rank(rng, at)
        elif mutation == "dtype":
            kernel = kernel.astype(np.float64)
        if mutation == "grad-shape":  # the raw gradient op
            wrong = [wrong_rank(rng, g), np.zeros((batch + 1, units), np.float32)]
            call = lambda: ops.tf_lsh_sparse_input_matmul_grad(  # noqa: E731
                at, values, shape, kernel, wrong[int(rng.integers(2))]
            )
        elif mutation == "dtype":  # the public function checks dtypes (the raw op would cast)
            call = lambda: tf_lsh_ops.sparse_input_matmul(  # noqa: E731
                tf.SparseTensor(at, values, shape), kernel
            )
        else:  # the raw op, so that its own checks meet the malformed parts
            call = lambda: maybe_graph(  # noqa: E731
                rng, lambda: ops.tf_lsh_sparse_input_matmul(at, values, shape, kernel)
            )
        rejects(call)
        return mutation

    values_t = tf.constant(values)
    kernel_t = tf.Variable(kernel) if rng.random() < 0.4 else tf.constant(kernel)

    def forward_and_grads():
        with tf.GradientTape() as tape:
            tape.watch([values_t, kernel_t])
            out = tf_lsh_ops.sparse_input_matmul(tf.SparseTensor(at, values_t, shape), kernel_t)
            loss = tf.reduce_sum(out * g)
        grad_values, grad_kernel = tape.gradient(loss, [values_t, kernel_t])
        return out, grad_values, tf.convert_to_tensor(grad_kernel)

    out, grad_values, grad_kernel = [t.numpy() for t in maybe_graph(rng, forward_and_grads)]
    dense = np.zeros((batch, num_features))
    np.add.at(dense, (at[:, 0], at[:, 1]), values.astype(np.float64))
    k64, g64 = kernel.astype(np.float64), g.astype(np.float64)
    scale_out = np.abs(dense) @ np.abs(k64) + 1
    assert_close(out, dense @ k64, scale_out, "output", rtol=1e-4)
    want_values = (g64 @ k64.T)[at[:, 0], at[:, 1]] if len(at) else np.zeros(0)
    scale_values = (np.abs(g64) @ np.abs(k64.T))[at[:, 0], at[:, 1]] if len(at) else 0
    assert_close(grad_values, want_values, scale_values + 1, "grad_values", rtol=1e-4)
    assert_close(
        grad_kernel, dense.T @ g64, np.abs(dense.T) @ np.abs(g64) + 1, "grad_kernel", rtol=1e-4
    )
    return None


SPARSE_INPUT_ADAM_MUTATIONS = (
    "moment-shape",
    "grad-shape",
    "kernel-rows",
    "entry-outside",
    "dense-shape",
)


def fuzz_sparse_input_adam(rng):
    """The first layer's fused gradient + Adam: bit for bit the unfused path when valid;
    rejected (variables untouched) when not."""
    mutation = pick(rng, SPARSE_INPUT_ADAM_MUTATIONS)
    batch, num_features, units, at, values, shape = _sparse_input_case(rng)
    grad = floats(rng, (batch, units))
    state = [floats(rng, (num_features, units)), floats(rng, (num_features, units))]
    state = [a.astype(np.float32) for a in state]
    state.append(rng.uniform(0, 1, (num_features, units)).astype(np.float32))
    hyper = dict(learning_rate=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=2)
    fused = [tf.Variable(a) for a in state]
    kernel, moments = fused[0], list(fused[1:])
    if mutation == "moment-shape":
        moments[int(rng.integers(2))] = tf.Variable(floats(rng, (num_features + 1, units)))
    elif mutation == "grad-shape":
        grad = [wrong_rank(rng, grad), floats(rng, (batch + 1, units))][int(rng.integers(2))]
    elif mutation == "kernel-rows":
        kernel = tf.Variable(floats(rng, (num_features + 1, units)))
        moments = [tf.Variable(floats(rng, (num_features + 1, units))) for _ in range(2)]
    elif mutation == "entry-outside":
        at = np.concatenate([at, [[0, num_features]]]).astype(np.int64)
        values = floats(rng, (len(at),))
    elif mutation == "dense-shape":
        shape = np.array([-1, num_features], np.int64)
    call = lambda: tf_lsh_ops.sparse_input_matmul_adam(  # noqa: E731
        tf.SparseTensor(at, values, shape), kernel, grad, moments, **hyper
    )
    if mutation is not None:
        rejects(lambda: maybe_graph(rng, call), kernel, *moments, *fused)
        return mutation
    maybe_graph(rng, call)
    plain = [tf.Variable(a) for a in state]
    with tf.GradientTape() as tape:
        out = tf_lsh_ops.sparse_input_matmul(tf.SparseTensor(at, values, shape), plain[0])
    dw = tape.gradient(out, plain[0], output_gradients=grad)
    tf_lsh_ops.sparse_adam_apply(*plain, dw, **hyper)
    for a, c in zip(plain, fused, strict=True):
        assert np.array_equal(a.numpy(), c.numpy(), equal_nan=True)
    return None


MULTI_LABEL_BATCH_MUTATIONS = (
    "row-outside",
    "feature-outside",
    "splits-decreasing",
    "splits-past-end",
    "too-many-labels",
    "values-length",
    "splits-length",
    "rank",
)


def fuzz_multi_label_batch(rng):
    """A batch gathered from CSR arrays: the NumPy gather when valid; rejected when not."""
    mutation = pick(rng, MULTI_LABEL_BATCH_MUTATIONS)
    examples, num_features = int(rng.integers(1, 8)), int(rng.integers(1, 20))
    feature_counts = rng.integers(0, 5, examples)
    label_counts = rng.integers(0, 4, examples)
    splits = np.concatenate([[0], np.cumsum(feature_counts)]).astype(np.int64)
    label_splits = np.concatenate([[0], np.cumsum(label_counts)]).astype(np.int64)
    ids = rng.integers(0, num_features, splits[-1]).astype(np.int64)
    values = floats(rng, (len(ids),))
    labels = rng.integers(0, 1000, label_splits[-1]).astype(np.int32)
    rows = rng.integers(0, examples, int(rng.integers(0, 9))).astype(np.int64)
    max_labels = int(label_counts.max()) + int(rng.integers(0, 3))
    if mutation is not None:
        rows = np.append(rows, int(rng.integers(0, examples)))  # at least one row to break
        row = rows[-1]
        if mutation == "row-outside":
            rows[-1] = rng.choice([-1, examples, 2**40])
        elif mutation == "feature-outside":
            splits[row + 1 :] += 1
            ids = np.insert(ids, splits[row], rng.choice([-1, num_features]))
            values = np.insert(values, splits[row], 1.0)
        elif mutation == "splits-decreasing":
            splits[row + 1] = splits[row] - 1
        elif mutation == "splits-past-end":
            splits[row + 1 :] = len(ids) + 1
        elif mutation == "too-many-labels":
            label_splits[row + 1 :] += max_labels + 1
            labels = np.concatenate([labels, np.zeros(max_labels + 1, np.int32)])
        elif mutation == "values-length":
            values = np.append(values, 1.0)
        elif mutation == "splits-length":
            label_splits = label_splits[:-1]
        elif mutation == "rank":
            rows = wrong_rank(rng, rows)

    def call():
        return tf_lsh_ops.multi_label_batch(
            splits,
            ids,
            values,
            label_splits,
            labels,
            rows,
            num_features=num_features,
            max_labels=max_labels,
        )

    if mutation is not None:
        rejects(lambda: maybe_graph(rng, call))
        return mutation
    x, y = maybe_graph(rng, call)
    want_ids = [ids[splits[r] : splits[r + 1]] for r in rows]
    want_rows = np.repeat(np.arange(len(rows)), [len(w) for w in want_ids]).astype(np.int64)
    want_ids = np.concatenate(want_ids + [np.zeros(0, np.int64)])
    assert np.array_equal(x.indices.numpy(), np.stack([want_rows, want_ids], 1).reshape(-1, 2))
    want_values = [values[splits[r] : splits[r + 1]] for r in rows]
    assert np.array_equal(
        x.values.numpy(), np.concatenate(want_values + [np.zeros(0, np.float32)]), equal_nan=True
    )
    assert np.array_equal(x.dense_shape.numpy(), [len(rows), num_features])
    for i, r in enumerate(rows):
        row_labels = labels[label_splits[r] : label_splits[r + 1]]
        want = np.pad(row_labels, (0, max_labels - len(row_labels)), constant_values=-1)
        assert np.array_equal(y.numpy()[i], want)
    return None


FINGERPRINT_MUTATIONS = ("rank", "dtype")


def fuzz_row_fingerprints(rng):
    mutation = pick(rng, FINGERPRINT_MUTATIONS)
    rows, dim = int(rng.integers(0, 8)), int(rng.integers(0, 40))
    weights = floats(rng, (rows, dim), special_rate(rng))
    if rows > 1 and rng.random() < 0.3:
        weights[-1] = weights[0]  # equal bytes, equal fingerprints
    if mutation == "rank":
        weights = wrong_rank(rng, weights)
    elif mutation == "dtype":
        float64 = rng.random() < 0.5
        weights = (
            weights.astype(np.float64) if float64 else rng.integers(-3, 3, weights.shape, np.int32)
        )
    as_variable = rng.random() < 0.4
    weights_arg = tf.Variable(weights) if as_variable else weights
    call = lambda: tf_lsh_ops.row_fingerprints(weights_arg)  # noqa: E731
    if mutation is not None:
        rejects(lambda: maybe_graph(rng, call))
        return mutation
    got = maybe_graph(rng, call).numpy()
    assert got.dtype == np.int64 and got.shape == (rows,)
    want = np.array([reference_fingerprint(r) for r in weights], np.uint64).reshape(rows)
    assert np.array_equal(got.view(np.uint64), want), (got, want)
    return None


OPS = (
    ("sparse_gather_matmul", fuzz_gather, 3),
    ("sparse_input_matmul", fuzz_sparse_input_matmul, 1),
    ("hash_params", fuzz_hash_params, 1),
    ("lsh_hash", fuzz_lsh_hash, 4),
    ("build_tables", fuzz_build_tables, 1.5),
    ("update_tables", fuzz_update_tables, 1.5),
    ("query_tables", fuzz_query_tables, 2.5),
    ("sparse_adam_apply", fuzz_sparse_adam, 1.5),
    ("active_softmax_cross_entropy", fuzz_active_softmax, 1),
    ("sparse_gather_matmul_adam", fuzz_gather_adam, 1),
    ("sparse_input_matmul_adam", fuzz_sparse_input_adam, 1),
    ("multi_label_batch", fuzz_multi_label_batch, 0.5),
    ("row_fingerprints", fuzz_row_fingerprints, 0.5),
)


def fuzz_call(i):
    """Runs call `i`; returns (op, mutation or None)."""
    rng = np.random.default_rng([SEED, i])
    weights = np.array([weight for _, _, weight in OPS])
    name, fn, _ = OPS[rng.choice(len(OPS), p=weights / weights.sum())]
    try:
        return name, fn(rng)
    except Exception as e:  # noqa: BLE001 -- re-raised with how to replay the call
        raise AssertionError(
            f"fuzz call {i} ({name}) failed: {type(e).__name__}: {e}\n"
            f"replay: TF_LSH_FUZZ_SEED={SEED} TF_LSH_FUZZ_ONLY={i} pytest {__file__}"
        ) from e


def test_fuzz_every_op(capsys):
    calls = ONLY or range(CALLS)
    start = time.perf_counter()
    valid, invalid, mutations = collections.Counter(), collections.Counter(), set()
    for i in calls:
        name, mutation = fuzz_call(i)
        if mutation is None:
            valid[name] += 1
        else:
            invalid[name] += 1
            mutations.add((name, mutation))
    seconds = time.perf_counter() - start
    with capsys.disabled():
        print(
            f"\nfuzz: {len(calls)} calls (seed {SEED}) in {seconds:.1f} s, 0 crashes: "
            + ", ".join(f"{n} {valid[n]} valid + {invalid[n]} invalid" for n, _, _ in OPS)
            + f"; {len(mutations)} kinds of malformed input"
        )
    if not ONLY and CALLS >= 1000:  # every op was fuzzed both ways
        assert all(valid[n] and invalid[n] for n, _, _ in OPS), (valid, invalid)


if __name__ == "__main__":
    import pytest

    sys.exit(pytest.main([__file__, "-q"]))
