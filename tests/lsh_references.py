"""NumPy references of the ops, shared by the test files (listed in every py_test's srcs).

They replicate the ops' documented rules, including their SplitMix64 random streams
(cc/core/random.h) for hash parameters, reservoir sampling and the random fill, so that the
seeded ops can be compared bit for bit.
"""

import math

import numpy as np
import tensorflow as tf

SIMHASH, WTA = ("srp", "sparse_srp"), ("wta", "dwta")
INT32_MAX = 2**31 - 1


def bucket_sets(ids, counts):
    """{(table, bucket): set of stored ids}."""
    capacity = ids.shape[2]
    return {
        (t, b): set(ids[t, b, : min(counts[t, b], capacity)].tolist())
        for t in range(ids.shape[0])
        for b in range(ids.shape[1])
    }


_SECRET = (0xA0761D6478BD642F, 0xE7037ED1A0B428DB, 0x8EBC6AF09C88C6E3, 0x589965CC75374CC3)
_MASK = 2**64 - 1


def _mix(a, b):
    product = a * b
    return (product & _MASK) ^ (product >> 64)


def reference_fingerprint(row):
    """cc/core/row_fingerprints.cc in Python integers: 16-byte words into four lanes."""
    data = np.asarray(row, np.float32).tobytes()
    size = len(data)
    data += bytes(-size % 64)
    lanes = list(_SECRET)
    for block in range(0, len(data), 64):
        for j in range(4):
            a, b = np.frombuffer(data, "<u8", 2, block + 16 * j).tolist()
            lanes[j] = _mix(a ^ lanes[j], b ^ _SECRET[j])
    h = _mix(lanes[0] ^ _SECRET[1], lanes[1] ^ _SECRET[2]) ^ _mix(
        lanes[2] ^ _SECRET[3], lanes[3] ^ _SECRET[0]
    )
    return _mix(h ^ _SECRET[0], size ^ _SECRET[1])


GOLDEN = 0x9E3779B97F4A7C15


def _splitmix_mix(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


class SplitMix:
    """cc/core/random.h: a SplitMix64 stream of (seed, stream)."""

    def __init__(self, seed, stream=0):
        self.state = (
            (seed & _MASK) * GOLDEN + _splitmix_mix((stream + 0x632BE59BD9B4E019) & _MASK)
        ) & _MASK

    def next(self):
        self.state = (self.state + GOLDEN) & _MASK
        return _splitmix_mix(self.state)

    def uniform(self, n):
        return (self.next() * n) >> 64

    def uniform_open(self):
        return ((self.next() >> 11) + 1.0) * 2.0**-53

    def normal(self):
        radius = math.sqrt(-2.0 * math.log(self.uniform_open()))
        return radius * math.cos(6.283185307179586 * self.uniform_open())


def codes_stream(codes):
    """cc/core/lsh_tables.cc's CodesStream: the random-fill stream of an example's codes."""
    stream = 0
    for code in codes:
        stream = SplitMix(stream, int(code) & 0xFFFFFFFF).next()
    return stream


def probe_hash(h, attempt):
    z = (h * GOLDEN + attempt * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 31)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 29)


def reference_gather(x, w, b, idx, g):
    """Forward, grad_inputs and per-row weight / bias gradients, with error scales."""
    x, w, b, g = (np.asarray(a, np.float64) for a in (x, w, b, g))
    mask = idx >= 0
    ids = np.where(mask, idx, 0)
    wk = np.where(mask[..., None], w[ids], 0.0)  # [B, K, D], zero at padding
    gm = np.where(mask, g, 0.0)
    rows = np.unique(idx[mask])
    with np.errstate(all="ignore"):
        out = np.where(mask, (x[:, None, :] * wk).sum(-1) + b[ids], 0.0)
        out_scale = np.where(mask, (np.abs(x[:, None, :] * wk)).sum(-1) + np.abs(b[ids]), 0.0)
        dx = (gm[..., None] * wk).sum(1)
        dx_scale = np.abs(gm[..., None] * wk).sum(1)
        dw = np.zeros((len(rows), x.shape[1]))
        dw_scale, db, db_scale = np.zeros_like(dw), np.zeros(len(rows)), np.zeros(len(rows))
        for r, neuron in enumerate(rows):
            bb, kk = np.nonzero(idx == neuron)
            terms = g[bb, kk, None] * x[bb]
            dw[r], dw_scale[r] = terms.sum(0), np.abs(terms).sum(0)
            db[r], db_scale[r] = g[bb, kk].sum(), np.abs(g[bb, kk]).sum()
    return (out, out_scale), (dx, dx_scale), rows, (dw, dw_scale), (db, db_scale)


