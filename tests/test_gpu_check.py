"""`scripts/gpu_check.sh --cpu`: the GPU check runs end to end in miniature and prints its table."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
JOBS = ["adamw", "galore", "fira", "dct", "dct_bf16_true", "lora", "fsdp2", "galore_resume", "dct_resume",
        "preset_130m", "preset_350m"]


@pytest.mark.slow
def test_gpu_check_runs_on_a_cpu_and_prints_its_table(tmp_path):
    done = subprocess.run([str(ROOT / "scripts" / "gpu_check.sh"), "--cpu", "--out", str(tmp_path / "check")],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("job "))
    rows = {line.split()[0]: line.split() for line in lines[header + 1:]}
    assert list(rows) == JOBS
    for job, cells in rows.items():
        assert cells[1] == "ok", (job, cells)
        val_loss, tokens, step_ms, peak, state, formula = map(float, cells[2:8])
        assert 0 < val_loss < 10 and tokens > 0 and step_ms > 0 and peak > 0 and state > 0
        assert abs(state - formula) <= 0.01 * formula
    for job in ("galore_resume", "dct_resume"):
        assert "weights equal" in " ".join(rows[job])
    for job in ("galore", "fira", "dct", "dct_bf16_true"):
        assert ("✓" in rows[job]) or ("✗" in rows[job])  # the targets are judged against AdamW
    assert (tmp_path / "check" / "gpu_check.log").is_file()
