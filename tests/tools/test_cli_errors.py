"""The CLI's own errors say which path is wrong, without a traceback or an errno."""

from __future__ import annotations

from cir_tools.cli import main as cir


def test_a_missing_image_file_is_named(tmp_path, capsys):
    missing = tmp_path / "no-such.png"
    # nothing listens on port 9: the file is checked before any call is made
    assert (
        cir(
            [
                "search",
                "--collection",
                "c",
                "--image",
                str(missing),
                "--text",
                "x",
                "--address",
                "127.0.0.1:9",
            ]
        )
        == 2
    )
    assert capsys.readouterr().err.strip() == f"cir: {missing}: no such file or directory"


def test_a_missing_gallery_folder_is_named(tmp_path, capsys):
    missing = tmp_path / "gallery"
    assert cir(["index", str(missing), "--collection", "c", "--address", "127.0.0.1:9"]) == 2
    assert capsys.readouterr().err.strip() == f"cir: {missing} is not a folder"
