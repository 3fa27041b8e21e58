"""Top-5 prediction of an extreme-classification head: exact, hash tables, random sketches of
several ranks, and the label-tree libraries, on the same test examples in one process.

Trains the README's model (`bench_extreme`'s `tf_lsh` method: `examples/extreme_classification.py`
`build_lsh_model`, `SparseAdam`, `LSHRebuildCallback`) for a few epochs, then times
`LSHClassifier.predict_top_k` per test example in each inference mode of the head:
- `exact`: every label scored (`inference="dense"`, `matmul_top_k` over all of them);
- `lsh`: the labels the training tables retrieve for each example;
- `sketch_<rank>`: the `active` labels of the largest logits in a random rank-`rank` sketch of
  the head (`keras_layers.InferenceSketch`), then their exact logits;
- `low_rank_<rank>`: the same through the hidden layers' sketch instead (`LowRankSelector`, its
  basis fitted to the exact logits of `4 * rank` training examples).
Each mode's P@1/3/5, recall of the exact top 5, and speed-up over exact; then each library
(`benchmarks/xmc_libraries.py`, defaults) trained on the same data and timed on the same
examples, and each mode's time over the fastest library's. Prints JSON.

    python benchmarks/bench_inference.py [--quick | --full] [--data TRAIN --test TEST]
        [--epochs N] [--ranks R ...] [--libraries NAME ...] [--test-examples N] [--threads N]

`--full`: the "small" generated shape (20,000 labels), 3 epochs, ranks 32 64 128 256, PECOS
and Omikuji. `--quick`: the "tiny" shape, 1 epoch, ranks 16 32, no library. `--data/--test`:
Extreme Classification Repository files instead of a generated shape (active 3,000 labels).
"""

import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
import bench_extreme  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import xmc_libraries  # noqa: E402

import keras_layers  # noqa: E402
from keras_layers import datasets  # noqa: E402

log = _common.make_logger("bench_inference")

MODES = {
    "quick": {
        "shape": "tiny",
        "epochs": 1,
        "active": 512,
        "ranks": (16, 32),
        "libraries": (),
        "test_examples": 512,
    },
    "full": {
        "shape": "small",
        "epochs": 3,
        "active": 1000,
        "ranks": (32, 64, 128, 256),
        "libraries": ("pecos_xr_linear", "omikuji"),
        "test_examples": 2000,
    },
}
FILE_ACTIVE = 3000
TOP_K = 5


def trained_model(train, cfg, num_tables=16):
    model, callbacks = bench_extreme.METHODS["tf_lsh"].build(train, cfg["active"], num_tables)
    start = time.perf_counter()
    for epoch in range(cfg["epochs"]):
        model.fit(
            train.dataset(bench_extreme.BATCH, shuffle=True, seed=epoch),
            verbose=0,
            callbacks=callbacks,
        )
        log(f"epoch {epoch + 1}: {time.perf_counter() - start:.1f} s")
    return model, time.perf_counter() - start


def add_state(name, shape, dtype, value):
    """A selector's state as a plain variable (the benchmark swaps selectors on a built head)."""
    return tf.Variable(tf.broadcast_to(tf.cast(value, dtype), shape), trainable=False, name=name)


def with_sketch(head, rank):
    """Gives `head` a fresh `InferenceSketch` of `rank` (fitted to its weights at first use)."""
    sketch = keras_layers.InferenceSketch(head.num_active, rank, head.seed)
    sketch.build(head.kernel, head.bias, head.step, add_state)
    head.inference_sketch = sketch


def low_rank_selector(head, rank, features):
    """A `LowRankSelector` of `rank` on `head`'s weights, fitted to the exact logits of
    `features`."""
    selector = keras_layers.LowRankSelector(head.units, head.num_active, head.seed, rank)
    selector.build(head.kernel, head.bias, add_state, lambda: head.step)
    selector.fit(features)
    return selector


def timed_top_k(predict, batches):
    """(top-5 ids of every example, seconds per example)."""
    tops, seconds = bench_extreme.timed_top_k(predict, batches)
    return np.concatenate(tops), seconds


def scored(tops, seconds, labels, exact=None):
    pairs = [(labels, tops)]
    out = {**bench_extreme.precision_scores(pairs), "ms_per_example": 1e3 * seconds}
    if exact is not None:
        recall = keras_layers.LSHRecall(TOP_K)
        recall.update_state(exact, tops)
        out["recall_of_exact_top5"] = float(recall.result())
    return out


