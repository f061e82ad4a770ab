"""The model side of SEER's freeze: stop training the lower encoder layers, in every copy."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torchrl.objectives import LossModule

from torchrl_seer.data.torchrl_internals import hard_copy_targets
from torchrl_seer.modules.encoders import SplitEncoder

__all__ = [
    "TARGET_SYNC_MODES",
    "EncoderFreezeReport",
    "FreezeSnapshot",
    "drop_from_optimizers",
    "freeze_encoder",
    "frozen_tensors",
    "stop_training_frozen_layers",
    "sync_targets",
]

FROZEN_NAME = "frozen_part"
#: ``"full"``: hard-copy every online parameter of each loss into its target;
#: ``"encoder"``: only the frozen layers of the targets are synced.
TARGET_SYNC_MODES = ("full", "encoder")


def _is_frozen_name(name: str) -> bool:
    return FROZEN_NAME in name.split(".")


def _named_tensors(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters and persistent buffers (what a checkpoint holds), by name."""
    return list(module.state_dict(keep_vars=True).items())


@dataclass
class EncoderFreezeReport:
    """What :func:`freeze_encoder` did.

    Attributes:
        frozen_tensors (int): distinct tensors frozen (every copy counted once).
        frozen_parameters (int): their number of elements.
        optimizer_states_dropped (int): optimizer states (e.g. Adam moments) freed.
        targets_synced (int): tensors overwritten by the frozen-copy and target syncs.
        target_sync (str): ``"full"`` or ``"encoder"``.
    """

    frozen_tensors: int
    frozen_parameters: int
    optimizer_states_dropped: int
    targets_synced: int
    target_sync: str

    def as_dict(self) -> dict[str, Any]:
        """The report as a plain dict (for loggers and JSON)."""
        return asdict(self)


def frozen_tensors(encoder: SplitEncoder, modules: Sequence[nn.Module] = ()) -> list[torch.Tensor]:
    """Every parameter and buffer named ``*frozen_part*`` in ``encoder`` and ``modules``.

    TorchRL losses hold their own copies (e.g. ``SACLoss.qvalue_network_params``, stacked
    ``[num_q, ...]``, and the ``target_*_params``); each distinct tensor is listed once.

    Args:
        encoder (SplitEncoder): the online encoder.
        modules (sequence of nn.Module): other modules and losses holding copies.

    Returns:
        The distinct tensors.
    """
    seen: dict[int, torch.Tensor] = {}
    for module in (encoder, *modules):
        for name, tensor in _named_tensors(module):
            if _is_frozen_name(name):
                seen.setdefault(id(tensor), tensor)
    return list(seen.values())


def drop_from_optimizers(
    optimizers: Iterable[torch.optim.Optimizer], tensors: Iterable[torch.Tensor]
) -> int:
    """Removes ``tensors`` from the optimizers' param groups and frees their state.

    Args:
        optimizers (iterable of Optimizer): the optimizers to purge.
        tensors (iterable of Tensor): the tensors no optimizer may update any more.

    Returns:
        The number of optimizer states dropped.
    """
    ids = {id(t) for t in tensors}
    dropped = 0
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            for param in group["params"]:
                if id(param) in ids and param in optimizer.state:
                    del optimizer.state[param]
                    dropped += 1
            group["params"] = [p for p in group["params"] if id(p) not in ids]
        optimizer.param_groups = [g for g in optimizer.param_groups if g["params"]]
    return dropped


def _sync_frozen_copies(encoder: SplitEncoder, modules: Sequence[nn.Module]) -> int:
    """Copies the encoder's frozen weights into every other copy (stacked ones broadcast).

    Latents are computed once, by ``encoder``; every network that consumes them (actor, each
    stacked Q copy, targets) must hold the same frozen weights.
    """
    source = dict(_named_tensors(encoder.frozen_part))
    synced = 0
    with torch.no_grad():
        for module in modules:
            for name, tensor in _named_tensors(module):
                if not _is_frozen_name(name):
                    continue
                suffix = name.split(f"{FROZEN_NAME}.", 1)[1]
                value = source.get(suffix)
                if value is None or value is tensor:
                    continue
                if value.shape != tensor.shape[tensor.ndim - value.ndim :]:
                    raise ValueError(
                        f"{name} has shape {tuple(tensor.shape)}, which does not hold the "
                        f"encoder's {suffix} of shape {tuple(value.shape)}."
                    )
                tensor.data.copy_(value.expand_as(tensor))
                synced += 1
    return synced


def sync_targets(loss: nn.Module) -> int:
    """Hard-copies every online parameter of a TorchRL loss into its target copy.

    The pairs are found by TorchRL itself: a :class:`~torchrl.objectives.HardUpdate` is built
    on the loss (which copies each source into its target) and discarded; the loss's
    "no target updater" bookkeeping is left as it was. Modules that are not
    :class:`~torchrl.objectives.LossModule` instances, and losses without target parameters,
    are left alone.

    Args:
        loss (nn.Module): a TorchRL loss (e.g. ``SACLoss``, ``DQNLoss(delay_value=True)``).

    Returns:
        The number of target tensors overwritten.
    """
    if not isinstance(loss, LossModule):
        return 0
    return hard_copy_targets(loss)


