"""MTCNN throughput on this CPU: faces/s on 200x200 UTKFace photos and on 640x480 scenes
(a UTKFace face pasted into a synthetic background), for 1 and 2 threads.

    python bench/detect.py [--weights DIR] [--photos DIR] [-n 100]

Prints a table; the machine may be shared, so the load average is printed with it.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from glae import detect as gd  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.abspath(os.path.join(HERE, "..", "..", "shared"))
if not os.path.isdir(SHARED):
    SHARED = "/work/shared"


def scene(rng, face, h=480, w=640):
    """a smooth random background with the face pasted at a random place (face ~ 200 px)"""
    yy, xx = np.mgrid[0:h, 0:w]
    bg = np.stack([127 + 60 * np.sin(xx / (40 + 20 * c) + c) * np.cos(yy / (55 + 10 * c))
                   for c in range(3)], axis=2)
    bg += rng.normal(0, 12, bg.shape)
    img = np.clip(bg, 0, 255).astype(np.uint8)
    y, x = rng.integers(0, h - face.shape[0]), rng.integers(0, w - face.shape[1])
    img[y:y + face.shape[0], x:x + face.shape[1]] = face
    return img


def run(det, imgs, threads):
    det.num_threads = threads
    det.detect(imgs[0])  # warm-up
    t0 = time.perf_counter()
    faces = sum(len(det.detect(im)[0]) > 0 for im in imgs)
    dt = time.perf_counter() - t0
    return len(imgs) / dt, 1000 * dt / len(imgs), faces


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=os.path.join(SHARED, "weights", "mtcnn"))
    ap.add_argument("--photos", default=os.path.join(SHARED, "data", "utkface-dev", "images"))
    ap.add_argument("-n", type=int, default=100, help="images per row of the table")
    a = ap.parse_args()
    det = gd.MTCNN(a.weights)
    rng = np.random.default_rng(0)
    names = sorted(os.listdir(a.photos))
    picks = rng.choice(len(names), min(a.n, len(names)), replace=False)
    faces = [gd.to_rgb(os.path.join(a.photos, names[i])) for i in picks]
    scenes = [scene(rng, f) for f in faces]
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"{'images':>16} {'threads':>7} {'images/s':>9} {'ms/image':>9} {'with a face':>12}")
    for label, imgs in (("200x200 UTKFace", faces), ("640x480 scene", scenes)):
        for th in (1, 2):
            ips, ms, found = run(det, imgs, th)
            print(f"{label:>16} {th:>7} {ips:>9.1f} {ms:>9.1f} {found:>7}/{len(imgs)}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
