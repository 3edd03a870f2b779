"""The package layout rules: methods are pure torch, the library never imports the trainers, trainer names agree."""
import ast
import os
import pkgutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIBRARY = os.path.join(REPO, "nnunet_ssl")


def _library_files():
    for root, dirs, files in os.walk(LIBRARY):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in files:
            if f.endswith(".py"):
                yield os.path.join(root, f)


def _imported_modules(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__", "find_spec"):
                yield node.args[0].value


def test_library_never_imports_the_trainer_package():
    offenders = []
    for path in _library_files():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for mod in _imported_modules(tree):
            if mod.split(".")[0] == "nnunet_ssl_trainers":
                offenders.append(f"{os.path.relpath(path, REPO)}: {mod}")
    # the one allowed mention: autoregister *locates* the package (find_spec does not import it)
    offenders = [o for o in offenders if o != os.path.join("nnunet_ssl", "autoregister.py") + ": nnunet_ssl_trainers"]
    assert offenders == []


def test_autoregister_names_the_package_only_through_find_spec():
    with open(os.path.join(LIBRARY, "autoregister.py")) as f:
        tree = ast.parse(f.read())
    plain = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    plain += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert sorted(plain) == ["importlib.util", "os"]


def test_methods_import_without_nnunetv2():
    import nnunet_ssl.methods
    modules = sorted(m.name for m in pkgutil.walk_packages(nnunet_ssl.methods.__path__, "nnunet_ssl.methods."))
    assert "nnunet_ssl.methods.objectives.dense_infonce" in modules and "nnunet_ssl.methods.alignment" in modules
    code = (
        "import sys, importlib, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('nnunetv2', 'nnunet_ssl_trainers'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "assert not any(k.split('.')[0] in ('nnunetv2', 'nnunet_ssl_trainers') for k in sys.modules)\n"
        "print('OK')\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "OK"


def test_trainer_names_match_the_trainer_index():
    import inspect

    import nnunet_ssl_trainers.index as index
    from nnunet_ssl import trainer_names
    from nnunet_ssl_trainers.ssl_base import nnUNetSSLTrainer
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    classes = {n: c for n, c in vars(index).items() if isinstance(c, type) and issubclass(c, nnUNetTrainer)}
    bases = {n for n, c in classes.items()
             if inspect.isabstract(c) or (issubclass(c, nnUNetSSLTrainer) and c.objective_class is None)}
    assert set(trainer_names.BASE_TRAINER_NAMES) == bases
    assert set(trainer_names.TRAINER_NAMES) == set(classes) - bases
    assert len(trainer_names.TRAINER_NAMES) == len(set(trainer_names.TRAINER_NAMES))
    assert list(trainer_names.ALL_TRAINER_NAMES) == sorted(classes)
    for name in (trainer_names.FINETUNE_TRAINER, trainer_names.SCRATCH_TRAINER,
                 *trainer_names.METHOD_TRAINERS.values()):
        assert name in trainer_names.TRAINER_NAMES
    # what each pre-training trainer's checkpoints transfer, as the library names it without importing trainers
    pretrainers = {n: c for n, c in classes.items() if issubclass(c, nnUNetSSLTrainer) and n not in bases}
    assert trainer_names.PRETRAINING_DECODER_TRANSFERS == {n: c.decoder_transfers for n, c in pretrainers.items()}


def test_trainer_env_names_are_the_ones_the_trainers_read():
    import nnunet_ssl_trainers.finetune as finetune
    import nnunet_ssl_trainers.ideal_semi as ideal_semi
    from nnunet_ssl import settings, trainer_names
    from nnunet_ssl.data import reference

    assert finetune.PRETRAINED_ENV == trainer_names.PRETRAINED_ENV == "NNUNET_SSL_PRETRAINED"
    assert ideal_semi.UNLABELED_DATASET_ENV == trainer_names.UNLABELED_DATASET_ENV == "NNUNET_SSL_UNLABELED_DATASET"
    assert reference.REFERENCE_ENV == trainer_names.REFERENCE_ENV == "NNUNET_SSL_REFERENCE_DATASET"
    assert settings.ENV_VAR == trainer_names.SETTINGS_ENV == "NNUNET_SSL_SETTINGS"
