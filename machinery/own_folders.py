"""A command deletes only what it made: `--overwrite` replaces a folder only when this project wrote it for the
same purpose, and never one that holds a run, a sweep, a git work tree or the project itself.

    check_replaceable(out, "export")            # refuses (ValueError, nothing changed) before any work
    ...build the new folder in tmp...
    replace_own_folder(tmp, out, "export")      # checks again, marks tmp as ours, swaps it in, deletes the old

What counts as "this project wrote it for that purpose":
    export   a folder holding .templategpt-export (export_hf.py writes it into every export)
    run      a run folder inside trained/: its model_config.json or train_config.json (a half-created run too)
An empty real folder may always be replaced. Refused, whatever the purpose: a symbolic link (dangling or not),
a file or other non-folder, the project's source folder and every folder above it or above trained/ and
sweeps/, and any folder with a git work tree, a sweep or (for exports) a run anywhere inside it.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from machinery import PROJECT_ROOT
from machinery.fileio import TMP_SUFFIX, reported_writes, write_text

EXPORT_MARKER = ".templategpt-export"
DESCRIPTION_FILES = ("model_config.json", "train_config.json")
_WHAT_IS_OURS = {"export": f"a folder export_hf.py wrote (it holds {EXPORT_MARKER})",
                 "run": "a run folder in trained/ (it holds model_config.json or train_config.json)"}
_LOOKED_AT = 20_000  # entries examined inside a folder before giving up on it: exports and runs are small


def _protected_roots() -> list[Path]:
    """Folders whose ancestors (themselves included) are never replaced: the source, trained/, sweeps/."""
    from machinery.run.runs import trained_dir
    from machinery.sweeps.definition import sweeps_dir
    return [PROJECT_ROOT, trained_dir(), sweeps_dir()]


def _is_run(folder: Path) -> bool:
    return any((folder / name).is_file() for name in DESCRIPTION_FILES)


def _what_it_holds(folder: Path, purpose: str) -> str | None:
    """Why `folder` (a real folder) must not be deleted for `purpose`, or None. Walks it without following
    links (shutil.rmtree does not follow them either)."""
    real = folder.resolve()
    for root in _protected_roots():
        root = Path(root).absolute().resolve()
        if real == root or real in root.parents:
            return f"is {'the project source folder' if root == PROJECT_ROOT else root} or a folder above it"
    looked = 0
    for here, subfolders, files in os.walk(folder):
        here = Path(here)
        names = set(subfolders) | set(files)
        looked += len(names)
        if ".git" in names:
            return f"holds a git work tree ({here / '.git'})"
        if "sweep.json" in files:
            return f"holds a sweep ({here / 'sweep.json'})"
        if (purpose != "run" or here != folder) and any(name in files for name in DESCRIPTION_FILES):
            return f"holds a run ({here})"
        if looked > _LOOKED_AT:
            return f"holds more than {_LOOKED_AT:,} files and folders"
    return None


def check_replaceable(path: Path, purpose: str) -> None:
    """Refuse (ValueError, one line, nothing changed) to let --overwrite replace `path` for `purpose` ('export'
    or 'run') unless it is absent, an empty real folder, or a folder this project wrote for that purpose."""
    path = Path(path)
    refused = f"{path} will not be replaced (nothing was changed): it"
    allowed = f"--overwrite replaces only {_WHAT_IS_OURS[purpose]}"
    if path.is_symlink():
        target = f"{os.readlink(path)}{'' if path.exists() else ', which does not exist'}"
        raise ValueError(f"{refused} is a symbolic link (to {target}): nothing is replaced through a link; "
                         f"remove the link yourself or choose another folder")
    if not path.exists():
        return
    if not path.is_dir():
        raise ValueError(f"{refused} is a file, not a folder: {allowed}; choose another folder")
    if not any(path.iterdir()):
        return
    why = _what_it_holds(path, purpose)
    if why is not None:
        raise ValueError(f"{refused} {why}. {allowed}; choose another folder")
    ours = (path / EXPORT_MARKER).is_file() if purpose == "export" else _is_run(path)
    if not ours:
        raise ValueError(f"{refused} was not written by this project for that: {allowed}; choose another "
                         f"folder or empty it yourself")


def remove_own_folder(path: Path, purpose: str) -> None:
    """Delete `path` after check_replaceable (a run's model_config.json goes first, so a kill half-way leaves a
    folder that is no longer a run rather than a mix of two)."""
    path = Path(path)
    check_replaceable(path, purpose)
    if not path.exists():
        return
    with reported_writes(path):
        if purpose == "run":
            (path / DESCRIPTION_FILES[0]).unlink(missing_ok=True)
        shutil.rmtree(path)


def replace_own_folder(new: Path, path: Path, purpose: str) -> None:
    """Put the finished folder `new` (a sibling of path) in place of `path`: checked, marked as ours, swapped in
    by renames (a kill leaves the old or the new folder, plus a hidden .tmp one), the old one deleted last."""
    path, new = Path(path), Path(new)
    check_replaceable(path, purpose)
    with reported_writes(path):
        if purpose == "export":
            write_text(new / EXPORT_MARKER, "written by templateGPT's export_hf.py; --overwrite may replace "
                                            "this folder\n")
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old.", suffix=TMP_SUFFIX))
            os.replace(path, old / path.name)
        os.replace(new, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
