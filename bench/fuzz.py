"""Coverage-guided fuzzing (atheris, libFuzzer's engine for Python) of every reader glae
has and of its C bindings, as a routine (bench/fuzz.sh runs each target for a given
time; CI runs them for a few seconds each).

    pip install -e ".[fuzz]"                           # atheris
    python bench/fuzz.py seeds fuzz-corpus             # seed corpora, one folder per target
    python bench/fuzz.py packed fuzz-corpus/packed -max_total_time=600
    python bench/fuzz.py TARGET CORPUS [libFuzzer options: -runs=N, -timeout=S, ...]

Targets and the contract checked on every input (anything else -- another exception, a
hang past -timeout, memory past -rss_limit_mb, a crash of the interpreter -- is a
finding, which libFuzzer writes to crash-/timeout-/oom-<sha1>; each becomes a regression
test):

  torchfile   glae.torchfile.load (.pth/.pt)          returns or raises TorchFileError
  checkpoint  glae.checkpoint.load (safetensors)      returns or raises CheckpointError
  packed      glae.data.PackedDataset (a packed data set; every array then read)
                                                      returns or raises PackedFormatError
  mtcnn       glae.detect.MTCNN on a folder whose pnet/rnet/onet.pt (one of them, chosen
              by the input's first byte) is the input, then one detection
                                                      returns or raises ValueError
  image       glae.data.load_image                    returns uint8 (H, W, 3) or raises
                                                      DecodeError
  bindings    a glae._C function (chosen by the input) called with arguments built from
              the input: integers of every size, NaN/inf, small arrays of any dtype and
              shape, None, strings      returns or raises TypeError / ValueError /
              RuntimeError (a missing CUDA device) / MemoryError; never OverflowError,
              SystemError or a crash

The file readers take a path: each input is written to one unlinked file on /dev/shm
(a tmpfs where there is one), rewritten in place for every execution and read as
/proc/self/fd/N (Linux).
"""
import io
import os
import shutil
import sys
import tempfile
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

TARGETS = ("torchfile", "checkpoint", "packed", "mtcnn", "image", "bindings")


def _shm():
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def mtcnn_weights():
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    from conftest import MTCNN_WEIGHTS

    d = os.environ.get("GLAE_MTCNN_WEIGHTS", MTCNN_WEIGHTS)
    return d if all(os.path.isfile(os.path.join(d, f)) for f in ("pnet.pt", "rnet.pt", "onet.pt")) else None


# ---- seed corpora ---------------------------------------------------------------------------


def _packed_seeds(out):
    import json
    import struct

    from glae.data import write_packed

    rng = np.random.default_rng(2)
    imgs = rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    write_packed(os.path.join(out, "plain.glae"), imgs, [1.0, 20.0, 80.5])
    write_packed(os.path.join(out, "full.glae"), imgs, [3, 4, 5], sigmas=[1.5, np.nan, 2.0],
                 identities=[0, -1, 7], paths=["a.jpg", "é/b.png", ""],
                 meta={"margin": 0.1, "size": 4, "n_aligned_with_landmarks": 2, "source": "x"})
    write_packed(os.path.join(out, "empty.glae"), np.zeros((0, 2, 2, 3), np.uint8), [])
    write_packed(os.path.join(out, "chunks.glae"), rng.integers(0, 256, (40, 64, 64, 3), dtype=np.uint8),
                 np.arange(40) % 90)
    # the previous format: no checksums (flags 0), no image_crc32 section
    raw = open(os.path.join(out, "plain.glae"), "rb").read()
    hoff, hlen = struct.unpack("<QQ", raw[16:32])
    h = json.loads(raw[hoff:hoff + hlen])
    cut = h["sections"].pop("image_crc32")[0]
    del h["checksums"]
    hb = json.dumps(h).encode()
    with open(os.path.join(out, "previous_format.glae"), "wb") as f:
        f.write(raw[:16] + struct.pack("<QQII", cut, len(hb), 0, 0) + raw[40:cut] + hb)
    return 5


def _mtcnn_seeds(out):
    d = mtcnn_weights()
    if d is None:
        return 0
    for i, f in enumerate(("pnet.pt", "rnet.pt", "onet.pt")):
        with open(os.path.join(d, f), "rb") as src:
            data = src.read()
        with open(os.path.join(out, f), "wb") as dst:
            dst.write(bytes([i]) + data)  # first byte: which net the rest replaces
    return 3


