"""`LSHDense`: a dense layer that computes only the units a hash-table lookup selects."""

import contextlib
import math

import keras
import tensorflow as tf
from keras import activations, constraints, initializers, regularizers

import tf_lsh_ops
from keras_layers.metrics import NAN, LSHRecall, UnitCoverage

INFERENCE_MODES = ("dense", "top_k", "lsh")
TABLE_RULES = tf_lsh_ops.QUERY_RULES
ACTIVE_RULES = ("auto", "low_rank", "exact", *TABLE_RULES)
_SIMHASH = ("srp", "sparse_srp")


@keras.saving.register_keras_serializable(package="tf_lsh")
class LSHDense(keras.layers.Layer):
    """A `Dense` layer whose forward and backward passes touch only a few, hashed-for units.

    Each unit's weight vector sits in L locality-sensitive hash tables. For every example the
    layer hashes its input, looks up the L buckets it falls in and computes only the `active`
    units found there (the paper's rule: those found in most tables), so a training step costs
    about `active / units` of a dense one and its weight gradients are sparse
    (`tf.IndexedSlices`, for `SparseAdam` or `keras.optimizers.SGD`). The tables are rebuilt from
    the current weights by `LSHRebuildCallback` every few steps.

    As a hidden layer (the paper), the output is `[batch, units]` with zeros outside each
    example's active set. As an output layer over many classes (SLIDE), train it with
    `LSHClassifier`, which puts each example's labels in its active set and takes the softmax
    cross-entropy over that set.

    Weights are stored neuron-major: `kernel` is `[units, input_dim]` (row j is unit j's
    weights; the transpose of `keras.layers.Dense`'s kernel), so an active unit's weights are
    one contiguous row. Hash parameters and tables are non-trainable weights: checkpoints,
    `.keras` files and SavedModels carry them.

    Args:
      units: number of units.
      activation: as for `Dense`.
      use_bias: as for `Dense`.
      kernel_initializer: as for `Dense` (fan-in and fan-out as for a `[input_dim, units]`
        kernel).
      bias_initializer, kernel_regularizer, bias_regularizer, activity_regularizer,
        kernel_constraint, bias_constraint: as for `Dense`.
      active: units computed per example: a fraction of `units` (a float in (0, 1]) or a count
        (an int >= 1). Default 5%.
      hash_family: `"srp"` (SimHash), `"sparse_srp"`, `"wta"` or `"dwta"` (see
        `tf_lsh_ops.lsh`).
      mips: SimHash only: hash with the asymmetric MIPS transform, so that tables rank units by
        inner product rather than by angle. It suits weights of similar norms: one unit with a
        much larger norm than the rest crowds the others into few buckets.
      num_hashes: K, hashes per table; None picks a value for `units` and `active`.
      num_tables: L.
      bin_size: coordinates per WTA hash.
      bucket_capacity: ids a bucket holds.
      active_rule: how each example's active units are chosen:
        - `"low_rank"`: the `active` largest pre-activations of a rank-`rank` sketch of the
          layer (`x -> (x B^T) A^T + bias`, `rank * (input_dim + units)` multiplications an
          example), which the layer refits every `refresh_period` training steps from the
          batch's exact pre-activations (their top `rank` singular vectors over the units).
          It finds most of the exact top units of hidden layers, where SimHash tables of the
          weights find few (benchmarks/README.md, "hidden layers").
        - `"frequency"`, `"union"` or `"threshold"`: hash tables of the units' weights, queried
          with that rule (see `tf_lsh_ops.query_tables`); the choice for output layers over
          many labels, whose labels join each active set.
        - `"exact"`: every unit's pre-activation, then the top `active` (as expensive as
          `Dense`; the reference the others are measured against).
        - `"auto"` (default): `"low_rank"` for a layer with an activation (a hidden layer),
          `"frequency"` for a linear one (an output layer over labels).
      rank: sketch rank for `"low_rank"`.
      refresh_period: every this many training steps the layer refreshes its selector: refits
        the sketch (`"low_rank"`) from the batch's exact pre-activations, or re-hashes the
        units whose weights changed (`refresh_tables`, table rules; `LSHRebuildCallback` adds
        full rebuilds and other schedules). None: never (tables then need the callback).
      track_selection: record two Keras metrics in training (in the logs, `History` and
        TensorBoard): `<name>_recall`, the fraction of each example's exact top `active` units
        that the selection held, measured on the refresh steps (costs the batch's exact
        pre-activations there, which `"low_rank"` computes anyway), and `<name>_coverage`,
        the fraction of units selected at least once in the epoch (units never selected never
        learn). `evaluate` lists them too, as NaN: they are measured in training only.
      min_count: for `"threshold"`.
      fill_random: fill active sets the tables leave short with random units (else -1
        padding, computed as 0).
      overflow: `"reservoir"` (a uniform sample of a full bucket's units) or `"fifo"` (the
        latest inserted; a full rebuild inserts units in id order, so FIFO keeps high ids).
      batch_wide: one active set per batch (as Mongoose) instead of per example.
      sparse_outputs: in training (and LSH inference), return the active units' activations
        as a `tf.SparseTensor` `[batch, units]` (each example's active ids and values) instead
        of a dense tensor with zeros elsewhere. A following `LSHDense` reads it sparsely
        (hashing and `sparse_input_gather_matmul`), so neither layer forms `[batch, units]`.
        Exact (dense) inference still returns a dense tensor.
      inference: `"dense"` (all units, as `Dense`), `"top_k"` (all units computed, each
        example's `active` largest kept, as in training with exact selection; both with
        standard TF ops only) or `"lsh"` (only the units `active_rule` selects are computed);
        None (default): `"lsh"` with the `"low_rank"` and `"exact"` rules (it computes what
        training computed; with `"low_rank"` at a fraction of the cost), `"dense"` with
        tables. Switch it after training with `set_inference(model, mode)`.
      seed: seeds the hash functions, the tables and the random fill.
      **kwargs: base `Layer` arguments (`name`, `dtype`, ...).

    Example:

    >>> layer = LSHDense(1000, activation="relu", active=0.05)
    >>> layer.selection
    'low_rank'
    >>> x = tf.random.stateless_normal([4, 64], seed=[0, 1])
    >>> layer(x, training=True).shape
    TensorShape([4, 1000])
    >>> int(tf.reduce_max(tf.math.count_nonzero(layer(x, training=True), axis=1))) <= 50
    True
    """

    def __init__(
        self,
        units,
        activation=None,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        active=0.05,
        hash_family="srp",
        mips=False,
        num_hashes=None,
        num_tables=16,
        bin_size=8,
        bucket_capacity=128,
        active_rule="auto",
        rank=32,
        refresh_period=20,
        track_selection=False,
        min_count=1,
        fill_random=True,
        overflow="reservoir",
        batch_wide=False,
        sparse_outputs=False,
        inference=None,
        seed=0,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if not isinstance(units, int) or units < 1:
            raise ValueError(f"LSHDense: units must be a positive int, got {units!r}")
        self.units = units
        self.activation = activations.get(activation)
        self.use_bias = use_bias
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.kernel_regularizer = regularizers.get(kernel_regularizer)
        self.bias_regularizer = regularizers.get(bias_regularizer)
        self.kernel_constraint = constraints.get(kernel_constraint)
        self.bias_constraint = constraints.get(bias_constraint)

        self.active = active
        self.num_active = _active_count(active, units)
        if hash_family not in tf_lsh_ops.HASH_FAMILIES:
            raise ValueError(
                f"LSHDense: unknown hash_family {hash_family!r}; expected one of "
                f"{tf_lsh_ops.HASH_FAMILIES}"
            )
        self.hash_family = hash_family
        if mips and hash_family not in _SIMHASH:
            raise ValueError(f"LSHDense: mips=True needs a SimHash family, not {hash_family!r}")
        self.mips = bool(mips)
        if not isinstance(num_tables, int) or num_tables < 1:
            raise ValueError(f"LSHDense: num_tables must be an int >= 1, got {num_tables!r}")
        self.num_tables = num_tables
        if hash_family in ("wta", "dwta") and (bin_size < 2 or bin_size & (bin_size - 1)):
            raise ValueError(f"LSHDense: bin_size must be a power of two >= 2, got {bin_size}")
        self.bin_size = bin_size
        # Checked before the default num_hashes, which divides by it.
        if not isinstance(bucket_capacity, int) or bucket_capacity < 1:
            raise ValueError(f"LSHDense: bucket_capacity must be >= 1, got {bucket_capacity!r}")
        self.num_hashes = num_hashes
        self.num_hashes_used = (
            num_hashes
            if num_hashes is not None
            else _default_num_hashes(
                hash_family, units, self.num_active, num_tables, bucket_capacity, bin_size
            )
        )
        if self.num_hashes_used < 1:
            raise ValueError(f"LSHDense: num_hashes must be >= 1, got {num_hashes}")
        self.bucket_bits = tf_lsh_ops.bucket_bits(hash_family, self.num_hashes_used, bin_size)
        if self.bucket_bits > tf_lsh_ops.lsh.MAX_BUCKET_BITS:
            raise ValueError(
                f"LSHDense: {hash_family} with num_hashes={self.num_hashes_used} needs "
                f"{self.bucket_bits} bits per bucket id; at most "
                f"{tf_lsh_ops.lsh.MAX_BUCKET_BITS} are allowed"
            )
        self.bucket_capacity = bucket_capacity
        if active_rule not in ACTIVE_RULES:
            raise ValueError(
                f"LSHDense: unknown active_rule {active_rule!r}; expected one of {ACTIVE_RULES}"
            )
        self.active_rule = active_rule
        if active_rule == "auto":
            hidden = self.activation not in (None, activations.linear)
            active_rule = "low_rank" if hidden and not batch_wide else "frequency"
        # The rule in force: what active_rule="auto" resolved to.
        self.selection = active_rule
        if batch_wide and not self.uses_tables:
            raise ValueError(
                f"LSHDense: batch_wide=True needs a hash-table active_rule {TABLE_RULES}, "
                f"not {active_rule!r}"
            )
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"LSHDense: rank must be an int >= 1, got {rank!r}")
        self.rank = rank
        if refresh_period is not None and (
            isinstance(refresh_period, bool)
            or not isinstance(refresh_period, int)
            or refresh_period < 1
        ):
            raise ValueError(
                f"LSHDense: refresh_period must be None or an int >= 1, got {refresh_period!r}"
            )
        self.refresh_period = refresh_period
        if track_selection and refresh_period is None:
            raise ValueError(
                "LSHDense: track_selection=True measures on the refresh steps; "
                "refresh_period must be set, got None"
            )
        self.track_selection = bool(track_selection)
        if min_count < 1:
            raise ValueError(f"LSHDense: min_count must be >= 1, got {min_count}")
        self.min_count = min_count
        self.fill_random = bool(fill_random)
        if overflow not in tf_lsh_ops.OVERFLOW_POLICIES:
            raise ValueError(
                f"LSHDense: unknown overflow {overflow!r}; expected one of "
                f"{tf_lsh_ops.OVERFLOW_POLICIES}"
            )
        self.overflow = overflow
        self.batch_wide = bool(batch_wide)
        self.sparse_outputs = bool(sparse_outputs)
        if inference is None:
            inference = "dense" if self.uses_tables else "lsh"
        self.inference = inference  # checked by the property setter
        self.seed = int(seed)
        self.supports_jit = False
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        # Keras reports metrics that a layer tracks with the model's (logs, History,
        # TensorBoard).
        self.coverage = self.recall = None
        if self.track_selection:
            self.coverage = UnitCoverage(units, name=f"{self.name}_coverage")
            self.recall = LSHRecall(self.num_active, name=f"{self.name}_recall", when_empty=NAN)

    @property
    def uses_tables(self):
        """Whether the active units come from hash tables (`LSHRebuildCallback` keeps them)."""
        return self.selection in TABLE_RULES

    @property
    def inference(self):
        return self._inference

    @inference.setter
    def inference(self, mode):
        if mode not in INFERENCE_MODES:
            raise ValueError(
                f"LSHDense: unknown inference mode {mode!r}; expected one of {INFERENCE_MODES}"
            )
        self._inference = mode

    @property
    def table_bytes(self):
        """Memory of the hash tables and the units' stored bucket ids and fingerprints, in bytes
        (the sketch of `"low_rank"`: `4 * rank * (units + input_dim)`)."""
        if not self.uses_tables:
            return 0
        buckets = self.num_tables * 2**self.bucket_bits
        return 4 * (buckets * (self.bucket_capacity + 1) + self.units * self.num_tables) + (
            8 * self.units
        )

    def build(self, input_shape):
        input_dim = int(input_shape[-1])
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: input_dim})
        initializer = self.kernel_initializer

        def neuron_major(shape, dtype=None):
            # Fan-in and fan-out as for Dense's [input_dim, units] kernel.
            return keras.ops.transpose(initializer((shape[1], shape[0]), dtype=dtype))

        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.units, input_dim),
            initializer=neuron_major,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self.bias = self.add_weight(
            name="bias",
            shape=(self.units,),
            initializer=self.bias_initializer if self.use_bias else "zeros",
            regularizer=self.bias_regularizer if self.use_bias else None,
            constraint=self.bias_constraint if self.use_bias else None,
            trainable=self.use_bias,
        )
        if self.uses_tables:
            self._build_tables(input_dim)
            return
        self.step = self._step_state()
        if self.selection == "low_rank":
            # x -> (x B^T) A^T approximates x W^T: A [units, rank] has orthonormal columns
            # spanning the units' main directions of variation over recent inputs, B = A^T W.
            self.sketch_units = self._state("sketch_units", (self.units, self.rank), "float32", 0)
            self.sketch_inputs = self._state("sketch_inputs", (self.rank, input_dim), "float32", 0)
            if tf.executing_eagerly():
                self._fit_sketch_to_weights()

    def _build_tables(self, input_dim):
        params = tf_lsh_ops.hash_params(
            self.hash_family,
            input_dim,
            self.num_tables,
            self.num_hashes_used,
            bin_size=self.bin_size,
            mips=self.mips,
            seed=self.seed,
        )
        self.hash_params = self._state("hash_params", params.shape, params.dtype.name, params)
        buckets = 2**self.bucket_bits
        self.table_ids = self._state(
            "table_ids", (self.num_tables, buckets, self.bucket_capacity), "int32", -1
        )
        self.table_counts = self._state("table_counts", (self.num_tables, buckets), "int32", 0)
        self.neuron_codes = self._state("neuron_codes", (self.units, self.num_tables), "int32", 0)
        # Fingerprints of the weights each unit's codes were hashed from (refresh_tables).
        self.neuron_fingerprints = self._state("neuron_fingerprints", (self.units,), "int64", 0)
        self.max_norm = self._state("max_norm", (), "float32", 1.0)
        # Created here, between the tables' state, to keep the order that .keras files
        # written before other rules existed store the weights in.
        self.step = self._step_state()
        # Whether the tables hold the units yet. Keras often builds layers while tracing the
        # train function, where the first tables cannot be made eagerly: then the first step
        # makes them, once (see _ensure_tables).
        self.tables_built = self._state("tables_built", (), "bool", False)
        if tf.executing_eagerly():
            self.rebuild_tables()

    def _step_state(self):
        """Training calls so far: the refresh schedule, and the random fill's seed (so that it
        differs between steps)."""
        return self._state("step", (), "int64", 0)

    def _state(self, name, shape, dtype, value):
        """A non-trainable weight (saved and restored with the model)."""
        return self.add_weight(
            name=name,
            shape=shape,
            dtype=dtype,
            initializer=lambda shape, dtype=None: tf.cast(
                tf.broadcast_to(value, shape), dtype or "float32"
            ),
            trainable=False,
        )

    def _hash(self, vectors, mips_side):
        return tf_lsh_ops.lsh_hash(
            vectors,
            self.hash_params,
            family=self.hash_family,
            num_tables=self.num_tables,
            num_hashes=self.num_hashes_used,
            mips=mips_side if self.mips else "none",
            max_norm=self.max_norm,
        )

    def rebuild_tables(self):
        """Re-hashes every unit from the current weights and rebuilds the tables."""
        self._require_tables("rebuild_tables")
        # The kernel's rows are read in place (no copy of the matrix), except for the MIPS
        # norm, which tf.norm computes from a copy.
        self.neuron_fingerprints.assign(tf_lsh_ops.row_fingerprints(self.kernel))
        if self.mips:
            kernel = tf.convert_to_tensor(self.kernel)
            self.max_norm.assign(tf.maximum(tf.reduce_max(tf.norm(kernel, axis=1)), 1e-12))
        else:
            kernel = self.kernel
        codes = self._hash(kernel, "data")
        ids, counts = tf_lsh_ops.build_tables(
            codes,
            bucket_bits=self.bucket_bits,
            capacity=self.bucket_capacity,
            overflow=self.overflow,
            seed=self.seed + 7919 * tf.cast(self.step, tf.int64),
        )
        self.neuron_codes.assign(codes)
        self.table_ids.assign(ids)
        self.table_counts.assign(counts)
        self.tables_built.assign(True)

    def refresh_tables(self):
        """Re-hashes only the units whose weights changed since they were hashed.

        Between two refreshes a sparse update touches few units (3%-7% of an Amazon-670K
        output layer between two of `LSHRebuildCallback`'s events), and comparing fingerprints
        of the weights (`tf_lsh_ops.row_fingerprints`, one read of the kernel) finds them
        whatever changed the weights: the optimizer, weight decay, `set_weights`. Those units
        get the codes a full rebuild would give them and move buckets (`update_tables`); the
        only difference from `rebuild_tables` is which units a full bucket keeps, as the
        others are not re-inserted. It calls `rebuild_tables` instead when more than half the
        units changed (cheaper then), or, with MIPS, when a changed unit's norm exceeds the
        norm the tables were hashed with (which changes every unit's transform).

        Returns:
          The number of units re-hashed (int32 scalar tensor).

        Example:

        >>> layer = LSHDense(1000, active=50, num_tables=4)
        >>> layer.build((None, 16))
        >>> _ = layer.kernel.assign(layer.kernel * 2)  # every unit's weights change
        >>> int(layer.refresh_tables())
        1000
        >>> int(layer.refresh_tables())  # nothing moved since
        0
        """
        self._require_tables("refresh_tables")
        self._ensure_tables()
        fingerprints = tf_lsh_ops.row_fingerprints(self.kernel)
        changed = tf.where(tf.not_equal(fingerprints, self.neuron_fingerprints.value))
        changed = tf.cast(tf.reshape(changed, [-1]), tf.int32)
        weights = tf.gather(self.kernel.value, changed)

        def move_changed():
            def move():
                self._move_units(changed, weights, tf.gather(fingerprints, changed))
                return tf.size(changed)

            # Nothing to move: skip update_tables, which would still copy the tables.
            return tf.cond(tf.size(changed) > 0, move, lambda: tf.constant(0, tf.int32))

        def rebuild_all():
            self.rebuild_tables()
            return tf.constant(self.units, tf.int32)

        # When most units moved, hashing them all and building afresh costs less.
        rebuild = tf.size(changed) * 2 > self.units
        if self.mips:
            rebuild |= tf.reduce_any(tf.norm(weights, axis=1) > self.max_norm)
        return tf.cond(rebuild, rebuild_all, move_changed)

    def _require_tables(self, method):
        if not self.uses_tables:
            raise ValueError(
                f"LSHDense.{method}: layer {self.name!r} selects with active_rule="
                f"{self.selection!r}, which keeps no hash tables"
            )

    def _ensure_tables(self):
        if tf.executing_eagerly():
            if not bool(self.tables_built.numpy()):  # a Keras Variable has no __bool__
                self.rebuild_tables()
            return

        def rebuild():
            self.rebuild_tables()
            return tf.constant(True)

        tf.cond(self.tables_built, lambda: tf.constant(False), rebuild)

    def update_tables(self, unit_ids):
        """Re-hashes only `unit_ids` (distinct, int32) and moves those whose bucket changed.

        Keeps the norm of the last full rebuild for the MIPS transform, so the rest of the
        tables stay valid.
        """
        self._require_tables("update_tables")
        unit_ids = tf.convert_to_tensor(unit_ids, tf.int32)
        weights = tf.gather(self.kernel.value, unit_ids)
        self._move_units(unit_ids, weights, tf_lsh_ops.row_fingerprints(weights))

    def _move_units(self, unit_ids, weights, fingerprints):
        """Re-hashes `unit_ids` from their `weights` and moves them in the tables."""
        new_codes = self._hash(weights, "data")
        old_codes = tf.gather(self.neuron_codes.value, unit_ids)
        ids, counts = tf_lsh_ops.update_tables(
            self.table_ids,
            self.table_counts,
            unit_ids,
            old_codes,
            new_codes,
            overflow=self.overflow,
            seed=self.seed + 104729 * tf.cast(self.step, tf.int64),
        )
        # In place, on the tf.Variable behind the Keras one (which has no scatter_update):
        # assigning a scattered copy would write all the units' codes.
        self.neuron_codes.value.scatter_update(tf.IndexedSlices(new_codes, unit_ids))
        self.neuron_fingerprints.value.scatter_update(tf.IndexedSlices(fingerprints, unit_ids))
        self.table_ids.assign(ids)
        self.table_counts.assign(counts)

    def active_ids(self, inputs, labels=None):
        """The units each example computes, chosen by `active_rule`: int32 `[batch, k]`
        (`[1, k]` if batch-wide).

        `labels` (int32 `[batch, max_labels]`, -1 padded) are always included, first (beyond
        k labels, the first k).
        """
        if not self.uses_tables:
            products = (
                self._sketch_products(inputs)
                if self.selection == "low_rank"
                else self._products(inputs)
            )
            return _top_units(products + self.bias, self.num_active, labels)
        self._ensure_tables()
        return tf_lsh_ops.query_tables(
            self._hash(inputs, "query"),
            self.table_ids,
            self.table_counts,
            k=self.num_active,
            num_neurons=self.units,
            rule=self.selection,
            min_count=self.min_count,
            fill_random=self.fill_random,
            labels=labels,
            batch_wide=self.batch_wide,
            seed=self.seed + 1_000_003 * tf.cast(self.step, tf.int64) + _replica_seed_offset(),
        )

    def _products(self, inputs):
        """`inputs` times every unit's weights, without the bias: `[batch, units]`."""
        return _times_transposed(inputs, self.kernel)

    def _sketch_products(self, inputs):
        """`_products` through the rank-`rank` sketch: `rank * (input_dim + units)`
        multiplications an example instead of `input_dim * units`."""
        return tf.matmul(
            _times_transposed(inputs, self.sketch_inputs), self.sketch_units, transpose_b=True
        )

    def fit_sketch(self, inputs):
        """Refits the `"low_rank"` sketch to the layer's exact products on `inputs` (a batch);
        training does so every `refresh_period` steps."""
        self._fit_sketch(self._products(inputs))

    def _fit_sketch(self, products):
        """Refits the sketch to `products` `[n, units]` (inputs times the units' weights): A
        becomes their top `rank` left singular vectors over the units (found from the `n x n`
        Gram matrix, cheap for wide layers), B = A^T W."""
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

    def _fit_sketch_to_weights(self):
        """A first sketch, before any input was seen: fitted to products on random inputs."""
        probes = tf.random.stateless_normal(
            [4 * self.rank, self.kernel.shape[1]], seed=[self.seed, 7]
        )
        self._fit_sketch(self._products(probes))

    def _refresh(self, inputs):
        """A refresh step (`refresh_period`): with `track_selection`, how many of each
        example's exact top units the selection holds; then the selector brought up to date."""
        if self.track_selection or self.selection == "low_rank":
            products = self._products(inputs)
        if self.track_selection:
            exact = tf.math.top_k(products + self.bias, self.num_active).indices
            self.recall.update_state(exact, self.active_ids(inputs))
        if self.selection == "low_rank":
            self._fit_sketch(products)
        elif self.uses_tables:
            self.refresh_tables()

    def _refresh_if_due(self, inputs):
        def refresh():
            self._refresh(inputs)
            return tf.constant(True)

        due = tf.equal(self.step % self.refresh_period, 0)
        tf.cond(due, refresh, lambda: tf.constant(False))

    def active_outputs(self, inputs, labels=None):
        """`(ids, values)`: the active units and their activations, both `[batch, k]`.

        Padding ids (-1) have value 0. Gradients of `values` reach the weights as
        `tf.IndexedSlices` over the active rows.
        """
        ids, values, _ = self._active_outputs(inputs, labels)
        return ids, values

    def _active_outputs(self, inputs, labels, fused_tape=None, per_example_ids=True):
        """`active_outputs`, and with `fused_tape` (dense inputs) what a training step that fuses
        the backward pass with the optimizer needs: `(outputs before the activation, the ids
        given to the op, its grouping)`; else None. Without `per_example_ids`, a batch-wide
        layer on dense inputs returns its ids as `[1, k]` (the loss takes them so), not tiled."""
        ids = self.active_ids(inputs, labels)
        sparse = isinstance(inputs, tf.SparseTensor)
        fused = None
        if not sparse:
            # A batch-wide set stays [1, k]: the op then multiplies dense blocks.
            if fused_tape is not None:
                # The fused step differentiates the loss only up to the op's outputs. Recorded,
                # the op would still have its unfused gradient (and the body's below it) built
                # and run, as ops on variables are kept in graphs even when unused.
                with fused_tape.stop_recording():
                    values, grouping = tf_lsh_ops.sparse_gather_matmul_grouped(
                        inputs, self.kernel, self.bias, ids
                    )
                fused_tape.watch(values)
                fused = (values, ids, grouping)
            else:
                values = tf_lsh_ops.sparse_gather_matmul(inputs, self.kernel, self.bias, ids)
        if self.batch_wide and (sparse or per_example_ids):
            batch = inputs.dense_shape[0] if sparse else tf.shape(inputs, out_type=tf.int64)[0]
            ids = tf.tile(ids, tf.stack([batch, 1]))
        if sparse:
            values = tf_lsh_ops.sparse_input_gather_matmul(inputs, self.kernel, self.bias, ids)
        if self.activation is not None and self.activation is not activations.linear:
            values = tf.where(ids >= 0, self.activation(values), 0.0)
        return ids, values, fused

    def call(self, inputs, training=None):
        if not training and self.inference != "lsh":
            return self._all_units(inputs, keep_top_k=self.inference == "top_k")
        if training and self.refresh_period is not None:
            self._refresh_if_due(inputs)
        ids, values = self.active_outputs(inputs)
        if training:
            if self.track_selection:
                self.coverage.update_state(ids)
            self.step.assign_add(1)
        if self.sparse_outputs:
            return _sparse_rows(ids, values, self.units)
        return _scatter_rows(ids, values, self.units)

    def _all_units(self, inputs, keep_top_k):
        """Every unit's output (standard TF ops only), or with `keep_top_k` each example's
        `active` largest, zeros elsewhere."""
        outputs = self._products(inputs)
        if self.use_bias:
            outputs = outputs + self.bias
        if keep_top_k:
            top = tf.math.top_k(outputs, self.num_active)
            return _scatter_rows(top.indices, self.activation(top.values), self.units)
        return self.activation(outputs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def get_config(self):
        config = super().get_config()
        config.update(
            units=self.units,
            activation=activations.serialize(self.activation),
            use_bias=self.use_bias,
            kernel_initializer=initializers.serialize(self.kernel_initializer),
            bias_initializer=initializers.serialize(self.bias_initializer),
            kernel_regularizer=regularizers.serialize(self.kernel_regularizer),
            bias_regularizer=regularizers.serialize(self.bias_regularizer),
            kernel_constraint=constraints.serialize(self.kernel_constraint),
            bias_constraint=constraints.serialize(self.bias_constraint),
            active=self.active,
            hash_family=self.hash_family,
            mips=self.mips,
            num_hashes=self.num_hashes,
            num_tables=self.num_tables,
            bin_size=self.bin_size,
            bucket_capacity=self.bucket_capacity,
            active_rule=self.active_rule,
            rank=self.rank,
            refresh_period=self.refresh_period,
            track_selection=self.track_selection,
            min_count=self.min_count,
            fill_random=self.fill_random,
            overflow=self.overflow,
            batch_wide=self.batch_wide,
            sparse_outputs=self.sparse_outputs,
            inference=self.inference,
            seed=self.seed,
        )
        return config


def lsh_layers(model):
    """Every `LSHDense` inside `model`, nested models included."""
    return [
        layer for layer in model._flatten_layers(include_self=False) if isinstance(layer, LSHDense)
    ]


def set_inference(model, mode):
    """Switches every `LSHDense` of `model` to inference `mode` (one of `INFERENCE_MODES`).

    Also drops the model's traced predict and test functions, which Keras would otherwise
    keep using with the old mode.
    """
    for layer in lsh_layers(model):
        layer.inference = mode
    _drop_traced_inference(model)


@contextlib.contextmanager
def inference_mode(model, mode):
    """Every `LSHDense` of `model` in inference `mode` inside the block, in its own after.

    Example:

    >>> with inference_mode(model, "dense"):  # doctest: +SKIP
    ...     model.evaluate(x_test, y_test)
    """
    layers = lsh_layers(model)
    own = [layer.inference for layer in layers]
    set_inference(model, mode)
    try:
        yield model
    finally:
        for layer, layer_mode in zip(layers, own, strict=True):
            layer.inference = layer_mode
        _drop_traced_inference(model)


def _drop_traced_inference(model):
    model.predict_function = None
    model.test_function = None


def _active_count(active, units):
    if isinstance(active, bool) or not isinstance(active, (int, float)):
        raise ValueError(
            f"LSHDense: active must be a float fraction or an int count, got {active!r}"
        )
    if isinstance(active, float):
        if not 0 < active <= 1:
            raise ValueError(f"LSHDense: active as a fraction must be in (0, 1], got {active}")
        return max(1, round(active * units))
    if not 1 <= active <= units:
        raise ValueError(f"LSHDense: active = {active} units must be in [1, units = {units}]")
    return active


def _default_num_hashes(family, units, active, num_tables, capacity, bin_size):
    """K such that the L buckets of a query hold about twice `active` units, and a bucket's
    expected load fits its capacity."""
    bits = max(math.log2(max(num_tables * units / (2 * active), 2)), math.log2(units / capacity))
    bits = min(max(round(bits), 1), tf_lsh_ops.lsh.MAX_BUCKET_BITS)
    if family in _SIMHASH:
        return bits
    return max(1, math.ceil(bits / math.log2(bin_size)))


def _replica_seed_offset():
    """0, or under tf.distribute a per-replica offset of the random-fill seed: each replica's
    batch gets its own random units, as one process's batch would (the fill's random stream is
    the row within the batch, which replicas share)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return 0
    return 2_000_003 * tf.cast(context.replica_id_in_sync_group, tf.int64)


def _times_transposed(inputs, matrix):
    """`inputs` (dense or a 2-D `tf.SparseTensor`) times `matrix` transposed."""
    if isinstance(inputs, tf.SparseTensor):
        return tf.sparse.sparse_dense_matmul(inputs, matrix, adjoint_b=True)
    return tf.matmul(inputs, matrix, transpose_b=True)


def _top_units(scores, k, labels=None):
    """The ids of each row's k largest `scores`, `labels` (-1 padded) first: int32 `[batch, k]`."""
    if labels is not None:
        labels = tf.convert_to_tensor(labels, tf.int32)
        rows = tf.broadcast_to(tf.range(tf.shape(labels)[0])[:, None], tf.shape(labels))
        positions = tf.boolean_mask(tf.stack([rows, labels], -1), labels >= 0)
        infinity = tf.fill(tf.shape(positions)[:1], tf.constant(float("inf"), scores.dtype))
        scores = tf.tensor_scatter_nd_update(scores, positions, infinity)
    return tf.math.top_k(scores, k).indices


def _sparse_rows(ids, values, units):
    """A `tf.SparseTensor` `[batch, units]` of `values[b, j]` at `(b, ids[b, j])`, -1 skipped."""
    valid = ids >= 0
    rows = tf.broadcast_to(tf.range(tf.shape(ids, out_type=tf.int64)[0])[:, None], tf.shape(ids))
    indices = tf.stack(
        [tf.boolean_mask(rows, valid), tf.cast(tf.boolean_mask(ids, valid), tf.int64)], 1
    )
    return tf.SparseTensor(
        indices,
        tf.boolean_mask(values, valid),
        tf.stack([tf.shape(ids, out_type=tf.int64)[0], units]),
    )


def _scatter_rows(ids, values, units):
    """`[batch, units]` with `values[b, j]` at column `ids[b, j]` and zeros elsewhere."""
    valid = ids >= 0
    rows = tf.broadcast_to(tf.range(tf.shape(ids)[0])[:, None], tf.shape(ids))
    positions = tf.stack([rows, tf.where(valid, ids, 0)], axis=-1)
    return tf.scatter_nd(positions, tf.where(valid, values, 0.0), [tf.shape(ids)[0], units])


def export_saved_model(model, path, inference="dense", input_signature=None):
    """Exports `model` as a SavedModel serving its `call` with every `LSHDense` in `inference`.

    `inference="dense"` (every unit) and `"top_k"` (every unit computed, each example's top
    `active` kept) use standard TensorFlow ops only: the SavedModel loads with no plugin (TF
    Serving, C++, Java, ...). `inference="lsh"` serves only the selected units; loading it
    needs `import tf_lsh_ops` first. The model's own modes are restored afterwards.

    Args:
      model: a built Keras model.
      path: the SavedModel directory.
      inference: one of `INFERENCE_MODES`.
      input_signature: as for `keras.Model.export` (needed for models never called, e.g.
        `[keras.KerasTensor((None, num_features), "float32", sparse=True)]`).
    """
    with inference_mode(model, inference):
        model.export(path, input_signature=input_signature, verbose=False)