class FreezeSnapshot:
    """What a freeze changes, saved so that a failed freeze or restore can be undone.

    Saves the ``requires_grad`` flag and gradient of every frozen tensor, the values of every
    tensor of ``modules`` (copies and targets a sync may overwrite), and each optimizer's param
    groups and state.

    Args:
        encoder (SplitEncoder): the online encoder.

    Keyword Args:
        modules (sequence of nn.Module): modules and losses holding copies.
        optimizers (sequence of Optimizer): the optimizers.
    """

    def __init__(
        self,
        encoder: SplitEncoder,
        *,
        modules: Sequence[nn.Module] = (),
        optimizers: Sequence[torch.optim.Optimizer] = (),
    ) -> None:
        self._flags = [(t, t.requires_grad, t.grad) for t in frozen_tensors(encoder, modules)]
        values: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for module in (encoder, *modules):
            for _, tensor in _named_tensors(module):
                values.setdefault(id(tensor), (tensor, tensor.detach().clone()))
        self._values = list(values.values())
        self._optimizers = [
            (
                optimizer,
                [{**group, "params": list(group["params"])} for group in optimizer.param_groups],
                dict(optimizer.state),
            )
            for optimizer in optimizers
        ]

    def restore(self) -> None:
        """Puts everything saved back."""
        with torch.no_grad():
            for tensor, value in self._values:
                tensor.data.copy_(value)
        for tensor, requires_grad, grad in self._flags:
            tensor.requires_grad_(requires_grad)
            tensor.grad = grad
        for optimizer, groups, state in self._optimizers:
            optimizer.param_groups = [{**g, "params": list(g["params"])} for g in groups]
            optimizer.state.clear()
            optimizer.state.update(state)


def _freeze_tensors(encoder: SplitEncoder, modules: Sequence[nn.Module]) -> list[torch.Tensor]:
    tensors = frozen_tensors(encoder, modules)
    if not tensors:
        raise RuntimeError("found no parameter named '*frozen_part*' to freeze.")
    for tensor in tensors:
        if isinstance(tensor, nn.Parameter):
            tensor.grad = None
            tensor.requires_grad_(False)
    return tensors


def stop_training_frozen_layers(
    encoder: SplitEncoder,
    *,
    modules: Sequence[nn.Module] = (),
    optimizers: Sequence[torch.optim.Optimizer] = (),
) -> tuple[list[torch.Tensor], int]:
    """Sets ``requires_grad=False`` on every frozen copy and purges it from the optimizers.

    The part of :func:`freeze_encoder` that a restore re-applies (values come from the
    checkpoint, so nothing is synced).

    Args:
        encoder (SplitEncoder): the online encoder.

    Keyword Args:
        modules (sequence of nn.Module): modules and losses holding copies.
        optimizers (sequence of Optimizer): the optimizers to purge.

    Returns:
        The frozen tensors and the number of optimizer states dropped.
    """
    tensors = _freeze_tensors(encoder, modules)
    return tensors, drop_from_optimizers(optimizers, tensors)


def freeze_encoder(
    encoder: SplitEncoder,
    *,
    modules: Sequence[nn.Module] = (),
    optimizers: Sequence[torch.optim.Optimizer] = (),
    target_sync: str = "full",
) -> EncoderFreezeReport:
    """Freezes the lower encoder layers in every copy of the networks; no replay buffer needed.

    1. sets ``requires_grad=False`` (and drops the gradient) of every parameter whose name
       contains ``frozen_part`` in ``encoder`` and in each of ``modules`` (actor, critic and
       TorchRL losses, which hold their own copies: e.g. ``SACLoss.qvalue_network_params``
       stacked ``[num_q, ...]``, target params, 16-bit copies of a low-precision loss);
    2. removes them from every optimizer's param groups and drops their optimizer state;
    3. copies the encoder's frozen weights into every other copy (one set of latents serves
       them all), then syncs targets: ``"full"`` hard-copies every online parameter of each
       TorchRL loss into its target (:func:`sync_targets`), ``"encoder"`` leaves the target
       heads alone (their frozen layers were synced in step 3).

    The freeze is atomic: if a step fails, every parameter, flag and optimizer is put back.

    Args:
        encoder (SplitEncoder): the online encoder (its ``frozen_part`` defines the latents).

    Keyword Args:
        modules (sequence of nn.Module): other modules and losses holding copies of the
            encoder. Defaults to ``()``.
        optimizers (sequence of Optimizer): optimizers to purge. Defaults to ``()``.
        target_sync (str): ``"full"`` or ``"encoder"``. Defaults to ``"full"``.

    Returns:
        An :class:`EncoderFreezeReport`.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from torchrl_seer.modules import DataEfficientAtariEncoder
        >>> encoder = DataEfficientAtariEncoder()
        >>> head = nn.Linear(576, 6)
        >>> optim = torch.optim.Adam([*encoder.parameters(), *head.parameters()])
        >>> report = freeze_encoder(encoder, optimizers=[optim])
        >>> report.frozen_tensors, any(p.requires_grad for p in encoder.frozen_part.parameters())
        (4, False)
        >>> len(optim.param_groups[0]["params"])  # the head's weight and bias
        2
    """
    if not isinstance(encoder, SplitEncoder):
        raise TypeError(f"encoder must be a SplitEncoder, got {type(encoder).__name__}.")
    if target_sync not in TARGET_SYNC_MODES:
        raise ValueError(f"target_sync must be one of {TARGET_SYNC_MODES}, got {target_sync!r}.")
    snapshot = FreezeSnapshot(encoder, modules=modules, optimizers=optimizers)
    try:
        tensors, dropped = stop_training_frozen_layers(
            encoder, modules=modules, optimizers=optimizers
        )
        synced = _sync_frozen_copies(encoder, modules)
        if target_sync == "full":
            synced += sum(sync_targets(module) for module in modules)
    except BaseException:
        snapshot.restore()
        raise
    return EncoderFreezeReport(
        frozen_tensors=len(tensors),
        frozen_parameters=int(sum(t.numel() for t in tensors)),
        optimizer_states_dropped=dropped,
        targets_synced=synced,
        target_sync=target_sync,
    )
