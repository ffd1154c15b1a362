"""``endo3d depth train | finetune | eval | predict`` on the command line (in-process, tiny encoder)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from endo3d.cli.main import main

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--encoder", "vitt", "--height", "56", "--width", "70", "--batch-size", "2", "--no-progress",
        "--device", "cpu"]


def _one_line_error(capsys, code: int, match: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("endo3d: error:") and "\n" not in err and match in err, err


@pytest.fixture(scope="module")
def cli_run(one_thread, tiny_encoder, rigid_colon, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    code = main(["depth", "train", str(rigid_colon), "--out", str(out), "--steps", "3", "--pose-width", "8", "--pose-warmup", "1",
                 *TINY])
    assert code == 0
    return out


def test_train_eval_predict(cli_run, rigid_colon, tmp_path, capsys):
    assert (cli_run / "run.json").is_file()
    code = main(["depth", "eval", str(rigid_colon), "--checkpoint", str(cli_run), "--out", str(tmp_path / "e.json"),
                 "--no-progress", "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr().out
    assert "abs_rel" in out and "ATE mm" in out
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["frames"] == 8 and 0 < result["depth"]["abs_rel"] < 10
    assert result["pose"]["ate_mm"] >= 0 and result["intrinsics"]["focal_error_pct"] >= 0
    for flags, match in (([], "at least one dataset"), ([str(rigid_colon), "--min-depth-mm", "-1"], "--min-depth-mm")):
        code = main(["depth", "eval", *flags, "--checkpoint", str(cli_run), "--out", str(tmp_path / "e.json")])
        _one_line_error(capsys, code, match)
    assert json.loads((tmp_path / "e.json").read_text()) == result  # the earlier result is kept
    code = main(["depth", "predict", str(rigid_colon), "--out", str(tmp_path / "pred"), "--checkpoint", str(cli_run),
                 "--video", "--no-progress", "--device", "cpu"])
    assert code == 0
    d = np.load(tmp_path / "pred" / "000007.npy")
    assert d.dtype == np.float32 and d.shape == (128, 160) and d.min() >= 1.0 - 1e-4 and d.max() <= 300 + 1e-3
    assert (tmp_path / "pred" / "000000.png").is_file() and (tmp_path / "pred" / "depth.mp4").is_file()
    assert json.loads((tmp_path / "pred" / "predict.json").read_text())["values"] == "depth_mm"


def test_finetune(tiny_encoder, rigid_colon, tmp_path):
    code = main(["depth", "finetune", str(rigid_colon), "--out", str(tmp_path / "ft"), "--steps", "2", "--loss", "ssi",
                 *TINY])
    assert code == 0 and json.loads((tmp_path / "ft" / "run.json").read_text())["mode"] == "supervised"


def test_predict_raw_foundation_model(tiny_encoder, tmp_path, layouts):
    from endo3d.depth.model import DepthAnything, DepthAnythingConfig, predict_inverse_depth
    from endo3d.depth.data import open_sequences
    from endo3d.io import write_png

    torch.manual_seed(0)
    model = DepthAnything(DepthAnythingConfig("vitt")).eval()
    torch.save(model.state_dict(), tmp_path / "da.pth")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, f in enumerate(layouts.rgb_frames(2, 30, 40)):
        write_png(folder / f"{i}.png", f)
    code = main(["depth", "predict", str(folder), "--out", str(tmp_path / "raw"), "--weights", str(tmp_path / "da.pth"),
                 "--input-size", "28", "--no-progress", "--device", "cpu"])
    assert code == 0
    d = np.load(tmp_path / "raw" / "000001.npy")
    assert d.shape == (30, 40)
    (seq,) = open_sequences(folder)
    expected = predict_inverse_depth(model, seq.image(1)[None], size=28)[0, 0].numpy()
    np.testing.assert_allclose(d, expected, rtol=1e-5, atol=1e-6)
    assert json.loads((tmp_path / "raw" / "predict.json").read_text())["values"] == "relative_inverse_depth"


def test_bad_input_exits_2(tiny_encoder, tmp_path, capsys, layouts):
    from endo3d.io import VideoWriter

    code = main(["depth", "train", str(tmp_path / "missing"), "--out", str(tmp_path / "r"), *TINY])
    _one_line_error(capsys, code, "missing")
    (tmp_path / "empty").mkdir()
    code = main(["depth", "train", str(tmp_path / "empty"), "--out", str(tmp_path / "r"), *TINY])
    _one_line_error(capsys, code, "no frames found")
    with VideoWriter(tmp_path / "one.mp4", fps=10.0) as v:
        v.write(layouts.rgb_frames(1, 16, 20)[0])
    code = main(["depth", "train", str(tmp_path / "one.mp4"), "--out", str(tmp_path / "r"), *TINY])
    _one_line_error(capsys, code, "at least 3 frames")
    code = main(["depth", "predict", str(tmp_path / "one.mp4"), "--out", str(tmp_path / "p")])
    _one_line_error(capsys, code, "exactly one of --checkpoint")
    code = main(["depth", "eval", str(tmp_path / "one.mp4"), "--checkpoint", str(tmp_path / "empty")])
    _one_line_error(capsys, code, "run.json")
    code = main(["depth", "predict", str(tmp_path / "one.mp4"), "--out", str(tmp_path / "p"),
                 "--weights", str(tmp_path / "nope.pth")])
    _one_line_error(capsys, code, "nope.pth")
    code = main(["depth", "train", str(tmp_path / "one.mp4"), "--out", str(tmp_path / "r"), "--height", "50"])
    _one_line_error(capsys, code, "multiple of 14")
    code = main(["depth", "train", str(tmp_path / "one.mp4"), "--out", str(tmp_path / "r"), "--alpha", "-1"])
    _one_line_error(capsys, code, "--alpha")
    predict = ["depth", "predict", str(tmp_path / "one.mp4"), "--out", str(tmp_path / "p"), "--weights",
               str(tmp_path / "nope.pth")]
    for flags, match in ((["--encoder", "vitx"], "--encoder"), (["--version", "3"], "--version"),
                         (["--input-size", "0"], "--input-size")):
        _one_line_error(capsys, main([*predict, *flags]), match)
