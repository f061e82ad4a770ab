"""Shipping compressed policies to TorchRL's ``RayCollector`` workers (optional multi-machine path).

TorchRL 0.14.1's :class:`~torchrl.weight_update.RayWeightSyncScheme` sends weights with
``torch.distributed`` point-to-point ``send``/``recv``: the receiver pre-allocates a buffer
shaped like ``TensorDict.from_module(policy)`` and receives every tensor leaf into it. A
compressed policy breaks that contract twice: quantized modules expose no parameters (the buffer
is empty) and the packet's layout changes whenever the Monitor switches the pipeline (int8 → bf16,
another pruning plan), while a ``recv`` buffer has a fixed layout.

:class:`CompressedRayWeightSyncScheme` keeps everything ``RayCollector`` relies on — the scheme is
registered per remote collector through ``weight_sync_schemes={"policy": scheme}``, sender and
receiver halves are set up by ``init_on_sender``/``init_on_receiver``/``connect``, one transport
per remote collector, sends wait for every worker's acknowledgement — and changes the wire: the
weight packet of :class:`~torchrl_seer.collectors.PolicyCompressor` travels as the argument of a
Ray actor call (through Ray's object store, so across machines too) to the remote collector's
``cascade_execute``, which hands it to :meth:`CompressedRayWeightSyncScheme.receive_packet`, where
:class:`~torchrl_seer.collectors.CompressedWeightStrategy` rebuilds the worker's
:class:`~torchrl_seer.collectors.CompressedPolicy` — the same packet and the same strategy as the
pipe-based :class:`~torchrl_seer.collectors.CompressedWeightSyncScheme`.
"""

from __future__ import annotations

from typing import Any

from tensordict import TensorDictBase
from torchrl.weight_update import RayWeightSyncScheme

from torchrl_seer.collectors.policy_compressor import PolicyCompressor
from torchrl_seer.collectors.weight_sync import CompressedPacketSender
from torchrl_seer.data.torchrl_internals import forwards_weight_packets
from torchrl_seer.optional_dependencies import import_optional

__all__ = ["CompressedRayWeightSyncScheme"]


class _RayPacketTransport:
    """Sends weight packets to ONE remote collector as a Ray actor call (TorchRL transport API).

    Args:
        remote_actor: the Ray handle of the remote collector (``None`` on the receiver side).
        receiver_path: the ``cascade_execute`` path of the receiving scheme's ``receive_packet``.
    """

    def __init__(self, remote_actor: Any, receiver_path: str) -> None:
        self._remote_actor = remote_actor
        self._receiver_path = receiver_path
        self._pending: Any = None

    def send_weights_async(self, weights: TensorDictBase) -> None:
        """Starts the remote ``receive_packet`` call with the packet as its argument."""
        if self._remote_actor is None:
            raise RuntimeError("this transport has no remote collector (receiver side)")
        self._pending = self._remote_actor.cascade_execute.remote(self._receiver_path, weights)

    def wait_ack(self) -> None:
        """Blocks until the remote collector has rebuilt its policy from the packet."""
        ray = import_optional("ray", extra="ray")

        if self._pending is None:
            raise RuntimeError("no packet in flight: call send_weights_async first")
        pending, self._pending = self._pending, None
        ray.get(pending)

    def send_weights(self, weights: TensorDictBase) -> None:
        """Sends a packet and waits for the remote collector to apply it."""
        self.send_weights_async(weights)
        self.wait_ack()

    def receive_weights(self, timeout: float | None = None, **kwargs: Any) -> None:
        """Nothing to poll: packets arrive as Ray calls to ``receive_packet``."""
        return None

    def setup_connection_and_weights_on_sender(self) -> None:
        """No connection to open: Ray actor handles are already connected."""

    def setup_connection_and_weights_on_receiver(self, **kwargs: Any) -> None:
        """No process group to join on the receiver."""
        return None


