"""The op at the heart of tf-lsh next to what a TensorFlow user writes today.

Each of 128 examples multiplies its 128-wide input by its own 3,000 rows of a 670k-row weight
matrix (the Amazon-670K output layer with about 0.5% active). Prints whether the op and
`tf.gather` + `tf.einsum` agree, their times for forward + backward, and the ratio.
"""

import time

import numpy as np
import tensorflow as tf

import tf_lsh_ops

BATCH, DIM, NEURONS, ACTIVE = 128, 128, 670_091, 3_000


def gather_einsum(inputs, weights, biases, indices):
    return tf.einsum("bd,bkd->bk", inputs, tf.gather(weights, indices)) + tf.gather(biases, indices)


def forward_backward(matmul, inputs, weights, biases, indices):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(matmul(inputs, weights, biases, indices)))
    return loss, tape.gradient(loss, [inputs, weights, biases])


def median_seconds(step, repeats=5):
    step()  # trace and warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        loss, _ = step()
        loss.numpy()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    rng = np.random.default_rng(0)
    inputs = tf.Variable(rng.standard_normal((BATCH, DIM), dtype=np.float32))
    weights = tf.Variable(rng.standard_normal((NEURONS, DIM), dtype=np.float32) * 0.01)
    biases = tf.Variable(np.zeros(NEURONS, np.float32))
    indices = tf.constant(rng.integers(0, NEURONS, (BATCH, ACTIVE), dtype=np.int32))

    results = {}
    for name, matmul in [
        ("tf_lsh_ops.sparse_gather_matmul", tf_lsh_ops.sparse_gather_matmul),
        ("tf.gather + tf.einsum", gather_einsum),
    ]:
        step = tf.function(lambda m=matmul: forward_backward(m, inputs, weights, biases, indices))
        results[name] = (step()[0].numpy(), median_seconds(step))

    print(f"{BATCH} examples x {ACTIVE} active of {NEURONS:,} neurons, {DIM} wide:")
    for name, (loss, seconds) in results.items():
        print(f"  {name:34s} loss {loss:.6g}  forward+backward {seconds * 1e3:8.1f} ms")
    (ours_loss, ours), (ref_loss, ref) = results.values()
    print(
        f"  same loss: {np.isclose(ours_loss, ref_loss, rtol=1e-4)};  speed-up: {ref / ours:.1f}x"
    )


if __name__ == "__main__":
    main()
