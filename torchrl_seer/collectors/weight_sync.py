"""Shipping compressed policies to TorchRL collector workers through a weight-sync scheme.

TorchRL's default multi-process scheme (:class:`~torchrl.weight_update.SharedMemWeightSyncScheme`)
aliases the learner's fp32 buffers in shared memory, and the pipe-based
:class:`~torchrl.weight_update.MultiProcessWeightSyncScheme` copies ``TensorDict.from_module``
weights into same-named parameters. Neither can address a compressed actor: quantized modules
expose no parameters and structured pruning changes shapes. The scheme below keeps TorchRL's
pipe transport, acknowledgements and background receiver thread, and changes *what* travels:

* sender, :meth:`CompressedWeightSyncScheme.prepare_weights`: compress the learner's policy
  into a weight packet (int8 storage + scales, pruned dense tensors, bf16 tensors, ...);
* receiver, :class:`CompressedWeightStrategy.apply_weights`: rebuild the worker's
  :class:`~torchrl_seer.collectors.CompressedPolicy` from the packet.
"""

from __future__ import annotations

from typing import Any

from tensordict import TensorDictBase
from torch import nn
from torchrl.weight_update import MultiProcessWeightSyncScheme
from torchrl.weight_update.weight_sync_schemes import WeightStrategy

from torchrl_seer.collectors.compressed_policy import CompressedPolicy
from torchrl_seer.collectors.policy_compressor import PolicyCompressor

__all__ = ["CompressedPacketSender", "CompressedWeightStrategy", "CompressedWeightSyncScheme"]


def _find_compressed_policy(module: Any) -> CompressedPolicy:
    if isinstance(module, nn.Module):
        for sub in module.modules():
            if isinstance(sub, CompressedPolicy):
                return sub
    raise TypeError(
        "compressed weight packets can only be applied to a collector whose policy is (or "
        f"contains) a CompressedPolicy, got {type(module).__name__}"
    )


class CompressedWeightStrategy(WeightStrategy):
    """Weight strategy whose weights are compressed-policy packets.

    ``extract_weights`` returns the packet a :class:`CompressedPolicy` currently runs;
    ``apply_weights`` rebuilds the destination's :class:`CompressedPolicy` from a packet.

    Examples:
        >>> import torch
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl_seer.collectors import CompressedPolicy, PolicyCompressor
        >>> actor = TensorDictModule(torch.nn.Linear(4, 2), in_keys=["x"], out_keys=["y"])
        >>> worker_policy = CompressedPolicy(actor)
        >>> packet = PolicyCompressor.from_spec("int8").pack(actor, version=2)
        >>> CompressedWeightStrategy().apply_weights(worker_policy, packet)
        >>> worker_policy.version
        2
    """

    def __init__(self) -> None:
        super().__init__(extract_as="tensordict")

    def extract_weights(self, source: Any) -> TensorDictBase | None:
        """Returns the packet of the :class:`CompressedPolicy` in ``source`` (or ``source``).

        Args:
            source: a module containing a :class:`CompressedPolicy`, or a packet.

        Returns:
            The weight packet.
        """
        if PolicyCompressor.is_packet(source):
            return source
        return _find_compressed_policy(source).packet

    def apply_weights(self, destination: Any, weights: Any, inplace: bool = True) -> None:
        """Rebuilds the :class:`CompressedPolicy` inside ``destination`` from ``weights``.

        Args:
            destination: the worker's policy (or a module containing it).
            weights: a weight packet.
            inplace: unused; the compressed network is always rebuilt.
        """
        if weights is None:
            return
        if not PolicyCompressor.is_packet(weights):
            raise TypeError(
                "CompressedWeightStrategy expects a weight packet from PolicyCompressor.pack, "
                f"got {type(weights).__name__}"
            )
        _find_compressed_policy(destination).load_packet(weights)