class CompressedRayWeightSyncScheme(CompressedPacketSender, RayWeightSyncScheme):
    """Ray weight sync that compresses the learner's policy and ships the packet to each worker.

    Give it to ``RayCollector`` as ``weight_sync_schemes={"policy": scheme}`` with a
    :class:`~torchrl_seer.collectors.CompressedPolicy` as the collector's policy, then call
    ``collector.update_policy_weights_(learner_actor)`` every N learner updates (and once before
    iterating, which also runs the initial sync). Each call compresses the learner's policy with
    :attr:`compressor`, stamps the next version and sends the packet to every remote collector,
    returning once each has rebuilt its compressed policy. Assigning :attr:`compressor` (the
    Monitor's fallback) takes effect at the next ship. ``update_policy_weights_()`` without the
    learner's policy (e.g. ``update_after_each_batch=True``) is refused: the collector only
    holds the compressed copy, not the full-precision policy to compress.

    A packet is applied to the remote collector's own policy. When the remote collector is a
    multi-process one (``collector_class="sync"`` or ``"async"``), give it a
    :class:`~torchrl_seer.collectors.CompressedWeightSyncScheme` through
    ``collector_kwargs={"weight_sync_schemes": {"policy": ...}}``: the packet is forwarded,
    unchanged, to its processes.

    Args:
        compressor: the pipeline to ship with.

    Examples:
        >>> import torch
        >>> from torchrl.modules import MLP
        >>> from torchrl_seer.collectors import CompressedWeightSyncScheme, PolicyCompressor
        >>> net = MLP(in_features=4, out_features=2, num_cells=[32])
        >>> over_ray = CompressedRayWeightSyncScheme(PolicyCompressor.from_spec("prune0.5+int8"))
        >>> over_pipes = CompressedWeightSyncScheme(PolicyCompressor.from_spec("prune0.5+int8"))
        >>> ray_packet, pipe_packet = (
        ...     scheme.prepare_weights(net, "policy", scheme.strategy)
        ...     for scheme in (over_ray, over_pipes))
        >>> set(ray_packet.keys(True, True)) == set(pipe_packet.keys(True, True))  # one format
        True
    """

    def __init__(self, compressor: PolicyCompressor) -> None:
        super().__init__(strategy="tensordict")
        self._init_sender(compressor)

    def create_transport(
        self, *, remote_actor: Any = None, worker_idx: int | None = None, **kwargs: Any
    ) -> Any:
        """Creates the packet transport to one remote collector.

        Args:
            remote_actor: the Ray handle of the remote collector (``None`` on the receiver).
            worker_idx: the worker index (unused: each transport addresses its own actor).
            **kwargs: ``remote_collector``, TorchRL's legacy name for ``remote_actor``.

        Returns:
            The transport.
        """
        model_id = self._model_id or "policy"
        return _RayPacketTransport(
            remote_actor if remote_actor is not None else kwargs.get("remote_collector"),
            f"_receiver_schemes[{model_id!r}].receive_packet",
        )

    def _setup_connection_and_weights_on_sender_impl(
        self,
        *,
        worker_idx: int | None = None,
        weights: Any | None = None,
    ) -> None:
        # Initial sync: every remote collector receives the packet the driver's policy runs.
        packet = self._initial_packet(weights)
        transports = list(self._iterate_transports())
        for transport in transports:
            transport.send_weights_async(packet)
        for transport in transports:
            transport.wait_ack()

    def _setup_connection_and_weights_on_receiver_impl(
        self, *, worker_idx: int | None = None
    ) -> None:
        # Packets arrive as Ray calls: there is no process group to join.
        return None

    def receive_packet(self, packet: TensorDictBase) -> int:
        """Receiver side: rebuilds this worker's compressed policy from ``packet``.

        Called by the sender through the remote collector's ``cascade_execute``.

        Args:
            packet: a weight packet made by :meth:`PolicyCompressor.pack`.

        Returns:
            The packet's version, now stamped on every step the worker takes.
        """
        if not PolicyCompressor.is_packet(packet):
            raise TypeError(
                "CompressedRayWeightSyncScheme expects a weight packet from "
                f"PolicyCompressor.pack, got {type(packet).__name__}"
            )
        self._strategy.apply_weights(self.model, packet)
        collector = self.context
        if forwards_weight_packets(collector):
            # A multi-process collector on the Ray worker: forward the packet to its own
            # processes through its scheme (a CompressedWeightSyncScheme passes packets as-is).
            collector.update_policy_weights_(packet, model_id=self.model_id)
        return int(packet["version"])
