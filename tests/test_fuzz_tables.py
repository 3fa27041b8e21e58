"""Fuzz of the hash tables: build_tables, update_tables and query_tables (every overflow policy
and query rule, labels, batch-wide sets, the random fill). fuzz_common.py describes the calls and
the TF_LSH_FUZZ_* variables."""

import sys

import numpy as np
import pytest
from fuzz_common import (
    HUGE,
    INT32_MIN,
    any_seed,
    bad_seed,
    fuzz_test,
    maybe_graph,
    pick,
    rejects,
    wrong_rank,
)
from lsh_references import INT32_MAX, reference_build, reference_query, reference_update

import tf_lsh_ops

BUILD_MUTATIONS = ("rank", "no-tables", "code", "bits", "capacity", "overflow", "seed", "dtype")


def fuzz_build_tables(rng):
    mutation = pick(rng, BUILD_MUTATIONS)
    num_neurons = int(rng.integers(1 if mutation == "code" else 0, 40))
    num_tables, bits = int(rng.integers(1, 5)), int(rng.integers(1, 6))
    spread = int(rng.choice([2, 2**bits]))  # few buckets: they overflow
    codes = rng.integers(0, min(spread, 2**bits), (num_neurons, num_tables)).astype(np.int32)
    kw = dict(
        bucket_bits=bits,
        capacity=int(rng.integers(1, 7)),
        overflow=str(rng.choice(tf_lsh_ops.OVERFLOW_POLICIES)),
        seed=any_seed(rng),
    )
    if mutation is not None:
        if mutation == "rank":
            codes = wrong_rank(rng, codes)
        elif mutation == "no-tables":
            codes = codes[:, :0]
        elif mutation == "code":
            bad = [-1, 2**bits, INT32_MAX, INT32_MIN]
            codes[rng.integers(num_neurons), rng.integers(num_tables)] = rng.choice(bad)
        elif mutation == "bits":
            kw["bucket_bits"] = int(rng.choice([0, -1, 31, HUGE]))
        elif mutation == "capacity":
            kw["capacity"] = int(rng.choice([0, -2, 2**31, HUGE, 2**70]))
        elif mutation == "overflow":
            kw["overflow"] = "lifo"
        elif mutation == "seed":
            kw["seed"] = bad_seed(rng)
        elif mutation == "dtype":
            codes = codes.astype(rng.choice([np.int64, np.float32]))
        rejects(lambda: maybe_graph(rng, lambda: tf_lsh_ops.build_tables(codes, **kw)))
        return mutation
    ids, counts = maybe_graph(rng, lambda: tf_lsh_ops.build_tables(codes, **kw))
    want_ids, want_counts = reference_build(codes, bits, kw["capacity"], kw["overflow"], kw["seed"])
    assert np.array_equal(ids.numpy(), want_ids) and np.array_equal(counts.numpy(), want_counts)
    return None


def random_tables(rng, num_neurons, num_tables, bits, capacity):
    """Tables of `num_neurons` random codes, (often) with overflowing buckets."""
    spread = min(int(rng.choice([2, 2**bits])), 2**bits)
    codes = rng.integers(0, spread, (num_neurons, num_tables)).astype(np.int32)
    overflow = str(rng.choice(tf_lsh_ops.OVERFLOW_POLICIES))
    return codes, *reference_build(codes, bits, capacity, overflow, any_seed(rng))


UPDATE_MUTATIONS = (
    "rank",
    "tables-mismatch",
    "capacity",
    "codes-width",
    "codes-rows",
    "neuron",
    "duplicate",
    "code",
    "negative-count",
    "seed",
    "overflow",
    "dtype",
)


