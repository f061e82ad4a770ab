"""PolicyCompressor: a composable pipeline of compression steps and its weight-packet format.

A compressed policy cannot travel through TorchRL's default weight sync: the packed weights of
``quantize_dynamic`` modules are not parameters or buffers, so ``TensorDict.from_module`` of a
quantized policy is empty, and structured pruning changes parameter shapes. The compressor
therefore serialises a compressed policy into a *weight packet*, a plain :class:`TensorDict`:

* ``"state"``: every ``state_dict`` entry of the compressed module, quantized tensors split into
  their int8 storage plus scales and zero points (so an int8 policy ships ~4x fewer bytes);
* ``"plan"``: the structural choices of each step (e.g. the neurons structured pruning kept);
* ``"version"``: the policy version stamped on every transition the actor collects;
* ``"pipeline"``: the compressor itself (small, picklable), so a receiver can rebuild whatever
  pipeline the sender currently runs (the Monitor may switch it between ships).

:meth:`PolicyCompressor.rebuild` turns a packet back into a runnable module on top of a
full-precision *template* of the same architecture; :meth:`PolicyCompressor.refill` loads a
later packet of the same structure into a module built earlier, without compressing the
template again.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from tensordict import NonTensorData, TensorDict, TensorDictBase
from torch import nn

from torchrl_seer.collectors.compression_steps import (
    Cast,
    CompressionStep,
    Distill,
    Prune,
    Quantize,
    quiet_torch_ao,
)
from torchrl_seer.collectors.static_graph import StaticGraph

__all__ = ["PolicyCompressor"]


def _encode_tensor(value: torch.Tensor) -> TensorDictBase | torch.Tensor:
    if not value.is_quantized:
        return value.detach().clone()
    if value.qscheme() in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        return TensorDict(
            int_repr=value.int_repr(),
            scale=torch.tensor(value.q_scale(), dtype=torch.float64),
            zero_point=torch.tensor(value.q_zero_point()),
        )
    return TensorDict(
        int_repr=value.int_repr(),
        scales=value.q_per_channel_scales(),
        zero_points=value.q_per_channel_zero_points(),
        axis=torch.tensor(value.q_per_channel_axis()),
    )


def _decode_tensor(value: TensorDictBase | torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if "scale" in value.keys():
        return torch._make_per_tensor_quantized_tensor(
            value["int_repr"], float(value["scale"]), int(value["zero_point"])
        )
    return torch._make_per_channel_quantized_tensor(
        value["int_repr"], value["scales"], value["zero_points"], int(value["axis"])
    )


def _escape(name: str) -> str:
    return name.replace(".", "/")


def _shipped_shape(value: TensorDictBase | torch.Tensor) -> torch.Size:
    return value.shape if isinstance(value, torch.Tensor) else value["int_repr"].shape


def _check_packet_fits(current: dict[str, Any], shipped: TensorDictBase) -> None:
    """Raises if a tensor of the packet has another shape than the template's compressed one."""
    for name, value in current.items():
        key = _escape(name)
        if not isinstance(value, (torch.Tensor, tuple)):
            continue
        if key not in shipped.keys():
            raise ValueError(
                f"weight packet lacks '{name}': it was made from another architecture than "
                "this policy's."
            )
        pairs = (
            [(value, shipped[key])]
            if isinstance(value, torch.Tensor)
            else [
                (item, shipped[key][str(i)])
                for i, item in enumerate(value)
                if isinstance(item, torch.Tensor) and str(i) in shipped[key].keys()
            ]
        )
        for expected, packed in pairs:
            if _shipped_shape(packed) != expected.shape:
                raise ValueError(
                    f"weight packet entry '{name}' has shape {tuple(_shipped_shape(packed))} "
                    f"but this policy's architecture gives {tuple(expected.shape)}: the packet "
                    "was made from another network (other layer sizes)."
                )


def _load_shipped_state(module: nn.Module, packet: TensorDictBase) -> None:
    """Loads a packet's decoded state into a module of the packet's structure."""
    current = module.state_dict()
    _check_packet_fits(current, packet["state"])
    state: OrderedDict[str, Any] = OrderedDict()
    # version metadata tells quantized modules which serialisation format to expect
    state._metadata = getattr(current, "_metadata", {})  # type: ignore[attr-defined]
    for name, value in current.items():
        key = _escape(name)
        if not isinstance(value, (torch.Tensor, tuple)):
            state[name] = value  # e.g. the dtype entry of packed params
            continue
        shipped = packet["state"][key]
        if isinstance(value, tuple):
            state[name] = tuple(
                _decode_tensor(shipped[str(i)]) if str(i) in shipped.keys() else None
                for i in range(len(value))
            )
        else:
            state[name] = _decode_tensor(shipped)
    module.load_state_dict(state)


