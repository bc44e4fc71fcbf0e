"""The distribution reference grammar and Docker's normalisation, as tables of examples.

Cases come from distribution/reference's ``reference_test.go`` and ``normalize_test.go``.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from executor.errors import ImageError
from executor.image.reference import REFERENCE_PATTERN, ImageRef

SHA = "sha256:" + "a" * 64
SHA_B = "sha256:" + "0123456789abcdef" * 4


@pytest.mark.parametrize(
    ("text", "registry", "repository", "tag", "digest"),
    [
        # Docker Hub normalisation
        ("busybox", "docker.io", "library/busybox", "latest", None),
        ("busybox:1.36", "docker.io", "library/busybox", "1.36", None),
        ("user/img", "docker.io", "user/img", "latest", None),
        ("user/img:v1", "docker.io", "user/img", "v1", None),
        ("docker.io/busybox", "docker.io", "library/busybox", "latest", None),
        ("docker.io/library/busybox:x", "docker.io", "library/busybox", "x", None),
        ("index.docker.io/busybox", "docker.io", "library/busybox", "latest", None),
        ("a/b/c/d", "docker.io", "a/b/c/d", "latest", None),
        # a first component is a registry only with "." or ":" or when it is localhost
        ("localhost/x", "localhost", "x", "latest", None),
        ("localhost:5000/x", "localhost:5000", "x", "latest", None),
        ("127.0.0.1:5000/x:tag", "127.0.0.1:5000", "x", "tag", None),
        ("reg.io/a/b", "reg.io", "a/b", "latest", None),
        ("Reg.IO/a", "Reg.IO", "a", "latest", None),
        ("reg-1.example.com:443/team/app:1.0-rc_2", "reg-1.example.com:443", "team/app",
         "1.0-rc_2", None),
        ("[::1]:5000/x", "[::1]:5000", "x", "latest", None),
        ("[2001:db8::1]/x", "[2001:db8::1]", "x", "latest", None),
        ("localhost:5000", "docker.io", "library/localhost", "5000", None),
        ("myhost/x", "docker.io", "myhost/x", "latest", None),
        # digests
        (f"reg.io/a/b@{SHA}", "reg.io", "a/b", None, SHA),
        (f"busybox@{SHA}", "docker.io", "library/busybox", None, SHA),
        (f"name:tag@{SHA}", "docker.io", "library/name", "tag", SHA),
        (f"localhost:5000/x:t@{SHA_B}", "localhost:5000", "x", "t", SHA_B),
        ("x@sha512:" + "f" * 128, "docker.io", "library/x", None, "sha512:" + "f" * 128),
        # path separators: ".", "_", "__", any run of "-"
        ("x/a.b_c__d---e", "docker.io", "x/a.b_c__d---e", "latest", None),
        ("a.b/c", "a.b", "c", "latest", None),
        ("foo-bar.com:8080/x", "foo-bar.com:8080", "x", "latest", None),
        # tags: word characters, "." and "-", up to 128, not starting with "." or "-"
        ("x:_", "docker.io", "library/x", "_", None),
        ("x:UPPER.case-Tag", "docker.io", "library/x", "UPPER.case-Tag", None),
        ("x:" + "t" * 128, "docker.io", "library/x", "t" * 128, None),
    ],
)
def test_valid_references_parse_and_normalise(
    text: str, registry: str, repository: str, tag: str | None, digest: str | None
) -> None:
    assert ImageRef.parse(text) == ImageRef(registry, repository, tag, digest)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty reference"),
        ("Busybox", "repository name must be lowercase"),
        ("user/Img", "repository name must be lowercase"),
        ("Uppercase/img", "repository name must be lowercase"),
        ("reg.io/Team/app", "repository name must be lowercase"),
        ("a" * 64, "a 64-character hexadecimal string is an image ID, not a name"),
        ("busybox:", 'invalid tag ""'),
        ("busybox:-x", 'invalid tag "-x"'),
        ("busybox:.x", 'invalid tag ".x"'),
        ("busybox:a:b", 'invalid tag "a:b"'),
        ("x:" + "t" * 129, 'invalid tag "' + "t" * 129 + '"'),
        ("busybox:tag/x", 'invalid registry "busybox:tag"'),
        ("a_b.c/x", 'invalid registry "a_b.c"'),
        ("busybox@", 'invalid digest ""'),
        ("busybox@sha256:abc", 'invalid digest "sha256:abc"'),
        ("busybox@sha256:" + "A" * 64,
         'invalid sha256 digest "sha256:' + "A" * 64 + '": expected 64 lowercase hex digits'),
        ("busybox@sha256:" + "a" * 65,
         'invalid sha256 digest "sha256:' + "a" * 65 + '": expected 64 lowercase hex digits'),
        ("busybox@md5:" + "a" * 32, 'unsupported digest algorithm "md5"'),
        ("x@sha256:" + "a" * 64 + "@sha256:" + "a" * 64, "invalid digest"),
        ("-bad.io/x", 'invalid registry "-bad.io"'),
        ("bad-.io/x", 'invalid registry "bad-.io"'),
        ("reg.io:port/x", 'invalid registry "reg.io:port"'),
        ("reg.io/", 'invalid repository name ""'),
        ("reg.io//x", 'invalid repository name "/x"'),
        ("/x", 'invalid repository name "/x"'),
        ("x/", 'invalid repository name "x/"'),
        ("-x", 'invalid repository name "library/-x"'),
        ("x-", 'invalid repository name "library/x-"'),
        ("a..b", 'invalid repository name "library/a..b"'),
        ("a___b", 'invalid repository name "library/a___b"'),
        ("a b", 'invalid repository name "library/a b"'),
        ("reg.io/" + "a" * 250, "repository name must not be more than 255 characters"),
    ],
)
def test_invalid_references_name_the_input_and_the_reason(text: str, why: str) -> None:
    with pytest.raises(ImageError) as info:
        ImageRef.parse(text)
    assert str(info.value).startswith(f'invalid image reference "{text}": {why}')


@pytest.mark.parametrize(
    ("text", "normalised", "familiar", "reference", "api_host"),
    [
        ("busybox", "docker.io/library/busybox:latest", "busybox:latest", "latest",
         "registry-1.docker.io"),
        ("user/img:v1", "docker.io/user/img:v1", "user/img:v1", "v1", "registry-1.docker.io"),
        (f"busybox:1@{SHA}", f"docker.io/library/busybox:1@{SHA}", f"busybox:1@{SHA}", SHA,
         "registry-1.docker.io"),
        ("docker.io/a.b/c", "docker.io/a.b/c:latest", "docker.io/a.b/c:latest", "latest",
         "registry-1.docker.io"),
        ("docker.io/localhost/c", "docker.io/localhost/c:latest", "docker.io/localhost/c:latest",
         "latest", "registry-1.docker.io"),
        (f"127.0.0.1:5000/x@{SHA}", f"127.0.0.1:5000/x@{SHA}", f"127.0.0.1:5000/x@{SHA}", SHA,
         "127.0.0.1:5000"),
        ("reg.io/library/x:t", "reg.io/library/x:t", "reg.io/library/x:t", "t", "reg.io"),
    ],
)
def test_string_forms(text: str, normalised: str, familiar: str, reference: str,
                      api_host: str) -> None:
    ref = ImageRef.parse(text)
    assert str(ref) == normalised
    assert ref.familiar == familiar
    assert ref.reference == reference
    assert ref.api_host == api_host


def test_with_digest_keeps_the_tag_and_pins_the_reference() -> None:
    ref = ImageRef.parse("reg.io/app:1").with_digest(SHA)
    assert str(ref) == f"reg.io/app:1@{SHA}"
    assert ref.reference == SHA


def test_with_digest_refuses_a_malformed_digest() -> None:
    with pytest.raises(ImageError, match=re.escape('cannot pin reg.io/app:1 to "sha256:nope"')):
        ImageRef.parse("reg.io/app:1").with_digest("sha256:nope")


def test_with_tag_drops_the_digest() -> None:
    assert ImageRef.parse(f"reg.io/app@{SHA}").with_tag("2") == ImageRef("reg.io", "app", "2")


# --- properties --------------------------------------------------------------------------------

_component = st.from_regex(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", fullmatch=True)
_domain_component = st.from_regex(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?", fullmatch=True)
_registry = st.one_of(
    st.sampled_from(["docker.io", "index.docker.io", "localhost", "localhost:5000",
                     "127.0.0.1:5000", "[::1]:5000", "reg.io"]),
    st.builds(lambda a, b, port: f"{a}.{b}" + (f":{port}" if port is not None else ""),
              _domain_component, _domain_component,
              st.one_of(st.none(), st.integers(0, 65535))),
    st.builds(lambda a, port: f"{a}:{port}", _domain_component, st.integers(0, 65535)),
)
_tag = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", fullmatch=True)
_digest = st.builds(lambda b: "sha256:" + b.hex(), st.binary(min_size=32, max_size=32))


@st.composite
def reference_texts(draw: st.DrawFn) -> str:
    components = draw(st.lists(_component, min_size=1, max_size=4))
    if draw(st.booleans()):
        text = draw(_registry) + "/" + "/".join(components)
    else:
        # Without a registry, a first component with a "." would be read as one.
        text = "/".join([components[0].replace(".", "_"), *components[1:]])
    if draw(st.booleans()):
        text += ":" + draw(_tag)
    if draw(st.booleans()):
        text += "@" + draw(_digest)
    return text


@given(reference_texts())
def test_the_normalised_string_parses_back_to_the_same_reference(text: str) -> None:
    try:
        ref = ImageRef.parse(text)
    except ImageError as exc:
        # Only the length limit can refuse a text built from the grammar's pieces.
        assert "must not be more than 255" in str(exc)
        return
    assert ImageRef.parse(str(ref)) == ref
    assert ImageRef.parse(ref.familiar) == ref
    assert ref.tag is not None or ref.digest is not None


@given(st.from_regex(REFERENCE_PATTERN, fullmatch=True))
def test_text_matching_the_grammar_parses_or_gives_an_image_error(text: str) -> None:
    try:
        ref = ImageRef.parse(text)
    except ImageError as exc:
        assert str(exc).startswith(f'invalid image reference "{text}": ')
        return
    assert ImageRef.parse(str(ref)) == ref


@given(st.text(max_size=80))
def test_arbitrary_text_never_breaks_the_parser(text: str) -> None:
    try:
        ref = ImageRef.parse(text)
    except ImageError:
        return
    assert re.fullmatch(REFERENCE_PATTERN, str(ref), re.ASCII)
