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


def file_system_error(error: OSError) -> "UserInputError | None":
    """A full disk or an unwritable folder in plain words (None for any other OS error)."""
    import errno
    path = error.filename or "a file"
    if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return UserInputError(f"No space left on device while writing {path} ({error.strerror}). Free space on that "
                              f"disk or point the nnU-Net folder variable (nnUNet_results, nnUNet_preprocessed) to a "
                              f"disk with room; a training run continues with --c.")
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return UserInputError(f"Cannot write {path}: {error.strerror}. Make that folder writable, or point the "
                              f"nnU-Net folder variable it comes from (nnUNet_results for training output) to a "
                              f"writable folder.")
    return None


def writable_folder(folder: str) -> None:
    """Create ``folder`` if needed and check a file can be written in it (an OSError otherwise)."""
    import os
    import tempfile
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass


def exit_on_file_system_error(error: OSError) -> None:
    """Stop with :func:`file_system_error`'s message if it explains ``error``; re-raise it otherwise."""
    explained = file_system_error(error)
    if explained is None:
        raise error
    exit_on_user_error(explained)
