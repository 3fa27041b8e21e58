"""How an `LSHDense` chooses each example's active units: one object per rule.

The layer owns the math (weights, the gathered products, the activation); its selector owns
which units each example computes and the state that decision keeps (hash tables, or a
low-rank sketch). `LSHDense.selector` is the object; `LSHDense.tables` is it when it keeps hash
tables (what `LSHRebuildCallback` maintains), else None.
"""

import dataclasses
import math

import tensorflow as tf

import tf_lsh_ops
from keras_layers.losses import label_positions

TABLE_RULES = tf_lsh_ops.QUERY_RULES
_SIMHASH = ("srp", "sparse_srp")


@dataclasses.dataclass(frozen=True)
class TableConfig:
    """The hash tables of an `LSHDense`, validated on construction.

    The fields are `LSHDense`'s arguments of the same names (see its docstring); `rule` is the
    query rule (`active_rule` when it names one of `TABLE_RULES`).
    """

    rule: str = "frequency"
    hash_family: str = "srp"
    mips: bool = False
    num_hashes: int | None = None
    num_tables: int = 16
    bin_size: int = 8
    bucket_capacity: int = 128
    min_count: int = 1
    fill_random: bool = True
    overflow: str = "reservoir"
    batch_wide: bool = False

    def __post_init__(self):
        def require(condition, message):
            if not condition:
                raise ValueError(f"LSHDense: {message}")

        require(
            self.rule in TABLE_RULES, f"unknown table rule {self.rule!r}; expected {TABLE_RULES}"
        )
        require(
            self.hash_family in tf_lsh_ops.HASH_FAMILIES,
            f"unknown hash_family {self.hash_family!r}; expected one of {tf_lsh_ops.HASH_FAMILIES}",
        )
        require(
            not self.mips or self.hash_family in _SIMHASH,
            f"mips=True needs a SimHash family, not {self.hash_family!r}",
        )
        require(
            is_int(self.num_tables) and self.num_tables >= 1,
            f"num_tables must be an int >= 1, got {self.num_tables!r}",
        )
        require(
            self.hash_family in _SIMHASH
            or (self.bin_size >= 2 and not self.bin_size & (self.bin_size - 1)),
            f"bin_size must be a power of two >= 2, got {self.bin_size}",
        )
        require(
            is_int(self.bucket_capacity) and self.bucket_capacity >= 1,
            f"bucket_capacity must be >= 1, got {self.bucket_capacity!r}",
        )
        require(
            self.num_hashes is None or (is_int(self.num_hashes) and self.num_hashes >= 1),
            f"num_hashes must be None or an int >= 1, got {self.num_hashes!r}",
        )
        require(self.min_count >= 1, f"min_count must be >= 1, got {self.min_count}")
        require(
            self.overflow in tf_lsh_ops.OVERFLOW_POLICIES,
            f"unknown overflow {self.overflow!r}; expected one of {tf_lsh_ops.OVERFLOW_POLICIES}",
        )

    def hashes_for(self, units, active):
        """K: `num_hashes`, or by default such that the L buckets of a query hold about twice
        `active` units and a bucket's expected load fits its capacity."""
        if self.num_hashes is not None:
            return self.num_hashes
        bits = max(
            math.log2(max(self.num_tables * units / (2 * active), 2)),
            math.log2(units / self.bucket_capacity),
        )
        bits = min(max(round(bits), 1), tf_lsh_ops.lsh.MAX_BUCKET_BITS)
        if self.hash_family in _SIMHASH:
            return bits
        return max(1, math.ceil(bits / math.log2(self.bin_size)))


