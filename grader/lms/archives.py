"""Extract a zip safely.

Every member is checked before anything is written (no absolute paths, no ``..``, no links, devices or
encryption, no duplicates, limits on members and bytes), and the archive lands in a folder named after
its content.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path

from grader.errors import UnsafeArchive
from grader.lms.download import _safe_key

# Limits on a zip before anything is written: a class's download is a few hundred small files.
MAX_ARCHIVE_MEMBERS = 20_000
MAX_ARCHIVE_BYTES = 4 * 2**30


def extract_zip(
    archive: Path,
    extract_to: Path,
    *,
    max_members: int = MAX_ARCHIVE_MEMBERS,
    max_bytes: int = MAX_ARCHIVE_BYTES,
) -> Path:
    """Extract ``archive`` into ``extract_to/<stem>-<hash>/`` and return that folder.

    Every member is checked before anything is written: no absolute names, no ``..``, no backslashes,
    no links or devices, no encryption, no duplicates, at most ``max_members`` members and
    ``max_bytes`` bytes once extracted (counted again while writing, whatever the zip declares).
    Zips inside the zip stay files. The same archive (by content) always lands in the same folder,
    which is reused once complete; files are written 0644, folders 0755.
    """
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        if len(infos) > max_members:
            raise UnsafeArchive(f"{archive.name}: {len(infos)} members, over the limit of {max_members}")
        members = [(info, _safe_member(archive.name, info)) for info in infos]
        declared = sum(info.file_size for info in infos)
        if declared > max_bytes:
            raise UnsafeArchive(
                f"{archive.name}: {declared / 2**20:.0f} MiB once extracted, over the limit of {max_bytes / 2**20:.0f} MiB"
            )
        seen: set[tuple[str, ...]] = set()
        for info, parts in members:
            if parts in seen:
                raise UnsafeArchive(f"{archive.name}: {info.filename!r} appears twice")
            seen.add(parts)
        target = extract_to / f"{_safe_key(Path(archive.name).stem)}-{_digest(archive)[:16]}"
        if target.is_dir():
            return target
        extract_to.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=extract_to, prefix=".extracting-"))
        try:
            os.chmod(staging, 0o755)
            written = 0
            for info, parts in members:
                if not parts:
                    continue
                dest = staging.joinpath(*parts)
                if info.is_dir():
                    dest.mkdir(mode=0o755, parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                written = _copy_member(zf, info, dest, written, max_bytes, archive.name)
            try:
                os.rename(staging, target)
            except OSError:
                if not target.is_dir():  # not a concurrent extraction of the same archive: a real failure
                    raise
                shutil.rmtree(staging, ignore_errors=True)
        except (zipfile.BadZipFile, NotImplementedError, RuntimeError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise UnsafeArchive(f"{archive.name}: damaged archive ({exc})") from None
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise UnsafeArchive(f"{archive.name}: could not be extracted ({exc})") from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _safe_member(archive: str, info: zipfile.ZipInfo) -> tuple[str, ...]:
    """The member's path parts, or UnsafeArchive when its name, type or flags are not acceptable."""
    name = info.filename
    if "\x00" in name or "\\" in name or name.startswith("/") or re.match(r"[A-Za-z]:", name):
        raise UnsafeArchive(f"{archive}: member {name!r} has an absolute or Windows-style path")
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        raise UnsafeArchive(f"{archive}: member {name!r} points outside the archive (..)")
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind == stat.S_IFLNK:
        raise UnsafeArchive(f"{archive}: member {name!r} is a symbolic link")
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise UnsafeArchive(f"{archive}: member {name!r} is not a plain file or folder")
    if info.flag_bits & 0x1:
        raise UnsafeArchive(f"{archive}: member {name!r} is encrypted")
    return parts


def _copy_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, dest: Path, written: int, max_bytes: int, archive: str
) -> int:
    """Write one member, counting bytes as they come; return the running total."""
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as out, zf.open(info) as src:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > max_bytes:
                raise UnsafeArchive(f"{archive}: more than {max_bytes / 2**20:.0f} MiB once extracted")
            out.write(chunk)
    os.chmod(dest, 0o644)
    return written


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
