"""`LSHDense`: a dense layer that computes only the units a hash-table lookup selects."""

import contextlib
import dataclasses
import math

import keras
import tensorflow as tf
from keras import activations, constraints, initializers, regularizers

import tf_lsh_ops
from keras_layers import _keras_compat
from keras_layers.metrics import NAN, LSHRecall, UnitCoverage
from keras_layers.optimizers import can_fuse_adam
from keras_layers.unit_selectors import (
    TABLE_RULES,
    ExactSelector,
    HashTables,
    InferenceSketch,
    LowRankSelector,
    TableConfig,
    is_int,
)

INFERENCE_MODES = ("dense", "top_k", "lsh", "sketch")
ACTIVE_RULES = ("auto", "low_rank", "exact", *TABLE_RULES)


@keras.saving.register_keras_serializable(package="tf_lsh")
class LSHDense(keras.layers.Layer):
    """A `Dense` layer whose forward and backward passes touch only a few selected units.

    For every example the layer chooses `active` of its units, those likely to have the
    largest pre-activations, and computes only them, so a training step costs about
    `active / units` of a dense one and its weight gradients are sparse (`tf.IndexedSlices`,
    for `SparseAdam` or `keras.optimizers.SGD`). Its `selector` makes the choice
    (`active_rule`): a low-rank sketch of the layer for hidden layers, or, as in the paper and
    SLIDE, L locality-sensitive hash tables of the units' weight vectors (`layer.tables`),
    which `LSHRebuildCallback` and the layer itself keep in step with the weights.

    As a hidden layer (the paper), the output is `[batch, units]` with zeros outside each
    example's active set. As an output layer over many classes (SLIDE), train it with
    `LSHClassifier`, which puts each example's labels in its active set and takes the softmax
    cross-entropy over that set.

    Weights are stored neuron-major: `kernel` is `[units, input_dim]` (row j is unit j's
    weights; the transpose of `keras.layers.Dense`'s kernel), so an active unit's weights are
    one contiguous row. The selector's state (hash parameters and tables, or the sketch) is
    non-trainable weights: checkpoints, `.keras` files and SavedModels carry it. The hash
    tables' arguments below form `layer.table_config` (a `TableConfig`, validated on
    construction whatever the rule).

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
      candidates: None (default: `active`), or more units (a fraction or a count) for the
        selection to propose per example, in a hidden layer. All are computed; each example's
        `active` largest pass on and the others give 0, but the gradient reaches every
        candidate as if it had passed (a straight-through estimate), so the units just below
        the cut learn too. Where only the winners learn, a few units win everything and the
        rest never train: on a bag-of-words input, 400 candidates for 50 active units closed
        most of the gap to `Dense` (benchmarks/README.md, "Sparse inputs"). A step then costs
        about `candidates` active units' work. The next layer reads every candidate, those
        not passed on as zeros: it skips them in its forward pass and leaves their weights
        alone, but sends them their gradient.
      input_active: None (default), or how many of the inputs are nonzero in an example (a
        count, or a fraction of the input width), when fewer than all: for a layer reading
        another `LSHDense`'s outputs, that layer's `active`. The kernel initializer (a
        variance-scaling one: Glorot, He, LeCun) then takes as its fans the connections
        that carry an example's signal, `input_active` inputs into a unit and `active` units
        out of an input, instead of the kernel's shape. From the shape, a wide layer reading 50
        nonzero inputs starts with weights so small that the first updates decide which
        units ever win. On a bag-of-words input, the second of two such layers gained 5
        points with it (He, `kernel_initializer="he_uniform"`, did best for ReLU units);
        on MNIST, whose hidden activations are larger, it cost 0.7-1.5; and the first layer,
        initialised for the bag of words' ~75 nonzeros of unit norm, learned worse
        (benchmarks/README.md, "Initialising for the active inputs").
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
      boost_strength: `"low_rank"` only: 0 (default), or how strongly the selection favours
        the units that training selected less often than `active / units` of the time
        (k-winners boosting, `LowRankSelector`; 1.5 is typical). Without it, a wide layer on
        sparse inputs trains the same few units every step (benchmarks/README.md, "Wide
        hidden layers"). Inference selects with the same boost.
      refresh_period: every this many training steps the layer refreshes its selector: refits
        the sketch (`"low_rank"`) from the batch's exact pre-activations, or re-hashes the
        units whose weights changed (`layer.tables.refresh()`, table rules;
        `LSHRebuildCallback` adds full rebuilds and other schedules). A refresh of a wide
        layer costs about `rank * units * input_dim` multiplications (the sketch's refit):
        `"auto"` refreshes every `max(20, ceil(units / active))` steps (`layer.refresh_steps`),
        so that a unit is updated about as often between two refreshes at any width, at the
        cost of a staler sketch (benchmarks/README.md, "Wide hidden layers"). None: never
        (tables then need the callback). `LSHClassifier` trains its head
        without this schedule: its tables follow the callback.
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
      batch_wide: one active set per batch (as Mongoose) instead of per example. It holds
        the batch's labels first; a batch whose distinct labels outnumber `active` gets a set
        of exactly its labels (each the others' negative), wider than `active`. Training
        only: LSH inference chooses each example's own units.
      sparse_outputs: in training (and LSH inference), return the active units' activations
        as a `tf.SparseTensor` `[batch, units]` (each example's active ids and values) instead
        of a dense tensor with zeros elsewhere. A following `LSHDense` reads it sparsely
        (hashing and `sparse_input_gather_matmul`), so neither layer forms `[batch, units]`.
        Exact (dense) inference still returns a dense tensor.
      backward_adam: None (default), or a learning rate: the layer then updates its kernel
        itself, inside the backward pass, by Adam (beta_1 0.9, beta_2 0.999, epsilon 1e-7, as
        Keras') lazily per weight: only the weights of the active units on the input features
        present in their examples change, with moments the layer keeps (`kernel_m`,
        `kernel_v`, saved with it), so a step's update costs the batch's (active unit,
        nonzero input) pairs. With the model's optimizer, each active unit's whole kernel row
        (as wide as the previous layer) is a gradient row to write and update: on a hidden
        layer of tens of thousands of units, most of the step. For sparse inputs (a
        previous `LSHDense` with `sparse_outputs`, or a `tf.SparseTensor`); the kernel is
        then not trainable for the optimizer, which still updates the bias. Not under a
        `tf.distribute` strategy with several replicas, nor as `LSHClassifier`'s head. Any
        gradient computed through the layer in training (`training=True`) applies the
        update. A weight then moves only when its unit is active and its input present:
        hidden layers over bag-of-words inputs learned best with about 10x the optimizer's
        rate, or with the optimizer's and `candidates` (benchmarks/README.md, "Sparse
        inputs").
      backward_sgd: None (default), or a learning rate: as `backward_adam`, by plain SGD on
        the same weights, with no moments. The moments are twice the kernel: a 65,536 x
        65,536 layer needs 16 GiB with `backward_sgd` and 48 GiB with `backward_adam`. At
        most one of the two.
      hogwild: with `backward_sgd`, update as SLIDE does (Hogwild): the batch's examples are
        split between threads, and each applies its own gradient at once, unsynchronised,
        in one pass over the weights (the grouped update makes two). Two threads updating
        one weight at once may lose an update, so training is not repeatable from run to
        run; `benchmarks/README.md` measures what it gains and costs.
      inference: `"dense"` (all units, as `Dense`), `"top_k"` (all units computed, each
        example's `active` largest kept, as in training with exact selection; both with
        standard TF ops only), `"lsh"` (only the units `active_rule` selects are computed) or
        `"sketch"` (only the `active` units with the largest pre-activations in a random
        sketch of the layer are computed; needs `inference_rank`); None (default): `"lsh"`
        with the `"low_rank"` and `"exact"` rules (it computes what training computed; with
        `"low_rank"` at a fraction of the cost), `"dense"` with tables. Switch it after
        training with `set_inference(model, mode)`.
      inference_rank: None (default), or the rank of the random sketch behind
        `inference="sketch"` (`layer.inference_sketch`, an `InferenceSketch`; it keeps
        `inference_rank * (units + input_dim)` floats). Hash tables built for training pick
        an output layer's top labels poorly at inference; the sketch finds nearly all of
        them at about `inference_rank / input_dim` of a dense pass (128 on an
        extreme-classification head: benchmarks/README.md).
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

    With 400 candidates an example, 50 pass on and all that a ReLU lets through train:

    >>> hidden = LSHDense(1000, activation="relu", active=50, candidates=400)
    >>> with tf.GradientTape() as tape:
    ...     out = hidden(x[:1], training=True)
    ...     loss = tf.reduce_sum(out)
    >>> int(tf.math.count_nonzero(out)) <= 50
    True
    >>> int(tf.math.count_nonzero(tf.convert_to_tensor(tape.gradient(loss, hidden.bias)))) > 50
    True

    A layer reading those 50 outputs, initialised for 50 inputs rather than 1000:

    >>> second = LSHDense(1000, activation="relu", active=50, input_active=50,
    ...                   kernel_initializer="he_uniform")
    >>> second.build((None, 1000))
    >>> round(float(tf.math.reduce_std(second.kernel)), 2)  # sqrt(2 / 50)
    0.2
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
        candidates=None,
        input_active=None,
        hash_family="srp",
        mips=False,
        num_hashes=None,
        num_tables=16,
        bin_size=8,
        bucket_capacity=128,
        active_rule="auto",
        rank=32,
        boost_strength=0.0,
        refresh_period=20,
        track_selection=False,
        min_count=1,
        fill_random=True,
        overflow="reservoir",
        batch_wide=False,
        sparse_outputs=False,
        inference=None,
        inference_rank=None,
        backward_adam=None,
        backward_sgd=None,
        hogwild=False,
        seed=0,
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if not is_int(units) or units < 1:
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
        self.num_active = _unit_count("active", active, units)
        self.candidates = candidates
        self.num_candidates = self.num_active
        if candidates is not None:
            self.num_candidates = _unit_count("candidates", candidates, units)
            if self.num_candidates < self.num_active:
                raise ValueError(
                    f"LSHDense: candidates ({candidates!r}: {self.num_candidates} units) must "
                    f"be at least active ({active!r}: {self.num_active} units)"
                )
        self.input_active = input_active
        if input_active is not None:
            _unit_count("input_active", input_active, None, of="input_dim")
            if not _KernelDraw.scales_with_fans(self.kernel_initializer):
                raise ValueError(
                    "LSHDense: input_active sets the kernel initializer's fans, so it needs a "
                    "variance-scaling kernel_initializer (Glorot, He, LeCun), got "
                    f"{kernel_initializer!r}"
                )
        if active_rule not in ACTIVE_RULES:
            raise ValueError(
                f"LSHDense: unknown active_rule {active_rule!r}; expected one of {ACTIVE_RULES}"
            )
        self.active_rule = active_rule
        if active_rule == "auto":
            active_rule = "low_rank" if self.hidden and not batch_wide else "frequency"
        if batch_wide and active_rule not in TABLE_RULES:
            raise ValueError(
                f"LSHDense: batch_wide=True needs a hash-table active_rule {TABLE_RULES}, "
                f"not {active_rule!r}"
            )
        # Validated whatever the rule, so that a typo fails here rather than when someone
        # switches to tables.
        self.table_config = TableConfig(
            rule=active_rule if active_rule in TABLE_RULES else "frequency",
            hash_family=hash_family,
            mips=bool(mips),
            num_hashes=num_hashes,
            num_tables=num_tables,
            bin_size=bin_size,
            bucket_capacity=bucket_capacity,
            min_count=min_count,
            fill_random=bool(fill_random),
            overflow=overflow,
            batch_wide=bool(batch_wide),
        )
        if not is_int(rank) or rank < 1:
            raise ValueError(f"LSHDense: rank must be an int >= 1, got {rank!r}")
        self.rank = rank
        if isinstance(boost_strength, bool) or not isinstance(boost_strength, (int, float)):
            raise ValueError(f"LSHDense: boost_strength must be a number, got {boost_strength!r}")
        if boost_strength < 0 or (boost_strength and active_rule != "low_rank"):
            raise ValueError(
                "LSHDense: boost_strength must be >= 0, and > 0 only with the 'low_rank' rule; "
                f"got {boost_strength!r} with active_rule {active_rule!r}"
            )
        self.boost_strength = float(boost_strength)
        if refresh_period not in (None, "auto") and (
            not is_int(refresh_period) or refresh_period < 1
        ):
            raise ValueError(
                "LSHDense: refresh_period must be None, 'auto' or an int >= 1, "
                f"got {refresh_period!r}"
            )
        self.refresh_period = refresh_period
        if track_selection and refresh_period is None:
            raise ValueError(
                "LSHDense: track_selection=True measures on the refresh steps; "
                "refresh_period must be set, got None"
            )
        self.track_selection = bool(track_selection)
        if self.num_candidates > self.num_active and (not self.hidden or batch_wide):
            raise ValueError(
                "LSHDense: candidates beyond active are for hidden layers (the units not passed "
                "on give 0): they need an activation and per-example sets, got activation "
                f"{activation!r} and batch_wide={batch_wide!r}"
            )
        self.sparse_outputs = bool(sparse_outputs)
        self.backward_update = BackwardUpdate.from_arguments(
            backward_adam, backward_sgd, hogwild, use_bias, kernel_regularizer, kernel_constraint
        )
        self.seed = int(seed)
        self.selector = self._make_selector(active_rule)
        if inference_rank is not None and (not is_int(inference_rank) or inference_rank < 1):
            raise ValueError(
                f"LSHDense: inference_rank must be None or an int >= 1, got {inference_rank!r}"
            )
        self.inference_sketch = None
        if inference_rank is not None:
            self.inference_sketch = InferenceSketch(self.num_active, inference_rank, self.seed)
        if inference is None:
            inference = "dense" if self.tables is not None else "lsh"
        self.inference = inference  # checked by the property setter
        self.supports_jit = False
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        # Keras reports metrics that a layer tracks with the model's (logs, History,
        # TensorBoard).
        self.coverage = self.recall = None
        if self.track_selection:
            self.coverage = UnitCoverage(units, name=f"{self.name}_coverage")
            self.recall = LSHRecall(self.num_active, name=f"{self.name}_recall", when_empty=NAN)

    @property
    def hidden(self):
        """Whether the activation is nonlinear (a hidden layer): a linear layer, an output
        over labels, passes its selected units' values on as they are."""
        return self.activation not in (None, activations.linear)

    def _make_selector(self, rule):
        if rule == "low_rank":
            return LowRankSelector(
                self.units, self.num_candidates, self.seed, self.rank, self.boost_strength
            )
        if rule == "exact":
            return ExactSelector(self.units, self.num_candidates, self.seed)
        return HashTables(self.units, self.num_candidates, self.seed, self.table_config)

    @property
    def selection(self):
        """The rule in force: what `active_rule="auto"` resolved to."""
        return self.selector.rule

    @property
    def tables(self):
        """The layer's `HashTables` (rebuild, refresh, update) if a table rule selects its
        units, else None."""
        return self.selector if isinstance(self.selector, HashTables) else None

    @property
    def refresh_steps(self):
        """Training steps between two refreshes of the selector (`refresh_period`, resolved),
        or None."""
        if self.refresh_period == "auto":
            return max(20, math.ceil(self.units / self.num_active))
        return self.refresh_period

    @property
    def batch_wide(self):
        return self.table_config.batch_wide

    @property
    def inference(self):
        return self._inference

    @inference.setter
    def inference(self, mode):
        if mode not in INFERENCE_MODES:
            raise ValueError(
                f"LSHDense: unknown inference mode {mode!r}; expected one of {INFERENCE_MODES}"
            )
        if mode not in self.inference_modes:  # "sketch" without a sketch
            raise ValueError(
                f"LSHDense '{self.name}': inference='sketch' needs a sketch to query; build the "
                "layer with inference_rank (an int, e.g. 128), got inference_rank=None"
            )
        self._inference = mode

    @property
    def inference_rank(self):
        """The rank of the inference sketch, or None without one."""
        return None if self.inference_sketch is None else self.inference_sketch.rank

    @property
    def inference_modes(self):
        """The inference modes this layer can run: `INFERENCE_MODES`, `"sketch"` only with
        `inference_rank`."""
        has_sketch = self.inference_sketch is not None
        return tuple(mode for mode in INFERENCE_MODES if mode != "sketch" or has_sketch)

    @property
    def exact_inference(self):
        """Whether inference computes every unit (`"dense"` and `"top_k"`)."""
        return self.inference in ("dense", "top_k")

    def build(self, input_shape):
        input_dim = int(input_shape[-1])
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: input_dim})
        fans = None
        if self.input_active is not None:
            # The connections that carry an example's signal: each unit reads the nonzero
            # inputs, and each input reaches the units passed on.
            fans = (
                _unit_count("input_active", self.input_active, input_dim, of="input_dim"),
                self.num_active,
            )
        kernel_draw = _KernelDraw(self.kernel_initializer, (self.units, input_dim), fans)
        self.kernel = self.add_weight(
            name="kernel",
            shape=(self.units, input_dim),
            initializer=kernel_draw.initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
            trainable=self.backward_update is None,  # else updated in the backward pass
        )
        kernel_draw.fill(self.kernel)
        self.bias = self.add_weight(
            name="bias",
            shape=(self.units,),
            initializer=self.bias_initializer if self.use_bias else "zeros",
            regularizer=self.bias_regularizer if self.use_bias else None,
            constraint=self.bias_constraint if self.use_bias else None,
            trainable=self.use_bias,
        )
        self.selector.build(self.kernel, self.bias, self._add_state, self._add_step)
        if self.backward_update is not None:
            self.backward_update.build(self.kernel, self._add_state)
        if self.inference_sketch is not None:
            self.inference_sketch.build(self.kernel, self.bias, self.step, self._add_state)

    @property
    def backward_adam(self):
        """The learning rate of the kernel's Adam in the backward pass, or None."""
        return self.backward_update.learning_rate_of("adam") if self.backward_update else None

    @property
    def backward_sgd(self):
        """The learning rate of the kernel's SGD in the backward pass, or None."""
        return self.backward_update.learning_rate_of("sgd") if self.backward_update else None

    @property
    def hogwild(self):
        """Whether `backward_sgd` updates the kernel unsynchronised (Hogwild)."""
        return bool(self.backward_update and self.backward_update.hogwild)

    def _add_step(self):
        """Training calls so far: the refresh schedule, and the random fill's seed (so that it
        differs between steps)."""
        self.step = self._add_state("step", (), "int64", 0)
        return self.step

    def _add_state(self, name, shape, dtype, value):
        """A non-trainable weight (saved and restored with the model)."""
        return self.add_weight(
            name=name,
            shape=shape,
            dtype=dtype,
            # Cast, then broadcast: the other way round holds two tensors of the whole shape.
            initializer=lambda shape, dtype=None: tf.broadcast_to(
                tf.cast(value, dtype or "float32"), shape
            ),
            trainable=False,
        )

    def active_ids(self, inputs, labels=None, inference=False):
        """The units each example computes, chosen by the selector: int32 `[batch, k]`
        (`[1, k]` for a batch-wide layer's shared set).

        `labels` (int32 `[batch, max_labels]`, -1 padded) are always included, first (beyond
        k labels, the first k; batch-wide, a batch whose labels outnumber k gets them all).
        `inference`: the units inference computes instead: each example's own, even for a
        batch-wide layer (a set shared by a batch of unrelated examples predicts poorly), from
        the sketch with `inference="sketch"`.
        """
        if inference and self.inference == "sketch":
            return self.inference_sketch.select(inputs)
        return self.selector.select(inputs, labels, shared=self._shares(inference))

    def active_outputs(self, inputs, labels=None, shared_ids=False, inference=False):
        """`(ids, values)`: the active units and their activations, both `[batch, k]`.

        Padding ids (-1) have value 0. Gradients of `values` reach the weights as
        `tf.IndexedSlices` over the active rows. With `shared_ids`, a batch-wide layer on
        dense inputs returns its shared ids as `[1, k]` (one row for the batch), not tiled.
        `inference` as for `active_ids`.
        """
        ids = self.active_ids(inputs, labels, inference)
        shared = self._shares(inference)
        if isinstance(inputs, tf.SparseTensor):
            if shared:
                ids = _tile_rows(ids, inputs.dense_shape[0])
            values = tf_lsh_ops.sparse_input_gather_matmul(inputs, self.kernel, self.bias, ids)
        else:
            # A shared set stays [1, k]: the op then multiplies dense blocks.
            values = tf_lsh_ops.sparse_gather_matmul(inputs, self.kernel, self.bias, ids)
            if shared and not shared_ids:
                ids = _tile_rows(ids, tf.shape(inputs, out_type=tf.int64)[0])
        return ids, self.activate(ids, values)

    def _shares(self, inference):
        """Whether the batch shares one set of units."""
        return self.batch_wide and not inference

    def fused_update(self, optimizer):
        """A `FusedOutputUpdate` of this layer by `optimizer`, or None where it cannot apply:
        an optimizer other than a fusable `SparseAdam` (see `SparseAdam.can_fuse`), one set per
        batch (its gradient rows are few: fusing saves nothing there), no bias, a regularizer
        or a constraint."""
        eligible = (
            can_fuse_adam(optimizer)
            and self.use_bias
            and not self.batch_wide
            and self.kernel_regularizer is None
            and self.bias_regularizer is None
            and self.kernel_constraint is None
            and self.bias_constraint is None
        )
        return FusedOutputUpdate(self, optimizer) if eligible else None

    def record_training_step(self, ids):
        """Records a training step that selected `ids` (`[batch, k]` or a shared `[1, k]`):
        the coverage metric and the selector's duty cycles take them, and the step is counted
        (the refresh schedule, the random fill and the inference sketch follow it).
        `call(training=True)` does, and so must a training step that bypasses `call`."""
        if self.track_selection:
            self.coverage.update_state(ids)
        self.selector.observe(ids)
        self.step.assign_add(1)

    def activate(self, ids, values):
        """The activation of the selected units' `values` (padding ids -1 give 0). Of more
        `candidates` than `active`, each example's `active` largest pass forward and the
        others give 0, while the gradient reaches every candidate as if it had passed."""
        if not self.hidden:
            return values
        valid = ids >= 0
        outputs = tf.where(valid, self.activation(values), 0.0)
        # Every selected unit passes with no candidates beyond active, and with the sketch's.
        if self.num_candidates == self.num_active or ids.shape[-1] == self.num_active:
            return outputs
        return _pass_largest(valid, values, outputs, self.num_active)

    def _refresh(self, inputs):
        """A refresh step (`refresh_steps`): with `track_selection`, how many of each
        example's exact top units the selection holds; then the selector brought up to date."""
        products = None
        if self.track_selection or self.selector.needs_products:
            products = self.selector.products(inputs)
        if self.track_selection:
            exact = tf.math.top_k(products + self.bias, self.num_active).indices
            self.recall.update_state(exact, self.active_ids(inputs))
        self.selector.refresh(inputs, products)

    def _refresh_if_due(self, inputs):
        def refresh():
            self._refresh(inputs)
            return tf.constant(True)

        due = tf.equal(self.step % self.refresh_steps, 0)
        tf.cond(due, refresh, lambda: tf.constant(False))

    def call(self, inputs, training=None):
        if not training and self.exact_inference:
            return self._all_units(inputs, keep_top_k=self.inference == "top_k")
        if training and self.refresh_steps is not None:
            self._refresh_if_due(inputs)
        if training and self.backward_update is not None:
            ids, values = self._updating_outputs(inputs)
        else:
            ids, values = self.active_outputs(inputs, inference=not training)
        if training:
            self.record_training_step(ids)
        if self.sparse_outputs:
            return _sparse_rows(ids, values, self.units)
        return _scatter_rows(ids, values, self.units)

    def _updating_outputs(self, inputs):
        """`active_outputs(inputs)` whose gradient updates the kernel in place
        (`backward_update`) and flows on to the inputs' values and the bias."""
        update = self.backward_update
        if not isinstance(inputs, tf.SparseTensor):
            raise ValueError(
                f"LSHDense '{self.name}': {update.argument} updates the "
                "kernel's weights on the features present in sparse inputs; this layer got "
                f"dense inputs of shape {inputs.shape}. Feed it a tf.SparseTensor (a previous "
                "LSHDense with sparse_outputs=True), or leave the kernel to the optimizer "
                f"(backward_{update.rule}=None): with dense inputs its whole rows are touched "
                "anyway."
            )
        if tf.distribute.get_strategy().num_replicas_in_sync > 1:
            raise ValueError(
                f"LSHDense '{self.name}': {update.argument} updates the kernel in each "
                "replica's backward pass, which would let the replicas' kernels diverge; train "
                f"with backward_{update.rule}=None under a tf.distribute strategy with several "
                "replicas"
            )
        ids = self.active_ids(inputs)
        if self.batch_wide:
            ids = _tile_rows(ids, inputs.dense_shape[0])
        kernel = self.kernel

        @tf.custom_gradient
        def product(values, bias):
            sparse = tf.SparseTensor(inputs.indices, values, inputs.dense_shape)
            outputs = tf_lsh_ops.sparse_input_gather_matmul(sparse, kernel, bias, ids)

            def gradient(grad_outputs, variables=None):
                # The step was counted by this call: 1 on the first.
                grad_values, grad_bias = update.apply(sparse, kernel, ids, grad_outputs, self.step)
                return (grad_values, grad_bias), [None] * len(variables or ())

            return outputs, gradient

        return ids, self.activate(ids, product(inputs.values, self.bias))

    def _all_units(self, inputs, keep_top_k):
        """Every unit's output (standard TF ops only), or with `keep_top_k` each example's
        `active` largest, zeros elsewhere."""
        outputs = self.selector.products(inputs)
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
        tables = dataclasses.asdict(self.table_config)
        del tables["rule"]  # active_rule says it
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
            candidates=self.candidates,
            input_active=self.input_active,
            active_rule=self.active_rule,
            rank=self.rank,
            boost_strength=self.boost_strength,
            refresh_period=self.refresh_period,
            track_selection=self.track_selection,
            sparse_outputs=self.sparse_outputs,
            inference=self.inference,
            inference_rank=self.inference_rank,
            backward_adam=self.backward_adam,
            backward_sgd=self.backward_sgd,
            hogwild=self.hogwild,
            seed=self.seed,
            **tables,
        )
        return config


