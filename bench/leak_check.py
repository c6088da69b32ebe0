"""The long-running paths of glae, run under LeakSanitizer (bench/sanitize.sh --leaks):
the Loader over many epochs (dropped mid-epoch too), a Trainer fitting and writing
checkpoints, packed files opened and verified, checkpoints and .pth files loaded, a
MTCNN detection. LeakSanitizer reports every unreachable block at exit; bench/sanitize.sh
keeps the reports whose allocation stack passes through glae's C sources (csrc/) and
fails on any (CPython's and NumPy's own never-freed blocks are not glae's).

    bench/sanitize.sh --leaks
"""
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import glae  # noqa: E402
from glae import _C, checkpoint  # noqa: E402
from glae.config import Config  # noqa: E402
from glae.data import PackedDataset, synthetic_faces, write_packed  # noqa: E402
from glae.model import Model  # noqa: E402
from glae.train import Dataset, Trainer  # noqa: E402


def main():
    glae.set_num_threads(2)
    rng = np.random.default_rng(0)
    images, ages = synthetic_faces(24, size=32, seed=1)
    order = np.arange(24, dtype=np.int64)
    for epoch in range(20):  # the Loader: whole epochs, and epochs dropped half way
        it = iter(_C.Loader(images, ages, None, order, 4, 32, seed=1, epoch=epoch, threads=2))
        for k, batch in enumerate(it):
            if epoch % 3 == 0 and k == 2:
                break
        del it
    with tempfile.TemporaryDirectory() as d:
        cfg = Config(backbone="resnet18", head="fr+pa", proj_depth=1, proj_width=16, image_size=32,
                     batch_size=8, stage1_epochs=2, stage2_epochs=1, linear_scaling=False,
                     checkpoint_every=2, threads=2, loader_threads=2)
        tr = Dataset(images[:16], ages[:16])
        va = Dataset(images[16:], ages[16:])
        t = Trainer(Model.from_config(cfg), cfg, tr, va, out_dir=d, progress=False, log=None)
        t.fit(max_steps=3)
        t2 = Trainer.resume(os.path.join(d, "last.safetensors"), tr, va, out_dir=d, progress=False, log=None)
        t2.fit()
        t2.predict(va)
        m = glae.load(os.path.join(d, "last.safetensors"))
        m.predict(images[:3])
        p = write_packed(os.path.join(d, "p.glae"), images, ages)
        for mode in ("full", "lazy"):
            ds = PackedDataset(p, verify=mode)
            ds.verify_images([0, 5])
        checkpoint.load(os.path.join(d, "last.safetensors"))
    weights = os.environ.get("GLAE_MTCNN_WEIGHTS")
    if weights is None:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
        from conftest import MTCNN_WEIGHTS as weights
    if os.path.isdir(weights):
        from glae import detect
        det = detect.MTCNN(weights)
        for _ in range(3):
            det.detect(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8))
    print("leak_check: paths ran")


if __name__ == "__main__":
    main()
