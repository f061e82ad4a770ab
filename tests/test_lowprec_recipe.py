"""The low-precision SAC recipe at a tiny budget: report, divergence, checkpoint and resume."""

from _recipes import assert_same_checkpoints, run_recipe

TINY = (
    "collector.total_frames=60", "collector.init_random_frames=30", "logger.eval_every=100000",
    "optim.batch_size=16", "network.hidden=16",
)  # fmt: skip


def test_recipe_runs_and_reports_naive_divergence(tmp_path, capsys):
    # no evaluation episode (1000 DMC steps): only the training loop and the report
    report = run_recipe(
        "lowprec_sac_dmc", *TINY, "loss.precisions=[bf16,naive-fp16]",
        f"logger.output_dir={tmp_path}",
    )  # fmt: skip
    text = report.read_text()
    assert (report.parent / "report.png").stat().st_size > 0
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "bf16" in rows and "naive-fp16" in rows
    assert rows["naive-fp16"].split("|")[4].strip() != "no"  # diverged at some step
    assert rows["bf16"].split("|")[4].strip() == "no"
    assert list(report.parent.rglob("bf16/loss_qvalue.csv"))  # TorchRL CSV logger output
    assert "Report:" in capsys.readouterr().out


def test_recipe_resumed_midway_equals_an_uninterrupted_run(tmp_path):
    # bf16-lean: hAdam with int8 Kahan compensations, KahanSoftUpdate, stochastic rounding
    common = (*TINY, "loss.precisions=[bf16-lean]", "checkpoint.interval=30", "logger.backend=csv")
    full = run_recipe("lowprec_sac_dmc", *common, f"logger.output_dir={tmp_path / 'full'}")
    stopped = run_recipe(
        "lowprec_sac_dmc", *common, "collector.total_frames=30",
        f"logger.output_dir={tmp_path / 'cut'}",
    )  # fmt: skip
    resumed = run_recipe("lowprec_sac_dmc", *common, f"resume={stopped.parent}")
    assert resumed.parent == stopped.parent
    assert_same_checkpoints(full.parent / "checkpoint", resumed.parent / "checkpoint")
    assert "| bf16-lean |" in resumed.read_text()