class FusedOutputUpdate:
    """A training step's backward pass through an `LSHDense` fused with its `SparseAdam`
    update (`tf_lsh_ops.sparse_gather_matmul_adam`): the same update, bit for bit, without
    writing ~10^5 gradient rows out and reading them back. Made by `LSHDense.fused_update`.

    Use: `forward` inside the step's `tf.GradientTape` (persistent), then, with the loss,
    `apply`, which updates the layer and returns the loss's gradient for its inputs.
    """

    def __init__(self, layer, optimizer):
        self.layer = layer
        self.optimizer = optimizer
        self._outputs = None

    def forward(self, inputs, labels, tape):
        """`(ids, values)` as `layer.active_outputs(inputs, labels)` (dense `inputs`). The tape
        differentiates the loss only up to the op's outputs: recorded, the op would still have
        its unfused gradient (and everything below it) built and run, as ops on variables are
        kept in graphs even when unused."""
        layer = self.layer
        ids = layer.active_ids(inputs, labels)
        with tape.stop_recording():
            outputs, grouping = tf_lsh_ops.sparse_gather_matmul_grouped(
                inputs, layer.kernel, layer.bias, ids
            )
        tape.watch(outputs)
        self._inputs, self._outputs, self._ids, self._grouping = inputs, outputs, ids, grouping
        return ids, layer.activate(ids, outputs)

    def apply(self, tape, loss):
        """Applies the update of `loss`'s gradient (the optimizer must be built; its step is
        counted by the step's `apply_gradients`); returns the gradient for the inputs."""
        if self._outputs is None:
            raise ValueError("FusedOutputUpdate.apply: call forward first")
        layer, optimizer = self.layer, self.optimizer
        return tf_lsh_ops.sparse_gather_matmul_adam(
            self._inputs,
            layer.kernel,
            layer.bias,
            self._ids,
            self._grouping,
            tape.gradient(loss, self._outputs),
            optimizer.moments(layer.kernel) + optimizer.moments(layer.bias),
            **optimizer.step_hyperparameters(),  # read before apply_gradients counts the step
        )