class CompressedPacketSender:
    """Sender side shared by the compressed weight-sync schemes (pipes, Ray).

    Holds the :attr:`compressor`, the running :attr:`version` and the :attr:`last_packet` it
    made, and turns the learner's policy into the versioned weight packet that every transport
    ships unchanged.
    Assigning :attr:`compressor` (what the Monitor does when it steps precision up or down)
    takes effect at the next ship.

    Examples:
        >>> import torch
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl_seer.collectors import PolicyCompressor
        >>> scheme = CompressedWeightSyncScheme(PolicyCompressor.from_spec("bf16"))
        >>> isinstance(scheme, CompressedPacketSender)
        True
        >>> actor = TensorDictModule(torch.nn.Linear(4, 2), in_keys=["x"], out_keys=["y"])
        >>> [int(scheme.prepare_weights(actor, "policy", scheme.strategy)["version"])
        ...  for _ in range(2)]
        [1, 2]
    """

    compressor: PolicyCompressor
    version: int
    last_packet: TensorDictBase | None
    _strategy: WeightStrategy

    def _init_sender(self, compressor: PolicyCompressor) -> None:
        """Installs the packet strategy, the pipeline and version 0 (call after the base init)."""
        self._strategy = CompressedWeightStrategy()
        self.compressor = compressor
        self.version = 0
        self.last_packet = None
        self._checked_spec: str | None = None

    def prepare_weights(
        self,
        weights: Any,
        model_id: str,
        strategy: WeightStrategy,
        context: Any = None,
    ) -> Any:
        """Compresses the learner's policy into a versioned weight packet.

        Args:
            weights: the learner's full-precision policy (``nn.Module``), or a ready packet.
            model_id: the model identifier (``"policy"``).
            strategy: the scheme's strategy (unused).
            context: the collector (unused).

        Returns:
            The weight packet.

        Raises:
            ValueError: if the collector's :class:`CompressedPolicy` could not load the packet
                (the learner's policy has another architecture); the version is not advanced.
        """
        if PolicyCompressor.is_packet(weights):
            return weights
        if not isinstance(weights, nn.Module):
            raise TypeError(
                f"{type(self).__name__} ships the learner's policy: call "
                "collector.update_policy_weights_(learner_policy) with the full-precision "
                f"module, got {type(weights).__name__}"
            )
        return self.pack_next(weights)

    def pack_next(self, policy: nn.Module) -> TensorDictBase:
        """Stamps the next policy version and compresses ``policy`` into its weight packet.

        The one place the version is bumped: the schemes' :meth:`prepare_weights` and
        in-process actors (``CompressedPolicy.load_packet(scheme.pack_next(policy))``) use it.

        Args:
            policy: the learner's full-precision policy.

        Returns:
            The weight packet, stamped with the new :attr:`version`.

        Raises:
            ValueError: if the collector's :class:`CompressedPolicy` could not load the packet
                (the learner's policy has another architecture); the version is not advanced.
        """
        packet = self.compressor.pack(policy, version=self.version + 1)
        self._check_collector_accepts(packet)
        self.version += 1
        self.last_packet = packet
        return packet

    def _check_collector_accepts(self, packet: TensorDictBase) -> None:
        """Refuses, on the sender, a packet the collector's policy cannot load.

        A learner policy of another architecture (other layer sizes) than the collector's
        :class:`CompressedPolicy` raises a ``ValueError`` here, before anything is sent,
        rather than failing in the workers. Checked once per pipeline.
        """
        spec = self.compressor.spec()
        if self._checked_spec == spec:
            return
        model = getattr(self, "model", None)
        if isinstance(model, nn.Module) and any(
            isinstance(sub, CompressedPolicy) for sub in model.modules()
        ):
            _find_compressed_policy(model).check_packet(packet)
        self._checked_spec = spec

    def _initial_packet(self, weights: Any) -> TensorDictBase:
        """The packet of the first sync: the one the collector's own policy runs."""
        if PolicyCompressor.is_packet(weights):
            return weights
        model = getattr(self, "model", None)
        if model is None:
            raise RuntimeError(f"{type(self).__name__}: no collector policy to sync from")
        return self._strategy.extract_weights(model)


class CompressedWeightSyncScheme(CompressedPacketSender, MultiProcessWeightSyncScheme):
    """Pipe-based weight sync that compresses the learner's policy before shipping it.

    Give it to ``MultiSyncCollector``/``MultiAsyncCollector`` as
    ``weight_sync_schemes={"policy": scheme}`` together with a :class:`CompressedPolicy` as the
    collector's policy, then call ``collector.update_policy_weights_(learner_actor)`` every N
    learner updates. Each call compresses the learner's policy with :attr:`compressor`, stamps
    it with the next version and sends the packet through pipes (never shared memory: the
    actors must not alias the learner's fp32 buffers). Assigning :attr:`compressor` (what the
    Monitor does when it steps precision up or down) takes effect at the next ship.

    Args:
        compressor: the pipeline to ship with.

    Keyword Args:
        sync: wait for every worker's acknowledgement in ``send`` (TorchRL semantics).

    Examples:
        >>> import torch
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl_seer.collectors import PolicyCompressor
        >>> scheme = CompressedWeightSyncScheme(PolicyCompressor.from_spec("int8"))
        >>> actor = TensorDictModule(torch.nn.Linear(4, 2), in_keys=["x"], out_keys=["y"])
        >>> packet = scheme.prepare_weights(actor, "policy", scheme.strategy)
        >>> int(packet["version"]), packet["pipeline"].spec()
        (1, 'int8')
    """

    def __init__(self, compressor: PolicyCompressor, *, sync: bool = True) -> None:
        super().__init__(strategy="tensordict", sync=sync)
        self._init_sender(compressor)

    def _setup_connection_and_weights_on_sender_impl(
        self,
        *,
        worker_idx: int | None = None,
        weights: Any | None = None,
    ) -> None:
        # Initial sync: every worker receives the packet the collector's own policy runs.
        packet = self._initial_packet(weights)
        for index, transport in enumerate(self._iterate_transports()):
            if worker_idx is None or index == worker_idx:
                transport.send_weights_async(packet, model_id=self._model_id)

    def _background_receive_loop(self) -> None:
        # Same protocol as TorchRL's loop, minus the cascade into the inner collector's
        # update_policy_weights_, whose fallback path would ``update_`` same-named parameters:
        # a packet is applied once, by CompressedWeightStrategy, and the CompressedPolicy
        # stamps the packet's version on every step it takes.
        from torchrl import logger as torchrl_logger

        while not self._stop_event.is_set():
            try:
                instruction = self._wait_for_instruction()
                if instruction is None:
                    continue
                if instruction == "receive":
                    if self._receiver_transport is not None:
                        self._receiver_transport.receive_weights(
                            model=self.model, strategy=self._strategy
                        )
                    self._send_ack("updated")
                elif instruction == "stop":
                    break
            except Exception as error:
                if not self._stop_event.is_set():
                    torchrl_logger.warning(f"CompressedWeightSyncScheme receiver error: {error}")
