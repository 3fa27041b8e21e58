"""Extreme-classification libraries people use instead of a softmax, as benchmark baselines.

PECOS XR-Linear, Omikuji (Parabel-like partitioned label trees) and napkinXC (probabilistic
label trees), each with its defaults: it trains on a `keras_layers.datasets.MultiLabelData` and
predicts every test example's k best labels. Benchmark-only: the libraries are pinned in
benchmarks/requirements.txt and imported when a method runs; tf-lsh does not need them.
"""

import contextlib
import importlib
import importlib.util
import os
import sys
import tempfile

import numpy as np

from keras_layers import datasets

INSTALL = "pip install --no-deps -r benchmarks/requirements.txt"


def features_csr(data):
    """`data`'s features as a float32 scipy CSR matrix `[examples, num_features]`."""
    from scipy import sparse

    return sparse.csr_matrix(
        (data.feature_values.astype(np.float32), data.feature_ids, data.feature_offsets),
        shape=(len(data), data.num_features),
    )


def labels_csr(data):
    """`data`'s labels as a float32 0/1 scipy CSR matrix `[examples, num_labels]`."""
    from scipy import sparse

    ones = np.ones(data.label_ids.size, np.float32)
    return sparse.csr_matrix(
        (ones, data.label_ids, data.label_offsets), shape=(len(data), data.num_labels)
    )


def top_k_rows(rows, k):
    """int64 `[len(rows), k]` from per-example lists of label ids, best first; -1 pads."""
    top = np.full((len(rows), k), -1, np.int64)
    for i, row in enumerate(rows):
        row = list(row)[:k]
        top[i, : len(row)] = row
    return top


@contextlib.contextmanager
def native_output_captured():
    """Sends what native code writes to stdout or stderr to a file, shown only on an error.

    Omikuji logs to stdout, where the benchmark writes its JSON, and draws progress bars on
    stderr (megabytes of them on the Amazon shape).
    """
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile("w+", errors="replace") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        except BaseException:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 4000))
            tail = log.read()
            raise
        else:
            tail = None
        finally:
            for fd, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)
            if tail:
                print(f"[xmc_libraries] the library's last output:\n{tail}", file=sys.stderr)


class Library:
    """One library's way to train and predict. Subclasses name their pip package and module."""

    name = label = package = module = None

    def load(self):
        """The library's module; a clear error saying how to install it if it is missing."""
        try:
            return importlib.import_module(self.module)
        except ModuleNotFoundError as error:
            raise ModuleNotFoundError(
                f"{self.name}: the {self.package} package is not installed ({error}); "
                f"install the benchmark's libraries with `{INSTALL}`"
            ) from error

    def available(self):
        return importlib.util.find_spec(self.module.split(".")[0]) is not None

    def train(self, data, threads):
        """A model trained on `data` with the library's defaults, on `threads` cores."""
        with native_output_captured():
            return self._train(data, threads)

    def predict_top_k(self, model, data, k, threads):
        """int64 `[len(data), k]`: each example's k best labels, best first; -1 pads."""
        with native_output_captured():
            return self._predict_top_k(model, data, k, threads)

    def _train(self, data, threads):
        raise NotImplementedError

    def _predict_top_k(self, model, data, k, threads):
        raise NotImplementedError


def _adapt_pecos_to_numpy2():
    """libpecos 1.2.8 predates NumPy 2, which TensorFlow needs (it asks for numpy < 2 and
    scipy < 1.14, hence `--no-deps`); two spots of its sparse-matrix helpers need adapting."""
    from pecos.utils import smat_util
    from scipy.sparse import _sputils, sputils

    # SciPy 1.14 emptied the namespace `scipy.sparse.sputils`; the helpers PECOS reads from it
    # moved, unchanged, to `_sputils`.
    for helper in ("get_index_dtype", "upcast"):
        if helper not in vars(sputils):
            setattr(sputils, helper, getattr(_sputils, helper))
    if getattr(smat_util.cs_matrix, "adapted", False):
        return
    cs_matrix = smat_util.cs_matrix

    def adapted(arg1, mat_type, shape=None, dtype=None, copy=False, check_contents=False):
        # PECOS's `np.array(..., copy=False)` means NumPy 1's "copy only if needed", which is
        # NumPy 2's copy=None (its copy=False refuses to copy).
        copy = None if copy is False else copy
        return cs_matrix(arg1, mat_type, shape, dtype, copy, check_contents)

    adapted.adapted = True
    smat_util.cs_matrix = adapted


