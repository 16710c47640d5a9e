"""One writer per output folder, never an input overwritten, and a whole result set or none.

Every front door that writes a job's results (``relion-canon run``/``train``, the RELION External job, the
cryoSPARC job) opens its folder with :func:`output_folder`:

* **Refuse overwriting an input.** Outputs are compared with the inputs (the particle file, a passthrough
  ``.cs``, an applied model, the image stacks) by the file they are, through symlinks and hard links, before
  any work; every later write into the folder is checked again (:func:`relion_canon.io.atomic.atomic_path`).
* **A lock.** ``.relion_canon.lock`` is ``flock``-ed for the whole job and holds the PID and host; a second job
  into the folder is refused with one line naming them. The kernel drops the lock when its process dies, so
  the file a ``kill -9`` leaves never blocks. It is removed when the job ends.
* **Whole result sets.** Results are written straight to their final names (names inside the files, such as a
  class-average stack's, stay right), each atomically. Before a result replaces a file of an earlier run, that
  file is moved into ``.relion_canon.previous/``, and the name is recorded in ``.relion_canon.journal``. When
  the job succeeds both go; when it fails, the names it wrote are removed and the earlier files moved back.
  A killed job leaves the journal: the next job into the folder undoes it first, and :func:`check_finished`
  (``evaluate``) refuses the folder until then.
* **Resume state is not a result.** ``checkpoint.pt`` is written in place every epoch and kept when the job
  fails, so that running it again resumes.

Folders are reentrant within a thread: the External and cryoSPARC jobs open the folder, then ``run_job``
opens it again and writes into the same set, which they commit or undo as a whole.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import threading
from pathlib import Path
from typing import Iterable, Iterator

from relion_canon.errors import InputError

LOCK_FILE = ".relion_canon.lock"
JOURNAL_FILE = ".relion_canon.journal"
PREVIOUS_DIR = ".relion_canon.previous"
RESUME_STATE = frozenset({"checkpoint.pt"})
_OURS = frozenset({LOCK_FILE, JOURNAL_FILE, PREVIOUS_DIR})

_active: dict[Path, "OutputFolder"] = {}
_active_guard = threading.Lock()


class FolderBusy(InputError):
    """Another job holds the folder's lock."""


