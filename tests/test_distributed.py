"""Data parallelism over MPI ranks on the CPU (docs/distributed.md): 2 ranks started by
mpirun train a tiny model; their weights are bitwise identical after every step; the
averaged gradient equals one process's on the concatenated batch with bn_batch = the
per-rank batch; a 2-rank run follows the 1-rank run's loss trajectory; a rank that dies or
hangs makes the run fail with a clear error within a timeout. Plus the launch detection,
the NCCL id hand-out and the sharded loader, which need no MPI."""
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import build_dist
import glae
from glae import _C
from glae import distributed as dist

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "dist_worker.py")
sys.path.insert(0, HERE)
import dist_worker  # noqa: E402


def mpirun():
    cand = os.path.join(os.path.dirname(sys.executable), "mpirun")
    return cand if os.path.exists(cand) else shutil.which("mpirun")


needs_mpi = pytest.mark.skipif(not (_C.dist_built()["mpi"] and mpirun()),
                               reason="glae built without MPI or no mpirun (pip install mpich)")


def run_ranks(mode, out, n=2, timeout=240, env=None):
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.dirname(HERE))
    e.update(env or {})
    t0 = time.monotonic()
    p = subprocess.run([mpirun(), "-n", str(n), sys.executable, WORKER, mode, str(out)],
                       capture_output=True, text=True, timeout=timeout, env=e)
    return p, time.monotonic() - t0


def test_built_with_mpi_where_the_build_finds_it():
    cfg, why = build_dist.detect_mpi()
    if cfg is None:
        pytest.skip(why)
    assert _C.dist_built()["mpi"], (f"build_dist finds MPI ({why}) but glae._C has none: "
                                    f"rebuild ({_C.BUILD_INFO.get('mpi_reason')})")


