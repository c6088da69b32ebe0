"""glae.torchfile: PyTorch checkpoints without PyTorch. The tests write their own files in
both layouts with the pickle module (tests/helpers.py's torch.save writer, using the global
names torch itself writes: torch._utils._rebuild_tensor_v2, torch.FloatStorage, ...), then
read them back."""
import collections
import hashlib
import importlib.util
import os
import pickle
import zipfile

import numpy as np
import pytest

from glae import torchfile
from glae.torchfile import TorchFileError

from conftest import MTCNN_WEIGHTS as _MTCNN_WEIGHTS
from helpers import Storage, Tensor
from helpers import TorchGlobal as G
from helpers import torch_write_legacy as write_legacy
from helpers import torch_write_zip as write_zip

# conftest resolves ../shared relative to the checkout; a worktree elsewhere can point
# at the weights with GLAE_MTCNN_WEIGHTS
MTCNN_WEIGHTS = os.environ.get("GLAE_MTCNN_WEIGHTS", _MTCNN_WEIGHTS)

# the two torch.save layouts (tests/helpers.py), for the tests run on both
WRITERS = {"legacy": write_legacy, "zip": write_zip}


def _sample(rng):
    """An OrderedDict of tensors covering views: shared storage with offsets, a
    transposed (non-contiguous) view, int64, float64, float16, bfloat16, a parameter, a
    0-d and an empty tensor. Returns (obj, expected dict)."""
    shared = Storage("0", "FloatStorage", rng.standard_normal(40).astype(np.float32))
    base = shared.data
    d64 = Storage("1", "DoubleStorage", rng.standard_normal(6))
    i64 = Storage("2", "LongStorage", np.arange(5, dtype=np.int64) - 2)
    h16 = Storage("3", "HalfStorage", rng.standard_normal(4).astype(np.float16))
    bf = rng.standard_normal(3).astype(np.float32)
    bf_bits = (bf.view(np.uint32) >> 16).astype(np.uint16)
    b16 = Storage("4", "BFloat16Storage", bf_bits)
    obj = collections.OrderedDict([
        ("conv.weight", Tensor(shared, 0, (2, 3, 2, 2), (12, 4, 2, 1))),
        ("conv.bias", Tensor(shared, 24, (2,), (1,), param=True)),
        ("t", Tensor(shared, 26, (3, 4), (1, 3))),  # transposed view of a (4, 3) block
        ("scalar", Tensor(shared, 39, (), ())),
        ("empty", Tensor(shared, 0, (0, 3), (3, 1))),
        ("d", Tensor(d64, 0, (2, 3), (3, 1))),
        ("n", Tensor(i64, 1, (4,), (1,))),
        ("h", Tensor(h16, 0, (4,), (1,))),
        ("bf", Tensor(b16, 0, (3,), (1,))),
    ])
    want = {
        "conv.weight": base[:24].reshape(2, 3, 2, 2),
        "conv.bias": base[24:26],
        "t": base[26:38].reshape(4, 3).T,
        "scalar": np.array(base[39]),
        "empty": np.zeros((0, 3), np.float32),
        "d": d64.data.reshape(2, 3).astype(np.float32),
        "n": i64.data[1:5],
        "h": h16.data.astype(np.float32),
        "bf": (bf_bits.astype(np.uint32) << 16).view(np.float32),
    }
    return obj, want


# ---- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_round_trip(tmp_path, rng, fmt):
    obj, want = _sample(rng)
    p = tmp_path / f"m.{fmt}"
    WRITERS[fmt](p, obj)
    got = torchfile.load_state_dict(p)
    assert list(got) == list(want)
    for k, v in want.items():
        g = got[k]
        assert g.shape == v.shape, k
        assert g.flags.c_contiguous, k
        assert g.dtype == (np.int64 if k == "n" else np.float32), k
        np.testing.assert_array_equal(g, v, err_msg=k)


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_keep_dtype_and_nesting(tmp_path, rng, fmt):
    obj, want = _sample(rng)
    p = tmp_path / "ck"
    WRITERS[fmt](p, {"epoch": 3, "state_dict": obj, "hist": [1.5, (2, "x")]})
    got = torchfile.load(p, float32=False)
    assert got["epoch"] == 3 and got["hist"] == [1.5, (2, "x")]
    assert got["state_dict"]["d"].dtype == np.float64
    assert got["state_dict"]["h"].dtype == np.float16
    sd = torchfile.load_state_dict(p)  # unwraps "state_dict"
    np.testing.assert_array_equal(sd["t"], want["t"])


def test_big_endian(tmp_path, rng):
    obj, want = _sample(rng)
    write_legacy(tmp_path / "be.pt", obj, little=False)
    write_zip(tmp_path / "be.zip", obj, byteorder="big")
    for p in ("be.pt", "be.zip"):
        got = torchfile.load_state_dict(tmp_path / p)
        for k, v in want.items():
            np.testing.assert_array_equal(got[k], v, err_msg=f"{p} {k}")


def test_zip_other_prefix_and_no_byteorder(tmp_path, rng):
    obj, want = _sample(rng)
    write_zip(tmp_path / "r.pth", obj, prefix="resnet18-f37072fd", byteorder=None)
    got = torchfile.load_state_dict(tmp_path / "r.pth")
    np.testing.assert_array_equal(got["conv.weight"], want["conv.weight"])