def _image_seeds(out):
    from PIL import Image

    rng = np.random.default_rng(3)
    rgb = Image.fromarray(rng.integers(0, 256, (9, 7, 3), dtype=np.uint8))
    n = 0
    for fmt, ext, im, kw in [
        ("PNG", "png", rgb, {}), ("JPEG", "jpg", rgb, {"quality": 80}), ("GIF", "gif", rgb.convert("P"), {}),
        ("BMP", "bmp", rgb, {}), ("TIFF", "tif", rgb, {}), ("WEBP", "webp", rgb, {}),
        ("PNG", "la.png", rgb.convert("LA"), {}), ("PNG", "i16.png", rgb.convert("I;16"), {}),
        ("PNG", "rgba.png", rgb.convert("RGBA"), {}), ("JPEG", "cmyk.jpg", rgb.convert("CMYK"), {}),
        ("PPM", "ppm", rgb, {}), ("ICO", "ico", rgb, {}), ("TGA", "tga", rgb, {}),
    ]:
        try:
            buf = io.BytesIO()
            im.save(buf, fmt, **kw)
        except (OSError, KeyError, ValueError):
            continue  # a format this Pillow cannot write
        with open(os.path.join(out, f"seed.{ext}"), "wb") as f:
            f.write(buf.getvalue())
        n += 1
    ex = rgb.getexif()
    ex[0x0112] = 6  # EXIF orientation: rotated
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", exif=ex.tobytes())
    with open(os.path.join(out, "exif.jpg"), "wb") as f:
        f.write(buf.getvalue())
    return n + 1


def _binding_seeds(out):
    rng = np.random.default_rng(4)
    for i in range(16):
        with open(os.path.join(out, f"seed{i}"), "wb") as f:
            f.write(rng.bytes(64 + 16 * i))
    return 16


def write_seeds(folder):
    import fuzz_torchfile

    for target, fn in (("torchfile", fuzz_torchfile._torch_seeds), ("checkpoint", fuzz_torchfile._checkpoint_seeds),
                       ("packed", _packed_seeds), ("mtcnn", _mtcnn_seeds), ("image", _image_seeds),
                       ("bindings", _binding_seeds)):
        out = os.path.join(folder, target)
        os.makedirs(out, exist_ok=True)
        print(f"{fn(out)} seeds in {out}")


# ---- one input per target (also what the regression tests call) ------------------------------


def check_packed(path):
    from glae.data import PackedDataset, PackedFormatError

    try:
        ds = PackedDataset(path)
    except PackedFormatError:
        return
    n = len(ds)
    if n:
        np.asarray(ds.images[:2]).sum()
        ds.subset([n - 1, 0]).images[0].sum()
    ds.ages.sum(), ds.sigmas.sum(), ds.identities.sum(), ds.hashes.sum(), len(ds.paths)
    ds.align_size, ds.align_margin, ds.meta


def check_image(path):
    from glae.data import DecodeError, load_image

    try:
        img = load_image(path)
    except DecodeError:
        return
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, (img.dtype, img.shape)


def check_mtcnn(folder, data):
    from glae import detect

    if not data:
        return
    name = ("pnet.pt", "rnet.pt", "onet.pt")[data[0] % 3]
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data[1:])
    try:
        det = detect.MTCNN(folder)
    except ValueError:  # TorchFileError, or tensors mtcnn_new cannot use
        return
    finally:
        shutil.copyfile(os.path.join(folder, "real", name), os.path.join(folder, name))
    det.detect(np.full((48, 48, 3), 128, np.uint8))


_FUNCS = None


def _functions():
    global _FUNCS
    if _FUNCS is None:
        from glae import _C

        skip = {"set_num_threads"}  # a huge thread count is fine but slows every later input
        _FUNCS = [getattr(_C, n) for n in sorted(dir(_C)) if not n.startswith("_") and n not in skip
                  and callable(getattr(_C, n)) and not isinstance(getattr(_C, n), type)]
    return _FUNCS


_DTYPES = (np.float32, np.float64, np.uint8, np.int64, np.int32, np.float16, np.bool_, np.int8)


