"""The unannotated world catalog: train scenes only, families of single-change variants, seeded."""

from __future__ import annotations

import json
from pathlib import Path

from cir_tools.world.catalog import (
    ANSWER_KEY_NAME,
    FAMILY_KEY,
    catalog_images,
    catalog_scenes,
    write_catalog,
)
from cir_tools.world.corpus import is_heldout
from cir_tools.world.language import canonical_caption


def test_families_are_train_scenes_with_distinct_variants() -> None:
    families = catalog_scenes(families=20, variants=3, seed=5)
    assert len(families) == 20
    for family in families:
        assert 2 <= len(family) <= 4
        assert not any(is_heldout(member.scene) for member in family)
        assert len({canonical_caption(member.scene) for member in family}) == len(family)
        assert family[0].change == "" and all(member.change for member in family[1:])


def test_written_catalog_is_seeded_and_names_nothing_about_scenes(tmp_path: Path) -> None:
    first = write_catalog(tmp_path / "a", families=6, variants=2, seed=3)
    second = write_catalog(tmp_path / "b", families=6, variants=2, seed=3)
    assert first.read_bytes() == second.read_bytes()
    records = [json.loads(line) for line in first.read_text().splitlines()]
    assert len({record["id"] for record in records}) == len(records)
    for record in records:
        assert set(record) == {"id", "file", "metadata"}
        assert set(record["metadata"]) == {FAMILY_KEY}
        image_bytes = (tmp_path / "a" / record["file"]).read_bytes()
        assert image_bytes == (tmp_path / "b" / record["file"]).read_bytes()
    assert len({record["metadata"][FAMILY_KEY] for record in records}) == 6
    # The answer key pairs each family's base with its variants, by the generator's own texts.
    family_of = {record["id"]: record["metadata"][FAMILY_KEY] for record in records}
    answers = [json.loads(line) for line in (tmp_path / "a" / ANSWER_KEY_NAME).read_text().splitlines()]
    assert answers and all(family_of[a["reference_id"]] == family_of[a["target_id"]] for a in answers)
    assert all(a["text"] and a["reference_id"] != a["target_id"] for a in answers)


def test_other_seed_gives_other_images() -> None:
    ids = {item.image_id for item in catalog_images(families=4, variants=2, seed=1)}
    other = {item.image_id for item in catalog_images(families=4, variants=2, seed=2)}
    assert ids != other
