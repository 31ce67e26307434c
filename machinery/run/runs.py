"""Run folders in trained/: finding them by name, their description (the two configs), and the lock a
training run holds on its folder.

trained/<model_name>/
    train_config.json, model_config.json   the run's description; model_config.json, written last, is what
                                           makes a folder a run, so a kill while writing leaves no half run
trained/.<model_name>.lock                 held (flock) by the training process for the run's lifetime; beside
                                           the folder, so taking it creates nothing a torchrun rank or
                                           --overwrite could trip over, and copying a run leaves it behind

A run is found by name only inside trained/ (TEMPLATEGPT_TRAINED_DIR moves it): a link in trained/ that
leads elsewhere, or a name that could not be looked up again, is refused before anything is written.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from config import RUN_NAME, ModelConfig, TrainConfig
from machinery import PROJECT_ROOT as ROOT
from machinery.fileio import remove_stale_temps, reported_writes, write_json
from machinery.own_folders import check_replaceable, remove_own_folder
from machinery.run.checkpoint import latest_checkpoint
from machinery.run.setup import TrainingError

MODEL_CONFIG, TRAIN_CONFIG = "model_config.json", "train_config.json"


def trained_dir() -> Path:
    """Where runs live: trained/ next to the code, or $TEMPLATEGPT_TRAINED_DIR (read at every call)."""
    return Path(os.environ.get("TEMPLATEGPT_TRAINED_DIR", ROOT / "trained")).expanduser().absolute()


def list_runs(folder: Path | None = None) -> list[str]:
    """Names of the run folders in trained/ (real folders holding a model_config.json)."""
    folder = Path(folder or trained_dir())
    return sorted(p.parent.name for p in folder.glob(f"*/{MODEL_CONFIG}") if not p.parent.is_symlink())


def check_run_name(name: str) -> str:
    if not isinstance(name, str) or not RUN_NAME.fullmatch(name):
        raise ValueError(f"run name {name!r} is invalid: use 1-100 letters, digits and . _ - + =, not "
                         f"starting with '.' or '-', so the run can be found again by name")
    return name


def run_dir_for(name: str) -> Path:
    """trained/<name> for a run about to be created or continued. Refuses a name that could not be looked up
    again and a path that is a link or a file (writing through it would land outside trained/)."""
    return _real_folder_or_absent(trained_dir() / check_run_name(name))


def _real_folder_or_absent(path: Path) -> Path:
    if path.is_symlink():
        target = f"{os.readlink(path)}{'' if path.exists() else ', which does not exist'}"
        raise ValueError(f"{path} is a symbolic link (to {target}): runs must be real folders inside "
                         f"{trained_dir()}, so nothing is read or written through it; remove the link or use "
                         f"another name")
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file, not a run folder: remove it or use another name")
    return path


def is_path(text: str) -> bool:
    """Whether a run is given as a path (a '/' or '\\', or a leading '.' or '~') rather than a name in trained/."""
    return "/" in text or "\\" in text or text.startswith((".", "~"))


def resolve_run(name_or_path: str | Path) -> Path:
    """The folder of an existing run. A bare name means trained/<name>; anything with a '/' (or '\\', or
    starting with '.' or '~') is a path. A name never reaches outside trained/."""
    text = str(name_or_path)
    if is_path(text):
        path = Path(text).expanduser().absolute()
        if path.parent.resolve() == trained_dir().resolve():  # trained/x spelled as a path: no links
            path = _real_folder_or_absent(path)
        if not path.is_dir():
            raise FileNotFoundError(f"run folder {path} does not exist")
    else:
        path = run_dir_for(text)
        if not path.is_dir():
            runs = ", ".join(list_runs()) or "(none yet: train one with python train.py)"
            raise FileNotFoundError(f"no model named {text!r} in {trained_dir()}; models there: {runs}")
    check_run_files(path)
    if not (path / MODEL_CONFIG).is_file():
        if (path / TRAIN_CONFIG).is_file():
            raise FileNotFoundError(f"{path} is an incomplete run: it has {TRAIN_CONFIG} but no {MODEL_CONFIG} (its "
                                    f"start was interrupted) and no weights; start it again with the train.py "
                                    f"command that made it plus --overwrite")
        raise FileNotFoundError(f"{path} is not a run folder: it has no {MODEL_CONFIG}")
    return path


# A run's own files and folders: each must be a real one inside the run folder, never a link to elsewhere
RUN_FILES = (MODEL_CONFIG, TRAIN_CONFIG, "model.safetensors", "log_data.csv", "train_loss.csv", "training_curves.png",
             "provenance.json", "summary.json")
RUN_FOLDERS = ("checkpoints", "tensorboard", "wandb", "eval")


def check_run_files(run_dir: Path) -> None:
    """Refuse a run whose configs, weights, log or tracker folders are symbolic links or not regular files
    (folders): nothing of a run is read or written through a link, which could lead anywhere."""
    for name in RUN_FILES + RUN_FOLDERS:
        path = Path(run_dir) / name
        if path.is_symlink():
            raise ValueError(f"{path} is a symbolic link (to {os.readlink(path)}): a run's files must be its own, "
                             f"so nothing is read or written through it; put the real "
                             f"{'folder' if name in RUN_FOLDERS else 'file'} there instead of the link")
        if path.exists() and not (path.is_dir() if name in RUN_FOLDERS else path.is_file()):
            raise ValueError(f"{path} is not a regular {'folder' if name in RUN_FOLDERS else 'file'}: move it away")


# --- the run's description -------------------------------------------------------------------------------
def write_description(run_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig) -> None:
    """Write both configs so the description is complete or absent: train_config.json first, then
    model_config.json, the file that makes the folder a run."""
    write_json(Path(run_dir) / TRAIN_CONFIG, train_cfg.to_dict())
    write_json(Path(run_dir) / MODEL_CONFIG, model_cfg.to_dict())


def open_run_folder(run_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, resume: bool, overwrite: bool,
                    start_tracker) -> None:
    """Make the run folder ready to train into: replace it (--overwrite), write its description, start the
    tracker (start_tracker()). A resumed run starts its tracker before its description changes; a new run that
    fails here (a tracker that cannot start, a full disk) is removed again, since this process wrote all of it:
    a failed start leaves no half run in the way of the next try."""
    run_dir = Path(run_dir)
    if resume:
        start_tracker()
        write_description(run_dir, model_cfg, train_cfg)
        return
    if overwrite and run_dir.exists():
        clear_run(run_dir)
    try:
        write_description(run_dir, model_cfg, train_cfg)
        start_tracker()
    except Exception:
        if run_dir.is_dir() and not run_dir.is_symlink():
            shutil.rmtree(run_dir, ignore_errors=True)  # ours: created a moment ago (or emptied by --overwrite)
        raise


def load_configs(run_dir: Path) -> tuple[ModelConfig, TrainConfig]:
    """The configs saved with a run (fields added since then take their defaults). A run whose description is
    incomplete (one file missing) is refused: guessing the other half would train or sample the wrong run."""
    run_dir = Path(run_dir)
    check_run_files(run_dir)
    missing = [name for name in (MODEL_CONFIG, TRAIN_CONFIG) if not (run_dir / name).is_file()]
    if missing:
        raise ValueError(f"the description of run {run_dir} is incomplete: {' and '.join(missing)} missing "
                         f"(was it killed while being created?); start it again with --overwrite")
    try:
        model_kw = json.loads((run_dir / MODEL_CONFIG).read_text())
        train_kw = json.loads((run_dir / TRAIN_CONFIG).read_text())
        return ModelConfig.from_dict(model_kw), TrainConfig.from_dict(train_kw)  # old field names map to new
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError) as e:
        raise ValueError(f"the configs in {run_dir} are corrupt or from an incompatible version: {e}") from None


def clear_run(run_dir: Path) -> None:
    """Delete a run folder for --overwrite (the caller holds its lock): only a run (or an empty folder), never a
    link, a file or a folder holding anything else of value (machinery/own_folders.py)."""
    remove_own_folder(run_dir, "run")


# --- one training process per run ------------------------------------------------------------------------
class RunLockedError(ValueError):
    """Another live process holds the run's lock."""


