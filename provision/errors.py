"""One exception hierarchy, and the exit code each error maps to.

An expected error's message is one line that names the file, host or key at fault and how to fix it.
"""

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # a host failed, or a check failed
    USAGE = 2  # bad flags, a missing/malformed inventory, an unknown tag or host
    ENVIRONMENT = 3  # a required tool is missing, a port is taken, a lab VM failed to boot
    UNREACHABLE = 4  # some hosts were unreachable and none failed
    HANGUP = 129  # SIGHUP: the terminal closed (128 + the signal's number, as a shell reports it)
    INTERRUPTED = 130  # Ctrl-C (SIGINT)
    TERMINATED = 143  # SIGTERM: a CI timeout, kill


class ProvisionError(Exception):
    exit_code: ExitCode = ExitCode.FAILED


class UsageError(ProvisionError):
    exit_code = ExitCode.USAGE


class RunFailed(ProvisionError):
    exit_code = ExitCode.FAILED


class HostsUnreachable(ProvisionError):
    exit_code = ExitCode.UNREACHABLE


class EnvironmentProblem(ProvisionError):
    exit_code = ExitCode.ENVIRONMENT


class Interrupted(ProvisionError):
    exit_code = ExitCode.INTERRUPTED
