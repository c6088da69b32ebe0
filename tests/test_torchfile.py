"""glae.torchfile: PyTorch checkpoints without PyTorch. The tests write their own files in
both layouts with the pickle module (tests/helpers.py's torch.save writer, using the global
names torch itself writes: torch._utils._rebuild_tensor_v2, torch.FloatStorage, ...), then
read them back."""
import collections
import hashlib
import importlib.util
import io
import os
import pickle
import struct
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


# ---- hostile files (issue 17): each finding of the hostile-input run, reproduced ------------


def _u(s):
    """A pickle BINUNICODE opcode pushing s."""
    b = s.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def zip_pickle(path, body, members=None):
    """A zip archive whose archive/data.pkl is the raw pickle `body` (plus `members`)."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", body)
        for name, data in (members or {}).items():
            z.writestr(f"archive/{name}", data)


def _float32_files(tmp_path):
    """A float32 tensor through FloatStorage (v2) and through UntypedStorage + torch.float32
    (v3, what PyTorch >= 2 writes): (paths, the values both must load as)."""
    values = np.arange(1, 7, dtype=np.float32) / 8
    v2 = tmp_path / "v2.pth"
    write_zip(v2, collections.OrderedDict(
        w=Tensor(Storage("0", "FloatStorage", values), 0, (2, 3), (3, 1))))

    class V3(Tensor):
        def __reduce__(self):
            return (G("torch._utils", "_rebuild_tensor_v3"),
                    (self.storage, 0, self.size, self.stride, False, collections.OrderedDict(),
                     G("torch", "float32")))

    v3 = tmp_path / "v3.pth"
    write_zip(v3, collections.OrderedDict(
        w=V3(Storage("0", "UntypedStorage", values.view(np.uint8)), 0, (2, 3), (3, 1))))
    return (v2, v3), values.reshape(2, 3)


def test_memo_references_are_rebuilt_once(tmp_path, rng):
    """Finding: a small file whose pickle reuses objects through memo references made the
    reader rebuild them once per path (time and memory doubling per level: a hang). Each
    object is now rebuilt once and stays shared, as the pickle shares it."""
    s = Storage("0", "FloatStorage", rng.standard_normal(3).astype(np.float32))
    x = [Tensor(s, 0, (3,), (1,))]
    for i in range(64):  # 2**64 paths to the bottom
        x = [x, x] if i % 2 else {"a": x, "b": x}
    p = tmp_path / "memo.pth"
    write_zip(p, x)
    assert p.stat().st_size < 2000
    got = torchfile.load(p)
    for i in reversed(range(64)):
        if i % 2:
            assert got[0] is got[1]
            got = got[0]
        else:
            assert got["a"] is got["b"]
            got = got["a"]
    np.testing.assert_array_equal(got[0], s.data)


def test_shared_tensor_is_one_array(tmp_path, rng):
    s = Storage("0", "FloatStorage", rng.standard_normal(4).astype(np.float32))
    t = Tensor(s, 0, (4,), (1,))
    write_legacy(tmp_path / "tied.pt", collections.OrderedDict([("enc", t), ("dec", t)]))
    got = torchfile.load(tmp_path / "tied.pt")
    assert got["enc"] is got["dec"]
    np.testing.assert_array_equal(got["enc"], s.data)


_TAMPER = {
    # BUILD with a dict state on a storage type: changed its dtype for every later load
    "storage_dict_state": b"\x80\x02ctorch\nFloatStorage\n}" + _u("code") + _u("f2") + b"sb0}.",
    # BUILD with (None, slot state): setattr on the stand-in
    "storage_slot_state": (b"\x80\x02ctorch\nFloatStorage\nN}" + _u("code") + _u("f2")
                           + b"s\x86b0}."),
    "dtype_dict_state": b"\x80\x02ctorch\nfloat32\n}" + _u("code") + _u("f2") + b"sb0}.",
    "rebuild_defaults": (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nN}" + _u("__defaults__")
                         + b"\x88NN\x87s\x86b0}."),
    "rebuild_dict_state": (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}" + _u("x")
                           + b"K\x01sb0}."),
    "ordereddict_class": b"\x80\x02ccollections\nOrderedDict\n}" + _u("x") + b"K\x01sb0}.",
}


@pytest.mark.parametrize("case", sorted(_TAMPER))
def test_stand_ins_cannot_be_changed_by_a_file(tmp_path, case):
    """Finding: one crafted file that loaded as {} changed the shared stand-in objects, so
    every later load in the process read float32 tensors as float16. The stand-ins are
    now made per load and refuse BUILD; later loads read what the file says."""
    (v2, v3), want = _float32_files(tmp_path)
    evil = tmp_path / f"{case}.pth"
    zip_pickle(evil, _TAMPER[case])
    with pytest.raises(TorchFileError, match=rf"{case}\.pth: archive/data\.pkl"):
        torchfile.load(evil)
    for p in (v2, v3):
        got = torchfile.load(p)["w"]
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want)
    assert torchfile._rebuild_tensor_v2.__defaults__ == (False, None, None)
    assert not torchfile._rebuild_tensor_v2.__dict__


def test_a_dtype_value_comes_back_as_its_name(tmp_path):
    zip_pickle(tmp_path / "d.pth", b"\x80\x02}" + _u("dtype") + b"ctorch\nhalf\ns.")
    assert torchfile.load(tmp_path / "d.pth") == {"dtype": "float16"}


def _one_float(tmp_path, size, stride, offset=0):
    s = Storage("0", "FloatStorage", np.ones(1, np.float32))
    p = tmp_path / "big.pth"
    write_zip(p, collections.OrderedDict(w=Tensor(s, offset, size, stride)))
    return p


@pytest.mark.parametrize("size,stride,msg", [
    ((2 ** 20, 2 ** 20), (0, 0), "4,398,046,511,104 bytes"),  # 4 TiB from one float
    ((2 ** 13, 2 ** 13), (0, 0), "268,435,456 bytes"),  # 256 MiB: fits, must not be made
    ((2 ** 64,), (0,), "bad geometry"),
    ((0, 2 ** 64), (0, 0), "bad geometry"),
    ((2 ** 40, 2 ** 40, 0), (0, 0, 0), "too large"),
    ((1,) * 40, (0,) * 40, "at most 32 dims"),
    ((2,), (-1,), "bad geometry"),
    ((3,), (True,), "bad geometry"),
    ("ab", (1, 1), "bad geometry"),
])
def test_huge_or_bad_geometry_refused_before_allocation(tmp_path, size, stride, msg):
    """Finding: a ~600-byte file declaring a 4 TiB tensor through stride 0 raised NumPy's
    MemoryError, and one whose size fits in memory was really allocated; huge sizes gave
    OverflowError. Now: TorchFileError naming the file and the tensor, before any array."""
    import tracemalloc

    p = _one_float(tmp_path, size, stride)
    assert p.stat().st_size < 1000
    tracemalloc.start()
    try:
        with pytest.raises(TorchFileError, match=rf"big\.pth: tensor 'w': .*{msg}"):
            torchfile.load(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_max_bytes(tmp_path):
    """A stride-0 (expanded) tensor is legitimate when it fits the allowance: max_bytes
    moves the limit both ways."""
    p = _one_float(tmp_path, (64, 64), (0, 0))
    np.testing.assert_array_equal(torchfile.load(p)["w"], np.ones((64, 64), np.float32))
    with pytest.raises(TorchFileError, match="max_bytes"):
        torchfile.load(p, max_bytes=1000)
    assert torchfile.load_state_dict(p, max_bytes=64 * 64 * 4 + 1000)["w"].shape == (64, 64)
    with pytest.raises(TypeError, match="max_bytes"):
        torchfile.load(p, max_bytes=-1)


def test_legacy_huge_storage_refused(tmp_path):
    """A legacy file whose storage claims 2**61 elements (pickle and record agreeing):
    OverflowError/MemoryError from the read before; now refused from the file's size."""
    import helpers

    st = Storage("0", "FloatStorage", np.ones(1, np.float32))

    class Lying(helpers._TorchPickler):
        def persistent_id(self, obj):
            pid = super().persistent_id(obj)
            return None if pid is None else pid[:4] + (2 ** 61,) + pid[5:]

    body = io.BytesIO()
    Lying(body, True).dump(collections.OrderedDict(w=Tensor(st, 0, (1,), (1,))))
    p = tmp_path / "huge.pt"
    with open(p, "wb") as f:
        for v in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
            pickle.dump(v, f, protocol=2)
        f.write(body.getvalue())
        pickle.dump(["0"], f, protocol=2)
        f.write(struct.pack("<q", 2 ** 61) + b"\0" * 4)
    with pytest.raises(TorchFileError, match=r"huge\.pt: storage '0': truncated"):
        torchfile.load(p)


