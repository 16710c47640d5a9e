"""Write-then-rename, so a reader never sees a torn file and a failed run leaves no partial output."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

from relion_canon.io.output_dir import active_folder, disk_full


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``.

    The temporary file lives in the same directory so that ``os.replace`` is atomic
    (same filesystem). On any exception the temporary file is removed and ``target``
    is left as it was. A full disk (or the file-size limit) is reported as one line naming the device and
    ``target`` (an :class:`~relion_canon.errors.InputError`).

    Inside a job's output folder (:func:`relion_canon.io.output_dir.output_folder`) the write is part of the
    job's result set: refused if ``target`` is one of the job's inputs, undone if the job fails.
    """
    given = target
    # The folder is resolved before it is created: making the folders of an unresolved "a/../b" would also leave
    # a stray, empty "a". The name itself is kept, so a symlink there is replaced, not followed out of the folder.
    target = Path(target)
    target = target.parent.resolve() / target.name
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = active_folder(target)
    if folder is not None:
        folder.inputs.check([target])  # before the work of writing it, not only before the rename
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise disk_full(exc, given) or exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file as 0600; give it the mode a plain open() would (RELION projects are shared).
        os.chmod(tmp_path, 0o666 & ~_umask())
        if folder is not None:
            folder._before_write(target)
        os.replace(tmp_path, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        full = disk_full(exc, given)
        if full is not None:
            raise full from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
