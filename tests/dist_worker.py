"""One rank of the data-parallel tests (tests/test_distributed.py runs it under mpirun):

    mpirun -n 2 python tests/dist_worker.py MODE OUT_DIR

steps: a few Trainer steps on a tiny model; after each, every rank's weights compared with
       rank 0's bit for bit; the first step's averaged gradient saved (grads.npz).
fit:   Trainer.fit over 2 epochs with a validation set (rank 0 writes log.jsonl and
       last.safetensors; evaluation sharded and gathered).
resume: 3 steps, then a resume from rank 0's checkpoint to the end (tests exact resume).
kill:  rank 1 dies (SIGKILL) in its second step.
hang:  rank 1 stops answering in its second step (GLAE_DIST_TIMEOUT limits the wait).
"""
import os
import signal
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import glae  # noqa: E402
from glae import distributed as dist  # noqa: E402
from glae.train import Trainer  # noqa: E402

BATCH, SIZE = 8, 64  # global batch, pixels


def data(n=40, seed=5):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    ages = rng.uniform(5, 80, n).astype(np.float32)
    return images, ages


def model(**kw):
    fields = dict(backbone="resnet18", head="gap", image_size=SIZE, batch_size=BATCH,
                  stage1_epochs=2, stage2_epochs=1, base_lr1=0.002, base_lr2=0.002,
                  linear_scaling=False, seed=7, threads=1, loader_threads=1,
                  augment={"crop": True, "flip": True, "color_jitter": False,
                           "randaugment": False})
    fields.update(kw)
    return glae.Model(**fields)


def same_as_rank0(w, core):
    mine = np.array(core.params, dtype=np.float32)
    ref = mine.copy()
    w.comm.bcast(ref, 0)
    bad = w.sum([np.count_nonzero(mine != ref)])[0]
    return int(bad) == 0


def steps(out):
    w = dist.world()
    m = model()
    images, ages = data()
    t = Trainer(m, m.config, glae.train.Dataset(images, ages), progress=False, log=None)
    t.world.broadcast_model(m.core)
    per = BATCH // w.size
    # the first global batch, by hand: the averaged gradient of rank shards
    x0, a0 = images[:BATCH], ages[:BATCH]
    lo = w.rank * per
    m.core.zero_grad()
    m.core.train_step(np.ascontiguousarray(x0[lo:lo + per]), a0[lo:lo + per], None, stage=1,
                      norm="glae")
    w.average_grads(m.core)
    if w.is_main:
        np.savez(os.path.join(out, "grads.npz"), grads=np.array(m.core.grads),
                 params=np.array(m.core.params))
    # Trainer steps on the sharded loader; bitwise identical weights after each
    ok, losses = [], []
    order = t.epoch_indices(1, 0)
    for k, (x, a, s) in enumerate(t.loader(order, 1, 0)):
        r = t.step(x, a, s, 1)
        if r is not None:
            losses.append(r["total"])
        ok.append(same_as_rank0(w, m.core))
        if k == 3:
            break
    losses.append(t.flush()["total"])
    if w.is_main:
        np.savez(os.path.join(out, "steps.npz"), identical=np.array(ok), losses=np.array(losses),
                 world=w.size)


def fit(out):
    images, ages = data()
    m = model(bn_batch=int(os.environ.get("BN_BATCH", "0")))
    m.fit((images[:16], ages[:16]), (images[32:39], ages[32:39]), out_dir=out, progress=False,
          log=print)


def resume(out):
    """stop after 3 steps, then resume from rank 0's checkpoint to the end of both stages"""
    images, ages = data()
    m = model()
    train, val = (images[:16], ages[:16]), (images[32:39], ages[32:39])
    Trainer(m, m.config, glae.train.as_dataset(train), glae.train.as_dataset(val), out_dir=out,
            progress=False, log=None).fit(max_steps=3)
    dist.world().barrier()  # rank 0 has written the checkpoint
    Trainer.resume(os.path.join(out, "last.safetensors"), train, val, out_dir=out,
                   progress=False, log=None).fit()


def fail(out, how):
    w = dist.world()
    m = model()
    images, ages = data()
    t = Trainer(m, m.config, glae.train.Dataset(images, ages), progress=False, log=None)
    order = t.epoch_indices(1, 0)
    try:
        for k, (x, a, s) in enumerate(t.loader(order, 1, 0)):
            if k == 1 and w.rank == 1:
                if how == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(120)
            t.step(x, a, s, 1)
        t.flush()
    except RuntimeError as e:
        dist.report_failure(w, e)


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    {"steps": steps, "fit": fit, "resume": resume, "kill": lambda o: fail(o, "kill"),
     "hang": lambda o: fail(o, "hang")}[mode](out)
