"""Checkpoints: safetensors layout round trip, atomic writes, strict validation."""
import json
import os
import struct

import numpy as np
import pytest

from glae import checkpoint
from glae.checkpoint import CheckpointError


def sample_tensors(rng):
    return {
        "conv1.weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "bn1.num_batches_tracked": np.array(7, np.int64),
        "fc.bias": rng.standard_normal(5),  # float64
        "ids": np.arange(6, dtype=np.int32).reshape(2, 3),
        "mask": (rng.random(9) < 0.5).astype(np.uint8),
        "empty": np.zeros((0, 4), np.float32),
    }


META = {"config": {"arch": "resnet18", "k": 101, "lr": 0.005}, "epoch": 12,
        "best_mae": 2.5, "note": "stage 1"}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k])


def test_round_trip(tmp_path, rng):
    t = sample_tensors(rng)
    path = tmp_path / "model.safetensors"
    checkpoint.save(path, t, META)
    t2, meta = checkpoint.load(path)
    assert_same(t, t2)
    assert meta == META
    for a in t2.values():
        assert a.flags.writeable and a.flags.c_contiguous and not isinstance(a, np.memmap)
    # only the checkpoint is left in the folder
    assert os.listdir(tmp_path) == ["model.safetensors"]


def test_layout_on_disk(tmp_path):
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, {"b": np.array([1, 2], np.int32), "a": np.array([1.5], np.float64)},
                    {"epoch": 3})
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0
    header = json.loads(raw[8:8 + n])
    assert header["a"] == {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}
    assert header["b"] == {"dtype": "I32", "shape": [2], "data_offsets": [8, 16]}
    assert header["__metadata__"]["epoch"] == "3"  # values are JSON strings
    data = raw[8 + n:]
    assert struct.unpack("<d", data[0:8]) == (1.5,) and struct.unpack("<2i", data[8:16]) == (1, 2)


def test_non_contiguous_big_endian_and_scalar(tmp_path):
    t = {"strided": np.arange(12.0).reshape(3, 4)[:, ::2], "be": np.arange(4, dtype=">i8"),
         "scalar": np.array(2.5, np.float32), "flag": np.array([True, False])}
    checkpoint.save(tmp_path / "x", t)
    t2, meta = checkpoint.load(tmp_path / "x")
    assert meta == {}
    for k in t:
        np.testing.assert_array_equal(t2[k], t[k])
        assert t2[k].shape == t[k].shape and t2[k].dtype.isnative
    assert t2["scalar"].ndim == 0


def test_overwrite_replaces(tmp_path, rng):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, {"w": np.zeros(3, np.float32)}, {"epoch": 1})
    checkpoint.save(path, {"w": np.ones(5, np.float32)}, {"epoch": 2})
    t, meta = checkpoint.load(path)
    np.testing.assert_array_equal(t["w"], np.ones(5, np.float32))
    assert meta == {"epoch": 2}


def test_failure_mid_write_keeps_old_file(tmp_path, rng, monkeypatch):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, sample_tensors(rng), {"epoch": 1})
    before = path.read_bytes()
    calls = []

    def crash_after_one(f, a):
        if calls:
            f.write(b"\x00" * 3)  # half a tensor, then the 'crash'
            raise OSError("disk full (simulated)")
        calls.append(1)
        f.write(a.reshape(-1).view(np.uint8).data)

    monkeypatch.setattr(checkpoint, "_write_array", crash_after_one)
    with pytest.raises(OSError, match="simulated"):
        checkpoint.save(path, sample_tensors(rng), {"epoch": 2})
    assert path.read_bytes() == before  # the old checkpoint is intact
    assert os.listdir(tmp_path) == ["c.safetensors"]  # and the temporary file is gone
    assert checkpoint.load(path)[1] == {"epoch": 1}


def test_truncated_file(tmp_path, rng):
    path = tmp_path / "c.safetensors"
    checkpoint.save(path, sample_tensors(rng), META)
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    for cut, msg in [(0, "truncated"), (5, "truncated"), (8 + n // 2, "truncated"),
                     (len(raw) - 1, "truncated file")]:
        path.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError, match=msg):
            checkpoint.load(path)


