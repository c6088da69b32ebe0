"""glae.data: from a user's images and labels to the packed dataset that training mmaps.

readers   read_csv, read_utkface, read_chalearn, read_mivia, read_age_folders -> (records, report);
          read_identity_folders, read_identity_csv: identity-labelled faces for pre-training;
          load_image (Pillow decode: RGB, EXIF orientation)
prepare   prepare(records or "kind:path", out_path, size, margin, workers) -> report
packed    PackedDataset (memmap), PackedWriter, write_packed: the file layout
protocols random_split, subject_split, split(name), deduplicate, balanced_subset, kfold (GLAE IV-A)
synthetic synthetic_faces, write_synthetic: a stand-in data set so the pipeline runs anywhere;
          synthetic_identities: synthetic people for identity pre-training
See docs/data.md.
"""
from .packed import PackedDataset, PackedFormatError, PackedWriter, pixel_hash, write_packed
from .prepare import prepare, read_source
from .protocols import (PROTOCOLS, age_classes, balanced_subset, deduplicate, kfold, random_split, split,
                        subject_split)
from .readers import (DecodeError, Problem, Record, Report, load_image, read_age_folders, read_chalearn,
                      read_csv, read_identity_csv, read_identity_folders, read_mivia, read_utkface,
                      records_from_arrays)
from .synthetic import age_pmf, sample_ages, synthetic_faces, synthetic_identities, write_synthetic

__all__ = [
    "DecodeError", "PROTOCOLS", "PackedDataset", "PackedFormatError", "PackedWriter", "Problem", "Record",
    "Report", "age_classes", "age_pmf", "balanced_subset", "deduplicate", "kfold", "load_image", "pixel_hash",
    "prepare", "random_split", "read_age_folders", "read_chalearn", "read_csv", "read_identity_csv",
    "read_identity_folders", "read_mivia", "read_source",
    "read_utkface", "records_from_arrays", "sample_ages", "split", "subject_split", "synthetic_faces",
    "synthetic_identities", "write_packed", "write_synthetic",
]
