"""What the AcceRL recipes share: actors, weight shipping, run bookkeeping, checkpoints, report.

The algorithm of each recipe (its loss, Corrector and Monitor) stays in the recipe; this module
holds the plumbing both run the same way: the collector that acts with the compressed policy
(one seed per worker), shipping the learner's weights to it, the acting/learning clock with the
return curve, the arms (compressed, then full-precision actors) with their checkpoints, and the
report (return vs wall time, compressed vs full actors).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from torchrl.collectors import Collector, MultiAsyncCollector, MultiSyncCollector
from tqdm import tqdm

from torchrl_seer.collectors import (
    CompressedWeightSyncScheme,
    PolicyCompressor,
    select_compression,
)
from torchrl_seer.trainers.helpers.checkpoint import FrameSegment
from torchrl_seer.trainers.helpers.config import check_config
from torchrl_seer.trainers.helpers.report import ReportPlot, ReportTable, write_report
from torchrl_seer.trainers.helpers.run import RecipeRun

__all__ = [
    "AcceRLArm",
    "RunLog",
    "check_accerl_config",
    "choose_compressor",
    "make_actor_collector",
    "run_accerl",
    "ship_weights",
    "time_to_threshold",
    "write_accerl_report",
]


def check_accerl_config(cfg: Any) -> None:
    """What every AcceRL recipe refuses: a device other than the CPU, and bad shared settings.

    The compressed actors run CPU kernels (int8 dynamic quantization). The settings both AcceRL
    recipes share (frames, learning rate, network width, weight shipping, divergence bound,
    report interval, workers) are checked here; each recipe checks its own on top.

    Args:
        cfg (DictConfig): the recipe's configuration.

    Raises:
        ValueError: naming the setting.
    """
    if str(cfg.device) not in ("cpu", "auto"):
        raise ValueError(f"device={cfg.device!r}: the AcceRL recipes run on the CPU only.")
    check_config(
        cfg,
        positive=[
            "collector.total_frames", "collector.frames_per_batch", "optim.lr", "network.width",
            "accerl.ship_every", "accerl.kl_bound", "logger.report_every",
        ],
        non_negative=["collector.workers"],
    )  # fmt: skip
    if cfg.collector.overlap:
        if cfg.collector.workers < 1:
            raise ValueError(
                "collector.overlap=true acts in worker processes while the learner learns: "
                f"it needs collector.workers >= 1, got {cfg.collector.workers}."
            )
        if cfg.checkpoint.interval > 0:
            raise ValueError(
                "collector.overlap=true cannot checkpoint: overlapped workers hand their "
                "batches over in the order they finish, so a resumed run could not replay the "
                "same batches; set checkpoint.interval=0 (or collector.overlap=false)."
            )


def choose_compressor(compression: str, policy, example, *, kl_bound: float):
    """The actors' starting compression: ``none``, ``auto`` (measured) or a pipeline string.

    Args:
        compression: ``"none"``, ``"auto"`` or a pipeline such as ``"prune0.5+int8"``.
        policy: the learner's full-precision policy.
        example: an input at the actors' batch shape (``auto`` times the candidates on it).

    Keyword Args:
        kl_bound: the Monitor's divergence bound (``auto`` rejects candidates above it).

    Returns:
        The :class:`~torchrl_seer.collectors.PolicyCompressor` and why it was chosen.
    """
    if compression == "none":
        return PolicyCompressor(), "none (fp32 actors)"
    if compression == "auto":
        result = select_compression(policy, example, kl_bound=kl_bound)
        return result.compressor, result.reason
    compressor = PolicyCompressor.from_spec(compression)
    return compressor, f"explicit pipeline {compressor.spec()}"


def make_actor_collector(
    make_env, policy, scheme, *, workers, frames_per_batch, total_frames, seed, overlap=False
):
    """Actors: ``workers`` collector processes acting with the compressed ``policy``.

    Without ``overlap`` the workers and the learner take turns (TorchRL's
    ``MultiSyncCollector``: each batch gathers ``frames_per_batch`` frames from all workers,
    and the workers wait while the learner learns). With ``overlap`` the workers keep acting
    while the learner learns (``MultiAsyncCollector``, as TorchRL's asynchronous SAC example
    collects): each batch is ``frames_per_batch`` frames of the one worker that finished first,
    collected with whatever weights that worker held, so its transitions may lag the learner
    by a few versions; the recorded behaviour log-probs and versions let the Corrector and the
    Monitor account for that lag.

    Every worker's environment is built with its own seed, ``seed + 1000 * worker index`` (room
    for the sub-environments of a batched environment), before the collector's first reset.
    The workers start with ``policy``'s packet. A TorchRL weight-sync scheme connects to one
    collector only, so the collector gets its own scheme on ``scheme``'s pipeline; the run's
    ``scheme`` keeps the version and packs what :func:`ship_weights` sends.

    Args:
        make_env: ``make_env(seed)`` builds one worker's environment.
        policy: the :class:`~torchrl_seer.collectors.CompressedPolicy` the actors run.
        scheme: the run's :class:`~torchrl_seer.collectors.CompressedWeightSyncScheme` (its
            pipeline and version).

    Keyword Args:
        workers: worker processes; ``0`` acts in the learner's process.
        frames_per_batch: frames per batch handed to the learner.
        total_frames: frames of the whole run.
        seed: the first worker's seed.
        overlap: act while the learner learns (needs ``workers >= 1``).

    Returns:
        A TorchRL ``MultiSyncCollector``, ``MultiAsyncCollector`` with ``overlap``, or
        ``Collector`` with no workers.
    """
    if overlap and workers < 1:
        raise ValueError("overlapped acting needs worker processes (workers >= 1)")
    if workers > 0:
        kind = MultiAsyncCollector if overlap else MultiSyncCollector
        return kind(
            [functools.partial(make_env, seed + 1000 * worker) for worker in range(workers)],
            policy=policy,
            frames_per_batch=frames_per_batch,
            total_frames=total_frames,
            weight_sync_schemes={"policy": CompressedWeightSyncScheme(scheme.compressor)},
        )
    return Collector(
        make_env(seed), policy, frames_per_batch=frames_per_batch, total_frames=total_frames
    )


def ship_weights(collector, learner_policy, policy, scheme, *, workers) -> None:
    """Compresses the learner's policy with ``scheme.compressor`` and ships it to the actors.

    Without workers the packet is loaded into ``policy``, which acts in the learner's process.
    With workers it is only sent: rebuilding the compressed network in the learner's process
    at every shipment would cost the learner as much as a worker's rebuild, for a network that
    does not act there. :meth:`AcceRLArm.collectors` loads ``scheme.last_packet`` into
    ``policy`` at the end of each checkpoint interval, so that the next interval's workers
    start with the latest weights.

    Args:
        collector: the actors' collector.
        learner_policy: the learner's full-precision policy.
        policy: the :class:`~torchrl_seer.collectors.CompressedPolicy` the collector was
            built with.
        scheme: the weight-sync scheme (its compressor and version).

    Keyword Args:
        workers: worker processes of ``collector`` (``0``: only ``policy`` acts).
    """
    packet = scheme.pack_next(learner_policy)
    if workers > 0:
        collector.update_policy_weights_(packet)  # a ready packet: shipped as is (pipes)
    else:
        policy.load_packet(packet)


class RunLog:
    """Bookkeeping of one run: acting vs learning time, frames, the return curve, progress.

    Call :meth:`collected` when a batch arrives, :meth:`learned` with the learner's seconds,
    and :meth:`end_of_batch` last in the loop (it restarts the acting clock).

    Args:
        label: the run's name (progress bar, logger keys, report).

    Keyword Args:
        total_frames: frames of the run (progress bar).
        log_scalar: ``(name, value, step)`` logging function (e.g.
            :meth:`~torchrl_seer.trainers.helpers.RecipeRun.log_scalar`); returns are logged as
            ``<label>/episode_return`` at environment frames.
    """

    def __init__(
        self, label: str, *, total_frames: int, log_scalar: Callable[[str, float, int], None]
    ) -> None:
        self.label = label
        self.log_scalar = log_scalar
        self.curve: list[tuple[float, int, float]] = []
        self.frames = self.batches = self.updates = 0
        self.actor_time = self.learner_time = 0.0
        self.progress = tqdm(total=total_frames, desc=label)
        self.start = self._last = time.perf_counter()

    def collected(self, batch) -> float:
        """Counts a batch the actors handed over; returns the seconds spent acting for it."""
        seconds = time.perf_counter() - self._last
        self.actor_time += seconds
        self.frames += batch.numel()
        self.batches += 1
        self.progress.update(batch.numel())
        return seconds

    def learned(self, seconds: float, *, updates: int = 0) -> None:
        """Adds learner seconds (updates, weight compression and shipping) and ``updates``."""
        self.learner_time += seconds
        self.updates += updates

    def state_dict(self) -> dict[str, Any]:
        """Frames, batches, updates, the clocks (wall time so far) and the return curve."""
        return {
            "frames": self.frames,
            "batches": self.batches,
            "updates": self.updates,
            "actor_seconds": self.actor_time,
            "learner_seconds": self.learner_time,
            "wall_seconds": time.perf_counter() - self.start,
            "curve_seconds": [seconds for seconds, _, _ in self.curve],
            "curve": [(frames, ret) for _, frames, ret in self.curve],
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Continues a saved run: its counters, curve, and wall clock from the saved time."""
        self.frames = int(state_dict["frames"])
        self.batches = int(state_dict["batches"])
        self.updates = int(state_dict["updates"])
        self.actor_time = float(state_dict["actor_seconds"])
        self.learner_time = float(state_dict["learner_seconds"])
        self.curve = [
            (float(seconds), int(frames), float(ret))
            for seconds, (frames, ret) in zip(
                state_dict["curve_seconds"], state_dict["curve"], strict=True
            )
        ]
        self._last = time.perf_counter()
        self.start = self._last - float(state_dict["wall_seconds"])
        self.progress.update(self.frames)

    def end_of_batch(self, batch, *, pipeline: str) -> None:
        """Records the returns of the episodes that ended in ``batch``; restarts the acting clock.

        Args:
            batch: the batch, with ``("next", "done")`` and ``("next", "episode_reward")``.

        Keyword Args:
            pipeline: the actors' current compression (shown on the progress bar).
        """
        done = batch["next", "done"].squeeze(-1)
        if done.any():
            ret = batch["next", "episode_reward"].squeeze(-1)[done].mean().item()
            self.curve.append((time.perf_counter() - self.start, self.frames, ret))
            self.log_scalar(f"{self.label}/episode_return", ret, self.frames)
            self.progress.set_postfix(ret=f"{ret:.1f}", pipeline=pipeline)
        self._last = time.perf_counter()

    def summary(self, *, compression: str, monitor) -> dict[str, Any]:
        """Closes the progress bar and returns the run's record for the report.

        Keyword Args:
            compression: why the starting compression was chosen.
            monitor: the run's :class:`~torchrl_seer.collectors.CompressionMonitor`.
        """
        self.progress.close()
        return self.record(compression=compression, monitor=monitor)

    def record(self, *, compression: str, monitor) -> dict[str, Any]:
        """The run's record so far (see :meth:`summary`); the run goes on."""
        return {
            "label": self.label,
            "curve": self.curve,
            "wall": time.perf_counter() - self.start,
            "actor_share": self.actor_time / max(self.actor_time + self.learner_time, 1e-9),
            "actor_time": self.actor_time,
            "learner_time": self.learner_time,
            "frames": self.frames,
            "compression": compression,
            "final_pipeline": monitor.compressor.spec(),
            "monitor_events": monitor.events,
            "monitor_history": monitor.history,
        }