def reference_hash_params(family, dim, total, bin_size, density, mips, seed):
    if family in SIMHASH:
        rows = dim + int(mips)
        density = 1.0 if family == "srp" else float(np.float32(density))
        random = SplitMix(seed, 1)
        out = np.empty(rows * total, np.float32)
        for i in range(out.size):
            if density >= 1.0:
                out[i] = random.normal()
            else:
                u = random.uniform_open()
                out[i] = 1.0 if u <= density / 2 else (-1.0 if u <= density else 0.0)
        return out.reshape(rows, total)
    random = SplitMix(seed, 2)
    out, perm, used = [], [], dim
    for _ in range(total * bin_size):
        if used == dim:
            perm = list(range(dim))
            for j in range(dim - 1, 0, -1):
                k = random.uniform(j + 1)
                perm[j], perm[k] = perm[k], perm[j]
            used = 0
        out.append(perm[used])
        used += 1
    return np.array(out, np.int32).reshape(total, bin_size)


def reference_srp(x, p, mips, max_norm, num_tables, num_hashes):
    """Codes, and a mask of the tables whose every bit is certain despite float32 rounding."""
    x, p = np.asarray(x, np.float64), np.asarray(p, np.float64)
    dim = x.shape[1]
    with np.errstate(all="ignore"):
        proj = (x[:, :, None] * p[None, :dim]).sum(1)
        scale = (np.abs(x[:, :, None] * p[None, :dim])).sum(1)
        tol = 1e-4 * scale
        if mips == "data":
            inv = 1.0 / float(np.float32(max_norm))
            rest = 1.0 - (x * x).sum(1, keepdims=True) * inv * inv
            extra = np.sqrt(np.where(rest > 0, rest, 0.0))  # std::max(0.f, NaN) is 0
            proj = proj * inv + extra * p[dim]
            tol = tol * inv + 1e-3 * np.abs(p[dim])  # sqrt amplifies rounding near 0
        certain = ~(np.abs(proj) <= tol + 1e-30)  # NaN bits are 0 either way
    bits = (proj > 0).reshape(-1, num_tables, num_hashes)
    codes = (bits.astype(np.int64) << np.arange(num_hashes)).sum(2)
    return codes, certain.reshape(-1, num_tables, num_hashes).all(2)


def reference_wta(x, bins, num_tables, num_hashes, densified):
    total, bin_size = bins.shape
    bits = int(math.log2(bin_size))
    codes = np.zeros((x.shape[0], num_tables), np.int64)
    for b in range(x.shape[0]):
        winners = []
        for h in range(total):
            best, best_value = -1, np.float32(0)
            for j, f in enumerate(bins[h]):
                v = x[b, f]
                if densified and v == 0:
                    continue
                if best < 0 or v > best_value:
                    best, best_value = j, v
            winners.append(best)

        def winner_of(h, winners=winners):
            if winners[h] >= 0:
                return winners[h]
            for attempt in range(1, 65):
                if winners[probe_hash(h, attempt) % total] >= 0:
                    return winners[probe_hash(h, attempt) % total]
            return 0

        for t in range(num_tables):
            for j in range(num_hashes):
                codes[b, t] |= winner_of(t * num_hashes + j) << (j * bits)
    return codes


def _insert(capacity, overflow, random, neuron, slots, counts, c):
    seen = int(counts[c])
    if seen < capacity:
        slots[c, seen] = neuron
    elif overflow == "fifo":
        slots[c, seen % capacity] = neuron
    else:
        j = random.uniform(seen + 1)
        if j < capacity:
            slots[c, j] = neuron
    counts[c] = min(seen + 1, INT32_MAX)


def reference_build(codes, bits, capacity, overflow="fifo", seed=0):
    """ids [L, 2^bits, capacity] (-1 empty) and counts [L, 2^bits], neurons inserted in order."""
    num_neurons, num_tables = codes.shape
    ids = np.full((num_tables, 2**bits, capacity), -1, np.int32)
    counts = np.zeros((num_tables, 2**bits), np.int32)
    for t in range(num_tables):
        random = SplitMix(seed, t)
        for n in range(num_neurons):
            _insert(capacity, overflow, random, n, ids[t], counts[t], codes[n, t])
    return ids, counts


