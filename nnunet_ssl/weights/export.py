"""Export a model fine-tuned with nnunet_ssl so that stock nnU-Net (without this plugin) predicts with it.

Challenge containers run ``nnUNetv2_predict`` from a plain ``pip install nnunetv2``. That command rebuilds the
network with ``checkpoint['trainer_name']``'s static ``build_network_architecture`` and loads
``checkpoint['network_weights']`` strictly, so a checkpoint naming ``SSLFinetuneTrainer`` fails there ("Could not
find requested nnunet trainer"). Every fine-tuning trainer of this project except the two-decoder one trains the
plans' own nnU-Net network, so the export

* writes ``<out>/<Dataset>/nnUNetTrainer__<plans>__<configuration>/`` (the layout nnU-Net expects under
  ``nnUNet_results``) with ``dataset.json``, ``plans.json``, ``dataset_fingerprint.json`` and, per fold,
  ``checkpoint_final.pth``, ``progress.png`` and ``validation/summary.json`` when the run has them;
* rewrites each checkpoint: ``trainer_name`` becomes ``nnUNetTrainer``; kept are the network weights (wrapper
  prefixes ``module.`` / ``_orig_mod.`` removed), ``init_args``, ``inference_allowed_mirroring_axes``,
  ``current_epoch``, ``logging`` and ``_best_ema``; dropped are optimizer and grad-scaler state and anything else
  (nothing in the file needs nnunet_ssl to unpickle); ``nnunet_ssl_export`` records the source trainer;
* checks the weights against the network stock ``nnUNetTrainer`` builds from the plans (strict load) before
  writing, so an export that stock nnU-Net would refuse fails here, naming the keys;
* with an output name ending in ``.zip``, writes the same files into a zip laid out like
  ``nnUNetv2_export_model_to_zip``'s (paths relative to ``nnUNet_results``), for
  ``nnUNetv2_install_pretrained_model_from_zip``.

``IDEALSemiSupervisedTrainer`` trains a two-decoder network whose prediction (in the plugin) averages the softmax of
decoder A (the plans' own ``UNetDecoder``) and decoder B (interpolation upsampling, not an nnU-Net architecture).
Stock nnU-Net can only rebuild decoder A, so the export keeps encoder + decoder A and drops ``decoder_b.*``: the
exported model predicts what decoder A alone predicts, not the plugin's average. Because one decoder can be much
worse than the pair (measured: docs/benchmarks.md), such a model is exported only with ``single_decoder=True``
(``--single-decoder``).

Stock prediction then works with either ::

    nnUNetv2_predict_from_modelfolder -i IN -o OUT -m <out>/<Dataset>/nnUNetTrainer__<plans>__<configuration> -f 0
    nnUNet_results=<out> nnUNetv2_predict -i IN -o OUT -d <Dataset> -c <configuration> -f 0 -tr nnUNetTrainer -p <plans>
"""
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from nnunet_ssl.errors import UserInputError

STOCK_TRAINER = "nnUNetTrainer"
#: checkpoint entries stock nnU-Net's predictor needs or shows; everything else is dropped
KEPT_KEYS = ("network_weights", "init_args", "inference_allowed_mirroring_axes", "current_epoch", "logging",
             "_best_ema")
TWO_DECODER_PREFIX = "decoder_b."
#: files of the trainer folder and of each fold folder copied when present
MODEL_FILES = ("dataset.json", "plans.json", "dataset_fingerprint.json")
FOLD_FILES = ("progress.png", os.path.join("validation", "summary.json"))


@dataclass
class ExportReport:
    """What :func:`export_model` wrote."""
    output: str  # the folder (or zip) written
    model_folder: str  # inside ``output`` (or inside the zip): <Dataset>/nnUNetTrainer__<plans>__<configuration>
    source_trainer: str
    folds: List[str] = field(default_factory=list)
    dropped_keys: Dict[str, int] = field(default_factory=dict)  # prefix -> number of weight tensors dropped
    notes: List[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"Exported {self.source_trainer} (folds {', '.join(self.folds)}) as {STOCK_TRAINER}: {self.output}"]
        lines += [f"  {n}" for n in self.notes]
        return "\n".join(lines)


def _parse_folder_name(name: str):
    parts = name.split("__")
    if len(parts) != 3:
        raise UserInputError(f"'{name}' is not an nnU-Net trainer folder name (TRAINER__PLANS__CONFIGURATION).")
    return parts


