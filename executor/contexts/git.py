"""Git contexts, cloned by the ``git`` command as kaniko clones them with go-git.

Why the command and not a library: kaniko's in-process clone has run out of memory on large
repositories (kaniko #2491), and so does dulwich here (533 MB of RSS for a 500 MB history); git
streams the pack into ``index-pack`` and stays near 30 MB (``bench/contexts.py``). It also brings
submodules, every transport, and TLS and proxy handling that users already know.

kaniko's meaning, kept:

- ``git://HOST/PATH#REF#COMMIT``: the URL is ``$GIT_PULL_METHOD://HOST/PATH`` (``https`` unless
  the variable says ``http``; kiln also takes ``git``, the git protocol). ``REF`` is a full ref
  (``refs/heads/main``, ``refs/tags/v1``, ``refs/pull/7/head``) or a commit; ``COMMIT`` is
  checked out after ``REF`` is fetched. kiln also takes a short branch or tag name for ``REF``.
- ``--git branch=NAME``: a branch, else a tag, of that name (kaniko's lookup order);
  ``single-branch``, ``recurse-submodules``, ``insecure-skip-tls``, and newer kaniko's ``depth``.
- ``GIT_USERNAME`` / ``GIT_PASSWORD``, or ``GIT_TOKEN`` (sent as the user name with an empty
  password), for HTTP(S). They reach git through a credential helper scoped to the context's
  host, never through the command line or ``.git/config``, so they end up in no image layer
  and no ``ps`` listing.
- A full clone with ``.git`` kept, so ``RUN git describe`` works as it does under kaniko.
- (kiln) ``https://HOST/REPO.git#...`` is cloned over that URL as written.

The clone is ``git clone --no-checkout`` followed by one checkout of what was asked for, so the
work tree is written once.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from executor.contexts import display
from executor.errors import ContextError

if TYPE_CHECKING:
    from executor.options import GitOptions

log = logging.getLogger("kiln")

PULL_METHODS = ("https", "http", "git")
_HASH = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
#: The credential helper: prints what the environment holds, only when git asks for it.
_HELPER = ('!f() { test "$1" = get || exit 0; '
           'printf "username=%s\\npassword=%s\\n" "$KILN_GIT_USERNAME" "$KILN_GIT_PASSWORD"; }; f')


@dataclass(frozen=True)
class GitSource:
    """A parsed git context: where to clone from, and what to check out."""

    url: str
    ref: str | None = None
    commit: str | None = None

    @classmethod
    def parse(cls, source: str) -> GitSource:
        location, _, fragment = source.partition("#")
        ref, _, commit = fragment.partition("#")
        commit = commit.split("#", 1)[0]
        if location.startswith("git://"):
            method = os.environ.get("GIT_PULL_METHOD", "")
            location = f"{method if method in PULL_METHODS else 'https'}://" + location[6:]
        return cls(location, ref or None, commit or None)


def clone(source: str, target: Path, options: GitOptions) -> None:
    """Clone the repository ``source`` names into the empty directory ``target``."""
    spec = GitSource.parse(source)
    runner = _Git(display(source), _environment(spec.url, options))
    ref, commit = spec.ref, spec.commit
    if ref is not None and _HASH.fullmatch(ref):
        ref, commit = None, commit or ref
    if commit is not None and not _HASH.fullmatch(commit):
        raise ContextError(f"--context {display(source)}: {commit!r} is not a commit id "
                           "(40 hexadecimal digits)")
    if options.branch:
        ref = options.branch
    if ref is not None:
        ref = _resolve_ref(runner, spec.url, ref, by_flag=bool(options.branch))
    log.info("Cloning %s%s%s", display(spec.url), f" at {ref}" if ref else "",
             f" (commit {commit})" if commit else "")
    cmd = ["clone", "--quiet", "--no-checkout"]
    if options.single_branch:
        cmd.append("--single-branch")
    if options.depth > 0:
        cmd += ["--depth", str(options.depth)]
    short = _branch_or_tag(ref)
    if short is not None:
        cmd += ["--branch", short]
    runner.run(*cmd, "--", spec.url, str(target))
    checkout = "HEAD"
    if ref is not None and short is None:  # refs/pull/7/head and the like: not cloned
        runner.run("fetch", "--quiet", "origin", ref, cwd=target)
        checkout = "FETCH_HEAD"
    if commit is not None:
        if runner.run("cat-file", "-e", f"{commit}^{{commit}}", cwd=target,
                      check=False).returncode != 0:
            # Not on a cloned branch: ask for it by id (servers speaking protocol v2 allow it).
            fetched = runner.run("fetch", "--quiet", "origin", commit, cwd=target, check=False)
            if fetched.returncode != 0:
                raise ContextError(f"--context {display(source)}: commit {commit} is not in "
                                   "the repository")
        checkout = commit
    runner.run("-c", "advice.detachedHead=false", "checkout", "--quiet", "--force", checkout,
               cwd=target)
    if options.recurse_submodules:
        runner.run("submodule", "--quiet", "update", "--init", "--recursive", "--force",
                   cwd=target)


def _branch_or_tag(ref: str | None) -> str | None:
    """The short name ``git clone --branch`` takes, for a branch or tag ref; else None."""
    if ref is None:
        return None
    for prefix in ("refs/heads/", "refs/tags/"):
        if ref.startswith(prefix):
            return ref[len(prefix):]
    return None


def _resolve_ref(runner: _Git, url: str, ref: str, *, by_flag: bool) -> str:
    """The full name of ``ref`` on the remote: as given, else a branch, else a tag."""
    listing = runner.run("ls-remote", "--", url).stdout
    refs = {line.split("\t", 1)[1] for line in listing.splitlines() if "\t" in line}
    candidates = [ref] if ref.startswith("refs/") and not by_flag else []
    candidates += [f"refs/heads/{ref}", f"refs/tags/{ref}"]
    for candidate in candidates:
        if candidate in refs:
            return candidate
    flag = f" (--git branch={ref})" if by_flag else ""
    raise ContextError(f"--context {runner.source}: no branch or tag {ref!r} in the "
                       f"repository{flag}")


class _Git:
    """Runs git for one context, turning its failures into one-line ContextErrors."""

    def __init__(self, source: str, env: dict[str, str]) -> None:
        self.source = source
        self.env = env
        self.program = shutil.which("git")
        if self.program is None:
            raise ContextError(f"--context {source}: git is not installed (kiln clones with "
                               "the git command)")

    def run(self, *args: str, cwd: Path | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([str(self.program), *args], cwd=cwd, env=self.env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              errors="replace", check=False)
        if check and proc.returncode != 0:
            raise ContextError(f"--context {self.source}: {_cause(proc.stderr, self.env)}")
        return proc


def _cause(stderr: str, env: dict[str, str]) -> str:
    """The line of git's complaint that says why, in the words a kiln user needs."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    fatal = [line for line in lines if line.startswith(("fatal:", "error:"))]
    line = (fatal or lines or ["git failed"])[-1]
    line = re.sub(r"^(fatal|error): ", "", line)
    if "Authentication failed" in line or "could not read Username" in line \
            or "could not read Password" in line:
        if env.get("KILN_GIT_USERNAME") or env.get("KILN_GIT_PASSWORD"):
            return "authentication failed (check GIT_USERNAME and GIT_PASSWORD, or GIT_TOKEN)"
        return ("the repository needs credentials: set GIT_USERNAME and GIT_PASSWORD, "
                "or GIT_TOKEN")
    return line