def test_damaged_data_bytes_are_refused(tmp_path, rng):
    """One flipped byte in a tensor's data (the header intact) is caught by that tensor's
    CRC-32 and named; a file without checksums (written before them) still loads."""
    path = tmp_path / "c.safetensors"
    tensors = sample_tensors(rng)
    checkpoint.save(path, tensors, META)
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    name = next(k for k, v in header.items() if k != "__metadata__"
                and v["data_offsets"][1] > v["data_offsets"][0])
    at = 8 + n + header[name]["data_offsets"][0]
    raw[at] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=f"{name}.*checksum.*corrupted"):
        checkpoint.load(path)
    # the same file as an older glae wrote it: no checksums in its __glae__ entry
    info = json.loads(header["__metadata__"]["__glae__"])
    assert set(info["crc32"]) == set(tensors)
    for key in ("crc32", "meta_crc32", "header_crc32"):
        del info[key]
    header["__metadata__"]["__glae__"] = json.dumps(info)
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    raw[at] ^= 0x10  # undo the damage
    path.write_bytes(struct.pack("<Q", len(hb)) + hb + bytes(raw[8 + n:]))
    with pytest.warns(checkpoint.UnverifiedCheckpointWarning, match="header and tensors"):
        back, meta = checkpoint.load(path)
    assert meta == META and back.keys() == tensors.keys()
    # checksums that do not name the tensors: a corrupted header
    info["crc32"] = {"other": 1}
    header["__metadata__"]["__glae__"] = json.dumps(info)
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    path.write_bytes(struct.pack("<Q", len(hb)) + hb + bytes(raw[8 + n:]))
    with pytest.raises(CheckpointError, match="checksums"), \
            pytest.warns(checkpoint.UnverifiedCheckpointWarning):
        checkpoint.load(path)


def test_save_into_a_missing_folder_names_the_path(tmp_path, rng):
    target = tmp_path / "no" / "dir" / "m.safetensors"
    with pytest.raises(FileNotFoundError, match=r"cannot write .*m\.safetensors: folder not found"):
        checkpoint.save(target, sample_tensors(rng), META)
    assert not (tmp_path / "no").exists()


def test_foreign_files(tmp_path):
    path = tmp_path / "f"
    foreign = [
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 100, "not a safetensors checkpoint"),  # huge length
        (b"PK\x03\x04" + b"\x00" * 60, "not a safetensors checkpoint"),  # a zip (torch.save)
        (struct.pack("<Q", 4) + b"\xff\xfe\x00\x01", "not UTF-8"),
        (struct.pack("<Q", 4) + b"[1] ", "not a JSON object"),
        (struct.pack("<Q", 0), "header length 0"),
    ]
    for raw, msg in foreign:
        path.write_bytes(raw)
        with pytest.raises(CheckpointError, match=msg):
            checkpoint.load(path)
    assert issubclass(CheckpointError, ValueError)
    with pytest.raises(FileNotFoundError):
        checkpoint.load(tmp_path / "missing")


def write_raw(path, header, data=b""):
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + data)