def find_model_folder(model: str, trainer: Optional[str] = None, plans: str = "nnUNetPlans",
                      configuration: str = "3d_fullres") -> str:
    """The trained model folder ``<Dataset>/<trainer>__<plans>__<configuration>``: ``model`` is that folder, or a
    dataset id / name looked up in ``nnUNet_results`` with ``trainer``, ``plans`` and ``configuration``."""
    if os.path.isdir(model) and os.path.isfile(os.path.join(model, "plans.json")):
        return os.path.abspath(model)
    if trainer is None:
        raise UserInputError(f"{model} is not a trained model folder (no plans.json in it); give the folder "
                             f"<nnUNet_results>/<Dataset>/<trainer>__<plans>__<configuration>, or a dataset with "
                             f"-tr TRAINER.")
    from nnunet_ssl.paths import dataset_name_from_id, require_env_folder
    folder = os.path.join(require_env_folder("nnUNet_results"), dataset_name_from_id(model),
                          f"{trainer}__{plans}__{configuration}")
    if not os.path.isfile(os.path.join(folder, "plans.json")):
        raise UserInputError(f"No trained model at {folder}.")
    return folder


def available_folds(model_folder: str, checkpoint_name: str = "checkpoint_final.pth") -> List[str]:
    return sorted(d[len("fold_"):] for d in os.listdir(model_folder)
                  if d.startswith("fold_") and os.path.isfile(os.path.join(model_folder, d, checkpoint_name)))


def stock_weights(network_weights: Dict, report: Optional[ExportReport] = None) -> Dict:
    """The weights of the plans' own nnU-Net network from a fine-tuning checkpoint's ``network_weights``: wrapper
    prefixes removed; a two-decoder (IDEAL semi-supervised) network's ``decoder_b.*`` dropped (decoder A kept)."""
    from nnunet_ssl.weights.transfer import _strip_wrappers
    out = {}
    for key, value in network_weights.items():
        key = _strip_wrappers(key)
        if key.startswith(TWO_DECODER_PREFIX):
            if report is not None:
                report.dropped_keys[TWO_DECODER_PREFIX] = report.dropped_keys.get(TWO_DECODER_PREFIX, 0) + 1
            continue
        out[key] = value
    return out


