"""`LSHClassifier`: trains an `LSHDense` output layer over many classes with `model.fit`."""

import warnings

import keras
import tensorflow as tf

import tf_lsh_ops
from keras_layers import _keras_compat
from keras_layers.distributed import DistributedFitMixin, scale_loss
from keras_layers.losses import ACTIVE_LOSSES
from keras_layers.lsh_dense import LSHDense
from keras_layers.metrics import LSHRecall
from keras_layers.optimizers import warn_if_dense_updates
from keras_layers.sparse_input_dense import SparseInputDense


@keras.saving.register_keras_serializable(package="tf_lsh")
class LSHClassifier(DistributedFitMixin, keras.Model):
    """A classifier over many labels whose output layer computes only a hashed-for few units.

    `body` maps inputs to features (any Keras layer or model, e.g. a `SparseInputDense` on a
    bag of words); `head` is an `LSHDense` with one unit per label and no activation. End the
    body with a per-example normalisation (`keras.layers.LayerNormalization(center=False,
    scale=False)`): the softmax over an active set ignores a shift shared by the set, and
    unnormalised ReLU features grow a common component along which labels seldom in an active
    set drift above the rest, so that accuracy peaks and then falls as epochs go on.

    - Training (`fit`): the labels `y` (int `[batch, max_labels]`, -1 padded, multi-label;
      or `[batch]`) go into each example's active set (label inclusion), and the loss is the
      softmax cross-entropy over that set (`active_loss`), as in SLIDE. The
      head's weights get `IndexedSlices` gradients: compile with `SparseAdam` or `SGD`
      (training warns about optimizers that would update every row).
    - Evaluation (`evaluate`): with `head.inference == "dense"`, exact logits over all labels
      (full softmax loss); with `"lsh"`, one table query: the metrics rank the retrieved
      labels, the loss takes them and the labels they missed. Compiled metrics receive
      `(labels, top ids)`: use `PrecisionAtK`. With `lsh_recall_k`, evaluation also reports how
      many of the exact top-k labels the active set held (costs a dense pass).
    - Speed: with `LSHDense(..., batch_wide=True)` the batch shares one active set (its labels
      first, then the units its buckets share most, as Mongoose): a step touches `active` rows
      of the output layer instead of up to `batch * active`, which makes the gradient and the
      optimizer update several times cheaper at the same or better P@1 (benchmarks/README.md
      has the figures). With
      per-example sets and `SparseAdam` (and no gradient clipping, EMA, loss scaling, extra
      losses or `tf.distribute` strategy), the head's backward pass and its Adam update run
      as one fused op (`tf_lsh_ops.sparse_gather_matmul_adam`): the same update, bit for bit,
      without writing ~10^5 gradient rows out and reading them back;
      `fuse_output_update=False` turns that off. Likewise, when the body's first layer is a
      `SparseInputDense` on `tf.SparseTensor` inputs (the body itself, or the first layer of
      a `keras.Sequential` body) without kernel or activity regularizer, its kernel's
      gradient and Adam update run as one op (`tf_lsh_ops.sparse_input_matmul_adam`; with
      any head, one set per batch too); `fuse_first_layer_update=False` turns that off.
    - Prediction: `predict` gives the head's outputs (`[batch, units]` logits when dense);
      `predict_top_k(x, k)` gives `(ids, scores)` without forming `[batch, units]`: exact
      (`head.inference == "dense"`), or among the labels a random sketch of the head ranks
      first (`LSHDense(..., inference_rank=128)` and `set_inference(model, "sketch")`: the
      exact top labels at a fraction of the cost on a wide head) or the tables retrieve
      (`"lsh"`).

    Args:
      body: the feature extractor.
      head: the `LSHDense` output layer.
      top_k: how many top ids evaluation hands to the metrics (>= the largest P@k).
      lsh_recall_k: if set, track `LSHRecall(lsh_recall_k)` during evaluation.
      fuse_output_update: fuse the head's backward pass with its `SparseAdam` update when
        possible (see above).
      fuse_first_layer_update: fuse the first layer's kernel gradient with its `SparseAdam`
        update when possible (see above).
      active_loss: the training loss over each active set: `"softmax"` (SLIDE's; one
        softmax over the set, the labels sharing the target, `active_softmax_cross_entropy`),
        `"decoupled_softmax"` (each label against the set's negatives only,
        `active_decoupled_softmax_cross_entropy`) or `"binary"` (one-vs-rest: a sigmoid
        cross-entropy per active unit, `active_binary_cross_entropy`; the highest P@3/P@5 on
        multi-label data with a wide body, benchmarks/README.md; start the head's bias low,
        e.g. `bias_initializer=keras.initializers.Constant(-8.0)`, or it warns).
      **kwargs: `keras.Model` arguments (`name`, ...).

    Example:

    >>> body = keras.Sequential([keras.layers.Dense(32, activation="relu")])
    >>> model = LSHClassifier(body, LSHDense(5000, active=200))
    >>> model.compile(optimizer=SparseAdam(1e-3), metrics=[PrecisionAtK(1)])
    >>> model.fit(x, labels, epochs=2)  # doctest: +SKIP
    """

    def __init__(
        self,
        body,
        head,
        top_k=5,
        lsh_recall_k=None,
        fuse_output_update=True,
        fuse_first_layer_update=True,
        active_loss="softmax",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(head, LSHDense):
            raise ValueError(f"LSHClassifier: head must be an LSHDense, got {type(head).__name__}")
        if head.backward_update is not None:
            raise ValueError(
                "LSHClassifier: the head's kernel is updated by the model's training step; "
                "construct it without backward_adam or backward_sgd, got "
                f"{head.backward_update.argument}"
            )
        if active_loss not in ACTIVE_LOSSES:
            raise ValueError(
                f"LSHClassifier: unknown active_loss {active_loss!r}; expected one of "
                f"{tuple(ACTIVE_LOSSES)}"
            )
        if active_loss == "binary" and isinstance(head.bias_initializer, keras.initializers.Zeros):
            warnings.warn(
                f"LSHClassifier: active_loss='binary' with the head '{head.name}' biases starting "
                "at 0: labels that seldom enter an active set keep logits near 0 while training "
                "pushes the others below, and outrank the true labels at exact inference. "
                "Start the biases at about log(labels per example / labels), e.g. "
                "LSHDense(..., bias_initializer=keras.initializers.Constant(-8.0)) for 5 "
                "labels per example among 20,000.",
                stacklevel=2,
            )
        self.active_loss = active_loss
        self.body = body
        self.head = head
        self.top_k = top_k
        self.lsh_recall_k = lsh_recall_k
        self.fuse_output_update = fuse_output_update
        self.fuse_first_layer_update = fuse_first_layer_update
        self.lsh_recall = LSHRecall(lsh_recall_k) if lsh_recall_k else None

    @property
    def metrics(self):
        # The steps below train the head without its call(), which is where an LSHDense
        # measures its recall (track_selection): never measured here, it is left out, and the
        # coverage with it.
        head_metrics = {id(m) for m in (self.head.coverage, self.head.recall) if m is not None}
        return [metric for metric in super().metrics if id(metric) not in head_metrics]

    def call(self, inputs, training=None):
        return self.head(self.body(inputs, training=training), training=training)

    def build(self, input_shape):
        features_shape = self.body.compute_output_shape(input_shape)
        if not self.body.built:
            self.body.build(input_shape)
        if not self.head.built:
            self.head.build(features_shape)
        self.built = True

    def _build_for(self, x):
        # Train and test steps bypass __call__, where Keras would build the model and record
        # the input shape that `save` needs (else load_model skips the optimizer's state).
        if not self.built and hasattr(x, "shape"):
            self.build(tuple(x.shape))

    def _features(self, x, training):
        self._build_for(x)
        features = self.body(x, training=training)
        if not self.head.built:  # train/test steps bypass call(), where Keras would build it
            self.head.build(features.shape)
        return features

    @staticmethod
    def _labels(y):
        y = tf.convert_to_tensor(y)
        y = tf.cast(y, tf.int32)
        return y[:, None] if y.shape.rank == 1 else y

    def train_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        labels = self._labels(y)
        self._warn_if_dense_updates()  # once per optimizer, as the step is traced
        first_update = self._first_layer_update(x)
        head_update = self.head.fused_update(self.optimizer) if self.fuse_output_update else None
        with tf.GradientTape(persistent=head_update is not None) as tape:
            features = self._body_outputs(x, first_update, tape)  # builds body and head
            if head_update is not None and not self._can_fuse_head(features, first_update):
                head_update = None
            if head_update is not None:
                ids, logits = head_update.forward(features, labels, tape)
            else:
                ids, logits = self.head.active_outputs(features, labels, shared_ids=True)
            loss = self._loss(ids, logits, labels)
            if self.losses:
                loss = loss + tf.add_n(self.losses)
            # Under tf.distribute, gradients are summed over replicas: scale to the global mean.
            scaled_loss = scale_loss(loss)
        self.head.record_training_step(ids)
        if head_update is not None:
            self._ensure_optimizer_built()
            # The head is updated: the rest of the chain starts from the features' gradient.
            features_gradient = head_update.apply(tape, scaled_loss)
            body_variables = self._body_variables()
            self._apply_gradients(tape, features, features_gradient, body_variables, first_update)
        else:
            self._apply_gradients(tape, scaled_loss, None, self.trainable_variables, first_update)
        del tape
        _keras_compat.loss_tracker(self).update_state(loss, sample_weight=tf.shape(labels)[0])
        # Training metrics rank the active set only (labels included): optimistic, but free.
        logs = self.compute_metrics(x, labels, _top_ids(ids, logits, self.top_k))
        if self.lsh_recall is not None:  # only evaluation measures it: not a training 0.0
            logs.pop(self.lsh_recall.name, None)
        return logs

    def _loss(self, ids, logits, labels):
        return ACTIVE_LOSSES[self.active_loss][0](ids, logits, labels)

    def _warn_if_dense_updates(self):
        first = self._first_layer()
        sparse = [self.head] + ([first] if isinstance(first, SparseInputDense) else [])
        warn_if_dense_updates(self.optimizer, sparse, "LSHClassifier")

    def _first_layer(self):
        """The body's first layer: the body, or the first layer of a `keras.Sequential` one."""
        body = self.body
        return body.layers[0] if isinstance(body, keras.Sequential) and body.layers else body

    def _first_layer_update(self, x):
        """The fused kernel update of the body's first layer on `x`, if it is a
        `SparseInputDense` that can fuse (see `SparseInputDense.fused_update`); else None."""
        first = self._first_layer()
        if not (self.fuse_first_layer_update and isinstance(first, SparseInputDense)):
            return None
        return first.fused_update(self.optimizer, x)

    def _body_outputs(self, x, first, tape):
        """The body's output on `x`; with a fused `first` layer update, through its forward."""
        if first is None:
            return self._features(x, training=True)
        self._build_for(x)
        features = first.forward(x, tape)
        if first.layer is not self.body:
            for layer in self.body.layers[1:]:
                features = layer(features, training=True)
        return features

    def _can_fuse_head(self, features, first):
        """What can be known once the body ran: dense features, no extra losses (their
        gradients would need the whole tape), and body variables left for `apply_gradients`
        (whose update counts the optimizer's step)."""
        return (
            not isinstance(features, tf.SparseTensor)
            and not self.losses
            and bool(self._unfused_variables(self._body_variables(), first))
        )

    def _body_variables(self):
        head = self.head
        return [v for v in self.trainable_variables if v is not head.kernel and v is not head.bias]

    @staticmethod
    def _unfused_variables(variables, first):
        return [v for v in variables if first is None or v is not first.layer.kernel]

    def _ensure_optimizer_built(self):
        """Builds the optimizer over every trainable variable (as apply_gradients would) before
        a fused update reads its moments."""
        if not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)

    def _apply_gradients(self, tape, outputs, outputs_gradient, variables, first):
        """Back-propagates from `outputs` (the loss, or, once a fused update applied the
        head, the features with their gradient) to `variables` and applies the gradients; a
        fused `first` layer update takes its kernel's share."""
        variables = self._unfused_variables(variables, first)
        sources = variables if first is None else [first.product, *variables]
        gradients = tape.gradient(outputs, sources, output_gradients=outputs_gradient)
        if first is not None:
            self._ensure_optimizer_built()
            first.apply(gradients.pop(0))
        self.optimizer.apply_gradients(zip(gradients, variables, strict=True))

    def test_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        labels = self._labels(y)
        features = self._features(x, training=False)
        head = self.head
        if head.inference == "dense":
            logits = head(features, training=False)
            loss = ACTIVE_LOSSES[self.active_loss][1](logits, labels)
            top_ids = tf.math.top_k(logits, self.top_k).indices
            retrieved = None
        else:
            # One query: the metrics rank what it retrieved; the loss also takes the labels
            # it missed.
            retrieved, logits = head.active_outputs(features, inference=True)
            top_ids = _top_ids(retrieved, logits, self.top_k)
            loss = self._loss(
                *_with_missed_labels(head, features, retrieved, logits, labels), labels
            )
        if self.lsh_recall is not None:
            exact = logits if retrieved is None else head.selector.products(features) + head.bias
            if retrieved is None:
                retrieved = head.active_ids(features, inference=True)
            self.lsh_recall.update_state(tf.math.top_k(exact, self.lsh_recall.k).indices, retrieved)
        _keras_compat.loss_tracker(self).update_state(loss, sample_weight=tf.shape(labels)[0])
        return self.compute_metrics(x, labels, top_ids)

    def predict_top_k(self, x, k=5):
        """`(ids, scores)` `[batch, k]`: the k best labels, exact or among the units
        inference selects, per `head.inference`."""
        features = self._features(x, training=False)
        if not self.head.exact_inference:
            ids, logits = self.head.active_outputs(features, inference=True)
            logits = tf.where(ids >= 0, logits, logits.dtype.min)
            top = tf.math.top_k(logits, k)
            return tf.gather(ids, top.indices, batch_dims=1), top.values
        # Exact, in one fused op: the [batch, labels] logits are never formed (1.4 GB for 512
        # examples over 670k labels), nor sorted; then the k winners' logits.
        head = self.head
        ids = tf_lsh_ops.matmul_top_k(features, head.kernel, head.bias, k)
        logits = tf_lsh_ops.sparse_gather_matmul(features, head.kernel, head.bias, ids)
        return ids, head.activate(ids, logits)

    def get_config(self):
        return {
            **super().get_config(),
            "body": keras.saving.serialize_keras_object(self.body),
            "head": keras.saving.serialize_keras_object(self.head),
            "active_loss": self.active_loss,
            "top_k": self.top_k,
            "lsh_recall_k": self.lsh_recall_k,
            "fuse_output_update": self.fuse_output_update,
            "fuse_first_layer_update": self.fuse_first_layer_update,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["body"] = keras.saving.deserialize_keras_object(config["body"])
        config["head"] = keras.saving.deserialize_keras_object(config["head"])
        return cls(**config)


def _with_missed_labels(head, features, ids, logits, labels):
    """`(ids, logits)` of the retrieved units `ids` plus each example's `labels` (-1 padded)
    that they miss, for the loss over the active set with its labels."""
    missed = tf.where(tf.reduce_any(labels[:, :, None] == ids[:, None, :], axis=2), -1, labels)
    missed_logits = head.activate(
        missed, tf_lsh_ops.sparse_gather_matmul(features, head.kernel, head.bias, missed)
    )
    return tf.concat([ids, missed], 1), tf.concat([logits, missed_logits], 1)


def _top_ids(ids, logits, k):
    """The ids of the k largest logits of each row (padding ids -1 last)."""
    logits = tf.where(ids >= 0, logits, logits.dtype.min)
    top = tf.math.top_k(logits, tf.minimum(k, tf.shape(ids)[1]))
    if ids.shape[0] == 1:  # one active set for the batch
        return tf.gather(ids[0], top.indices)
    return tf.gather(ids, top.indices, batch_dims=1)
