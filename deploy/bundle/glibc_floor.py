"""The glibc floor and size of a directory of ELF files (the self-contained warmgate bundle).

    python3 deploy/bundle/glibc_floor.py [--max 2.35] [--json] /opt/warmgate-bundle

The floor is the highest GLIBC_x.y symbol version any ELF file in the directory needs (its
.gnu.version_r entries): a system whose glibc is older cannot load that file. Also reported: the
bundle's size and file count, which file sets the floor, and the shared libraries the bundle needs
from the system (NEEDED names no bundled file provides: the target image must have them). With
--max, exits 1 when the floor is above it (the Dockerfile fails the build so). Standard library
only: it runs in the build stage and in tests, with no binutils.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import struct
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ELF_MAGIC = b"\x7fELF"
SHT_DYNAMIC = 6
SHT_GNU_VERNEED = 0x6FFFFFFE
DT_NEEDED = 1
DT_SONAME = 14
GLIBC_VERSION = re.compile(r"^GLIBC_(\d+(?:\.\d+)+)$")


@dataclass
class ElfInfo:
    versions: set[tuple[int, ...]] = field(default_factory=set)
    needed: set[str] = field(default_factory=set)
    soname: str | None = None


@dataclass(frozen=True)
class Section:
    kind: int
    offset: int
    size: int
    link: int
    entsize: int


class Reader:
    """Fixed-layout reads from an ELF image in either class and byte order."""

    def __init__(self, data: bytes) -> None:
        if data[:4] != ELF_MAGIC or data[4] not in (1, 2) or data[5] not in (1, 2):
            raise ValueError("not an ELF file")
        self.data = data
        self.wide = data[4] == 2
        self.order = "<" if data[5] == 1 else ">"

    def unpack(self, fmt: str, offset: int) -> tuple[int, ...]:
        return struct.unpack_from(self.order + fmt, self.data, offset)

    def string(self, offset: int) -> str:
        end = self.data.index(b"\0", offset)
        return self.data[offset:end].decode("ascii", "replace")

    def sections(self) -> list[Section]:
        """Every section header (Elf_Shdr: name, type, flags, addr, offset, size, link, ...)."""
        if self.wide:
            (shoff,) = self.unpack("Q", 0x28)
            shentsize, shnum = self.unpack("HH", 0x3A)
            layout = "IIQQQQIIQQ"
        else:
            (shoff,) = self.unpack("I", 0x20)
            shentsize, shnum = self.unpack("HH", 0x2E)
            layout = "IIIIIIIIII"
        headers = []
        for index in range(shnum):
            _name, kind, _flags, _addr, offset, size, link, _info, _align, entsize = self.unpack(
                layout, shoff + index * shentsize
            )
            headers.append(Section(kind, offset, size, link, entsize))
        return headers


def read_elf(data: bytes) -> ElfInfo:
    reader = Reader(data)
    sections = reader.sections()
    info = ElfInfo()
    for section in sections:
        # Both sections name their strings by offsets into the string table their link points to.
        strings = sections[section.link].offset if section.link < len(sections) else 0
        if section.kind == SHT_GNU_VERNEED:
            info.versions |= verneed_glibc(reader, section.offset, strings)
        elif section.kind == SHT_DYNAMIC:
            entry = section.entsize or (16 if reader.wide else 8)
            for position in range(section.offset, section.offset + section.size, entry):
                tag, value = reader.unpack("qQ" if reader.wide else "iI", position)
                if tag == 0:
                    break
                if tag == DT_NEEDED:
                    info.needed.add(reader.string(strings + value))
                elif tag == DT_SONAME:
                    info.soname = reader.string(strings + value)
    return info


def verneed_glibc(reader: Reader, offset: int, strings: int) -> set[tuple[int, ...]]:
    """The GLIBC_x.y versions in a .gnu.version_r section (Elf_Verneed chains of Elf_Vernaux)."""
    found: set[tuple[int, ...]] = set()
    need = offset
    while True:
        _version, count, _file, aux_offset, next_need = reader.unpack("HHIII", need)
        aux = need + aux_offset
        for _ in range(count):
            _hash, _flags, _other, name, next_aux = reader.unpack("IHHII", aux)
            match = GLIBC_VERSION.match(reader.string(strings + name))
            if match:
                found.add(tuple(int(part) for part in match.group(1).split(".")))
            if not next_aux:
                break
            aux += next_aux
        if not next_need:
            return found
        need += next_need


def files_under(root: Path) -> Iterator[Path]:
    for folder, _dirs, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            if path.is_file() and not path.is_symlink():
                yield path


@dataclass
class Survey:
    root: str
    glibc_floor: str | None
    set_by: list[str]
    size_bytes: int
    files: int
    elf_files: int
    system_libraries: list[str]
    # The files needing each of the three highest glibc versions found: what to replace or leave
    # out to lower the floor.
    needing: dict[str, list[str]]

    @property
    def size_mb(self) -> float:
        return round(self.size_bytes / 1_000_000, 1)

    def as_dict(self) -> dict[str, object]:
        return {**self.__dict__, "size_mb": self.size_mb}

    def line(self) -> str:
        return (
            f"{self.root}: glibc floor {self.glibc_floor} (set by {', '.join(self.set_by[:3])}); "
            f"{self.size_mb} MB in {self.files} files ({self.elf_files} ELF); "
            f"needs from the system: {' '.join(self.system_libraries)}"
        )


def survey(root: Path) -> Survey:
    total_bytes, file_count, elf_count = 0, 0, 0
    floor: tuple[int, ...] = ()
    floor_files: list[str] = []
    needed: set[str] = set()
    provided: set[str] = set()
    by_version: dict[tuple[int, ...], list[str]] = {}
    for path in files_under(root):
        file_count += 1
        total_bytes += path.stat().st_size
        with path.open("rb") as handle:
            if handle.read(4) != ELF_MAGIC:
                continue
        try:
            info = read_elf(path.read_bytes())
        except (ValueError, struct.error, IndexError):
            continue  # a truncated or foreign ELF: nothing the loader would accept either
        elf_count += 1
        provided.add(path.name)
        if info.soname:
            provided.add(info.soname)
        needed |= info.needed
        top = max(info.versions, default=())
        relative = str(path.relative_to(root))
        if top:
            by_version.setdefault(top, []).append(relative)
        if top > floor:
            floor, floor_files = top, [relative]
        elif top and top == floor:
            floor_files.append(relative)
    return Survey(
        root=str(root),
        glibc_floor=".".join(str(part) for part in floor) or None,
        set_by=sorted(floor_files)[:10],
        size_bytes=total_bytes,
        files=file_count,
        elf_files=elf_count,
        system_libraries=sorted(needed - provided),
        needing={
            ".".join(str(part) for part in found): sorted(by_version[found])[:10]
            for found in sorted(by_version, reverse=True)[:3]
        },
    )


def version(text: str) -> tuple[int, ...]:
    if not re.fullmatch(r"\d+(\.\d+)+", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a version like 2.35")
    return tuple(int(part) for part in text.split("."))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="glibc floor and size of a bundle directory")
    parser.add_argument("root", type=Path)
    parser.add_argument("--max", type=version, help="exit 1 when the floor is above this glibc")
    parser.add_argument("--json", action="store_true", help="print the survey as JSON")
    args = parser.parse_args(argv)
    if not args.root.is_dir():
        parser.error(f"{args.root} is not a directory")
    result = survey(args.root)
    print(json.dumps(result.as_dict(), indent=2) if args.json else result.line())
    floor = result.glibc_floor
    if args.max is not None and floor is not None and version(floor) > args.max:
        limit = ".".join(str(part) for part in args.max)
        print(f"glibc floor {floor} is above the allowed {limit}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
