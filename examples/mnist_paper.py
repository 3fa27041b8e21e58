"""The MNIST experiment of "Scalable and Sustainable Deep Learning via Randomized Hashing".

A 784-1000-1000-10 network whose two hidden layers are `LSHDense(1000, relu)`: each example
computes only the 5% of units its layer selects, forward and backward; the first hidden layer
hands its active units to the second as a `tf.SparseTensor` (`sparse_outputs=True`), so the
second reads 50 inputs, not 1,000. The output is a softmax `Dense(10)`. It trains with
`model.fit` (`SparseAdam`, or `SGD`); the layers keep their selection up to date by
themselves. The reference is the same network with `keras.layers.Dense` hidden layers and Adam.

By default the layers select with `active_rule="low_rank"` (a rank-32 sketch of each layer,
refitted every 50 steps from the batch's exact pre-activations), which finds most of each
example's exact top units; `--active-rule frequency` uses SimHash tables of the weights (the
paper's design, K bits, L tables, kept by `LSHRebuildCallback`) and `exact` computes every
unit and keeps the top 5% (the reference for what a selection can reach).

Multiplications per example (forward pass; `lsh_multiplications`), where a layer's fan-in is
its input's width, or the previous layer's active units when that one has `sparse_outputs`:

* dense: 784 * 1000 + 1000 * 1000 + 1000 * 10;
* LSH, per hidden layer: selecting (`"low_rank"`: rank * (fan-in + units); tables: fan-in *
  L * K, a third of it for "sparse_srp"; `"exact"`: fan-in * units) plus active * fan-in for
  the active units; plus the output layer, counted in full (1000 * 10). The backward pass
  (weight gradients, and input gradients below the first layer) and the refreshes (a batch's
  exact products every `refresh_period` steps, per example) are counted apart.

    python examples/mnist_paper.py                     # 10 epochs, 5% active
    python examples/mnist_paper.py --quick             # 1 epoch on 10,000 images
    python examples/mnist_paper.py --active 0.01 --active-rule frequency --num-tables 50
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import keras_layers  # noqa: E402
from keras_layers import datasets  # noqa: E402

INPUT_DIM = 784
HIDDEN = (1000, 1000)
CLASSES = 10
SPARSE_SRP_DENSITY = 1 / 3  # tf_lsh_ops.hash_params' default for "sparse_srp"
QUICK_TRAIN = 10_000


def build_lsh_mlp(
    active=0.05,
    active_rule="auto",
    rank=32,
    num_tables=50,
    num_hashes=6,
    hash_family="srp",
    min_count=1,
    sparse_outputs=True,
    hidden=HIDDEN,
    seed=0,
):
    """784 -> LSHDense(1000, relu) x 2 -> Dense(10, softmax); hidden layers but the last hand
    on sparse outputs when `sparse_outputs`."""
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((INPUT_DIM,))]
    for i, units in enumerate(hidden):
        layers.append(
            keras_layers.LSHDense(
                units,
                activation="relu",
                active=active,
                active_rule=active_rule,
                rank=rank,
                hash_family=hash_family,
                num_hashes=num_hashes,
                num_tables=num_tables,
                min_count=min_count,
                sparse_outputs=sparse_outputs and i + 1 < len(hidden),
                track_selection=True,
                seed=seed + i,
                name=f"hidden{i + 1}",
            )
        )
    layers.append(keras.layers.Dense(CLASSES, activation="softmax", name="output"))
    return keras.Sequential(layers, name="lsh_mlp")


def build_dense_mlp(hidden=HIDDEN, seed=0):
    """The same network with `keras.layers.Dense` hidden layers."""
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((INPUT_DIM,))]
    for i, units in enumerate(hidden):
        layers.append(keras.layers.Dense(units, activation="relu", name=f"hidden{i + 1}"))
    layers.append(keras.layers.Dense(CLASSES, activation="softmax", name="output"))
    return keras.Sequential(layers, name="dense_mlp")


def dense_multiplications(hidden=HIDDEN):
    dims = (INPUT_DIM, *hidden, CLASSES)
    return sum(a * b for a, b in zip(dims[:-1], dims[1:], strict=True))


def lsh_multiplications(model, input_dim=INPUT_DIM):
    """Multiplications per example of an LSH MLP (see the module docstring): forward
    `{"selection", "active", "output", "total"}`, plus `"backward"` and `"refresh"` (the
    refreshes' exact products, spread over the examples between two). `input_dim`: the
    first layer's fan-in (for sparse inputs, the mean nonzeros of an example)."""
    counts = dict.fromkeys(("selection", "active", "output", "backward", "refresh"), 0.0)
    # A layer's nonzero inputs (forward products and weight gradients) and the inputs it is
    # handed (input gradients): a previous layer's candidates beyond its active units come
    # as zeros, which take a gradient but no product.
    fan_in = handed_on = input_dim
    for index, layer in enumerate(model.layers):
        if not isinstance(layer, keras_layers.LSHDense):
            counts["output"] += fan_in * layer.units
            counts["backward"] += (fan_in + handed_on) * layer.units
            continue
        if layer.selection == "low_rank":
            counts["selection"] += layer.rank * (fan_in + layer.units)
        elif layer.selection == "exact":
            counts["selection"] += fan_in * layer.units
        else:
            config = layer.table_config
            density = SPARSE_SRP_DENSITY if config.hash_family == "sparse_srp" else 1.0
            bits = config.num_tables * layer.tables.num_hashes
            counts["selection"] += fan_in * bits * density
        # Every candidate is computed (`active` of them pass on) and takes a gradient.
        counts["active"] += layer.num_candidates * fan_in
        # Weight gradients; input gradients too, except for the first layer.
        counts["backward"] += layer.num_candidates * (fan_in + (handed_on if index else 0))
        # A refresh computes the batch's exact products for the sketch or the recall metric
        # (a table refresh alone re-hashes the changed units: not counted).
        if layer.refresh_steps and (layer.selection == "low_rank" or layer.track_selection):
            counts["refresh"] += layer.units * fan_in / layer.refresh_steps
        fan_in = layer.num_active if layer.sparse_outputs else layer.units
        handed_on = layer.num_candidates if layer.sparse_outputs else layer.units
    counts["total"] = counts["selection"] + counts["active"] + counts["output"]
    return counts


def dense_backward_multiplications(hidden=HIDDEN):
    """Weight and input gradients of the dense MLP, per example (no input gradient below
    the first layer)."""
    dims = (INPUT_DIM, *hidden, CLASSES)
    pairs = list(zip(dims[:-1], dims[1:], strict=True))
    return sum(a * b for a, b in pairs) * 2 - pairs[0][0] * pairs[0][1]


def make_optimizer(name, learning_rate):
    if name == "sparse_adam":
        return keras_layers.SparseAdam(learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}")


def fit_and_test(model, optimizer, data, epochs, batch_size, callbacks=(), verbose=2):
    """Trains `model` with `model.fit`; returns training seconds, test accuracy (each layer in
    its own inference mode) and the per-epoch history (loss, accuracy, and each `LSHDense`'s
    `_recall` and `_coverage` with `track_selection`)."""
    (x_train, y_train), (x_test, y_test) = data
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    history = model.fit(
        x_train,
        y_train,
        batch_size=batch_size,
        epochs=epochs,
        shuffle=True,
        verbose=verbose,
        callbacks=list(callbacks),
    )
    seconds = time.perf_counter() - start
    accuracy = model.evaluate(x_test, y_test, batch_size=1000, verbose=0, return_dict=True)[
        "accuracy"
    ]
    return {
        "train_s": seconds,
        "test_accuracy": float(accuracy),
        "history": {name: [float(v) for v in values] for name, values in history.history.items()},
    }


def inference_accuracies(model, x_test, y_test):
    """Test accuracy with every `LSHDense` in each inference mode they all can run:
    `{"lsh", "top_k", "dense"}` (and `"sketch"` if they have `inference_rank`)."""
    layers = keras_layers.lsh_layers(model)
    accuracies = {}
    for mode in keras_layers.INFERENCE_MODES:
        if not all(mode in layer.inference_modes for layer in layers):
            continue
        with keras_layers.inference_mode(model, mode):
            results = model.evaluate(x_test, y_test, batch_size=1000, verbose=0, return_dict=True)
        accuracies[mode] = float(results["accuracy"])
    return accuracies


def load_data(train_examples=None):
    """((x_train, y_train), (x_test, y_test)), optionally the first `train_examples`."""
    (x_train, y_train), _, test = datasets.load_mnist()
    if train_examples is not None:
        x_train, y_train = x_train[:train_examples], y_train[:train_examples]
    return (x_train, y_train), test


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--active", type=float, default=0.05, help="fraction of units active")
    parser.add_argument(
        "--active-rule",
        default="auto",
        choices=keras_layers.lsh_dense.ACTIVE_RULES,
        help="how units are selected (auto: low_rank for these ReLU layers)",
    )
    parser.add_argument("--rank", type=int, default=32, help="sketch rank for low_rank")
    parser.add_argument("--num-tables", type=int, default=50, help="L, for table rules")
    parser.add_argument("--num-hashes", type=int, default=6, help="K, for table rules")
    parser.add_argument("--hash-family", default="srp", choices=("srp", "sparse_srp"))
    parser.add_argument("--optimizer", default="sparse_adam", choices=("sparse_adam", "sgd"))
    parser.add_argument("--learning-rate", type=float, default=None, help="1e-3 Adam, 1e-2 SGD")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--rebuild-period", type=int, default=50, help="steps between table rebuilds"
    )
    parser.add_argument("--train-examples", type=int, default=None, help="use a subset")
    parser.add_argument("--quick", action="store_true", help=f"1 epoch on {QUICK_TRAIN:,} images")
    parser.add_argument("--skip-dense", action="store_true", help="train only the LSH network")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs = 1
        args.train_examples = args.train_examples or QUICK_TRAIN
    if args.learning_rate is None:
        args.learning_rate = 1e-3 if args.optimizer == "sparse_adam" else 1e-2
    return args


