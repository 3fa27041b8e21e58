"""Peak memory of tf-lsh training on the Amazon-670K shape, against the state it must hold.

For each mode (one active set per batch; per-example sets) a fresh subprocess imports
TensorFlow and Keras, records its resident memory (the runtime's baseline), builds the
`examples/extreme_classification.py` model (135,909 sparse features -> 128 -> 670,091 labels,
3,000 active, `SparseAdam`), builds the tables, trains `--steps` steps on random batches of 128
and reads the kernel's high-water mark (`VmHWM`). The state is counted from the variables:
weights, Adam moments, hash tables and the other layer state.

Reported: peak RSS, baseline, state, and `training_over_state` = (peak - baseline) / state,
the memory training takes beyond the TensorFlow runtime, per byte of state (target: 1.3 at
most). Evaluation with exact inference (a `[batch, 670,091]` logits matrix) is not part of it.

Usage: python benchmarks/bench_memory.py [--steps N]; prints one JSON document.
"""

import argparse
import json
import os
import subprocess
import sys

TARGET = 1.3

_CHILD = r"""
import json, os, sys
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

def status(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

import numpy as np, tensorflow as tf, keras
sys.path[:0] = [sys.argv[1], os.path.join(sys.argv[1], "..", "examples")]
import extreme_classification, keras_layers, profile_step
baseline = status("VmRSS")
batch_wide, steps = sys.argv[2] == "batch_wide", int(sys.argv[3])
rng = np.random.default_rng(0)
model = extreme_classification.build_lsh_model(135_909, 670_091, 3000, batch_wide=batch_wide)
model.compile(optimizer=keras_layers.SparseAdam(1e-3))
model.optimizer.build(model.trainable_variables)
step = tf.function(model.train_step)
for _ in range(steps):
    step(profile_step.random_batch(135_909, 670_091, 128, rng))
state = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
            for v in model.weights + model.optimizer.variables)
print(json.dumps({"baseline_bytes": baseline, "peak_bytes": status("VmHWM"),
                  "final_bytes": status("VmRSS"), "state_bytes": state}))
"""


def measure(mode, steps):
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, here, mode, str(steps)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    result = json.loads(out.strip().splitlines()[-1])
    result["training_over_state"] = (result["peak_bytes"] - result["baseline_bytes"]) / result[
        "state_bytes"
    ]
    result["peak_over_state"] = result["peak_bytes"] / result["state_bytes"]
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args(argv)
    results = {mode: measure(mode, args.steps) for mode in ("batch_wide", "per_example")}
    report = {
        "benchmark": "memory",
        "steps": args.steps,
        "results": results,
        "target": {
            "description": f"(peak RSS - runtime baseline) <= {TARGET} x state",
            "met": all(r["training_over_state"] <= TARGET for r in results.values()),
        },
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return report


if __name__ == "__main__":
    main()
