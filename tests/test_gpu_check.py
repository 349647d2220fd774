"""scripts/gpu_check.sh's dry run: every check runs on the CPU and gets a row with numbers."""

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_dry_run_writes_a_row_with_numbers_per_check(tmp_path):
    done = subprocess.run(
        [str(ROOT / "scripts" / "gpu_check.sh"), "--device", "cpu", "--tiny", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = {r["check"]: r for r in json.loads((tmp_path / "table.json").read_text())}
    assert list(rows) == ["demo", "lora", "phrases, chat", "gguf export"]
    for name in ("demo", "lora", "phrases, chat"):
        row = rows[name]
        assert row["status"] == "ok", name
        assert row["seconds"] > 0 and row["peak_rss_mb"] > 100 and row["stage_peak_rss_mb"] > 100
        assert row["peak_device_mb"] is None  # CPU: summary.json has no device memory
        before, after = (float(x) for x in row["rate"].split(" → "))
        assert 0 <= before <= 1 and 0 <= after <= 1
    assert rows["gguf export"]["status"] in ("ok", "skipped: no gguf")
    table = (tmp_path / "table.md").read_text()
    assert table.count("\n| ") == 5  # the header and four checks
    for name in rows:
        assert f"| {name} |" in table
