"""Which files to index and under which ids.

Folders are walked recursively and keep the files whose extension names an image format
(case-insensitive); a file named on the command line is always taken, whatever its name,
and the gateway (or the local check of ``--direct``) decides whether it is an image.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"})


class IdFrom(enum.StrEnum):
    """How an image id is derived from a file found under a folder."""

    RELATIVE = "relative"  # the path under the folder given, with / separators
    NAME = "name"  # the file name
    ABSOLUTE = "absolute"  # the absolute path, with / separators


@dataclass(frozen=True, slots=True)
class ImageFile:
    path: Path
    image_id: str


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def image_id(path: Path, root: Path | None, id_from: IdFrom) -> str:
    """The id of ``path``, found under the folder ``root`` (None: given directly)."""
    if id_from is IdFrom.ABSOLUTE:
        return path.absolute().as_posix()
    if id_from is IdFrom.NAME or root is None:
        return path.name
    return path.relative_to(root).as_posix()


def walk(paths: Iterable[Path], id_from: IdFrom = IdFrom.RELATIVE) -> list[ImageFile]:
    """Every image under ``paths``, in a stable order; a file reached twice is taken once."""
    found: list[ImageFile] = []
    seen: set[Path] = set()

    def add(path: Path, root: Path | None) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            found.append(ImageFile(path, image_id(path, root, id_from)))

    for given in paths:
        if given.is_dir():
            for path in sorted(given.rglob("*")):
                if path.is_file() and is_image_name(path):
                    add(path, given)
        elif given.exists():
            add(given, None)
        else:
            raise FileNotFoundError(f"no such file or folder: {given}")
    return found


def duplicate_ids(files: Iterable[ImageFile]) -> dict[str, list[Path]]:
    """Ids that more than one file would get (e.g. ``--id-from name`` across folders)."""
    by_id: dict[str, list[Path]] = {}
    for file in files:
        by_id.setdefault(file.image_id, []).append(file.path)
    return {image_id: paths for image_id, paths in by_id.items() if len(paths) > 1}