def time_to_threshold(curve, threshold: float, *, window: int = 5) -> float | None:
    """Wall time at which the mean of the last ``window`` logged returns reaches ``threshold``.

    Args:
        curve: ``(wall_s, frames, return)`` tuples, one per batch that finished episodes.
        threshold: the return to reach.

    Keyword Args:
        window: number of logged returns averaged (smooths single lucky episodes).

    Returns:
        Seconds since the start of the run, or ``None`` if the threshold was never reached.
    """
    returns = [r for _, _, r in curve]
    for i in range(window - 1, len(returns)):
        if sum(returns[i - window + 1 : i + 1]) / window >= threshold:
            return curve[i][0]
    return None


def write_accerl_report(
    results: list[dict[str, Any]],
    run_dir: Path,
    *,
    title: str,
    threshold: float | None = None,
    config: Mapping[str, Any] | None = None,
    seeds: Mapping[str, Any] | None = None,
) -> Path:
    """Writes ``report.md``, ``report.png`` (return vs wall time) and ``report.json``.

    Args:
        results: one dict per run with ``label``, ``curve`` (``(wall_s, frames, return)``
            tuples), ``wall``, ``actor_share``, ``compression``, ``final_pipeline`` and
            ``monitor_events``; every entry is also saved to ``report.json`` under ``runs``.
        run_dir: the run folder.

    Keyword Args:
        title: the report's heading.
        threshold: return threshold; when given, each run's time to reach it
            (:func:`time_to_threshold`) is reported and the compressed / full ratio computed.
        config: the run's settings, saved with the report.
        seeds: what was seeded with what.

    Returns:
        The path of ``report.md``.
    """
    if threshold is not None:
        for res in results:
            res["time_to_threshold"] = time_to_threshold(res["curve"], threshold)
    rows = []
    for res in results:
        final = res["curve"][-1][2] if res["curve"] else float("nan")
        reached = res.get("time_to_threshold")
        rows.append([
            res["label"], f"{res['wall']:.1f}",
            "not reached" if reached is None else f"{reached:.1f}",
            f"{res['actor_share']:.2f}", f"{final:.1f}",
            f"{res['compression']} (final: {res['final_pipeline']})",
        ])  # fmt: skip
    header = ["actors", "wall (s)", "time to threshold (s)", "actor time share", "final return",
              "compression"]  # fmt: skip
    notes = []
    times = [res.get("time_to_threshold") for res in results]
    if threshold is not None and len(times) == 2 and times[0] is not None and times[1] is not None:
        notes.append(f"Time to return {threshold:g}, compressed ÷ full: {times[0] / times[1]:.3f}")
    notes += [
        f"Monitor events ({res['label']}): {res['monitor_events']}"
        for res in results
        if res["monitor_events"]
    ]
    curves = {res["label"]: [(t, r) for t, _, r in res["curve"]] for res in results}
    return write_report(
        run_dir,
        title=title,
        tables=[ReportTable(header, rows)],
        plots=[
            ReportPlot(
                "Return vs wall time",
                "wall time (s)",
                "episode return",
                curves,
                hlines={} if threshold is None else {f"threshold {threshold:g}": threshold},
            )
        ],
        notes=notes,
        config=config,
        seeds=seeds,
        data={"threshold": threshold, "runs": results},
    )