# ---- safety and damaged files -------------------------------------------------------------


class Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (G("builtins", "open"), (self.path, "w"))


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_foreign_global_refused(tmp_path, fmt):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil"
    WRITERS[fmt](p, collections.OrderedDict([("x", Evil(str(marker)))]))
    with pytest.raises(TorchFileError, match="builtins.open"):
        torchfile.load(p)
    assert not marker.exists()


def test_os_system_refused(tmp_path):
    p = tmp_path / "evil.pt"
    body = b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueR."
    with open(p, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({"little_endian": True}, f, protocol=2)
        f.write(body)
    with pytest.raises(TorchFileError, match="os.system"):
        torchfile.load(p)


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_truncated(tmp_path, rng, fmt):
    obj, _ = _sample(rng)
    p = tmp_path / "full"
    WRITERS[fmt](p, obj)
    data = p.read_bytes()
    cuts = sorted({1, 10, 30, len(data) // 3, len(data) // 2, len(data) - 100, len(data) - 1})
    for cut in cuts:
        q = tmp_path / f"cut{cut}"
        q.write_bytes(data[:cut])
        with pytest.raises(TorchFileError):
            torchfile.load(q)


def test_foreign_files(tmp_path):
    cases = {
        "empty": b"",
        "text": b"hello world, not a checkpoint\n",
        "random": bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8)),
        "plain_pickle": pickle.dumps({"a": 1}, protocol=2),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(TorchFileError):
            torchfile.load(tmp_path / name)
    with zipfile.ZipFile(tmp_path / "z.zip", "w") as z:
        z.writestr("readme.txt", "not torch")
    with pytest.raises(TorchFileError, match="data.pkl"):
        torchfile.load(tmp_path / "z.zip")
    assert issubclass(TorchFileError, ValueError)


def test_missing_storage_and_bad_geometry(tmp_path, rng):
    s = Storage("0", "FloatStorage", np.zeros(4, np.float32))
    write_zip(tmp_path / "a.zip", collections.OrderedDict([("x", Tensor(s, 2, (3,), (1,)))]))
    with pytest.raises(TorchFileError, match="reads past"):
        torchfile.load(tmp_path / "a.zip")
    p = tmp_path / "b.zip"
    write_zip(p, collections.OrderedDict([("x", Tensor(s, 0, (2,), (1,)))]))
    with zipfile.ZipFile(p) as z:
        items = {n: z.read(n) for n in z.namelist() if not n.endswith("data/0")}
    with zipfile.ZipFile(p, "w") as z:
        for n, d in items.items():
            z.writestr(n, d)
    with pytest.raises(TorchFileError, match="missing"):
        torchfile.load(p)


def test_state_dict_rejects_non_tensors(tmp_path):
    write_zip(tmp_path / "x.zip", {"a": 1})
    with pytest.raises(TorchFileError, match="not a tensor"):
        torchfile.load_state_dict(tmp_path / "x.zip")


# ---- the real MTCNN files -------------------------------------------------------------------

MTCNN_FILES = {
    "pnet.pt": ("a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f", 6632),
    "rnet.pt": ("bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86", 100178),
    "onet.pt": ("165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d", 389040),
}


@pytest.mark.skipif(not os.path.isdir(MTCNN_WEIGHTS), reason="shared MTCNN weights absent")
def test_mtcnn_files():
    from glae import _C
    spec = dict(zip(["pnet.pt", "rnet.pt", "onet.pt"], _C.mtcnn_spec()))
    for name, (sha, count) in MTCNN_FILES.items():
        path = os.path.join(MTCNN_WEIGHTS, name)
        assert hashlib.sha256(open(path, "rb").read()).hexdigest() == sha
        sd = torchfile.load_state_dict(path)
        assert sum(v.size for v in sd.values()) == count
        assert [(k, v.shape) for k, v in sd.items()] == [(k, tuple(s)) for k, s in spec[name]]
        assert all(v.dtype == np.float32 and np.all(np.isfinite(v)) for v in sd.values())


# ---- cross-check against PyTorch where it is installed -----------------------------------


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
@pytest.mark.parametrize("zip_format", [False, True])
def test_against_torch(tmp_path, zip_format):
    import torch
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    sd = collections.OrderedDict(
        w=torch.randn(4, 3, 3, 3, generator=g), t=base.t(), s=base[2:, 1:],
        n=torch.tensor(7), h=torch.randn(3, generator=g).half(), d=torch.randn(2, generator=g).double())
    p = tmp_path / "t.pt"
    torch.save(sd, p, _use_new_zipfile_serialization=zip_format)
    got = torchfile.load_state_dict(p)
    for k, v in sd.items():
        want = v.numpy()
        np.testing.assert_array_equal(got[k], want.astype(np.float32) if want.dtype.kind == "f" else want)
    if os.path.isdir(MTCNN_WEIGHTS):
        ref = torch.load(os.path.join(MTCNN_WEIGHTS, "onet.pt"), weights_only=True)
        mine = torchfile.load_state_dict(os.path.join(MTCNN_WEIGHTS, "onet.pt"))
        for k, v in ref.items():
            np.testing.assert_array_equal(mine[k], v.numpy())
