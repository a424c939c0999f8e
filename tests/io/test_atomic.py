"""Atomic outputs: a write refused by a full disk or quota becomes one line naming the file (exit code 3),
and leaves neither the final file nor its ``*.inprogress``."""
import errno
import os
import re

import pytest

from lensing_ssc.core.errors import ResourceError, exit_code_for
from lensing_ssc.io import atomic
from lensing_ssc.io.atomic import atomic_output, write_json_atomic

FULL_MESSAGE = re.compile(r"^(?P<path>\S+): (?P<reason>no space left on device|disk quota exceeded) while writing "
                          r"\(free space on (?P<dir>\S+): \d+\.\d MiB\)$")


def refused_write(error):
    """An atomic_output block that writes some bytes and then fails with ``error`` (as h5py or
    astropy do: the errno, if any, and no file name)."""
    def block(final):
        with atomic_output(final) as temporary:
            temporary.write_bytes(b"partial")
            raise error
    return block


def assert_names_the_file(error: ResourceError, final, reason="no space left on device"):
    match = FULL_MESSAGE.match(str(error))
    assert match, str(error)
    assert match["path"] == str(final) and match["dir"] == str(final.parent) and match["reason"] == reason
    assert exit_code_for(error) == 3


def assert_nothing_left(directory):
    assert list(directory.iterdir()) == []


@pytest.mark.parametrize("code, reason", [(errno.ENOSPC, "no space left on device"),
                                          (errno.EDQUOT, "disk quota exceeded")])
def test_full_disk_in_the_block_names_the_target(tmp_path, code, reason):
    final = tmp_path / "maps" / "kappa_zs1.0_s5.fits"
    with pytest.raises(ResourceError) as caught:
        refused_write(OSError(code, os.strerror(code)))(final)
    assert_names_the_file(caught.value, final, reason)
    assert caught.value.__cause__.errno == code  # the original error stays in the chain (debug traceback)
    assert_nothing_left(final.parent)


def test_errno_less_short_write_counts_as_full_only_on_a_nearly_full_disk(tmp_path, monkeypatch):
    """astropy and numpy drop the errno of a short write ("49152 requested and 47488 written")."""
    final = tmp_path / "kappa.fits"
    short_write = OSError("49152 requested and 47488 written")
    with pytest.raises(OSError) as caught:  # plenty of space here: not a full disk, left unchanged
        refused_write(short_write)(final)
    assert caught.value is short_write
    assert_nothing_left(tmp_path)
    monkeypatch.setattr(atomic, "free_bytes", lambda directory: 4096)
    with pytest.raises(ResourceError) as caught:
        refused_write(short_write)(final)
    assert_names_the_file(caught.value, final)
    assert_nothing_left(tmp_path)


@pytest.mark.parametrize("error", [OSError(errno.EIO, "Input/output error"), ValueError("bad block")],
                         ids=["EIO", "ValueError"])
def test_other_errors_pass_unchanged(tmp_path, error):
    with pytest.raises(type(error)) as caught:
        refused_write(error)(tmp_path / "x.h5")
    assert caught.value is error
    assert_nothing_left(tmp_path)


def test_full_disk_at_the_commit_fsync(tmp_path, monkeypatch):
    """Some file systems (NFS, Lustre) report ENOSPC only when the data are flushed."""
    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    final = tmp_path / "manifest.json"
    with pytest.raises(ResourceError) as caught:
        write_json_atomic(final, {"a": 1})
    assert_names_the_file(caught.value, final)
    assert_nothing_left(tmp_path)

