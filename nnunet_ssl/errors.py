"""User-facing errors.

Raise :class:`UserInputError` for anything the user can fix (bad folder, wrong dataset id, missing env var, ...):
the message must name the problem and the fix. The ``nnunet_ssl`` command line prints these without a traceback
and exits with status 2; inside nnU-Net trainers they surface as a one-paragraph RuntimeError.
"""


class UserInputError(RuntimeError):
    """A problem with the user's input or environment, explained in the message (no traceback needed)."""


def exit_on_user_error(error: UserInputError) -> None:
    """Inside stock nnU-Net commands: stop with the message alone (no traceback), exit status 2."""
    import sys
    print(f"\nnnunet_ssl: {error}\n", file=sys.stderr, flush=True)
    raise SystemExit(2)