class UnitSelector(tf.Module):
    """Chooses the `num_active` units each example computes. Subclasses keep their state as
    non-trainable weights of the layer (saved with it), created by `build`."""

    rule = None
    # Whether `refresh` needs the batch's exact products (the layer computes them once).
    needs_products = False

    def __init__(self, units, num_active, seed):
        super().__init__(name="unit_selector")
        self.units = units
        self.num_active = num_active
        self.seed = seed

    def build(self, kernel, bias, add_state, add_step):
        """Creates the selector's state. `add_state(name, shape, dtype, value)` makes a
        non-trainable weight of the layer; `add_step()` makes the layer's step counter (called
        here so that the weights keep the order that saved files store them in)."""
        self.kernel, self.bias = kernel, bias
        self.step = add_step()

    def select(self, inputs, labels=None, shared=False):
        """int32 `[batch, num_active]` unit ids; `labels` (int32 `[batch, max_labels]`, -1
        padded) first. `shared`: one set for the batch, `[1, ...]` (hash tables only)."""
        raise NotImplementedError

    def observe(self, ids):
        """Records a training step's selected `ids` (`[batch, k]`, -1 padded)."""
        # A body besides the docstring: AutoGraph cannot convert an empty one and warns.
        del ids

    def refresh(self, inputs, products):
        """Brings the selector up to date with the weights, given a batch of `inputs` and,
        if `needs_products`, their exact `products` with the units' weights."""
        del inputs, products

    @property
    def memory_bytes(self):
        """Bytes of the state the selector keeps."""
        return 0

    def products(self, inputs):
        """`inputs` times every unit's weights, without the bias: `[batch, units]`."""
        return times_transposed(inputs, self.kernel)


class ExactSelector(UnitSelector):
    """Each example's `num_active` largest pre-activations, from every unit's exact product:
    the reference the other rules are measured against (as costly as `Dense`)."""

    rule = "exact"

    def select(self, inputs, labels=None, shared=False):
        return top_units(self.products(inputs) + self.bias, self.num_active, labels)


