"""What produced a run: the code (git commit, dirty state, the diff and untracked sources, a SHA-256 per
source file), the versions, the machine and the command line, recorded when a run starts and each time it
is resumed.

trained/<run>/provenance.json   {"sessions": [start, resume, ...]}: one record per training session
trained/<run>/code.diff         the start's uncommitted changes, a patch: `git checkout COMMIT && git apply
                                code.diff` rebuilds its code (absent when the tree was clean); a resume with
                                other uncommitted changes writes code.session<N>.diff

"Source files" are what a run executes or is configured by: *.py, *.ipynb, tokenizer files, requirements
and tool settings, outside trained/, data/, sweeps/, docs/, tests/, bench/ and hidden or cache folders
(SKIP_DIRS). Their hashes are recorded with or without git, so two runs' code can always be compared file
by file (machinery/comparison/code.py). Recording takes a few git calls and ~0.1 s; nothing here can
stop a run: a missing git, a folder outside a work tree or any failure becomes a note.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path, PurePosixPath

from machinery import PROJECT_ROOT
from machinery.fileio import write_json, write_text

PROVENANCE = "provenance.json"
SOURCE_SUFFIXES = {".py", ".ipynb", ".ini", ".toml", ".cfg", ".txt", ".json", ".model", ".vocab"}
SKIP_DIRS = {"trained", "data", "sweeps", "docs", "tests", "bench", "comparisons", "exported", "data_cache",
             "__pycache__"}  # top-level folders that hold results, data or code no run executes
MAX_DIFF_BYTES = 1_000_000  # code.diff's bound: files that would pass it are left out and listed
GIT_TIMEOUT_S = 5.0
NOTABLE_CPU_FLAGS = {"avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
                     "amx_bf16", "amx_int8", "asimd", "sve", "sve2"}  # the ones that change matmul speed


class GitUnavailable(Exception):
    """git cannot describe the folder (not installed, not a work tree, too slow): the reason, in a few words."""


def is_source(path: str) -> bool:
    parts = PurePosixPath(path).parts
    if not parts or parts[0] in SKIP_DIRS or any(p.startswith(".") or p == "__pycache__" for p in parts):
        return False
    return PurePosixPath(path).suffix in SOURCE_SUFFIXES


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --- git -------------------------------------------------------------------------------------------------
def git(args: list[str], root: Path = PROJECT_ROOT, check: bool = True, env: dict | None = None,
        raw: bool = False) -> str | bytes:
    """git's stdout (bytes if raw), run in root without taking optional locks (a user's git may run meanwhile)."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C", **(env or {})}
    try:
        done = subprocess.run(["git", "-c", "core.quotepath=off", *args], cwd=root, capture_output=True, env=env,
                              timeout=GIT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise GitUnavailable("git is not installed") from None
    except subprocess.TimeoutExpired:
        raise GitUnavailable(f"git took longer than {GIT_TIMEOUT_S:g} s") from None
    except OSError as e:
        raise GitUnavailable(f"git could not run ({e})") from None
    if check and done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        raise GitUnavailable(lines[0] if lines else f"git {args[0]} failed (exit code {done.returncode})")
    return done.stdout if raw else done.stdout.decode("utf-8", errors="surrogateescape")


def _names(output: str) -> list[str]:
    return [name for name in output.split("\0") if name]


def _git_state(root: Path) -> dict:
    """commit, branch, the source files git lists (tracked + untracked, not ignored), and which differ."""
    if git(["rev-parse", "--is-inside-work-tree"], root).strip() != "true":
        raise GitUnavailable("not inside a git work tree")
    head = git(["rev-parse", "--verify", "--quiet", "HEAD"], root, check=False).strip() or None
    branch = git(["rev-parse", "--abbrev-ref", "HEAD"], root, check=False).strip() if head else None
    skip = ["--", ".", *(f":(exclude){d}" for d in sorted(SKIP_DIRS))]  # never list a big data or results folder
    listed = [p for p in _names(git(["ls-files", "-z", "--cached", "--others", "--exclude-standard", *skip], root))
              if is_source(p)]
    untracked = [p for p in _names(git(["ls-files", "-z", "--others", "--exclude-standard", *skip], root))
                 if is_source(p)]
    changed = []
    if head:  # staged and unstaged changes of tracked files, deletions included
        changed = [p for p in _names(git(["diff", "-z", "--name-only", "--no-renames", "--relative", "HEAD", *skip],
                                         root)) if is_source(p)]
    else:  # no commit yet: every file counts as new
        untracked = listed
    return {"commit": head, "branch": branch if branch != "HEAD" else None, "files": sorted(set(listed)),
            "changed": sorted(changed), "untracked": sorted(untracked)}


def _walk_sources(root: Path) -> list[str]:
    found = []
    for folder, dirs, files in os.walk(root):
        rel = Path(folder).relative_to(root)
        dirs[:] = sorted(d for d in dirs if is_source((rel / d / "x.py").as_posix()))  # prune skipped folders
        found += [(rel / f).as_posix() for f in files if is_source((rel / f).as_posix())]
    return sorted(found)


def code_state(root: Path = PROJECT_ROOT) -> dict:
    """The code's fingerprint: {"source": "git" or "files", "commit", "branch", "dirty", "changed", "untracked",
    "files": {path: sha256}, "note"}. Outside git (or when git fails) only the hashes, and a note why."""
    root = Path(root)
    try:
        state = {"source": "git", **_git_state(root), "note": None}
    except GitUnavailable as e:
        state = {"source": "files", "commit": None, "branch": None, "files": _walk_sources(root), "changed": [],
                 "untracked": [], "note": f"{e}: the code is recorded as a SHA-256 per source file, without a diff"}
    hashes = {}
    for path in state["files"]:
        try:
            hashes[path] = sha256(root / path)
        except OSError:  # deleted but still in the index, or unreadable: absent from the fingerprint
            pass
    state["dirty"] = bool(state["changed"] or state["untracked"]) if state["source"] == "git" else None
    order = ["source", "commit", "branch", "dirty", "changed", "untracked", "note"]
    return {**{k: state[k] for k in order}, "root": str(root), "files": hashes}  # the long list last


# --- the patch -------------------------------------------------------------------------------------------
def _new_file_patch(path: str, data: bytes) -> str | None:
    """A git patch creating `path` with `data`; None for a binary file."""
    if b"\0" in data:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    lines = text.splitlines(keepends=True)
    out = [f"diff --git a/{path} b/{path}\n", "new file mode 100644\n"]
    if lines:
        out += ["--- /dev/null\n", f"+++ b/{path}\n", f"@@ -0,0 +1{f',{len(lines)}' if len(lines) != 1 else ''} @@\n"]
        for line in lines:
            out.append("+" + line if line.endswith("\n") else f"+{line}\n\\ No newline at end of file\n")
    return "".join(out)


def _split_patch(text: str) -> list[tuple[str, str]]:
    """[(path, its part of a multi-file git diff)]."""
    pieces = ("\n" + text).split("\ndiff --git ")[1:]
    return [(p.split("\n", 1)[0].rsplit(" b/", 1)[-1], "diff --git " + p.rstrip("\n") + "\n") for p in pieces]


def code_patch(state: dict, root: Path = PROJECT_ROOT, limit: int = MAX_DIFF_BYTES) -> tuple[str, list[dict]]:
    """The uncommitted changes of the source files against state's commit, untracked files as new files,
    at most `limit` bytes: (patch text, [{"path", "why"} left out]). A header says how to apply it."""
    root = Path(root)
    parts = []
    if state["changed"]:
        diff = git(["diff", "--no-color", "--no-ext-diff", "--no-textconv", "--no-renames", "--relative",
                    "--src-prefix=a/", "--dst-prefix=b/", "HEAD", "--", *state["changed"]], root)
        parts += _split_patch(diff)
    for path in state["untracked"]:
        try:
            patch = _new_file_patch(path, (root / path).read_bytes())
        except OSError:
            continue
        parts.append((path, patch))
    kept, omitted, size = [], [], 0
    for path, patch in parts:
        if patch is None:
            omitted.append({"path": path, "why": "binary (its SHA-256 is recorded)"})
        elif size + len(patch.encode()) > limit:
            omitted.append({"path": path, "why": f"the diff would pass {limit / 1e6:g} MB ({len(patch.encode()):,} "
                                                 f"bytes for this file)"})
        else:
            kept.append(patch)
            size += len(patch.encode())
    base = f"commit {state['commit']}" if state["commit"] else "an empty tree (no commit yet)"
    header = [f"# templateGPT: the source files' uncommitted changes against {base}, when this session started.",
              f"# Rebuild that code: git checkout {state['commit'] or '<empty>'} && git apply <this file>"]
    header += [f"# LEFT OUT: {o['path']}: {o['why']}" for o in omitted]
    return "\n".join(header) + "\n" + "".join(kept), omitted


# --- the machine and the session -------------------------------------------------------------------------
def machine_info(device) -> dict:
    """The device as a reader of the run needs it: GPU name, or the CPU's model and the flags that set its speed."""
    import torch

    from machinery.run.device import cpu_flags, cpu_model
    info = {"device": str(device), "cpu": cpu_model(), "cpu_flags": sorted(cpu_flags() & NOTABLE_CPU_FLAGS),
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(device), gpus=torch.cuda.device_count(), cuda=torch.version.cuda)
    return info


def session_record(device, world_size: int = 1, resume_step: int | None = None, root: Path = PROJECT_ROOT) -> dict:
    import torch
    start = time.perf_counter()
    code = code_state(root)
    return {"session": "start" if resume_step is None else "resume", "step": resume_step or 0,
            "started": datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": list(sys.argv), "world_size": world_size, "host": socket.gethostname(),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "machine": machine_info(device), "code": code, "collect_s": round(time.perf_counter() - start, 3)}


def load(run_dir: Path) -> dict | None:
    """A run's provenance.json, or None when it has none (runs made before it existed) or it is unreadable."""
    try:
        data = json.loads((Path(run_dir) / PROVENANCE).read_text())
        return data if isinstance(data.get("sessions"), list) and data["sessions"] else None
    except (OSError, ValueError, AttributeError):
        return None


def describe_changes(old: dict, new: dict) -> list[str]:
    """'path changed/added/removed' for each source file whose SHA-256 differs between two fingerprints."""
    out = []
    for path in sorted(set(old) | set(new)):
        if path not in old:
            out.append(f"{path} added")
        elif path not in new:
            out.append(f"{path} removed")
        elif old[path] != new[path]:
            out.append(f"{path} changed")
    return out


def shorten(changes: list[str], keep: int = 4) -> str:
    return ", ".join(changes[:keep]) + (f" and {len(changes) - keep} more" if len(changes) > keep else "")


def record(run_dir: Path, device, world_size: int = 1, resume_step: int | None = None, say=print,
           root: Path = PROJECT_ROOT) -> None:
    """Add this session to run_dir/provenance.json (+ its code.diff); on a resume, say in one line when the code
    differs from what the run started with. Never raises: a failure is a note and the run goes on."""
    try:
        _record(Path(run_dir), device, world_size, resume_step, say, Path(root))
    except Exception as e:  # noqa: BLE001 - the record must never stop training
        say(f"note: the code record ({PROVENANCE}) was not written: {type(e).__name__}: {e}")


def _record(run_dir: Path, device, world_size: int, resume_step: int | None, say, root: Path) -> None:
    session = session_record(device, world_size, resume_step, root)
    code = session["code"]
    previous = (load(run_dir) or {}).get("sessions", []) if resume_step is not None else []
    diff, left_out = None, []
    if code["source"] == "git" and code["dirty"]:
        patch, left_out = code_patch(code, root)
        same = [s["code"]["diff"] for s in previous if s["code"].get("diff") and s["code"].get("commit") ==
                code["commit"] and s["code"].get("files") == code["files"]]
        diff = same[0] if same else ("code.diff" if not previous else f"code.session{len(previous)}.diff")
        if not same:
            write_text(run_dir / diff, patch)
    files = code.pop("files")
    code.update(diff=diff, diff_left_out=left_out, files=files)
    if resume_step is not None:
        if not previous:
            say(f"note: {run_dir.name} has no {PROVENANCE} from its start (made before code was recorded): "
                f"its starting code is unknown")
        else:
            changes = describe_changes(previous[0]["code"].get("files", {}), code["files"])
            if changes:
                say(f"note: the code differs from what {run_dir.name} started with ({previous[0]['started']}): "
                    f"{shorten(changes)}; steps after {resume_step} use this code")
    write_json(run_dir / PROVENANCE, {"sessions": [*previous, session]})