class PecosXRLinear(Library):
    """PECOS XR-Linear as its README trains it: PIFA label embeddings, hierarchical k-means
    (16 children a node, at most 100 labels a leaf), a linear ranker per tree level; beam 10."""

    name = "pecos_xr_linear"
    label = "PECOS XR-Linear"
    package = "libpecos"
    module = "pecos.xmc.xlinear.model"

    def load(self):
        module = super().load()
        _adapt_pecos_to_numpy2()
        return module

    def _train(self, data, threads):
        model_module = self.load()
        from pecos.xmc import Indexer, LabelEmbeddingFactory

        x, y = features_csr(data), labels_csr(data)
        label_features = LabelEmbeddingFactory.create(y, x, method="pifa", threads=threads)
        clusters = Indexer.gen(label_features, threads=threads)
        return model_module.XLinearModel.train(x, y, C=clusters, threads=threads)

    def _predict_top_k(self, model, data, k, threads):
        scores = model.predict(features_csr(data), only_topk=k, threads=threads).tocsr()
        rows = []
        for i in range(scores.shape[0]):
            lo, hi = scores.indptr[i], scores.indptr[i + 1]
            order = np.argsort(-scores.data[lo:hi], kind="stable")
            rows.append(scores.indices[lo:hi][order])
        return top_k_rows(rows, k)


class Omikuji(Library):
    """Omikuji's default model: Parabel's (3 trees of balanced 2-means, linear classifiers);
    beam 10. It trains from a file in the Extreme Classification Repository format and predicts
    one example a call (its Python API)."""

    name = "omikuji"
    label = "Omikuji (Parabel)"
    package = "omikuji"
    module = "omikuji"

    def _train(self, data, threads):
        omikuji = self.load()
        with tempfile.TemporaryDirectory() as directory:
            path = os.path.join(directory, "train.txt")
            datasets.write_extreme_classification(data, path)
            return omikuji.Model.train_on_data(path, n_threads=threads)

    def _predict_top_k(self, model, data, k, threads):
        model.init_prediction_thread_pool(threads)
        rows = []
        for i in range(len(data)):
            lo, hi = data.feature_offsets[i], data.feature_offsets[i + 1]
            ids, values = data.feature_ids[lo:hi].tolist(), data.feature_values[lo:hi].tolist()
            pairs = list(zip(ids, values, strict=True))
            rows.append([label for label, _ in model.predict(pairs, top_k=k)])
        return top_k_rows(rows, k)


class NapkinXCPLT(Library):
    """napkinXC's probabilistic label tree (`napkinxc.models.PLT`) with its defaults:
    hierarchical 2-means tree, at most 100 labels a leaf, logistic node classifiers; exact
    top-k search."""

    name = "napkinxc_plt"
    label = "napkinXC PLT"
    package = "napkinxc"
    module = "napkinxc.models"

    def _train(self, data, threads):
        models = self.load()
        # napkinXC writes the model to a folder and predicts from there: it lives as the model.
        folder = tempfile.TemporaryDirectory(prefix="napkinxc_")
        model = models.PLT(folder.name, threads=threads)
        model.folder = folder
        labels = [
            data.label_ids[lo:hi].tolist()
            for lo, hi in zip(data.label_offsets[:-1], data.label_offsets[1:], strict=True)
        ]
        model.fit(features_csr(data), labels)
        return model

    def _predict_top_k(self, model, data, k, threads):
        return top_k_rows(model.predict(features_csr(data), top_k=k), k)


LIBRARIES = {library.name: library for library in (PecosXRLinear(), Omikuji(), NapkinXCPLT())}