def fuzz_update_tables(rng):
    mutation = pick(rng, UPDATE_MUTATIONS)
    num_neurons, num_tables = int(rng.integers(1, 30)), int(rng.integers(1, 4))
    bits, capacity = int(rng.integers(1, 4)), int(rng.integers(1, 6))
    codes, ids, counts = random_tables(rng, num_neurons, num_tables, bits, capacity)
    low = 1 if mutation in ("neuron", "duplicate", "code") else 0
    count = int(rng.integers(low, num_neurons + 1))
    neurons = rng.choice(num_neurons + 5, count, replace=False).astype(np.int32)
    if count and rng.random() < 0.2:
        neurons[0] = INT32_MAX  # any non-negative id is a neuron
    old = np.where(
        (neurons < num_neurons)[:, None],
        codes[np.minimum(neurons, num_neurons - 1)],
        rng.integers(0, 2**bits, (count, num_tables)),
    ).astype(np.int32)
    new = rng.integers(0, 2**bits, (count, num_tables)).astype(np.int32)
    args = [ids, counts, neurons, old, new]
    kw = dict(overflow=str(rng.choice(tf_lsh_ops.OVERFLOW_POLICIES)), seed=any_seed(rng))
    if mutation is not None:
        if mutation == "rank":
            i = int(rng.integers(5))
            args[i] = wrong_rank(rng, args[i])
        elif mutation == "tables-mismatch":
            args[1] = np.zeros((num_tables + int(rng.integers(2)), 2**bits + 1), np.int32)
        elif mutation == "capacity":
            args[0] = ids[:, :, :0]
        elif mutation == "codes-width":
            i = int(rng.choice([3, 4]))
            args[i] = np.zeros((count, num_tables + 1), np.int32)
        elif mutation == "codes-rows":
            i = int(rng.choice([3, 4]))
            args[i] = np.zeros((count + 1, num_tables), np.int32)
        elif mutation == "neuron":
            neurons[rng.integers(count)] = rng.choice([-1, INT32_MIN])
        elif mutation == "duplicate":
            args[2] = np.append(neurons, neurons[rng.integers(count)])
            args[3], args[4] = np.concatenate([old, old[:1]]), np.concatenate([new, new[:1]])
        elif mutation == "code":
            target = old if rng.random() < 0.5 else new
            target[rng.integers(count), rng.integers(num_tables)] = rng.choice(
                [-1, 2**bits, INT32_MAX]
            )
        elif mutation == "negative-count":
            counts[rng.integers(num_tables), rng.integers(2**bits)] = rng.choice([-1, INT32_MIN])
        elif mutation == "seed":
            kw["seed"] = bad_seed(rng)
        elif mutation == "overflow":
            kw["overflow"] = "lifo"
        elif mutation == "dtype":
            i = int(rng.integers(5))
            args[i] = np.asarray(args[i]).astype(np.int64)
        rejects(lambda: maybe_graph(rng, lambda: tf_lsh_ops.update_tables(*args, **kw)))
        return mutation
    got_ids, got_counts = maybe_graph(rng, lambda: tf_lsh_ops.update_tables(*args, **kw))
    want_ids, want_counts = reference_update(
        ids, counts, neurons, old, new, kw["overflow"], kw["seed"]
    )
    assert np.array_equal(got_ids.numpy(), want_ids), (got_ids, want_ids)
    assert np.array_equal(got_counts.numpy(), want_counts)
    return None


QUERY_MUTATIONS = (
    "k",
    "num_neurons",
    "min_count",
    "rule",
    "rank",
    "codes-width",
    "code",
    "capacity",
    "tables-mismatch",
    "label",
    "too-many-labels",
    "labels-batch",
    "bad-table-id",
    "seed",
    "dtype",
)


