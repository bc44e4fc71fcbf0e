"""Regenerate ``expected/NAME.json`` for conformance cases by building them with buildah.

buildah's image is described the same way kiln's is, then corrected toward Docker's documented
behaviour: first the quirks every case shares (the empty files a RUN leaves, the layers buildah
commits for steps that change nothing, its own version label), then the case's ``overrides``.
Run ``scripts/regenerate-conformance [NAME...]``; with no names, every case is rebuilt.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.conformance.harness import (
    Case,
    Environment,
    apply_overrides,
    buildah_builder,
    describe_base,
    load_cases,
    run_case,
    serve_case_files,
)
from tests.support.buildah import RUN_LEFTOVERS, is_docker_empty_layer, layer_members
from tests.support.compare import Description
from tests.support.images import push_layout, write_busybox_layout
from tests.support.registry import Registry

BUILDAH_LABEL = "io.buildah.version"


def correct_buildah(description: Description, ref: str, work: Path) -> Description:
    """The corrections every buildah result needs (test-environment.md lists the quirks)."""
    out: dict[str, Any] = json.loads(json.dumps(description))
    labels = out["config"].get("Labels") or {}
    labels.pop(BUILDAH_LABEL, None)
    out["config"]["Labels"] = labels or None
    for rel in RUN_LEFTOVERS:
        path = f"/{rel}"
        info = out["files"].get(path)
        below = any(p.startswith(path + "/") for p in out["files"])
        if info is not None and not below and (info.get("size") == 0 or info["type"] == "dir"):
            out["files"].pop(path)
    out["layers"] = sum(1 for members in layer_members(ref, work)
                        if not is_docker_empty_layer(members))
    return out


def regenerate(case: Case, env: Environment, work: Path) -> str:
    outcome = run_case(case, env, work, buildah_builder, "buildah")
    if case.expect_error is not None:
        fixture: dict[str, Any] = {"error": case.expect_error,
                                   "buildah_error": outcome.error_line if outcome.exit_code
                                   else None}
        # Where buildah accepts what Docker rejects, the case's notes say so; not a failure.
        status = "error as expected" if outcome.exit_code else "error expected (buildah accepts it)"
    else:
        if outcome.exit_code != 0 or outcome.description is None:
            return f"{case.name}: buildah failed: {outcome.error_line}\n{outcome.output[-3000:]}"
        ref = f"{env.registry_host}/conformance/{case.name}:buildah"
        fixture = apply_overrides(correct_buildah(outcome.description, ref, work),
                                  case.overrides)
        status = "ok"
    case.expected_path.write_text(json.dumps(fixture, indent=1, sort_keys=True) + "\n")
    return f"{case.name}: {status}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="cases to regenerate (default: all)")
    parser.add_argument("-j", "--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    cases = [c for c in load_cases() if not args.names or c.name in args.names]
    missing = set(args.names) - {c.name for c in cases}
    if missing:
        parser.error(f"no such case: {', '.join(sorted(missing))}")
    with tempfile.TemporaryDirectory(prefix="kiln-conformance-") as tmp_name:
        tmp = Path(tmp_name)
        registry = Registry(tmp / "registry").start()
        try:
            write_busybox_layout(tmp / "layout", "latest")
            base = push_layout(tmp / "layout", "latest", f"{registry.host}/test/busybox:latest")
            with serve_case_files() as http_url:
                env = Environment(registry.host, base, http_url,
                                  describe_base(base, registry.host, tmp / "base"))
                with ThreadPoolExecutor(max_workers=args.jobs) as pool:
                    futures = [pool.submit(regenerate, c, env, tmp / "cases" / c.name)
                               for c in cases]
                    failed = 0
                    for future in futures:
                        line = future.result()
                        failed += "buildah failed" in line
                        print(line, flush=True)
        finally:
            registry.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
