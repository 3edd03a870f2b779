"""Registration with nnU-Net: the .pth hook, appending to nnUNet_extTrainer, opt-out, stock lookup, packaging."""
import os
import subprocess
import sys
import zipfile

import pytest

from nnunet_ssl import autoregister

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_register_appends_to_existing_value():
    env = {"nnUNet_extTrainer": "/my/trainers"}
    assert autoregister.register(env)
    parts = env["nnUNet_extTrainer"].split(os.pathsep)
    assert parts[0] == "/my/trainers"
    assert parts[1] == autoregister.ext_trainer_folder()
    autoregister.register(env)  # idempotent
    assert env["nnUNet_extTrainer"].split(os.pathsep).count(autoregister.ext_trainer_folder()) == 1


def test_register_sets_unset_value_and_opt_out():
    env = {}
    assert autoregister.register(env)
    assert env["nnUNet_extTrainer"] == autoregister.ext_trainer_folder()
    env = {autoregister.OPT_OUT_VAR: "1"}
    assert not autoregister.register(env)
    assert "nnUNet_extTrainer" not in env


def _child_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("nnUNet_extTrainer", autoregister.OPT_OUT_VAR)}
    env.update(extra)
    return env


def test_interpreter_start_registers_and_keeps_user_value():
    code = "import os; print(os.environ.get('nnUNet_extTrainer', ''))"
    out = subprocess.run([sys.executable, "-c", code], env=_child_env(nnUNet_extTrainer="/user/path"),
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out.split(os.pathsep) == ["/user/path", autoregister.ext_trainer_folder()]
    out = subprocess.run([sys.executable, "-c", code], env=_child_env(**{autoregister.OPT_OUT_VAR: "1"}),
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_stock_lookup_finds_every_trainer_as_the_same_class():
    code = (
        "from nnunet_ssl.cli.doctor import project_trainer_names, find_trainer_quietly\n"
        "import importlib\n"
        "names = project_trainer_names()\n"
        "assert len(names) >= 3, names\n"
        "for n in names:\n"
        "    a = find_trainer_quietly(n); b = find_trainer_quietly(n)\n"
        "    real = getattr(importlib.import_module(a.__module__), n)\n"
        "    assert a is b is real and a.__module__.startswith('nnunet_ssl_trainers'), (n, a.__module__)\n"
        "print('OK', len(names))\n")
    out = subprocess.run([sys.executable, "-c", code], env=_child_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("OK")


def test_doctor_reports_trainers_and_problems(tmp_path):
    env = _child_env(nnUNet_raw=str(tmp_path), nnUNet_preprocessed=str(tmp_path), nnUNet_results=str(tmp_path))
    ok = subprocess.run([sys.executable, "-m", "nnunet_ssl.cli", "doctor"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "ok      MAETrainer" in ok.stdout and "All good" in ok.stdout
    assert "nnUNetSSLTrainer" not in ok.stdout  # an abstract base: not offered to users
    env.pop("nnUNet_results")
    env[autoregister.OPT_OUT_VAR] = "1"
    bad = subprocess.run([sys.executable, "-m", "nnunet_ssl.cli", "doctor"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1
    assert "nnUNet_results is not set" in bad.stdout
    assert "MISSING MAETrainer" in bad.stdout and "you opted out" in bad.stdout
    # one grouped problem for all missing trainers, not one line per trainer
    fixes = bad.stdout.split("What to fix:")[1]
    assert fixes.count("not found by nnUNetv2_train") == 1 and "more" in fixes


def test_regular_install_ships_the_pth_and_both_packages(tmp_path):
    """`pip install .` (non-editable): build the wheel and check it carries the .pth and both packages."""
    wheel_dir = tmp_path / "wheel"
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                          str(wheel_dir), REPO], capture_output=True, text=True)
    if res.returncode != 0 and "No module named" in res.stderr:
        pytest.skip(f"cannot build a wheel without isolation here: {res.stderr[-300:]}")
    assert res.returncode == 0, res.stderr[-2000:]
    wheel = next(wheel_dir.glob("nnunet_ssl-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "nnunet_ssl_autoregister.pth" in names
    assert "nnunet_ssl/autoregister.py" in names
    assert "nnunet_ssl_trainers/nnunet_ext/nnunet_ssl_trainer_index.py" in names
    assert not any(n.startswith("nnunet_ssl/nnunet_ext") for n in names)
    # the ext folder holds only the re-export module (nnU-Net drops every module under it after a lookup)
    assert [n for n in names if n.startswith("nnunet_ssl_trainers/nnunet_ext/")] == [
        "nnunet_ssl_trainers/nnunet_ext/nnunet_ssl_trainer_index.py"]
    assert "nnunet_ssl_trainers/index.py" in names
    # unpacked as site-packages would be, the .pth registers the unpacked copy's folder
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (f"import site, os; site.addsitedir({str(site)!r}); "
            "print(os.environ['nnUNet_extTrainer'])")
    env = _child_env()
    env["PYTHONPATH"] = ""
    out = subprocess.run([sys.executable, "-S", "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith(os.path.join(str(site), "nnunet_ssl_trainers", "nnunet_ext"))


def test_editable_install_registers_the_repository_folder():
    """`pip install -e .` (this venv): the folder is the repository's trainers/nnunet_ext, found without imports."""
    assert autoregister.ext_trainer_folder() == os.path.join(REPO, "trainers", "nnunet_ext")
    assert sorted(f for f in os.listdir(autoregister.ext_trainer_folder()) if f.endswith(".py")) == [
        "nnunet_ssl_trainer_index.py"]
    code = ("import sys, nnunet_ssl.autoregister as r; r.ext_trainer_folder(); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'nnunetv2', 'nnunet_ssl_trainers')))")
    out = subprocess.run([sys.executable, "-c", code], env=_child_env(), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