def main(argv=None):
    args = parse_args(argv)
    data = load_data(args.train_examples)
    (x_train, _), (x_test, y_test) = data
    print(
        f"MNIST: {len(x_train):,} training and {len(x_test):,} test images, {args.epochs} epoch(s)",
        file=sys.stderr,
    )
    verbose = 2 if sys.stderr.isatty() else 0

    lsh = build_lsh_mlp(
        active=args.active,
        active_rule=args.active_rule,
        rank=args.rank,
        num_tables=args.num_tables,
        num_hashes=args.num_hashes,
        hash_family=args.hash_family,
        seed=args.seed,
    )
    hidden = lsh.layers[0]
    how = (
        f"{args.hash_family} tables K={hidden.tables.num_hashes} L={hidden.table_config.num_tables}"
        if hidden.tables is not None
        else f"{hidden.selection}"
        + (f" rank {hidden.rank}" if hidden.selection == "low_rank" else "")
    )
    print(
        f"LSH network: {hidden.num_active} of {hidden.units} units active per hidden layer, "
        f"{how}, {args.optimizer} lr {args.learning_rate:g}",
        file=sys.stderr,
    )
    callbacks = []
    if hidden.tables is not None:
        callbacks.append(keras_layers.LSHRebuildCallback(period=args.rebuild_period))
    results = {
        "settings": {
            **{k: v for k, v in vars(args).items() if k != "quick"},
            "quick": args.quick,
            "active_units": hidden.num_active,
            "train_examples": len(x_train),
        }
    }
    lsh_result = fit_and_test(
        lsh,
        make_optimizer(args.optimizer, args.learning_rate),
        data,
        args.epochs,
        args.batch_size,
        callbacks,
        verbose,
    )
    lsh_result["test_accuracy_by_inference"] = inference_accuracies(lsh, x_test, y_test)
    mults = lsh_multiplications(lsh)
    dense_mults = dense_multiplications()
    lsh_result["multiplications_per_example"] = mults
    lsh_result["multiplication_fraction"] = mults["total"] / dense_mults
    results["lsh"] = lsh_result
    print(f"  LSH: {_fmt(lsh_result)}", file=sys.stderr)

    if not args.skip_dense:
        dense = build_dense_mlp(seed=args.seed)
        dense_result = fit_and_test(
            dense, keras.optimizers.Adam(1e-3), data, args.epochs, args.batch_size, (), verbose
        )
        dense_result["multiplications_per_example"] = dense_mults
        dense_result["multiplication_fraction"] = 1.0
        results["dense"] = dense_result
        print(f"  Dense: {_fmt(dense_result)}", file=sys.stderr)

    _print_table(results)
    print(json.dumps(results, indent=1))
    return results


def _fmt(result):
    return f"{result['train_s']:.1f} s, test accuracy {result['test_accuracy']:.4f}"


def _print_table(results):
    print(
        f"\n{'network':42s} {'test acc':>9s} {'mults/example':>14s} {'fraction':>9s} "
        f"{'train s':>8s}",
        file=sys.stderr,
    )
    lsh = results["lsh"]
    rows = [
        (f"LSHDense hidden layers ({mode} inference)", lsh, accuracy)
        for mode, accuracy in lsh["test_accuracy_by_inference"].items()
    ]
    if "dense" in results:
        rows.append(("Dense hidden layers", results["dense"], results["dense"]["test_accuracy"]))
    for name, result, accuracy in rows:
        mults = result["multiplications_per_example"]
        mults = mults["total"] if isinstance(mults, dict) else mults
        print(
            f"{name:42s} {accuracy:9.4f} {mults:14,.0f} {result['multiplication_fraction']:9.1%} "
            f"{result['train_s']:8.1f}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
