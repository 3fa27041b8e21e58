"""Locality-sensitive hashing: hash parameters, hash functions and hash tables as ops.

The pieces, in the order a layer uses them:

1. `hash_params(...)`: projections (SimHash) or bins (WTA) from a seed; the same seed gives
   the same tensor on any machine.
2. `lsh_hash(vectors, params, ...)`: one bucket id per table for each vector (dense rows or a
   2-D `tf.SparseTensor`), int32 `[batch, num_tables]`.
3. `build_tables(neuron_codes, ...)` / `update_tables(...)`: the neurons' buckets as two dense
   int32 tensors, `table_ids [L, 2^bits, capacity]` and `table_counts [L, 2^bits]`;
   `row_fingerprints(weights)` tells which neurons changed since they were hashed.
4. `query_tables(query_codes, table_ids, table_counts, ...)`: the active neurons of each
   example, int32 `[batch, k]`.

Hash families (`family`):
  - `"srp"`: signed random projections (SimHash), Gaussian; `num_hashes` bits per table.
  - `"sparse_srp"`: SimHash with +-1 projections, a `density` fraction nonzero (as SLIDE).
  - `"wta"`: winner-take-all; each hash is the argmax of `bin_size` coordinates
    (log2(bin_size) bits).
  - `"dwta"`: densified WTA, for inputs with many zeros (ReLU outputs, bags of words).

Maximum inner product search (SimHash only, `mips=True`): neurons w are hashed as
`[w / M, sqrt(1 - |w / M|^2)]` with `M` their largest norm, queries q as `[q, 0]`. Their angle
then orders neurons by `<q, w>`, which is what a layer's activation needs.

Example:

>>> weights = tf.random.stateless_normal([1000, 32], seed=[1, 2])
>>> params = hash_params("srp", dim=32, num_tables=8, num_hashes=6, mips=True, seed=3)
>>> norm = tf.reduce_max(tf.norm(weights, axis=1))
>>> neuron_codes = lsh_hash(weights, params, family="srp", num_tables=8, num_hashes=6,
...                         mips="data", max_norm=norm)
>>> ids, counts = build_tables(neuron_codes, bucket_bits=6, capacity=64)
>>> queries = tf.random.stateless_normal([4, 32], seed=[5, 6])
>>> query_codes = lsh_hash(queries, params, family="srp", num_tables=8, num_hashes=6,
...                        mips="query")
>>> query_tables(query_codes, ids, counts, k=50, num_neurons=1000).shape
TensorShape([4, 50])
"""

import math

import tensorflow as tf

from tf_lsh_ops._checks import as_resource_variable, as_tensor, require_dtype
from tf_lsh_ops._loader import ops

HASH_FAMILIES = ("srp", "sparse_srp", "wta", "dwta")
QUERY_RULES = ("frequency", "union", "threshold")
OVERFLOW_POLICIES = ("fifo", "reservoir")
MAX_BUCKET_BITS = 30
# Ids, coordinates and hash counts are int32 in the kernels.
MAX_INT32 = 2**31 - 1


def _invalid(message):
    return tf.errors.InvalidArgumentError(None, None, message)


def _require(condition, message):
    if not condition:
        raise _invalid(message)


def _seed(op_name, seed):
    """Returns `seed`, checking that a Python int fits in int64 (TensorFlow would raise
    TypeError or ValueError, depending on the conversion, instead of InvalidArgumentError)."""
    if isinstance(seed, int):
        _require(-(2**63) <= seed < 2**63, f"{op_name}: seed {seed} does not fit in int64")
    return seed


def _check_family(op_name, family):
    _require(
        family in HASH_FAMILIES,
        f"{op_name}: unknown hash family {family!r}; expected one of {HASH_FAMILIES}",
    )


def bucket_bits(family, num_hashes, bin_size=8):
    """Bits of a bucket id: `num_hashes` for SimHash, `num_hashes * log2(bin_size)` for WTA."""
    _check_family("bucket_bits", family)
    if family in ("srp", "sparse_srp"):
        return num_hashes
    return num_hashes * int(math.log2(bin_size))