class LowRankSelector(UnitSelector):
    """The `num_active` largest pre-activations of a rank-`rank` sketch of the layer.

    `x -> (x B^T) A^T + bias` (`rank * (input_dim + units)` multiplications an example): A
    `[units, rank]` has orthonormal columns spanning the units' main directions of variation
    over recent inputs, B = A^T W. `refresh` refits it to a batch's exact products.

    With `boost_strength` > 0 it selects by boosted scores (k-winners boosting, as Numenta's
    sparse networks): unit j's sketched pre-activation times
    `exp(boost_strength * (active / units - duty_j))`, where `duty_j` is the fraction of
    training examples that selected j, averaged over about the last `BOOST_PERIOD` of them. A
    unit that seldom wins is raised until it does, and learns; without it, the same few units
    win every step while the rest never train (benchmarks/README.md, "Wide hidden layers").
    Inference ranks by the same boosted scores: the layers after this one were trained on the
    units they pick (ranked without the boost, the bag-of-words network of bench_wide lost
    most of its accuracy at test time).
    """

    rule = "low_rank"
    needs_products = True
    BOOST_PERIOD = 1000  # training examples

    def __init__(self, units, num_active, seed, rank, boost_strength=0.0):
        super().__init__(units, num_active, seed)
        self.rank = rank
        self.boost_strength = boost_strength

    def build(self, kernel, bias, add_state, add_step):
        super().build(kernel, bias, add_state, add_step)
        self.sketch_units = add_state("sketch_units", (self.units, self.rank), "float32", 0)
        self.sketch_inputs = add_state("sketch_inputs", (self.rank, kernel.shape[1]), "float32", 0)
        if self.boost_strength:
            # Every unit starts at its target duty: no boost until the counts say otherwise.
            self.duty_cycle = add_state(
                "duty_cycle", (self.units,), "float32", self.num_active / self.units
            )
        if tf.executing_eagerly():
            # A first sketch, before any input was seen: fitted to random inputs.
            self.fit(tf.random.stateless_normal([4 * self.rank, kernel.shape[1]], [self.seed, 7]))

    def select(self, inputs, labels=None, shared=False):
        units, bias = self.sketch_units, self.bias
        if self.boost_strength:
            boost = self.boost_factors()
            units, bias = units * boost[:, None], bias * boost
        if labels is not None:  # the labels go first: through a [batch, units] score matrix
            scores = tf.matmul(self.sketch_queries(inputs), units, transpose_b=True) + bias
            return top_units(scores, self.num_active, labels)
        # One fused op: the [batch, units] sketch scores are never formed, nor sorted (TensorFlow's
        # top_k over them cost 4-17 ms a step at 16k-64k units and batch 128).
        return tf_lsh_ops.matmul_top_k(self.sketch_queries(inputs), units, bias, self.num_active)

    def boost_factors(self):
        """`[units]`: what each unit's sketched pre-activation is multiplied by."""
        target = self.num_active / self.units
        return tf.exp(self.boost_strength * (target - self.duty_cycle))

    def observe(self, ids):
        if not self.boost_strength:
            return
        examples = tf.cast(tf.shape(ids)[0], tf.float32)
        ids = tf.reshape(ids, [-1])
        valid = ids >= 0
        counts = tf.math.unsorted_segment_sum(
            tf.cast(valid, tf.float32), tf.where(valid, ids, 0), self.units
        )
        fraction = counts / examples  # of the step's examples that selected each unit
        rate = tf.minimum(examples / self.BOOST_PERIOD, 1.0)
        self.duty_cycle.assign((1.0 - rate) * self.duty_cycle + rate * fraction)

    def sketch_queries(self, inputs):
        """`inputs` projected on the sketch: `x B^T`, `[batch, rank]`."""
        return times_transposed(inputs, self.sketch_inputs)

    def sketch_products(self, inputs):
        """`products` through the sketch."""
        return tf.matmul(self.sketch_queries(inputs), self.sketch_units, transpose_b=True)

    def refresh(self, inputs, products):
        self.fit_products(products)

    def fit(self, inputs):
        """Refits the sketch to the layer's exact products on `inputs` (a batch)."""
        self.fit_products(self.products(inputs))

    def fit_products(self, products):
        """Refits the sketch to `products` `[n, units]`: A becomes their top `rank` left
        singular vectors over the units (found from the `n x n` Gram matrix, cheap for wide
        layers), B = A^T W."""
        gram = tf.matmul(products, products, transpose_b=True)
        eigenvalues, eigenvectors = tf.linalg.eigh(gram)  # ascending
        count = tf.minimum(self.rank, tf.shape(gram)[0])
        eigenvalues = tf.reverse(eigenvalues, [0])[:count]
        eigenvectors = tf.reverse(eigenvectors, [1])[:, :count]
        # Directions the products barely span are left out (zero columns), not amplified.
        keep = eigenvalues > 1e-6 * tf.maximum(eigenvalues[0], 1e-30)
        scale = tf.where(keep, tf.math.rsqrt(tf.maximum(eigenvalues, 1e-30)), 0.0)
        basis = tf.matmul(products, eigenvectors * scale, transpose_a=True)  # [units, count]
        basis = tf.pad(basis, [[0, 0], [0, self.rank - count]])
        self.sketch_units.assign(tf.ensure_shape(basis, [self.units, self.rank]))
        self.sketch_inputs.assign(tf.matmul(basis, self.kernel, transpose_a=True))

    @property
    def memory_bytes(self):
        return 4 * self.rank * (self.units + int(self.kernel.shape[1]))