def _environment(url: str, options: GitOptions) -> dict[str, str]:
    """git's environment: no prompts, our credentials for the context's host only, TLS."""
    env = dict(os.environ)
    env["GIT_TERMINAL_PROMPT"] = "0"
    env.pop("GIT_ASKPASS", None)
    env.pop("SSH_ASKPASS", None)
    config: list[tuple[str, str]] = []
    username, password = env.get("GIT_USERNAME", ""), env.get("GIT_PASSWORD", "")
    if env.get("GIT_TOKEN"):
        username, password = env["GIT_TOKEN"], ""
    parts = urllib.parse.urlsplit(url)
    if (username or password) and parts.scheme in ("http", "https"):
        env["KILN_GIT_USERNAME"], env["KILN_GIT_PASSWORD"] = username, password
        origin = f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"
        # An empty helper first drops helpers from the system and user configuration.
        config += [("credential.helper", ""), (f"credential.{origin}.helper", _HELPER)]
    if options.insecure_skip_tls:
        env["GIT_SSL_NO_VERIFY"] = "1"
    elif env.get("SSL_CERT_FILE") and not env.get("GIT_SSL_CAINFO"):
        # Debian's git uses GnuTLS, which does not read OpenSSL's variable; kaniko's users set it.
        env["GIT_SSL_CAINFO"] = env["SSL_CERT_FILE"]
    count = int(env.get("GIT_CONFIG_COUNT", "0") or 0)
    for key, value in config:
        env[f"GIT_CONFIG_KEY_{count}"] = key
        env[f"GIT_CONFIG_VALUE_{count}"] = value
        count += 1
    env["GIT_CONFIG_COUNT"] = str(count)
    return env
