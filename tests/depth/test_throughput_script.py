"""``benchmarks/depth_throughput.py`` runs end to end on a CPU with a tiny encoder (a smoke test of the GPU benchmark)."""

from __future__ import annotations

import json
import math
import sys

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def script(load_benchmark):
    return load_benchmark("depth_throughput")


def test_throughput_table_and_json(script, tiny_encoder, tmp_path, monkeypatch, capsys):
    out = tmp_path / "t.json"
    monkeypatch.setattr(sys, "argv", [
        "depth_throughput.py", "--device", "cpu", "--encoders", tiny_encoder, "--modes", "adapters", "full",
        "--precisions", "fp32", "bf16", "--height", "28", "--width", "42", "--train-batch", "2", "--infer-batch", "3",
        "--warmup", "0", "--repeats", "1", "--json", str(out)])
    script.main()
    record = json.loads(out.read_text())
    rows = record["rows"]
    assert [(r["mode"], r["precision"]) for r in rows] == [
        ("adapters", "fp32"), ("adapters", "bf16"), ("full", "fp32"), ("full", "bf16")]
    for r in rows:
        assert r["train_fps"] > 0 and r["infer_fps"] > 0 and math.isfinite(r["train_loss"])
        assert len(r["train_step_ms_all"]) == 1 and r["train_fps"] == pytest.approx(2e3 / r["train_step_ms"])
        assert r["infer_fps"] == pytest.approx(3e3 / r["infer_batch_ms"])
    adapters, full = rows[0], rows[2]
    assert adapters["trainable_parameters"] < full["trainable_parameters"] == full["depth_parameters"]
    assert record["machine"]["device"] == "cpu" and record["settings"]["height"] == 28
    assert "train fps" in capsys.readouterr().out


def test_rejects_sizes_off_the_patch_grid(script, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["depth_throughput.py", "--device", "cpu", "--height", "256"])
    with pytest.raises(SystemExit):
        script.main()
