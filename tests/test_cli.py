"""`python -m glae`: every subcommand's --help, a tiny demo, and train -> eval -> predict on
small synthetic packed files, run in-process through glae.cli.main (no interpreter start
per command). Sizes are tiny (32 px, 40 training images) so the whole file takes seconds."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import glae
from glae import metrics
from glae import checkpoint as ckpt
from glae.train import cuda_unusable
from glae.cli import build_parser, main, parse_overrides
from glae.data import synthetic_faces, write_packed

SIZE = 32
COMMANDS = ("demo", "prepare", "pretrain", "train", "eval", "predict", "export", "info")

# a tiny fr+pa run: 40 images, batch 8 (5 steps per epoch), 2 + 1 epochs; strings that
# start with f/t/digits are given through --set on purpose (they used to reach json.loads)
TOML = """
[model]
backbone = "resnet18"
proj_depth = 1
proj_width = 32
[data]
image_size = 32
augment = { crop = true, flip = true, color_jitter = false, randaugment = false }
[optim]
batch_size = 8
stage1_epochs = 2
stage2_epochs = 1
base_lr1 = 0.002
base_lr2 = 0.002
linear_scaling = false
"""


def run_cli(capsys, *argv):
    """(exit status, stdout, stderr) of one in-process command."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Packed training / test sets (the test set, 6 images, is smaller than the batch of 8),
    a test set with sigmas, and two aligned-crop PNG files."""
    from PIL import Image

    d = tmp_path_factory.mktemp("cli")
    images, ages = synthetic_faces(46, size=SIZE, seed=4)
    f = {"dir": d, "train": write_packed(d / "train.glae", images[:40], ages[:40]),
         "test": write_packed(d / "test.glae", images[40:], ages[40:]),
         "test_sigma": write_packed(d / "test_sigma.glae", images[40:], ages[40:],
                                    sigmas=np.full(6, 3.0)),
         "pngs": [], "test_images": images[40:], "test_ages": ages[40:]}
    for i in range(2):
        p = d / f"face{i}.png"
        Image.fromarray(images[40 + i]).save(p)
        f["pngs"].append(str(p))
    (d / "tiny.toml").write_text(TOML)
    f["toml"] = d / "tiny.toml"
    return f


@pytest.fixture(scope="module")
def trained(files):
    """One `train --config ... --set ...` run; its last checkpoint (after stage 2) and a
    stage-1-only copy of it (balanced head never trained)."""
    out = files["dir"] / "run"
    rc = main(["train", "--config", str(files["toml"]), "--train", files["train"],
               "--out", str(out), "--set", "head=fr+pa", "--set", "route=smaller",
               "--set", "flip_test=true", "--set", "seed=3", "--set", "augment.flip=false"])
    assert rc == 0
    last = out / "last.safetensors"
    m = glae.load(last)
    m.stage2_trained = False  # what a stage-1 run leaves behind
    stage1 = m.save(str(files["dir"] / "stage1.safetensors"))
    # the models as loaded, kept for comparisons (loading costs about a second each)
    return {"out": out, "last": str(last), "stage1": stage1, "model": glae.load(last),
            "model1": glae.load(stage1)}


@pytest.mark.parametrize("cmd", COMMANDS)
def test_help_of_each_command_exits_0(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, "--help"])
    assert e.value.code == 0
    assert "usage: python -m glae " + cmd in capsys.readouterr().out


def test_module_entry_point_runs():
    """`python -m glae --help` through the interpreter, as users call it."""
    r = subprocess.run([sys.executable, "-m", "glae", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and all(c in r.stdout for c in COMMANDS)


def test_demo_tiny(tmp_path, capsys):
    out = tmp_path / "demo"
    rc, text, err = run_cli(capsys, "demo", "--out", out, "--n", 40, "--size", SIZE,
                            "--batch", 8, "--epochs1", 1, "--epochs2", 1, "--no-progress")
    assert rc == 0, err
    for row in ("vanilla", "balanced", "routed"):
        assert any(line.startswith(row) for line in text.splitlines())
    assert "MAE" in text and "CMAE" in text and "AAR-LAE" in text
    for name in ("log.jsonl", "last.safetensors", "best.safetensors", "per_age_mae.png",
                 "report.json"):
        assert (out / name).is_file(), name
    # the table is the model after the last epoch, and the checkpoint it names is that one
    assert f"checkpoint {out / 'last.safetensors'}" in text
    rep = json.loads((out / "report.json").read_text())
    last_epoch = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    assert abs(rep["routed"]["mae"] - last_epoch["val"]["routed"]["mae"]) < 1e-6
    assert f"{rep['routed']['mae']:.2f}" in text


@pytest.mark.skipif(cuda_unusable() is None, reason="a CUDA device is present")
def test_demo_on_a_gpu_this_machine_lacks(tmp_path, capsys):
    """--device cuda without a usable GPU: a one-line error naming why, nothing written."""
    out = tmp_path / "demo"
    rc, text, err = run_cli(capsys, "demo", "--out", out, "--device", "cuda", "--math", "bf16")
    assert rc == 2 and "glae demo: error: --device cuda:" in err
    assert cuda_unusable() in err
    assert not out.exists() and not (out / "report.json.tmp").exists()


def test_parse_overrides():
    from glae.config import Config

    got = parse_overrides(["head=fr+pa", "pretrained=tv.pth", "route=smaller",
                           "batch_size=64", "lam=1e-3", "flip_test=false",
                           "milestones=[10, 20]", "pretrained=2024", "augment.flip=false"],
                          Config())
    assert got["head"] == "fr+pa" and got["route"] == "smaller"
    assert got["pretrained"] == "2024"  # a text field keeps the text, even when it is a number
    assert got["batch_size"] == 64 and got["lam"] == 1e-3 and got["flip_test"] is False
    assert got["milestones"] == [10, 20]
    assert got["augment"] == {**Config().augment, "flip": False}
    assert parse_overrides(['pretrained=""'])["pretrained"] == ""
    with pytest.raises(ValueError, match="no value given"):
        parse_overrides(["head="])
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_overrides(["head"])
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_overrides(["=3"])
    with pytest.raises(ValueError, match="augment.OPTION"):
        parse_overrides(["optim.lr=3"])


def test_train_took_the_string_overrides(trained):
    cfg = trained["model"].config
    assert cfg.head == "fr+pa" and cfg.route == "smaller" and cfg.seed == 3
    assert cfg.augment["flip"] is False and cfg.augment["crop"] is True
    assert trained["model"].stage2_trained and not trained["model1"].stage2_trained


def test_train_errors_are_clear(files, trained, tmp_path, capsys):
    base = ["train", "--config", files["toml"], "--train", files["train"], "--out", tmp_path]
    rc, _, err = run_cli(capsys, *base, "--set", "head=")
    assert rc == 2 and "head=: no value given" in err
    rc, _, err = run_cli(capsys, *base, "--set", "colour=1")
    assert rc == 2 and "unknown config key(s): colour" in err
    rc, _, err = run_cli(capsys, *base, "--set", "pretrained=missing-weights.pth")
    assert rc == 2 and "missing-weights.pth" in err and "Expecting value" not in err
    rc, _, err = run_cli(capsys, *base, "--resume", trained["last"], "--set", "seed=1")
    assert rc == 2 and "--resume" in err


def test_eval_small_test_set_json(files, trained, tmp_path, capsys):
    """6 test images with a batch size of 8 in the checkpoint: evaluated, full report."""
    js = tmp_path / "report.json"
    rc, text, err = run_cli(capsys, "eval", trained["last"], files["test"],
                            "--train", files["train"], "--json", js, "--plots", tmp_path / "figs")
    assert rc == 0, err
    for fig in ("per_age_mae.png", "routing_usage.png"):  # --plots: the trade-off figures
        assert (tmp_path / "figs" / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", fig
    rep = json.loads(js.read_text())
    assert set(rep) == {"vanilla", "balanced", "routed"}
    for head in rep.values():
        assert head["n"] == 6
        for key in ("mae", "cmae", "aar_lae", "aar_glae", "group", "cs", "per_age", "shot"):
            assert key in head, key
        assert "epsilon_error" not in head  # no sigmas in this set
    assert "routing" in rep["routed"]
    # every image is few-shot: the training set has fewer than 20 images of any age
    assert rep["vanilla"]["shot"]["few"]["count"] == 6
    for words in ("AAR (LAE groups)", "AAR (GLAE groups)", "CS theta", "per-age MAE",
                  "MAE few", "routing", "MAE 18-65"):
        assert words in text, words
    # the same numbers as predicting the images directly with the model
    m = trained["model"]
    for route, name in (("vanilla", "vanilla"), ("balanced", "balanced"), (None, "routed")):
        p = m.predict(files["test_images"], route=route)
        assert abs(metrics.mae(files["test_ages"], p) - rep[name]["mae"]) < 1e-3


def test_eval_shots_from_the_checkpoint_histogram(files, trained, tmp_path, capsys):
    js, js2 = tmp_path / "r.json", tmp_path / "r2.json"
    rc, text, err = run_cli(capsys, "eval", trained["stage1"], files["test_sigma"],
                            "--json", js, "--batch", 4)
    assert rc == 0, err
    rep = json.loads(js.read_text())
    assert list(rep) == ["vanilla"]  # stage 1 only: no balanced head to report
    assert 0 <= rep["vanilla"]["epsilon_error"] <= 1 and "eps-err" in text
    # the trainer stored the training-age histogram: the same shots as with --train
    rc, _, err = run_cli(capsys, "eval", trained["stage1"], files["test_sigma"],
                         "--json", js2, "--batch", 4, "--train", files["train"])
    assert rc == 0, err
    assert rep["vanilla"]["shot"] == json.loads(js2.read_text())["vanilla"]["shot"]


def test_eval_without_any_training_histogram_omits_shots(files, trained, tmp_path, capsys):
    m = glae.load(trained["stage1"])
    assert m.train_ages is not None
    m.data_info = None  # as a model saved without a trainer
    path = m.save(str(tmp_path / "bare.safetensors"))
    js = tmp_path / "r.json"
    rc, text, err = run_cli(capsys, "eval", path, files["test_sigma"], "--json", js, "--batch", 4)
    assert rc == 0, err
    assert "shot" not in json.loads(js.read_text())["vanilla"] and "--train" in text


def test_eval_bad_input(files, trained, tmp_path, capsys):
    rc, _, err = run_cli(capsys, "eval", trained["last"], tmp_path / "absent.glae")
    assert rc == 2 and "absent.glae" in err
    rc, _, err = run_cli(capsys, "eval", tmp_path / "absent.safetensors", files["test"])
    assert rc == 2 and "absent.safetensors" in err
    rc, _, err = run_cli(capsys, "eval", trained["last"], files["test"], "--batch", 0)
    assert rc == 2 and "batch_size" in err


def test_predict_one_line_per_file_with_head(files, trained, capsys):
    rc, text, err = run_cli(capsys, "predict", trained["last"], *files["pngs"])
    assert rc == 0, err
    lines = text.strip().splitlines()
    assert len(lines) == 2
    m = trained["model"]
    ages, heads = m.predict(files["pngs"], return_head=True)
    for line, path, age, head in zip(lines, files["pngs"], ages, heads):
        p, a, h = line.split("\t")
        assert p == path and abs(float(a) - age) < 0.051
        assert h == ("vanilla", "balanced")[int(head)]
    rc, text, _ = run_cli(capsys, "predict", trained["last"], files["pngs"][0],
                          "--route", "balanced")
    assert rc == 0 and text.strip().endswith("\tbalanced")


def test_predict_stage1_checkpoint_uses_the_vanilla_head(files, trained, capsys):
    rc, text, err = run_cli(capsys, "predict", trained["stage1"], *files["pngs"])
    assert rc == 0, err
    lines = text.strip().splitlines()
    assert len(lines) == 2 and all(line.endswith("\tvanilla") for line in lines)
    m = trained["model1"]
    want = m.predict(files["pngs"], route="vanilla")
    got = [float(line.split("\t")[1]) for line in lines]
    np.testing.assert_allclose(got, want, atol=0.051)
    rc, _, err = run_cli(capsys, "predict", trained["stage1"], files["pngs"][0],
                         "--route", "smaller")
    assert rc == 2 and "never trained" in err


def test_predict_missing_image(trained, tmp_path, capsys):
    rc, _, err = run_cli(capsys, "predict", trained["last"], tmp_path / "nope.png")
    assert rc == 2 and "nope.png" in err


def test_parser_knows_every_command():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == set(COMMANDS)


def gpu_checkpoint(src, dst):
    """A copy of checkpoint `src` whose config says it was trained on a GPU in bf16 with
    CUDA graphs and cudnnFind (what a GPU run writes); the tensors are the same."""
    tensors, meta = ckpt.load(src)
    cfg = dict(meta["config"], device="cuda", gpu_math="bf16", cuda_graph=True,
               cudnn_benchmark=True)
    ckpt.save(str(dst), tensors, dict(meta, config=cfg))
    return str(dst)


@pytest.mark.skipif(cuda_unusable() is None, reason="a CUDA device is present")
def test_gpu_checkpoint_on_a_machine_without_gpu(files, trained, tmp_path, capsys):
    """A GPU-trained checkpoint: glae.load says how to load it here; device='cpu' gives the
    same model in fp32 with the CUDA-only switches off; the CLI falls back with a note."""
    path = gpu_checkpoint(trained["last"], tmp_path / "gpu.safetensors")
    with pytest.raises(glae.DeviceUnavailableError, match="device='cpu'"):
        glae.load(path)
    m = glae.load(path, device="cpu")
    c = m.config
    assert (c.device, c.gpu_math, c.cuda_graph, c.cudnn_benchmark) == ("cpu", "fp32", False, False)
    assert m.core.device == "cpu" and m.core.math == "fp32"
    ref = trained["model"]
    np.testing.assert_array_equal(m.core.params, ref.core.params)
    np.testing.assert_array_equal(m.predict(files["pngs"]), ref.predict(files["pngs"]))
    assert glae.load(path, device="cpu", gpu_math="bf16").core.math == "bf16"
    with pytest.raises(ValueError, match="device"):
        glae.load(path, device="gpu")
    rc, text, err = run_cli(capsys, "predict", path, *files["pngs"])
    assert rc == 0 and "running on the CPU" in err and len(text.strip().splitlines()) == 2
    rc, text, err = run_cli(capsys, "predict", path, "--device", "cpu", files["pngs"][0])
    assert rc == 0 and err == "" and len(text.strip().splitlines()) == 1
    rc, text, err = run_cli(capsys, "eval", path, files["test"])
    assert rc == 0 and "running on the CPU" in err and "MAE" in text


def test_info_says_how_glae_was_built(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"glae {glae.__version__}" in out
    assert "CUDA backend: " + ("built" if glae._C.HAS_CUDA else "not built") in out
    state = glae._C.cuda_device_status()["state"]
    assert f"CUDA devices: {state}" in out


@pytest.mark.skipif(cuda_unusable() is None, reason="a CUDA device is present")
def test_info_check_without_gpu_compares_nothing(capsys):
    assert main(["info", "--check"]) == 0
    assert "no usable GPU" in capsys.readouterr().out


def test_info_check_with_a_failing_driver_is_an_error(capsys, monkeypatch):
    """A GPU whose driver fails is not "no GPU": --check says so and exits 1."""
    from glae import info

    broken = dict(info.build_info(), devices=[],
                  cuda={"state": "driver_error", "count": 0, "driver_version": 0,
                        "runtime_version": 13000,
                        "message": "CUDA driver 12.2 is older than the runtime 13.0"})
    monkeypatch.setattr(info, "build_info", lambda: broken)
    assert main(["info", "--check"]) == 1
    captured = capsys.readouterr()
    assert "driver_error (CUDA driver 12.2" in captured.out
    assert "driver fails" in captured.err


def test_info_check_passes_for_the_same_engine_and_flags_a_wrong_gradient(capsys, monkeypatch):
    """--device cpu runs the self-check machinery against the CPU itself: every row passes;
    a device whose gradient is off by 10% (a wrong kernel) is reported as a mismatch with
    exit status 1, and a device that fails to build a model as failed."""
    from glae import info

    assert main(["info", "--check", "--device", "cpu", "--math", "fp32", "bf16"]) == 0
    out = capsys.readouterr().out
    assert out.count(" ok") == 2 and "reference" in out and "MISMATCH" not in out

    Model = glae._C.Model

    class WrongGradient(Model):  # a device whose backward is 10% off
        def train_step(self, *args, **kw):
            losses = super().train_step(*args, **kw)
            self.grads[:] *= 1.1
            return losses

    def on_the_device(*args, **kw):
        return (WrongGradient if "device" in kw else Model)(*args, **kw)

    monkeypatch.setattr(info._C, "Model", on_the_device)
    assert main(["info", "--check", "--device", "cpu", "--math", "fp32"]) == 1
    captured = capsys.readouterr()
    assert "MISMATCH" in captured.out and "failed" in captured.err
    monkeypatch.undo()
    rows = info.self_check(["cuda:99"], maths=("fp32",))
    assert rows[1]["error"] and not rows[1]["ok"]
    assert "failed: " in info.format_check(rows)


# -- the user review of the command line ---------------------------------------------------

def no_gpu(monkeypatch, why="no CUDA device (test)"):
    """Make this machine look like one without a usable GPU, whatever it has: cuda_unusable
    (read by the CLI's --device check and by load_checkpoint) gives `why`."""
    import glae.train

    monkeypatch.setattr(glae.train, "cuda_unusable", lambda: why)
    return why


def test_eval_and_predict_on_a_gpu_this_machine_lacks(files, trained, tmp_path, monkeypatch,
                                                      capsys):
    """--device cuda / cuda:N without a usable GPU: one line naming the option and why, exit
    status 2, no traceback, nothing evaluated or written."""
    why = no_gpu(monkeypatch)
    js = tmp_path / "r.json"
    rc, out, err = run_cli(capsys, "eval", trained["last"], files["test"], "--device", "cuda",
                           "--json", js)
    assert (rc, out) == (2, "") and err == f"glae eval: error: --device cuda: {why}\n"
    assert not js.exists()
    rc, out, err = run_cli(capsys, "predict", trained["last"], files["pngs"][0],
                           "--device", "cuda:0")
    assert (rc, out) == (2, "") and err == f"glae predict: error: --device cuda:0: {why}\n"
    rc, _, err = run_cli(capsys, "eval", trained["last"], files["test"], "--device", "gpu")
    assert rc == 2 and "glae eval: error: --device gpu: expected cpu, cuda or cuda:N" in err


def test_a_gpu_index_this_machine_lacks(files, trained, monkeypatch, capsys):
    """A machine with one usable GPU: --device cuda:1 says which GPUs there are."""
    import glae.train
    from glae import info

    monkeypatch.setattr(glae.train, "cuda_unusable", lambda: None)
    monkeypatch.setattr(info, "usable_gpus", lambda state=None: ["cuda:0"])
    rc, out, err = run_cli(capsys, "predict", trained["last"], files["pngs"][0],
                           "--device", "cuda:1")
    assert (rc, out) == (2, "")
    assert err == "glae predict: error: --device cuda:1: this machine has 1 usable CUDA " \
                  "device(s): cuda:0\n"


def test_device_unavailable_error_is_a_clear_error(files, trained, tmp_path, monkeypatch,
                                                   capsys):
    """glae.DeviceUnavailableError (a RuntimeError) reaching main: `glae <cmd>: error:` and
    exit status 2 like a ValueError, not a traceback. train --resume of a GPU run here, and a
    config whose device is a GPU this machine lacks (checked before any data is read)."""
    why = no_gpu(monkeypatch)
    gpu = gpu_checkpoint(trained["last"], tmp_path / "gpu.safetensors")
    rc, _, err = run_cli(capsys, "train", "--train", files["train"], "--out", tmp_path / "run",
                         "--resume", gpu)
    assert rc == 2 and err.startswith("glae train: error: ") and err.count("\n") == 1
    assert "cannot run CUDA" in err and why in err and "Traceback" not in err
    assert "trained on 'cuda'" in err and "--device cpu" in err
    # the way out it names: the same run continued on the CPU (finished already here)
    rc, out, err = run_cli(capsys, "train", "--train", files["train"], "--out", tmp_path / "run",
                           "--resume", gpu, "--device", "cpu")
    assert rc == 0 and "already complete" in out, err
    # a device asked for is named as asked, not as where the model was trained
    with pytest.raises(glae.DeviceUnavailableError, match="device='cuda' was asked for"):
        glae.load(trained["last"], device="cuda")
    rc, _, err = run_cli(capsys, "train", "--train", files["train"], "--out", tmp_path / "run",
                         "--resume", trained["last"], "--device", "cuda")
    assert rc == 2 and err == f"glae train: error: --device cuda: {why}\n"
    rc, _, err = run_cli(capsys, "train", "--config", files["toml"], "--train",
                         tmp_path / "absent.glae", "--out", tmp_path / "run2",
                         "--set", "device=cuda")
    assert rc == 2 and err == f"glae train: error: the config's device cuda: {why}\n"
    assert not (tmp_path / "run2").exists()


def test_output_folders_are_checked_before_any_work(files, trained, tmp_path, capsys):
    """eval --json, export's output and prepare's out in a folder that does not exist (or is
    a file): an error naming the user's path before anything is evaluated, exported or read
    (prepare's source does not exist either: the output is checked first)."""
    target = tmp_path / "nonexist" / "r.json"
    rc, out, err = run_cli(capsys, "eval", trained["last"], files["test"], "--json", target)
    assert (rc, out) == (2, "")
    assert err == f"glae eval: error: --json {target}: the folder {target.parent} does not " \
                  "exist\n"
    afile = tmp_path / "afile"
    afile.write_text("")
    rc, out, err = run_cli(capsys, "eval", trained["last"], files["test"], "--json",
                           afile / "r.json")
    assert (rc, out) == (2, "") and f"{afile} is not a folder" in err
    rc, out, err = run_cli(capsys, "eval", trained["last"], files["test"], "--json", tmp_path)
    assert (rc, out) == (2, "") and "is a folder; give a file name" in err
    onnx_out = tmp_path / "nonexist" / "m.onnx"
    rc, out, err = run_cli(capsys, "export", trained["last"], onnx_out)
    assert (rc, out) == (2, "")
    assert err == f"glae export: error: output {onnx_out}: the folder {onnx_out.parent} does " \
                  "not exist\n"
    packed = tmp_path / "nonexist" / "faces.glae"
    rc, _, err = run_cli(capsys, "prepare", f"csv:{tmp_path / 'absent.csv'}", packed)
    assert rc == 2 and err == f"glae prepare: error: out {packed}: the folder " \
                              f"{packed.parent} does not exist\n"


def test_write_json_names_the_users_path(tmp_path):
    """A report that cannot be renamed into place (the path is a non-empty folder): the
    error names the path given, not the temporary file, and leaves no temporary file."""
    from glae.cli import _write_json

    target = tmp_path / "taken"
    target.mkdir()
    (target / "x").write_text("")
    with pytest.raises(OSError) as e:
        _write_json(str(target), {"mae": 1.0})
    assert str(e.value).startswith(f"cannot write {target}: ") and ".tmp" not in str(e.value)
    assert not (tmp_path / "taken.tmp").exists()
    _write_json(str(tmp_path / "ok.json"), {"mae": np.float32(1.5)})
    assert json.loads((tmp_path / "ok.json").read_text()) == {"mae": 1.5}
    assert sorted(os.listdir(tmp_path)) == ["ok.json", "taken"]


def test_export_checks_the_checkpoint_before_onnx(trained, tmp_path, monkeypatch, capsys):
    """Without the onnx package: a missing checkpoint is reported as such (not as the missing
    package); a present one gets install advice that works for a source install too."""
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` raises ImportError
    rc, _, err = run_cli(capsys, "export", tmp_path / "nope.safetensors", tmp_path / "m.onnx")
    assert rc == 2
    assert err == f"glae export: error: checkpoint not found: {tmp_path / 'nope.safetensors'}\n"
    rc, _, err = run_cli(capsys, "export", trained["last"], tmp_path / "m.onnx")
    assert rc == 2 and err.startswith("glae export: error: ONNX export needs the onnx package")
    assert "pip install onnx" in err and "[export]" in err and "glae[export]" not in err
    assert not (tmp_path / "m.onnx").exists()


def test_info_check_devices_are_validated_up_front(monkeypatch, capsys):
    """info --check --device: a string that is no device is an error (exit 2) before the
    report and before any check runs; cuda and cuda:N reach the self-check as given;
    --device without --check is an error rather than silently ignored."""
    from glae import info

    ran = []

    def fake_check(devices, maths):
        ran.append((list(devices), maths))
        return [{"device": "cpu", "math": "fp32", "loss": 1.0, "loss_rel": 0.0, "grad_rel": 0.0,
                 "limit": 0.0, "ok": True, "step_s": 0.0, "error": None, "reference": True}]

    monkeypatch.setattr(info, "self_check", fake_check)
    for bad in ("banana", "cuda:", "cuda:x", "gpu:0", "CUDA"):
        rc, out, err = run_cli(capsys, "info", "--check", "--device", "cuda:0", "--device", bad)
        assert (rc, out) == (2, "")
        assert err == f"glae info: error: --device {bad}: expected cpu, cuda or cuda:N " \
                      "(e.g. cuda:0)\n"
    assert ran == []
    rc, out, err = run_cli(capsys, "info", "--device", "cuda:0")
    assert (rc, out) == (2, "") and "add --check" in err
    rc, out, err = run_cli(capsys, "info", "--check", "--device", "cuda:1", "--device", "cuda",
                           "--math", "fp32")
    assert rc == 0, err
    assert ran == [(["cuda:1", "cuda"], ("fp32",))] and "reference" in out


def _description(parser):
    return (parser.description or "").strip()


def test_help_describes_every_command_and_option():
    """Every command has a description of its own (its --help); every option has a help
    text, and one with a default says it."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        assert len(_description(parser)) > 40, name
        for a in parser._actions:
            if a.dest == "help":
                continue
            assert a.help, f"{name} {a.dest}: no help"
            if a.default not in (None, False):
                assert "default" in a.help, f"{name} {a.dest}: default {a.default!r} not shown"
    helps = {c.dest: c.help for c in sub._choices_actions}
    assert "optional TOML config" in helps["train"]
    def text(cmd):  # the help as printed, lines joined
        return " ".join(sub.choices[cmd].format_help().split())

    assert "(default: 224)" in text("prepare") and "(default: 0.0)" in text("prepare")
    assert "(default: 32)" in text("demo") and "(default: 0)" in text("demo")
    assert "(default: routed)" in text("export")


@pytest.mark.parametrize("argv0, prog", [("/usr/local/bin/glae", "glae"),
                                         ("glae", "glae"),
                                         ("/src/glae/glae/__main__.py", "python -m glae"),
                                         ("/usr/bin/pytest", "python -m glae"),
                                         ("", "python -m glae")])
def test_usage_names_the_program_as_invoked(argv0, prog, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [argv0, "eval", "--help"])
    assert build_parser().prog == prog
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert capsys.readouterr().out.startswith(f"usage: {prog} eval ")


def test_console_script_usage_says_glae():
    """The installed `glae` console script (pip install -e .) prints `usage: glae`."""
    script = os.path.join(os.path.dirname(sys.executable), "glae")
    if not os.path.isfile(script):
        pytest.skip("no glae console script beside this interpreter")
    r = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("usage: glae [-h]")
    assert "`glae <command>`" in r.stdout


def test_resume_of_a_finished_run_says_so(files, trained, tmp_path, capsys):
    """train --resume of a run whose last epoch is done: says the run was already complete,
    trains nothing and writes no checkpoint."""
    out = tmp_path / "again"
    rc, text, err = run_cli(capsys, "train", "--train", files["train"], "--out", out,
                            "--resume", trained["last"])
    assert rc == 0, err
    assert f"{trained['last']}: the run was already complete (stage 2: 1/1 epochs)" in text
    assert "checkpoints in" not in text
    assert not (out / "last.safetensors").exists() and not (out / "log.jsonl").exists()


def test_run_complete():
    from glae.cli import run_complete
    from glae.config import Config

    cfg = Config(stage1_epochs=2, stage2_epochs=1)

    def st(stage, epoch, batch=0):
        return {"stage": stage, "epoch": epoch, "batch": batch}

    assert run_complete(cfg, st(2, 1)) == "stage 2: 1/1 epochs"
    for state in (st(1, 0), st(1, 1, 3), st(1, 2), st(2, 0), st(2, 0, 2)):
        assert run_complete(cfg, state) is None, state
    s1 = Config(stage1_epochs=2, stage2_epochs=0)
    assert run_complete(s1, st(1, 2)) == "stage 1: 2/2 epochs, no stage 2"
    assert run_complete(s1, st(1, 1)) is None


def test_demo_table_names_the_aar_groups():
    """The demo's table: the AAR column says it is over LAE's groups (eval prints both), and
    holds the LAE value."""
    from glae.cli import _table

    rng = np.random.default_rng(0)
    y = rng.uniform(1, 100, 300)
    yhat = y + rng.normal(0, 1, 300) + np.where(y > 81, 4, 0)  # ages LAE's groups leave out
    rep = metrics.report(y, yhat)
    assert round(rep["aar_lae"]["aar"], 2) != round(rep["aar_glae"]["aar"], 2)
    lines = _table({"vanilla": rep}).splitlines()
    assert lines[0].split()[:3] == ["MAE", "CMAE", "AAR-LAE"]
    assert lines[2].split()[3] == f"{rep['aar_lae']['aar']:.2f}"
