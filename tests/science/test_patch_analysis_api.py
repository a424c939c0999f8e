"""The one-patch Python API of docs/quickstart.md: serial, no MPI, no files (SCIENCE.md §6–7)."""
import json
import re

from conftest import REPO, run_python

NGAL = (0, 7, 15, 30, 50)
SCALES = ("2", "5", "8", "10")
NBIN = 8


def quickstart_snippet():
    """The ```python block under "Python, one patch, no MPI and no files:" in docs/quickstart.md."""
    text = (REPO / "docs" / "quickstart.md").read_text()
    found = re.search(r"Python, one patch, no MPI and no files:\s*```python\n(.*?)```", text, re.S)
    assert found, "docs/quickstart.md: the one-patch Python snippet is missing"
    return found.group(1)


def expected_shapes():
    """Dataset path -> per-patch shape of the default settings, in the results layout (SCIENCE.md §7)."""
    shapes = {}
    for ngal in NGAL:
        shapes[f"power_spectra/ngal_{ngal}/cl"] = [NBIN]
        for name in ("equilateral", "isosceles", "squeezed"):
            shapes[f"bispectra/ngal_{ngal}/{name}"] = [NBIN]
        for scale in SCALES:
            base = f"smoothed_statistics/ngal_{ngal}/sl_{scale}"
            for name in ("pdf", "peaks", "minima", "minkowski/v0", "minkowski/v1", "minkowski/v2"):
                shapes[f"{base}/{name}"] = [NBIN]
            shapes[f"{base}/sigma/0"] = shapes[f"{base}/sigma/1"] = []
    return shapes


REPORT = """
import json, sys
report = {path: [list(np.shape(value)), str(np.asarray(value).dtype), bool(np.all(np.isfinite(value)))]
          for path, value in stats.items()}
print(json.dumps({"stats": report, "mpi4py": "mpi4py" in sys.modules}))
"""


def test_quickstart_one_patch_snippet_runs_serially_without_mpi_or_files(tmp_path):
    """The snippet as documented, in a fresh interpreter started from an empty directory: every
    statistic of every noise level and scale, with its shape, finite float64 values, mpi4py never
    imported and no file written."""
    result = run_python(["-c", quickstart_snippet() + REPORT], cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not report["mpi4py"], "the one-patch API imported mpi4py"
    shapes = expected_shapes()
    assert sorted(report["stats"]) == sorted(shapes)
    for path, (shape, dtype, finite) in report["stats"].items():
        assert (shape, dtype, finite) == (shapes[path], "float64", True), path
    assert list(tmp_path.iterdir()) == []
