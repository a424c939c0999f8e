"""Comparing the final outputs of two runs of the chain.

FITS maps (sheets, kappa maps): the same HDUs, the raw data bytes of every HDU identical (read at the
offsets astropy reports, so dtype, byte order and every pixel count) and the same header cards. HDF5
results files: the same groups and datasets, every dataset with the same dtype, shape and bytes, and the
same attributes, except those that legitimately differ between runs (creation date, rank count).
Each function returns a list of human-readable differences (empty when the files agree).
"""
from pathlib import Path
from typing import Dict, List, Tuple

import h5py
import numpy as np
from astropy.io import fits

# Header cards and HDF5 attributes that record when or how a file was made, not what it holds.
IGNORED_FITS_CARDS = frozenset({"DATE", "CHECKSUM", "DATASUM"})
IGNORED_HDF5_ATTRS = frozenset({"creation_date", "n_ranks"})
# The final outputs of each stage, relative to output_dir.
FINAL_OUTPUTS = {
    "preprocess": "mass_sheets/delta-sheet-*.fits",
    "kappa": "kappa/kappa_zs*_s*.fits",
    "analyze": "stats/stats_zs*_s*_oa*.h5",
}


def _same(first, second) -> bool:
    """Equal type, shape and bytes (strings and objects: equal values)."""
    a, b = np.asarray(first), np.asarray(second)
    if a.shape != b.shape:
        return False
    if a.dtype.kind in "OUS" or b.dtype.kind in "OUS":
        return a.dtype.kind == b.dtype.kind and bool(np.all(a == b))
    return a.dtype == b.dtype and a.tobytes() == b.tobytes()


def fits_differences(expected, found) -> List[str]:
    """Differences between two FITS files: HDU count, header cards, raw data bytes per HDU."""
    problems = []
    raw = {path: Path(path).read_bytes() for path in (expected, found)}
    with fits.open(expected) as first, fits.open(found) as second:
        if len(first) != len(second):
            return [f"{found}: {len(second)} HDUs, expected {len(first)}"]
        for index, (a, b) in enumerate(zip(first, second)):
            cards_a = {k: v for k, v in a.header.items() if k not in IGNORED_FITS_CARDS}
            cards_b = {k: v for k, v in b.header.items() if k not in IGNORED_FITS_CARDS}
            changed = sorted(k for k in cards_a.keys() | cards_b.keys() if cards_a.get(k) != cards_b.get(k))
            if changed:
                problems.append(f"{found} HDU {index}: header cards differ: " +
                                ", ".join(f"{k}={cards_b.get(k)!r} (expected {cards_a.get(k)!r})" for k in changed))
            spans = []
            for path, hdu in ((expected, a), (found, b)):
                info = hdu.fileinfo()
                spans.append(raw[path][info["datLoc"]:info["datLoc"] + info["datSpan"]])
            if spans[0] != spans[1]:
                problems.append(f"{found} HDU {index}: data bytes differ ({len(spans[1])} bytes, expected "
                                f"{len(spans[0])})")
    return problems


def _hdf5_objects(path) -> Dict[str, Tuple[str, object, Dict[str, object]]]:
    """name -> (kind "group" or "dataset", dataset value or None, attributes) of every object in the file."""
    with h5py.File(path, "r") as handle:
        objects = {"/": ("group", None, dict(handle.attrs))}

        def visit(name, item):
            if isinstance(item, h5py.Dataset):
                objects[name] = ("dataset", item[()], dict(item.attrs))
            else:
                objects[name] = ("group", None, dict(item.attrs))

        handle.visititems(visit)
    return objects


def hdf5_differences(expected, found) -> List[str]:
    """Differences between two HDF5 files: objects, dataset dtype/shape/bytes, attributes."""
    first, second = _hdf5_objects(expected), _hdf5_objects(found)
    problems = []
    if first.keys() != second.keys():
        problems.append(f"{found}: objects differ: missing {sorted(first.keys() - second.keys())}, "
                        f"extra {sorted(second.keys() - first.keys())}")
    for name in sorted(first.keys() & second.keys()):
        kind_a, value_a, attrs_a = first[name]
        kind_b, value_b, attrs_b = second[name]
        if kind_a != kind_b:
            problems.append(f"{found}:{name}: a {kind_b}, expected a {kind_a}")
        elif kind_a == "dataset" and not _same(value_a, value_b):
            problems.append(f"{found}:{name}: dataset differs")
        keys = (attrs_a.keys() | attrs_b.keys()) - IGNORED_HDF5_ATTRS
        changed = sorted(k for k in keys if k not in attrs_a or k not in attrs_b or not _same(attrs_a[k], attrs_b[k]))
        if changed:
            problems.append(f"{found}:{name}: attributes differ: " +
                            ", ".join(f"{k}={attrs_b.get(k)} (expected {attrs_a.get(k)})" for k in changed))
    return problems


def final_outputs(directory, stages=tuple(FINAL_OUTPUTS)) -> Dict[str, Path]:
    """The final output files of ``stages`` under ``directory``: relative path -> path."""
    directory = Path(directory)
    return {str(p.relative_to(directory)): p for stage in stages for p in sorted(directory.glob(FINAL_OUTPUTS[stage]))}


def output_differences(expected_dir, found_dir, stages=tuple(FINAL_OUTPUTS)) -> List[str]:
    """Every difference between the final outputs of ``stages`` in two output directories, and any
    ``*.inprogress`` file left under ``found_dir``."""
    expected, found = final_outputs(expected_dir, stages), final_outputs(found_dir, stages)
    problems = []
    if not expected:
        problems.append(f"{expected_dir}: no final outputs of {', '.join(stages)} to compare with")
    if expected.keys() != found.keys():
        problems.append(f"{found_dir}: final outputs differ: missing {sorted(expected.keys() - found.keys())}, "
                        f"extra {sorted(found.keys() - expected.keys())}")
    for name in sorted(expected.keys() & found.keys()):
        compare = hdf5_differences if name.endswith(".h5") else fits_differences
        problems += compare(expected[name], found[name])
    problems += [f"{path}: left behind" for path in sorted(Path(found_dir).rglob("*.inprogress"))]
    return problems
