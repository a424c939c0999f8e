"""The exception hierarchy of lensing_ssc and the process exit code of each (DESIGN.md §3).

Exit codes: 0 success; 2 bad config or bad input; 3 resource error; 75 checkpointed on a signal or
wall-time budget (rerun to resume); 1 anything else. A full disk or quota (OSError ENOSPC/EDQUOT) is a
resource error: exit code 3, never retried.
"""
import errno

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_RESOURCE = 3
EXIT_CHECKPOINTED = 75

# errno values of a write refused because the file system is full or the user's quota is used up
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class LensingSSCError(Exception):
    """Base class of all errors raised on purpose by lensing_ssc."""

    exit_code = EXIT_FAILURE


class ConfigError(LensingSSCError, ValueError):
    """The configuration is invalid; the message names every offending key path."""

    exit_code = EXIT_BAD_INPUT

    def __init__(self, problems, source=None):
        if isinstance(problems, str):
            problems = [problems]
        self.problems = list(problems)
        self.source = source
        where = f"{source}: " if source else ""
        count = f"{len(self.problems)} config errors: " if len(self.problems) > 1 else "config error: "
        super().__init__(where + count + "; ".join(self.problems))

    def __reduce__(self):  # rebuild from the problem list when sent between MPI ranks
        return (type(self), (self.problems, self.source), self.__dict__)


class InputError(LensingSSCError, ValueError):
    """An input file is missing or malformed; the message names the file and what was expected."""

    exit_code = EXIT_BAD_INPUT


class ValidationError(LensingSSCError):
    """A step's input or output failed validation; never retried."""

    exit_code = EXIT_BAD_INPUT


class ResourceError(LensingSSCError):
    """Not enough memory or disk for the planned work; the message gives the estimate."""

    exit_code = EXIT_RESOURCE


class TransientError(LensingSSCError):
    """A failure worth retrying (I/O hiccups); raised by code that knows the failure is transient."""


class CheckpointedExit(LensingSSCError):
    """All ranks checkpointed because of a signal or the wall-time budget; rerun to resume."""

    exit_code = EXIT_CHECKPOINTED


def is_disk_full(exc: BaseException) -> bool:
    """True for an OSError whose errno says the disk is full (ENOSPC) or the quota exceeded (EDQUOT)."""
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def exit_code_for(exc: BaseException) -> int:
    """Exit code of the process for an exception reaching the top level."""
    if isinstance(exc, LensingSSCError):
        return exc.exit_code
    if isinstance(exc, MemoryError) or is_disk_full(exc):
        return EXIT_RESOURCE
    return EXIT_FAILURE
