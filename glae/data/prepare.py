"""The prepare step: decode every image once, align it (5 landmarks: glae._C.align_face;
none: glae._C.center_crop_resize, or MTCNN's landmarks with detect="missing"/"always"), and
write one packed file that training memory-maps.

Decoding runs on a thread pool: Pillow, hashlib and the C kernels release the GIL, so the
threads decode in parallel. The output order is the input order whatever the number of
workers, so a packed file is reproducible.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .packed import PackedWriter, pixel_hash
from .readers import (DecodeError, Record, Report, load_image, read_age_folders, read_chalearn, read_csv,
                      read_identity_csv, read_identity_folders, read_mivia, read_utkface)

__all__ = ["prepare", "read_source", "DETECT_MODES", "SOURCE_KINDS"]

DETECT_MODES = ("never", "missing", "always")
# header keys prepare writes itself
_PREPARE_META = ("source", "size", "margin", "aligned", "detect", "pick", "mtcnn_weights",
                 "n_aligned_with_landmarks", "n_skipped", "n_detected", "n_no_face",
                 "n_identities", "identity_names")

SOURCE_KINDS = {
    "csv": read_csv,
    "utkface": read_utkface,
    "chalearn": read_chalearn,
    "mivia": read_mivia,
    "folders": read_age_folders,
    # identity-labelled faces for pre-training (no ages): one folder per identity, or a CSV
    # of path,identity
    "identities": read_identity_folders,
    "identities-csv": read_identity_csv,
}


def read_source(spec):
    """Records from a source spec: "kind:path" (kind in SOURCE_KINDS, e.g.
    "utkface:/data/UTKFace"), or a dict {"kind": ..., "path": ..., **reader options}."""
    if isinstance(spec, str):
        kind, sep, path = spec.partition(":")
        if not sep or kind not in SOURCE_KINDS:
            raise ValueError(f'source spec must be "kind:path" with kind in {sorted(SOURCE_KINDS)}, got {spec!r}')
        return SOURCE_KINDS[kind](path)
    if isinstance(spec, dict):
        opts = dict(spec)
        kind = opts.pop("kind", None)
        if kind not in SOURCE_KINDS or "path" not in opts:
            raise ValueError(f"source spec dict needs 'kind' in {sorted(SOURCE_KINDS)} and 'path', got {spec!r}")
        return SOURCE_KINDS[kind](opts.pop("path"), **opts)
    raise TypeError(f"source must be a list of Record, a 'kind:path' string or a dict, got {type(spec).__name__}")


def _c_transform():
    from .. import _C

    missing = [n for n in ("align_face", "center_crop_resize") if not hasattr(_C, n)]
    if missing:
        raise RuntimeError(f"glae._C lacks {missing}: this build has no alignment kernels "
                           "(pass transform=... to prepare, or build with the data bindings)")

    def transform(img, landmarks, size, margin):
        if landmarks is not None:
            return _C.align_face(img, np.ascontiguousarray(landmarks, dtype=np.float32), size, margin)
        return _C.center_crop_resize(img, size)

    return transform


def prepare(source, out_path, size: int = 224, margin: float = 0.0, workers: int | None = None,
            transform=None, meta: dict | None = None, progress: bool = False, chunk: int = 256,
            detect: str = "never", detector_weights=None, pick: str = "most_confident") -> Report:
    """Decode + align each image once and write the packed dataset `out_path`.

    source: a list of Record, or a source spec (see read_source). size: crop side in pixels
    (224 in both papers). margin: passed to align_face: the 5-point template's 112-px box
    is scaled to size / (1 + 2 margin) and centred, so margin=0.1 adds a 10% border on each
    side; ignored for images without landmarks (center_crop_resize). workers: decoding threads (default: os.cpu_count()).
    transform: advanced; a callable (img uint8 (H,W,3), landmarks (5,2) or None, size,
    margin) -> uint8 (size, size, 3) used instead of the C kernels (for data that is
    already aligned, or tests). meta: extra JSON-able facts stored in the file's header
    (ValueError if a key is one prepare writes itself, e.g. size or margin).

    detect: "never" (default; records without landmarks are centre-cropped), "missing"
    (records without landmarks go through MTCNN) or "always" (every record does; given
    landmarks are ignored). A detected image keeps ONE face, chosen by pick:
    "most_confident" (default, highest MTCNN score) or "largest" (largest box), and is
    aligned with that face's 5 landmarks exactly as given landmarks would be. An image in
    which MTCNN finds no face is skipped and reported ("no face found"); one with several
    faces is kept and reported as a warning. detector_weights: a folder with pnet.pt,
    rnet.pt, onet.pt or a glae.detect.MTCNN (default: glae.detect.weights_dir()). Each
    detection runs on one thread in its own context (the workers run images in parallel);
    the process-wide count, and a model training in another thread, are left alone.

    Identity data (sources "identities:FOLDER", "identities-csv:FILE"; records with an
    identity and no age) is written the same way, the age column NaN and the identities in
    the file's identity column; the header gains n_identities and, from the reader,
    identity_names (index = identity number).

    Returns the Report: the reader's problems (when a spec was given) plus every image that
    could not be decoded or aligned (skipped, with the reason). Raises ValueError when no
    image at all could be prepared (the file is then not written)."""
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    margin = float(margin)
    if not (margin >= 0.0 and np.isfinite(margin)):
        raise ValueError(f"margin must be finite and >= 0, got {margin}")
    if workers is None:
        workers = os.cpu_count() or 1
    workers = int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if detect not in DETECT_MODES:
        raise ValueError(f"detect must be one of {DETECT_MODES}, got {detect!r}")
    from .. import detect as _detect

    if pick not in _detect.PICKS:
        raise ValueError(f"pick must be one of {sorted(_detect.PICKS)}, got {pick!r}")
    # the user's facts must not overwrite prepare's own (PackedDataset.align_margin reads them)
    clash = sorted(set(meta or {}) & set(_PREPARE_META))
    if clash:
        raise ValueError(f"meta: keys {clash} are written by prepare itself; use other names")
    report = Report(what=f"prepare({os.fspath(out_path)})")
    identity_names = None
    if isinstance(source, (str, dict)):
        records, read_report = read_source(source)
        report.extend(read_report)
        identity_names = read_report.identity_names
        src_desc = source if isinstance(source, str) else dict(source)
    else:
        records = list(source)
        bad = [type(r).__name__ for r in records if not isinstance(r, Record)]
        if bad:
            raise TypeError(f"source must hold Record objects, found {bad[0]}")
        src_desc = f"{len(records)} records"
    fn = transform if transform is not None else _c_transform()
    wants_detection = [detect == "always" or (detect == "missing" and r.landmarks is None) for r in records]
    detector = None
    if any(wants_detection):
        # resolved before any work: missing weights fail here, with no file written
        # one thread per detection (its own context): the workers run several at once
        detector = _detect._with_threads(_detect.get_detector(detector_weights), 1)

    def work(item):
        rec, detect_it = item
        try:
            img = load_image(rec.path)
        except (FileNotFoundError, IsADirectoryError, DecodeError) as e:
            return None, str(e)
        except Exception as e:  # a decoder's own bug on a hostile file: skipped, never fatal
            return None, f"cannot decode: {type(e).__name__}: {e}"
        h = pixel_hash(img)
        landmarks, note = rec.landmarks, None
        if detect_it:
            try:
                boxes, scores, lms = detector.detect(img)
            except (ValueError, RuntimeError) as e:
                return None, f"face detection failed: {e}"
            i = _detect.pick_face(boxes, scores, pick)
            if i is None:
                return None, "no face found (MTCNN)"
            landmarks = lms[i]
            if len(boxes) > 1:
                note = (f"{len(boxes)} faces found; kept the {pick.replace('_', ' ')} one, box "
                        f"{[round(float(v), 1) for v in boxes[i]]}, score {float(scores[i]):.3f}")
        try:
            crop = np.asarray(fn(img, landmarks, size, margin))
        except (ValueError, RuntimeError) as e:
            return None, f"alignment failed: {e}"
        if crop.dtype != np.uint8 or crop.shape != (size, size, 3):
            return None, f"alignment returned {crop.dtype} {crop.shape}, expected uint8 ({size}, {size}, 3)"
        return (crop, h, landmarks is not None, note), None

    if transform is not None:
        aligned = "transform"
    else:
        aligned = "glae._C align_face / center_crop_resize"
    if detect != "never":
        aligned += f"; MTCNN landmarks ({detect}, one face per image: {pick})"
    header_meta = {"source": src_desc, "size": size, "margin": margin, "aligned": aligned,
                   "detect": detect, **(meta or {})}
    if detect != "never":
        header_meta["pick"] = pick
        if detector is not None:
            header_meta["mtcnn_weights"] = detector.weights_dir
    bar = None
    if progress:
        try:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(records), desc="prepare", unit="img")
        except ImportError:
            bar = None
    n_landmarks = n_detected = n_no_face = 0
    try:
        with PackedWriter(out_path, size, meta=header_meta) as w, ThreadPoolExecutor(max_workers=workers) as pool:
            for start in range(0, len(records), chunk):
                part = list(zip(records[start:start + chunk], wants_detection[start:start + chunk]))
                # map keeps input order: the file does not depend on thread scheduling
                for (rec, detected), (res, err) in zip(part, pool.map(work, part)):
                    report.n_seen += 1
                    if err is not None:
                        n_no_face += err.startswith("no face found")
                        report.skip(rec.path, err)
                        continue
                    crop, h, with_landmarks, note = res
                    n_landmarks += with_landmarks
                    n_detected += detected
                    if note is not None:
                        report.warn(rec.path, note)
                    w.append(crop, rec.age, sigma=rec.sigma, identity=rec.identity, path=rec.path, hash=h)
                if bar is not None:
                    bar.update(len(part))
            if len(w) == 0:
                raise ValueError(f"prepare: no image could be prepared out of {len(records)}:\n{report}")
            w.meta["n_aligned_with_landmarks"] = n_landmarks
            w.meta["n_skipped"] = len(report.skipped)
            known = [i for i in w.ids if i >= 0]
            if known:  # identity data: how many people, and their names where the reader had them
                w.meta["n_identities"] = len(set(known))
                if identity_names is not None:
                    w.meta["identity_names"] = list(identity_names)
            if detect != "never":
                w.meta["n_detected"] = n_detected
                w.meta["n_no_face"] = n_no_face
    finally:
        if bar is not None:
            bar.close()
    report.n_used = len(w)
    return report