def check_stock_network(model_folder: str, checkpoint: Dict, weights: Dict) -> None:
    """Build the network stock ``nnUNetTrainer`` builds for inference and load ``weights`` strictly."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    with open(os.path.join(model_folder, "plans.json")) as f:
        plans_manager = PlansManager(json.load(f))
    with open(os.path.join(model_folder, "dataset.json")) as f:
        dataset_json = json.load(f)
    configuration_manager = plans_manager.get_configuration(checkpoint["init_args"]["configuration"])
    network = nnUNetTrainer.build_network_architecture(
        plans_manager, configuration_manager,
        determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
        plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
    try:
        network.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise UserInputError(f"The weights of {checkpoint.get('trainer_name')} do not fit the network stock "
                             f"{STOCK_TRAINER} builds from {model_folder}/plans.json, so stock nnU-Net could not "
                             f"load them: {str(e).splitlines()[0]} {str(e).splitlines()[1:3]}") from None


def stock_checkpoint(checkpoint: Dict, report: Optional[ExportReport] = None) -> Dict:
    """A copy of ``checkpoint`` stock nnU-Net loads: see the module doc."""
    out = {k: checkpoint[k] for k in KEPT_KEYS if k in checkpoint}
    out["network_weights"] = stock_weights(checkpoint["network_weights"], report)
    out["trainer_name"] = STOCK_TRAINER
    out["nnunet_ssl_export"] = {"source_trainer": str(checkpoint.get("trainer_name")),
                                "decoder": "A (decoder_b dropped)" if report is not None and report.dropped_keys
                                else "the network's only decoder"}
    return out


def _write_model(model_folder: str, target: str, folds: Sequence[str], checkpoint_name: str,
                 report: ExportReport) -> None:
    from nnunet_ssl.weights.checkpoint import atomic_torch_save, load_checkpoint_file
    os.makedirs(target, exist_ok=True)
    for name in MODEL_FILES:
        if os.path.isfile(os.path.join(model_folder, name)):
            shutil.copyfile(os.path.join(model_folder, name), os.path.join(target, name))
    for fold in folds:
        src = os.path.join(model_folder, f"fold_{fold}")
        dst = os.path.join(target, f"fold_{fold}")
        os.makedirs(dst, exist_ok=True)
        ckpt = load_checkpoint_file(os.path.join(src, checkpoint_name), map_location="cpu")
        exported = stock_checkpoint(ckpt, report)
        check_stock_network(model_folder, ckpt, exported["network_weights"])
        atomic_torch_save(exported, os.path.join(dst, "checkpoint_final.pth"))
        for name in FOLD_FILES:
            if os.path.isfile(os.path.join(src, name)):
                os.makedirs(os.path.dirname(os.path.join(dst, name)), exist_ok=True)
                shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
        if not os.path.isfile(os.path.join(src, "validation", "summary.json")):
            report.notes.append(f"fold_{fold}: the run has no validation/summary.json (final validation skipped); "
                                f"prediction does not need it")


def _check_two_decoder(checkpoint_path: str, single_decoder: bool) -> None:
    """Refuse a two-decoder checkpoint unless the user accepts that stock nnU-Net predicts with decoder A alone."""
    from nnunet_ssl.weights.checkpoint import load_checkpoint_file
    weights = load_checkpoint_file(checkpoint_path, map_location="cpu")["network_weights"]
    if single_decoder or not any(k.startswith(TWO_DECODER_PREFIX) for k in weights):
        return
    raise UserInputError(
        "This is a two-decoder model (IDEALSemiSupervisedTrainer): the plugin predicts with the mean softmax of "
        "both decoders, but stock nnU-Net can rebuild only decoder A, so the exported model predicts with decoder A "
        "alone - and one decoder can be much worse than the pair (in our demo run: decoder A 0.24 mean Dice, "
        "decoder B 0.65, the pair 0.56; docs/benchmarks.md). Compare the exported model with the plugin's "
        "prediction on your validation cases before submitting it; pass --single-decoder to export decoder A "
        "anyway.")


def export_model(model_folder: str, output: str, folds: Optional[Sequence[str]] = None,
                 checkpoint_name: str = "checkpoint_final.pth", overwrite: bool = False,
                 single_decoder: bool = False) -> ExportReport:
    """Export the trained model in ``model_folder`` (``<nnUNet_results>/<Dataset>/<trainer>__<plans>__<cfg>``) for
    stock nnU-Net. ``output``: a folder used as ``nnUNet_results`` (the model lands in
    ``<output>/<Dataset>/nnUNetTrainer__<plans>__<cfg>``), or a file name ending in ``.zip``. ``folds``: default
    every fold with ``checkpoint_name``. A two-decoder model is refused unless ``single_decoder`` (its stock
    prediction uses decoder A alone, see the module doc). Returns an :class:`ExportReport`."""
    model_folder = os.path.abspath(model_folder)
    dataset = os.path.basename(os.path.dirname(model_folder))
    trainer, plans, configuration = _parse_folder_name(os.path.basename(model_folder))
    folds = [str(f) for f in folds] if folds else available_folds(model_folder, checkpoint_name)
    if not folds:
        raise UserInputError(f"No fold_*/{checkpoint_name} in {model_folder}: is the training finished?")
    missing = [f for f in folds if not os.path.isfile(os.path.join(model_folder, f"fold_{f}", checkpoint_name))]
    if missing:
        raise UserInputError(f"{model_folder} has no {checkpoint_name} for fold(s) {', '.join(missing)}.")
    _check_two_decoder(os.path.join(model_folder, f"fold_{folds[0]}", checkpoint_name), single_decoder)
    relative = os.path.join(dataset, f"{STOCK_TRAINER}__{plans}__{configuration}")
    output = os.path.abspath(output)
    report = ExportReport(output=output, model_folder=relative, source_trainer=trainer, folds=folds)
    as_zip = output.endswith(".zip")
    if os.path.exists(output if as_zip else os.path.join(output, relative)) and not overwrite:
        raise UserInputError(f"{output if as_zip else os.path.join(output, relative)} exists; remove it or pass "
                             f"--overwrite.")
    if as_zip:
        with tempfile.TemporaryDirectory(dir=os.path.dirname(output) or ".") as tmp:
            _write_model(model_folder, os.path.join(tmp, relative), folds, checkpoint_name, report)
            partial = output + ".partial"
            with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
                for root, _, files in os.walk(tmp):
                    for name in sorted(files):
                        path = os.path.join(root, name)
                        zf.write(path, os.path.relpath(path, tmp))
            os.replace(partial, output)
    else:
        target = os.path.join(output, relative)
        if os.path.isdir(target):
            shutil.rmtree(target)
        _write_model(model_folder, target, folds, checkpoint_name, report)
    if report.dropped_keys:
        report.notes.insert(0, f"two-decoder network: encoder and decoder A exported, "
                               f"{report.dropped_keys[TWO_DECODER_PREFIX]} decoder_b tensors dropped (stock nnU-Net "
                               f"predicts with decoder A alone, the plugin with both decoders' mean softmax)")
    where = os.path.join(output, relative) if not as_zip else relative + " inside the zip"
    report.notes.append(f"predict: nnUNetv2_predict_from_modelfolder -i IN -o OUT -m {where} -f {' '.join(folds)}"
                        if not as_zip else
                        f"install: nnUNetv2_install_pretrained_model_from_zip {output}; then nnUNetv2_predict -i IN "
                        f"-o OUT -d {dataset} -c {configuration} -f {' '.join(folds)} -tr {STOCK_TRAINER} -p {plans}")
    return report