@pytest.mark.parametrize("n", [2 ** 31, 2 ** 40, 2 ** 62])
@pytest.mark.parametrize("op", [b"\x8e", b"\x96"])  # BINBYTES8, BYTEARRAY8
def test_huge_pickle_length_field(tmp_path, capfd, n, op):
    """A pickle opcode declaring up to 4 EiB of bytes in a 20-byte pickle. The C
    unpickler reserves the size before reading: MemoryError, OverflowError or
    'truncated', all TorchFileError; and for BYTEARRAY8 a failed reservation makes
    CPython (3.11) print 'SystemError: deallocated bytearray object has exported
    buffers', so such a length is refused before the unpickler sees it."""
    for name, pre in (("s.pth", b""), ("t.pth", b"X\x01\x00\x00\x00\x960")):
        # t.pth: the same after a string holding the byte 0x96
        zip_pickle(tmp_path / name, b"\x80\x05" + pre + op + struct.pack("<Q", n) + b".")
        with pytest.raises(TorchFileError,
                           match=rf"{name[0]}\.pth: archive/data\.pkl \(the object pickle\)"):
            torchfile.load(tmp_path / name)
    assert "SystemError" not in capfd.readouterr().err


def _damage(path, fn):
    raw = bytearray(path.read_bytes())
    fn(raw)
    path.write_bytes(bytes(raw))


