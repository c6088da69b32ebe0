"""A tiny two-stage training run that tests/test_faults.py kills (SIGKILL) and resumes.

    python tests/fault_worker.py OUT EVERY [KILL_STEP PHASE NTH]

Trains ResNet-18 at 16 px on 12 synthetic faces (3 batches of 4 per epoch, 2 + 1 epochs:
9 optimizer steps), writing OUT/last.safetensors every EVERY steps (checkpoint_every; 0:
at the epochs' ends only) and at the end, resuming from it when it exists. With
KILL_STEP (1..9, counted over both stages) the process sends itself SIGKILL -- no
cleanup, no flush, as `kill -9` -- right after that step's update (PHASE "step") or in
the middle of writing that step's checkpoint, after NTH tensors (PHASE "write").
"""
import os
import signal
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import glae  # noqa: E402
from glae import checkpoint as ckpt  # noqa: E402
from glae.config import Config  # noqa: E402
from glae.data import synthetic_faces  # noqa: E402
from glae.model import Model  # noqa: E402
from glae.train import Dataset, Trainer  # noqa: E402

AUG = {"crop": True, "flip": True, "color_jitter": True, "randaugment": True}


def config(every):
    return Config(backbone="resnet18", head="gap", image_size=16, batch_size=4, stage1_epochs=2,
                  stage2_epochs=1, base_lr1=0.002, base_lr2=0.002, linear_scaling=False,
                  augment=AUG, seed=3, threads=1, loader_threads=2,
                  checkpoint_every=every)


def main(out, every, kill_step=None, phase=None, nth=1):
    glae.set_num_threads(1)
    images, ages = synthetic_faces(12, size=16, seed=5)
    train = Dataset(images, ages)
    last = os.path.join(out, "last.safetensors")
    if os.path.exists(last):
        t = Trainer.resume(last, train, out_dir=out, progress=False, log=None)
    else:
        cfg = config(every)
        t = Trainer(Model.from_config(cfg), cfg, train, out_dir=out, progress=False, log=None)
    stage1 = t.cfg.stage1_epochs * t.batches_per_epoch()
    if kill_step is not None:
        armed = [False, 0]
        step, write = Trainer.step, ckpt._write_array

        def kill():
            os.kill(os.getpid(), signal.SIGKILL)

        def killing_step(self, x, ages, sigma, stage):
            r = step(self, x, ages, sigma, stage)
            if self.state["step"] + (stage1 if stage == 2 else 0) == kill_step:
                if phase == "step":
                    kill()
                armed[0] = True
            return r

        def killing_write(f, a):
            if armed[0]:
                armed[1] += 1
                if armed[1] == nth:
                    f.flush()  # half a file really on disk
                    kill()
            return write(f, a)

        Trainer.step = killing_step
        ckpt._write_array = killing_write
    t.fit()


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], int(a[1]), *(int(a[2]), a[3], int(a[4])) if len(a) > 2 else ())