def _identity(path: str | os.PathLike) -> tuple[int, int] | None:
    """The file a path is (device, inode), through symlinks; None when there is none."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


class _Inputs:
    """The files a job reads, by identity, and the name each was given (for the message)."""

    def __init__(self) -> None:
        self.by_id: dict[tuple[int, int], str] = {}

    def add(self, paths: Iterable[str | os.PathLike | None]) -> None:
        for p in paths:
            if p is None:
                continue
            ident = _identity(p)
            if ident is not None:
                self.by_id.setdefault(ident, str(p))

    def check(self, outputs: Iterable[str | os.PathLike], choose: str = "output folder") -> None:
        for out in outputs:
            ident = _identity(out)
            if ident is not None and ident in self.by_id:
                given = self.by_id[ident]
                same = "" if os.path.abspath(given) == os.path.abspath(out) else f" ({given})"
                raise InputError(f"an output would overwrite this input file{same}, and inputs are never "
                                 f"modified: choose another {choose}", out)


def refuse_overwrite(outputs: Iterable[str | os.PathLike], inputs: Iterable[str | os.PathLike | None],
                     choose: str = "output folder") -> None:
    """Raise :class:`InputError` naming the first output that is one of the ``inputs`` (resolved: a symlink and
    its target, or two hard links, are the same file). Outputs that do not exist yet overwrite nothing.
    ``choose`` says what the user should change (``"output file (--o)"``)."""
    known = _Inputs()
    known.add(inputs)
    known.check(outputs, choose)


def stack_files(star, project_dir: str | os.PathLike | None = None) -> list[Path]:
    """The image stacks a particle table names, found as reading them finds them."""
    from relion_canon.io.imagename import resolve_path

    if "rlnImageName" not in star.particles.columns:
        return []
    names = star.particles["rlnImageName"].astype(str).str.split("@", n=1).str[-1].unique()
    star_dir = Path(star.path).parent if star.path else None
    project = Path(project_dir) if project_dir else None
    return [p for p in (resolve_path(str(n), star_dir, project) for n in names) if p is not None]


def disk_full(exc: BaseException, path: str | os.PathLike) -> InputError | None:
    """The one-line error for a write that failed for want of space (or over the file-size limit), else None."""
    if not isinstance(exc, OSError) or exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return None
    where = _device_of(Path(path))
    if exc.errno == errno.EFBIG:
        return InputError(f"file too large for {where} (over the file size limit) while writing {path}")
    return InputError(f"no space left on {where} while writing {path}")


def _device_of(path: Path) -> str:
    """``/dev/sda1 (mounted at /data)``: the file system a path is on, as ``df`` names it."""
    here = Path(os.path.abspath(path))
    while not here.exists() and here != here.parent:
        here = here.parent
    mount = here
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    source = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            fields = line.split()
            if len(fields) > 1 and fields[1] == str(mount):
                source = fields[0]  # the last one listed is the one in effect
    return f"{source} (mounted at {mount})" if source else f"the device mounted at {mount}"


def check_finished(folder: str | os.PathLike) -> None:
    """Refuse a folder whose job is still running or was killed before it finished (its set is incomplete)."""
    folder = Path(folder)
    journal = folder / JOURNAL_FILE
    if journal.exists():
        raise InputError(f"the job writing this folder is still running or was stopped before it finished "
                         f"({journal.name} is there): its results are incomplete; run the job again to finish it",
                         folder)


class OutputFolder:
    """An output folder held by this process: see the module docstring. Use :func:`output_folder`."""

    def __init__(self, path: Path, inputs: _Inputs, outputs: list[str]):
        self.path = path
        self.resolved = path.resolve()
        self.inputs = inputs
        self.outputs = outputs  # the names the job will write, checked against every input it is shown
        self.written: list[str] = []
        self.moved: list[str] = []  # earlier files now in PREVIOUS_DIR
        self.recovered = False  # an interrupted job's journal was found and undone
        self.closed = False
        self.owner = threading.get_ident()
        self._lock_fd: int | None = None
        self._created: list[Path] = []

    # --- what the job calls -------------------------------------------------------------------------------------
    def protect(self, paths: Iterable[str | os.PathLike | None]) -> None:
        """More input files (e.g. the stacks, once the particles are read): refuse now if an output is one."""
        self.inputs.add(paths)
        self.inputs.check(self.path / name for name in self.outputs)

    def claim(self, name: str) -> None:
        """``name`` will be written by something other than :func:`atomic_path` (another process): treat it as
        written by this job, the earlier file set aside."""
        self._before_write(self.resolved / name)

    def remove(self, name: str) -> None:
        """An earlier run's result this run does not make: out of the set (back if this run fails)."""
        target = self.resolved / name
        if name in self.written or not target.exists() or _identity(target) in self.inputs.by_id:
            return
        self._set_aside(name)
        self._save_journal()

    def commit(self) -> None:
        """This run's files are the folder's result set: the earlier files go."""
        if self.closed:
            return
        self.closed = True
        shutil.rmtree(self.resolved / PREVIOUS_DIR, ignore_errors=True)
        (self.resolved / JOURNAL_FILE).unlink(missing_ok=True)

    def rollback(self) -> None:
        """Remove what this run wrote and put the earlier files back; checkpoint.pt stays (resume state)."""
        if self.closed:
            return
        self.closed = True
        self._undo(self.written)
        if self._created and not any(p.name not in _OURS for p in self.resolved.iterdir()):
            self._release()
            for folder in self._created:  # innermost first; only folders this run made, only when empty
                with contextlib.suppress(OSError):
                    folder.rmdir()

    # --- atomic_path's side -----------------------------------------------------------------------------------
    def _before_write(self, target: Path) -> None:
        self.inputs.check([target])
        name = target.name
        if name in RESUME_STATE or name in self.written:
            return
        if target.exists() or target.is_symlink():
            self._set_aside(name)
        self.written.append(name)
        self._save_journal()

    def _set_aside(self, name: str) -> None:
        previous = self.resolved / PREVIOUS_DIR
        previous.mkdir(exist_ok=True)
        if not (previous / name).exists():  # the earliest file of that name is the one to put back
            os.replace(self.resolved / name, previous / name)
            self.moved.append(name)
        else:
            (self.resolved / name).unlink(missing_ok=True)

    def _save_journal(self) -> None:
        text = json.dumps({"pid": os.getpid(), "written": self.written, "moved": self.moved}, indent=1)
        tmp = self.resolved / f"{JOURNAL_FILE}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.resolved / JOURNAL_FILE)

    def _undo(self, written: Iterable[str]) -> None:
        for name in written:
            (self.resolved / name).unlink(missing_ok=True)
        previous = self.resolved / PREVIOUS_DIR
        if previous.is_dir():
            for p in previous.iterdir():
                os.replace(p, self.resolved / p.name)
            previous.rmdir()
        (self.resolved / JOURNAL_FILE).unlink(missing_ok=True)
        (self.resolved / f"{JOURNAL_FILE}.tmp").unlink(missing_ok=True)

    def _recover(self) -> None:
        """Undo what a killed job left half done (its journal is the list)."""
        journal = self.resolved / JOURNAL_FILE
        written: list[str] = []
        if journal.exists():
            with contextlib.suppress(OSError, ValueError, TypeError):
                written = [str(n) for n in json.loads(journal.read_text()).get("written", [])]
            self.recovered = True
        if journal.exists() or (self.resolved / PREVIOUS_DIR).exists():
            self._undo(n for n in written if n not in RESUME_STATE and "/" not in n)

    # --- the lock -----------------------------------------------------------------------------------------------
    def _acquire(self) -> None:
        path = self.resolved / LOCK_FILE
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").split()
                os.close(fd)
                who = "an unknown process" if not holder else f"PID {holder[0]}" + (
                    f" on {holder[1]}" if len(holder) > 1 else "")
                raise FolderBusy(f"output folder in use by another relion_canon job ({who}); wait for it to end or "
                                 "choose another output folder", self.path) from None
            # The holder before us removes the file as it ends: a lock on a removed file locks nothing.
            if _same_inode(path, fd):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        self._lock_fd = fd

    def _release(self) -> None:
        if self._lock_fd is None:
            return
        (self.resolved / LOCK_FILE).unlink(missing_ok=True)  # while still held: see _acquire
        os.close(self._lock_fd)
        self._lock_fd = None