@pytest.mark.parametrize("header,data,msg", [
    ('{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]', b"\0" * 8, "invalid JSON"),
    ({"a": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4, "unsupported dtype 'BF16'"),
    ({"a": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, "missing data_offsets"),
    ({"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}, b"\0" * 8, "non-negative ints"),
    ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "needs 12"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, "begin <= end"),
    ({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, "truncated"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12, "trailing bytes"),
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
      "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12, "overlap"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, b"\0" * 8, "hole"),
    ({"__metadata__": {"epoch": 3}}, b"", "must map strings to strings"),
    ({"__metadata__": {"__glae__": '{"version": 99}'}}, b"", "newer"),
    ({"__metadata__": {"__glae__": '{"version": 1}', "x": "{bad"}}, b"", r"metadata\['x'\] is not valid JSON"),
    ({"a": [1, 2]}, b"", "entry is not a JSON object"),
])
@pytest.mark.filterwarnings("ignore::glae.checkpoint.UnverifiedCheckpointWarning")
def test_bad_headers(tmp_path, header, data, msg):
    path = tmp_path / "bad"
    if isinstance(header, str):
        h = header.encode()
        path.write_bytes(struct.pack("<Q", len(h)) + h + data)
    else:
        write_raw(path, header, data)
    with pytest.raises(CheckpointError, match=msg):
        checkpoint.load(path)


def _header(raw):
    (n,) = struct.unpack("<Q", raw[:8])
    return n, json.loads(raw[8:8 + n])


def _rewrite_header(path, header, data):
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    path.write_bytes(struct.pack("<Q", len(hb)) + hb + data)


def _glae_config():
    from glae.config import Config

    return json.loads(Config(backbone="resnet50", proj_width=512, stage1_epochs=90).to_json())


# (entry, the stored text, its replacement of the same length): a digit changed in place
EDITS = [
    ("config", rb'\"momentum\": 0.9', rb'\"momentum\": 0.8'),
    ("config", rb'\"base_lr1\": 0.005', rb'\"base_lr1\": 0.007'),
    ("config", rb'\"base_lr2\": 0.001', rb'\"base_lr2\": 0.004'),
    ("config", rb'\"stage1_epochs\": 90', rb'\"stage1_epochs\": 30'),
    ("config", rb'\"stage2_epochs\": 8', rb'\"stage2_epochs\": 9'),
    ("config", rb'\"proj_width\": 512', rb'\"proj_width\": 612'),
    ("state", rb'\"epoch\": 12', rb'\"epoch\": 13'),
]


@pytest.mark.parametrize("entry,old,new", EDITS, ids=[e[1].decode().split('\\"')[1] for e in EDITS])
def test_changed_metadata_digit_is_refused(tmp_path, rng, entry, old, new):
    """Finding (issue 17): the CRC covered tensor bytes only, so a changed digit in the
    stored config (momentum, learning rates, epochs, projection width) loaded without a
    word. Each metadata entry now has its checksum; the error names file and entry."""
    path = tmp_path / "run.safetensors"
    meta = {"config": _glae_config(), "state": {"stage": 1, "epoch": 12, "step": 480}}
    checkpoint.save(path, sample_tensors(rng), meta)
    assert checkpoint.load(path)[1] == meta
    raw = path.read_bytes()
    assert raw.count(old) == 1, old
    path.write_bytes(raw.replace(old, new))
    with pytest.raises(CheckpointError, match=rf"{path}: metadata entry '{entry}' does not "
                                              "match the checksum"):
        checkpoint.load(path)


@pytest.mark.parametrize("old,new", [
    (b'"shape":[4,3,3,3]', b'"shape":[3,4,3,3]'),  # same bytes, another shape
    (b'"dtype":"I32","shape":[2,3]', b'"dtype":"F32","shape":[2,3]'),  # another dtype
    (rb'\"header_crc32\": ', rb'\"header_crc32\": 1'),  # the checksum itself (in __glae__)
])
def test_changed_tensor_table_is_refused(tmp_path, rng, old, new):
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, sample_tensors(rng), META)
    raw = path.read_bytes()
    n, _ = _header(raw)
    assert raw[8:8 + n].count(old) == 1
    head = raw[8:8 + n].replace(old, new)
    head = head.rstrip(b" ")
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + raw[8 + n:])
    with pytest.raises(CheckpointError, match=rf"{path}: the tensor table .* do not match the "
                                              "header checksum"):
        checkpoint.load(path)


def test_added_or_removed_metadata_entry_is_refused(tmp_path, rng):
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, sample_tensors(rng), META)
    raw = path.read_bytes()
    n, header = _header(raw)
    header["__metadata__"]["extra"] = "1"
    _rewrite_header(path, header, raw[8 + n:])
    with pytest.raises(CheckpointError, match="not saved: 'extra'"):
        checkpoint.load(path)
    del header["__metadata__"]["extra"], header["__metadata__"]["epoch"]
    _rewrite_header(path, header, raw[8 + n:])
    with pytest.raises(CheckpointError, match="missing: 'epoch'"):
        checkpoint.load(path)


def test_files_before_header_checksums_load_with_a_note(tmp_path, rng):
    """A file of the previous glae (tensor CRCs, no metadata or header checksum) loads,
    with one UnverifiedCheckpointWarning line; its tensor CRCs are still checked. One of
    the two header checksums without the other is damage, not age."""
    path = tmp_path / "old.safetensors"
    tensors = sample_tensors(rng)
    checkpoint.save(path, tensors, META)
    raw = path.read_bytes()
    n, header = _header(raw)
    info = json.loads(header["__metadata__"]["__glae__"])
    info.pop("meta_crc32"), info.pop("header_crc32")
    header["__metadata__"]["__glae__"] = json.dumps(info)
    _rewrite_header(path, header, raw[8 + n:])
    with pytest.warns(checkpoint.UnverifiedCheckpointWarning) as notes:
        back, meta = checkpoint.load(path)
    assert len(notes) == 1 and "\n" not in str(notes[0].message)
    assert str(notes[0].message) == (f"{path}: written by an older glae without checksums "
                                     "over its header: loaded unverified")
    assert meta == META
    assert_same(back, tensors)
    damaged = bytearray(path.read_bytes())
    damaged[-1] ^= 1
    path.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match="checksum saved"), \
            pytest.warns(checkpoint.UnverifiedCheckpointWarning):
        checkpoint.load(path)
    for keep in ("meta_crc32", "header_crc32"):
        checkpoint.save(path, tensors, META)
        raw = path.read_bytes()
        n, header = _header(raw)
        info = json.loads(header["__metadata__"]["__glae__"])
        info.pop("header_crc32" if keep == "meta_crc32" else "meta_crc32")
        header["__metadata__"]["__glae__"] = json.dumps(info)
        _rewrite_header(path, header, raw[8 + n:])
        with pytest.raises(CheckpointError, match="one of meta_crc32 and header_crc32"):
            checkpoint.load(path)


