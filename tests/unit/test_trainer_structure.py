"""Trainer structure rules (issue 21): shallow hierarchies and variants a reader can grep.

* At most three classes (mixins count) between any trainer nnU-Net resolves and ``nnUNetTrainer``.
* Every trainer name in ``nnunet_ssl_trainers.index`` is defined by a literal ``class NAME(...)`` statement in
  ``trainers/*.py`` (no factories), in the module the class says it comes from.
* Method trainers compose an objective (pure torch) instead of inheriting method code.
"""
import ast
import os

import nnunet_ssl_trainers.index as index
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

TRAINERS = os.path.dirname(os.path.abspath(index.__file__))


def _trainer_classes():
    return {n: c for n, c in vars(index).items() if isinstance(c, type) and issubclass(c, nnUNetTrainer)}


def test_index_is_not_empty():
    assert len(_trainer_classes()) >= 25


def test_at_most_three_classes_between_a_trainer_and_nnunettrainer():
    too_deep = {}
    for name, cls in _trainer_classes().items():
        mro = cls.__mro__
        between = mro[1:mro.index(nnUNetTrainer)]
        if len(between) > 3:
            too_deep[name] = [c.__name__ for c in between]
    assert too_deep == {}


def _literal_classes():
    """``{class name: module name}`` of every ``class NAME(...)`` statement at the top level of trainers/*.py."""
    out = {}
    for f in sorted(os.listdir(TRAINERS)):
        if not f.endswith(".py"):
            continue
        with open(os.path.join(TRAINERS, f)) as fh:
            tree = ast.parse(fh.read(), f)
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                assert node.name not in out, f"class {node.name} defined twice in trainers/"
                out[node.name] = f[:-3]
    return out


def test_every_index_name_is_a_literal_class_statement_in_trainers():
    literal = _literal_classes()
    missing = []
    for name, cls in _trainer_classes().items():
        if cls.__name__ != name or name not in literal:
            missing.append(name)
        elif cls.__module__ != f"nnunet_ssl_trainers.{literal[name]}":
            missing.append(f"{name} (defined in {literal[name]}.py, but __module__ is {cls.__module__})")
    assert missing == []


def test_no_class_factories_in_trainers():
    """``type(name, bases, dict)`` builds classes a reader cannot grep for."""
    offenders = []
    for f in sorted(os.listdir(TRAINERS)):
        if f.endswith(".py"):
            with open(os.path.join(TRAINERS, f)) as fh:
                tree = ast.parse(fh.read(), f)
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "type" and len(node.args) == 3:
                    offenders.append(f"{f}:{node.lineno}")
    assert offenders == []


def test_method_trainers_compose_a_pure_torch_objective():
    from nnunet_ssl.methods.objective import Objective
    from nnunet_ssl_trainers.ssl_base import nnUNetSSLTrainer

    for name, cls in _trainer_classes().items():
        if issubclass(cls, nnUNetSSLTrainer) and cls is not nnUNetSSLTrainer:
            assert issubclass(cls.objective_class, Objective), name
            assert cls.objective_class.__module__.startswith("nnunet_ssl.methods."), name
            # the objective's settings are the trainer's settings (NNUNET_SSL_SETTINGS)
            assert set(cls.objective_class.settings) <= set(cls.tunable_settings), name
