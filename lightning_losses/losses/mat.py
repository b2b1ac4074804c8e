r"""``mat``: memorization-aware training, a cross entropy on logits shifted per example by held-out predictions.

The held-out logits of every training example live in a
:class:`~lightning_losses.sample_store.PerSampleStore` keyed by the dataset ``index`` (one ``float32`` column per
class: ``4 * (C + 1)`` bytes per sample, replicated on every rank). They are filled from

* a table of the whole training set: the ``held_out`` argument (a ``.pt`` file holding a ``[num_samples, C]``
  tensor) or :meth:`MAT.load_held_out`; the reference (``facebookresearch/Pitfalls-of-Memorization``) takes them from
  XRM's cross-fitted phase 1, i.e. from a model that never trained on the example;
* and / or the batch: pass ``held_out_logits=...`` to ``compute_loss`` (e.g. a dataset column); these rows are written
  from the all-gathered global batch (first copy of an index wins), so every rank holds the same table.

In training, the calibration matrix :math:`J` (:mod:`lightning_losses.functional.mat`) is computed over the **global
batch** (index, target and mask gathered at one sync point, the rows read from the replicated store), so DDP on k
ranks gives each sample the shift of one process on the concatenated batch. A sample without a held-out row takes no
part in :math:`J` and gets no shift (plain cross entropy). In evaluation (``module.eval()``: validation, test) the loss
is the plain cross entropy of the unshifted logits, as the reference evaluates its model. With gradient
accumulation the calibration is per micro-batch (the reference calibrates on each mini-batch; announced by an
``AccumulationWarning``).

Non-finite held-out rows (counted in ``nonfinite``) and the rows of samples whose label is ``ignore_index`` are never
written. A step skipped after the write leaves its rows written: they are data (the same sample always gets the same
held-out logits), so writing them again is a no-op. The table is saved with the module (``get_extra_state``): a
checkpoint of the ``LightningModule`` carries it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lightning_losses import distributed
from lightning_losses._validation import check_int, check_number
from lightning_losses.errors import ConfigurationError
from lightning_losses.functional import mat as MF
from lightning_losses.losses.base import LOSSES
from lightning_losses.losses.families import LabelLoss
from lightning_losses.sample_store import PerSampleStore
from lightning_losses.sync import sync_statistics

__all__ = ["MAT"]


@LOSSES.register("mat", aliases=("memorization_aware_training",))
class MAT(LabelLoss):
    r"""Memorization-aware training (Bayat, Pezeshki, Dohmatob, Lopez-Paz, Vincent, *The Pitfalls of Memorization:
    When Memorization Hurts Generalization*, 2024).

    .. math::
        \ell_i = \mathrm{CE}\big(z_i + \log(q_i^\top P(y \mid \hat y) + \epsilon),\ y_i\big), \qquad
        q_i = \mathrm{softmax}(h_i / T)

    with :math:`h_i` the stored held-out logits of sample ``index[i]`` and :math:`P(y \mid \hat y)` calibrated on the
    global batch (:mod:`lightning_losses.functional.mat`). Examples the held-out model already explains contribute
    little; the "exceptions" it gets wrong keep a large loss (a soft, per-logit JTT). Use it instead of
    ``cross_entropy``.

    Args:
        num_classes: :math:`C`, the width of the held-out logits table.
        temperature: :math:`T > 0` of the held-out softmax. Default 0.1 (the authors' grid ``{0.001, 0.01, 0.1}``;
            0.1 in their interpretable experiment).
        held_out: path of a ``.pt`` file holding the ``[num_samples, C]`` held-out logits of the training set, or
            ``None`` (fill the table with :meth:`load_held_out` or ``held_out_logits`` inputs).
        num_samples: training-set size (a fixed table, no host sync per step); default: the table grows on demand.
        eps: :math:`\epsilon` inside the log. Default 1e-6 (the reference's).
        ignore_index: labels that count nowhere. Default -100.
        validate_args: check the inputs' shapes. Default True.

    Example:
        >>> loss = MAT(num_classes=2, temperature=1.0)
        >>> loss.load_held_out(torch.tensor([[3.0, 0.0], [0.0, 3.0]]))
        >>> loss(logits=torch.zeros(2, 2), target=torch.tensor([0, 1]), index=torch.tensor([0, 1])).round(decimals=4)
        tensor([0.0947, 0.0947])
    """

    #: the calibration :math:`J` is taken over the (global) batch: a per-micro-batch value under accumulation
    batch_statistics = True

    def __init__(
        self,
        num_classes: int,
        temperature: float = 0.1,
        held_out: str | None = None,
        num_samples: int | None = None,
        eps: float = 1e-6,
        ignore_index: int = -100,
        validate_args: bool = True,
    ) -> None:
        super().__init__(validate_args)
        self.num_classes = check_int("num_classes", num_classes, low=2)
        self.temperature = check_number("temperature", temperature, low=0.0, low_open=True)
        self.eps = check_number("eps", eps, low=0.0)
        self.ignore_index = check_int("ignore_index", ignore_index)
        size = None if num_samples is None else check_int("num_samples", num_samples, low=1)
        fields = {f"logit_{c}": (torch.float32, 0.0) for c in range(self.num_classes)}
        self._store = PerSampleStore(fields, size, once_per_epoch=False)
        self._nonfinite = torch.zeros((), dtype=torch.int64)
        if held_out is not None:
            self.load_held_out(_load_table("held_out", held_out))
        self.held_out = held_out

    @property
    def nonfinite(self) -> torch.Tensor:
        """Held-out rows left out because they held a NaN / inf (from the global batch: identical on every rank)."""
        return self._nonfinite

    def load_held_out(self, table: torch.Tensor) -> None:
        """Store the held-out logits of the whole training set: row ``i`` of ``table`` ``[num_samples, C]`` is sample
        ``index == i`` (same on every rank: each rank loads the same table)."""
        if not isinstance(table, torch.Tensor) or table.ndim != 2 or table.shape[1] != self.num_classes:
            got = list(table.shape) if isinstance(table, torch.Tensor) else type(table).__name__
            raise ValueError(f"held-out logits must be a tensor [num_samples, {self.num_classes}], got {got}")
        if not bool(torch.isfinite(table).all()):
            raise ValueError("held-out logits must be finite; the table holds NaN / inf values")
        if self._store.fixed and table.shape[0] > len(self._store):
            raise ValueError(
                f"held-out logits have {table.shape[0]} rows but `num_samples` is {len(self._store)}; give the "
                "training-set size"
            )
        index = torch.arange(table.shape[0], device=self._store.stamp.device)
        self._store.reserve(table.shape[0])
        self._write(index, table.to(self._store.stamp.device), torch.ones_like(index, dtype=torch.bool))

    def held_out_logits(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``([N, C] float32 held-out logits, [N] bool: the sample has a row)`` of the given samples."""
        index = index.to(self._store.stamp.device).long()
        rows = torch.stack([self._store.read(f"logit_{c}", index) for c in range(self.num_classes)], 1)
        return rows, self._store.seen(index)

    def _write(self, index: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor) -> None:
        fresh = self._store.fresh(index, 0, valid)
        self._store.write(index, fresh, 0, **{f"logit_{c}": rows[:, c] for c in range(self.num_classes)})

    def forward(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        index: torch.Tensor,
        held_out_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.validate_args:
            _check_shapes(logits, target, index, held_out_logits, self.num_classes)
        target = target.long()  # any integer width (cross_entropy takes int64 only)
        if not self.training:
            return F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none")
        self._to(logits.device)
        valid = target != self.ignore_index
        local: dict[str, torch.Tensor] = {"index": index.long(), "target": target.long(), "valid": valid}
        if held_out_logits is not None:
            local["rows"] = held_out_logits.detach().float()
        synced = local
        if distributed.is_distributed():
            synced, _ = sync_statistics(local, dict.fromkeys(local, "cat"))
        g_index, g_target = synced["index"].long(), synced["target"].long()
        g_valid = synced["valid"].bool()
        if "rows" in synced:
            finite = torch.isfinite(synced["rows"]).all(-1)
            self._nonfinite = self._nonfinite + (g_valid & ~finite).sum()
            self._write(g_index, synced["rows"], finite & g_valid)  # ignored labels write nothing
        rows, seen = self.held_out_logits(g_index)
        joint = MF.mat_joint(rows, g_target, self.num_classes, self.temperature, g_valid & seen)
        local_rows, local_seen = self.held_out_logits(index)
        shift = MF.mat_shift(local_rows, joint, self.temperature, self.eps)
        shift = torch.where(local_seen.unsqueeze(1), shift, torch.zeros_like(shift))
        return F.cross_entropy(
            logits + shift.to(logits.dtype), target, ignore_index=self.ignore_index, reduction="none"
        )

    def _to(self, device: torch.device) -> None:
        if self._store.stamp.device != device:
            self._store.to(device)
            self._nonfinite = self._nonfinite.to(device)

    def get_extra_state(self) -> dict[str, Any]:
        return {"store": self._store.state_dict(), "nonfinite": self._nonfinite.cpu().clone()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or set(state) != {"store", "nonfinite"}:
            keys = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"MAT state must hold the keys ['nonfinite', 'store'], got {keys}")
        columns = sum(1 for k in state["store"] if k.startswith("logit_"))
        if columns != self.num_classes:
            raise ValueError(
                f"the checkpointed held-out table has {columns} classes but `num_classes` is {self.num_classes}"
            )
        self._store.load_state_dict(state["store"])
        self._nonfinite = state["nonfinite"].to(self._store.stamp.device).clone()


def _load_table(name: str, path: str) -> torch.Tensor:
    if not isinstance(path, (str, Path)) or not Path(path).is_file():
        raise ConfigurationError(
            f"`{name}` must be the path of a .pt file holding a [num_samples, C] tensor, got {path!r}"
        )
    table = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(table, torch.Tensor):
        raise ConfigurationError(f"`{name}` file {path!r} must hold a tensor, got {type(table).__name__}")
    return table


def _check_shapes(logits, target, index, held_out_logits, num_classes: int) -> None:
    n = logits.shape[0] if logits.ndim else 0
    if logits.ndim != 2 or logits.shape[1] != num_classes:
        raise ValueError(f"`logits` must have shape [N, {num_classes}] (`num_classes`), got {list(logits.shape)}")
    if target.shape != (n,) or target.is_floating_point():
        raise ValueError(f"`target` must be integer labels of shape [{n}], got {list(target.shape)} {target.dtype}")
    if index.shape != (n,) or index.is_floating_point():
        raise ValueError(f"`index` must be integer dataset positions of shape [{n}], got {list(index.shape)}")
    if held_out_logits is not None and held_out_logits.shape != logits.shape:
        raise ValueError(
            f"`held_out_logits` must have the shape of `logits` {list(logits.shape)}, got {list(held_out_logits.shape)}"
        )
