"""SEER transfer: freeze an encoder on one Atari game, then start another game frozen at step 0.

1. train DQN + SEER on the source game (``seer_atari.py``), freezing the data-efficient CNN at
   T_f and saving its frozen layers at the end;
2. train on the target game with that CNN loaded and ``--freeze-at 0``: the hook freezes before
   the first transition is written, so the buffer stores 576-float latents from the start and
   only the Q head ever trains.

Both runs write their usual report; the target run's report shows no "before freeze" updates.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import seer_atari


def main(argv: list[str] | None = None) -> None:
    """Runs the source then the target game."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--source-game", default="Pong")
    p.add_argument("--target-game", default="Breakout")
    p.add_argument("--source-steps", type=int, default=6_000)
    p.add_argument("--source-freeze-at", type=int, default=2_000)
    p.add_argument("--target-steps", type=int, default=4_000)
    p.add_argument("--out-dir", default="runs")
    args = p.parse_args(argv)
    encoder_path = Path(args.out_dir) / f"seer_encoder_{args.source_game}.pt"
    encoder_path.parent.mkdir(parents=True, exist_ok=True)
    common = ["--buffer-size", "5000", "--learn-start", "500", "--target-update", "500"]
    common += ["--eps-decay-steps", "3000", "--out-dir", args.out_dir]
    seer_atari.main(
        [
            "--game", args.source_game,
            "--total-steps", str(args.source_steps),
            "--freeze-at", str(args.source_freeze_at),
            "--save-encoder", str(encoder_path),
            *common,
        ]
    )  # fmt: skip
    seer_atari.main(
        [
            "--game", args.target_game,
            "--total-steps", str(args.target_steps),
            "--freeze-at", "0",
            "--load-encoder", str(encoder_path),
            "--latent-capacity", "60000",  # what the source run's budget held (its report)
            *common,
        ]
    )  # fmt: skip


if __name__ == "__main__":
    main()