def lsh_layers(model):
    """Every `LSHDense` inside `model`, nested models included."""
    return [layer for layer in _keras_compat.nested_layers(model) if isinstance(layer, LSHDense)]


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


def _unit_count(name, count, units, of="units"):
    """The number of units `count` (an int, or a float fraction of `units`, named `of`) stands
    for; with `units` None (not known yet), only its form is checked."""
    if isinstance(count, bool) or not isinstance(count, (int, float)):
        raise ValueError(
            f"LSHDense: {name} must be a float fraction or an int count, got {count!r}"
        )
    if isinstance(count, float):
        if not 0 < count <= 1:
            raise ValueError(f"LSHDense: {name} as a fraction must be in (0, 1], got {count}")
        return None if units is None else max(1, round(count * units))
    if count < 1 or (units is not None and count > units):
        raise ValueError(f"LSHDense: {name} = {count} must be in [1, {of} = {units}]")
    return count


def _pass_largest(valid, values, outputs, k):
    """`outputs` with all but each row's `k` largest `values` (where `valid`) set to 0 in the
    forward pass; the gradient of every entry passes unchanged (a straight-through estimate)."""
    kth = tf.math.top_k(tf.where(valid, values, -math.inf), k).values[:, -1:]
    dropped = tf.where(values >= kth, 0.0, outputs)
    return outputs - tf.stop_gradient(dropped)