class AcceRLArm:
    """One arm of an AcceRL run (one actor setting): its starting compression, checkpoints, reports.

    The recipe's ``train_arm(arm, compression)`` builds its networks, then asks the arm for the
    starting compressor (:meth:`starting_compressor`), restores a resumed arm
    (:meth:`restore`), trains on the batches of the :meth:`collectors` (one fresh collector
    per checkpoint interval, the arm saved after each) and calls :meth:`report_due` after
    every batch.

    A checkpoint holds the ``state`` objects (networks and loss, optimizer, Monitor, run log),
    the replay buffers, the actors' weight packet and the weight-sync version, the starting
    compression (``auto`` is measured once, never again on resume), the records of the arms
    already finished and, through :class:`~torchrl_seer.trainers.helpers.RunCheckpointer`,
    the generators and the logger's state.

    Args:
        run (RecipeRun): the recipe's run.

    Keyword Args:
        index (int): the arm's position in the run (``0``: compressed actors).
        label (str): the arm's name (progress bar, logger keys, report).
        finished (list of dict): the records of the arms finished before this one.
        resumed (dict, optional): the saved checkpoint's ``extra`` when this arm is resumed.
        write_report (callable): ``write_report(records)`` writes the run's report.
    """

    def __init__(
        self,
        run: RecipeRun,
        *,
        index: int,
        label: str,
        finished: list[dict[str, Any]],
        resumed: Mapping[str, Any] | None,
        write_report: Callable[[list[dict[str, Any]]], Path],
    ) -> None:
        self.run = run
        self.index = index
        self.label = label
        self.finished = finished
        self.resumed = resumed
        self.write_report = write_report
        self.report_every = int(run.cfg.logger.report_every)
        self._next_report = self.report_every
        self._start: tuple[str, str] | None = None
        self._parts: dict[str, Any] = {}

    def starting_compressor(
        self, compression: str, policy, example, *, kl_bound: float
    ) -> tuple[PolicyCompressor, str]:
        """:func:`choose_compressor`, or the pipeline the resumed arm started with."""
        if self.resumed is not None:
            spec, why = self.resumed["start_pipeline"], self.resumed["compression"]
            return PolicyCompressor.from_spec(spec), why
        compressor, why = choose_compressor(compression, policy, example, kl_bound=kl_bound)
        self._start = (compressor.spec(), why)
        return compressor, why

    def restore(
        self,
        *,
        state: Mapping[str, Any],
        replay_buffers: Mapping[str, Any] | None = None,
        policy,
        scheme,
        monitor,
    ) -> int:
        """Registers what :meth:`save` saves; restores it when the arm is resumed.

        Keyword Args:
            state (mapping): name -> object with ``state_dict()``; include the ``RunLog``.
            replay_buffers (mapping, optional): name -> replay buffer.
            policy: the actors' :class:`~torchrl_seer.collectors.CompressedPolicy`.
            scheme: the :class:`~torchrl_seer.collectors.CompressedWeightSyncScheme`.
            monitor: the :class:`~torchrl_seer.collectors.CompressionMonitor` (in ``state``).

        Returns:
            Collector frames already collected (``0`` for a new arm).
        """
        self._parts = {"state": state, "replay_buffers": replay_buffers, "policy": policy,
                       "scheme": scheme}  # fmt: skip
        if self.resumed is None:
            return 0
        assert self.resumed["arm"] == self.index
        frames, extra = self.run.restore(state=state, replay_buffers=replay_buffers)
        self._start = (extra["start_pipeline"], extra["compression"])
        policy.load_packet(extra["packet"])
        scheme.version = int(extra["version"])
        scheme.compressor = monitor.compressor
        if self.report_every > 0:
            self._next_report = (frames // self.report_every + 1) * self.report_every
        return frames

    def collectors(
        self,
        make_env,
        *,
        start: int,
        total_frames: int,
        frames_per_batch: int,
        workers: int,
        overlap: bool = False,
    ) -> Iterator[tuple[FrameSegment, Any]]:
        """Yields a fresh actors' collector per checkpoint interval still to collect.

        Each collector (:func:`make_actor_collector`) collects one interval with its workers
        seeded from the interval's seed; once the caller has consumed it, it is shut down, the
        packet last shipped (:func:`ship_weights`) is loaded into the arm's policy, and the arm
        checkpointed (:meth:`save`). Call :meth:`restore` first.

        Args:
            make_env: ``make_env(seed)`` builds one worker's environment.

        Keyword Args:
            start (int): frames already collected (what :meth:`restore` returned).
            total_frames (int): frames of the arm.
            frames_per_batch (int): frames per batch handed to the learner.
            workers (int): worker processes; ``0`` acts in the learner's process.
            overlap (bool): workers act while the learner learns (see
                :func:`make_actor_collector`).

        Yields:
            ``(segment, collector)``: the interval (``FrameSegment``) and its collector.
        """
        policy, scheme = self._parts["policy"], self._parts["scheme"]
        for segment in self.run.segments(total_frames, start=start):
            collector = make_actor_collector(
                make_env, policy, scheme, workers=workers, frames_per_batch=frames_per_batch,
                total_frames=segment.stop - segment.start, seed=segment.seed, overlap=overlap,
            )  # fmt: skip
            yield segment, collector
            collector.shutdown()
            if scheme.last_packet is not None:
                policy.load_packet(scheme.last_packet)  # what the workers last received
            self.save(segment.stop)

    def report_due(self, run_log: RunLog, *, monitor) -> None:
        """Writes the report (finished arms and this one so far) every ``logger.report_every``."""
        if run_log.frames < self._next_report:
            return
        while self._next_report <= run_log.frames:
            self._next_report += self.report_every
        assert self._start is not None
        record = run_log.record(compression=self._start[1], monitor=monitor)
        self.write_report([*self.finished, record])

    def save(self, frames: int) -> None:
        """Checkpoints the arm at the end of a segment (if ``checkpoint.interval > 0``)."""
        assert self._start is not None, "call restore() before save()"
        policy, scheme = self._parts["policy"], self._parts["scheme"]
        extra = {
            "arm": self.index,
            "finished": self.finished,
            "start_pipeline": self._start[0],
            "compression": self._start[1],
            "packet": policy.packet,
            "version": scheme.version,
        }
        self.run.save(
            frames,
            state=self._parts["state"],
            replay_buffers=self._parts["replay_buffers"],
            extra=extra,
        )


def run_accerl(
    run: RecipeRun, train_arm: Callable[[AcceRLArm, str], dict[str, Any]], *, title: str
) -> Path:
    """Trains the compressed arm (and, with ``accerl.compare``, the full one); writes the report.

    A resumed run skips the arms its checkpoint lists as finished and resumes the arm it was
    training; later arms start fresh.

    Args:
        run (RecipeRun): the recipe's run (``run.cfg`` is the configuration used).
        train_arm (callable): ``train_arm(arm, compression)`` trains one arm and returns its
            record (``RunLog.summary``).

    Keyword Args:
        title (str): the report's heading.

    Returns:
        The path of ``report.md``.

    Examples:
        >>> import json, tempfile
        >>> from omegaconf import OmegaConf
        >>> from torchrl_seer.trainers.helpers import RecipeRun
        >>> cfg = OmegaConf.create({"seed": 0, "resume": None, "checkpoint": {"interval": 0},
        ...     "collector": {"workers": 0},
        ...     "accerl": {"compression": "int8", "compare": True, "threshold": None},
        ...     "logger": {"backend": None, "output_dir": tempfile.mkdtemp(), "exp_name": "",
        ...                "project_name": "p", "group_name": None, "report_every": 100}})
        >>> run = RecipeRun(cfg, "my_accerl")
        >>> def train_arm(arm, compression):  # a recipe builds, restores and trains here
        ...     return {"label": arm.label, "curve": [(1.0, 100, 9.0)], "wall": 1.0,
        ...             "actor_share": 0.5, "actor_time": 0.5, "learner_time": 0.5,
        ...             "frames": 100, "compression": compression,
        ...             "final_pipeline": compression, "monitor_events": []}
        >>> report = run_accerl(run, train_arm, title="AcceRL run")
        >>> [r["label"] for r in json.loads((run.dir / "report.json").read_text())["runs"]]
        ['compressed (int8)', 'full-precision actors']
    """
    cfg = run.cfg
    resumed = None
    if cfg.resume is not None and run.checkpointer.exists():
        resumed = run.checkpointer.read()["extra"]
    compressions = [cfg.accerl.compression]
    if cfg.accerl.compare and cfg.accerl.compression != "none":
        compressions.append("none")
    labels = [f"compressed ({cfg.accerl.compression})", "full-precision actors"]
    workers = max(cfg.collector.workers, 1)
    first_seeds = [cfg.seed + 1000 * w for w in range(workers)]
    seeds: dict[str, Any] = {"python, numpy, torch": cfg.seed, "workers": first_seeds}
    if cfg.checkpoint.interval > 0:
        seeds["workers"] = (
            f"{first_seeds} + 10000 x checkpoint interval index (a fresh collector per interval)"
        )
    config = OmegaConf.to_container(cfg, resolve=True)

    def write(records: list[dict[str, Any]]) -> Path:
        return write_accerl_report(
            records, run.dir, title=title, threshold=cfg.accerl.threshold,
            config=config, seeds=seeds,  # type: ignore[arg-type]
        )  # fmt: skip

    finished: list[dict[str, Any]] = [] if resumed is None else list(resumed["finished"])
    for index in range(len(finished), len(compressions)):
        arm = AcceRLArm(
            run, index=index, label=labels[index], finished=finished,
            resumed=resumed if resumed is not None and resumed["arm"] == index else None,
            write_report=write,
        )  # fmt: skip
        finished = [*finished, train_arm(arm, compressions[index])]
    return write(finished)