def test_damaged_zip_is_torchfileerror(tmp_path, rng):
    """Finding: zipfile.BadZipFile escaped (a bad CRC in archive/byteorder was read
    outside the guarded block). Every damaged archive is now a TorchFileError."""
    obj, _ = _sample(rng)
    base = tmp_path / "ok.pth"
    write_zip(base, obj)
    raw = base.read_bytes()

    def case(name, fn):
        p = tmp_path / f"{name}.pth"
        p.write_bytes(raw)
        _damage(p, fn)
        return p

    def flip_after(marker, delta=1):
        def fn(b):
            i = bytes(b).index(marker) + len(marker) + delta
            b[i] ^= 0x20
        return fn

    p = case("byteorder_crc", flip_after(b"archive/byteorder", 0))
    with pytest.raises(TorchFileError, match=r"byteorder_crc\.pth: archive/byteorder: damaged zip"):
        torchfile.load(p)
    p = case("pickle_crc", flip_after(b"archive/data.pkl", 4))
    with pytest.raises(TorchFileError, match=r"pickle_crc\.pth: archive/data\.pkl"):
        torchfile.load(p)
    p = case("storage_crc", flip_after(b"archive/data/3", 1))
    with pytest.raises(TorchFileError, match=r"storage_crc\.pth: storage '3'"):
        torchfile.load(p)

    def central_dir_offset(b):  # local headers now 'before the start of the file'
        i = bytes(b).rindex(b"PK\x05\x06")
        (off,) = struct.unpack("<I", b[i + 16:i + 20])
        b[i + 16:i + 20] = struct.pack("<I", off + 100000)

    p = case("offsets", central_dir_offset)
    with pytest.raises(TorchFileError, match=r"offsets\.pth: "):
        torchfile.load(p)

    # a deflated archive whose compressed pickle is damaged (zlib.error before)
    d = tmp_path / "deflated.pth"
    with zipfile.ZipFile(d, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", pickle.dumps({"a": list(range(200))}, protocol=2))
    _damage(d, flip_after(b"archive/data.pkl", 10))
    with pytest.raises(TorchFileError, match=r"deflated\.pth: archive/data\.pkl"):
        torchfile.load(d)

    # compression PyTorch never writes is refused before decompressing anything
    b = tmp_path / "bz2.pth"
    with zipfile.ZipFile(b, "w", zipfile.ZIP_BZIP2) as z:
        z.writestr("archive/data.pkl", pickle.dumps({}, protocol=2))
    with pytest.raises(TorchFileError, match="compression method 12"):
        torchfile.load(b)


def test_deep_nesting_refused(tmp_path):
    """Finding: RecursionError on deep nesting (100,000 nested lists in 200 kB); also a
    persistent id nested that deep (its repr in the message recursed)."""
    n = 100_000
    zip_pickle(tmp_path / "deep.pth", b"\x80\x02" + b"]" * n + b"a" * (n - 1) + b".")
    with pytest.raises(TorchFileError, match=rf"deep\.pth: object graph at .*more than "
                                             rf"{torchfile.MAX_DEPTH} deep"):
        torchfile.load(tmp_path / "deep.pth")
    zip_pickle(tmp_path / "pid.pth", b"\x80\x02" + b"]" * n + b"a" * (n - 1) + b"Q.")
    with pytest.raises(TorchFileError, match=r"pid\.pth: .*unexpected persistent id \[\[\["):
        torchfile.load(tmp_path / "pid.pth")
    ok = [[[[1]]]]
    write_zip(tmp_path / "ok.pth", ok)
    assert torchfile.load(tmp_path / "ok.pth") == ok


def test_cycles_and_foreign_values_refused(tmp_path, rng):
    loop = []
    loop.append(loop)
    zip_pickle(tmp_path / "cycle.pth", pickle.dumps(loop, protocol=2))
    with pytest.raises(TorchFileError, match=r"cycle\.pth: object graph at '\[0\]': .*cycle"):
        torchfile.load(tmp_path / "cycle.pth")
    # a class as a value, a tensor as a dict key
    zip_pickle(tmp_path / "cls.pth", b"\x80\x02}" + _u("k") + b"ccollections\nOrderedDict\ns.")
    with pytest.raises(TorchFileError, match=r"cls\.pth: object graph at 'k': .*OrderedDict"):
        torchfile.load(tmp_path / "cls.pth")
    s = Storage("0", "FloatStorage", np.ones(2, np.float32))
    write_zip(tmp_path / "key.pth", {Tensor(s, 0, (2,), (1,)): 1})
    with pytest.raises(TorchFileError, match=r"key\.pth: .*dict key is tensor"):
        torchfile.load(tmp_path / "key.pth")
    # and a shared storage declared with two sizes
    zip_pickle(tmp_path / "twice.pth",
               b"\x80\x02(" + _u("storage") + b"ctorch\nFloatStorage\n" + _u("0") + _u("cpu")
               + b"K\x02tQ(" + _u("storage") + b"ctorch\nFloatStorage\n" + _u("0") + _u("cpu")
               + b"K\x03tQ\x86.")
    with pytest.raises(TorchFileError, match="storage '0' declared twice"):
        torchfile.load(tmp_path / "twice.pth")


def test_io_errors_stay_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        torchfile.load(tmp_path / "missing.pth")
    with pytest.raises(IsADirectoryError):
        torchfile.load(tmp_path)
    if os.path.exists("/dev/null"):
        with pytest.raises(TorchFileError, match="/dev/null: file: empty file"):
            torchfile.load("/dev/null")


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_mutated_files_raise_only_torchfileerror(tmp_path, rng, fmt):
    """Every error maps to TorchFileError: 300 copies of a valid file with 1-4 bytes
    changed, cut or duplicated each either load or raise TorchFileError, never anything
    else (the hostile-input run saw BadZipFile, OverflowError, RecursionError, MemoryError)."""
    obj, _ = _sample(rng)
    base = tmp_path / f"base.{fmt}"
    WRITERS[fmt](base, {"epoch": 3, "state_dict": obj})
    raw = base.read_bytes()
    p = tmp_path / "m"
    outcomes = collections.Counter()
    for _ in range(300):
        b = bytearray(raw)
        kind = rng.integers(3)
        if kind == 0:
            for _ in range(rng.integers(1, 5)):
                b[rng.integers(len(b))] = rng.integers(256)
        elif kind == 1:
            del b[rng.integers(len(b)):]
        else:
            i = rng.integers(len(b))
            b[i:i] = b[i:i + rng.integers(1, 64)]
        p.write_bytes(bytes(b))
        try:
            torchfile.load(p)
            outcomes["loaded"] += 1
        except TorchFileError as e:
            assert str(e).startswith(f"{p}: "), e
            outcomes["refused"] += 1
    assert outcomes["refused"] > 100, outcomes


# ---- inputs the fuzzer (bench/fuzz_torchfile.py) found ------------------------------------

# atheris, 8,185 executions in: a 1,168-byte legacy file whose system-info pickle holds
# LONG_BINPUT 174417761; CPython's unpickler zero-fills a memo table of twice that many
# entries (2.7 GB, 14 s) before the pickle fails on a missing memo entry
FUZZ_OOM_MEMO = (
    "eNprYOriyvkzx+2nQtaKAEm9Bibfl8xAsraQQSNCgIGBoaAovyQ/OT8nviy1qDgzP6+QEaggghcok5NZUpKT"
    "Gp+al5KZmFfIVJSYnsoVwQiUMC60zWD1ZvErKbQL9GbM4Mvg78xg0AwqtC8pdAgqdIzgAqrxzCsJLskH6Sl0"
    "SgYykjP04ktLMnOKueKLUpNKM3NS4ktS84rzi+LLjLg0NDKYIYq4EPogdpkUOkPtckGxy7Wk0C2o0D2CB6gm"
    "OCO/CG6bBym2IeuE2Gda6Am1zwvFPu+SQp+gQt8IbqAa54zEIph1fqRYh6QRYptZoT/UtgAU2wJLCoOCCoPB"
    "tjlVlqTCbAshxTYkjRDbzAtDobaFodgWXlIYEVQYCbEtPz8HZlsUSbYhNEJssyiMhtoWg2JbbElhXFBhfAQ/"
    "yDa3nPzEEkMzmI0JJNmIqhliq2VhItTWJBRbk0sKU4IKU0uBST8WlPRBag0KGcG0YSETmDYqZIambxZo2mOF"
    "pgk2aGyxQ8ORA+pDTqidXKl6DAz/gYABBCTsGPbn7GN3q7dX/rTX9trV+/s5FRfa7VT6a7/sZaV9UfGz/Sbq"
    "//Yv/Bm6X77vla2ma94BkbN++xK43uyfX8W837r0wX7ukP59Cz9J2F06aGvfWiiyj3nedPt1L9z2a3kZ223+"
    "qcgAASwOQoJH8vfJatvfE605kdh24gDv3rw14oyzDgjlWz+aVXYRpu7AFJv0ozx79GF8BlTABKUZ0WgWoIf+"
    "QtnMQMwOF/8FZLOBxcB8xv/snDA2JxvjL7g4EMDtZGJg/v/7/18AnNhZLw=="
)


def test_fuzz_memo_index_refused_before_the_unpickler(tmp_path, monkeypatch):
    import base64
    import tracemalloc
    import zlib

    found = tmp_path / "oom-1e4fd760.pt"
    found.write_bytes(zlib.decompress(base64.b64decode("".join(FUZZ_OOM_MEMO))))
    small = tmp_path / "memo.pth"  # the same in 9 bytes: an empty list put at 2**31 - 1
    zip_pickle(small, b"\x80\x02]r\xff\xff\xff\x7f.")
    tracemalloc.start()
    try:
        with pytest.raises(TorchFileError, match=r"oom-1e4fd760\.pt: header pickles .*memo "
                                                 r"index 174417761 after only 10 opcodes"):
            torchfile.load(found)
        with pytest.raises(TorchFileError, match=r"memo\.pth: archive/data\.pkl .*memo index "
                                                 r"2147483647"):
            torchfile.load(small)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20
    # writers number memo entries 0, 1, 2, ...: what pickle itself writes still loads
    zip_pickle(small, pickle.dumps([[1], [2], {"a": [3]}], protocol=2))
    assert torchfile.load(small) == [[1], [2], {"a": [3]}]
    # and the opcode count is bounded too
    monkeypatch.setattr(torchfile, "MAX_NODES", 1000)
    zip_pickle(small, b"\x80\x02(" + b"]" * 2000 + b"l.")
    with pytest.raises(TorchFileError, match="more than 1,000 opcodes"):
        torchfile.load(small)


def test_zip_bomb_refused(tmp_path):
    """A deflated data.pkl expanding more than 64:1 (PyTorch never deflates)."""
    p = tmp_path / "bomb.pth"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02(" + b"]" * (8 << 20) + b"l.")
    assert p.stat().st_size < 64 << 10
    with pytest.raises(TorchFileError, match=r"bomb\.pth: archive/data\.pkl .*more than 64:1"):
        torchfile.load(p)
