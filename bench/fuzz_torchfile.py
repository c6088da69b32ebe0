"""Coverage-guided fuzzing (atheris, libFuzzer's engine for Python) of the two weight-file
readers: glae.torchfile.load (.pth / .pt, both torch.save layouts) and
glae.checkpoint.load (glae's safetensors checkpoints).

    pip install -e ".[fuzz]"                                  # atheris
    python bench/fuzz_torchfile.py seeds fuzz-corpus          # seed corpora, one folder per target
    python bench/fuzz_torchfile.py torchfile fuzz-corpus/torchfile -max_total_time=600
    python bench/fuzz_torchfile.py checkpoint fuzz-corpus/checkpoint -runs=100000

Everything after the target name goes to libFuzzer (a corpus folder to grow, -runs=N,
-max_total_time=S, -timeout=S per input, -rss_limit_mb=MB; -help=1 lists them). The
contract checked on every input: the reader returns, or raises its one documented error
(TorchFileError / CheckpointError, both ValueError); any other exception, a hang past
-timeout, memory past -rss_limit_mb or a crash of the interpreter is a finding, and
libFuzzer writes the input to crash-<sha1> / timeout-<sha1> / oom-<sha1>. Each finding
becomes a regression test in tests/test_torchfile.py or tests/test_checkpoint.py.

The readers take a path: each input is written to one unlinked file on /dev/shm (a tmpfs
where there is one), rewritten in place for every execution and read as /proc/self/fd/N
(Linux).
"""
import collections
import os
import sys
import tempfile
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

TARGETS = ("torchfile", "checkpoint")


# ---- seed corpora ---------------------------------------------------------------------------


def _torch_seeds(out):
    """Small torch.save files of both layouts covering what the reader knows: every
    storage type, views with offsets and strides, a parameter, nesting, byte orders,
    _rebuild_tensor_v3 with UntypedStorage, and the MTCNN weights when present."""
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    from helpers import (Storage, Tensor, TorchGlobal, torch_state_dict, torch_write_legacy,
                         torch_write_zip)

    rng = np.random.default_rng(0)

    class V3(Tensor):
        def __reduce__(self):
            return (TorchGlobal("torch._utils", "_rebuild_tensor_v3"),
                    (self.storage, self.offset, self.size, self.stride, False,
                     collections.OrderedDict(), TorchGlobal("torch", "float16")))

    shared = Storage("0", "FloatStorage", rng.standard_normal(24).astype(np.float32))
    kinds = [("1", "DoubleStorage", np.float64), ("2", "HalfStorage", np.float16),
             ("3", "LongStorage", np.int64), ("4", "IntStorage", np.int32),
             ("5", "ShortStorage", np.int16), ("6", "CharStorage", np.int8),
             ("7", "ByteStorage", np.uint8), ("8", "BoolStorage", np.bool_),
             ("9", "BFloat16Storage", np.uint16)]
    views = collections.OrderedDict([
        ("w", Tensor(shared, 0, (2, 3, 2), (6, 2, 1))),
        ("b", Tensor(shared, 12, (3,), (1,), param=True)),
        ("t", Tensor(shared, 15, (3, 2), (1, 3))),
        ("s", Tensor(shared, 23, (), ())),
        ("e", Tensor(shared, 0, (0, 2), (2, 1))),
        ("x", Tensor(shared, 0, (4, 3), (0, 1))),
    ])
    for key, kind, dt in kinds:
        views[kind] = Tensor(Storage(key, kind, (rng.standard_normal(4) * 5).astype(dt)), 1,
                             (3,), (1,))
    half = rng.standard_normal(4).astype(np.float16)
    seeds = {
        "views": views,
        "nested": {"epoch": 3, "state_dict": torch_state_dict(
            {"a.weight": rng.standard_normal((2, 2)).astype(np.float32),
             "a.num_batches_tracked": np.array(5, np.int64)}),
            "hist": [1.5, (2, "x"), None, True, b"raw"], "ids": {1: "one"}},
        "v3": collections.OrderedDict(
            h=V3(Storage("0", "UntypedStorage", half.view(np.uint8)), 0, (2, 2), (2, 1))),
    }
    n = 0
    for name, obj in seeds.items():
        torch_write_zip(os.path.join(out, f"{name}.pth"), obj)
        torch_write_legacy(os.path.join(out, f"{name}.pt"), obj)
        n += 2
    torch_write_zip(os.path.join(out, "views_be.pth"), views, byteorder="big")
    torch_write_legacy(os.path.join(out, "views_be.pt"), views, little=False)
    n += 2
    from conftest import MTCNN_WEIGHTS

    for f in ("pnet.pt", "rnet.pt"):
        p = os.path.join(os.environ.get("GLAE_MTCNN_WEIGHTS", MTCNN_WEIGHTS), f)
        if os.path.isfile(p):
            with open(p, "rb") as src, open(os.path.join(out, f"mtcnn_{f}"), "wb") as dst:
                dst.write(src.read())
            n += 1
    return n


