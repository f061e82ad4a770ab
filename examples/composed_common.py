"""What the composed recipes share: the actors' collector, the run record and the report.

The algorithm of each recipe (networks, loss, optimization step, which parts are on) stays in
the recipe; this module holds the plumbing both run the same way:

* :func:`make_actors`: the actors' policy (compressed or not) on a collector whose workers act
  while the learner learns (a TorchRL ``MultiAsyncCollector``), compressed weights shipped by
  :class:`~torchrl_seer.collectors.CompressedWeightSyncScheme`;
* :class:`RunRecord`: a TorchRL trainer hook recording the return curve, the replay bytes held,
  and the learner's update times before and after the SEER freeze (checkpointed with the
  trainer);
* :func:`register_hooks`: the trainer hooks both recipes register, in their order;
* :func:`finish_run`: the report (``report.md``, ``report.png``, ``report.json``).
"""

from __future__ import annotations

import functools
import json
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDictBase
from torchrl.collectors import MultiAsyncCollector
from torchrl.data import ReplayBuffer
from torchrl.trainers import (
    ReplayBufferTrainer,
    SelectKeys,
    Trainer,
    TrainerHookBase,
    UpdateWeights,
)

from torchrl_seer.collectors import (
    CompressedPolicy,
    CompressedWeightSyncScheme,
    PolicyCompressor,
    select_compression,
)
from torchrl_seer.data import LatentReplayOptions, QuantizedStorage, storage_nbytes

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = [
    "LATENT_KEYS",
    "ComposedRun",
    "RunRecord",
    "finish_run",
    "int8_latent_replay",
    "make_actors",
    "make_trainer",
    "register_hooks",
    "replay_nbytes",
]

LATENT_KEYS = ["latent", ("next", "latent")]


@dataclass
class ComposedRun:
    """What a composed recipe's run leaves behind.

    Attributes:
        report: the path of ``report.md``.
        replay_buffer: the replay buffer (latent after a SEER freeze).
        freeze_hook: the ``FreezeEncoderHook`` (``None`` with SEER off).
        record: the run's :class:`RunRecord`.
    """

    report: Path
    replay_buffer: ReplayBuffer
    freeze_hook: Any
    record: RunRecord


def replay_nbytes(replay_buffer: ReplayBuffer) -> int:
    """Bytes the replay buffer's storage holds (measured on its buffers)."""
    return storage_nbytes(replay_buffer.storage)


def choose_compressor(
    compression: str, policy: torch.nn.Module, example: TensorDictBase, *, kl_bound: float
) -> tuple[PolicyCompressor, str]:
    """The actors' compression: measured on ``policy`` (``"auto"``) or a named pipeline."""
    if compression != "auto":
        compressor = PolicyCompressor.from_spec(compression)
        return compressor, f"named pipeline {compressor.spec()}"
    result = select_compression(policy, example, kl_bound=kl_bound, log=None)
    return result.compressor, result.reason


@torch.no_grad()
def actor_step_ms(policy: torch.nn.Module, example: TensorDictBase, *, repeats: int = 50) -> float:
    """Median milliseconds of one call of ``policy`` on ``example`` (the actors' batch shape)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        policy(example.clone())
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def make_actors(
    cfg: DictConfig,
    make_env: Callable[[], Any],
    policy: torch.nn.Module,
    example: TensorDictBase,
    *,
    compressed: bool,
    compression_view: torch.nn.Module | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The actors: ``cfg.collector.workers`` processes acting while the learner learns.

    Args:
        cfg: the recipe's config (``collector.*`` and ``actors.*`` are read).
        make_env: builds one worker's environment.
        policy: the learner's acting policy.
        example: an observation at the actors' batch shape (auto compression is timed on it).

    Keyword Args:
        compressed: act with a :class:`~torchrl_seer.collectors.CompressedPolicy` whose weights
            travel as compressed packets, or with ``policy`` itself.
        compression_view: the probabilistic policy ``select_compression`` compares (defaults
            to ``policy``).

    Returns:
        A TorchRL ``MultiAsyncCollector`` and a record of the actors (compression, why, and the
        median policy step time at batch 1).
    """
    actors: dict[str, Any] = {"batch": 1, "compression": "fp32 (uncompressed)"}
    weight_sync = None
    actor_policy = policy
    if compressed:
        view = compression_view if compression_view is not None else policy
        compressor, actors["reason"] = choose_compressor(
            cfg.actors.compression, view, example, kl_bound=cfg.actors.kl_bound
        )
        actors["compression"] = compressor.spec()
        actor_policy = CompressedPolicy(policy, compressor)
        weight_sync = CompressedWeightSyncScheme(compressor)
    actors["step_ms"] = actor_step_ms(actor_policy, example)
    collector = MultiAsyncCollector(
        [make_env] * cfg.collector.workers,
        policy=actor_policy,
        frames_per_batch=cfg.collector.frames_per_batch,
        total_frames=cfg.collector.total_steps,
        init_random_frames=cfg.collector.learn_start,
        weight_sync_schemes={"policy": weight_sync} if weight_sync is not None else None,
    )
    return collector, actors