def _same_inode(path: Path, fd: int) -> bool:
    st = os.fstat(fd)
    return _identity(path) == (st.st_dev, st.st_ino)


def active_folder(target: Path) -> OutputFolder | None:
    """The folder held by this process that ``target`` (parent resolved) is directly in, if any."""
    if not _active:
        return None
    with _active_guard:
        folder = _active.get(target.parent)
    return None if folder is None or folder.closed else folder


@contextlib.contextmanager
def output_folder(path: str | os.PathLike, *, inputs: Iterable[str | os.PathLike | None] = (),
                  outputs: Iterable[str] = ()) -> Iterator[OutputFolder]:
    """Hold ``path`` as a job's output folder (created if need be): see the module docstring.

    ``inputs`` are the files the job reads; ``outputs`` the names it will write there (checked against the
    inputs now, and against inputs given later to :meth:`OutputFolder.protect`). On leaving, the set is
    committed, or undone if an exception leaves the block, unless :meth:`~OutputFolder.commit` or
    :meth:`~OutputFolder.rollback` was called first. Raises :class:`FolderBusy` when another job holds it.
    """
    path = Path(path)
    with _active_guard:
        outer = _active.get(path.resolve()) if path.exists() else None
    if outer is not None and outer.owner == threading.get_ident() and not outer.closed:
        outer.inputs.add(inputs)
        outer.outputs.extend(outputs)
        outer.inputs.check(outer.path / name for name in outer.outputs)
        yield outer  # the outer holder commits or undoes the whole set
        return
    known = _Inputs()
    known.add(inputs)
    outputs = list(outputs)
    if path.exists() and not path.is_dir():
        raise InputError("the output folder is a file", path)
    known.check(path / name for name in outputs)
    folder = OutputFolder(path, known, outputs)
    folder._created = _make_folders(path)
    folder.resolved = path.resolve()
    try:
        folder._acquire()
    except BaseException:
        for made in folder._created:
            with contextlib.suppress(OSError):
                made.rmdir()
        raise
    with _active_guard:
        _active[folder.resolved] = folder
    try:
        folder._recover()
        try:
            yield folder
        except BaseException:
            folder.rollback()
            raise
        folder.commit()
    finally:
        with _active_guard:
            _active.pop(folder.resolved, None)
        folder._release()


def _make_folders(path: Path) -> list[Path]:
    """Create ``path`` and its missing parents; the ones made, innermost first. Resolved first, as atomic_path
    does: making the folders of an unresolved ``a/../b`` would also leave a stray, empty ``a``."""
    missing = []
    path = path.resolve()
    here = path
    while not here.exists():
        missing.append(here)
        here = here.parent
    path.mkdir(parents=True, exist_ok=True)
    return missing
