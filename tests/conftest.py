"""Every test reads only what is inside the repository: a file beside the clone (``../shared``, say)
is refused the moment a test opens it, so a suite that passes here passes on a bare clone too."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_ROOT = str(ROOT)
_PARENT = str(ROOT.parent)


def beside_the_clone(path: str) -> bool:
    """Whether ``path`` (absolute, normalised) is a sibling of the repository or inside one.

    Hidden entries beside the clone (a home directory's ``.cache``, ``.netrc``...) are the tools'
    own, not test input; and a clone at the file system's root has nothing beside it to read.
    """
    if _PARENT == os.sep or not path.startswith(_PARENT + os.sep):
        return False
    if path == _ROOT or path.startswith(_ROOT + os.sep):
        return False
    first = path[len(_PARENT) + 1 :].split(os.sep, 1)[0]
    return not first.startswith(".")


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event != "open" or not args:
        return
    target = args[0]
    if isinstance(target, int) or target is None:
        return
    try:
        name = os.fsdecode(target)  # type: ignore[arg-type]
    except TypeError:
        return
    path = os.path.normpath(os.path.join(os.getcwd(), name))
    if beside_the_clone(path):
        raise PermissionError(
            f"a test opened {path}, outside the repository ({_ROOT}); copy what tests need into it"
        )


sys.addaudithook(_audit)