def _value(fdp, depth=0):
    kind = fdp.ConsumeIntInRange(0, 11)
    if kind == 0:
        return fdp.ConsumeIntInRange(-4, 300)
    if kind == 1:
        return fdp.ConsumeInt(fdp.ConsumeIntInRange(1, 10))  # up to 80-bit integers
    if kind == 2:
        return [0.0, -1.0, 0.5, 1e30, float("nan"), float("inf"), -float("inf")][fdp.ConsumeIntInRange(0, 6)]
    if kind == 3:
        return None
    if kind == 4:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 12))
    if kind == 5:
        return bool(fdp.ConsumeBool())
    if kind == 6 and depth < 2:
        return tuple(_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4)))
    # arrays: up to 4 dims, at most 4096 elements, any dtype; sometimes not contiguous
    nd = fdp.ConsumeIntInRange(0, 4)
    shape = tuple(fdp.ConsumeIntInRange(0, 8) for _ in range(nd))
    dt = _DTYPES[fdp.ConsumeIntInRange(0, len(_DTYPES) - 1)]
    size = int(np.prod(shape)) if shape else 1
    raw = fdp.ConsumeBytes(size * np.dtype(dt).itemsize)
    raw += bytes(size * np.dtype(dt).itemsize - len(raw))
    a = np.frombuffer(raw, dtype=dt).reshape(shape).copy()
    if fdp.ConsumeBool() and nd >= 2:
        a = a.swapaxes(0, 1)
    if fdp.ConsumeIntInRange(0, 7) == 0:
        a.flags.writeable = False
    return a


def check_binding(data):
    import atheris

    fdp = atheris.FuzzedDataProvider(data)
    funcs = _functions()
    f = funcs[fdp.ConsumeIntInRange(0, len(funcs) - 1)]
    args = [_value(fdp) for _ in range(fdp.ConsumeIntInRange(0, 10))]
    call_binding(f, args)


def call_binding(f, args):
    try:
        f(*args)
    except (TypeError, ValueError, RuntimeError, MemoryError, NotImplementedError):
        pass


# ---- the harness ------------------------------------------------------------------------------


def fuzz(target, argv):
    import atheris

    if target in ("torchfile", "checkpoint"):
        import fuzz_torchfile

        return fuzz_torchfile.fuzz(target, argv)
    with atheris.instrument_imports():
        import glae  # noqa: F401
        from glae import detect  # noqa: F401
        from glae.data import packed, readers  # noqa: F401
        if target == "image":  # Pillow and every format plugin, for coverage guidance
            import PIL.Image
            import PIL.ImageOps  # noqa: F401

            PIL.Image.init()
    warnings.simplefilter("ignore")
    if target == "bindings":
        _functions()
        # the C code is not instrumented (gcc has no -fsanitize=fuzzer): coverage of the
        # argument builder at least steers the inputs towards every kind of argument
        global _value, check_binding
        _value = atheris.instrument_func(_value)
        check_binding = atheris.instrument_func(check_binding)

        def one_input(data):
            check_binding(data)
    elif target == "mtcnn":
        src = mtcnn_weights()
        if src is None:  # a fresh clone (CI) has none: nothing to fuzz, not a finding
            print("mtcnn: skipped, no MTCNN weights (set GLAE_MTCNN_WEIGHTS)")
            return
        folder = tempfile.mkdtemp(prefix="glae-fuzz-mtcnn-", dir=_shm())
        os.makedirs(os.path.join(folder, "real"))
        for f in ("pnet.pt", "rnet.pt", "onet.pt"):
            shutil.copyfile(os.path.join(src, f), os.path.join(folder, f))
            shutil.copyfile(os.path.join(src, f), os.path.join(folder, "real", f))

        def one_input(data):
            check_mtcnn(folder, data)
    else:
        check = {"packed": check_packed, "image": check_image}[target]
        fd, path = tempfile.mkstemp(prefix=f"glae-fuzz-{target}-", dir=_shm())
        os.unlink(path)  # libFuzzer ends the process with exit(): read through /proc
        path = f"/proc/self/fd/{fd}"

        def one_input(data):
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            check(path)

    atheris.Setup([sys.argv[0]] + argv, one_input)
    atheris.Fuzz()


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS + ("seeds",):
        sys.exit(__doc__)
    if sys.argv[1] == "seeds":
        if len(sys.argv) != 3:
            sys.exit("usage: python bench/fuzz.py seeds FOLDER")
        write_seeds(sys.argv[2])
    else:
        fuzz(sys.argv[1], sys.argv[2:])


if __name__ == "__main__":
    main()
