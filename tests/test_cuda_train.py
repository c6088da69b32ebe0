"""The Trainer on a CUDA model, end to end: uint8 batches from the Loader normalised on the
GPU, the pipelined step, SGD on the device, evaluation, checkpoints, resume. The same run
on the CPU is the reference. Skips without a GPU (bench/gpu_session.sh runs it there)."""
import json
import os

import numpy as np
import pytest

from glae import _C
from glae.config import Config
from glae.data import synthetic_faces
from glae.model import Model, load
from glae.train import Dataset, Trainer

DEVICES = _C.cuda_devices() if _C.HAS_CUDA else []
pytestmark = pytest.mark.skipif(not DEVICES, reason="no CUDA device (or built without CUDA)")

SIZE = 32


def cfg(**kw):
    base = dict(backbone="resnet18", head="fr+pa", image_size=SIZE, proj_depth=1, proj_width=32,
                batch_size=8, stage1_epochs=2, stage2_epochs=1, base_lr1=0.002, base_lr2=0.002,
                linear_scaling=False, seed=3,
                augment={"crop": True, "flip": True, "color_jitter": True, "randaugment": False})
    base.update(kw)
    return Config(**base)


@pytest.fixture(scope="module")
def data():
    images, ages = synthetic_faces(56, size=SIZE, seed=5)
    return Dataset(images[:40], ages[:40]), Dataset(images[40:], ages[40:])


def log_of(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_gpu_run_follows_the_cpu_run(data, tmp_path):
    """fp32 on both: every epoch's training loss and validation MAE as close to the CPU's
    as a CPU run whose initial weights were moved by 1e-6 relative is (cuDNN sums in
    other orders, which is such a perturbation; training from a random start is chaotic
    and magnifies it: measured on the CPU, the control run's validation MAE is 6% off
    after two epochs, beyond any fixed tolerance a bug would still exceed). The last
    checkpoint loads back onto the GPU (and onto the CPU) and predicts what the trained
    model does."""
    train, val = data
    runs = {}
    for name, device, eps in (("cpu", "cpu", 0.0), ("control", "cpu", 1e-6),
                              ("cuda", "cuda", 0.0)):
        c = cfg(device=device)
        model = Model.from_config(c)
        if eps:
            p = model.core.params.astype(np.float64)
            noise = np.random.default_rng(1).standard_normal(p.size)
            model.core.write_flat("params", (p * (1 + eps * noise)).astype(np.float32))
        out = str(tmp_path / name)
        t = Trainer(model, c, train, val, out_dir=out, progress=False, log=None)
        t.fit()
        runs[name] = (t, log_of(out))
    (tc, lc), (_, lp), (tg, lg) = runs["cpu"], runs["control"], runs["cuda"]
    assert [(e["stage"], e["epoch"]) for e in lg] == [(e["stage"], e["epoch"]) for e in lc]

    def gaps(log, get):
        return np.array([abs(get(b) - get(a)) / abs(get(a)) for a, b in zip(lc, log)])

    for what, get, floor in (("loss", lambda e: e["train"]["total"], 2e-3),
                             ("MAE", lambda e: e["val"]["vanilla"]["mae"], 1e-2)):
        gpu, control = gaps(lg, get), gaps(lp, get)
        print(f"{what}: GPU vs CPU {np.round(gpu, 4)}, control {np.round(control, 4)}")
        assert gpu.max() <= 4 * control.max() + floor, (what, gpu, control)
    last = str(tmp_path / "cuda" / "last.safetensors")
    m = load(last)
    assert m.core.device.startswith("cuda") and m.stage2_trained
    x = val.images[:4]
    np.testing.assert_allclose(m.predict(x), tg.model.predict(x), rtol=1e-5)
    np.testing.assert_allclose(load(last, device="cpu").predict(x), m.predict(x), rtol=1e-3)


def test_gpu_bf16_graph_run_learns_and_resumes(data, tmp_path):
    """The issue's training setup: bf16, every step a CUDA graph replay, cudnnFind. The
    stage-1 loss falls, the graph was captured, and a run stopped mid-stage-1 resumes on
    the GPU to the end."""
    train, val = data
    c = cfg(device="cuda", gpu_math="bf16", cuda_graph=True, cudnn_benchmark=True,
            stage1_epochs=3)
    model = Model.from_config(c)
    out = str(tmp_path / "run")
    t = Trainer(model, c, train, val, out_dir=out, progress=False, log=None)
    t.fit(max_steps=7)  # mid-epoch 2: last.safetensors
    assert not model.core.cuda_graph.startswith("failed"), model.core.cuda_graph
    t2 = Trainer.resume(os.path.join(out, "last.safetensors"), train, val, out_dir=out,
                        progress=False, log=None)
    assert t2.model.core.math == "bf16" and t2.model.core.device.startswith("cuda")
    t2.fit()
    stage1 = [e["train"]["total"] for e in log_of(out) if e["stage"] == 1]
    assert len(stage1) == 3 and stage1[-1] < stage1[0]
    assert not t2.model.core.cuda_graph.startswith("failed"), t2.model.core.cuda_graph


def test_demo_command_on_the_gpu(tmp_path, capsys):
    """`python -m glae demo --device cuda --math bf16` at a tiny size: both stages, the
    report, and a checkpoint that loads on the CPU."""
    from glae.cli import main

    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--n", "60", "--size", str(SIZE), "--batch", "8",
               "--epochs1", "1", "--epochs2", "1", "--no-progress", "--device", "cuda",
               "--math", "bf16"])
    text = capsys.readouterr().out
    assert rc == 0
    assert any(line.startswith("routed") for line in text.splitlines())
    m = load(str(out / "last.safetensors"), device="cpu")
    assert m.core.device == "cpu" and m.stage2_trained