class _KernelDraw:
    """How a neuron-major `[units, input_dim]` kernel is drawn so that it has the distribution
    `Dense` gives its `[input_dim, units]` kernel (same fan-in and fan-out), or the one it would
    give with the fans `(fan_in, fan_out)` (`LSHDense(input_active=...)`).

    Variance-scaling initializers (Glorot, He, LeCun: the common ones) draw i.i.d. values, so
    they are asked for the neuron-major shape with its axes named. A kernel above
    `ROW_BLOCK_ELEMENTS` is created as zeros and then drawn a block of rows at a time into the
    variable: a whole draw holds three kernel-sized tensors at once (uniform values, scaled,
    shifted), pages the allocator keeps, 3 GiB for one 16k x 16k layer. Under a distribution
    strategy (whose replicas must start from one value) the kernel is drawn whole. Other
    initializers draw the `Dense` shape whole and transpose it.
    """

    ROW_BLOCK_ELEMENTS = 1 << 22  # 16 MB of float32

    def __init__(self, initializer, shape, fans=None):
        self._shape = shape
        self._fans = fans or (shape[1], shape[0])
        self._block_rows = None
        if not self.scales_with_fans(initializer):
            self.initializer = self._transposed(initializer)
            return
        self._base = initializer
        self.initializer = self._variance_scaling(shape[0], initializer.seed)
        units, input_dim = shape
        if units * input_dim > self.ROW_BLOCK_ELEMENTS and not tf.distribute.has_strategy():
            self._block_rows = max(1, self.ROW_BLOCK_ELEMENTS // input_dim)
            self.initializer = "zeros"

    @staticmethod
    def scales_with_fans(initializer):
        """Whether `initializer` draws i.i.d. values scaled by the kernel's fans."""
        return isinstance(initializer, initializers.VarianceScaling) and not initializer.input_axes

    def _fan(self, fan_in, fan_out):
        return {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[
            self._base.mode
        ]

    def _variance_scaling(self, rows, seed):
        """The base initializer for `[rows, input_dim]`, scaled to the kernel's fans."""
        input_dim = self._shape[1]
        return initializers.VarianceScaling(
            scale=self._base.scale * self._fan(input_dim, rows) / self._fan(*self._fans),
            mode=self._base.mode,
            distribution=self._base.distribution,
            seed=seed,
            input_axes=[1],
            output_axes=[0],
        )

    @staticmethod
    def _transposed(initializer):
        def transposed(shape, dtype=None):
            return keras.ops.transpose(initializer((shape[1], shape[0]), dtype=dtype))

        return transposed

    def fill(self, kernel):
        """Draws `kernel` (created with `self.initializer`) block by block, if it is wide."""
        if self._block_rows is None:
            return
        units, input_dim = self._shape
        seed = self._base.seed
        for block, start in enumerate(range(0, units, self._block_rows)):
            rows = min(self._block_rows, units - start)
            # A SeedGenerator moves on by itself; an int seed would draw every block alike.
            block_seed = seed if isinstance(seed, keras.random.SeedGenerator) else seed + block
            values = self._variance_scaling(rows, block_seed)((rows, input_dim), kernel.dtype)
            tf_lsh_ops.assign_rows(kernel, start, values)


class BackwardUpdate:
    """How an `LSHDense` updates its kernel itself in the backward pass (`backward_adam` or
    `backward_sgd`): the rule and its learning rate, the state the rule keeps, and the op that
    applies it, lazily per weight (`tf_lsh_ops.sparse_input_gather_matmul_lazy_adam` or
    `..._lazy_sgd`)."""

    RULES = ("adam", "sgd")

    def __init__(self, rule, learning_rate, hogwild=False):
        self.rule = rule
        self.learning_rate = learning_rate
        self.hogwild = hogwild
        self.moments = ()

    @classmethod
    def from_arguments(
        cls, backward_adam, backward_sgd, hogwild, use_bias, regularizer, constraint
    ):
        """The update `LSHDense`'s arguments ask for (None if neither), checked."""
        if not isinstance(hogwild, bool):
            raise ValueError(f"LSHDense: hogwild must be True or False, got {hogwild!r}")
        if hogwild and backward_sgd is None:
            raise ValueError(
                "LSHDense: hogwild=True is a way of applying backward_sgd; give backward_sgd "
                f"a learning rate (backward_adam={backward_adam}, backward_sgd=None)"
            )
        given = {
            rule: rate
            for rule, rate in zip(cls.RULES, (backward_adam, backward_sgd), strict=True)
            if rate is not None
        }
        if not given:
            return None
        if len(given) > 1:
            raise ValueError(
                f"LSHDense: give at most one of backward_adam and backward_sgd, got "
                f"backward_adam={backward_adam} and backward_sgd={backward_sgd}"
            )
        ((rule, rate),) = given.items()
        name = f"backward_{rule}"
        if isinstance(rate, bool) or not isinstance(rate, (int, float)):
            raise ValueError(
                f"LSHDense: {name} must be None or a learning rate (a float), got {rate!r}"
            )
        if not rate > 0:
            raise ValueError(f"LSHDense: {name} must be > 0, got {rate}")
        # The bias's gradient is what makes TensorFlow run the backward pass of a first layer.
        if not use_bias:
            raise ValueError(f"LSHDense: {name} needs use_bias=True")
        if regularizer is not None or constraint is not None:
            raise ValueError(
                f"LSHDense: {name} updates the kernel without the optimizer, so it cannot "
                "apply a kernel_regularizer or kernel_constraint"
            )
        return cls(rule, float(rate), hogwild)

    @property
    def argument(self):
        """The `LSHDense` argument that asked for this update, as given: for messages."""
        return f"backward_{self.rule}={self.learning_rate}"

    def learning_rate_of(self, rule):
        return self.learning_rate if rule == self.rule else None

    def build(self, kernel, add_state):
        """Adds the rule's state for `kernel` with `add_state(name, shape, dtype, value)`:
        Adam's two moments (`kernel_m`, `kernel_v`), nothing for SGD."""
        if self.rule == "adam":
            shape = tuple(kernel.shape)
            self.moments = tuple(
                add_state(name, shape, "float32", 0) for name in ("kernel_m", "kernel_v")
            )

    def apply(self, inputs, kernel, ids, grad_outputs, step):
        """Updates `kernel` in place from a training step's `grad_outputs`; returns the
        gradients of `inputs.values` and of the bias."""
        if self.rule == "sgd":
            return tf_lsh_ops.sparse_input_gather_matmul_lazy_sgd(
                inputs,
                kernel,
                ids,
                grad_outputs,
                learning_rate=self.learning_rate,
                hogwild=self.hogwild,
            )
        return tf_lsh_ops.sparse_input_gather_matmul_lazy_adam(
            inputs,
            kernel,
            ids,
            grad_outputs,
            self.moments,
            learning_rate=self.learning_rate,
            beta_1=0.9,
            beta_2=0.999,
            epsilon=1e-7,
            step=step,
        )


def _tile_rows(ids, batch):
    """A shared `[1, k]` set of ids as `[batch, k]`."""
    return tf.tile(ids, tf.stack([batch, 1]))


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
    Serving, C++, Java, ...). `inference="lsh"` and `"sketch"` serve only the selected units;
    loading them needs `import tf_lsh_ops` first. The model's own modes are restored afterwards.

    Args:
      model: a built Keras model.
      path: the SavedModel directory.
      inference: one of `INFERENCE_MODES`.
      input_signature: as for `keras.Model.export` (needed for models never called, e.g.
        `[keras.KerasTensor((None, num_features), "float32", sparse=True)]`).
    """
    with inference_mode(model, inference):
        model.export(path, input_signature=input_signature, verbose=False)
