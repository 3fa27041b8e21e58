"""Fuzz of the losses over active sets. fuzz_common.py describes the calls and the
TF_LSH_FUZZ_* variables."""

import functools
import sys

import numpy as np
import pytest
import tensorflow as tf
from fuzz_common import (
    floats,
    fuzz_test,
    maybe_graph,
    pick,
    rejects,
    special_rate,
    wrong_rank,
)

import tf_lsh_ops

LOSS_MUTATIONS = ("ids-rank", "logits-shape", "labels-batch", "dtype")


def fuzz_active_loss(loss_op, rng):
    mutation = pick(rng, LOSS_MUTATIONS)
    batch, active = int(rng.integers(0, 6)), int(rng.integers(0, 8))
    num_labels = int(rng.integers(0, 4))
    ids = rng.integers(-1, 30, (batch, active)).astype(np.int32)
    labels = rng.integers(-1, 30, (batch, num_labels)).astype(np.int32)
    logits = floats(rng, (batch, active), special_rate(rng) / 4)
    if mutation == "ids-rank":
        ids = wrong_rank(rng, ids)
    elif mutation == "logits-shape":
        logits = floats(rng, (batch + int(rng.integers(0, 2)), active + 1))
    elif mutation == "labels-batch":
        labels = rng.integers(-1, 30, (batch + 1, num_labels)).astype(np.int32)
    elif mutation == "dtype":
        logits = logits.astype(np.float64)
    call = lambda: loss_op(ids, logits, labels)  # noqa: E731
    if mutation is not None:
        rejects(lambda: maybe_graph(rng, call))
        return mutation
    logits_t = tf.constant(logits)
    with tf.GradientTape() as tape:
        tape.watch(logits_t)
        loss = loss_op(ids, logits_t, labels)
    grad = tape.gradient(loss, logits_t).numpy()
    assert loss.shape == () and grad.shape == logits.shape
    if np.all(np.isfinite(logits)):
        assert np.isfinite(float(loss)) and np.all(np.isfinite(grad))
        assert np.all(grad[ids < 0] == 0)
        if batch > 0 and rng.random() < 0.5:  # one active set for the batch: [1, K] ids
            shared = loss_op(ids[:1], logits, labels)
            tiled = loss_op(np.repeat(ids[:1], batch, axis=0), logits, labels)
            assert float(shared) == float(tiled)
    return None


test_fuzz = fuzz_test(
    __file__,
    {
        name: functools.partial(fuzz_active_loss, getattr(tf_lsh_ops, name))
        for name in ("active_softmax_cross_entropy", "active_binary_cross_entropy")
    },
)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
