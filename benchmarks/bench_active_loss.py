"""The training loss over an active set, on multi-label data: `LSHClassifier(active_loss=...)`.

Trains the README's extreme-classification model (`examples/extreme_classification.py`
`build_lsh_model`: the normalised body with dropout, an `LSHDense` head with one active set per
batch and its biases at the labels' prior log-odds, `SparseAdam(1e-3)`,
`LSHRebuildCallback(period=50)`) once per loss in `keras_layers.ACTIVE_LOSSES`, on the same
data and the same seed, and records test P@1 and P@5 (exact inference) after every epoch.
Prints JSON.

    python benchmarks/bench_active_loss.py [--quick | --full] [--threads N]

`--full`: the "small" generated shape (20,000 features and labels), 20 epochs, active 1,000.
`--quick`: the "tiny" shape, 3 epochs, active 512.
"""

import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
import _common  # noqa: E402
import extreme_classification as example  # noqa: E402

import keras_layers  # noqa: E402
from keras_layers import datasets  # noqa: E402

log = _common.make_logger("bench_active_loss")

MODES = {
    "quick": {"shape": "tiny", "epochs": 3, "active": 512},
    "full": {"shape": "small", "epochs": 20, "active": 1000},
}


def train(loss, train_data, test_data, cfg):
    model = example.build_lsh_model(
        train_data.num_features,
        train_data.num_labels,
        active=cfg["active"],
        labels_per_example=train_data.labels_per_example,
        batch_wide=True,
    )
    # build_lsh_model makes the README's model; the loss is the one thing changed.
    model = keras_layers.LSHClassifier(model.body, model.head, active_loss=loss)
    model.compile(
        optimizer=keras_layers.SparseAdam(1e-3),
        metrics=[keras_layers.PrecisionAtK(1), keras_layers.PrecisionAtK(5)],
    )
    curve, seconds = [], 0.0
    for epoch in range(cfg["epochs"]):
        start = time.perf_counter()
        model.fit(
            train_data.dataset(128, shuffle=True, seed=epoch),
            verbose=0,
            callbacks=[keras_layers.LSHRebuildCallback(period=50)],
        )
        seconds += time.perf_counter() - start
        scores = model.evaluate(test_data.dataset(256), return_dict=True, verbose=0)
        curve.append({"epoch": epoch + 1, "train_s": seconds, **scores})
        log(f"{loss} epoch {epoch + 1}: P@1 {scores['P@1']:.4f} P@5 {scores['P@5']:.4f}")
    best = max(point["P@1"] for point in curve)
    return {"curve": curve, "final": curve[-1], "best_P@1": best}


def main(argv=None):
    args = _common.mode_parser(__doc__.split("\n")[0]).parse_args(argv)
    _common.configure_threads(args.threads)
    cfg = MODES[args.mode]
    train_data, test_data = datasets.synthetic_extreme_classification(cfg["shape"], seed=0)
    report = {"mode": args.mode, "settings": cfg, "machine": _common.machine_info()}
    report["losses"] = {
        loss: train(loss, train_data, test_data, cfg) for loss in keras_layers.ACTIVE_LOSSES
    }
    finals = {loss: result["final"] for loss, result in report["losses"].items()}
    for loss in ("decoupled_softmax", "binary"):
        report[f"{loss}_minus_softmax"] = {
            metric: finals[loss][metric] - finals["softmax"][metric] for metric in ("P@1", "P@5")
        }
    json.dump(report, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
