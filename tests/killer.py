"""Kill this process with SIGKILL at a chosen moment: the n-th call of a function. For stages too
fast to catch from outside (a training pass's last saves, a findings write), the test's subprocess
arms this on itself, so the kill lands exactly between two steps, every time."""
from __future__ import annotations

import os
import signal
from typing import Any


def kill_on_call(owner: Any, name: str, n: int, *, before: bool = True) -> None:
    """Replace ``owner.name`` so that its ``n``-th call SIGKILLs the process (``before`` the call
    runs, or just after it returned)."""
    original = getattr(owner, name)
    calls = [0]

    def armed(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if before and calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        out = original(*args, **kwargs)
        if not before and calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    setattr(owner, name, armed)


def arm_from_argv(argv: list[str], owners: dict[str, Any]) -> None:
    """Arm from a command-line word ``kill=NAME:N[:after]`` (NAME a key of ``owners`` then ``.attr``),
    e.g. ``kill=saes._publish:3``; nothing happens without one."""
    for word in argv:
        if word.startswith("kill="):
            target, n, *when = word.removeprefix("kill=").split(":")
            owner, attr = target.rsplit(".", 1)
            kill_on_call(owners[owner], attr, int(n), before=when != ["after"])
