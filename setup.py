"""Installation of lensing_ssc (DESIGN.md §2 asks for a top-level setup.py)."""
from setuptools import find_packages, setup

setup(
    name="lensing_ssc",
    version="0.1.0",
    description="MPI-parallel weak-lensing super-sample-covariance pipeline",
    packages=find_packages(include=["lensing_ssc", "lensing_ssc.*"]),
    python_requires=">=3.9",
    install_requires=[
        "numpy>=1.22",
        "scipy",
        "healpy",
        "astropy",
        "h5py",
        "mpi4py",
        "bigfile",
        "pyyaml",
        "psutil",
        "threadpoolctl",
        "tqdm",
        "matplotlib",
        # compiled loops of science/cubic_spline.py (patch projection); imported only when patches are projected
        "numba",
    ],
    extras_require={
        # the ensemble stage's analytic SSC overlay (ensemble.theory; lensing_ssc/science/ssc_theory.py)
        "theory": ["pyccl>=3"],
        # pyccl too, so that the test suite (and CI, through scripts/bootstrap.sh) runs the theory tests
        "test": ["pytest", "pytest-mpi", "pytest-timeout", "pyccl>=3"],
    },
    entry_points={"console_scripts": ["lensing-ssc = lensing_ssc.cli:entry_point"]},
)
