import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors: one intra-op thread is fast and insensitive to machine load; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def load_script():
    """``load_script("probe_two_decoders")``: a module of scripts/ imported from its file (scripts/ is no package)."""
    import importlib.util
    import sys
    from pathlib import Path
    scripts = Path(__file__).resolve().parents[2] / "scripts"

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, scripts / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses look their module up there
        spec.loader.exec_module(mod)
        return mod
    return load


@pytest.fixture()
def tiny_nnunet_env(tmp_path, monkeypatch):
    """nnU-Net's folders in tmp_path with a tiny preprocessed labeled dataset (tiny_nnunet_data); the plugin's
    environment variables unset. Fields: pre, plans, dataset_json, train, val (case keys), mp (monkeypatch), tmp."""
    import types
    from tiny_nnunet_data import write_tiny_dataset
    pre, res = tmp_path / "pre", tmp_path / "res"
    pre.mkdir()
    res.mkdir()
    for k, v in (("nnUNet_preprocessed", pre), ("nnUNet_results", res), ("nnUNet_raw", tmp_path / "raw"),
                 ("nnUNet_n_proc_DA", "0"), ("nnUNet_compile", "0")):
        monkeypatch.setenv(k, str(v))
    for k in ("NNUNET_SSL_PRETRAINED", "NNUNET_SSL_UNLABELED_DATASET", "NNUNET_SSL_SETTINGS"):
        monkeypatch.delenv(k, raising=False)
    plans, dataset_json, train_keys, val_keys = write_tiny_dataset(pre)
    return types.SimpleNamespace(pre=pre, plans=plans, dataset_json=dataset_json, train=train_keys, val=val_keys,
                                 mp=monkeypatch, tmp=tmp_path)
