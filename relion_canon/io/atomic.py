"""Write-then-rename, so a reader never sees a torn file and a failed run leaves no partial output."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``.

    The temporary file lives in the same directory so that ``os.replace`` is atomic
    (same filesystem). On any exception the temporary file is removed and ``target``
    is left as it was.
    """
    # The folder is resolved before it is created: making the folders of an unresolved "a/../b" would also leave
    # a stray, empty "a". The name itself is kept, so a symlink there is replaced, not followed out of the folder.
    target = Path(target)
    target = target.parent.resolve() / target.name
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file as 0600; give it the mode a plain open() would (RELION projects are shared).
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
