"""Walking paths and deriving image ids."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgsim_cli.files import IdFrom, duplicate_ids, walk


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for name in ("a.png", "b.JPG", "sub/c.jpeg", "sub/deeper/d.WebP", "e.gif", "f.bmp",
                 "notes.txt", "sub/readme.md", "sub/g.png.bak", "noext"):  # fmt: skip
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return root


def test_relative_ids_use_posix_paths_and_skip_non_images(tree: Path) -> None:
    ids = [f.image_id for f in walk([tree])]
    assert ids == ["a.png", "b.JPG", "e.gif", "f.bmp", "sub/c.jpeg", "sub/deeper/d.WebP"]


def test_name_ids(tree: Path) -> None:
    assert {f.image_id for f in walk([tree], IdFrom.NAME)} == {
        "a.png", "b.JPG", "e.gif", "f.bmp", "c.jpeg", "d.WebP",
    }  # fmt: skip


def test_absolute_ids(tree: Path) -> None:
    files = walk([tree], IdFrom.ABSOLUTE)
    assert {f.image_id for f in files} == {f.path.absolute().as_posix() for f in files}
    assert all(f.image_id.startswith("/") for f in files)


def test_a_file_given_directly_uses_its_name_whatever_its_extension(tree: Path) -> None:
    files = walk([tree / "sub" / "c.jpeg", tree / "notes.txt"])
    assert [f.image_id for f in files] == ["c.jpeg", "notes.txt"]
    absolute = walk([tree / "sub" / "c.jpeg"], IdFrom.ABSOLUTE)
    assert absolute[0].image_id == (tree / "sub" / "c.jpeg").absolute().as_posix()


def test_a_subfolder_given_is_the_root_of_its_ids(tree: Path) -> None:
    assert [f.image_id for f in walk([tree / "sub"])] == ["c.jpeg", "deeper/d.WebP"]


def test_a_file_reached_twice_is_taken_once(tree: Path) -> None:
    files = walk([tree, tree / "a.png"])
    assert [f.path.name for f in files].count("a.png") == 1


def test_duplicate_ids_across_folders(tree: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "a.png").write_bytes(b"y")
    files = walk([tree, other], IdFrom.NAME)
    assert duplicate_ids(files) == {"a.png": [tree / "a.png", other / "a.png"]}
    assert duplicate_ids(walk([tree, other])) == {"a.png": [tree / "a.png", other / "a.png"]}
    assert duplicate_ids(walk([tree / "sub", other])) == {}


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        walk([tmp_path / "nope"])


@pytest.mark.parametrize("image_id", ["a\u00a0b.jpg", "a\u200bb.jpg", "a/../b.jpg", "a//b.jpg"])
async def test_direct_mode_refuses_ids_the_pipeline_would_dead_letter(image_id: str) -> None:
    from imgsim_cli.direct import DirectProducer
    from imgsim_cli.errors import CliError
    from imgsim_core.settings import ImageLimits, KafkaSettings

    producer = DirectProducer(KafkaSettings(bootstrap_servers="127.0.0.1:1"), ImageLimits())
    for send in (producer.index(image_id, b"x", {}), producer.delete(image_id)):
        with pytest.raises(CliError) as err:
            await send
        assert err.value.code == "bad_key"