def _check_layout(op_name, family, num_tables, num_hashes, bin_size):
    _require(num_tables >= 1, f"{op_name}: num_tables (L) must be >= 1, got {num_tables}")
    _require(num_hashes >= 1, f"{op_name}: num_hashes (K) must be >= 1, got {num_hashes}")
    _require(
        num_tables * num_hashes <= MAX_INT32,
        f"{op_name}: num_tables * num_hashes must be at most 2^31 - 1, got "
        f"{num_tables} * {num_hashes}",
    )
    if family in ("wta", "dwta"):
        _require(
            bin_size >= 2 and bin_size & (bin_size - 1) == 0,
            f"{op_name}: bin_size must be a power of two >= 2, got {bin_size}",
        )
    bits = bucket_bits(family, num_hashes, bin_size)
    _require(
        bits <= MAX_BUCKET_BITS,
        f"{op_name}: {family} with num_hashes={num_hashes}"
        + (f", bin_size={bin_size}" if family in ("wta", "dwta") else "")
        + f" needs {bits} bits per bucket id; at most {MAX_BUCKET_BITS} are allowed",
    )


def hash_params(
    family, dim, num_tables, num_hashes, *, bin_size=8, density=1 / 3, mips=False, seed=0
):
    """Makes the hash parameters of a family from a seed.

    Args:
      family: one of `HASH_FAMILIES`.
      dim: width of the vectors to hash.
      num_tables: L.
      num_hashes: K, hashes per table.
      bin_size: coordinates per WTA hash (a power of two).
      density: fraction of nonzero entries of `"sparse_srp"` projections.
      mips: SimHash only: add the row for the MIPS transform (projections `[dim + 1, L * K]`).
      seed: integer seed.

    Returns:
      SimHash: float32 projections `[dim (+1), L * K]`; WTA: int32 bins `[L * K, bin_size]`.
    """
    op_name = "hash_params"
    _check_family(op_name, family)
    _check_layout(op_name, family, num_tables, num_hashes, bin_size)
    _require(1 <= dim <= MAX_INT32, f"{op_name}: dim must be in [1, 2^31 - 1], got {dim}")
    seed = tf.constant(_seed(op_name, seed), tf.int64)
    total = num_tables * num_hashes
    if family in ("srp", "sparse_srp"):
        if family == "sparse_srp":
            _require(0 < density <= 1, f"{op_name}: density must be in (0, 1], got {density}")
        return ops.tf_lsh_lsh_srp_projections(
            seed,
            dim=dim + int(bool(mips)),
            total_hashes=total,
            density=1.0 if family == "srp" else float(density),
        )
    _require(mips is False, f"{op_name}: mips applies to SimHash families, not {family!r}")
    _require(bin_size <= dim, f"{op_name}: bin_size {bin_size} is larger than dim {dim}")
    return ops.tf_lsh_lsh_wta_bins(seed, dim=dim, total_hashes=total, bin_size=bin_size)