class RunRecord(TrainerHookBase):
    """Records what the composition report plots, inside a TorchRL ``Trainer``.

    * ``batch_process`` (register it before any hook that drops keys): the return of every
      episode that ended in the batch, against collected frames;
    * ``post_steps``: the replay bytes held, the buffer length and whether the encoder is frozen;
    * :meth:`time_update`: a context the optimization step runs in (learner seconds per update,
      tagged before/after the freeze).

    Args:
        replay_buffer: the replay buffer to measure.

    Keyword Args:
        freeze_hook: the ``FreezeEncoderHook`` (``None`` without SEER).
        frames_per_step: environment frames per agent step (frame skip / action repeat).
    """

    def __init__(
        self,
        replay_buffer: ReplayBuffer,
        *,
        freeze_hook: Any | None,
        frames_per_step: int = 1,
    ) -> None:
        self.replay_buffer = replay_buffer
        self.freeze_hook = freeze_hook
        self.frames_per_step = frames_per_step
        self.steps = 0
        self.returns: list[tuple[int, float]] = []
        self.replay: list[tuple[int, int, int, bool]] = []
        self.update_seconds: list[tuple[bool, float]] = []
        self.start = time.perf_counter()
        self.wall_seconds = 0.0

    def frozen(self) -> bool:
        """Whether the encoder is frozen now."""
        return self.freeze_hook is not None and self.freeze_hook.frozen

    def record_batch(self, batch: TensorDictBase) -> TensorDictBase:
        """Counts the batch's agent steps and records the returns of finished episodes."""
        self.steps += batch.numel()
        done = batch["next", "done"].squeeze(-1)
        frames = self.steps * self.frames_per_step
        for ret in batch["next", "episode_reward"][done].flatten().tolist():
            self.returns.append((frames, ret))
        return batch

    def record_replay(self) -> None:
        """Records the replay bytes held, the buffer length and the freeze state."""
        self.replay.append(
            (
                self.steps * self.frames_per_step,
                replay_nbytes(self.replay_buffer),
                len(self.replay_buffer),
                self.frozen(),
            )
        )
        self.wall_seconds = time.perf_counter() - self.start

    @contextmanager
    def time_update(self) -> Iterator[None]:
        """Times one learner update (sample excluded), tagged with the freeze state."""
        frozen = self.frozen()
        start = time.perf_counter()
        yield
        self.update_seconds.append((frozen, time.perf_counter() - start))

    def update_ms(self, *, frozen: bool) -> float:
        """Median learner update time in ms, before (``frozen=False``) or after the freeze."""
        values = [s for f, s in self.update_seconds if f == frozen]
        return 1e3 * statistics.median(values) if values else float("nan")

    def state_dict(self) -> dict[str, Any]:
        """The records so far (a resumed run keeps its curves)."""
        return {
            "steps": self.steps,
            "returns": list(self.returns),
            "replay": list(self.replay),
            "update_seconds": list(self.update_seconds),
            "wall_seconds": self.wall_seconds,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the records of :meth:`state_dict`."""
        self.steps = state_dict["steps"]
        self.returns = [tuple(r) for r in state_dict["returns"]]
        self.replay = [tuple(r) for r in state_dict["replay"]]
        self.update_seconds = [tuple(u) for u in state_dict["update_seconds"]]
        self.start = time.perf_counter() - state_dict["wall_seconds"]

    def register(self, trainer: Trainer, name: str = "run_record") -> None:
        """Registers the batch and post-steps records and checkpoints the hook."""
        trainer.register_op("batch_process", self.record_batch)
        trainer.register_op("post_steps", self.record_replay)
        trainer.register_module(name, self)


def _plot(run_dir: Path, record: RunRecord, *, title: str, freeze_frame: int | None) -> Path:
    fig, (ax_ret, ax_mem, ax_time) = plt.subplots(1, 3, figsize=(15, 4))
    if record.returns:
        ax_ret.plot(*zip(*record.returns, strict=True), ".-", alpha=0.7)
    ax_ret.set(xlabel="environment frames", ylabel="episode return", title=title)
    if record.replay:
        frames, nbytes, _, _ = zip(*record.replay, strict=True)
        ax_mem.plot(frames, [b / 2**20 for b in nbytes])
    ax_mem.set(xlabel="environment frames", ylabel="MiB", title="replay bytes held")
    for ax in (ax_ret, ax_mem):
        if freeze_frame is not None:
            ax.axvline(freeze_frame, color="grey", linestyle=":", label="freeze")
            ax.legend()
    labels, values = [], []
    for frozen, label in ((False, "before freeze"), (True, "after freeze")):
        ms = record.update_ms(frozen=frozen)
        if ms == ms:  # not NaN
            labels.append(label)
            values.append(ms)
    ax_time.bar(labels, values, color=["tab:blue", "tab:orange"][: len(values)])
    ax_time.set(ylabel="median ms / update", title="learner update time")
    fig.tight_layout()
    path = run_dir / "report.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_report(
    run_dir: Path,
    record: RunRecord,
    *,
    title: str,
    parts: dict[str, bool],
    freeze: dict[str, Any],
    actors: dict[str, Any],
    config: dict[str, Any],
) -> Path:
    """Writes ``report.md``, ``report.png`` and ``report.json`` into ``run_dir``.

    Args:
        run_dir: the run folder.
        record: the run's :class:`RunRecord`.

    Keyword Args:
        title: the report's heading.
        parts: which parts were on.
        freeze: the SEER freeze report (empty without a freeze).
        actors: the actors' compression, why it was chosen, and their step time.
        config: the run's settings (saved to ``report.json``).

    Returns:
        The path of ``report.md``.
    """
    freeze_frame = freeze.get("freeze_frame")
    _plot(run_dir, record, title=title, freeze_frame=freeze_frame)
    returns = [r for _, r in record.returns]
    last = returns[-10:]
    summary = {
        "episodes": len(returns),
        "mean_return_last_10": sum(last) / len(last) if last else float("nan"),
        "replay_bytes_final": record.replay[-1][1] if record.replay else 0,
        "replay_bytes_peak": max((r[1] for r in record.replay), default=0),
        "replay_length_final": record.replay[-1][2] if record.replay else 0,
        "update_ms_before_freeze": record.update_ms(frozen=False),
        "update_ms_after_freeze": record.update_ms(frozen=True),
        "updates": len(record.update_seconds),
        "wall_seconds": record.wall_seconds,
        "agent_steps": record.steps,
    }
    lines = [f"# {title}", "", "![report](report.png)", "", "## Parts", ""]
    lines += [f"- {name}: {'on' if on else 'off'}" for name, on in parts.items()]
    lines += [
        "",
        "## Figures",
        "",
        "| measure | value |",
        "|---|---|",
        f"| agent steps | {summary['agent_steps']} |",
        f"| wall time (s) | {summary['wall_seconds']:.1f} |",
        f"| episodes finished | {summary['episodes']} |",
        f"| mean return, last 10 episodes | {summary['mean_return_last_10']:.1f} |",
        f"| replay bytes held at the end | {summary['replay_bytes_final'] / 2**20:.2f} MiB "
        f"({summary['replay_length_final']} transitions) |",
        f"| replay bytes held, peak | {summary['replay_bytes_peak'] / 2**20:.2f} MiB |",
        f"| learner update, median, before the freeze | "
        f"{summary['update_ms_before_freeze']:.1f} ms |",
        f"| learner update, median, after the freeze | "
        f"{summary['update_ms_after_freeze']:.1f} ms |",
        f"| actor policy step (batch {actors.get('batch', 1)}) | "
        f"{actors.get('step_ms', float('nan')):.2f} ms |",
        f"| actor compression | {actors.get('compression', 'fp32')} |",
    ]
    if actors.get("reason"):
        lines += ["", f"Actor compression: {actors['reason']}."]
    if freeze:
        lines += ["", "## SEER freeze", ""]
        if "latent_capacity" in freeze:
            ratio = freeze["latent_capacity"] / freeze["pixel_capacity"]
            verb = "grew" if ratio > 1 else "shrank" if ratio < 1 else "kept"
            lines += [
                f"At frame {freeze_frame} the encoder froze and the buffer moved to latents: "
                f"its capacity {verb} from {freeze['pixel_capacity']} to "
                f"{freeze['latent_capacity']} transitions (x{ratio:.2f}) within the "
                f"{freeze['budget_bytes'] / 2**20:.2f} MiB the pixel storage held "
                f"({freeze['pixel_bytes_per_transition']:.0f} B per pixel slot, "
                f"{freeze['latent_bytes_per_transition']} B per latent transition; "
                f"{freeze['num_migrated']} migrated, {freeze['num_dropped']} dropped).",
            ]
        else:
            lines += [f"At frame {freeze_frame} the encoder froze (no latent migration)."]
    report = run_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    (run_dir / "report.json").write_text(
        json.dumps(
            {
                "title": title,
                "parts": parts,
                "summary": summary,
                "freeze": freeze,
                "actors": actors,
                "returns": record.returns,
                "replay": record.replay,
                "update_seconds": record.update_seconds,
                "config": config,
            },
            default=str,
            indent=1,
        )
    )
    return report


def int8_latent_replay(cfg: DictConfig) -> LatentReplayOptions:
    """The SEER migration's options: int8 latents in a ``QuantizedStorage``, sized by bytes.

    The capacity comes from the bytes the pixel storage holds at the freeze (capped by
    ``cfg.seer.max_capacity``).
    """
    return LatentReplayOptions(
        max_capacity=cfg.seer.max_capacity,
        storage_factory=functools.partial(
            QuantizedStorage, keys=LATENT_KEYS, dtype=cfg.seer.latent_dtype
        ),
        progress=False,
    )


def make_trainer(
    cfg: DictConfig, collector: Any, loss: torch.nn.Module, stepper: Any, logger: Any
) -> Trainer:
    """TorchRL's ``Trainer`` counting agent steps, with the recipe's optimization stepper."""
    return Trainer(
        collector=collector,
        total_frames=cfg.collector.total_steps,
        frame_skip=1,  # the Trainer counts agent steps
        optim_steps_per_batch=cfg.learner.updates_per_batch,
        loss_module=loss,
        optimization_stepper=stepper,
        logger=logger,
        progress_bar=True,
        log_interval=1_000,
        save_trainer_interval=10**12,
    )


def register_hooks(
    trainer: Trainer,
    *,
    record: RunRecord,
    stored_keys: list,
    replay_buffer: ReplayBuffer,
    freeze_hook: Any | None,
    collector: Any,
    policy: torch.nn.Module,
    ship_every: int,
    batch_ops: tuple[Callable[[TensorDictBase], TensorDictBase], ...] = (),
) -> None:
    """Registers the hooks both recipes use, in the order they must run.

    The run record first (it reads episode returns before keys are dropped), then
    ``batch_ops``, TorchRL's ``SelectKeys``, the freeze hook (restored before the replay buffer
    it re-shapes), TorchRL's ``ReplayBufferTrainer`` and ``UpdateWeights`` (shipping the
    learner's ``policy`` to the actors every ``ship_every`` batches).
    """
    record.register(trainer)
    for op in batch_ops:
        trainer.register_op("batch_process", op)
    SelectKeys(stored_keys).register(trainer)
    if freeze_hook is not None:
        freeze_hook.register(trainer)
    ReplayBufferTrainer(replay_buffer, flatten_tensordicts=False).register(trainer)
    UpdateWeights(collector, ship_every, policy_weights_getter=lambda: policy).register(trainer)


def finish_run(
    run_dir: Path,
    record: RunRecord,
    *,
    title: str,
    cfg: DictConfig,
    replay_buffer: ReplayBuffer,
    freeze_hook: Any | None,
    frames_per_step: int,
    actors: dict[str, Any],
) -> ComposedRun:
    """Writes the run's report and returns what the run leaves behind."""
    freeze: dict[str, Any] = {}
    if freeze_hook is not None and freeze_hook.frozen:
        freeze = dict(freeze_hook.freeze_report)
        freeze["freeze_frame"] = freeze["freeze_step"] * frames_per_step
    report = write_report(
        run_dir,
        record,
        title=title,
        parts=OmegaConf.to_container(cfg.parts),
        freeze=freeze,
        actors=actors,
        config=OmegaConf.to_container(cfg),
    )
    print(f"report written to {report}")
    return ComposedRun(report, replay_buffer, freeze_hook, record)
