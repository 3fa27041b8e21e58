"""Shared machinery of the seeded op fuzz tests (tests/test_fuzz_*.py, one file per op family).

Each call draws one op and random shapes (zero sizes included), values (NaN, +-Inf, -0.0,
ties, duplicates) and, half of the time, one malformed argument: a wrong rank, a mismatched
dimension, an index or code out of range (negative, huge, int32 limits), a size that
overflows int64, a non-scalar seed, a bad attribute or a wrong dtype. Malformed calls must
raise `tf.errors.InvalidArgumentError` or `ValueError` (TensorFlow's own attr type check and the
shape functions raise those too), and must leave variables untouched; valid calls must match
the NumPy references of lsh_references.py, bit for bit where the op is exact. A crash (abort,
segfault) kills pytest, which fails the run. About one call in ten runs inside a `tf.function`
(the shape functions then see static shapes).

Environment:
  TF_LSH_FUZZ_CALLS  number of op calls over all the files (default 1500; the full run uses
                     10000 or more).
  TF_LSH_FUZZ_SEED   seed (default 0).
  TF_LSH_FUZZ_ONLY   comma-separated call numbers to replay (as a failure message names them).

How the calls are split: call i draws its op from numpy's default_rng([seed, i]) with the
weights of `OPS` below, then goes on drawing its inputs from the same generator. Each op's test
(`test_fuzz[<op>]` in the file `OPS` names) runs the calls that drew it, so all the files
together run calls 0 .. TF_LSH_FUZZ_CALLS - 1 once each, whichever of them pytest collects.
"""

import functools
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

try:
    import tf_lsh_ops  # noqa: E402, F401
except ModuleNotFoundError:  # Not installed: use the source tree this file belongs to.
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import tf_lsh_ops  # noqa: E402, F401

CALLS = int(os.environ.get("TF_LSH_FUZZ_CALLS", "1500"))
SEED = int(os.environ.get("TF_LSH_FUZZ_SEED", "0"))
ONLY = [int(i) for i in os.environ.get("TF_LSH_FUZZ_ONLY", "").split(",") if i.strip()]
GRAPH_SHARE = 0.1
REJECTED = (tf.errors.InvalidArgumentError, ValueError)
INT32_MIN = -(2**31)
HUGE = 2**62
SPECIALS = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0], np.float32)

# (op, the file that fuzzes it, its weight in the draw). The order and the weights fix which
# op each call number draws: changing them changes every seed's calls.
OPS = (
    ("sparse_gather_matmul", "test_fuzz_sparse_gather_matmul", 3),
    ("sparse_input_matmul", "test_fuzz_sparse_input", 1),
    ("hash_params", "test_fuzz_lsh_hash", 1),
    ("lsh_hash", "test_fuzz_lsh_hash", 4),
    ("build_tables", "test_fuzz_tables", 1.5),
    ("update_tables", "test_fuzz_tables", 1.5),
    ("query_tables", "test_fuzz_tables", 2.5),
    ("sparse_adam_apply", "test_fuzz_sparse_adam", 1.5),
    ("active_softmax_cross_entropy", "test_fuzz_losses", 1),
    ("sparse_gather_matmul_adam", "test_fuzz_sparse_gather_matmul", 1),
    ("sparse_input_matmul_adam", "test_fuzz_sparse_input", 1),
    ("multi_label_batch", "test_fuzz_sparse_input", 0.5),
    ("row_fingerprints", "test_fuzz_lsh_hash", 0.5),
    ("sparse_input_gather_matmul_lazy_adam", "test_fuzz_sparse_input", 1),
    ("sparse_input_gather_matmul_lazy_sgd", "test_fuzz_sparse_input", 0.5),
    ("matmul_top_k", "test_fuzz_sparse_gather_matmul", 1),
    ("sparse_input_products", "test_fuzz_sparse_input", 0.5),
    ("assign_rows", "test_fuzz_sparse_adam", 0.5),
    ("active_binary_cross_entropy", "test_fuzz_losses", 0.5),
    ("sparse_rowwise_rmsprop_apply", "test_fuzz_sparse_adam", 0.5),
)
_WEIGHTS = np.array([weight for _, _, weight in OPS])


# ---------------------------------------------------------------------------------------------
# Which calls each op gets
# ---------------------------------------------------------------------------------------------


def fuzz_test(test_file, fuzzers):
    """The test of a fuzz file: `test_fuzz[<op>]` for each op of `fuzzers` ({op: fuzzer}), which
    must be exactly the ops OPS gives `test_file`."""
    module = os.path.splitext(os.path.basename(test_file))[0]
    listed = sorted(name for name, owner, _ in OPS if owner == module)
    assert listed == sorted(fuzzers), f"OPS gives {module} {listed}, it defines {sorted(fuzzers)}"

    @pytest.mark.parametrize("op", listed)
    def test_fuzz(op, capsys):
        fuzz_op(op, fuzzers[op], test_file, capsys)

    return test_fuzz


