"""The MNIST experiment of "Scalable and Sustainable Deep Learning via Randomized Hashing".

A 784-1000-1000-10 network whose two hidden layers are `LSHDense(1000, relu)`: each example
computes only the ~5% of units its SimHash tables (K = 6 bits, L tables) retrieve, forward and
backward; the output is a softmax `Dense(10)`. It trains with `model.fit` (`SparseAdam`, or
`SGD`), with `LSHRebuildCallback` re-hashing the units as their weights move. The reference is
the same network with `keras.layers.Dense` hidden layers and Adam. Both are evaluated on the
10,000 test images; the LSH network exactly (every unit, `inference="dense"`) and with LSH
inference (only the retrieved units, as in the paper).

Multiplications per example (forward pass):

* dense: 784 * 1000 + 1000 * 1000 + 1000 * 10;
* LSH, per hidden layer: hashing the input into L tables of K bits (input_dim * L * K for
  "srp"; "sparse_srp" projections have a `density` of nonzeros, 1/3, all +-1, so its count is
  input_dim * L * K / 3 and those are really additions), plus active * input_dim for the active
  units; plus the output layer, counted in full (1000 * 10, what `Dense` computes). The hash
  tables' rebuilds are not counted (every 50 steps of 128 examples by default).

    python examples/mnist_paper.py                     # 10 epochs, 5% active, L = 50
    python examples/mnist_paper.py --quick             # 1 epoch on 10,000 images
    python examples/mnist_paper.py --active 0.1 --num-tables 100 --optimizer sgd
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
    num_tables=50,
    num_hashes=6,
    hash_family="srp",
    hidden=HIDDEN,
    seed=0,
):
    """784 -> LSHDense(1000, relu) x 2 -> Dense(10, softmax)."""
    keras.utils.set_random_seed(seed)
    layers = [keras.Input((INPUT_DIM,))]
    for i, units in enumerate(hidden):
        layers.append(
            keras_layers.LSHDense(
                units,
                activation="relu",
                active=active,
                hash_family=hash_family,
                num_hashes=num_hashes,
                num_tables=num_tables,
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


def lsh_multiplications(model):
    """Forward multiplications per example of an LSH MLP: `{"hashing", "active", "output",
    "total"}` (see the module docstring)."""
    hashing = active = output = 0
    for layer in model.layers:
        input_dim = int(layer.input.shape[-1])
        if isinstance(layer, keras_layers.LSHDense):
            bits = layer.num_tables * layer.num_hashes_used
            density = SPARSE_SRP_DENSITY if layer.hash_family == "sparse_srp" else 1.0
            hashing += input_dim * bits * density
            active += layer.num_active * input_dim
        else:
            output += input_dim * layer.units
    return {
        "hashing": hashing,
        "active": active,
        "output": output,
        "total": hashing + active + output,
    }


def make_optimizer(name, learning_rate):
    if name == "sparse_adam":
        return keras_layers.SparseAdam(learning_rate)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9)
    raise ValueError(f"unknown optimizer {name!r}")


def fit_and_test(model, optimizer, data, epochs, batch_size, callbacks=(), verbose=2):
    """Trains `model` with `model.fit`; returns training seconds and test accuracy."""
    (x_train, y_train), (x_test, y_test) = data
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    start = time.perf_counter()
    model.fit(
        x_train,
        y_train,
        batch_size=batch_size,
        epochs=epochs,
        shuffle=True,
        verbose=verbose,
        callbacks=list(callbacks),
    )
    seconds = time.perf_counter() - start
    _, accuracy = model.evaluate(x_test, y_test, batch_size=1000, verbose=0)
    return {"train_s": seconds, "test_accuracy": float(accuracy)}


def lsh_inference_accuracy(model, x_test, y_test):
    """Test accuracy computing only the retrieved units (`inference="lsh"`)."""
    keras_layers.set_inference(model, "lsh")
    try:
        _, accuracy = model.evaluate(x_test, y_test, batch_size=1000, verbose=0)
    finally:
        keras_layers.set_inference(model, "dense")
    return float(accuracy)


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
    parser.add_argument("--num-tables", type=int, default=50, help="L, hash tables per layer")
    parser.add_argument("--num-hashes", type=int, default=6, help="K, bits per table")
    parser.add_argument("--hash-family", default="srp", choices=("srp", "sparse_srp"))
    parser.add_argument("--optimizer", default="sparse_adam", choices=("sparse_adam", "sgd"))
    parser.add_argument("--learning-rate", type=float, default=None, help="1e-3 Adam, 1e-2 SGD")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rebuild-period", type=int, default=50, help="steps between rebuilds")
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
        num_tables=args.num_tables,
        num_hashes=args.num_hashes,
        hash_family=args.hash_family,
        seed=args.seed,
    )
    hidden = lsh.layers[0]
    print(
        f"LSH network: {hidden.num_active} of {hidden.units} units active per hidden layer, "
        f"{args.hash_family} K={hidden.num_hashes_used} L={hidden.num_tables}, "
        f"{args.optimizer} lr {args.learning_rate:g}",
        file=sys.stderr,
    )
    rebuild = keras_layers.LSHRebuildCallback(period=args.rebuild_period)
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
        [rebuild],
        verbose,
    )
    lsh_result["test_accuracy_lsh_inference"] = lsh_inference_accuracy(lsh, x_test, y_test)
    lsh_result["table_rebuilds"] = rebuild.rebuilds
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
        f"\n{'network':40s} {'test acc':>9s} {'mults/example':>14s} {'fraction':>9s} "
        f"{'train s':>8s}",
        file=sys.stderr,
    )
    rows = [("LSHDense hidden layers (exact inference)", results["lsh"], "test_accuracy")]
    rows.append(("LSHDense hidden layers (LSH inference)", results["lsh"], None))
    if "dense" in results:
        rows.append(("Dense hidden layers", results["dense"], "test_accuracy"))
    for name, result, key in rows:
        mults = result["multiplications_per_example"]
        mults = mults["total"] if isinstance(mults, dict) else mults
        accuracy = result[key] if key else result["test_accuracy_lsh_inference"]
        print(
            f"{name:40s} {accuracy:9.4f} {mults:14,.0f} {result['multiplication_fraction']:9.1%} "
            f"{result['train_s']:8.1f}",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
