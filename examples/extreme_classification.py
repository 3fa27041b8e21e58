"""Extreme classification with tf-lsh, side by side with a full-softmax Keras model.

A bag-of-words input (`tf.SparseTensor`) feeds a 1,024-wide hidden layer (`SparseInputDense`,
normalised per example, dropout: `build_body`) and an output layer over every label. The tf-lsh
model trains its output layer as SLIDE's successors do: each batch computes only its labels
plus the labels its hash tables retrieve (`LSHDense` + `LSHClassifier`), one-vs-rest (a binary
cross-entropy per active label), with `SparseAdam`. The reference is the same network with a
`keras.layers.Dense` output, full softmax and Keras' Adam. Both train with
`model.fit` on the same data for the same epochs and are evaluated with exact (dense)
inference: P@1/3/5, next to the popular-labels baseline. The tf-lsh model is then saved
(`.keras`) and exported (SavedModel).

    python examples/extreme_classification.py                    # generated data (default)
    python examples/extreme_classification.py --train train.txt --test test.txt  # your files
"""

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import keras_layers  # noqa: E402
from keras_layers import datasets  # noqa: E402

# The body's width and dropout, and the loss: on the small generated shape, hidden 1,024
# with dropout 0.5 and the binary loss reach test P@5 0.72 in 2-3 epochs, where 128 with the
# softmax over the active set stayed near 0.62 (benchmarks/README.md, issue 21): the output
# layer's cost grows with the width only through its active units.
HIDDEN = 1024
DROPOUT = 0.5
ACTIVE_LOSS = "binary"
# The optimizer: SparseAdam without momentum (beta_1 = 0), the first layer's rows (one per input
# feature) with one second moment each (`feature_rows`). A lazy update applies a row's first
# moment only when the row is next touched, and a label or feature seldom in a batch then
# steps along gradients many steps old; without it both layers learn faster per epoch, and
# the rows' rule is also the cheaper update (benchmarks/README.md, "The first layer's rows
# and momentum"). With beta_1 = 0 SparseAdam keeps no first moment at all: the output layer's
# optimizer state is one copy of its weights, not two.
BETA_1 = 0.0
FEATURE_ROWS = "rowwise_rmsprop"
LEARNING_RATE = 1e-3
# The rank of the random sketch behind `inference="sketch"`: on the Amazon-670K shape it
# predicts several times faster than exact inference and faster than PECOS, with nearly exact
# P@k; a lower rank is faster and loses more of P@5 (benchmarks/README.md, "Prediction").
INFERENCE_RANK = 128


def build_body(num_features, hidden=HIDDEN, dropout=DROPOUT):
    """SparseInputDense(hidden, relu) over `num_features` sparse inputs, then each example's
    features normalised (zero mean and unit variance over the units, no learned offset or
    scale), then dropout (training only). The sparse `keras.Input` keeps the `tf.SparseTensor`
    sparse: without it, `keras.Sequential` densifies its inputs first (`[batch, num_features]`).

    Without the normalisation the ReLU features grow a common component (their norm went from 2
    to 12 in 12 epochs on the amazon-670k-100k shape) along which every label trained in many
    active sets takes a large negative offset, which the softmax over an active set leaves free;
    labels seldom in an active set keep a small one and, at exact inference, outrank the true
    labels: test P@1 peaked at epoch 8 and then fell every epoch (issue 21).
    """
    layers = [
        keras.Input((num_features,), sparse=True),
        keras_layers.SparseInputDense(hidden, activation="relu", name="hidden"),
        keras.layers.LayerNormalization(center=False, scale=False, name="normalise"),
    ]
    if dropout:
        layers.append(keras.layers.Dropout(dropout, name="dropout"))
    return keras.Sequential(layers, name="body")


def build_lsh_model(
    num_features,
    num_labels,
    active,
    labels_per_example=5.0,
    num_tables=16,
    batch_wide=False,
    inference_rank=INFERENCE_RANK,
    seed=0,
):
    """`build_body(num_features)` -> LSHDense(num_labels) trained by LSHClassifier with the
    binary loss over each active set.

    The head's biases start at `log(labels_per_example / num_labels)`, about each label's
    prior log-odds, as the binary loss needs (`keras_layers.active_binary_cross_entropy`).
    With `batch_wide`, the batch shares one active set (its labels first, then the units its
    examples' buckets share most), as Mongoose does: a step then touches `active` rows of the
    output layer, not up to `batch * active`. The head keeps a rank-`inference_rank` sketch
    for fast prediction: `keras_layers.set_inference(model, "sketch")`.
    """
    keras.utils.set_random_seed(seed)
    initial_bias = math.log(labels_per_example / num_labels)
    model = keras_layers.LSHClassifier(
        body=build_body(num_features),
        head=keras_layers.LSHDense(
            num_labels,
            active=active,
            num_tables=num_tables,
            batch_wide=batch_wide,
            bias_initializer=keras.initializers.Constant(initial_bias),
            inference_rank=inference_rank,
            seed=seed,
            name="output",
        ),
        active_loss=ACTIVE_LOSS,
    )
    model.build((None, num_features))
    return model


def build_optimizer(learning_rate=LEARNING_RATE):
    """The tf-lsh model's optimizer: `SparseAdam` with `BETA_1`, the first layer's rows by
    `FEATURE_ROWS`."""
    return keras_layers.SparseAdam(learning_rate, beta_1=BETA_1, feature_rows=FEATURE_ROWS)