def head_modes(model, batches, labels, ranks, train_features):
    """{mode: scores} for exact, lsh, and a random and a fitted sketch of each rank."""
    head = model.head

    def predict(x):
        return model.predict_top_k(x, TOP_K)[0]

    modes = {}
    with keras_layers.inference_mode(model, "dense"):
        exact, seconds = timed_top_k(predict, batches)
    modes["exact"] = scored(exact, seconds, labels)
    log(f"exact: {modes['exact']}")
    with keras_layers.inference_mode(model, "lsh"):
        modes["lsh"] = scored(*timed_top_k(predict, batches), labels, exact)
    log(f"lsh: {modes['lsh']}")
    for rank in ranks:
        with_sketch(head, rank)
        with keras_layers.inference_mode(model, "sketch"):
            modes[f"sketch_{rank}"] = scored(*timed_top_k(predict, batches), labels, exact)
        modes[f"sketch_{rank}"]["sketch_bytes"] = head.inference_sketch.memory_bytes
        log(f"sketch {rank}: {modes[f'sketch_{rank}']}")
        # The "lsh" mode computes what the head's selector picks: swap in the fitted sketch.
        tables, head.selector = (
            head.selector,
            low_rank_selector(head, rank, train_features[: 4 * rank]),
        )
        with keras_layers.inference_mode(model, "lsh"):
            modes[f"low_rank_{rank}"] = scored(*timed_top_k(predict, batches), labels, exact)
        head.selector = tables
        log(f"low rank {rank}: {modes[f'low_rank_{rank}']}")
    return modes


def library_modes(names, train, test, labels):
    out = {}
    for name in names:
        library = xmc_libraries.LIBRARIES[name]
        start = time.perf_counter()
        trained = library.train(train, threads=2)
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        tops = library.predict_top_k(trained, test, TOP_K, threads=2)
        seconds = (time.perf_counter() - start) / len(test)
        out[name] = {**scored(tops, seconds, labels), "train_s": train_s}
        log(f"{name}: {out[name]}")
    return out


def main(argv=None):
    parser = _common.mode_parser(__doc__.splitlines()[0])
    parser.add_argument("--data", help="training file (Extreme Classification Repository)")
    parser.add_argument("--test", help="the test file that goes with --data")
    parser.add_argument("--epochs", type=int, help="training epochs (default: the mode's)")
    parser.add_argument("--ranks", type=int, nargs="+", help="sketch ranks (default: the mode's)")
    parser.add_argument("--libraries", nargs="*", choices=sorted(xmc_libraries.LIBRARIES))
    parser.add_argument("--test-examples", type=int, help="test examples timed")
    args = parser.parse_args(argv)
    _common.configure_threads(args.threads)
    cfg = dict(MODES[args.mode])
    if args.data:
        train = datasets.read_extreme_classification(args.data)
        test = datasets.read_extreme_classification(args.test or args.data)
        cfg.update(shape=os.path.basename(args.data), active=FILE_ACTIVE)
    else:
        train, test = datasets.synthetic_extreme_classification(cfg["shape"])
    for key in ("epochs", "ranks", "libraries", "test_examples"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    test = bench_extreme.test_subset(test, cfg["test_examples"])
    batches = bench_extreme.test_batches(test)
    labels = np.concatenate([y for _, y in batches])

    model, train_s = trained_model(train, cfg)
    train_x = next(iter(train.dataset(4 * max(cfg["ranks"]))))[0]
    train_features = model.body(train_x, training=False)
    modes = head_modes(model, batches, labels, cfg["ranks"], train_features)
    libraries = library_modes(cfg["libraries"], train, test, labels)
    exact_ms = modes["exact"]["ms_per_example"]
    fastest = min((lib["ms_per_example"] for lib in libraries.values()), default=None)
    for scores in modes.values():
        scores["speedup_over_exact"] = exact_ms / scores["ms_per_example"]
        if fastest is not None:
            scores["time_over_fastest_library"] = scores["ms_per_example"] / fastest
    report = {
        "mode": args.mode,
        "machine": _common.machine_info(),
        "data": {
            "shape": cfg["shape"],
            "labels": train.num_labels,
            "features": train.num_features,
            "train": len(train),
            "test_examples": len(test),
        },
        "model": {"epochs": cfg["epochs"], "train_s": train_s, "active": cfg["active"]},
        "head_modes": modes,
        "libraries": libraries,
    }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