class HashTables(UnitSelector):
    """L locality-sensitive hash tables of the units' weight vectors, queried with each
    input's codes (the paper's and SLIDE's rule; Mongoose's one set per batch with
    `batch_wide`).

    The tables are rebuilt (`rebuild`), or brought up to date for the units whose weights
    changed (`refresh`), from the layer's current weights; `LSHRebuildCallback` schedules
    that, and the layer refreshes them every `refresh_period` training steps itself.
    """

    def __init__(self, units, num_active, seed, config):
        super().__init__(units, num_active, seed)
        self.config = config
        self.rule = config.rule
        self.num_hashes = config.hashes_for(units, num_active)
        self.bucket_bits = tf_lsh_ops.bucket_bits(
            config.hash_family, self.num_hashes, config.bin_size
        )
        if self.bucket_bits > tf_lsh_ops.lsh.MAX_BUCKET_BITS:
            raise ValueError(
                f"LSHDense: {config.hash_family} with num_hashes={self.num_hashes} needs "
                f"{self.bucket_bits} bits per bucket id; at most "
                f"{tf_lsh_ops.lsh.MAX_BUCKET_BITS} are allowed"
            )

    def build(self, kernel, bias, add_state, add_step):
        self.kernel, self.bias = kernel, bias
        config = self.config
        params = tf_lsh_ops.hash_params(
            config.hash_family,
            int(kernel.shape[1]),
            config.num_tables,
            self.num_hashes,
            bin_size=config.bin_size,
            mips=config.mips,
            seed=self.seed,
        )
        self.hash_params = add_state("hash_params", params.shape, params.dtype.name, params)
        buckets = 2**self.bucket_bits
        self.ids = add_state(
            "table_ids", (config.num_tables, buckets, config.bucket_capacity), "int32", -1
        )
        self.counts = add_state("table_counts", (config.num_tables, buckets), "int32", 0)
        self.codes = add_state("neuron_codes", (self.units, config.num_tables), "int32", 0)
        # Fingerprints of the weights each unit's codes were hashed from (refresh).
        self.fingerprints = add_state("neuron_fingerprints", (self.units,), "int64", 0)
        self.max_norm = add_state("max_norm", (), "float32", 1.0)
        self.step = add_step()
        # Whether the tables hold the units yet. Keras often builds layers while tracing the
        # train function, where the first tables cannot be made eagerly: then the first step
        # makes them, once (see ensure_built).
        self.built_flag = add_state("tables_built", (), "bool", False)
        if tf.executing_eagerly():
            self.rebuild()

    @property
    def memory_bytes(self):
        """The tables and the units' stored bucket ids and fingerprints."""
        config = self.config
        buckets = config.num_tables * 2**self.bucket_bits
        table_bytes = 4 * buckets * (config.bucket_capacity + 1)
        return table_bytes + 4 * self.units * config.num_tables + 8 * self.units

    def hash(self, vectors, mips_side):
        """int32 `[n, num_tables]` codes of `vectors` (`mips_side`: "data" for the units' weights,
        "query" for inputs)."""
        config = self.config
        return tf_lsh_ops.lsh_hash(
            vectors,
            self.hash_params,
            family=config.hash_family,
            num_tables=config.num_tables,
            num_hashes=self.num_hashes,
            mips=mips_side if config.mips else "none",
            max_norm=self.max_norm,
        )

    def select(self, inputs, labels=None, shared=False):
        self.ensure_built()
        config = self.config
        seed = self.seed + 1_000_003 * tf.cast(self.step, tf.int64) + _replica_seed_offset()
        codes = self.hash(inputs, "query")

        def query(k):
            return tf_lsh_ops.query_tables(
                codes,
                self.ids,
                self.counts,
                k=k,
                num_neurons=self.units,
                rule=self.rule,
                min_count=config.min_count,
                fill_random=config.fill_random,
                labels=labels,
                batch_wide=shared,
                seed=seed,
            )

        if not (shared and labels is not None):
            return query(self.num_active)
        # A batch's labels may outnumber the set (say 200 examples of 5 labels for 500 units):
        # the set then holds them all, and nothing else (each label is the others' negative).
        batch_labels = tf.unique(tf.boolean_mask(labels, labels >= 0)).y
        return tf.cond(
            tf.size(batch_labels) > self.num_active,
            lambda: batch_labels[None, :],
            lambda: query(self.num_active),
        )

    def refresh(self, inputs=None, products=None):
        """Re-hashes only the units whose weights changed since they were hashed.

        Comparing fingerprints of the weights (`tf_lsh_ops.row_fingerprints`, one read of the
        kernel) finds them whatever changed the weights: the optimizer, weight decay,
        `set_weights`. Those units get the codes a full rebuild would give them and move
        buckets (`tf_lsh_ops.update_tables`); the only difference from `rebuild` is which units
        a full bucket keeps, as the others are not re-inserted. Calls `rebuild` instead when
        more than half the units changed (cheaper then), or, with MIPS, when a changed unit's
        norm exceeds the norm the tables were hashed with (which changes every unit's
        transform).

        Returns:
          The number of units re-hashed (int32 scalar tensor).

        Example:

        >>> layer = LSHDense(1000, active=50, num_tables=4)
        >>> layer.build((None, 16))
        >>> _ = layer.kernel.assign(layer.kernel * 2)  # every unit's weights change
        >>> int(layer.tables.refresh())
        1000
        >>> int(layer.tables.refresh())  # nothing moved since
        0
        """
        self.ensure_built()
        fingerprints = tf_lsh_ops.row_fingerprints(self.kernel)
        changed = tf.where(tf.not_equal(fingerprints, self.fingerprints.value))
        changed = tf.cast(tf.reshape(changed, [-1]), tf.int32)
        weights = tf.gather(self.kernel.value, changed)

        def move_changed():
            def move():
                self._move(changed, weights, tf.gather(fingerprints, changed))
                return tf.size(changed)

            # Nothing to move: skip update_tables, which would still copy the tables.
            return tf.cond(tf.size(changed) > 0, move, lambda: tf.constant(0, tf.int32))

        def rebuild_all():
            self.rebuild()
            return tf.constant(self.units, tf.int32)

        # When most units moved, hashing them all and building afresh costs less.
        rebuild = tf.size(changed) * 2 > self.units
        if self.config.mips:
            rebuild |= tf.reduce_any(tf.norm(weights, axis=1) > self.max_norm)
        return tf.cond(rebuild, rebuild_all, move_changed)

    def rebuild(self):
        """Re-hashes every unit from the current weights and rebuilds the tables."""
        config = self.config
        # The kernel's rows are read in place (no copy of the matrix), except for the MIPS
        # norm, which tf.norm computes from a copy.
        self.fingerprints.assign(tf_lsh_ops.row_fingerprints(self.kernel))
        kernel = self.kernel
        if config.mips:
            kernel = tf.convert_to_tensor(kernel)
            self.max_norm.assign(tf.maximum(tf.reduce_max(tf.norm(kernel, axis=1)), 1e-12))
        codes = self.hash(kernel, "data")
        ids, counts = tf_lsh_ops.build_tables(
            codes,
            bucket_bits=self.bucket_bits,
            capacity=config.bucket_capacity,
            overflow=config.overflow,
            seed=self.seed + 7919 * tf.cast(self.step, tf.int64),
        )
        self.codes.assign(codes)
        self.ids.assign(ids)
        self.counts.assign(counts)
        self.built_flag.assign(True)

    def update(self, unit_ids):
        """Re-hashes only `unit_ids` (distinct, int32) and moves those whose bucket changed.

        Keeps the norm of the last full rebuild for the MIPS transform, so the rest of the
        tables stay valid.
        """
        unit_ids = tf.convert_to_tensor(unit_ids, tf.int32)
        weights = tf.gather(self.kernel.value, unit_ids)
        self._move(unit_ids, weights, tf_lsh_ops.row_fingerprints(weights))

    def ensure_built(self):
        """Builds the first tables if the layer was built where they could not be (a trace)."""
        if tf.executing_eagerly():
            if not bool(self.built_flag.numpy()):  # a Keras Variable has no __bool__
                self.rebuild()
            return

        def rebuild():
            self.rebuild()
            return tf.constant(True)

        tf.cond(self.built_flag, lambda: tf.constant(False), rebuild)

    def _move(self, unit_ids, weights, fingerprints):
        """Re-hashes `unit_ids` from their `weights` and moves them in the tables."""
        new_codes = self.hash(weights, "data")
        old_codes = tf.gather(self.codes.value, unit_ids)
        ids, counts = tf_lsh_ops.update_tables(
            self.ids,
            self.counts,
            unit_ids,
            old_codes,
            new_codes,
            overflow=self.config.overflow,
            seed=self.seed + 104729 * tf.cast(self.step, tf.int64),
        )
        # In place, on the tf.Variable behind the Keras one (which has no scatter_update):
        # assigning a scattered copy would write all the units' codes.
        self.codes.value.scatter_update(tf.IndexedSlices(new_codes, unit_ids))
        self.fingerprints.value.scatter_update(tf.IndexedSlices(fingerprints, unit_ids))
        self.ids.assign(ids)
        self.counts.assign(counts)


