"""The fuzz harnesses of bench/fuzz.py run without atheris on their seed corpora and on a
few hundred cheap mutations of them (so the harnesses and their contracts stay working
between fuzzing runs), and every input a fuzzing run ever found lives on here as a
regression test (tests/test_torchfile.py holds the torchfile ones)."""
import os
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "bench"))

import fuzz  # noqa: E402  (bench/fuzz.py)


def _mutations(blob, rng, n):
    for i in range(n):
        b = bytearray(blob)
        if not b:
            yield bytes(rng.bytes(8))
            continue
        pos = int(rng.integers(len(b)))
        if i % 3 == 0:
            b[pos] ^= 1 << int(rng.integers(8))
        elif i % 3 == 1:
            b = b[:pos]
        else:
            b[pos:pos] = rng.bytes(int(rng.integers(1, 16)))
        yield bytes(b)


@pytest.mark.filterwarnings("ignore")  # Pillow's notes on damaged TIFF tags, old-format notes
@pytest.mark.parametrize("target, seeds, check", [
    ("packed", fuzz._packed_seeds, fuzz.check_packed),
    ("image", fuzz._image_seeds, fuzz.check_image),
])
def test_file_harness_on_seeds_and_mutations(tmp_path, target, seeds, check):
    out = tmp_path / "seeds"
    out.mkdir()
    assert seeds(str(out)) >= 5
    rng = np.random.default_rng(0)
    q = tmp_path / "input"
    for name in sorted(os.listdir(out)):
        blob = (out / name).read_bytes()
        q.write_bytes(blob)
        check(str(q))  # the seed itself
        for m in _mutations(blob, rng, 30):
            q.write_bytes(m)
            check(str(q))  # returns or raises the reader's one error


def test_mtcnn_harness(tmp_path):
    src = fuzz.mtcnn_weights()
    if src is None:
        pytest.skip("no MTCNN weights")
    import shutil

    folder = tmp_path / "w"
    (folder / "real").mkdir(parents=True)
    for f in ("pnet.pt", "rnet.pt", "onet.pt"):
        shutil.copyfile(os.path.join(src, f), folder / f)
        shutil.copyfile(os.path.join(src, f), folder / "real" / f)
    raw = open(os.path.join(src, "pnet.pt"), "rb").read()
    rng = np.random.default_rng(1)
    fuzz.check_mtcnn(str(folder), b"\0" + raw)  # the real weights: builds and detects
    for m in _mutations(raw, rng, 12):
        fuzz.check_mtcnn(str(folder), b"\0" + m)
    assert (folder / "pnet.pt").read_bytes() == raw  # restored after every input


def test_binding_harness_contract():
    """call_binding's contract on calls a fuzzer made up: huge integers, NaN, arrays of
    the wrong dtype or rank, read-only and non-contiguous arrays."""
    from glae import _C

    a = np.zeros((3, 4, 5), np.float64)
    for f in fuzz._functions():
        for args in ([], [2 ** 70], [None, 1e30], [a, a.swapaxes(0, 1), 2 ** 64],
                     [np.zeros((2, 8, 8, 3), np.uint8), float("nan"), -1],
                     ["x", np.ones(5, np.float32), np.ones(5, np.int64)]):
            fuzz.call_binding(f, args)
    assert _C  # imported