def _checkpoint_seeds(out):
    """glae checkpoints (with a real config and trainer state), one in the previous
    format (no header checksums) and a foreign safetensors file."""
    import json
    import struct

    from glae import checkpoint
    from glae.config import Config

    rng = np.random.default_rng(1)
    tensors = {"conv1.weight": rng.standard_normal((2, 3, 3, 3)).astype(np.float32),
               "bn1.num_batches_tracked": np.array(7, np.int64),
               "fc.bias": rng.standard_normal(3), "ids": np.arange(6, dtype=np.int32),
               "h": rng.standard_normal(4).astype(np.float16), "flag": np.array([True]),
               "empty": np.zeros((0, 4), np.float32)}
    meta = {"format": "glae-checkpoint-1",
            "config": json.loads(Config(backbone="resnet18", proj_width=32).to_json()),
            "state": {"stage": 1, "epoch": 2, "batch": 0, "step": 10, "best": [1, 3.5]}}
    checkpoint.save(os.path.join(out, "glae.safetensors"), tensors, meta)
    checkpoint.save(os.path.join(out, "plain.safetensors"), {"w": np.ones(3, np.float32)})
    raw = open(os.path.join(out, "glae.safetensors"), "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    info = json.loads(header["__metadata__"]["__glae__"])
    del info["meta_crc32"], info["header_crc32"]
    header["__metadata__"]["__glae__"] = json.dumps(info)
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    with open(os.path.join(out, "previous_format.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb + raw[8 + n:])
    foreign = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
               "__metadata__": {"format": "pt"}}
    hb = json.dumps(foreign).encode()
    with open(os.path.join(out, "foreign.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb + struct.pack("<2f", 1.5, -2.0))
    return 4


def write_seeds(folder):
    for target, fn in (("torchfile", _torch_seeds), ("checkpoint", _checkpoint_seeds)):
        out = os.path.join(folder, target)
        os.makedirs(out, exist_ok=True)
        print(f"{fn(out)} seeds in {out}")


# ---- the harness ------------------------------------------------------------------------------


def fuzz(target, argv):
    import atheris

    with atheris.instrument_imports():
        from glae import checkpoint, torchfile

    load, allowed = {
        "torchfile": (torchfile.load, torchfile.TorchFileError),
        "checkpoint": (checkpoint.load, checkpoint.CheckpointError),
    }[target]
    warnings.simplefilter("ignore", checkpoint.UnverifiedCheckpointWarning)
    folder = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    fd, path = tempfile.mkstemp(prefix=f"glae-fuzz-{target}-", dir=folder)
    # libFuzzer ends the process with exit(): unlink now and read through /proc
    os.unlink(path)
    path = f"/proc/self/fd/{fd}"

    def one_input(data):
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        try:
            load(path)
        except allowed:
            pass

    atheris.Setup([sys.argv[0]] + argv, one_input)
    atheris.Fuzz()


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS + ("seeds",):
        sys.exit(__doc__)
    if sys.argv[1] == "seeds":
        if len(sys.argv) != 3:
            sys.exit("usage: python bench/fuzz_torchfile.py seeds FOLDER")
        write_seeds(sys.argv[2])
    else:
        fuzz(sys.argv[1], sys.argv[2:])


if __name__ == "__main__":
    main()
