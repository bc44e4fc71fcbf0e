"""COPY and ADD walk only what they wrote (issue #15), and find what the full walk finds.

Each build runs with ``KILN_CHECK_PARTIAL_SNAPSHOT=1``: after every COPY or ADD kiln takes the
full snapshot too and fails if the partial one differs from it in any entry. The Debian base
holds what makes that hard: a usr-merged root (``/bin -> usr/bin``), hard links
(``perl5.36.0``, ``uncompress``), 10,000s of files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.built import Built, build
from tests.support.trees import tar_of

pytestmark = pytest.mark.e2e


TRICKY = """\
FROM {base}
COPY app /app
COPY app/ /srv/new/
COPY tool /bin/tool
COPY tools/ /bin/
COPY tool /usr/bin/perl
COPY --chown=1000:1000 app/a.txt /opt/x/y/
COPY --link app/a.txt /etc/ld.so.conf.d
ADD bundle.tar /usr/share/
COPY --parents app/./sub/b.txt /p/
COPY links/ /etc/
COPY tool /etc/dangling
COPY app /app
COPY empty/ /var/
COPY overlay/ /
COPY --link tools/ /usr/local/
ADD bundle.tar /
"""


@pytest.fixture
def tricky(tmp_path: Path, debian_image: str, monkeypatch: pytest.MonkeyPatch) -> Built:
    monkeypatch.setenv("KILN_CHECK_PARTIAL_SNAPSHOT", "1")
    files: dict[str, str | bytes] = {
        "app/a.txt": "a\n", "app/sub/b.txt": "b\n", "tool": "#!/bin/sh\n",
        "tools/t1": "1\n", "tools/t2": "2\n", "bundle.tar": tar_of({"bundled/x": b"x\n"}),
        "overlay/etc/overlaid": "o\n", "empty/.keep": ""}
    context = tmp_path / "context"
    (context / "links").mkdir(parents=True)
    (context / "links/dangling").symlink_to("/nowhere/file")
    return build(tmp_path, TRICKY.format(base=debian_image), files)


def test_copy_and_add_snapshots_equal_the_full_walk(tricky: Built) -> None:
    assert tricky.ok, tricky.run.stderr
    root = tricky.root
    assert (root / "usr/bin/tool").read_text() == "#!/bin/sh\n"  # through /bin -> usr/bin
    assert (root / "nowhere/file").exists()  # through the dangling link /etc/dangling
    assert (root / "opt/x/y").stat().st_uid == 1000


def test_copy_and_add_walk_only_what_they_wrote(tricky: Built) -> None:
    lines = tricky.run.stderr.splitlines()
    written = sum("Taking snapshot of files..." in line for line in lines)
    full = sum("Taking snapshot of full filesystem..." in line for line in lines)
    assert written == 15  # every COPY and ADD, the COPY into / too: it names what it copied
    assert full == 2  # the base's, and the archive extracted into / (all of it is touched)


def test_a_copy_over_a_hard_link_puts_its_other_name_in_the_layer(tricky: Built) -> None:
    # The full walk's rule: perl5.36.0 lost a link (its ctime and link count moved).
    layer = tricky.layers[5]  # COPY tool /usr/bin/perl (layer 0 is the base)
    assert "usr/bin/perl" in layer and "usr/bin/perl5.36.0" in layer