def _same_structure(first: TensorDictBase, second: TensorDictBase) -> bool:
    """Whether two packets build the same network: same pipeline, plan and state layout."""
    if first["pipeline"].spec() != second["pipeline"].spec():
        return False
    plans = [dict(packet["plan"].items(True, True)) for packet in (first, second)]
    if plans[0].keys() != plans[1].keys():
        return False
    if not all(torch.equal(plans[0][key], plans[1][key]) for key in plans[0]):
        return False
    states = [dict(packet["state"].items(True, True)) for packet in (first, second)]
    return states[0].keys() == states[1].keys() and all(
        states[0][key].shape == states[1][key].shape
        and states[0][key].dtype == states[1][key].dtype
        for key in states[0]
    )


class PolicyCompressor:
    """A pipeline of compression steps applied in order to a copy of the learner's policy.

    Args:
        steps: the steps, e.g. ``[Prune(0.5), Quantize("int8")]``. An empty list is the
            uncompressed ``fp32`` control.

    Examples:
        >>> import torch
        >>> from torchrl.modules import MLP
        >>> from torchrl_seer.collectors import PolicyCompressor, Prune, Quantize
        >>> net = MLP(in_features=8, out_features=2, num_cells=[64, 64])
        >>> compressor = PolicyCompressor([Prune(0.5), Quantize("int8")])
        >>> compressor.spec()
        'prune0.5s+int8'
        >>> packet = compressor.pack(net, version=3)
        >>> worker_net = compressor.rebuild(MLP(in_features=8, out_features=2, num_cells=[64, 64]),
        ...                                 packet)
        >>> x = torch.randn(5, 8)
        >>> torch.equal(worker_net(x), compressor.compress(net)[0](x))
        True
    """

    def __init__(self, steps: Sequence[CompressionStep] = ()) -> None:
        steps = list(steps)
        for step in steps:
            if not isinstance(step, CompressionStep):
                raise TypeError(f"PolicyCompressor steps must be CompressionStep, got {step!r}")
        kinds = [type(s) for s in steps]
        if Distill in kinds and kinds.index(Distill) != 0:
            raise ValueError("Distill must be the first step (it replaces the policy)")
        if Quantize in kinds and Cast in kinds:
            raise ValueError("combine Quantize('int8') or Cast(...), not both")
        if StaticGraph in kinds and kinds.index(StaticGraph) != len(kinds) - 1:
            raise ValueError("StaticGraph must be the last step (it runs the compressed network)")
        self.steps = steps

    @classmethod
    def from_spec(cls, spec: str) -> PolicyCompressor:
        """Parses a pipeline string: steps joined by ``+``.

        Step names: ``fp32``/``none`` (no compression), ``bf16``, ``fp16``, ``int8`` (dynamic),
        ``int8static`` (needs a calibration callable, so build it with :class:`Quantize`),
        ``prune<amount>`` (structured, e.g. ``prune0.5``) or ``prune<amount>u`` (unstructured),
        and last ``trace`` or ``compile`` (:class:`~torchrl_seer.collectors.StaticGraph`).

        Args:
            spec: e.g. ``"prune0.5+int8"``.

        Returns:
            The compressor.

        Examples:
            >>> PolicyCompressor.from_spec("prune0.25+bf16").steps
            [Prune('prune0.25s'), Cast('bf16')]
        """
        steps: list[CompressionStep] = []
        for raw in spec.strip().lower().split("+"):
            token = raw.strip()
            if token in ("fp32", "none", ""):
                continue
            if token in ("bf16", "fp16"):
                steps.append(Cast(token))
            elif token == "int8":
                steps.append(Quantize("int8"))
            elif token in ("trace", "compile"):
                steps.append(StaticGraph(token))
            elif token.startswith("prune"):
                body = token[len("prune") :]
                structured = not body.endswith("u")
                body = body.rstrip("su")
                try:
                    amount = float(body)
                except ValueError:
                    raise ValueError(
                        f"bad prune step {token!r}: expected e.g. 'prune0.5'"
                    ) from None
                steps.append(Prune(amount, structured=structured))
            else:
                raise ValueError(
                    f"unknown compression step {token!r} in {spec!r}; expected fp32, bf16, fp16, "
                    "int8, prune<amount>[u], trace, compile joined by '+'"
                )
        return cls(steps)

    def spec(self) -> str:
        """Returns the pipeline string (``"fp32"`` when there is no step)."""
        return "+".join(s.spec() for s in self.steps) or "fp32"

    def __repr__(self) -> str:
        return f"PolicyCompressor({self.spec()!r})"

    def compress(
        self, policy: nn.Module, *, plan: TensorDictBase | None = None
    ) -> tuple[nn.Module, TensorDictBase]:
        """Runs the steps on a deep copy of ``policy``.

        Args:
            policy: the learner's full-precision policy (left untouched).

        Keyword Args:
            plan: per-step plans from an earlier call, to reproduce the same structure.

        Returns:
            The compressed policy in eval mode and the plan (one entry per step).
        """
        module = copy.deepcopy(policy).eval()
        full_plan = TensorDict()
        for index, step in enumerate(self.steps):
            step_plan = None if plan is None else plan.get(str(index))
            module, new_plan = step.apply(module, plan=step_plan)
            full_plan[str(index)] = new_plan
        for param in module.parameters():
            param.requires_grad_(False)
        return module.eval(), full_plan

    def pack(self, policy: nn.Module, *, version: int = 0) -> TensorDictBase:
        """Compresses ``policy`` and serialises the result into a weight packet.

        Args:
            policy: the learner's full-precision policy.

        Keyword Args:
            version: policy version to stamp on transitions collected with this packet.

        Returns:
            The weight packet (see the module docstring).
        """
        module, plan = self.compress(policy)
        state = TensorDict()
        for name, value in module.state_dict().items():
            if isinstance(value, torch.Tensor):
                state[_escape(name)] = _encode_tensor(value)
            elif isinstance(value, tuple):  # packed params: (qweight, bias)
                packed = TensorDict()
                for i, item in enumerate(value):
                    if isinstance(item, torch.Tensor):
                        packed[str(i)] = _encode_tensor(item)
                state[_escape(name)] = packed
        return TensorDict(
            state=state,
            plan=plan,
            version=torch.tensor(int(version)),
            pipeline=NonTensorData(self),
        )

    @staticmethod
    def is_packet(obj: Any) -> bool:
        """Whether ``obj`` is a weight packet made by :meth:`pack`.

        Args:
            obj: anything.

        Returns:
            ``True`` for a TensorDict holding a ``"pipeline"`` entry.

        Examples:
            >>> from torch import nn
            >>> PolicyCompressor.is_packet(PolicyCompressor().pack(nn.Linear(2, 2)))
            True
            >>> PolicyCompressor.is_packet(nn.Linear(2, 2))
            False
        """
        return isinstance(obj, TensorDictBase) and "pipeline" in obj.keys()

    @staticmethod
    def rebuild(template: nn.Module, packet: TensorDictBase) -> nn.Module:
        """Rebuilds the compressed policy of ``packet`` on top of a full-precision template.

        Args:
            template: a policy of the learner's architecture (its weights are not used).
            packet: a packet from :meth:`pack`.

        Returns:
            The compressed policy, in eval mode, identical to the sender's.

        Raises:
            ValueError: if ``packet`` is not a weight packet, or was made from a network of
                another architecture (other layer sizes) than ``template``.
        """
        missing = [k for k in ("state", "plan", "version", "pipeline") if k not in packet.keys()]
        if missing:
            raise ValueError(f"not a weight packet: it lacks {missing}.")
        compressor: PolicyCompressor = packet["pipeline"]
        if not isinstance(compressor, PolicyCompressor):
            raise TypeError(f"not a weight packet: 'pipeline' holds {type(compressor).__name__}")
        with quiet_torch_ao():
            try:
                module, _ = compressor.compress(template, plan=packet["plan"])
            except (IndexError, RuntimeError) as error:
                raise ValueError(
                    f"weight packet ({compressor.spec()}) does not fit this policy: its "
                    "compression plan refers to units this architecture does not have (the "
                    f"packet was made from another network): {error}"
                ) from error
            _load_shipped_state(module, packet)
        return module.eval()

    @staticmethod
    def refill(network: nn.Module, built_from: TensorDictBase, packet: TensorDictBase) -> bool:
        """Loads ``packet`` into ``network`` when both packets build the same structure.

        A worker that receives a packet for the pipeline it already runs needs new weights,
        not a new network: this skips compressing the template again (for ``int8``, a second
        quantization of every weight that the load then overwrites). With the first acting
        step after it, a refill took 0.40 of a rebuild's time for an ``int8`` MLP with two
        hidden layers of 2,048 or 4,096 units, and 0.42-0.55 with ``int8+trace``, whose graph
        is traced again in both cases (``accerl_packet_load.md``). Structures match when the
        pipelines have the same :meth:`spec`, the plans are equal (e.g. the units pruning
        kept) and the states hold the same entries with the same shapes and dtypes. Static
        graphs of a :class:`~torchrl_seer.collectors.StaticGraph` step are rebuilt at the next
        call.

        Args:
            network: a module returned by :meth:`rebuild` for ``built_from``, not running
                (its weights are overwritten).
            built_from: the packet ``network`` was built from.
            packet: the new packet.

        Returns:
            ``True`` if ``network`` now runs ``packet``; ``False`` if the structures differ,
            ``network`` untouched (call :meth:`rebuild` instead).

        Examples:
            >>> from torch import nn
            >>> compressor = PolicyCompressor.from_spec("int8")
            >>> policy = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
            >>> first = compressor.pack(policy, version=1)
            >>> network = PolicyCompressor.rebuild(policy, first)
            >>> PolicyCompressor.refill(network, first, compressor.pack(policy, version=2))
            True
            >>> PolicyCompressor.refill(
            ...     network, first, PolicyCompressor.from_spec("bf16").pack(policy)
            ... )
            False
        """
        if not _same_structure(built_from, packet):
            return False
        with quiet_torch_ao():
            _load_shipped_state(network, packet)
        network.eval()
        return True

    @staticmethod
    def packet_nbytes(packet: TensorDictBase) -> int:
        """Counts the tensor bytes a packet carries (what crosses the process boundary).

        Args:
            packet: a packet from :meth:`pack`.

        Returns:
            Total bytes of its tensors.
        """
        return sum(
            t.numel() * t.element_size()
            for t in packet["state"].values(include_nested=True, leaves_only=True)
        )
