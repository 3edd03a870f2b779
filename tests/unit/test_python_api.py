"""Issue 23 item 7: the documented Python API, exported lazily from ``nnunet_ssl`` (import stays light)."""
import inspect
import os
import subprocess
import sys

import nnunet_ssl

API = ("ingest_unlabeled", "pretrain", "finetune", "transfer_weights", "load_checkpoint_file", "export_model",
       "run_workflow", "WorkflowConfig", "run_demo")


def _child_env():
    return {k: v for k, v in os.environ.items() if k != "NNUNET_SSL_NO_AUTOREGISTER"}


def test_interpreter_start_and_import_stay_light():
    """The .pth hook imports nnunet_ssl at every interpreter start: neither that nor `import nnunet_ssl` may pull
    torch, nnunetv2 or the trainer package; the API is listed without importing it."""
    code = ("import sys, nnunet_ssl\n"
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'nnunetv2', 'nnunet_ssl_trainers',"
            " 'numpy'))\n"
            "print(heavy, 'export_model' in dir(nnunet_ssl), 'pretrain' in nnunet_ssl.__all__)")
    out = subprocess.run([sys.executable, "-c", code], env=_child_env(), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] True True"


def test_every_api_name_resolves_with_a_docstring():
    for name in API:
        obj = getattr(nnunet_ssl, name)
        assert callable(obj), name
        assert (inspect.getdoc(obj) or "").strip(), f"{name} has no docstring"
    assert "Python API" in nnunet_ssl.__doc__ and "nnunet_ssl.export_model(" in nnunet_ssl.__doc__


def test_unknown_attribute_is_an_attribute_error():
    try:
        nnunet_ssl.no_such_function
    except AttributeError as e:
        assert "no_such_function" in str(e)
    else:
        raise AssertionError("expected AttributeError")


def test_settings_dict_becomes_the_env_text():
    from nnunet_ssl.cli.training import settings_text
    assert settings_text({"num_epochs": 2, "label_budget": 10}) == "num_epochs=2,label_budget=10"
    assert settings_text("a=1") == "a=1" and settings_text(None) == ""


def test_finetune_helper_runs_stock_train_with_the_checkpoint(monkeypatch, tmp_path):
    import torch
    from nnunet_ssl.cli import training
    calls = []
    monkeypatch.setattr(training, "run_nnunet", lambda name, args, env=None: calls.append((name, args, env)))
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / var).mkdir()
        monkeypatch.setenv(var, str(tmp_path / var))
    ckpt = tmp_path / "c.pth"
    torch.save({"network_weights": {}}, ckpt)
    out = nnunet_ssl.finetune("Dataset501_X", str(ckpt), fold=0, trainer="SSLFinetuneTrainer_decoderWarmup",
                              settings={"label_budget": 5}, device="cpu")
    name, args, env = calls[0]
    assert name == "nnUNetv2_train" and args[:5] == ["Dataset501_X", "3d_fullres", 0, "-tr",
                                                     "SSLFinetuneTrainer_decoderWarmup"]
    assert env["NNUNET_SSL_PRETRAINED"] == str(ckpt) and env["NNUNET_SSL_SETTINGS"] == "label_budget=5"
    assert out.endswith(os.path.join("Dataset501_X", "SSLFinetuneTrainer_decoderWarmup__nnUNetPlans__3d_fullres",
                                     "fold_0"))
    out = nnunet_ssl.pretrain("Dataset502_U", "gmim", settings="num_epochs=1", device="cpu")
    assert calls[1][1][:5] == ["Dataset502_U", "3d_fullres", "all", "-tr", "GMIMTrainer"]
    assert out.endswith("fold_all")
