"""The worker processes of nn/parallel.py, and the channel to each: small pickles through a
socket, their arrays (but the smallest) through shared memory.

A worker is a fresh interpreter (a fork would inherit OpenBLAS's threads in whatever state they
were) that runs `serve`: it holds a replica of each model it was sent, runs forward and backward
passes on its slices when told, and at each BatchNorm layer sends its slice's parts and waits
for the table of every slice's parts.
"""
import io
import mmap
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from multiprocessing.connection import Connection

import numpy as np

from .backend import reuse_host_memory
from .layers import _BatchNorm, no_grad

SPIN = 0.005  # seconds a waiting process polls before it sleeps
INBAND_BYTES = 2**14  # smaller arrays go through the socket, larger through shared memory

_workers = []  # started at the first split, kept idle until the process exits


class Channel:
    """Messages between this process and a worker: small pickles through a socket, their arrays
    of INBAND_BYTES or more through shared memory (pickle protocol 5's out-of-band buffers), one
    file each way. A BatchNorm exchange of both messages, in one process: 232 -> 109 us.
    The socket carried 400 kB in 1.5 ms on the benchmark machine, a memory copy takes 0.05.
    A message's arrays stay in the file only until its reply: recv copies them out."""

    def __init__(self, sock, out_fd, in_fd):
        self.conn = Connection(sock)
        self.out, self.into = _Box(out_fd), _Box(in_fd)
        self.ready = select.poll()  # one poll(2) a check: Connection.poll builds a selector
        self.ready.register(self.conn.fileno(), select.POLLIN)

    def send(self, *message):
        buffers, data = [], io.BytesIO()
        # a small array (BatchNorm's parts) rides in the pickle: no copy to the file and back
        _Pickler(data, protocol=5, buffer_callback=lambda b: b.raw().nbytes < INBAND_BYTES
                 or buffers.append(b)).dump(message)
        views = [b.raw() for b in buffers]
        self.out.grow(sum(v.nbytes for v in views))
        spans, at = [], 0
        for v in views:
            self.out.map[at:at + v.nbytes] = v
            spans.append((at, v.nbytes))
            at += v.nbytes
        self.conn.send_bytes(pickle.dumps((data.getvalue(), spans), protocol=5))

    def recv(self, spin=SPIN):
        """The next message; the first `spin` seconds waiting without sleeping, for a sleeping
        core takes ~0.25 ms to wake on a virtual machine, several times per pass."""
        end = time.perf_counter() + spin
        while not self.ready.poll(0) and time.perf_counter() < end:
            pass
        data, spans = pickle.loads(self.conn.recv_bytes())
        if not spans:
            return pickle.loads(data)
        self.into.follow()
        with memoryview(self.into.map) as view:  # copied out in one go, as bytearrays
            buffers = [bytearray(view[a:a + n]) for a, n in spans]
        return pickle.loads(data, buffers=buffers)

    def close(self):
        self.conn.close()
        for box in (self.out, self.into):
            os.close(box.fd)


class _Pickler(pickle.Pickler):
    """Sends strided arrays (a view's slice, a batch-innermost gradient) as contiguous copies,
    so that they too go through the shared file rather than the socket."""

    def reducer_override(self, obj):
        if type(obj) is np.ndarray and not (obj.flags.c_contiguous or obj.flags.f_contiguous):
            return np.asarray, (np.ascontiguousarray(obj),)
        return NotImplemented


class _Box:
    """A file in memory (memfd) that both processes map; the sender grows it."""

    def __init__(self, fd):
        self.fd, self.map, self.size = fd, None, 0

    def grow(self, need):
        if need > self.size:
            self.size = max(need, 2 * self.size, 2**20)
            os.ftruncate(self.fd, self.size)
            self.map = mmap.mmap(self.fd, self.size)

    def follow(self):
        size = os.fstat(self.fd).st_size
        if size != self.size:
            self.size, self.map = size, mmap.mmap(self.fd, size)


class Abort(Exception):
    """The main process gave up this pass while a worker waited for BatchNorm's table."""