def fuzz_query_tables(rng):
    mutation = pick(rng, QUERY_MUTATIONS)
    num_neurons, num_tables = int(rng.integers(1, 40)), int(rng.integers(1, 4))
    if mutation == "too-many-labels":
        num_neurons = max(num_neurons, 2)
    bits, capacity = int(rng.integers(1, 5)), int(rng.integers(1, 6))
    _, ids, counts = random_tables(rng, num_neurons, num_tables, bits, capacity)
    if rng.random() < 0.2:  # counts a layer never writes are read as "nothing stored"
        counts[rng.integers(num_tables), rng.integers(2**bits)] = rng.choice([-3, 1000])
    low = 1 if mutation in ("code", "label", "labels-batch", "bad-table-id") else 0
    batch = int(rng.integers(low, 6))
    codes = rng.integers(0, 2**bits, (batch, num_tables)).astype(np.int32)
    batch_wide = bool(rng.random() < 0.3)
    k = int(rng.integers(1, num_neurons + 1))
    labels = None
    if rng.random() < 0.5 or mutation in ("label", "too-many-labels", "labels-batch"):
        width = int(rng.integers(1 if mutation else 0, 4))
        labels = rng.integers(-1, num_neurons, (batch, width)).astype(np.int32)
        for rows in [range(batch)] if batch_wide else [[b] for b in range(batch)]:
            seen = set()
            for r in rows:  # at most k distinct labels per active set
                for j in range(width):
                    label = int(labels[r, j])
                    if label >= 0 and label not in seen and len(seen) == k:
                        labels[r, j] = -1
                    elif label >= 0:
                        seen.add(label)
    kw = dict(
        k=k,
        num_neurons=num_neurons,
        rule=str(rng.choice(tf_lsh_ops.QUERY_RULES)),
        min_count=int(rng.integers(1, num_tables + 2)),
        fill_random=bool(rng.random() < 0.5),
        labels=labels,
        batch_wide=batch_wide,
        seed=any_seed(rng),
    )
    if rng.random() < 0.2:  # bad ids where no query reads them are fine
        if not (codes[:, 0] == 0).any():
            ids[0, 0, rng.integers(capacity)] = num_neurons + 3
        elif counts[0, 0] < capacity:
            ids[0, 0, rng.integers(max(counts[0, 0], 0), capacity)] = num_neurons + 3
    args = [codes, ids, counts]
    if mutation is not None:
        if mutation == "k":
            kw["k"] = int(rng.choice([0, -1, num_neurons + 1]))
        elif mutation == "num_neurons":
            kw["num_neurons"] = int(rng.choice([2**31, HUGE, 2**70]))
        elif mutation == "min_count":
            kw["min_count"] = int(rng.choice([0, -1]))
        elif mutation == "rule":
            kw["rule"] = "best"
        elif mutation == "rank":
            i = int(rng.integers(3))
            args[i] = wrong_rank(rng, args[i])
        elif mutation == "codes-width":
            args[0] = np.zeros((batch, num_tables + int(rng.choice([-1, 1]))), np.int32)
        elif mutation == "code":
            codes[rng.integers(batch), rng.integers(num_tables)] = rng.choice(
                [-1, 2**bits, INT32_MAX, INT32_MIN]
            )
        elif mutation == "capacity":
            args[1] = ids[:, :, :0]
        elif mutation == "tables-mismatch":
            args[2] = np.zeros((num_tables, 2**bits + 1), np.int32)
        elif mutation == "label":
            labels[rng.integers(batch), rng.integers(labels.shape[1])] = rng.choice(
                [num_neurons, -2, INT32_MAX, INT32_MIN]
            )
        elif mutation == "too-many-labels":
            kw["k"] = 1
            kw["labels"] = np.tile(np.int32([[0, 1]]), (max(batch, 1), 1))
            args[0] = rng.integers(0, 2**bits, (max(batch, 1), num_tables)).astype(np.int32)
        elif mutation == "labels-batch":
            kw["labels"] = np.zeros((batch + 1, labels.shape[1]), np.int32)
        elif mutation == "bad-table-id":
            b, t = rng.integers(batch), rng.integers(num_tables)
            bucket = codes[b, t]
            counts[t, bucket] = max(counts[t, bucket], 1)
            slot = rng.integers(min(counts[t, bucket], capacity))
            ids[t, bucket, slot] = rng.choice([num_neurons, -1, -7, INT32_MAX])
        elif mutation == "seed":
            kw["seed"] = bad_seed(rng)
        elif mutation == "dtype":
            i = int(rng.integers(3))
            args[i] = np.asarray(args[i]).astype(np.float32)
        rejects(lambda: maybe_graph(rng, lambda: tf_lsh_ops.query_tables(*args, **kw)))
        return mutation
    want = reference_query(
        codes,
        ids,
        counts,
        k,
        kw["rule"],
        kw["min_count"],
        labels,
        batch_wide,
        num_neurons=num_neurons,
        fill_random=kw["fill_random"],
        seed=kw["seed"],
    )
    if want is None:  # a count set past what a bucket stores made a query read an empty slot
        rejects(lambda: tf_lsh_ops.query_tables(*args, **kw))
        return "count-past-stored"
    got = maybe_graph(rng, lambda: tf_lsh_ops.query_tables(*args, **kw)).numpy()
    assert np.array_equal(got, want), (kw, got, want)
    return None


test_fuzz = fuzz_test(
    __file__,
    {
        "build_tables": fuzz_build_tables,
        "update_tables": fuzz_update_tables,
        "query_tables": fuzz_query_tables,
    },
)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
