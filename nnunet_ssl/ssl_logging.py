"""nnU-Net's logger with SSL curves.

nnU-Net's ``LocalLogger`` accepts a fixed set of per-epoch keys and draws progress.png from them. Pre-training has
no Dice; instead every SSL trainer logs the extra per-epoch curves of its objective (``curve_keys``, for example
``ssl_loss``, ``ref_loss``, ``grad_cosine``). :class:`SSLLocalLogger` registers them, keeps the stock
one-value-per-epoch rule and draws progress.png with the losses, the SSL curves, epoch durations and learning rate.
Fine-tuning trainers with curves of their own (IDEAL's semi-supervised one: supervised and cross-pseudo-supervision
losses, consistency weight) use it with ``with_dice=True``: nnU-Net's pseudo Dice stays on the first panel.
"""
from typing import Sequence

import matplotlib

matplotlib.use("agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from nnunetv2.training.logging.nnunet_logger import LocalLogger  # noqa: E402

BASE_KEYS = ("train_losses", "val_losses", "lrs", "epoch_start_timestamps", "epoch_end_timestamps")
DICE_KEYS = ("mean_fg_dice", "ema_fg_dice")


class SSLLocalLogger(LocalLogger):
    def __init__(self, curve_keys: Sequence[str] = (), verbose: bool = False, with_dice: bool = False,
                 curves_title: str = "SSL curves"):
        super().__init__(verbose)
        self.curve_keys = tuple(curve_keys)
        self.with_dice = bool(with_dice)
        self.curves_title = curves_title
        for k in self.curve_keys:
            self.my_fantastic_logging.setdefault(k, [])

    def load_checkpoint(self, checkpoint: dict):
        super().load_checkpoint(checkpoint)
        for k in self.curve_keys:
            self.my_fantastic_logging.setdefault(k, [])

    def completed_epochs(self) -> int:
        return min(len(self.my_fantastic_logging[k]) for k in
                   BASE_KEYS + self.curve_keys + (DICE_KEYS if self.with_dice else ()))

    def figure(self):
        """The progress figure (None before the first completed epoch)."""
        n = self.completed_epochs()
        if n == 0:
            return None
        log = self.my_fantastic_logging
        x = list(range(n))
        fig, axes = plt.subplots(4, 1, figsize=(14, 20))
        ax = axes[0]
        ax.plot(x, log["train_losses"][:n], color="b", label="loss_tr" if self.with_dice else "loss_tr (SSL)",
                linewidth=2)
        ax.plot(x, log["val_losses"][:n], color="r",
                label="loss_val" if self.with_dice else "loss_val (SSL, held-out cases)", linewidth=2)
        ax.set_xlabel("epoch"); ax.set_ylabel("loss"); ax.legend(loc="upper left")
        if self.with_dice:
            ax2 = ax.twinx()
            ax2.plot(x, log["mean_fg_dice"][:n], color="g", ls="dotted", label="pseudo dice", linewidth=2)
            ax2.plot(x, log["ema_fg_dice"][:n], color="g", label="pseudo dice (mov. avg.)", linewidth=2)
            ax2.set_ylabel("pseudo dice"); ax2.legend(loc="upper right")
        ax = axes[1]
        for k in self.curve_keys:
            ax.plot(x, np.asarray(log[k][:n], dtype=float), label=k, linewidth=2)
        ax.set_xlabel("epoch"); ax.set_ylabel(self.curves_title); ax.legend(loc="upper right")
        ax = axes[2]
        durations = [e - s for s, e in zip(log["epoch_start_timestamps"][:n], log["epoch_end_timestamps"][:n])]
        ax.plot(x, durations, color="b", label="epoch duration", linewidth=2)
        ax.set_ylim(bottom=0); ax.set_xlabel("epoch"); ax.set_ylabel("time [s]"); ax.legend(loc="upper right")
        ax = axes[3]
        ax.plot(x, log["lrs"][:n], color="b", label="learning rate", linewidth=2)
        ax.set_xlabel("epoch"); ax.set_ylabel("learning rate"); ax.legend(loc="upper right")
        plt.tight_layout()
        return fig

    def plot_progress_png(self, output_folder):
        fig = self.figure()
        if fig is None:
            return
        fig.savefig(output_folder + "/progress.png" if isinstance(output_folder, str) else
                    str(output_folder) + "/progress.png")
        plt.close(fig)
