"""Clusters of worker processes on 127.0.0.1 for the distributed tests and benchmarks
(tests/test_distributed.py, benchmarks/bench_distributed.py): not part of the package."""

import contextlib
import os
import signal
import socket
import subprocess
import time

import numpy as np
import tensorflow as tf

from keras_layers.distributed import tf_config


def free_ports(count):
    """`count` distinct free TCP ports on 127.0.0.1 (bound, read, released)."""
    sockets, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


class LocalCluster:
    """Worker processes on 127.0.0.1, one `TF_CONFIG` each; all killed on exit.

    >>> with LocalCluster([sys.executable, "job.py"], num_workers=2) as cluster:  # doctest: +SKIP
    ...     outputs = cluster.wait(timeout=60)
    """

    def __init__(self, argv, num_workers=2, env=None, log_dir=None, extra_args=None):
        self.argv = list(argv)
        self.num_workers = num_workers
        self.env = dict(os.environ if env is None else env)
        self.log_dir = log_dir
        self.extra_args = extra_args or (lambda index: [])
        self.processes = []
        self.logs = []

    def start(self):
        hosts = [f"127.0.0.1:{port}" for port in free_ports(self.num_workers)]
        self.hosts = hosts
        for index in range(self.num_workers):
            env = dict(self.env)
            env["TF_CONFIG"] = tf_config(hosts, index)
            if self.log_dir:
                path = os.path.join(self.log_dir, f"worker{index}.log")
                log = open(path, "ab")  # noqa: SIM115 - closed in kill()
            else:
                log = subprocess.DEVNULL
            self.logs.append(log)
            self.processes.append(
                subprocess.Popen(
                    self.argv + self.extra_args(index),
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        return self

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.kill()
            raise

    def __exit__(self, *exc):
        self.kill()

    def wait(self, timeout):
        """Waits for every worker; kills them all and raises if one fails or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            codes = [p.poll() for p in self.processes]
            failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                self.kill()
                raise RuntimeError(
                    f"worker(s) {failed} exited with {[codes[i] for i in failed]}" + self._tail()
                )
            if all(c == 0 for c in codes):
                return codes
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"cluster did not finish in {timeout} s" + self._tail())
            time.sleep(0.1)

    def kill_worker(self, index, sig=signal.SIGKILL):
        """Sends `sig` to worker `index`'s process group and reaps it."""
        process = self.processes[index]
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            process.wait(timeout=30)
        return process.returncode

    def kill(self):
        for index in range(len(self.processes)):
            self.kill_worker(index)
        for log in self.logs:
            if log is not subprocess.DEVNULL:
                log.close()
        self.logs = []

    def _tail(self, lines=30):
        if not self.log_dir:
            return ""
        text = []
        for index in range(self.num_workers):
            path = os.path.join(self.log_dir, f"worker{index}.log")
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    tail = f.read().splitlines()[-lines:]
                text.append(f"\n--- worker {index} ---\n" + "\n".join(tail))
        return "".join(text)


def local_results(value):
    """NumPy value of a (possibly distributed) variable, per local replica."""
    value = getattr(value, "value", value)
    if isinstance(value, tf.distribute.DistributedValues):
        return [np.asarray(v.numpy()) for v in value.values]
    return [np.asarray(value.numpy())]