class InferenceSketch(tf.Module):
    """What `inference="sketch"` computes: each example's `num_active` largest pre-activations
    of a random rank-`rank` sketch of the layer, which the layer then computes exactly.

    The sketch scores `(x P^T) (W P^T)^T + bias`, with P `[rank, input_dim]` Gaussian of
    variance `1 / rank`: unbiased estimates of the products, with noise of about
    `|x| |w| / sqrt(rank)` (Johnson-Lindenstrauss). The units an output layer ranks first
    stand far above that noise, so the top `num_active` of the sketch hold them, and the exact
    products of those put them in order: `rank * (input_dim + units) + num_active *
    input_dim` multiplications an example against `units * input_dim`. A basis fitted to the
    products instead (the `"low_rank"` rule's) keeps the directions most units share and loses
    those that single out a label: on an extreme-classification head it put the exact top
    label first less often at every rank tried (benchmarks/README.md).

    `W P^T` is refitted at inference whenever the layer trained since the last fit (its
    `step` moved on); after changing the weights in another way, call `fit()`.
    """

    def __init__(self, num_active, rank, seed):
        super().__init__(name="inference_sketch")
        self.num_active = num_active
        self.rank = rank
        self.seed = seed

    def build(self, kernel, bias, step, add_state):
        """Creates the projection, the units' sketch and the step it was fitted at, as
        non-trainable weights of the layer (`add_state(name, shape, dtype, value)`)."""
        self.kernel, self.bias, self.step = kernel, bias, step
        units, input_dim = kernel.shape
        projection = tf.random.stateless_normal([self.rank, input_dim], [self.seed, 11])
        self.projection = add_state(
            "inference_projection", (self.rank, input_dim), "float32", projection / self.rank**0.5
        )
        self.sketch_units = add_state("inference_sketch", (units, self.rank), "float32", 0)
        self.fitted_step = add_state("inference_sketch_step", (), "int64", -1)

    def select(self, inputs):
        """int32 `[batch, num_active]`: the units of each example's largest sketched
        pre-activations."""
        tf.cond(tf.not_equal(self.fitted_step, self.step), self.fit, lambda: tf.constant(False))
        return tf_lsh_ops.matmul_top_k(
            times_transposed(inputs, self.projection), self.sketch_units, self.bias, self.num_active
        )

    def fit(self):
        """Sketches the units' current weights (`W P^T`); returns True."""
        self.sketch_units.assign(tf.matmul(self.kernel, self.projection, transpose_b=True))
        self.fitted_step.assign(self.step)
        return tf.constant(True)

    @property
    def memory_bytes(self):
        return 4 * self.rank * sum(int(n) for n in self.kernel.shape)


