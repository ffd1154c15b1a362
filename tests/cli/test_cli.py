"""The endo3d command line: help, exit codes, one-line errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from endo3d.cli.main import main


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv, problem", [
    (["--scene", "stomach"], "unknown scene"),
    (["--scene", "colon", "--frames", "0"], "--frames: must be positive"),
    (["--scene", "colon", "--width", "-5"], "--width: must be positive"),
    (["--scene", "colon", "--fps", "0"], "--fps: must be positive"),
    (["--scene", "missing.obj"], "mesh file not found"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, problem):
    code, _, err = _run(capsys, "simulate", "--out", str(tmp_path / "out"), *argv)
    assert code == 2
    assert err.startswith("endo3d: error: ") and problem in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_existing_output_and_unreadable_mesh(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    code, _, err = _run(capsys, "simulate", "--scene", "colon", "--out", str(tmp_path / "out"))
    assert code == 2 and "already exists (pass --overwrite" in err
    (tmp_path / "organ.stl").write_bytes(b"\x00" * 10)
    code, _, err = _run(capsys, "simulate", "--scene", str(tmp_path / "organ.stl"), "--out", str(tmp_path / "o2"))
    assert code == 2 and "organ.stl" in err and err.count("\n") == 1


def test_simulate_prints_a_summary(tmp_path, capsys):
    code, out, _ = _run(capsys, "simulate", "--scene", "airway", "--out", str(tmp_path / "a"), "--frames", "3",
                        "--width", "48", "--height", "40", "--workers", "1", "--no-preview")
    assert code == 0 and out.startswith(f"wrote {tmp_path / 'a'}: 3 frames 48x40")
    assert (tmp_path / "a" / "meta.json").is_file() and not (tmp_path / "a" / "preview.mp4").exists()


def test_console_script_help_and_usage_errors():
    help_text = subprocess.run([sys.executable, "-m", "endo3d", "simulate", "--help"], capture_output=True, text=True)
    assert help_text.returncode == 0
    for flag in ("--scene", "--out", "--frames", "--width", "--height", "--seed", "--deform-scale", "--overwrite"):
        assert flag in help_text.stdout
    missing = subprocess.run([sys.executable, "-m", "endo3d", "simulate"], capture_output=True, text=True)
    assert missing.returncode == 2


def test_help_does_not_import_torch():
    """Every subcommand's config is built for --help without loading torch (the runners load it)."""
    import subprocess
    import sys

    code = "import sys, endo3d.cli.main; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
