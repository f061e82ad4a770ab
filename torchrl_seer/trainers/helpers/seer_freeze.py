"""The SEER recipes' freeze settings: ``seer.freeze_at`` (a step or ``"auto"``), its criterion."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchrl_seer.trainers.encoder_convergence import ParameterConvergence

__all__ = ["check_freeze_at", "freeze_criterion", "save_encoder_trajectory"]

TRAJECTORY_FILE = "encoder_trajectory.pt"


def check_freeze_at(freeze_at: Any) -> None:
    """Refuses a ``seer.freeze_at`` that is neither a step >= 0 nor ``"auto"``.

    Args:
        freeze_at: the configured value.

    Examples:
        >>> check_freeze_at("auto"); check_freeze_at(50_000)
        >>> check_freeze_at(-1)
        Traceback (most recent call last):
        ...
        ValueError: seer.freeze_at must be a step >= 0 or 'auto', got -1.
    """
    if freeze_at != "auto" and not (isinstance(freeze_at, int) and freeze_at >= 0):
        raise ValueError(f"seer.freeze_at must be a step >= 0 or 'auto', got {freeze_at!r}.")


def freeze_criterion(
    seer: Mapping[str, Any], parameters: Iterable[nn.Parameter], *, learn_start: int
) -> ParameterConvergence | None:
    """The convergence criterion that a recipe's ``seer`` settings ask for, or ``None``.

    A criterion is built when ``seer.freeze_at`` is ``"auto"`` (it decides the freeze step) or
    ``seer.record_trajectory`` is true (it records the encoder's parameters at every check,
    also when the freeze step is fixed, so that a bound can be calibrated on the finished run).

    Args:
        seer (mapping): the recipe's ``seer`` settings: ``freeze_at``, ``record_trajectory``,
            ``auto_interval``, ``auto_statistic``, ``auto_threshold`` (``None``: the class
            default), ``auto_window`` and ``auto_min_step``.
        parameters (iterable of nn.Parameter): the layers that the freeze stops.

    Keyword Args:
        learn_start (int): the step at which updates start; no check before it counts.

    Examples:
        >>> from torch import nn
        >>> seer = {"freeze_at": "auto", "record_trajectory": False, "auto_interval": 500,
        ...         "auto_statistic": "relative_change", "auto_threshold": 0.05,
        ...         "auto_window": 10, "auto_min_step": 2_000}
        >>> criterion = freeze_criterion(seer, nn.Linear(2, 2).parameters(), learn_start=1_000)
        >>> criterion.check_interval, criterion.min_step, criterion.threshold
        (500, 2000, 0.05)
        >>> freeze_criterion({**seer, "freeze_at": 100}, [], learn_start=0) is None
        True
    """
    if seer["freeze_at"] != "auto" and not seer["record_trajectory"]:
        return None
    return ParameterConvergence(
        parameters,
        check_interval=seer["auto_interval"],
        statistic=seer["auto_statistic"],
        threshold=seer["auto_threshold"],
        window=seer["auto_window"],
        min_step=max(learn_start, seer["auto_min_step"]),
        keep_trajectory=seer["record_trajectory"],
    )


def save_encoder_trajectory(
    criterion: ParameterConvergence | None, run_dir: str | Path
) -> Path | None:
    """Saves a criterion's recorded snapshots as ``encoder_trajectory.pt`` in ``run_dir``.

    The file holds ``{"steps": [...], "parameters": Tensor[checks, numel]}`` (CPU, fp32), the
    input of ``seer_benchmarks.seer_auto_freeze_calibration``.

    Args:
        criterion (ParameterConvergence or None): the recipe's criterion.
        run_dir (str or Path): the run folder.

    Returns:
        The file's path, or ``None`` when there is nothing recorded.

    Examples:
        >>> import tempfile
        >>> from torch import nn
        >>> layer = nn.Linear(2, 2)
        >>> criterion = ParameterConvergence(layer.parameters(), keep_trajectory=True)
        >>> _ = criterion.update(0)
        >>> path = save_encoder_trajectory(criterion, tempfile.mkdtemp())
        >>> torch.load(path)["parameters"].shape
        torch.Size([1, 6])
    """
    if criterion is None or not criterion.trajectory:
        return None
    steps, snapshots = zip(*criterion.trajectory, strict=True)
    path = Path(run_dir) / TRAJECTORY_FILE
    torch.save({"steps": list(steps), "parameters": torch.stack(snapshots)}, path)
    return path
