"""What the integrity checks cost when loading weights: a glae checkpoint of a whole model
(ResNet-50 by default: backbone, heads, BN statistics and the momentum buffer) loaded with
every check (checksums over each tensor, each metadata entry and the tensor table), the
same file read without any, the CRC-32s alone, the safetensors package (no checksums)
as the peer, and a torch.save file of the model's state dict (zip and legacy layouts)
through glae.torchfile beside a plain read of the same bytes.

    python bench/integrity.py                    # ResNet-50, best of 5, files in a temp dir
    python bench/integrity.py --arch resnet18 --repeat 9 --dir /tmp
    python bench/integrity.py --only packed --packed-mb 1024   # a 1 GB packed data set

The packed part writes a data set of 224 px crops (--packed-mb of pixels) and times
opening it with every checksum (verify="full"), with the pixels left to the Trainer
(verify="lazy") and the per-batch check that then runs, beside a plain read of the
same bytes and the CRC-32s alone.

Every time is the best of --repeat runs after one warm-up (the file in the page cache:
this measures the checks, not the disk). The .pth files are written with torch.save when
PyTorch is installed, else with the test suite's torch.save writer
(tests/helpers.py). Peak memory is measured separately (tracemalloc, one run).
"""
import argparse
import io
import json
import os
import struct
import sys
import tempfile
import time
import tracemalloc
import zipfile
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))


def interleaved(fns, rounds):
    """[(best, median) seconds] of each fn, run in turn in every round (one warm-up round
    first), so that a busy machine slows every variant alike instead of one row."""
    times = [[] for _ in fns]
    for r in range(rounds + 1):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            if r:
                times[i].append(time.perf_counter() - t)
    return [(min(t), float(np.median(t))) for t in times]


def peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# ---- the same reads without any check (the baselines) --------------------------------------


def checkpoint_unverified(path):
    """checkpoint.load's reads and copies, without its checksums or metadata decoding."""
    from glae import checkpoint

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        (n,) = struct.unpack("<Q", f.read(8))
        entries, _ = checkpoint._parse_header(f.read(n), path, size - 8 - n)
        out = {}
        for b, e, name, dname, shape in entries:
            buf = bytearray(e - b)
            f.seek(8 + n + b)
            f.readinto(buf)
            out[name] = np.frombuffer(buf, dtype=checkpoint._DTYPES[dname]).reshape(shape)
    return out


