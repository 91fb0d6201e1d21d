"""The sweep summary figure stays readable at 12+ jobs: one colour per job, the legend outside the panels,
learning rates on a log axis, every point and curve labelled by its job number. Fake job directories (the
report reads only metrics.json and overrides.yaml), the real report code and real matplotlib objects."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib
import yaml

matplotlib.use("Agg")

from matplotlib.colors import to_hex  # noqa: E402

from internvl_exp.tools.report import build_figure, collect_jobs, main  # noqa: E402

LRS = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
FREEZES = ["vision", "full"]


def _make_sweep(root: Path) -> dict[int, tuple[float, str, float | None]]:
    """14 jobs (7 lrs x 2 freezes), the last one failed; returns job -> (lr, freeze, objective)."""
    expected = {}
    num = 0
    for freeze in FREEZES:
        for lr in LRS:
            d = root / f"{num}_optimizer.lr={lr},freeze={freeze}"
            d.mkdir(parents=True)
            (d / "overrides.yaml").write_text(yaml.safe_dump([f"optimizer.lr={lr}", f"freeze={freeze}",
                                                              "trainer.max_steps=20"]))
            failed = num == 13
            final = None if failed else 1.0 + abs(math.log10(lr) + 3.5) / 3 + (0.2 if freeze == "full" else 0.0)
            history = [{"step": s, "loss": 6.0 - s * 0.1 * (num + 1) / 14} for s in range(2, 21, 2)]
            metrics = {"status": "failed", "error": "RuntimeError: boom"} if failed else {
                "status": "completed", "final_loss": final, "objective": final, "optimized_metric": "final_loss",
                "loss_history": history}
            (d / "metrics.json").write_text(json.dumps(metrics))
            expected[num] = (lr, freeze, final)
            num += 1
    return expected


def test_summary_figure_at_14_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    expected = _make_sweep(sweep)
    assert main([str(sweep)]) == 0
    assert (sweep / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    fig = build_figure(collect_jobs(sweep))
    fig.canvas.draw()
    loss_ax, lr_ax, freeze_ax = fig.axes
    # One curve per job that logged a loss, each its own colour.
    lines = loss_ax.get_lines()
    assert len(lines) == 13
    assert len({to_hex(line.get_color()) for line in lines}) == 13
    # Each curve ends in its job number, in its colour.
    ends = {t.get_text(): to_hex(t.get_color()) for t in loss_ax.texts}
    assert set(ends) == {str(n) for n, (_, _, obj) in expected.items() if obj is not None}
    for line in lines:
        assert ends[line.get_label().split(":")[0]] == to_hex(line.get_color())

    # The legend is outside every panel: it covers no curve and no point.
    (legend,) = fig.legends
    assert len(legend.get_texts()) == 13
    box = legend.get_window_extent()
    for ax in fig.axes:
        assert not box.overlaps(ax.get_window_extent()), ax.get_title()
    assert box.x0 >= max(ax.get_window_extent().x1 for ax in fig.axes)

    # The learning rate is on a log axis; the objective points sit where the jobs' metrics put them,
    # labelled by job number, coloured like the job's curve.
    assert lr_ax.get_xscale() == "log"
    assert freeze_ax.get_xscale() == "linear"
    (points,) = lr_ax.collections
    got = sorted(tuple(map(float, xy)) for xy in points.get_offsets())
    want = sorted((lr, obj) for lr, _, obj in expected.values() if obj is not None)
    assert all(math.isclose(a, b) for g, w in zip(got, want) for a, b in zip(g, w)) and len(got) == len(want)
    labels = {t.get_text(): t.xy for t in lr_ax.texts}
    for n, (lr, _, obj) in expected.items():
        if obj is None:
            assert str(n) not in labels
        else:
            assert math.isclose(labels[str(n)][0], lr) and math.isclose(labels[str(n)][1], obj)
    assert len({to_hex(c) for c in points.get_facecolors()}) == 13
    assert "1 job(s) without a value" in lr_ax.get_title()


def test_learning_rate_axis_is_log_even_within_a_decade(tmp_path):
    """lr 1e-4 vs 3e-4 is a ratio: log axis. A warmup ratio of 0.0-0.1 stays linear (0 has no log)."""
    for num, (lr, warmup) in enumerate([(1e-4, 0.0), (2e-4, 0.05), (3e-4, 0.1)]):
        d = tmp_path / f"{num}_x"
        d.mkdir()
        (d / "overrides.yaml").write_text(yaml.safe_dump([f"optimizer.lr={lr}", f"optimizer.warmup_ratio={warmup}"]))
        (d / "metrics.json").write_text(json.dumps({"status": "completed", "objective": 1.0 + num,
                                                    "loss_history": [{"step": 1, "loss": 2.0}]}))
    fig = build_figure(collect_jobs(tmp_path))
    _, lr_ax, warmup_ax = fig.axes
    assert lr_ax.get_xscale() == "log"
    assert warmup_ax.get_xscale() == "linear"
