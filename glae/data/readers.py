"""Readers: turn a user's data (a CSV, UTKFace file names, Chalearn LAP 2015 / MIVIA label
files, one folder per age) into a list of :class:`Record` plus a :class:`Report` of every
row or file that could not be used, with its reason. Nothing is dropped silently.

Identity data for pre-training (LAE sec. 2.3) has readers of its own: one folder per
identity (:func:`read_identity_folders`, the layout of CASIA-WebFace, VGGFace2 and the
MS-Celeb derivatives) and a CSV of path,identity (:func:`read_identity_csv`). Their records
carry an identity and no age (``age`` NaN).

Also the one image decoder of the package, :func:`load_image` (Pillow: RGB conversion,
EXIF orientation, corrupt and truncated files raise :class:`DecodeError`).

Policies (see docs/data.md):

- Ages are clipped to ``[0, max_age]`` (default 100: the model has 101 classes, 0..100, so
  the last class means "100 or older"). Every clipped age is listed in the report as a
  warning; the record is kept. ``max_age=None`` keeps ages as they are.
- Invalid values (a negative or non-finite age, a negative sigma, landmarks that are not
  5 (x, y) pairs) raise ``ValueError`` naming the file and line, because they usually mean
  a wrong column mapping. With ``errors="report"`` such rows are skipped and reported
  instead.
- Unparseable rows (too few fields, text where a number should be, an empty age) and
  images that do not exist are skipped and reported; the read goes on.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "DecodeError",
    "IMAGE_EXTENSIONS",
    "Problem",
    "Record",
    "Report",
    "load_image",
    "read_age_folders",
    "read_chalearn",
    "read_csv",
    "read_identity_csv",
    "read_identity_folders",
    "read_mivia",
    "read_utkface",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")
MAX_AGE = 100  # the model's last class (101 classes, 0..100)

DEFAULT_COLUMNS = {
    "path": "path",
    "age": "age",
    "sigma": "sigma",
    "identity": "identity",
    "landmarks": [f"l{c}{i}" for i in range(1, 6) for c in "xy"],  # lx1, ly1, ..., lx5, ly5
}


# --------------------------------------------------------------------------- records


@dataclass
class Record:
    """One labelled image.

    path: where the image lives; age: years (float; apparent age may be fractional), or
    None where unknown (identity data), stored as NaN;
    sigma: the label's standard deviation where the data set gives one (Chalearn);
    identity: an integer subject id (>= 0) where known; landmarks: float32 (5, 2) pixel
    coordinates (left eye, right eye, nose tip, left and right mouth corner) in the image
    as displayed (after EXIF orientation); extra: anything else a reader found (gender,
    race, ...)."""

    path: str
    age: float | None
    sigma: float | None = None
    identity: int | None = None
    landmarks: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.path = os.fspath(self.path)
        if self.age is None:
            self.age = math.nan  # unknown (identity data); a NaN given as a number is an error
        else:
            self.age = float(self.age)
            if not math.isfinite(self.age):
                raise ValueError(f"age must be finite, got {self.age}")
            if self.age < 0:
                raise ValueError(f"age must be >= 0, got {self.age}")
        if self.sigma is not None:
            self.sigma = float(self.sigma)
            if not math.isfinite(self.sigma) or self.sigma < 0:
                raise ValueError(f"sigma must be finite and >= 0, got {self.sigma}")
        if self.identity is not None:
            self.identity = int(self.identity)
            if self.identity < 0:
                raise ValueError(f"identity must be >= 0 (unknown: None), got {self.identity}")
        if self.landmarks is not None:
            lm = np.asarray(self.landmarks, dtype=np.float32)
            if lm.size != 10:
                raise ValueError(f"landmarks must be 5 (x, y) points (10 numbers), got {lm.size} numbers")
            lm = lm.reshape(5, 2)
            if not np.all(np.isfinite(lm)):
                raise ValueError("landmarks must be finite")
            self.landmarks = lm


@dataclass
class Problem:
    """Something a reader or the prepare step could not use (kept=False: skipped) or used
    with a change (kept=True: a warning, e.g. a clipped age or an odd UTKFace name)."""

    source: str
    reason: str
    kept: bool = False

    def __str__(self):
        return f"{'warning' if self.kept else 'skipped'}: {self.source}: {self.reason}"


@dataclass
class Report:
    """What a read (or a prepare) did: how many items it saw and used, and every problem."""

    what: str = ""
    n_seen: int = 0
    n_used: int = 0
    problems: list = field(default_factory=list)
    # identity readers: the name of each identity number (index = number), or None
    identity_names: list | None = None

    @property
    def skipped(self) -> list:
        return [p for p in self.problems if not p.kept]

    @property
    def warnings(self) -> list:
        return [p for p in self.problems if p.kept]

    def skip(self, source, reason):
        self.problems.append(Problem(str(source), reason, kept=False))

    def warn(self, source, reason):
        self.problems.append(Problem(str(source), reason, kept=True))

    def extend(self, other: "Report"):
        self.problems.extend(other.problems)

    def summary(self) -> str:
        return (f"{self.what}: {self.n_seen} seen, {self.n_used} used, "
                f"{len(self.skipped)} skipped, {len(self.warnings)} warnings")

    def __str__(self):
        lines = [self.summary()]
        lines += [f"  {p}" for p in self.problems]
        return "\n".join(lines)


class _RowError(Exception):
    """A row that cannot be parsed (always reported, never raised to the user)."""


def _finish_age(age: float, source: str, report: Report, max_age) -> float:
    if max_age is not None and age > max_age:
        report.warn(source, f"age {age:g} above {max_age:g}, clipped to {max_age:g}")
        return float(max_age)
    return age


def _make_record(source, report, errors, max_age, path, age, **kw):
    """Build a Record; invalid values raise (errors="raise") or are reported."""
    try:
        rec = Record(path, age, **kw)
    except ValueError as e:
        if errors == "raise":
            raise ValueError(f"{source}: {e}") from None
        report.skip(source, str(e))
        return None
    rec.age = _finish_age(rec.age, source, report, max_age)
    return rec


def _check_errors_arg(errors):
    if errors not in ("raise", "report"):
        raise ValueError(f'errors must be "raise" or "report", got {errors!r}')


def _parse_float(text, what):
    text = (text or "").strip()
    if text == "":
        raise _RowError(f"empty {what}")
    try:
        return float(text)
    except ValueError:
        raise _RowError(f"{what} {text!r} is not a number") from None


def _resolve(root, p):
    p = p.strip()
    return p if os.path.isabs(p) else os.path.normpath(os.path.join(root, p))


def _require_file(path, what="file"):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    if not os.path.isfile(path):
        raise ValueError(f"{what} is not a regular file: {path}")


def _read_rows(path, delimiter=None):
    """Rows of a text CSV; the delimiter is sniffed among , ; and tab when not given."""
    _require_file(path, "CSV file")
    with open(path, newline="", encoding="utf-8-sig") as f:
        text = f.read()
    if text.strip() == "":
        raise ValueError(f"CSV file is empty: {path}")
    if delimiter is None:
        first = text.splitlines()[0]
        counts = {d: first.count(d) for d in ",;\t"}
        delimiter = max(counts, key=counts.get) if max(counts.values()) > 0 else ","
    rows = list(csv.reader(text.splitlines(), delimiter=delimiter))
    # keep 1-based line numbers; blank lines are skipped without a report (they carry nothing)
    return [(i + 1, r) for i, r in enumerate(rows) if any(c.strip() for c in r)]


def _is_number(text):
    try:
        float(text)
        return True
    except (TypeError, ValueError):
        return False


class _IdentityMap:
    """Identity labels as given (integers) or, when any is not an integer, numbered in order
    of first appearance; the names are kept in report-visible `names`."""

    def __init__(self, values: Sequence[str]):
        vals = [v.strip() for v in values if v is not None and v.strip() != ""]
        self.numeric = all(v.lstrip("-").isdigit() for v in vals)
        self.codes = {}
        if not self.numeric:
            for v in vals:
                self.codes.setdefault(v, len(self.codes))

    def __call__(self, v):
        if v is None or v.strip() == "":
            return None
        v = v.strip()
        return int(v) if self.numeric else self.codes[v]


# --------------------------------------------------------------------------- CSV


def read_csv(path, columns: Mapping | None = None, *, header: bool = True, delimiter: str | None = None,
             root=None, max_age: float | None = MAX_AGE, errors: str = "raise",
             check_files: bool = True) -> tuple[list[Record], Report]:
    """Read a label CSV into records.

    columns: maps the roles path, age, sigma, identity, landmarks to column names (with a
    header) or 0-based indices (header=False); it updates DEFAULT_COLUMNS (path, age, sigma,
    identity, lx1, ly1, ..., lx5, ly5). landmarks is a list of 10 columns (x1, y1, ..., x5,
    y5) or one column holding 10 numbers separated by spaces. path and age are required;
    optional columns absent from the header are ignored. Relative image paths are taken
    from `root` (default: the CSV's folder).

    Returns (records, report). Raises FileNotFoundError (no CSV), ValueError (empty CSV, no
    data rows, a required column missing, and, with errors="raise", a negative age or
    landmarks of the wrong length)."""
    return _read_label_csv(path, columns, header, delimiter, root, max_age, errors, check_files,
                           identities=False)


def read_identity_csv(path, columns: Mapping | None = None, *, header: bool = True,
                      delimiter: str | None = None, root=None, errors: str = "raise",
                      check_files: bool = True) -> tuple[list[Record], Report]:
    """Identity labels for pre-training from a CSV: the columns path and identity (names
    as in read_csv's `columns`; with header=False, give their indices, e.g.
    columns={"path": 0, "identity": 1}); the optional landmark columns of read_csv align
    the faces as for ages, and an optional age column is kept. Identities that are all
    integers are kept as given; otherwise they are numbered 0, 1, ... in order of first
    appearance and their names are in report.identity_names. A row without an identity
    is skipped and reported; an identity with a single image is reported (it has no
    positive pair for verification) and kept. ValueError when no row is usable."""
    records, report = _read_label_csv(path, columns, header, delimiter, root, None, errors,
                                      check_files, identities=True)
    _check_identities(records, report, os.fspath(path))
    return records, report


def _read_label_csv(path, columns, header, delimiter, root, max_age, errors, check_files,
                    identities):
    _check_errors_arg(errors)
    path = os.fspath(path)
    rows = _read_rows(path, delimiter)
    cols = dict(DEFAULT_COLUMNS)
    user = dict(columns or {})
    unknown = set(user) - set(DEFAULT_COLUMNS)
    if unknown:
        raise ValueError(f"columns: unknown roles {sorted(unknown)}; known: {sorted(DEFAULT_COLUMNS)}")
    cols.update(user)
    root = os.path.dirname(os.path.abspath(path)) if root is None else os.fspath(root)
    report = Report(what=f"{'read_identity_csv' if identities else 'read_csv'}({path})")

    if header:
        names = [c.strip() for c in rows[0][1]]
        rows = rows[1:]
        index = {n: i for i, n in enumerate(names)}

        def col(role, required):
            spec = cols.get(role)
            if spec is None:
                return None
            if role == "landmarks" and not isinstance(spec, str):
                spec = list(spec)
                present = [s in index for s in spec]
                if all(present):
                    return [index[s] for s in spec]
                if any(present) or role in user:
                    missing = [s for s, p in zip(spec, present) if not p]
                    raise ValueError(f"{path}: landmark columns missing from the header: {missing}")
                return None
            if spec in index:
                return index[spec]
            if required or role in user:
                raise ValueError(f"{path}: column {spec!r} ({role}) not in the header {names}")
            return None
    else:
        def col(role, required):
            # without a header only what the user mapped (to integer indices) is used
            if role not in user or user[role] is None:
                if required:
                    raise ValueError(f"{path}: header=False needs an integer column index for {role!r}")
                return None
            spec = user[role]
            ok = isinstance(spec, int) or (role == "landmarks" and not isinstance(spec, str)
                                           and all(isinstance(s, int) for s in spec))
            if not ok:
                raise ValueError(f"{path}: header=False needs integer column indices, got {role}={spec!r}")
            return spec if isinstance(spec, int) else list(spec)

    # ages: required for age data; identity data needs the identity column instead
    c_path, c_age = col("path", True), col("age", not identities)
    c_sigma, c_id, c_lm = col("sigma", False), col("identity", identities), col("landmarks", False)
    if not rows:
        raise ValueError(f"CSV file has no data rows: {path}")

    ids = _IdentityMap([r[c_id] if c_id is not None and c_id < len(r) else None for _, r in rows])
    if not ids.numeric:
        report.warn(path, f"identities are not integers: numbered 0..{len(ids.codes) - 1} in order of appearance")
        report.identity_names = list(ids.codes)

    records = []
    for line, r in rows:
        src = f"{path}:{line}"
        report.n_seen += 1
        try:
            need = [c for c in (c_path, c_age, c_sigma, c_id) if c is not None]
            if c_lm is not None:
                need += [c_lm] if isinstance(c_lm, int) else list(c_lm)
            if max(need) >= len(r):
                raise _RowError(f"{len(r)} fields, expected at least {max(need) + 1}")
            img = r[c_path].strip()
            if not img:
                raise _RowError("empty image path")
            if identities:  # an age where one is given, else unknown
                age = _parse_float(r[c_age], "age") if c_age is not None and r[c_age].strip() else None
            else:
                age = _parse_float(r[c_age], "age")
            sigma = _parse_float(r[c_sigma], "sigma") if c_sigma is not None and r[c_sigma].strip() else None
            ident = ids(r[c_id]) if c_id is not None else None
            if identities and ident is None:
                raise _RowError("empty identity")
            lm = None
            if c_lm is not None:
                texts = r[c_lm].split() if isinstance(c_lm, int) else [r[c].strip() for c in c_lm]
                filled = [t for t in texts if t != ""]
                if filled:
                    if len(filled) != len(texts) and errors == "report":
                        raise _RowError(f"landmarks: {len(filled)} of {len(texts)} values given")
                    lm = np.array([_parse_float(t, "landmark") for t in filled], dtype=np.float32)
        except _RowError as e:
            report.skip(src, str(e))
            continue
        full = _resolve(root, img)
        if check_files and not os.path.isfile(full):
            report.skip(src, f"image not found: {full}")
            continue
        rec = _make_record(src, report, errors, max_age, full, age, sigma=sigma, identity=ident, landmarks=lm)
        if rec is not None:
            records.append(rec)
    report.n_used = len(records)
    return records, report


def read_chalearn(path, images=None, *, max_age: float | None = MAX_AGE, errors: str = "raise",
                  check_files: bool = True) -> tuple[list[Record], Report]:
    """Chalearn LAP 2015 style labels: rows of (image, mean apparent age, standard
    deviation), comma- or semicolon-separated, with or without a header line (the first row
    is a header only when no field is a number and the first names no image file; see
    _looks_like_header: a malformed first data row is reported, not dropped). The mean
    becomes the age and the standard deviation the record's sigma. Images are looked up in
    `images` (default: the CSV's folder)."""
    _check_errors_arg(errors)
    path = os.fspath(path)
    rows = _read_rows(path)
    header = _looks_like_header(rows[0][1], 3)
    return _read_positional(path, rows[1:] if header else rows, images, ("image", "mean", "std"),
                            max_age, errors, check_files, "read_chalearn")


def read_mivia(path, images=None, *, max_age: float | None = MAX_AGE, errors: str = "raise",
               check_files: bool = True) -> tuple[list[Record], Report]:
    """MIVIA Age (CAIP 2021 Guess The Age) style labels: rows of `path,age` without a
    header (a header line, if present, is recognised as in read_chalearn and skipped).
    Images are looked up in `images` (default: the CSV's folder)."""
    _check_errors_arg(errors)
    path = os.fspath(path)
    rows = _read_rows(path)
    header = _looks_like_header(rows[0][1], 2)
    return _read_positional(path, rows[1:] if header else rows, images, ("path", "age"),
                            max_age, errors, check_files, "read_mivia")


def _looks_like_header(row, n_fields):
    """Whether the first row of a positional label file (image, number, ...) is a header
    line: it has all `n_fields` fields, none of them parses as a number, and the image
    field does not name an image file. Anything else is data, so a malformed first row
    (`a.jpg,abc`, `broken`) is parsed and reported like any other row, never dropped."""
    fields = [c.strip() for c in row]
    if len(fields) < n_fields or not all(fields[:n_fields]) or any(_is_number(c) for c in fields[:n_fields]):
        return False
    return not _is_image_name(fields[0])


def _read_positional(path, rows, images, fields, max_age, errors, check_files, what):
    if not rows:
        raise ValueError(f"CSV file has no data rows: {path}")
    root = os.path.dirname(os.path.abspath(path)) if images is None else os.fspath(images)
    report = Report(what=f"{what}({path})")
    records = []
    for line, r in rows:
        src = f"{path}:{line}"
        report.n_seen += 1
        try:
            if len(r) < len(fields):
                raise _RowError(f"{len(r)} fields, expected {len(fields)} ({', '.join(fields)})")
            img = r[0].strip()
            if not img:
                raise _RowError("empty image path")
            age = _parse_float(r[1], "age")
            sigma = _parse_float(r[2], "std") if len(fields) > 2 else None
        except _RowError as e:
            report.skip(src, str(e))
            continue
        full = _resolve(root, img)
        if check_files and not os.path.isfile(full):
            report.skip(src, f"image not found: {full}")
            continue
        rec = _make_record(src, report, errors, max_age, full, age, sigma=sigma)
        if rec is not None:
            records.append(rec)
    report.n_used = len(records)
    return records, report


# --------------------------------------------------------------------------- file names


def _is_image_name(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _require_dir(path, what):
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    if not os.path.isdir(path):
        raise NotADirectoryError(f"{what} is not a folder: {path}")


def parse_utkface_name(name: str):
    """(age, extra, warnings) from a UTKFace name `<age>_<gender>_<race>_<date>.jpg.chip.jpg`.
    The age (first field) must be an integer, else ValueError; anything else odd is a
    warning (the original set has names with a missing race or a missing extension)."""
    warnings = []
    stem = name
    low = stem.lower()
    for suffix in (".jpg.chip.jpg", ".chip.jpg", ".jpg", ".jpeg", ".png"):
        if low.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    fields = stem.split("_")
    if not fields[0].isdigit():
        raise ValueError(f"first field {fields[0]!r} is not an age")
    age = int(fields[0])
    extra = {}
    if len(fields) != 4:
        warnings.append(f"{len(fields)} fields instead of 4 (age_gender_race_date)")
    if len(fields) > 1 and fields[1] in ("0", "1"):
        extra["gender"] = int(fields[1])
    elif len(fields) > 1:
        warnings.append(f"gender {fields[1]!r} not 0 or 1")
    if len(fields) == 4:
        if fields[2] in ("0", "1", "2", "3", "4"):
            extra["race"] = int(fields[2])
        else:
            warnings.append(f"race {fields[2]!r} not in 0..4")
        if not fields[3].isdigit():
            warnings.append(f"date field {fields[3]!r} is not all digits (a stray space, a missing dot?)")
    if not low.endswith(".jpg.chip.jpg"):
        warnings.append("name does not end in .jpg.chip.jpg")
    return age, extra, warnings


def read_utkface(folder, *, max_age: float | None = MAX_AGE) -> tuple[list[Record], Report]:
    """UTKFace: the labels are in the file names, `<age>_<gender>_<race>_<date>.jpg.chip.jpg`
    (gender 0 male, 1 female; race 0-4). The age is always the first field; a name whose
    first field is not an integer is skipped and reported; other malformations (a missing
    race, a missing extension dot) are reported as warnings and the image is kept with the
    fields that could be read (extra: gender, race). Files are listed in sorted order."""
    folder = os.fspath(folder)
    _require_dir(folder, "UTKFace folder")
    report = Report(what=f"read_utkface({folder})")
    records = []
    for name in sorted(os.listdir(folder)):
        full = os.path.join(folder, name)
        report.n_seen += 1
        if not os.path.isfile(full):
            report.skip(full, "not a file")
            continue
        if not _is_image_name(name):
            report.skip(full, "not an image file name")
            continue
        try:
            age, extra, warnings = parse_utkface_name(name)
        except ValueError as e:
            report.skip(full, f"malformed UTKFace name: {e}")
            continue
        for w in warnings:
            report.warn(full, f"malformed UTKFace name: {w}")
        rec = Record(full, age, extra=extra)
        rec.age = _finish_age(rec.age, full, report, max_age)
        records.append(rec)
    report.n_used = len(records)
    return records, report


def read_age_folders(root, *, max_age: float | None = MAX_AGE) -> tuple[list[Record], Report]:
    """One folder per age: `root/<age>/<image>`. Folder names must be numbers (`23`, `23.5`);
    other folders, loose files in root and non-image files are reported and skipped."""
    root = os.fspath(root)
    _require_dir(root, "age folder root")
    report = Report(what=f"read_age_folders({root})")
    records = []
    for sub in sorted(os.listdir(root)):
        d = os.path.join(root, sub)
        if not os.path.isdir(d):
            report.n_seen += 1
            report.skip(d, "a file outside the age folders")
            continue
        try:
            age = float(sub)
            if not math.isfinite(age) or age < 0:
                raise ValueError
        except ValueError:
            report.n_seen += 1  # counted like a loose file: n_seen = n_used + skipped
            report.skip(d, f"folder name {sub!r} is not an age (a number >= 0)")
            continue
        for name in sorted(os.listdir(d)):
            full = os.path.join(d, name)
            report.n_seen += 1
            if not os.path.isfile(full) or not _is_image_name(name):
                report.skip(full, "not an image file")
                continue
            rec = Record(full, age)
            rec.age = _finish_age(rec.age, full, report, max_age)
            records.append(rec)
    report.n_used = len(records)
    return records, report


def read_identity_folders(root) -> tuple[list[Record], Report]:
    """One folder per identity: `root/<identity>/<image>` (CASIA-WebFace, VGGFace2 and the
    MS-Celeb-1M derivatives come this way). The identities are numbered 0, 1, ... in the
    sorted order of the folder names, which are kept in report.identity_names; the records
    have no age. Loose files in root, non-image files and empty folders are reported and
    skipped; an identity with a single image is reported (no positive pair for
    verification) and kept. ValueError when no folder holds an image. The folders are
    listed with os.scandir, so millions of files are read without stat calls per file."""
    root = os.fspath(root)
    _require_dir(root, "identity folder root")
    report = Report(what=f"read_identity_folders({root})")
    records, names = [], []
    with os.scandir(root) as it:
        entries = sorted(it, key=lambda e: e.name)
    for sub in entries:
        if not sub.is_dir():
            report.n_seen += 1
            report.skip(sub.path, "a file outside the identity folders")
            continue
        with os.scandir(sub.path) as it:
            files = sorted(it, key=lambda e: e.name)
        ident = len(names)
        found = 0
        for f in files:
            report.n_seen += 1
            if not f.is_file() or not _is_image_name(f.name):
                report.skip(f.path, "not an image file")
                continue
            records.append(Record(f.path, None, identity=ident))
            found += 1
        if found == 0:
            report.skip(sub.path, "identity folder without images")
            continue
        names.append(sub.name)
    report.identity_names = names
    report.n_used = len(records)
    _check_identities(records, report, root)
    return records, report


def _check_identities(records, report, source):
    """What every identity reader checks: some images at all (else ValueError: nothing to
    pre-train on), and each identity with a single image reported (kept: it still trains
    the classifier, but it gives no positive pair for verification)."""
    if not records:
        raise ValueError(f"{source}: no identity-labelled images found (expected one folder "
                         f"per identity, or a CSV with path and identity columns)\n{report}")
    counts = np.bincount(np.array([r.identity for r in records], dtype=np.int64))
    names = report.identity_names
    for ident in np.flatnonzero(counts == 1):
        label = names[ident] if names is not None and ident < len(names) else str(ident)
        report.warn(f"{source}: identity {label}", "only one image: no positive pair for "
                    "verification (kept for training)")


# --------------------------------------------------------------------------- decoding


class DecodeError(ValueError):
    """An image file that cannot be decoded (corrupt, truncated, not an image)."""


ALPHA_BACKGROUND = 128  # mid grey: becomes ~0 after the (x - 127.5) / 128 normalisation
# Larger images are refused before any pixel is decoded: a 50-byte file can declare
# 13,000 x 13,000 pixels (Pillow only warns below 179 M), and decoding allocates them all.
# 64 M pixels is an 8,000 x 8,000 photo, far beyond any face data set's. Above 4 M pixels
# an image must also come from a file of at least pixels / 4096 bytes: no format glae
# reads compresses real pixels further (deflate stops near 1,032:1, GIF's LZW near
# 2,700 pixels a byte), while a 43-byte GIF declaring 1,543 x 39,355 pixels kept Pillow
# busy for seconds filling 60 M of them.
MAX_IMAGE_PIXELS = 64_000_000
_MAX_PIXELS_PER_BYTE = 4096


def load_image(path) -> np.ndarray:
    """Decode an image file with Pillow into uint8 RGB (H, W, 3), EXIF orientation applied.

    Grayscale, palette, CMYK and 16-bit images are converted to RGB; an alpha channel is
    composited onto mid grey. Raises FileNotFoundError for a missing file, IsADirectoryError
    for a folder, and DecodeError for a corrupt, truncated or foreign file or one that is not a
    regular file (/dev/null, a pipe) (Pillow's LOAD_TRUNCATED_IMAGES is left off, so a
    truncated JPEG is an error rather than a grey-filled image), and for one whose header
    declares more than MAX_IMAGE_PIXELS pixels, or more than 4 M pixels and over 4,096
    pixels per byte of the file (checked before decoding)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"not an image file but a folder: {path}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"image not found: {path}")
    if not os.path.isfile(path):  # a device, a FIFO, a socket: reading it may never end
        raise DecodeError(f"not a regular file (a device or pipe), so not an image: {path}")
    try:
        with Image.open(path) as im:
            w, h = im.size  # from the header: nothing decoded yet
            if w * h > MAX_IMAGE_PIXELS:
                raise DecodeError(f"image too large: {w} x {h} pixels, more than glae reads "
                                  f"({MAX_IMAGE_PIXELS:,}; glae.data.readers.MAX_IMAGE_PIXELS): {path}")
            nbytes = os.path.getsize(path)
            if w * h > 4_000_000 and w * h > _MAX_PIXELS_PER_BYTE * nbytes:
                raise DecodeError(f"image too large for its file: {w} x {h} pixels declared by "
                                  f"{nbytes} bytes (a damaged or hostile header): {path}")
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
    except DecodeError:
        raise
    except UnidentifiedImageError as e:
        raise DecodeError(f"not a readable image: {e}") from None
    except Image.DecompressionBombError as e:
        raise DecodeError(f"image too large: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise DecodeError(f"corrupt or truncated image: {e}") from None


def _to_rgb(im) -> np.ndarray:
    from PIL import Image

    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8).copy()
    if mode.startswith("I;16") or mode in ("I", "F"):
        a = np.asarray(im).astype(np.float64)
        top = 65535.0 if mode.startswith("I;16") or a.max(initial=0) > 255 else 255.0
        g = np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.repeat(g[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (ALPHA_BACKGROUND,) * 3 + (255,))
        return np.asarray(Image.alpha_composite(bg, im).convert("RGB"), dtype=np.uint8).copy()
    return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def records_from_arrays(paths: Iterable, ages, sigmas=None, identities=None, landmarks=None):
    """Records from parallel sequences (a convenience for notebooks); validates as Record does."""
    paths = list(paths)
    ages = np.asarray(ages, dtype=np.float64).reshape(-1)
    if len(paths) != len(ages):
        raise ValueError(f"paths and ages differ in length: {len(paths)} vs {len(ages)}")
    out = []
    for i, (p, a) in enumerate(zip(paths, ages)):
        out.append(Record(p, a,
                          sigma=None if sigmas is None else float(sigmas[i]),
                          identity=None if identities is None or identities[i] is None or identities[i] < 0
                          else int(identities[i]),
                          landmarks=None if landmarks is None else landmarks[i]))
    return out
