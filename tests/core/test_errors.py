"""The error hierarchy and the exit code of each error (DESIGN.md §3)."""
import errno
import pickle

import pytest

from lensing_ssc.core.errors import (CheckpointedExit, ConfigError, InputError, LensingSSCError, ResourceError,
                                     TransientError, ValidationError, exit_code_for, is_disk_full)

EXPECTED_EXIT_CODES = [
    (ConfigError(["pipeline.batch_size: bad"]), 2),
    (InputError("delta-sheet-20.fits: missing"), 2),
    (ValidationError("step X: input validation failed"), 2),
    (ResourceError("needs 9 GB"), 3),
    (CheckpointedExit("stopped"), 75),
    (TransientError("hiccup"), 1),
    (LensingSSCError("other"), 1),
    (MemoryError(), 3),
    (OSError(errno.ENOSPC, "No space left on device"), 3),  # a full disk is a resource error
    (OSError(errno.EDQUOT, "Disk quota exceeded", "out/kappa.fits"), 3),
    (OSError(errno.EIO, "Input/output error"), 1),
    (OSError("no errno"), 1),
    (RuntimeError("bug"), 1),
    (KeyError("x"), 1),
]


def case_id(value):
    if isinstance(value, int):
        return str(value)
    if isinstance(value, OSError):
        return f"OSError-{errno.errorcode.get(value.errno, 'no-errno')}"
    return type(value).__name__


@pytest.mark.parametrize("error, code", EXPECTED_EXIT_CODES, ids=case_id)
def test_exit_code_for(error, code):
    assert exit_code_for(error) == code


def test_is_disk_full_only_for_enospc_and_edquot():
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded", "f.h5"))
    assert not is_disk_full(OSError(errno.EIO, "Input/output error"))
    assert not is_disk_full(OSError("1000 requested and 10 written"))  # no errno: only atomic.py may guess
    assert not is_disk_full(ResourceError("needs 3 GB"))
    assert not is_disk_full(ValueError(errno.ENOSPC))


def test_bad_input_errors_are_value_errors():
    assert isinstance(ConfigError("x: bad"), ValueError)
    assert isinstance(InputError("file: bad"), ValueError)
    assert not isinstance(ValidationError("v"), ValueError)


def test_config_error_message_lists_every_problem():
    assert str(ConfigError("a.b: bad")) == "config error: a.b: bad"
    two = ConfigError(["a.b: bad", "c: worse"], source="run.yaml")
    assert str(two) == "run.yaml: 2 config errors: a.b: bad; c: worse"
    assert two.problems == ["a.b: bad", "c: worse"]


@pytest.mark.parametrize("error", [ConfigError(["a: x", "b: y"], "f.yaml"), InputError("f.fits: truncated"),
                                   ValidationError("step S"), ResourceError("needs 3 GB"),
                                   CheckpointedExit("stopped"), TransientError("retry me")],
                         ids=lambda e: type(e).__name__)
def test_errors_survive_pickling(error):
    """Exceptions raised on rank 0 are broadcast to the other ranks."""
    error.collective = True
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.exit_code == error.exit_code
    assert copy.collective is True
