"""`LSHClassifier`: trains an `LSHDense` output layer over many classes with `model.fit`."""

import keras
import tensorflow as tf

import tf_lsh_ops
from keras_layers import _keras_compat
from keras_layers.distributed import DistributedFitMixin, scale_loss
from keras_layers.losses import active_softmax_cross_entropy, dense_softmax_cross_entropy
from keras_layers.lsh_dense import LSHDense
from keras_layers.metrics import LSHRecall
from keras_layers.optimizers import SparseAdam
from keras_layers.sparse_input_dense import SparseInputDense


@keras.saving.register_keras_serializable(package="tf_lsh")
class LSHClassifier(DistributedFitMixin, keras.Model):
    """A classifier over many labels whose output layer computes only a hashed-for few units.

    `body` maps inputs to features (any Keras layer or model, e.g. a `SparseInputDense` on a
    bag of words); `head` is an `LSHDense` with one unit per label and no activation.

    - Training (`fit`): the labels `y` (int `[batch, max_labels]`, -1 padded, multi-label;
      or `[batch]`) go into each example's active set (label inclusion), and the loss is the
      softmax cross-entropy over that set (`active_softmax_cross_entropy`), as in SLIDE. The
      head's weights get `IndexedSlices` gradients: compile with `SparseAdam` or `SGD`.
    - Evaluation (`evaluate`): with `head.inference == "dense"`, exact logits over all labels
      (full softmax loss); with `"lsh"`, only the retrieved labels. Compiled metrics receive
      `(labels, top ids)`: use `PrecisionAtK`. With `lsh_recall_k`, evaluation also reports how
      many of the exact top-k labels the active set held (costs a dense pass).
    - Speed: with `LSHDense(..., batch_wide=True)` the batch shares one active set (its labels
      first, then the units its buckets share most, as Mongoose): a step touches `active` rows
      of the output layer instead of up to `batch * active`, which makes the gradient and the
      optimizer update several times cheaper (29 ms against 76 ms a step on the Amazon-670K
      shape with 3,000 active, benchmarks/README.md) at the same or better P@1. With
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
      `predict_top_k(x, k)` gives `(ids, scores)` without `[batch, units]` in LSH mode.

    Args:
      body: the feature extractor.
      head: the `LSHDense` output layer.
      top_k: how many top ids evaluation hands to the metrics (>= the largest P@k).
      lsh_recall_k: if set, track `LSHRecall(lsh_recall_k)` during evaluation.
      fuse_output_update: fuse the head's backward pass with its `SparseAdam` update when
        possible (see above).
      fuse_first_layer_update: fuse the first layer's kernel gradient with its `SparseAdam`
        update when possible (see above).
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
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(head, LSHDense):
            raise ValueError(f"LSHClassifier: head must be an LSHDense, got {type(head).__name__}")
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
        # records its selection metrics (track_selection): they would never be measured.
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
        fuse = self._may_fuse_output_update()
        first = self._fusable_first_layer(x)
        with tf.GradientTape(persistent=fuse) as tape:
            features, product = self._training_features(x, first, tape)  # builds body and head
            fuse = fuse and self._can_fuse_this_step(features, first)
            ids, logits, fused = self.head._active_outputs(
                features, labels, fused_tape=tape if fuse else None, per_example_ids=False
            )
            loss = active_softmax_cross_entropy(ids, logits, labels)
            if self.losses:
                loss = loss + tf.add_n(self.losses)
            # Under tf.distribute, gradients are summed over replicas: scale to the global mean.
            scaled_loss = scale_loss(loss)
        self.head.step.assign_add(1)
        if fuse:
            grad_features = self._apply_fused_head(tape, scaled_loss, features, fused)
            self._apply_gradients(
                tape, features, self._body_variables(), x, first, product, grad_features
            )
        else:
            self._apply_gradients(tape, scaled_loss, self.trainable_variables, x, first, product)
        del tape
        self._loss_tracker.update_state(loss, sample_weight=tf.shape(labels)[0])
        # Training metrics rank the active set only (labels included): optimistic, but free.
        logs = self.compute_metrics(x, labels, _top_ids(ids, logits, self.top_k))
        if self.lsh_recall is not None:  # only evaluation measures it: not a training 0.0
            logs.pop(self.lsh_recall.name, None)
        return logs

    def _optimizer_can_fuse(self):
        """Whether the optimizer may be applied inside a fused backward pass (a replica's
        gradients are all-reduced first under tf.distribute)."""
        return (
            isinstance(self.optimizer, SparseAdam)
            and self.optimizer.can_fuse()
            and not tf.distribute.has_strategy()
        )

    def _may_fuse_output_update(self):
        """Whether the head's backward pass may apply its SparseAdam update itself."""
        head = self.head
        return (
            self.fuse_output_update
            and self._optimizer_can_fuse()
            and head.use_bias
            and not head.batch_wide  # its gradient rows are few: fusing saves nothing there
            and head.kernel_regularizer is None
            and head.bias_regularizer is None
            and head.kernel_constraint is None
            and head.bias_constraint is None
        )

    def _fusable_first_layer(self, x):
        """The body's first layer if its kernel's gradient may apply its SparseAdam update
        itself: a `SparseInputDense` that reads `x` (a `tf.SparseTensor`), as the body or as
        the first layer of a `keras.Sequential` body, without a kernel or activity regularizer.
        Else None."""
        if not (
            self.fuse_first_layer_update
            and isinstance(x, tf.SparseTensor)
            and self._optimizer_can_fuse()
        ):
            return None
        body = self.body
        first = body.layers[0] if isinstance(body, keras.Sequential) and body.layers else body
        if (
            not isinstance(first, SparseInputDense)
            or first.kernel_regularizer is not None
            or first.activity_regularizer is not None  # added by __call__, which fusing skips
        ):
            return None
        return first

    def _training_features(self, x, first, tape):
        """The body's output, and with a fused `first` layer its product `x @ kernel`,
        computed off the tape (which would otherwise build its unfused gradient) and watched."""
        if first is None:
            return self._features(x, training=True), None
        self._build_for(x)
        with tape.stop_recording():
            product = tf_lsh_ops.sparse_input_matmul(x, first.kernel)
        tape.watch(product)
        features = first._add_bias_and_activate(product)
        if first is not self.body:
            for layer in self.body.layers[1:]:
                training = {"training": True} if _keras_compat.call_has_training_arg(layer) else {}
                features = layer(features, **training)
        return features, product

    def _can_fuse_this_step(self, features, first=None):
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
        return [v for v in variables if first is None or v is not first.kernel]

    def _built_optimizer(self):
        """The optimizer, built over every trainable variable (as apply_gradients would) before
        a fused op reads its moments."""
        if not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)
        return self.optimizer

    def _apply_fused_head(self, tape, scaled_loss, features, fused):
        """The head's backward pass fused with its Adam update; returns the gradient of the
        loss with respect to the features."""
        head, optimizer = self.head, self._built_optimizer()
        outputs, op_ids, grouping = fused
        return tf_lsh_ops.sparse_gather_matmul_adam(
            features,
            head.kernel,
            head.bias,
            op_ids,
            grouping,
            tape.gradient(scaled_loss, outputs),
            optimizer.moments(head.kernel) + optimizer.moments(head.bias),
            **optimizer.step_hyperparameters(),  # read before apply_gradients counts the step
        )

    def _apply_gradients(self, tape, target, variables, x, first, product, output_gradients=None):
        """Applies the gradients of `target` (given `output_gradients`) to `variables`; with a
        fused `first` layer, its kernel's update goes through `sparse_input_matmul_adam`."""
        optimizer = self.optimizer
        if first is None:
            gradients = tape.gradient(target, variables, output_gradients=output_gradients)
        else:
            variables = self._unfused_variables(variables, first)
            grad_product, *gradients = tape.gradient(
                target, [product, *variables], output_gradients=output_gradients
            )
            self._built_optimizer()
            tf_lsh_ops.sparse_input_matmul_adam(
                x,
                first.kernel,
                grad_product,
                optimizer.moments(first.kernel),
                **optimizer.step_hyperparameters(),  # read before apply_gradients counts it
            )
        optimizer.apply_gradients(zip(gradients, variables, strict=True))

    def test_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        labels = self._labels(y)
        features = self._features(x, training=False)
        exact_logits = None
        if self.head.inference == "dense" or self.lsh_recall is not None:
            exact_logits = (
                self.head(features, training=False)
                if self.head.inference == "dense"
                else (tf.matmul(features, self.head.kernel, transpose_b=True) + self.head.bias)
            )
        if self.head.inference == "dense":
            loss = dense_softmax_cross_entropy(exact_logits, labels)
            top_ids = tf.math.top_k(exact_logits, self.top_k).indices
        else:
            ids, logits = self.head.active_outputs(features, labels=labels)
            loss = active_softmax_cross_entropy(ids, logits, labels)
            top_ids = _top_ids(*self.head.active_outputs(features), self.top_k)
        if self.lsh_recall is not None:
            self.lsh_recall.update_state(
                tf.math.top_k(exact_logits, self.lsh_recall.k).indices,
                self.head.active_ids(features),
            )
        self._loss_tracker.update_state(loss, sample_weight=tf.shape(labels)[0])
        return self.compute_metrics(x, labels, top_ids)

    def predict_top_k(self, x, k=5):
        """`(ids, scores)` `[batch, k]`: the k best labels, exact or LSH per `head.inference`."""
        features = self._features(x, training=False)
        if self.head.inference == "lsh":
            ids, logits = self.head.active_outputs(features)
            logits = tf.where(ids >= 0, logits, logits.dtype.min)
            top = tf.math.top_k(logits, k)
            return tf.gather(ids, top.indices, batch_dims=1), top.values
        top = tf.math.top_k(self.head(features, training=False), k)
        return top.indices, top.values

    def get_config(self):
        return {
            **super().get_config(),
            "body": keras.saving.serialize_keras_object(self.body),
            "head": keras.saving.serialize_keras_object(self.head),
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


def _top_ids(ids, logits, k):
    """The ids of the k largest logits of each row (padding ids -1 last)."""
    logits = tf.where(ids >= 0, logits, logits.dtype.min)
    top = tf.math.top_k(logits, tf.minimum(k, tf.shape(ids)[1]))
    if ids.shape[0] == 1:  # one active set for the batch
        return tf.gather(ids[0], top.indices)
    return tf.gather(ids, top.indices, batch_dims=1)
