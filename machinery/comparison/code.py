"""Which code made which run: the comparison table's code_diff column and `model_comparison.py --code_diff A B`.

Every run records, when it starts, a SHA-256 per source file (machinery/run/provenance.py), so two runs'
code is compared file by file whether or not git was there. To show a changed file's lines, each run's
version is rebuilt and checked against its recorded hash: the file in the current tree when it matches,
else the run's commit (`git show`) with the run's code.diff applied (`git apply`).
"""
from __future__ import annotations

import difflib
import hashlib
import tempfile
from pathlib import Path

from machinery import PROJECT_ROOT
from machinery.run.provenance import GitUnavailable, describe_changes, git, load, shorten


def start_code(run_dir: Path) -> dict | None:
    """The code a run started with (its first session's record), or None for a run made before records."""
    record = load(run_dir)
    return record["sessions"][0]["code"] if record else None


def identity(code: dict) -> str:
    """'4489a0f', '4489a0f+dirty' or 'no git' (hashes only)."""
    if not code.get("commit"):
        return "no git commit (file hashes only)"
    return code["commit"][:7] + ("+dirty" if code.get("dirty") else "")


def resume_changes(run_dir: Path) -> list[str]:
    """'on resume at step N: ...' for each later session whose code differs from the start's."""
    record = load(run_dir)
    if not record:
        return []
    first = record["sessions"][0]["code"].get("files", {})
    out = []
    for session in record["sessions"][1:]:
        changes = describe_changes(first, session.get("code", {}).get("files", {}))
        if changes:
            out.append(f"on resume at step {session.get('step')}: {shorten(changes, 2)}")
    return out


def code_differences(runs: dict) -> dict[str, str]:
    """{run: text} for the comparison table: the first run is the reference (its commit); each other run
    says 'same' or which source files differ from it; code changed by a resume is added."""
    paths = {name: run.path for name, run in runs.items()}
    reference = start_code(next(iter(paths.values()))) if paths else None
    out = {}
    for i, (name, path) in enumerate(paths.items()):
        code = start_code(path)
        if code is None:
            text = "unknown (no provenance.json)"
        elif i == 0:
            text = f"reference: {identity(code)}"
        elif reference is None:
            text = f"{identity(code)} (the reference's code is unknown)"
        else:
            text = shorten(describe_changes(reference.get("files", {}), code.get("files", {})), 3) or "same"
        out[name] = "; ".join([text, *resume_changes(path)])
    return out


# --- --code_diff RUN_A RUN_B -----------------------------------------------------------------------------
def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _from_git(run_dir: Path, code: dict, path: str, root: Path) -> bytes | None:
    """path at the run's commit with the run's code.diff applied, or None when git cannot give it."""
    try:
        base = git(["show", f"{code['commit']}:./{path}"], root, raw=True) if code.get("commit") else None
    except GitUnavailable:  # not in that commit (an untracked file), or the commit is not here
        base = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / path
            if base is not None:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(base)
            patch = run_dir / code["diff"] if code.get("diff") else None
            if patch is not None and patch.is_file():
                git(["apply", f"--include={path}", str(patch.absolute())], Path(tmp),
                    env={"GIT_CEILING_DIRECTORIES": str(Path(tmp).parent)})  # apply as a plain patch, no repo
            return target.read_bytes() if target.is_file() else None
    except (GitUnavailable, OSError):
        return None


def file_as_run_saw_it(run_dir: Path, code: dict, path: str, root: Path = PROJECT_ROOT) -> bytes | None:
    """The bytes of `path` when the run started (b'' when it had no such file), or None when they cannot
    be rebuilt so that they match the recorded SHA-256."""
    want = code.get("files", {}).get(path)
    if want is None:
        return b""
    current = root / path
    if current.is_file() and _sha(current.read_bytes()) == want:
        return current.read_bytes()
    rebuilt = _from_git(run_dir, code, path, root)
    return rebuilt if rebuilt is not None and _sha(rebuilt) == want else None


def _why_not(code: dict) -> str:
    if not code.get("commit"):
        return "it ran outside git (only hashes were recorded)"
    if code.get("diff_left_out"):
        return f"its commit {code['commit'][:7]} is not in this repository, or the file was left out of its diff"
    return f"its commit {code['commit'][:7]} is not in this repository"


def code_diff(run_a: Path, run_b: Path, root: Path = PROJECT_ROOT) -> str:
    """A unified diff of the source files whose recorded SHA-256 differs between two runs' starts, each
    side rebuilt as its run saw it; files that cannot be rebuilt are named with the reason."""
    names = (Path(run_a).name, Path(run_b).name)
    codes = [start_code(run_a), start_code(run_b)]
    for name, code in zip(names, codes):
        if code is None:
            raise ValueError(f"run {name} has no provenance.json (it was made before code was recorded): "
                             f"its code is unknown")
    lines = [f"# code of {names[0]} ({identity(codes[0])}) -> {names[1]} ({identity(codes[1])}), as each started"]
    lines += [f"# {name}: code changed {change}" for name, path in zip(names, (run_a, run_b))
              for change in resume_changes(Path(path))]
    a_files, b_files = codes[0].get("files", {}), codes[1].get("files", {})
    changed = [p for p in sorted(set(a_files) | set(b_files)) if a_files.get(p) != b_files.get(p)]
    if not changed:
        return "\n".join(lines + ["# the same code: every source file has the same SHA-256"]) + "\n"
    lines.append(f"# {len(changed)} source file(s) differ; each side rebuilt from the current tree or from its "
                 f"commit + code.diff, checked against the recorded SHA-256")
    body = []
    for path in changed:
        a, b = (file_as_run_saw_it(Path(r), c, path, root) for r, c in zip((run_a, run_b), codes))
        missing = [f"{n}: {_why_not(c)}" for n, c, content in zip(names, codes, (a, b)) if content is None]
        if missing:
            lines.append(f"# {path}: differs, but its lines cannot be shown ({'; '.join(missing)})")
            continue
        try:
            a_text, b_text = a.decode("utf-8"), b.decode("utf-8")
        except UnicodeDecodeError:
            body.append(f"Binary file {path} differs\n")
            continue
        body += difflib.unified_diff(a_text.splitlines(keepends=True), b_text.splitlines(keepends=True),
                                     f"a/{path} ({names[0]})" if a_files.get(path) else "/dev/null",
                                     f"b/{path} ({names[1]})" if b_files.get(path) else "/dev/null")
        if body and not body[-1].endswith("\n"):
            body[-1] += "\n\\ No newline at end of file\n"
    return "\n".join(lines) + "\n" + "".join(body)