class RunLock:
    """An exclusive lock on a run folder, held while a training process writes it (and on a sweep's folder,
    held by sweep.py: RunLock(folder, what="sweep")):

        with RunLock(run_dir):
            ...train...

    flock on an open file: the kernel releases it when the process ends in any way (kill -9 included), so a
    lock file left behind by a dead process is simply taken over. The file records pid and host for the
    message a second process gets. Taking the lock also removes temp files that killed writes left."""

    def __init__(self, run_dir: Path, what: str = "run"):
        self.run_dir, self.what, self._file = Path(run_dir), what, None  # what: 'run', or 'sweep' (sweep.py)
        self.path = self.run_dir.parent / f".{self.run_dir.name}.lock"

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # Windows: no flock; one process per run is then up to you
            return self
        with reported_writes(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            while True:
                handle = open(self.path, "a+")
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    handle.close()
                    raise RunLockedError(f"{self.what} {self.run_dir} is in use by {holder}: wait for it to "
                                         f"finish or stop it first (two processes would interleave its files)") \
                        from None
                try:  # the previous holder may have deleted the file between our open and our lock
                    same = os.stat(self.path).st_ino == os.fstat(handle.fileno()).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                handle.close()
            handle.seek(0)
            handle.truncate()
            command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:200] if sys.argv and sys.argv[0] else "python"
            handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')} "
                         f"({command})")
            handle.flush()
        self._file = handle
        for folder in (self.run_dir, self.run_dir / "checkpoints"):
            if folder.is_dir() and not folder.is_symlink():
                remove_stale_temps(folder)
        return self

    def release(self) -> None:
        """Drop the lock and delete its file (a file left by a killed process is harmless: see acquire)."""
        if self._file is None:
            return
        self.path.unlink(missing_ok=True)
        self._file.close()  # closing releases the flock
        self._file = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def has_checkpoint(run_dir: Path) -> bool:
    """Whether the run has a checkpoint to resume from (a damaged one counts: --resume names it)."""
    try:
        return latest_checkpoint(run_dir) is not None
    except ValueError:
        return True