def checkpoint_crcs(path):
    """Only the CRC-32s load computes (over every tensor's bytes and every metadata
    string), on bytes already in memory: the checks' compute cost without the I/O."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = f.read(n)
        data = f.read()
    strings = [v.encode() for v in json.loads(header).get("__metadata__", {}).values()]

    def crcs():
        crc = zlib.crc32(data)
        for s in strings:
            crc ^= zlib.crc32(s)
        return crc

    return crcs


def zip_unverified(path):
    """Every member of a .pth read and copied into arrays: no pickle, no checks."""
    out = []
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            raw = z.read(name)
            if "/data/" in name:
                out.append(np.frombuffer(raw, np.float32).copy())
    return out


def torchfile_structure(path):
    """torchfile's work on a .pth beyond reading bytes: the pickle's opcode scan, the
    restricted unpickling, the object-graph walk and every tensor's geometry and size
    check."""
    from glae import torchfile

    with open(path, "rb") as f, zipfile.ZipFile(f) as z:
        body = z.read(next(n for n in z.namelist() if n.endswith("/data.pkl")))

    def structure():
        r = torchfile._Reader(path, True, 1 << 50)
        r._walk_check(r._unpickle(io.BytesIO(body), False))

    return structure, len(body)


# ---- packed data sets -----------------------------------------------------------------------


def write_big_packed(path, mb, size=224):
    """A packed file of about `mb` MB of random 224 px crops (prepare's size)."""
    from glae.data import PackedWriter

    per = size * size * 3
    n = max(1, int(mb * 1e6) // per)
    rng = np.random.default_rng(0)
    pool = rng.integers(0, 256, (64, size, size, 3), dtype=np.uint8)
    with PackedWriter(path, size, meta={"bench": "integrity"}) as w:
        for i in range(n):
            w.append(pool[i % 64], float(i % 90), hash=bytes(32))
    return n


def packed_unverified(path, buf=None):
    """Every byte of the file read into memory (a buffer allocated once): what any full
    check has to touch."""
    buf = bytearray(os.path.getsize(path)) if buf is None else buf
    with open(path, "rb") as f:
        f.readinto(buf)
    return buf


def packed_crcs(path):
    """The pixel CRC-32s alone, on bytes already in memory."""
    data = packed_unverified(path)
    return lambda: zlib.crc32(data)


def bench_packed(args, d):
    from glae.data import PackedDataset

    path = os.path.join(d, "big.glae")
    t = time.perf_counter()
    n = write_big_packed(path, args.packed_mb)
    wrote = time.perf_counter() - t
    mb = os.path.getsize(path) / 1e6
    lazy = PackedDataset(path, verify="lazy")
    buf = packed_unverified(path)
    batch = np.arange(256) * (n // 256 or 1) % n  # 256 images spread over the file

    def one_batch():
        lazy._verified[:] = False
        lazy.verify_images(batch)

    plan = [
        ("packed: read every byte, no checks", lambda: packed_unverified(path, buf), None),
        ("packed: the pixel CRC-32s alone (bytes in memory)", packed_crcs(path), None),
        ('PackedDataset(verify="full") (all checks)', lambda: PackedDataset(path), 0),
        ('PackedDataset(verify="lazy") (header, labels)', lambda: PackedDataset(path, verify="lazy"), None),
        ("lazy: verify_images of one batch of 256", one_batch, None),
    ]
    timed = interleaved([p[1] for p in plan], args.repeat)
    print(f"packed data set: {n} crops of 224 px, {mb:.1f} MB (written in {wrote:.1f} s with its "
          f"checksums); {args.repeat} interleaved rounds (warm page cache); load average "
          f"{os.getloadavg()[0]:.1f}")
    hdr = f"{'what':<52} {'best ms':>8} {'median':>8} {'MB/s':>6} {'vs no checks':>14}"
    print(hdr)
    print("-" * len(hdr))
    for (what, _, ref), (best, med) in zip(plan, timed):
        vs = "" if ref is None else f"{best / timed[ref][0]:.2f}x, {med / timed[ref][1]:.2f}x"
        rate = f"{mb / best:.0f}" if what.startswith(("packed", "PackedDataset(verify=\"full")) else ""
        print(f"{what:<52} {best * 1e3:8.1f} {med * 1e3:8.1f} {rate:>6} {vs:>14}")
    print()


# ---- writing the files ----------------------------------------------------------------------


def write_pth(path, state, legacy):
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        sd = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
        torch.save(sd, path, _use_new_zipfile_serialization=not legacy)
        return "torch.save"
    sys.path.insert(0, os.path.join(HERE, "..", "tests"))
    from helpers import torch_state_dict, torch_write_legacy, torch_write_zip

    od = torch_state_dict({k: np.asarray(v, np.float32) for k, v in state.items()})
    (torch_write_legacy if legacy else torch_write_zip)(path, od)
    return "the test suite's writer (tests/helpers.py)"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="resnet50", choices=["resnet18", "resnet50"])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--dir", default=None, help="where to write the files (default: a temp dir)")
    ap.add_argument("--only", choices=["weights", "packed"], default=None)
    ap.add_argument("--packed-mb", type=float, default=1024, help="pixels in the packed file, MB")
    args = ap.parse_args()

    import glae
    from glae import checkpoint, torchfile
    from glae.config import Config

    tmp = tempfile.TemporaryDirectory(dir=args.dir)
    d = tmp.name
    if args.only != "weights":
        bench_packed(args, d)
        if args.only == "packed":
            tmp.cleanup()
            return
    model = glae.Model(Config(backbone=args.arch, head="fr+pa", proj_width=512),
                       init_pretrained=False)
    ck = os.path.join(d, "model.safetensors")
    model.save(ck)
    state = model.state_dict()
    pth, pt = os.path.join(d, "model.pth"), os.path.join(d, "model_legacy.pt")
    writer = write_pth(pth, state, legacy=False)
    write_pth(pt, state, legacy=True)
    del model

    try:
        from safetensors.numpy import load_file
    except ImportError:
        load_file = None
    structure, pkl = torchfile_structure(pth)
    # (what, file, fn, the row it is compared with)
    plan = [
        ("checkpoint: read, no checks", ck, lambda: checkpoint_unverified(ck), None),
        ("checkpoint: the CRC-32s alone (bytes in memory)", ck, checkpoint_crcs(ck), None),
        ("checkpoint.load (all checks)", ck, lambda: checkpoint.load(ck), 0),
        ("safetensors.numpy.load_file (peer, no checksums)", ck, lambda: load_file(ck), 0),
        (".pth zip: read members, no pickle, no checks", pth, lambda: zip_unverified(pth), None),
        ("torchfile.load .pth zip (all checks)", pth, lambda: torchfile.load(pth), 4),
        ("torchfile.load .pt legacy (all checks)", pt, lambda: torchfile.load(pt), 4),
        (f".pth: scan + unpickle + walk + checks ({pkl / 1e3:.0f} kB pickle)", pth, structure,
         None),
    ]
    if load_file is None:
        plan[3] = ("safetensors not installed: no peer row", ck, lambda: None, None)
    timed = interleaved([p[2] for p in plan], args.repeat)

    sizes = {p: os.path.getsize(p) for p in (ck, pth, pt)}
    print(f"glae {glae.__version__}, {args.arch} fr+pa (proj_width 512), {args.repeat} "
          f"interleaved rounds (warm page cache), .pth written by {writer}; load average "
          f"{os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs")
    hdr = (f"{'what':<52} {'file MB':>8} {'best ms':>8} {'median':>8} {'MB/s':>6} "
           f"{'vs no checks (best, median)':>28}")
    print(hdr)
    print("-" * len(hdr))
    for (what, path, _, ref), (best, med) in zip(plan, timed):
        mb = sizes[path] / 1e6
        vs = "" if ref is None else f"{best / timed[ref][0]:.2f}x, {med / timed[ref][1]:.2f}x"
        rate = "" if what.startswith(".pth:") else f"{mb / best:.0f}"  # no file read
        print(f"{what:<52} {mb:8.1f} {best * 1e3:8.1f} {med * 1e3:8.1f} {rate:>6} {vs:>28}")
    print()
    for what, path, fn in [("checkpoint.load", ck, lambda: checkpoint.load(ck)),
                           ("torchfile.load .pth zip", pth, lambda: torchfile.load(pth)),
                           ("torchfile.load .pt legacy", pt, lambda: torchfile.load(pt))]:
        pk = peak_bytes(fn)
        print(f"peak allocated by {what}: {pk / 1e6:.0f} MB = {pk / sizes[path]:.2f} x the file "
              f"(torchfile's default allowance: 4 x + 64 MiB)")
    tmp.cleanup()


if __name__ == "__main__":
    main()
