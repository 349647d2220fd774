"""Loading never unpickles, and a damaged model file is a one-line error (issue 12's first steps)."""

import re
import shutil
from pathlib import Path

from tokentilt.cli import main

SRC = Path(__file__).resolve().parents[1] / "src" / "tokentilt"


def test_no_pickle_and_every_torch_load_is_weights_only():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(r"^\s*(import|from)\s+(c?pickle|dill|joblib)\b", code):
                offenders.append(f"{path.name}:{number}: {line.strip()}")
            if "torch.load(" in code and "weights_only=True" not in code:
                offenders.append(f"{path.name}:{number}: {line.strip()}")
    assert not offenders, offenders
    assert any("torch.load(" in p.read_text() for p in SRC.rglob("*.py"))  # the scan does see the loads


def test_truncated_safetensors_is_one_line_and_exit_2(tmp_path, tiny_model_dir, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert main(["generate", "--model", str(broken), "--new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tokentilt: error: cannot load model") and err.count("\n") == 1
    assert "Traceback" not in err