def _draw(i):
    """Call `i`'s generator, and the op it drew (the generator goes on with that op's inputs)."""
    rng = np.random.default_rng([SEED, i])
    return rng, OPS[rng.choice(len(OPS), p=_WEIGHTS / _WEIGHTS.sum())][0]


@functools.cache
def _calls_by_op():
    calls = {name: [] for name, _, _ in OPS}
    for i in ONLY or range(CALLS):
        calls[_draw(i)[1]].append(i)
    return calls


def fuzz_op(name, fuzzer, test_file, capsys):
    """Runs the calls that drew `name` through `fuzzer(rng)`, which returns the name of the
    malformed argument it tried (None for a valid call); prints the figures; checks that a
    default-sized run fuzzed the op both ways."""
    here = os.path.dirname(os.path.abspath(__file__))
    missing = {owner for _, owner, _ in OPS if not os.path.exists(f"{here}/{owner}.py")}
    assert not missing, f"OPS names test files that do not exist: {sorted(missing)}"
    start = time.perf_counter()
    valid, invalid, mutations = 0, 0, set()
    for i in _calls_by_op()[name]:
        rng, _ = _draw(i)
        try:
            mutation = fuzzer(rng)
        except Exception as e:  # noqa: BLE001 -- re-raised with how to replay the call
            raise AssertionError(
                f"fuzz call {i} ({name}) failed: {type(e).__name__}: {e}\n"
                f"replay: TF_LSH_FUZZ_SEED={SEED} TF_LSH_FUZZ_ONLY={i} "
                f"pytest '{test_file}::test_fuzz[{name}]'"
            ) from e
        if mutation is None:
            valid += 1
        else:
            invalid += 1
            mutations.add(mutation)
    seconds = time.perf_counter() - start
    with capsys.disabled():
        print(
            f"\nfuzz {name}: {valid} valid + {invalid} invalid of {len(ONLY) or CALLS} calls "
            f"(seed {SEED}) in {seconds:.1f} s, {len(mutations)} kinds of malformed input"
        )
    if not ONLY and CALLS >= 1000:  # the op was fuzzed both ways
        assert valid and invalid, (valid, invalid)


# ---------------------------------------------------------------------------------------------
# Random inputs, malformed calls and comparisons
# ---------------------------------------------------------------------------------------------


def floats(rng, shape, special=0.0, zeros=0.0):
    """float32 normals of a random scale, some zeros and some NaN / +-Inf / -0.0."""
    x = rng.standard_normal(shape).astype(np.float32) * np.float32(rng.choice([0.1, 1, 100]))
    x[rng.random(shape) < zeros] = 0.0
    mask = rng.random(shape) < special
    x[mask] = rng.choice(SPECIALS, int(mask.sum()))
    return x


def special_rate(rng):
    return float(rng.choice([0.0, 0.0, 0.0, 0.05, 0.3]))


def wrong_rank(rng, a):
    """An array like `a` of another rank in 0..3 (its values repeated)."""
    rank = int(rng.choice([r for r in range(4) if r != np.ndim(a)]))
    out = np.zeros(tuple(rng.integers(1, 4, rank)), np.asarray(a).dtype)
    flat = np.asarray(a).reshape(-1)
    if flat.size:
        out.reshape(-1)[:] = np.resize(flat, out.size)
    return out


def any_seed(rng):
    return int(rng.choice([0, -1, 2**63 - 1, -(2**63), int(rng.integers(-(2**63), 2**63))]))


def bad_seed(rng):
    return [[1, 2], [3]][int(rng.integers(2))] if rng.random() < 0.8 else 2**64


def maybe_graph(rng, fn):
    """Runs `fn` eagerly, or (sometimes) traced and run as a tf.function."""
    if rng.random() >= GRAPH_SHARE:
        return fn()

    def graph_fn():
        out = fn()
        return None if isinstance(out, tf.Operation) else out  # sparse_adam_apply's op

    return tf.function(graph_fn, autograph=False)()


def rejects(fn, *variables, also=()):
    """`fn()` must raise InvalidArgumentError or ValueError (or `also`) and leave `variables`
    as they were."""
    before = [v.numpy().copy() for v in variables]
    try:
        fn()
    except REJECTED + also:
        pass
    else:
        raise AssertionError("a malformed input was accepted")
    for v, old in zip(variables, before, strict=True):
        assert np.array_equal(v.numpy(), old, equal_nan=True), "a rejected call changed a variable"


def pick(rng, mutations):
    """None (a valid call) half of the time, else the name of a mutation to apply."""
    return None if rng.random() < 0.5 else str(rng.choice(sorted(mutations)))


def assert_close(got, want, scale, what, rtol=1e-5):
    """float64 `want` with NaN / Inf exactly where `got` has them; else within rtol * scale."""
    got = np.asarray(got, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, want {want.shape}"
    with np.errstate(invalid="ignore"):
        tol = rtol * np.where(np.isfinite(scale), scale, 0.0) + 1e-6
        ok = np.where(
            np.isnan(want),
            np.isnan(got),
            np.where(np.isinf(want), got == want, np.abs(got - want) <= tol),
        )
    assert ok.all(), f"{what}: got {got[~ok][:4]}, want {want[~ok][:4]}"
