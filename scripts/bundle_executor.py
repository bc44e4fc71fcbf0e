"""Make ``/kaniko`` a self-contained kiln: interpreter, stdlib, packages and every shared library.

Run by ``Dockerfile.executor`` in its build stage, with the Debian python3 that created
``--venv`` (kiln installed into it). In-place builds extract arbitrary base images over ``/``
(busybox/musl, debian/glibc, distroless, scratch), so nothing the running executor needs may
live outside ``/kaniko``: not the dynamic loader, not libc, not the stdlib (kaniko #2764).

Layout written under DEST (normally ``/kaniko``)::

    bin/python3          the interpreter; PT_INTERP and DT_RPATH patched to DEST/lib
    lib/ld-linux-x86-64.so.2, lib/libc.so.6, ...   every library ldd finds for the interpreter
                         and for every extension module
    lib/python3.X/       stdlib (no tests, no tkinter, no static libpython)
    lib/python3.X/site-packages/   kiln and its dependencies (no pip, no setuptools)
    executor             ``#!DEST/bin/python3 -IS`` launcher: the kernel runs it, no /bin/sh
    warmer               the same for ``executor.warmer`` (kaniko's /kaniko/warmer)
    docker-credential-*  credential helpers given with ``--helper`` (ECR's, as in kaniko's image)

The interpreter is patched with ``patchelf`` rather than started through ``ld.so
--library-path`` from a wrapper: then the interpreter is runnable on its own (``sys.executable``
works), the kernel's ``#!`` handling makes ``executor`` need no shell, and DT_RPATH (unlike
DT_RUNPATH) also applies to the libraries extension modules load later with ``dlopen``.
``-I`` ignores PYTHON* variables a user or a base image sets; ``-S`` skips ``site``, whose
Debian patch would look for ``dist-packages`` under /usr; the launcher sets ``sys.path`` itself.

Stdlib only: this runs before kiln is importable anywhere.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

#: Parts of the stdlib an image builder never imports; about half its size.
STDLIB_SKIP = {"test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data",
               "site-packages", "dist-packages", "unittest", "turtle.py", "__phello__"}
#: Installed packages that only install packages.
SITE_SKIP = {"pip", "setuptools", "_distutils_hack", "pkg_resources", "distutils-precedence.pth"}
#: Loaded by glibc itself with dlopen (name lookups), so ldd never lists them.
GLIBC_DLOPENED = ("libnss_files.so.2", "libnss_dns.so.2", "libresolv.so.2")

_LDD_LINE = re.compile(r"^\s*(?:(\S+)\s+=>\s+)?(/\S+)\s+\(0x[0-9a-f]+\)$")


def shared_libraries(elf: Path) -> dict[str, Path]:
    """soname -> file of every library ``elf`` loads (``ldd``), the dynamic loader included."""
    proc = subprocess.run(["ldd", str(elf)], capture_output=True, text=True, check=False)
    if "not a dynamic executable" in proc.stdout + proc.stderr:
        return {}
    if proc.returncode != 0 or "not found" in proc.stdout:
        raise SystemExit(f"ldd {elf} failed:\n{proc.stdout}{proc.stderr}")
    found: dict[str, Path] = {}
    for line in proc.stdout.splitlines():
        match = _LDD_LINE.match(line)
        if match:
            name, path = match.group(1), Path(match.group(2))
            found[name or path.name] = path
    return found


def is_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def copy_tree(src: Path, dest: Path, skip: set[str]) -> None:
    shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True,
                    ignore=lambda _d, names: [n for n in names if n in skip])


def bundle(venv: Path, dest: Path, patchelf: str, at: Path | None = None,
           helpers: tuple[Path, ...] = ()) -> None:
    """Fill ``dest``; ``at`` is where it will be seen when run (default: ``dest`` itself).

    ``helpers`` are programs copied to ``dest`` beside the executor (credential helpers) and
    patched like the interpreter, so they too run whatever base image was extracted over /."""
    at = at or dest
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    interpreter = Path(os.path.realpath(venv / "bin" / "python3"))
    stdlib = Path(sysconfig.get_paths(vars={"base": sys.base_prefix})["stdlib"])
    site = venv / "lib" / version / "site-packages"
    lib = dest / "lib"
    pylib = lib / version
    (dest / "bin").mkdir(parents=True, exist_ok=True)
    shutil.copy2(interpreter, dest / "bin" / "python3")
    copy_tree(stdlib, pylib, STDLIB_SKIP | {f for f in os.listdir(stdlib)
                                           if f.startswith("config-")})
    copy_tree(site, pylib / "site-packages", SITE_SKIP)

    for helper in helpers:
        shutil.copy2(helper, dest / helper.name)
    libraries: dict[str, Path] = {}
    elves = [dest / "bin" / "python3", *(dest / helper.name for helper in helpers)]
    elves += [p for p in pylib.rglob("*.so*") if p.is_file() and is_elf(p)]
    for elf in elves:
        libraries.update(shared_libraries(elf))
    libdir = Path(next(iter(p for n, p in libraries.items() if n == "libc.so.6"))).parent
    for name in GLIBC_DLOPENED:
        if (libdir / name).exists():
            libraries[name] = libdir / name
    for name, path in sorted(libraries.items()):
        if name == "linux-vdso.so.1":
            continue
        shutil.copy2(os.path.realpath(path), lib / name)
    loader = next(n for n in libraries if n.startswith("ld-linux"))
    for elf in (dest / "bin" / "python3", *(dest / helper.name for helper in helpers)):
        if shared_libraries(elf):  # a static helper needs nothing
            subprocess.run([patchelf, "--set-interpreter", f"{at}/lib/{loader}",
                            "--force-rpath", "--set-rpath", f"{at}/lib", str(elf)], check=True)

    for name, module, what in (("executor", "executor.cli", "executor"),
                               ("warmer", "executor.warmer", "base-image cache warmer")):
        launcher = dest / name
        launcher.write_text(
            f"#!{at}/bin/python3 -IS\n"
            f'"""kiln\'s {what}: a self-contained interpreter running {module}."""\n'
            "import sys\n"
            f"sys.path.append({f'{at}/lib/{version}/site-packages'!r})\n"
            f"from {module} import main\n"
            "main()\n")
        launcher.chmod(0o755)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--venv", type=Path, required=True,
                        help="virtualenv made by this interpreter, with kiln installed")
    parser.add_argument("--patchelf", default="patchelf")
    parser.add_argument("--at", type=Path, help="where DEST is seen at run time (default: DEST)")
    parser.add_argument("--helper", type=Path, action="append", default=[],
                        help="a program to bundle beside the executor; repeatable")
    parser.add_argument("dest", type=Path, help="where the executor goes (/kaniko)")
    args = parser.parse_args()
    bundle(args.venv, args.dest, args.patchelf, args.at, tuple(args.helper))


if __name__ == "__main__":
    main()