@needs_mpi
def test_two_ranks_identical_weights_and_the_concatenated_batch_gradient(tmp_path):
    p, _ = run_ranks("steps", tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    steps = np.load(tmp_path / "steps.npz")
    assert int(steps["world"]) == 2
    assert steps["identical"].all() and len(steps["identical"]) == 4
    assert np.all(np.isfinite(steps["losses"]))
    # the same steps in one process with bn_batch = the per-rank batch: the same losses up
    # to float32 noise (which the tiny BN groups of a from-scratch model amplify step by step)
    m = dist_worker.model(bn_batch=dist_worker.BATCH // 2)
    images, ages = dist_worker.data()
    t = glae.train.Trainer(m, m.config, glae.train.Dataset(images, ages), progress=False,
                           log=None)
    one = []
    for k, (x, a, s) in enumerate(t.loader(t.epoch_indices(1, 0), 1, 0)):
        r = t.step(x, a, s, 1)
        if r is not None:
            one.append(r["total"])
        if k == 3:
            break
    one.append(t.flush()["total"])
    np.testing.assert_allclose(steps["losses"], one, rtol=3e-3)
    assert abs(steps["losses"][0] - one[0]) <= 1e-5 * one[0]
    # one process, the same initial weights, the whole first batch, BN over each rank's 4
    got = np.load(tmp_path / "grads.npz")
    np.testing.assert_array_equal(np.array(dist_worker.model().core.params), got["params"])
    B, per = dist_worker.BATCH, dist_worker.BATCH // 2

    def grads(x, a, bn_batch):
        m = dist_worker.model()
        m.core.bn_batch = bn_batch
        m.core.zero_grad()
        m.core.train_step(x, a, None, stage=1, norm="glae")
        return np.array(m.core.grads)

    ref = grads(images[:B], ages[:B], per)
    # float32 summation-order noise: the convolutions of 8 images sum in another order
    # than those of 4 (measured 5e-5)
    err = np.linalg.norm(got["grads"] - ref) / np.linalg.norm(ref)
    assert err < 3e-4, err
    # and exactly the mean of the two halves' gradients taken in one process each
    halves = grads(images[:per], ages[:per], 0) + grads(images[per:B], ages[per:B], 0)
    np.testing.assert_array_equal(got["grads"], halves * np.float32(0.5))


def _log(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@needs_mpi
def test_two_ranks_follow_the_one_rank_trajectory_rank0_writes_and_resume_is_exact(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    p, _ = run_ranks("fit", two)
    assert p.returncode == 0, p.stdout + p.stderr
    assert sorted(os.listdir(two)) == ["best.safetensors", "last.safetensors", "log.jsonl"]
    assert p.stdout.count("stage 1 epoch 1") == 1  # rank 0 alone logs
    # one process, bn_batch = the per-rank batch: the same global batches and statistics
    os.environ["BN_BATCH"] = str(dist_worker.BATCH // 2)
    try:
        dist_worker.fit(str(one))
    finally:
        del os.environ["BN_BATCH"]
    a, b = _log(two / "log.jsonl"), _log(one / "log.jsonl")
    assert [(e["stage"], e["epoch"]) for e in a] == [(e["stage"], e["epoch"]) for e in b]
    for ea, eb in zip(a, b):
        for key in ("total", "holistic"):
            assert ea["train"][key] == pytest.approx(eb["train"][key], rel=2e-2), (ea, eb)
        for head in eb["val"]:
            assert ea["val"][head]["mae"] == pytest.approx(eb["val"][head]["mae"], abs=0.3)
    # the checkpoint says how many ranks wrote it; a different count with bn_batch = 0 is
    # refused (the BN groups would change)
    _, _, state = glae.train.load_checkpoint(two / "last.safetensors", glae.model._Restore)
    assert state["world_size"] == 2
    images, ages = dist_worker.data()
    with pytest.raises(ValueError, match="trained on 2 rank"):
        glae.train.Trainer.resume(two / "last.safetensors", (images[:16], ages[:16]))
    # exact resume on 2 ranks: stopped after 3 steps, resumed from rank 0's checkpoint, the
    # same final tensors bit for bit as the uninterrupted run
    res = tmp_path / "resumed"
    p, _ = run_ranks("resume", res)
    assert p.returncode == 0, p.stdout + p.stderr
    from safetensors.numpy import load_file

    x, y = load_file(two / "last.safetensors"), load_file(res / "last.safetensors")
    assert sorted(x) == sorted(y)
    assert [k for k in x if not np.array_equal(x[k], y[k])] == []


@needs_mpi
def test_a_killed_rank_ends_the_run(tmp_path):
    p, secs = run_ranks("kill", tmp_path, timeout=120)
    assert p.returncode != 0
    assert secs < 60
    out = p.stdout + p.stderr
    assert "KILLED" in out.upper() or "signal 9" in out or "died" in out, out


@needs_mpi
def test_a_hung_rank_fails_the_others_with_a_clear_error(tmp_path):
    p, secs = run_ranks("hang", tmp_path, timeout=120, env={"GLAE_DIST_TIMEOUT": "3"})
    assert p.returncode != 0
    assert secs < 60
    assert "waited 3 s for the other ranks" in p.stderr, p.stdout + p.stderr
    assert "rank 0 of 2 failed" in p.stderr


def test_launch_detection():
    assert dist.launch_kind({}) is None
    assert dist.launch_kind({"PMI_SIZE": "1"}) is None
    assert dist.launch_kind({"PMI_SIZE": "4"}) == "mpi"
    assert dist.launch_kind({"OMPI_COMM_WORLD_SIZE": "2"}) == "mpi"
    assert dist.launch_kind({"SLURM_STEP_NUM_TASKS": "8"}) == "mpi"
    assert dist.launch_kind({"WORLD_SIZE": "2", "RANK": "1"}) == "env"
    with pytest.raises(dist.DistributedError, match="WORLD_SIZE"):
        dist.launch_kind({"WORLD_SIZE": "two"})
    with pytest.raises(dist.DistributedError, match="MASTER_ADDR"):
        dist._make_world({"WORLD_SIZE": "2", "RANK": "0"})
    with pytest.raises(dist.DistributedError, match="GLAE_DIST_TIMEOUT"):
        dist.timeout_from_env({"GLAE_DIST_TIMEOUT": "soon"})
    w = dist.World()
    assert (w.rank, w.size, w.is_main) == (0, 1, True)
    assert w.shard(7) == (0, 7)
    assert [dist.World(r, 3).shard(7) for r in range(3)] == [(0, 2), (2, 4), (4, 7)]


def test_without_mpi_a_launch_says_what_to_install(monkeypatch):
    class NoMPI:
        @staticmethod
        def dist_built():
            return {"mpi": False, "nccl": False, "mpi_library": ""}

    monkeypatch.setattr(dist, "_C", NoMPI)
    with pytest.raises(dist.DistributedError, match="pip install mpich"):
        dist._make_world({"PMI_SIZE": "2"})
    with pytest.raises(dist.DistributedError, match="NCCL"):
        dist._make_world({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1",
                          "MASTER_PORT": "1"})


def test_rank0_hands_out_the_nccl_id_over_tcp():
    import socket

    with socket.socket() as s:  # a free port
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    payload = bytes(range(128))
    got = {}

    def rank(r):
        got[r] = dist.share_bytes(payload if r == 0 else None, r, 3, "127.0.0.1", port, timeout=30)

    threads = [threading.Thread(target=rank, args=(r,)) for r in (1, 2, 0)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert got == {0: payload, 1: payload, 2: payload}


@pytest.mark.parametrize("stage", [1, 2])
def test_sharded_loader_gives_each_rank_its_part_of_every_global_batch(stage):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 16, 16, 3), dtype=np.uint8)
    ages = np.arange(20, dtype=np.float32)
    # stage 2's class-balanced order repeats images: the repeat counts are the epoch's
    order = np.array([3, 3, 5, 1, 3, 7, 9, 0, 2, 2, 4, 6] if stage == 2 else
                     rng.permutation(20)[:12], np.int64)
    kw = dict(out_size=16, seed=1, epoch=2, dtype="uint8", drop_last=True, randaugment=True)
    whole = list(_C.Loader(images, ages, None, order, 4, **kw))
    parts = [list(_C.Loader(images, ages, None, order, 2, shard=(r, 2), **kw)) for r in (0, 1)]
    assert len(whole) == len(parts[0]) == len(parts[1]) == 3
    for k in range(3):
        for j in range(2):  # x, ages
            np.testing.assert_array_equal(whole[k][j][:2], parts[0][k][j])
            np.testing.assert_array_equal(whole[k][j][2:], parts[1][k][j])
    with pytest.raises(ValueError, match="global batches"):
        _C.Loader(images, ages, None, order[:10], 2, shard=(0, 2), **kw)
    with pytest.raises(ValueError, match="shard rank"):
        _C.Loader(images, ages, None, order, 2, shard=(2, 2), **kw)


@needs_mpi
def test_command_line_train_under_mpirun(tmp_path):
    from glae.data.synthetic import write_synthetic

    pack = write_synthetic(str(tmp_path / "train.glaepack"), 16, 32, 0)
    e = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.path.dirname(HERE))
    p = subprocess.run(
        [mpirun(), "-n", "2", sys.executable, "-m", "glae", "train", "--train", pack, "--out",
         str(tmp_path / "run"), "--set", "image_size=32", "--set", "batch_size=8", "--set",
         "stage1_epochs=1", "--set", "stage2_epochs=0", "--set", "head=gap", "--set",
         "bn_batch=2", "--set", "linear_scaling=false", "--set", "threads=1"],
        capture_output=True, text=True, timeout=240, env=e)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("checkpoints in") == 1  # rank 0 alone prints
    assert p.stdout.count("stage 1 epoch 1") == 1
    assert sorted(os.listdir(tmp_path / "run")) == ["last.safetensors", "log.jsonl"]
    _, _, state = glae.train.load_checkpoint(tmp_path / "run" / "last.safetensors",
                                             glae.model._Restore)
    assert state["world_size"] == 2 and state["stage"] == 1
