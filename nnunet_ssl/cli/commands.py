"""Running the stock ``nnUNetv2_*`` commands from our workflows (same interpreter, same environment)."""
import os
import shutil
import subprocess
import sys
from typing import Callable, Dict, List, Optional

from nnunet_ssl.errors import UserInputError


def nnunet_command(name: str) -> List[str]:
    """Argv prefix for a console script of nnU-Net installed next to this interpreter."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    if os.path.isfile(candidate):
        return [candidate]
    found = shutil.which(name)
    if found:
        return [found]
    raise UserInputError(f"{name} not found next to {sys.executable} nor on PATH: is nnunetv2 installed in this "
                         f"environment? (`pip install 'nnunetv2>=2.8'`)")


def _run_filtered(cmd: List[str], env: Dict[str, str], keep: Callable[[str], bool]) -> int:
    """Run ``cmd``, echoing only the output lines ``keep`` accepts (the rest is in nnU-Net's own log files)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            errors="replace")
    for line in proc.stdout:
        if keep(line.rstrip("\n")):
            sys.stdout.write(line)
            sys.stdout.flush()
    return proc.wait()


def run_nnunet(name: str, args: List[str], env: Optional[Dict[str, str]] = None, log_file: Optional[str] = None,
               quiet: bool = False, console_filter: Optional[Callable[[str], bool]] = None) -> None:
    """Run ``name args`` and raise a clear error (with the log's tail) if it fails. ``console_filter``: echo only
    the lines it accepts."""
    cmd = nnunet_command(name) + [str(a) for a in args]
    full_env = dict(os.environ)
    full_env.update(env or {})
    print(f"$ {' '.join([name] + [str(a) for a in args])}", flush=True)
    if console_filter is not None and log_file is None and not quiet:
        result = subprocess.CompletedProcess(cmd, _run_filtered(cmd, full_env, console_filter))
        tail = ""
    elif log_file is None and not quiet:
        result = subprocess.run(cmd, env=full_env)
        tail = ""
    else:
        log_file = log_file or os.devnull
        with open(log_file, "a") as f:
            result = subprocess.run(cmd, env=full_env, stdout=f, stderr=subprocess.STDOUT)
        tail = ""
        if log_file != os.devnull:
            with open(log_file) as f:
                tail = "".join(f.readlines()[-25:])
    if result.returncode != 0:
        raise UserInputError(f"{name} {' '.join(map(str, args))} failed with exit code {result.returncode}."
                             + (f" Last lines of {log_file}:\n{tail}" if tail else ""))
