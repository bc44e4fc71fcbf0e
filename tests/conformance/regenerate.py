"""Regenerate ``expected/NAME.json`` for conformance cases by building them with BuildKit.

BuildKit is Docker's builder: its image is what ``docker build`` gives, so each fixture is its
image described as it is, with no corrections. Run ``scripts/regenerate-conformance [NAME...]``
with ``BUILDKIT_HOST`` naming a running daemon, or ``buildkitd`` and ``buildctl`` on ``PATH``
(or in ``KILN_BUILDKITD`` / ``KILN_BUILDCTL``); with no names, every case is rebuilt.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.conformance.harness import (
    Case,
    Environment,
    buildkit_builder,
    describe_base,
    load_cases,
    run_case,
    serve_case_files,
)
from tests.support.buildkit import BuildKit, BuildKitMissing
from tests.support.images import push_layout, write_busybox_layout
from tests.support.registry import Registry


def regenerate(case: Case, env: Environment, work: Path, buildkit: BuildKit) -> str:
    """Build ``case`` with BuildKit and write its fixture; one line saying how it went."""
    started = time.monotonic()
    outcome = run_case(case, env, work, buildkit_builder(buildkit), "buildkit")
    seconds = time.monotonic() - started
    if case.expect_error is not None:
        fixture: dict[str, Any] = {"error": case.expect_error,
                                   "buildkit_error": outcome.error_line if outcome.exit_code
                                   else None}
        # Where BuildKit builds what kiln refuses, the case names the README's departure.
        if outcome.exit_code:
            status = "error as expected"
        elif case.departures:
            status = f"BuildKit builds it; kiln refuses on purpose ({', '.join(case.departures)})"
        else:
            status = "ERROR EXPECTED, BUT BUILDKIT BUILDS IT"
    else:
        if outcome.exit_code != 0 or outcome.description is None:
            return f"{case.name}: BUILDKIT FAILED: {outcome.error_line}\n{outcome.output[-3000:]}"
        fixture = outcome.description
        status = "ok"
    case.expected_path.write_text(json.dumps(fixture, indent=1, sort_keys=True) + "\n")
    return f"{case.name}: {status} ({seconds:.1f} s)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="cases to regenerate (default: all)")
    parser.add_argument("-j", "--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    cases = [c for c in load_cases() if not args.names or c.name in args.names]
    missing = set(args.names) - {c.name for c in cases}
    if missing:
        parser.error(f"no such case: {', '.join(sorted(missing))}")
    failed = 0
    with tempfile.TemporaryDirectory(prefix="kiln-conformance-") as tmp_name:
        tmp = Path(tmp_name)
        registry = Registry(tmp / "registry").start()
        try:
            with BuildKit(tmp / "buildkit") as buildkit:
                write_busybox_layout(tmp / "layout", "latest")
                base = push_layout(tmp / "layout", "latest",
                                   f"{registry.host}/test/busybox:latest")
                with serve_case_files() as http_url:
                    env = Environment(registry.host, base, http_url,
                                      describe_base(base, registry.host, tmp / "base"))
                    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
                        futures = [pool.submit(regenerate, c, env, tmp / "cases" / c.name,
                                               buildkit) for c in cases]
                        for future in futures:
                            line = future.result()
                            failed += "BUILDKIT FAILED" in line or "BUILDKIT BUILDS" in line
                            print(line, flush=True)
        except BuildKitMissing as exc:
            print(f"regenerate-conformance: {exc}", file=sys.stderr)
            return 2
        finally:
            registry.stop()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