def serve(sock, out_fd, in_fd):
    """A worker's loop: a command from its channel, a reply, until the main process closes it
    or ends (the worker then ends too)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    reuse_host_memory()
    conn = Channel(sock, out_fd, in_fd)
    models = {}

    def exchange(*parts):
        conn.send("parts", parts)
        kind, table = conn.recv()
        if kind != "table":
            raise Abort
        return table

    try:
        while True:
            _obey(conn, models, exchange, *conn.recv())
    except (EOFError, OSError):  # the main process closed the channel or ended
        return


def _obey(conn, models, exchange, op, key, args):
    """Run one command and send its reply (none to "forget"). A failure is sent back, as the
    reply, for the main process to raise; the channel's own errors end the worker."""
    if op == "forget":
        models.pop(key, None)
        return
    try:
        if op == "model":
            models[key] = pickle.loads(args)
            for layer in models[key].layers:
                if isinstance(layer, _BatchNorm):
                    layer.exchange = exchange
            result = None
        elif key not in models:
            raise LookupError(f"this worker holds no model {key}: it was restarted between a "
                              "split forward and its backward")
        elif op == "forward":
            state, errors, keep, x = args
            for layer, (training, params, buffers) in zip(models[key].layers, state):
                layer.training = training
                layer.params.update(params)
                layer.buffers.update(buffers)
            with np.errstate(**errors), nullcontext() if keep else no_grad():
                result = models[key].forward(x)
        else:
            errors, dout, input_grad, param_grads = args
            with np.errstate(**errors):
                result = models[key].backward(dout, input_grad, param_grads)
    except Abort:
        conn.send("aborted", None)
    except (EOFError, OSError):
        raise
    except Exception as exc:
        try:
            conn.send("failed", exc)  # pickled whole before a byte is sent
        except OSError:
            raise
        except Exception:  # an exception that does not pickle
            conn.send("failed", RuntimeError(f"in a worker process: {exc!r}"))
    else:
        conn.send("done", result)


# --- the main process's side ----------------------------------------------------------------

class Worker:
    """A worker process with a channel to it. Its environment gives it one BLAS thread and
    this process's import path, so that it imports every layer class this process can."""

    def __init__(self):
        ours, theirs = socket.socketpair()
        to_it, from_it = memory_file(), memory_file()
        fds = [theirs.fileno(), from_it, to_it]  # its socket, its outgoing file, its incoming
        path = os.pathsep.join(p or os.getcwd() for p in sys.path)
        env = {**os.environ, "PYTHONPATH": path, "OPENBLAS_NUM_THREADS": "1",
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        code = "import sys; from nn.workers import serve; serve(*map(int, sys.argv[1:]))"
        self.process = subprocess.Popen([sys.executable, "-c", code, *map(str, fds)],
                                        pass_fds=fds, env=env, stdin=subprocess.DEVNULL)
        theirs.close()
        self.channel = Channel(ours.detach(), to_it, from_it)
        self.known = set()  # keys of the models it holds

    def send(self, *message):
        try:
            self.channel.send(*message)
        except OSError:
            self._lost()

    def recv(self):
        try:
            return self.channel.recv()
        except (EOFError, OSError):
            self._lost()

    def _lost(self):
        code = self.process.poll()
        stop_all()
        raise RuntimeError(f"a worker process of nn.parallel ended (exit code {code}) in the "
                           "middle of a pass; the next pass starts a new one") from None

    def stop(self):
        self.channel.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def memory_file():
    """A file descriptor for a file in memory (Linux's memfd; elsewhere an unlinked file)."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create("nn-parallel")
    return os.dup(tempfile.TemporaryFile().fileno())


def stop_all():
    global _workers
    for worker in _workers:
        worker.stop()
    _workers = []


def pool(n, forgotten):
    """The first n - 1 workers, started when missing; each first drops the models whose keys
    are in `forgotten` (which this empties)."""
    while len(_workers) < n - 1:
        _workers.append(Worker())
    for worker in _workers:
        for key in forgotten:
            if key in worker.known:
                worker.known.discard(key)
                worker.send("forget", key, None)
    forgotten.clear()
    return _workers[:n - 1]
