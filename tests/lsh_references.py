"""References shared by several test files (listed in every py_test's srcs)."""

import numpy as np


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
