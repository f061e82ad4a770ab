"""CompressedPolicy: the actor-side policy that runs a compressed copy of the learner's policy."""

from __future__ import annotations

import copy
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from tensordict import NestedKey, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn

from torchrl_seer.collectors.policy_compressor import PolicyCompressor

__all__ = ["CompressedPolicy"]


def _expected_width(policy: nn.Module) -> str:
    """Names the input width of ``policy``'s first linear layer, when it has one."""
    first = next((m for m in policy.modules() if isinstance(m, (nn.Linear, nn.Conv2d))), None)
    if isinstance(first, nn.Linear):
        return f"; its first layer takes {first.in_features} input features"
    if isinstance(first, nn.Conv2d):
        return f"; its first layer takes {first.in_channels} input channels"
    return ""


class CompressedPolicy(TensorDictModuleBase):
    """Acts with a compressed copy of a learner's policy and stamps each step's policy version.

    The wrapped policy is typically a TorchRL ``ProbabilisticActor`` with
    ``return_log_prob=True``: its log-probability output is then computed by the *compressed*
    network, which is exactly the behaviour log-probability log μ(a|x) the Corrector (V-trace,
    Retrace) needs. For an ε-greedy Q-learning actor, end the policy with
    :class:`~torchrl_seer.modules.EGreedyLogProbModule` after the ``QValueActor`` (TorchRL's
    ``EGreedyModule`` records no log-probability). Every output also carries ``version_key``, the
    version of the weight packet the actor was running, from which the Monitor measures policy
    lag.

    Inputs are checked: a NaN or infinite observation raises a ``ValueError`` (an int8
    network quantizes its activations over the whole batch, so one NaN would silently change
    every row's action), and so does an input of the wrong width, naming the shapes given and
    the width the policy's first layer takes. A packet made from another architecture is
    refused by :meth:`load_packet` and the running network is kept.

    The compressed network is rebuilt from weight packets (see
    :class:`~torchrl_seer.collectors.PolicyCompressor`) on top of a private full-precision
    *template* of the policy's architecture. The network a packet replaces is kept as a spare:
    the next packet of the same structure is loaded into it
    (:meth:`~torchrl_seer.collectors.PolicyCompressor.refill`) once no step runs it any more,
    instead of compressing the template again. The template is not a registered submodule, so
    ``TensorDict.from_module`` never exposes stale full-precision weights: weights reach a
    compressed policy only through :meth:`load_packet` (in-process) or
    :class:`~torchrl_seer.collectors.CompressedWeightSyncScheme` (worker processes).

    Args:
        policy: the learner's full-precision policy (a ``TensorDictModuleBase``). It is copied.
        compressor: the initial pipeline; ``None`` means uncompressed (``fp32``).

    Keyword Args:
        version_key: output key of the policy version. Defaults to ``"policy_version"``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.modules import MLP
        >>> actor = TensorDictModule(MLP(in_features=4, out_features=2, num_cells=[32]),
        ...                          in_keys=["observation"], out_keys=["action"])
        >>> policy = CompressedPolicy(actor, PolicyCompressor.from_spec("int8"))
        >>> out = policy(TensorDict(observation=torch.randn(3, 4), batch_size=[3]))
        >>> out["policy_version"].tolist()
        [0, 0, 0]
        >>> policy.load_packet(PolicyCompressor.from_spec("bf16").pack(actor, version=7))
        >>> policy.compressor.spec(), policy.version
        ('bf16', 7)
    """

    _spare: tuple[nn.Module, TensorDictBase] | None  # the replaced network and its packet

    def __init__(
        self,
        policy: TensorDictModuleBase,
        compressor: PolicyCompressor | None = None,
        *,
        version_key: NestedKey = "policy_version",
    ) -> None:
        super().__init__()
        if not isinstance(policy, TensorDictModuleBase):
            raise TypeError(
                "CompressedPolicy expects a TensorDictModuleBase policy (e.g. a TorchRL "
                f"ProbabilisticActor), got {type(policy).__name__}"
            )
        self.in_keys = list(policy.in_keys)
        self.out_keys = [*policy.out_keys, version_key]
        self.version_key = version_key
        template = copy.deepcopy(policy).eval()
        for param in template.parameters():
            param.requires_grad_(False)
        object.__setattr__(self, "_template", template)  # deliberately not a submodule
        self._init_acting()
        self.network: nn.Module
        self.version = 0
        self.packet: TensorDictBase | None = None
        self.load_packet((compressor or PolicyCompressor()).pack(template, version=0))

    @property
    def compressor(self) -> PolicyCompressor:
        """The pipeline that produced the running network."""
        assert self.packet is not None
        return self.packet["pipeline"]

    def load_packet(self, packet: TensorDictBase) -> None:
        """Rebuilds the running network from a weight packet.

        Loading the very packet the policy already runs does nothing.

        Args:
            packet: a packet made by :meth:`PolicyCompressor.pack`.

        Raises:
            ValueError: if the packet was made from another architecture than this policy's;
                the running network and version are kept.
        """
        if packet is self.packet:
            return
        network = self._refilled_spare(packet)
        if network is None:  # not `or`: sequential modules are falsy when they have no layers
            network = PolicyCompressor.rebuild(self._template, packet)
        version = int(packet["version"])
        with self._acting_lock:
            # the network being replaced becomes the spare the next packet may be loaded into
            replaced = getattr(self, "_acting", None)
            if replaced is not None and self.packet is not None:
                self._spare = (replaced[0], self.packet)
            # Workers apply packets from a background thread while acting: publish the network
            # and its version as one tuple so a step never pairs one packet's network with
            # another's version.
            object.__setattr__(self, "_acting", (network, version))
        self.network = network
        self.version = version
        self.packet = packet

    def _refilled_spare(self, packet: TensorDictBase) -> nn.Module | None:
        """The spare network with ``packet`` loaded, if it has its structure and is idle."""
        with self._acting_lock:
            spare, self._spare = self._spare, None  # claimed: no step can start on it now
            if spare is None or self._running[id(spare[0])]:
                return None
        network, built_from = spare
        try:
            return network if PolicyCompressor.refill(network, built_from, packet) else None
        except (RuntimeError, ValueError):  # half-loaded: dropped; rebuild reports the cause
            return None

    def _init_acting(self) -> None:
        self._acting_lock = threading.Lock()
        self._running: Counter[int] = Counter()  # steps running, by id of their network
        self._spare = None

    @contextmanager
    def _acting_network(self) -> Iterator[tuple[nn.Module, int]]:
        """The network and version a step runs; the network is not refilled meanwhile."""
        with self._acting_lock:
            network, version = self._acting
            self._running[id(network)] += 1
        try:
            yield network, version
        finally:
            with self._acting_lock:
                self._running[id(network)] -= 1
                if not self._running[id(network)]:
                    del self._running[id(network)]

    def check_packet(self, packet: TensorDictBase) -> None:
        """Raises if :meth:`load_packet` would refuse ``packet``; the running network is kept.

        Args:
            packet: a packet made by :meth:`PolicyCompressor.pack`.

        Raises:
            ValueError: if the packet was made from another architecture than this policy's.
        """
        PolicyCompressor.rebuild(self._template, packet)

    def update_from(
        self,
        policy: nn.Module,
        *,
        version: int,
        compressor: PolicyCompressor | None = None,
    ) -> TensorDictBase:
        """Compresses the learner's ``policy`` and loads it (in-process collectors).

        Args:
            policy: the learner's current full-precision policy.

        Keyword Args:
            version: the version to stamp (e.g. the learner's update count).
            compressor: a new pipeline; defaults to the current one.

        Returns:
            The packet that was loaded.
        """
        packet = (compressor or self.compressor).pack(policy, version=version)
        self.load_packet(packet)
        return packet

    def __getstate__(self) -> dict:
        # Quantized modules do not survive torch.multiprocessing pickling (spawned workers):
        # ship the packet (plain tensors) and rebuild the network on arrival.
        state = self.__dict__.copy()
        state["_modules"] = {k: v for k, v in state["_modules"].items() if k != "network"}
        for name in ("_acting", "_acting_lock", "_running", "_spare"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict) -> None:
        packet = state.pop("packet")
        assert packet is not None
        self.__dict__.update(state, packet=None)
        self._init_acting()
        self.load_packet(packet)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Runs the compressed network and writes the policy version.

        Args:
            tensordict: input with the policy's ``in_keys``.

        Returns:
            The tensordict with the policy's outputs and ``version_key``.
        """
        with self._acting_network() as (network, version):
            return self._act(network, version, tensordict)

    def _act(self, network: nn.Module, version: int, tensordict: TensorDictBase) -> TensorDictBase:
        inputs = {key: tensordict.get(key, None) for key in self.in_keys}
        for key, value in inputs.items():
            if (
                isinstance(value, torch.Tensor)
                and value.is_floating_point()
                and not bool(torch.isfinite(value).all())
            ):
                raise ValueError(
                    f"CompressedPolicy ({self.compressor.spec()}) got "
                    f"{int((~torch.isfinite(value)).sum())} non-finite value(s) in {key!r}; "
                    "observations must be finite (an int8 network quantizes its activations "
                    "over the whole batch, so one NaN would silently change every row's "
                    "action)."
                )
        unbatched = tensordict.batch_dims == 0  # int8 kernels need a batch dimension
        try:
            with torch.no_grad():
                if unbatched:
                    tensordict.update(network(tensordict.unsqueeze(0)).squeeze(0))
                else:
                    tensordict = network(tensordict)
        except RuntimeError as error:
            shapes = {
                key: tuple(value.shape) if isinstance(value, torch.Tensor) else None
                for key, value in inputs.items()
            }
            raise ValueError(
                f"CompressedPolicy ({self.compressor.spec()}) cannot act on inputs of shapes "
                f"{shapes}{_expected_width(self._template)}: {error}"
            ) from error
        tensordict.set(
            self.version_key, torch.full(tensordict.batch_size, version, dtype=torch.int64)
        )
        return tensordict