def lsh_hash(
    vectors, params, *, family, num_tables, num_hashes, mips="none", max_norm=None, name=None
):
    """Hashes vectors into one bucket per table.

    Args:
      vectors: float32 `[batch, dim]` (a tensor, or a variable, whose rows are then read in
        place: no copy even after sparse updates), or a 2-D float32 `tf.SparseTensor`
        (repeated entries are summed).
      params: from `hash_params` with the same family, num_tables and num_hashes.
      family: one of `HASH_FAMILIES`.
      num_tables, num_hashes: L and K.
      mips: SimHash only: `"none"`, `"data"` (neurons; needs `max_norm`) or `"query"`.
      max_norm: float scalar M >= the largest norm of the data vectors (`mips="data"`).
      name: optional op name.

    Returns:
      int32 `[batch, num_tables]`, bucket ids in `[0, 2^bucket_bits)`.
    """
    op_name = "lsh_hash"
    _check_family(op_name, family)
    _require(mips in ("none", "data", "query"), f"{op_name}: unknown mips side {mips!r}")
    _require(mips != "data" or max_norm is not None, f"{op_name}: mips='data' needs max_norm")
    bin_size = 8
    if family in ("wta", "dwta"):
        params = as_tensor(op_name, "bins", params, tf.int32)
        # bins [L * K, bin_size]; a bin_size unknown while tracing is left to the kernel's check.
        bin_size = (params.shape[-1] if params.shape.rank else None) or 2
    _check_layout(op_name, family, num_tables, num_hashes, bin_size)
    sparse = isinstance(vectors, tf.SparseTensor)
    variable = None if sparse else as_resource_variable(vectors)
    if variable is not None:
        require_dtype(op_name, "vectors", variable, tf.float32)
    elif not sparse:
        vectors = as_tensor(op_name, "vectors", vectors, tf.float32)
    attrs = dict(num_tables=num_tables, num_hashes=num_hashes, name=name)
    if family in ("srp", "sparse_srp"):
        params = as_tensor(op_name, "projections", params, tf.float32)
        norm = tf.constant(1.0) if max_norm is None else tf.cast(max_norm, tf.float32)
        if sparse:
            return ops.tf_lsh_lsh_srp_hash_sparse(
                vectors.indices,
                as_tensor(op_name, "vectors.values", vectors.values, tf.float32),
                vectors.dense_shape,
                params,
                norm,
                mips=mips,
                **attrs,
            )
        if variable is not None:
            return ops.tf_lsh_resource_lsh_srp_hash(
                variable.handle, params, norm, mips=mips, **attrs
            )
        return ops.tf_lsh_lsh_srp_hash(vectors, params, norm, mips=mips, **attrs)
    _require(mips == "none", f"{op_name}: mips applies to SimHash families, not {family!r}")
    params = as_tensor(op_name, "bins", params, tf.int32)
    densified = family == "dwta"
    if sparse:
        return ops.tf_lsh_lsh_wta_hash_sparse(
            vectors.indices,
            as_tensor(op_name, "vectors.values", vectors.values, tf.float32),
            vectors.dense_shape,
            params,
            densified=densified,
            **attrs,
        )
    if variable is not None:
        return ops.tf_lsh_resource_lsh_wta_hash(
            variable.handle, params, densified=densified, **attrs
        )
    return ops.tf_lsh_lsh_wta_hash(vectors, params, densified=densified, **attrs)


def build_tables(codes, *, bucket_bits, capacity=128, overflow="fifo", seed=0, name=None):
    """Builds L hash tables of neurons from their bucket ids.

    Args:
      codes: int32 `[num_neurons, L]`: `lsh_hash` of the neurons' weight vectors.
      bucket_bits: bits of a bucket id (`bucket_bits(family, ...)`): 2^bits buckets per table.
      capacity: neuron ids a bucket holds.
      overflow: what a full bucket does: `"fifo"` (overwrite the oldest) or `"reservoir"`
        (keep a uniform sample, seeded).
      seed: for reservoir sampling.
      name: optional op name.

    Returns:
      `(table_ids, table_counts)`: int32 `[L, 2^bits, capacity]` (-1 where empty) and int32
      `[L, 2^bits]` (neurons that hashed to the bucket, possibly more than capacity).
    """
    op_name = "build_tables"
    _require(
        1 <= bucket_bits <= MAX_BUCKET_BITS,
        f"{op_name}: bucket_bits must be in [1, {MAX_BUCKET_BITS}], got {bucket_bits}",
    )
    _require(
        1 <= capacity <= MAX_INT32, f"{op_name}: capacity must be in [1, 2^31 - 1], got {capacity}"
    )
    _require(overflow in OVERFLOW_POLICIES, f"{op_name}: unknown overflow policy {overflow!r}")
    codes = as_tensor(op_name, "codes", codes, tf.int32)
    return ops.tf_lsh_lsh_build_tables(
        codes,
        tf.cast(_seed(op_name, seed), tf.int64),
        bucket_bits=bucket_bits,
        capacity=capacity,
        overflow=overflow,
        name=name,
    )


def update_tables(
    table_ids,
    table_counts,
    neuron_ids,
    old_codes,
    new_codes,
    *,
    overflow="fifo",
    seed=0,
    name=None,
):
    """Moves neurons whose bucket changed (an incremental rebuild); returns the new tables.

    Args:
      table_ids, table_counts: from `build_tables`.
      neuron_ids: int32 `[M]`, distinct.
      old_codes: int32 `[M, L]`, the buckets the neurons were inserted with.
      new_codes: int32 `[M, L]`, `lsh_hash` of their current weights.
      overflow, seed: as for `build_tables`; vary the seed between updates.
      name: optional op name.
    """
    op_name = "update_tables"
    _require(overflow in OVERFLOW_POLICIES, f"{op_name}: unknown overflow policy {overflow!r}")
    return ops.tf_lsh_lsh_update_tables(
        as_tensor(op_name, "table_ids", table_ids, tf.int32),
        as_tensor(op_name, "table_counts", table_counts, tf.int32),
        as_tensor(op_name, "neuron_ids", neuron_ids, tf.int32),
        as_tensor(op_name, "old_codes", old_codes, tf.int32),
        as_tensor(op_name, "new_codes", new_codes, tf.int32),
        tf.cast(_seed(op_name, seed), tf.int64),
        overflow=overflow,
        name=name,
    )