def reference_update(ids, counts, neurons, old, new, overflow, seed):
    """The tables after moving `neurons` from buckets `old` to `new` ([count, L] codes)."""
    ids, counts = ids.copy(), counts.copy()
    capacity = ids.shape[2]
    for t in range(ids.shape[0]):
        random = SplitMix(seed, t)
        for i, neuron in enumerate(neurons):
            before, after = old[i, t], new[i, t]
            if before == after:
                continue
            stored = min(int(counts[t, before]), capacity)
            slots = ids[t, before]
            for s in range(stored):
                if slots[s] == neuron:
                    slots[s], slots[stored - 1] = slots[stored - 1], -1
                    counts[t, before] = stored - 1
                    break
            _insert(capacity, overflow, random, neuron, ids[t], counts[t], after)
    return ids, counts


def reference_query(
    codes,
    ids,
    counts,
    k,
    rule="frequency",
    min_count=1,
    labels=None,
    batch_wide=False,
    num_neurons=None,
    fill_random=False,
    seed=0,
):
    """Active sets [batch, k] (or [1, k] batch-wide), or None where the op must fail: more than
    k labels, or (given `num_neurons`) a stored id naming no neuron."""
    codes = np.asarray(codes)
    batch, num_tables = codes.shape
    capacity = ids.shape[2]
    groups = [range(batch)] if batch_wide else [[b] for b in range(batch)]
    out = []
    for rows in groups:
        active = []
        for r in rows if labels is not None else ():
            for label in labels[r]:
                if label >= 0 and label not in active:
                    active.append(int(label))
        if len(active) > k:
            return None
        found, hits = [], {}
        for r in rows:
            for t in range(num_tables):
                c = codes[r, t]
                for s in range(min(int(counts[t, c]), capacity)):
                    i = int(ids[t, c, s])
                    if num_neurons is not None and not 0 <= i < num_neurons:
                        return None  # a filled slot naming no neuron of this layer
                    if i not in hits:
                        hits[i] = 0
                        found.append(i)
                    hits[i] += 1
        pool = [i for i in found if i not in active]
        if rule == "threshold":
            pool = [i for i in pool if hits[i] >= min_count]
        if rule != "union":
            pool = sorted(pool, key=lambda i: -hits[i])  # stable: ties in the order found
        active += pool[: k - len(active)]
        # Batch-wide: stream 0; per example: a stream of its codes (CodesStream).
        random = SplitMix(seed, 0 if batch_wide else codes_stream(codes[rows[0]]))
        while fill_random and len(active) < k:
            i = random.uniform(num_neurons)
            if i not in active:
                active.append(i)
        out.append(active + [-1] * (k - len(active)))
    return np.array(out, np.int32).reshape(len(groups), k)


def reference_adam(var, m, v, rows, grad, lr, beta1, beta2, eps, step):
    """Lazy Adam in float32, operation by operation as documented (`sparse_adam_apply`):
    Adam's update suffers cancellation (v + (g^2 - v) * (1 - beta_2) with beta_2 = 0), so a
    float64 reference would not be comparable. Duplicate rows are summed in index order."""
    f = np.float32
    var, m, v = var.copy(), m.copy(), v.copy()
    beta1_power = tf.pow(f(beta1), f(step)).numpy()  # as the wrapper computes them
    beta2_power = tf.pow(f(beta2), f(step)).numpy()
    alpha = f(lr) * np.sqrt(f(1) - beta2_power) / (f(1) - beta1_power)
    with np.errstate(all="ignore"):
        for r in np.unique(rows):
            g = grad[rows == r][0].copy()
            for more in grad[rows == r][1:]:
                g += more
            m[r] += (g - m[r]) * (f(1) - f(beta1))
            v[r] += (g * g - v[r]) * (f(1) - f(beta2))
            var[r] -= alpha * m[r] / (np.sqrt(v[r]) + f(eps))
    return var, m, v


def reference_rowwise_rmsprop(var, v, rows, grad, lr, beta2, eps, step):
    """Lazy rowwise RMSprop in float32 as documented (`sparse_rowwise_rmsprop_apply`): one
    second moment per row, from the mean of the row's squared (summed) gradient."""
    f = np.float32
    var, v = var.copy(), v.copy()
    beta2_power = tf.pow(f(beta2), f(step)).numpy()
    alpha = f(lr) * np.sqrt(f(1) - beta2_power)
    with np.errstate(all="ignore"):
        for r in np.unique(rows):
            g = grad[rows == r][0].copy()
            for more in grad[rows == r][1:]:
                g += more
            mean_square = f(np.mean(g.astype(np.float64) ** 2)) if g.size else f(0)
            v[r] += (mean_square - v[r]) * (f(1) - f(beta2))
            var[r] -= alpha * g / (np.sqrt(v[r]) + f(eps))
    return var, v
