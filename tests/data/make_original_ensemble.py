"""Make ``tests/data/original_ensemble/{bigbox,tiled}/stats_zs1.0_s*_oa10.h5`` from the real original files.

Each output keeps, from one real results file of the original LensingSSC code, only the datasets the
ensemble tests need, under the same names (so the ensemble stage reads them by the same code path):
``power_spectra/ngal_0/cl``, ``smoothed_statistics/ngal_0/sl_2/pdf``, ``smoothed_statistics/ngal_0/sl_2/sigma/0``
and ``metadata/parameters`` (its datasets and attributes), values, dtypes and shapes unchanged.

    .venv/bin/python tests/data/make_original_ensemble.py ../shared/reference/original_stats_zs1.0
"""
import sys
from pathlib import Path

import h5py

KEPT = ("power_spectra/ngal_0/cl", "smoothed_statistics/ngal_0/sl_2/pdf", "smoothed_statistics/ngal_0/sl_2/sigma/0")
FAMILIES = ("bigbox", "tiled")
OUT = Path(__file__).resolve().parent / "original_ensemble"


def reduce_file(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(source, "r") as src, h5py.File(target, "w") as dst:
        for path in KEPT:
            dst.create_dataset(path, data=src[path][()])
        parameters = dst.require_group("metadata/parameters")
        for name, dataset in src["metadata/parameters"].items():
            parameters.create_dataset(name, data=dataset[()])
        for key, value in src["metadata/parameters"].attrs.items():
            parameters.attrs[key] = value


def main(reference_dir: str) -> None:
    reference = Path(reference_dir)
    for family in FAMILIES:
        sources = sorted((reference / family).glob("stats_zs*_s*_oa*.h5"))
        if not sources:
            raise SystemExit(f"{reference / family}: no stats_zs*_s*_oa*.h5 files")
        for source in sources:
            reduce_file(source, OUT / family / source.name)
        print(f"{family}: {len(sources)} files")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/reference/original_stats_zs1.0")
