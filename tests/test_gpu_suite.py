"""The GPU suite's dry run: every part at toy sizes on the CPU, written outside benchmarks/results."""

import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from benchmarks import gpu_suite

ROOT = Path(__file__).resolve().parent.parent


def _measured_files():
    return {p.name: p.stat().st_mtime for p in gpu_suite.RESULTS.glob("*.json")}


@pytest.mark.slow
def test_dry_run_runs_every_part_and_leaves_the_results_alone(tmp_path):
    before = _measured_files()
    # About 50 s of CPU; the budget leaves room for a machine shared with other jobs.
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_suite", "--dry-run", "--budget", "540", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=660,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert _measured_files() == before
    suite = json.loads((tmp_path / "gpu_suite.json").read_text())["results"]
    assert [name for name in suite["parts"] if name in gpu_suite.PARTS] == list(gpu_suite.PARTS)
    for name in gpu_suite.PARTS:
        assert suite["parts"][name]["status"] == "ok", (name, suite["parts"][name])
        payload = json.loads((tmp_path / f"gpu_{name}.json").read_text())
        assert payload["environment"]["device"] == "cpu"
        assert "gpu_suite" in payload["results"]["suite_command"]
        assert payload["results"]["summary"], name
        assert {"metric", "value", "h100_reference", "target", "met"} <= set(payload["results"]["summary"][0])
    assert any(row["part"] == "cuda_tests" and row["met"] for row in suite["summary"])
    header = next(line for line in run.stdout.splitlines() if line.startswith("part "))
    assert "H100 ref" in header and "target" in header


def test_a_part_past_its_cap_is_killed(tmp_path):
    args = Namespace(dry_run=True, out=tmp_path)
    status, seconds, _ = gpu_suite._run_child(["throughput"], 2.0, args)
    assert status == "killed at its 2 s cap" and seconds < 30


def test_a_dry_run_refuses_to_write_into_the_results():
    with pytest.raises(SystemExit):
        gpu_suite.main(["--dry-run", "--out", str(gpu_suite.RESULTS)])