def row_fingerprints(weights, name=None):
    """A 64-bit fingerprint of each row of `weights`, to see which rows changed since.

    Each row's bytes are hashed: two rows with the same bytes have the same fingerprint, and a
    row changed in any bit gets another one except with probability about 2^-64. Comparing
    them with the fingerprints taken when the neurons were hashed tells which neurons a table
    refresh must re-hash, whatever changed the weights (`HashTables.refresh`). The values
    are the same on every machine and build.

    Args:
      weights: float32 `[rows, dim]`, a tensor or a variable (`tf.Variable` or Keras), read
        in place (no copy even after sparse updates).
      name: optional op name.

    Returns:
      int64 `[rows]` (the fingerprints' bits).

    Example:

    >>> w = tf.Variable(tf.ones([3, 4]))
    >>> before = row_fingerprints(w)
    >>> _ = w[1, 2].assign(0.5)
    >>> (row_fingerprints(w) != before).numpy()
    array([False,  True, False])
    """
    op_name = "row_fingerprints"
    variable = as_resource_variable(weights)
    if variable is not None:
        require_dtype(op_name, "weights", variable, tf.float32)
        return ops.tf_lsh_resource_lsh_row_fingerprints(variable.handle, name=name)
    return ops.tf_lsh_lsh_row_fingerprints(
        as_tensor(op_name, "weights", weights, tf.float32), name=name
    )


def query_tables(
    codes,
    table_ids,
    table_counts,
    *,
    k,
    num_neurons,
    rule="frequency",
    min_count=1,
    fill_random=False,
    labels=None,
    batch_wide=False,
    seed=0,
    name=None,
):
    """Selects active neurons from the buckets the queries fall in.

    Args:
      codes: int32 `[batch, L]`: `lsh_hash` of the queries (the layer's inputs).
      table_ids, table_counts: from `build_tables`.
      k: active neurons per example (per batch if `batch_wide`); at most `num_neurons`.
      num_neurons: the layer's units.
      rule: `"frequency"`: the k ids found in most tables (the paper); `"union"`: ids of the
        buckets in table order (SLIDE); `"threshold"`: ids found in at least `min_count`
        tables, most frequent first.
      min_count: for `"threshold"`.
      fill_random: fill sets smaller than k with random distinct ids (seeded); otherwise pad
        with -1.
      labels: optional int32 `[batch, max_labels]`, -1 padded: always included, first
        (label inclusion for output layers).
      batch_wide: one set for the whole batch (as Mongoose): result `[1, k]`.
      seed: int64 scalar for the random fill; vary it per step.
      name: optional op name.

    Returns:
      int32 `[batch, k]` (or `[1, k]`): distinct ids per row, -1 padded only without fill.
    """
    op_name = "query_tables"
    _require(rule in QUERY_RULES, f"{op_name}: unknown rule {rule!r}; expected {QUERY_RULES}")
    _require(
        1 <= k <= num_neurons, f"{op_name}: k = {k} must be in [1, num_neurons = {num_neurons}]"
    )
    _require(
        num_neurons <= MAX_INT32,
        f"{op_name}: num_neurons must be at most 2^31 - 1 (ids are int32), got {num_neurons}",
    )
    _require(min_count >= 1, f"{op_name}: min_count must be >= 1, got {min_count}")
    codes = as_tensor(op_name, "codes", codes, tf.int32)
    if labels is None:
        labels = tf.zeros([tf.shape(codes)[0], 0], tf.int32)
    return ops.tf_lsh_lsh_query(
        codes,
        as_tensor(op_name, "table_ids", table_ids, tf.int32),
        as_tensor(op_name, "table_counts", table_counts, tf.int32),
        as_tensor(op_name, "labels", labels, tf.int32),
        tf.cast(_seed(op_name, seed), tf.int64),
        k=k,
        num_neurons=num_neurons,
        rule=rule,
        min_count=min_count,
        fill_random=fill_random,
        batch_wide=batch_wide,
        name=name,
    )
