"""Peak memory of cloning a git context with a big history: ``python -m bench.contexts``.

The issue's bar: cloning a repository with a 500 MB history stays under 200 MB of peak memory
(kaniko's in-process go-git has run out of memory doing it, kaniko #2491). This writes a bare
repository of ``--history-mib`` MiB in a temporary directory (one commit per MiB of random,
incompressible data spread over 20 files, so every version stays in the pack), serves it with
``git daemon`` on loopback, and fetches it the way a build does (``executor.contexts.fetch``,
in a fresh interpreter) for each scenario. Memory is measured three ways:

- ``kiln``: the interpreter's own peak RSS;
- ``largest child``: the peak RSS of its largest child process (git clone, index-pack, ...);
- ``tree``: the largest sum of the RSS of the interpreter and all its descendants, sampled
  every 20 ms, which is what a container's memory limit sees.

With dulwich installed it also runs ``dulwich.porcelain.clone``, the in-process alternative.
Everything it creates is removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

_KILN = """
import json, os, resource, sys, time
from pathlib import Path
from executor.contexts import fetch
from executor.options import GitOptions
start = time.monotonic()
fetch(sys.argv[1], Path(sys.argv[2]), GitOptions())
print(json.dumps({"seconds": time.monotonic() - start,
                  "self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "child_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""

_DULWICH = """
import io, json, resource, sys, time
from dulwich import porcelain
start = time.monotonic()
porcelain.clone(sys.argv[1], sys.argv[2], errstream=io.BytesIO())
print(json.dumps({"seconds": time.monotonic() - start,
                  "self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "child_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def write_history(repo: Path, history_mib: int, files: int = 20) -> str:
    """A bare repository whose history holds ``history_mib`` MiB of random blobs; its tip."""
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(repo)], check=True)
    proc = subprocess.Popen(["git", "-C", str(repo), "fast-import", "--quiet"],
                            stdin=subprocess.PIPE)
    assert proc.stdin is not None
    out = proc.stdin
    dockerfile = b"FROM scratch\nCOPY Dockerfile /\n"
    for i in range(history_mib):
        message = f"commit {i}\n".encode()
        out.write(b"commit refs/heads/main\n")
        out.write(f"committer bench <bench@example.com> {1_700_000_000 + i} +0000\n".encode())
        out.write(b"data %d\n%s" % (len(message), message))
        data = os.urandom(1 << 20)
        out.write(f"M 100644 inline data/file{i % files:02d}.bin\n".encode())
        out.write(b"data %d\n%s\n" % (len(data), data))
        if i == 0:
            out.write(b"M 100644 inline Dockerfile\ndata %d\n%s\n" % (len(dockerfile),
                                                                        dockerfile))
    out.close()
    if proc.wait() != 0:
        raise RuntimeError("git fast-import failed")
    subprocess.run(["git", "-C", str(repo), "repack", "-a", "-d", "-q"], check=True)
    return subprocess.run(["git", "-C", str(repo), "rev-parse", "main~1"], check=True,
                          capture_output=True, text=True).stdout.strip()


def _rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def measure(code: str, args: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run ``code`` in a fresh interpreter; its JSON result plus the sampled tree peak."""
    import json

    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, sum(_rss_kib(pid) for pid in _descendants(proc.pid)))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(stderr.strip().splitlines()[-1] if stderr.strip() else "failed")
    result: dict[str, float] = json.loads(stdout.strip().splitlines()[-1])
    result["tree_mb"] = peak / 1024
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--history-mib", type=int, default=500)
    parser.add_argument("--no-dulwich", action="store_true", help="skip the dulwich row")
    args = parser.parse_args()
    from tests.support.context_servers import GitDaemon

    workdir = Path(tempfile.mkdtemp(prefix="kiln-bench-contexts-"))
    try:
        start = time.monotonic()
        older = write_history(workdir / "repos" / "big.git", args.history_mib)
        pack = sum(p.stat().st_size for p in (workdir / "repos").rglob("*.pack"))
        print(f"history: {args.history_mib} commits, pack {pack / 1e6:.0f} MB, written in "
              f"{time.monotonic() - start:.0f} s")
        env = {**os.environ, "GIT_PULL_METHOD": "git"}
        rows: list[tuple[str, dict[str, float] | str]] = []
        with GitDaemon(workdir / "repos") as daemon:
            url = f"{daemon.url}/big.git"
            scenarios = [("kiln git://…/big.git (tip of main)", _KILN, url),
                         ("kiln git://…/big.git#refs/heads/main#<commit>", _KILN,
                          f"{url}#refs/heads/main#{older}")]
            if not args.no_dulwich:
                try:
                    import dulwich  # noqa: F401
                    scenarios.append(("dulwich porcelain.clone (for comparison)", _DULWICH,
                                      url))
                except ImportError:
                    pass
            for i, (name, code, source) in enumerate(scenarios):
                target = workdir / f"clone{i}"
                target.mkdir()
                try:
                    rows.append((name, measure(code, [source, str(target)], env)))
                except RuntimeError as exc:
                    rows.append((name, str(exc)))
                shutil.rmtree(target, ignore_errors=True)
        print(f"{'scenario':48} {'seconds':>8} {'kiln MB':>8} {'largest child MB':>17} "
              f"{'tree MB':>8}")
        for name, result in rows:
            if isinstance(result, str):
                print(f"{name:48} failed: {result}")
                continue
            print(f"{name:48} {result['seconds']:8.1f} {result['self_mb']:8.0f} "
                  f"{result['child_mb']:17.0f} {result['tree_mb']:8.0f}")
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