def build_dense_model(num_features, num_labels, seed=0):
    """The same network with a Dense output over every label and a full softmax."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((num_features,), sparse=True)
    hidden = build_body(num_features)(inputs)
    logits = keras.layers.Dense(num_labels, name="output")(hidden)
    return keras.Model(inputs, logits)


def full_softmax_loss(labels, logits):
    return keras_layers.dense_softmax_cross_entropy(logits, labels)


def precision_metrics():
    return [keras_layers.PrecisionAtK(k) for k in (1, 3, 5)]


def train(model, train_data, test_data, epochs, batch_size, callbacks=(), verbose=2):
    """Fits `model`; returns seconds per epoch and the test metrics after each epoch."""
    history = []
    for epoch in range(epochs):
        start = time.perf_counter()
        model.fit(
            train_data.dataset(batch_size, shuffle=True, seed=epoch),
            epochs=1,
            shuffle=False,  # the dataset shuffles, seeded per epoch
            verbose=verbose,
            callbacks=list(callbacks),
        )
        seconds = time.perf_counter() - start
        scores = model.evaluate(test_data.dataset(512), verbose=0, return_dict=True)
        history.append({"epoch": epoch + 1, "seconds": seconds, **scores})
        print(f"  epoch {epoch + 1}: {seconds:.1f} s, test {_fmt(scores)}", file=sys.stderr)
    return history


def _fmt(scores):
    return ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if k.startswith("P@"))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="small", choices=sorted(datasets.SYNTHETIC_SHAPES))
    parser.add_argument("--train", help="training file (Extreme Classification Repository format)")
    parser.add_argument("--test", help="test file (same format)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--active", type=int, default=None, help="active labels per example")
    parser.add_argument(
        "--per-example",
        action="store_true",
        help="one active set per example instead of one per batch",
    )
    parser.add_argument("--skip-dense", action="store_true", help="train only the tf-lsh model")
    parser.add_argument("--out", default="out/extreme_classification", help="where to save")
    args = parser.parse_args(argv)

    if args.train:
        train_data = datasets.read_extreme_classification(args.train)
        test_data = datasets.read_extreme_classification(args.test or args.train)
    else:
        train_data, test_data = datasets.synthetic_extreme_classification(args.shape)
    num_features, num_labels = train_data.num_features, train_data.num_labels
    active = args.active or max(64, num_labels // 20)
    print(
        f"{len(train_data):,} training and {len(test_data):,} test examples, "
        f"{num_features:,} features, {num_labels:,} labels; tf-lsh computes {active:,} "
        f"output units per example ({active / num_labels:.1%})",
        file=sys.stderr,
    )

    results = {
        "data": {
            "train": len(train_data),
            "test": len(test_data),
            "features": num_features,
            "labels": num_labels,
            "active": active,
        }
    }
    results["popular_labels"] = {
        f"P@{k}": test_data.popular_labels_precision(train_data, k) for k in (1, 3, 5)
    }

    print("tf-lsh: LSHDense output + SparseAdam", file=sys.stderr)
    lsh_model = build_lsh_model(
        num_features,
        num_labels,
        active,
        labels_per_example=train_data.labels_per_example,
        batch_wide=not args.per_example,
    )
    lsh_model.compile(optimizer=build_optimizer(), metrics=precision_metrics())
    rebuild = keras_layers.LSHRebuildCallback(period=50, schedule="exponential", growth=1.2)
    results["tf_lsh"] = train(
        lsh_model, train_data, test_data, args.epochs, args.batch_size, [rebuild]
    )

    if not args.skip_dense:
        print("Keras: Dense output, full softmax + Adam", file=sys.stderr)
        dense_model = build_dense_model(num_features, num_labels)
        dense_model.compile(
            optimizer=keras.optimizers.Adam(1e-3),
            loss=full_softmax_loss,
            metrics=precision_metrics(),
        )
        results["full_softmax"] = train(
            dense_model, train_data, test_data, args.epochs, args.batch_size
        )

    os.makedirs(args.out, exist_ok=True)
    lsh_model.save(os.path.join(args.out, "model.keras"))
    lsh_model.export(
        os.path.join(args.out, "saved_model"),
        input_signature=[keras.KerasTensor((None, num_features), "float32", sparse=True)],
        verbose=False,
    )
    results["saved"] = {
        "keras": os.path.join(args.out, "model.keras"),
        "saved_model": os.path.join(args.out, "saved_model"),
    }
    print(json.dumps(results, indent=1), file=open(os.path.join(args.out, "results.json"), "w"))
    _print_table(results)
    return results


def _print_table(results):
    rows = []
    for key, name in (
        ("tf_lsh", "tf-lsh (LSHDense + SparseAdam)"),
        ("full_softmax", "Keras Dense, full softmax + Adam"),
    ):
        if key in results:
            history = results[key]
            seconds = sum(h["seconds"] for h in history) / len(history)
            rows.append((name, f"{seconds:8.1f}", history[-1]))
    rows.append(("always the most popular labels", " " * 8, results["popular_labels"]))
    print(f"\n{'model':34s} {'s/epoch':>8s} {'P@1':>7s} {'P@3':>7s} {'P@5':>7s}")
    for name, seconds, scores in rows:
        print(f"{name:34s} {seconds} " + " ".join(f"{scores[f'P@{k}']:7.4f}" for k in (1, 3, 5)))
    if "full_softmax" in results:
        lsh, dense = results["tf_lsh"], results["full_softmax"]
        speedup = sum(h["seconds"] for h in dense) / sum(h["seconds"] for h in lsh)
        ratio = lsh[-1]["P@1"] / max(dense[-1]["P@1"], 1e-9)
        print(
            f"\ntf-lsh trains {speedup:.1f}x faster per epoch and reaches {ratio:.0%} of the "
            f"full softmax's P@1 after {len(lsh)} epochs."
        )


if __name__ == "__main__":
    main()