def times_transposed(inputs, matrix):
    """`inputs` (dense or a 2-D `tf.SparseTensor`) times `matrix` transposed (not
    differentiable for sparse inputs: it serves the selection)."""
    if isinstance(inputs, tf.SparseTensor):
        # Row by row of `matrix`: sparse_dense_matmul with adjoint_b transposes all of it first.
        return tf_lsh_ops.sparse_input_products(inputs, matrix)
    return tf.matmul(inputs, matrix, transpose_b=True)


def top_units(scores, k, labels=None):
    """The ids of each row's k largest `scores`, `labels` (-1 padded) first: int32 `[batch, k]`."""
    if labels is not None:
        positions = label_positions(tf.convert_to_tensor(labels, tf.int32))
        infinity = tf.fill(tf.shape(positions)[:1], tf.constant(float("inf"), scores.dtype))
        scores = tf.tensor_scatter_nd_update(scores, positions, infinity)
    return tf.math.top_k(scores, k).indices


def _replica_seed_offset():
    """0, or under tf.distribute a per-replica offset of the random-fill seed: each replica's
    batch gets its own random units, as one process's batch would (the fill's random stream is
    the row within the batch, which replicas share)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return 0
    return 2_000_003 * tf.cast(context.replica_id_in_sync_group, tf.int64)


def is_int(value):
    """Whether `value` is an int and not a bool (which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)
