"""The demo draws its sample gallery on the spot; the repository's copy must be exactly that drawing."""

from pathlib import Path

from cir_tools.sample_gallery import write_sample_gallery

REPOSITORY_GALLERY = Path(__file__).resolve().parents[2] / "samples" / "gallery"


def test_drawn_gallery_is_the_committed_one(tmp_path: Path) -> None:
    drawn = write_sample_gallery(tmp_path / "gallery")
    names = sorted(p.name for p in drawn.iterdir())
    assert names == sorted(p.name for p in REPOSITORY_GALLERY.glob("*.png"))
    assert len(names) == 24
    for name in names:
        assert (drawn / name).read_bytes() == (REPOSITORY_GALLERY / name).read_bytes(), name
