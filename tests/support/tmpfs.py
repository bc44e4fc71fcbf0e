"""Running a command with a small tmpfs mounted somewhere, to meet a full disk on purpose.

The tmpfs is mounted in a private mount namespace (``unshare --mount --propagation private``),
so nothing outside the command sees it and nothing is left mounted when it ends, whatever
happens. What the tmpfs holds when the command ends is listed into a file, since the test cannot
look into the namespace afterwards.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.support.kiln import ExecutorRun, run_spawning
from tests.support.runtime import require_tool

# $1 size, $2 mount point, $3 listing file, $4 "fill" to fill the tmpfs first; then the command.
_SCRIPT = """
size=$1; at=$2; listing=$3; fill=$4; shift 4
mkdir -p "$at" && mount -t tmpfs -o "size=$size,mode=0755" kiln-test-full "$at" || exit 99
if [ "$fill" = fill ]; then head -c 1073741824 /dev/zero > "$at/.fill" 2>/dev/null; fi
"$@"; code=$?
(cd "$at" && find . -mindepth 1 ! -name .fill | sort) > "$listing"
exit $code
"""


@dataclass(frozen=True)
class FullDiskRun:
    """An executor run on a small tmpfs, and what the tmpfs held when it ended."""

    run: ExecutorRun
    left: list[str]  # paths under the mount point, as ./name


def executor_on_tmpfs(mount_at: Path, size: str, args: list[str], *, fill: bool = False,
                      timeout: float = 300) -> FullDiskRun:
    """``executor ARGS`` with a tmpfs of ``size`` (``512k``, ``4m``) mounted at ``mount_at``,
    filled to the brim first with ``fill``."""
    require_tool("unshare", "util-linux")
    listing = mount_at.parent / f".{mount_at.name}.listing"
    cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", _SCRIPT, "sh", size,
           str(mount_at), str(listing), "fill" if fill else "-",
           sys.executable, "-m", "executor.cli", *args]
    proc = run_spawning(cmd, capture_output=True, text=True, timeout=timeout, check=False,
                        stdin=subprocess.DEVNULL)
    assert proc.returncode != 99, f"could not mount a tmpfs at {mount_at}: {proc.stderr}"
    left = listing.read_text().split() if listing.exists() else []
    return FullDiskRun(ExecutorRun(proc.returncode, proc.stdout, proc.stderr), left)