def restartable(run_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig) -> bool:
    """--resume=auto on a folder without a checkpoint: True (start it again) when it is this very run, killed
    before its first checkpoint; any other folder is refused, so auto never replaces a different or finished run."""
    saved_model, saved_train = load_configs(run_dir)  # an incomplete description is refused, naming the fix
    changed = [f"{name}: {old!r} -> {new!r}" for saved, cfg in ((saved_model, model_cfg), (saved_train, train_cfg))
               for name, old in saved.to_dict().items() if old != (new := cfg.to_dict()[name])]
    if changed:
        raise TrainingError(f"{run_dir} exists without a checkpoint and was started with other settings "
                            f"({'; '.join(changed[:3])}): --resume=auto does not replace it. Give another "
                            f"--model_name, or --overwrite to replace it")
    from machinery.run.run_log import RunLog
    if any(int(r["step"]) >= train_cfg.max_iters for r in RunLog.resume(run_dir / "log_data.csv", 2**62).rows):
        raise TrainingError(f"{run_dir} already reached max_iters={train_cfg.max_iters} and has no checkpoint to "
                            f"continue from: it is finished (--overwrite trains it again)")
    return True


def check_run_folder(run_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, resume: bool,
                     overwrite: bool) -> Path | None:
    """Refuse, before anything changes, a start that would replace a run unasked or a resume that would not
    continue the same run. Returns the checkpoint to resume from (None for a fresh start)."""
    if not resume:
        check_replaceable(run_dir, "run")  # only a run may be replaced: never a link, a file or anything else
        if run_dir.exists() and not overwrite:
            raise TrainingError(f"{run_dir} already exists: {_what_can_be_done(run_dir)}, or choose another "
                                f"--model_name")
        return None
    if overwrite:
        raise TrainingError("--resume continues a run and --overwrite deletes it: give one of them")
    saved_model, saved_train = load_configs(run_dir)  # refuses an incomplete description
    changed = [f"{f.name}: {getattr(saved_model, f.name)!r} -> {getattr(model_cfg, f.name)!r}"
               for f in dataclasses.fields(ModelConfig) if getattr(saved_model, f.name) != getattr(model_cfg, f.name)]
    if changed:
        raise TrainingError(f"--resume cannot change the architecture ({'; '.join(changed)}): the saved weights "
                            f"belong to the old one. Start a new run from it with --config={run_dir.name}")
    if train_cfg.optimizer != saved_train.optimizer:
        raise TrainingError(f"--resume cannot switch the optimizer from {saved_train.optimizer!r} to "
                            f"{train_cfg.optimizer!r}: the checkpoint holds {saved_train.optimizer}'s state")
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise TrainingError(f"{run_dir} has no complete checkpoint to resume from, so --resume changed nothing. "
                            f"Start it again with --overwrite (this replaces it) or choose another --model_name")
    return checkpoint


def _what_can_be_done(run_dir: Path) -> str:
    """The options that really work on an existing run folder (check_replaceable has passed)."""
    missing = [name for name in (MODEL_CONFIG, TRAIN_CONFIG) if not (run_dir / name).is_file()]
    if len(missing) == 2:
        return "it is an empty folder: --overwrite uses it"
    if missing:
        return f"its description is incomplete ({missing[0]} missing), so it cannot be resumed: --overwrite replaces it"
    try:
        resumable = latest_checkpoint(run_dir) is not None
    except ValueError:
        resumable = True  # damaged: --resume names it and the older one to use
    return ("add --resume to continue it, --overwrite to replace it" if resumable else
            "it has no checkpoint to resume from: --overwrite replaces it")
