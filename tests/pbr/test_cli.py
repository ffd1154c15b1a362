"""Command line: bad input exits 2 with one line."""

from __future__ import annotations

import json
import shutil

from endo3d.cli.main import main


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("endo3d: error:")
    return err


def test_dataset_without_mesh_exits_2(rigid_colon, tmp_path, capsys):
    copy = tmp_path / "nomesh"
    shutil.copytree(rigid_colon, copy, ignore=shutil.ignore_patterns("rgb", "depth", "normal", "flow", "albedo",
                                                                    "material", "preview.mp4"))
    meta = json.loads((copy / "meta.json").read_text())
    del meta["mesh"]
    for f in meta["frames"]:
        for key in ("depth", "normal", "flow", "albedo", "material"):
            f.pop(key, None)
        f["rgb"] = str(rigid_colon / f["rgb"])
    (copy / "meta.json").write_text(json.dumps(meta))
    shutil.copytree(rigid_colon / "rgb", copy / "rgb")
    for f in meta["frames"]:
        f["rgb"] = f["rgb"].split(str(rigid_colon) + "/")[1]
    (copy / "meta.json").write_text(json.dumps(meta))
    assert main(["pbr", "fit", str(copy), "--out", str(tmp_path / "run")]) == 2
    assert "mesh" in _one_line_error(capsys)
    assert not (tmp_path / "run").exists()


def test_missing_run_exits_2(tmp_path, capsys):
    assert main(["pbr", "render", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")]) == 2
    assert "missing" in _one_line_error(capsys)
    (tmp_path / "empty").mkdir()
    assert main(["pbr", "render", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 2
    assert "checkpoint.pt" in _one_line_error(capsys)


def test_missing_dataset_exits_2(tmp_path, capsys):
    assert main(["pbr", "fit", str(tmp_path / "nothing"), "--out", str(tmp_path / "run")]) == 2
    _one_line_error(capsys)


def test_fit_and_render_from_the_command_line(rigid_colon, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["pbr", "fit", str(rigid_colon), "--out", str(run), "--steps", "3", "--no-progress",
                 "--field.levels", "4", "--field.table-log2", "10", "--no-renders"]) == 0
    assert "PSNR" in capsys.readouterr().out
    assert main(["pbr", "render", str(run), "--out", str(tmp_path / "data"), "--frames", "2",
                 "--no-progress"]) == 0
    assert (tmp_path / "data" / "meta.json").is_file()


def test_bad_settings_exit_2_before_any_folder(rigid_colon, tmp_path, capsys):
    for flags, needle in ((["--checkpoint-every", "0"], "--checkpoint-every"), (["--field.levels", "0"], "--field.levels"),
                          (["--lr.final-ratio", "-1"], "--lr.final-ratio"), (["--saturated-weight", "-1"], "--saturated")):
        assert main(["pbr", "fit", str(rigid_colon), "--out", str(tmp_path / "run"), *flags]) == 2
        assert needle in _one_line_error(capsys)
    assert not (tmp_path / "run").exists() and not (tmp_path / ".run.partial").exists()
    for flags, needle in ((["--light-scale", "nan"], "--light-scale"), (["--exposure-scale", "inf"], "--exposure"),
                          (["--shift-mm", "nan", "0", "0"], "--shift-mm")):
        assert main(["pbr", "render", str(tmp_path / "nothing"), "--out", str(tmp_path / "out"), *flags]) == 2
        assert needle in _one_line_error(capsys)


def test_render_refuses_a_reconstruct_checkpoint(tmp_path, capsys):
    import torch

    (tmp_path / "run").mkdir()
    torch.save({"version": 1, "config": {"deformation": "hexplane"}, "splats": {}}, tmp_path / "run" / "checkpoint.pt")
    assert main(["pbr", "render", str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 2
    assert "endo3d render" in _one_line_error(capsys)
