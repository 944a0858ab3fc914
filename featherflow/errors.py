"""Exceptions callers tell apart, and the exit code each one maps to.

The CLI turns any FeatherflowError into one `error:` line and its exit code;
the library never prints and never exits.
"""

# Exit codes are part of the interface (README, "Exit codes").
EXIT_OK = 0
EXIT_FAILED = 1  # a run failed, or a check found problems
EXIT_USAGE = 2  # invalid input: arguments, flow files, params, unknown names
EXIT_CONFLICT = 3  # the state does not allow it: illegal transition, run not resumable
EXIT_DATABASE = 4  # the database cannot be used: locked, corrupt, newer, read-only, full
EXIT_CANCELLED = 5  # the run was cancelled or interrupted


class FeatherflowError(Exception):
    """Base of every error Featherflow reports to a user."""

    exit_code = EXIT_USAGE


class UsageError(FeatherflowError):
    """Bad arguments or a name that does not exist."""


class ValidationError(FeatherflowError):
    """A flow file (or params) is invalid; carries every problem found."""

    def __init__(self, errors, source=None):
        self.errors = list(errors)
        self.source = source
        super().__init__("; ".join(self.errors))


class ConflictError(FeatherflowError):
    """The current state does not allow the request."""

    exit_code = EXIT_CONFLICT


class DatabaseError(FeatherflowError):
    """The database cannot be opened, migrated or written."""

    exit_code = EXIT_DATABASE
