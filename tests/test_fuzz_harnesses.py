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


# a 143-byte GIF found by the image target (10 s, the slowest input of its first run):
# its header declares 33,728 x 4,747 pixels (160 M), which Pillow allocated and filled
SLOW_GIF = bytes.fromhex(
    "474946383761c0838b12232c681000a0c08104150c2060e02006090f172458c0"
    "30a105101c0700330099333399663399cc33000000000000002c000000000700"
    "090000084a00591068f1c0838b12232c681000a0c08104150c2060e02006090f"
    "172458c030a105101c3c6450f0618109172154c0105102c5890e172220189062"
    "06880a0156a02003828b170101003b"
)


@pytest.mark.filterwarnings("ignore:Image size")  # Pillow's own warning at open
def test_fuzz_slow_gif_refused_from_its_header(tmp_path):
    import time

    from glae.data import DecodeError, load_image

    p = tmp_path / "slow.gif"
    p.write_bytes(SLOW_GIF)
    t = time.perf_counter()
    with pytest.raises(DecodeError, match="image too large: 33728 x 4747 pixels"):
        load_image(p)
    assert time.perf_counter() - t < 2
    fuzz.check_image(str(p))  # the harness's contract holds


# the instrumented image run's timeout (43 bytes) and slowest input (99 bytes): GIFs whose
# headers declare 1,543 x 39,355 and 1,031 x 39,355 pixels, under the 64 M cap, which Pillow
# spent 4 s and more allocating and filling from a few bytes of data
TIMEOUT_GIF = bytes.fromhex(
    "4749463837619a00bb993399002c0006000007000900a0c08100000000000900"
    "086181170108618101003b"
)
SLOW_GIF2 = bytes.fromhex(
    "4749463837611a00bb993399cc36002c0004000007000900a0c0810000000000"
    "0900086100000000000000000000000000000000000000000001000000000000"
    "00000000000000000000000000000000000000000000000000811701086181d1"
    "01003b"
)


@pytest.mark.parametrize("blob, size", [(TIMEOUT_GIF, "1543 x 39355"), (SLOW_GIF2, "1031 x 39355")])
def test_fuzz_gifs_too_large_for_their_files(tmp_path, blob, size):
    import time

    from glae.data import DecodeError, load_image

    p = tmp_path / "x.gif"
    p.write_bytes(blob)
    t = time.perf_counter()
    with pytest.raises(DecodeError, match=f"image too large for its file: {size} pixels declared by {len(blob)} bytes"):
        load_image(p)
    assert time.perf_counter() - t < 1
    fuzz.check_image(str(p))


def test_large_images_with_real_data_still_load(tmp_path):
    """The cap is on pixels per byte of the file: a 2,100 x 2,100 image (4.4 M pixels) of
    one colour compresses far, and loads; its header alone, cut from the data, does not."""
    from PIL import Image

    from glae.data import DecodeError, load_image

    p = tmp_path / "flat.png"
    Image.new("RGB", (2100, 2100), (10, 200, 30)).save(p)
    assert p.stat().st_size * 4096 > 2100 * 2100
    img = load_image(p)
    assert img.shape == (2100, 2100, 3) and (img[0, 0] == (10, 200, 30)).all()
    q = tmp_path / "cut.png"
    q.write_bytes(p.read_bytes()[:200])
    with pytest.raises(DecodeError, match="too large for its file"):
        load_image(q)
