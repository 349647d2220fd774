import json

import pytest
import yaml

from tokentilt.cli import main
from tokentilt.course.regression import L1Loss, L2Loss
from tokentilt.jobs.experiments.l1_vs_l2 import L1VsL2Config, fit_scalar, run


def test_summary_holds_the_course_numbers(tmp_path):
    summary = run(L1VsL2Config(out=str(tmp_path / "e")), echo=lambda *_: None)
    assert summary["l1_at_2"] == 3.0 and summary["l2_at_2"] == 9.0
    assert summary["l2_final_error"] < 1e-3
    # L1 flips between 5 and 5 - lr: amplitude lr / 2.
    assert summary["l1_oscillation"] == pytest.approx(0.025, abs=1e-4)
    assert summary["l2_oscillation"] < 1e-4
    assert json.loads((tmp_path / "e" / "summary.json").read_text()) == summary
    assert (tmp_path / "e" / "trajectories.png").stat().st_size > 1000
    assert "L1 vs L2" in (tmp_path / "e" / "report.md").read_text()


def test_first_steps_by_hand():
    # L1: constant gradient -1 -> steps of lr. L2: gradient 2(y_hat - y) -> y_hat += lr * 2 * (5 - y_hat).
    assert fit_scalar(L1Loss(), 5.0, 0.0, 0.05, 2) == pytest.approx([0.0, 0.05, 0.1])
    assert fit_scalar(L2Loss(), 5.0, 0.0, 0.05, 2) == pytest.approx([0.0, 0.5, 0.95])


def test_cli_runs_and_refuses_used_folder(tmp_path, capsys):
    out = str(tmp_path / "e")
    assert main(["experiment", "l1-vs-l2", "--out", out]) == 0
    assert json.loads((tmp_path / "e" / "summary.json").read_text())["l2_at_2"] == 9.0
    assert main(["experiment", "l1-vs-l2", "--out", out]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["experiment", "l1-vs-l2", "--out", out, "--overwrite", "--epochs", "50"]) == 0


def test_cli_bad_name_and_bad_values(tmp_path, capsys):
    assert main(["experiment", "no-such-thing"]) == 2  # argparse's error as one line, not the usage block
    err = capsys.readouterr().err
    assert "invalid choice: 'no-such-thing'" in err and len(err.strip().splitlines()) == 1
    assert main(["experiment", "l1-vs-l2", "--epochs", "0", "--out", str(tmp_path / "e")]) == 2
    assert "epochs" in capsys.readouterr().err
    assert main(["experiment", "l1-vs-l2", "--lr", "-0.1", "--out", str(tmp_path / "e")]) == 2
    assert "lr must be > 0" in capsys.readouterr().err
    config = tmp_path / "exp.yaml"  # experiments read YAML like every other subcommand; flags override it
    config.write_text("epochs: 0\nwindow: 5\n")
    assert main(["experiment", "l1-vs-l2", "--config", str(config), "--out", str(tmp_path / "e")]) == 2
    assert "epochs" in capsys.readouterr().err
    assert (
        main(["experiment", "l1-vs-l2", "--config", str(config), "--epochs", "10", "--out", str(tmp_path / "e")]) == 0
    )
    assert yaml.safe_load((tmp_path / "e" / "config.yaml").read_text())["epochs"] == 10
