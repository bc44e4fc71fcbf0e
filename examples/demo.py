"""The README's demo: local registry, busybox base image, kiln build of examples/hello, crun.

Everything runs on this machine: the registry is Debian's CNCF distribution, the base image is
made from Debian's busybox-static, and the build runs in sandbox mode (``--root``), never over
this machine's ``/``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from tests.support.images import push_layout, write_busybox_layout
from tests.support.registry import Registry
from tests.support.runtime import run_image

HERE = Path(__file__).parent


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="kiln-demo-") as scratch:
        tmp = Path(scratch)
        registry = Registry(tmp / "registry").start()
        try:
            base = f"{registry.host}/library/busybox:latest"
            print(f"==> making a busybox base image and pushing it to {base}")
            layout = tmp / "busybox-layout"
            write_busybox_layout(layout, "latest")
            push_layout(layout, "latest", base)
            dest = f"{registry.host}/demo/hello:latest"
            print(f"==> kiln: building examples/hello and pushing {dest}")
            build = subprocess.run(
                [sys.executable, "-m", "executor.cli", "--context", str(HERE / "hello"),
                 "--dockerfile", str(HERE / "hello" / "Dockerfile"), "--destination", dest,
                 "--build-arg", f"BASE={base}", "--root", str(tmp / "root"),
                 "--insecure", "--insecure-pull"], check=False)
            if build.returncode != 0:
                return build.returncode
            print(f"==> crun: running {dest}")
            result = run_image(dest, workdir=tmp / "run")
            print(result.stdout, end="")
            return result.exit_code
        finally:
            registry.stop()


if __name__ == "__main__":
    sys.exit(main())