@pytest.mark.filterwarnings("ignore::glae.checkpoint.UnverifiedCheckpointWarning")
def test_deeply_nested_json_is_checkpointerror(tmp_path):
    """JSON nested 100,000 deep (in the header, the __glae__ entry or a metadata value)
    raised RecursionError from the json module."""
    deep = "[" * 100_000 + "]" * 100_000
    for where, header in [
        ("corrupted header", '{"a": %s}' % deep),
        ("corrupted __glae__", json.dumps({"__metadata__": {"__glae__": deep}})),
        (r"metadata\['x'\] is JSON nested too deeply",
         json.dumps({"__metadata__": {"__glae__": '{"version": 1}', "x": deep}})),
    ]:
        h = header.encode()
        (tmp_path / "deep").write_bytes(struct.pack("<Q", len(h)) + h)
        with pytest.raises(CheckpointError, match=where):
            checkpoint.load(tmp_path / "deep")


def test_duplicate_keys(tmp_path):
    h = b'{"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}'
    (tmp_path / "d").write_bytes(struct.pack("<Q", len(h)) + h + b"\0")
    with pytest.raises(CheckpointError, match="duplicate key 'a'"):
        checkpoint.load(tmp_path / "d")


def test_foreign_metadata_stays_strings(tmp_path):
    write_raw(tmp_path / "pt", {"__metadata__": {"format": "pt"},
                                "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
              struct.pack("<f", 1.25))
    t, meta = checkpoint.load(tmp_path / "pt")
    assert meta == {"format": "pt"} and t["w"].tolist() == [1.25]


def test_save_bad_arguments(tmp_path):
    p = tmp_path / "x"
    with pytest.raises(TypeError, match="tensors must be a dict"):
        checkpoint.save(p, [np.zeros(2)])
    with pytest.raises(TypeError, match="must be a numpy.ndarray"):
        checkpoint.save(p, {"a": [1.0, 2.0]})
    with pytest.raises(TypeError, match="tensor names must be non-empty str"):
        checkpoint.save(p, {1: np.zeros(2)})
    with pytest.raises(ValueError, match="reserved"):
        checkpoint.save(p, {"__metadata__": np.zeros(2)})
    with pytest.raises(CheckpointError, match="cannot be stored"):
        checkpoint.save(p, {"c": np.zeros(2, np.complex64)})
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        checkpoint.save(p, {"a": np.zeros(2)}, {"obj": object()})
    with pytest.raises(TypeError, match="metadata keys must be str"):
        checkpoint.save(p, {"a": np.zeros(2)}, {1: 2})
    with pytest.raises(ValueError, match="reserved"):
        checkpoint.save(p, {"a": np.zeros(2)}, {"__glae__": 1})
    assert not os.listdir(tmp_path)  # nothing written by failed calls


def test_readable_by_safetensors_package(tmp_path, rng):
    st = pytest.importorskip("safetensors.numpy")
    from safetensors import safe_open

    t = sample_tensors(rng)
    path = tmp_path / "m.safetensors"
    checkpoint.save(path, t, META)
    assert_same(t, st.load_file(str(path)))
    with safe_open(str(path), framework="np") as f:
        assert json.loads(f.metadata()["config"]) == META["config"]
    # and theirs by us
    st.save_file(t, str(tmp_path / "theirs.safetensors"), metadata={"format": "pt"})
    t2, meta = checkpoint.load(tmp_path / "theirs.safetensors")
    assert_same(t, t2)
    assert meta == {"format": "pt"}


@pytest.mark.filterwarnings("ignore::glae.checkpoint.UnverifiedCheckpointWarning")
def test_mutated_files_raise_only_checkpointerror(tmp_path, rng):
    """300 copies of a checkpoint with 1-4 bytes changed, cut or duplicated: each loads
    (a change the checksums do not see cannot exist in the header) or raises
    CheckpointError naming the file; never another exception."""
    base = tmp_path / "base.safetensors"
    checkpoint.save(base, sample_tensors(rng), {"config": _glae_config(), **META})
    raw = base.read_bytes()
    n, _ = _header(raw)
    p = tmp_path / "m"
    refused = 0
    for i in range(300):
        b = bytearray(raw)
        kind = rng.integers(3)
        if kind == 0:
            for _ in range(rng.integers(1, 5)):  # two in three in the header
                at = rng.integers(8 + n) if rng.random() < 2 / 3 else rng.integers(len(b))
                b[at] = rng.integers(256)
        elif kind == 1:
            del b[rng.integers(len(b)):]
        else:
            at = rng.integers(len(b))
            b[at:at] = b[at:at + rng.integers(1, 64)]
        p.write_bytes(bytes(b))
        try:
            t, meta = checkpoint.load(p)
        except CheckpointError as e:
            assert str(e).startswith(f"{p}: "), e
            refused += 1
        else:  # what loads is what was saved (a byte changed in the padding, say)
            assert meta["config"] == _glae_config() and meta["epoch"] == META["epoch"], i
    assert refused > 250
