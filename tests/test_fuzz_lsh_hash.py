"""Fuzz of hashing: hash_params (every family, compared with the kernels' random streams),
lsh_hash (every family, dense, variables read in place and sparse; MIPS sides) and
row_fingerprints. fuzz_common.py describes the calls and the TF_LSH_FUZZ_* variables."""

import math
import sys

import numpy as np
import pytest
import tensorflow as tf
from fuzz_common import (
    HUGE,
    INT32_MIN,
    any_seed,
    bad_seed,
    floats,
    fuzz_test,
    maybe_graph,
    pick,
    rejects,
    special_rate,
    wrong_rank,
)
from lsh_references import (
    INT32_MAX,
    SIMHASH,
    WTA,
    reference_fingerprint,
    reference_hash_params,
    reference_srp,
    reference_wta,
)

import tf_lsh_ops
from tf_lsh_ops._loader import ops

HASH_FAMILIES = tf_lsh_ops.HASH_FAMILIES

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
    want = reference_hash_params(
        family, dim, num_tables * num_hashes, bin_size, kw["density"], kw["mips"], kw["seed"]
    )
    assert got.dtype == want.dtype and np.array_equal(got, want), (family, got, want)
    return None


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
        want, certain = reference_srp(x, params, mips, max_norm, num_tables, num_hashes)
        assert np.array_equal(got[certain], want[certain]), (got, want, certain)
    else:
        want = reference_wta(x, params, num_tables, num_hashes, densified=family == "dwta")
        assert np.array_equal(got, want), (family, got, want)
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


test_fuzz = fuzz_test(
    __file__,
    {
        "hash_params": fuzz_hash_params,
        "lsh_hash": fuzz_lsh_hash,
        "row_fingerprints": fuzz_row_fingerprints,
    },
)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
