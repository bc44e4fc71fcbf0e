"""BuildKit's word expansion, as a table of cases from the Dockerfile reference and BuildKit."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from executor.dockerfile.expand import ExpansionError, expand_word, expand_words

ENV = {"abc": "hello", "empty": "", "path": "/usr/local/bin/app.tar.gz", "sp": "a b"}


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("plain", "plain"),
        ("$abc", "hello"),
        ("${abc}", "hello"),
        ("${abc}_x", "hello_x"),
        ("$abc_x", ""),
        ("$unset", ""),
        ("$", "$"),
        ("a$", "a$"),
        (r"\$abc", "$abc"),
        ("'$abc'", "$abc"),
        ('"$abc"', "hello"),
        (r'"\$abc"', "$abc"),
        (r'"a\b"', r"a\b"),
        (r'"a\"b"', 'a"b'),
        (r"a\ b", "a b"),
        ("${unset:-default}", "default"),
        ("${empty:-default}", "default"),
        ("${empty-default}", ""),
        ("${unset-default}", "default"),
        ("${abc:-default}", "hello"),
        ("${abc:+alt}", "alt"),
        ("${empty:+alt}", ""),
        ("${empty+alt}", "alt"),
        ("${unset:+alt}", ""),
        ("${path#*/}", "usr/local/bin/app.tar.gz"),
        ("${path##*/}", "app.tar.gz"),
        ("${path%.*}", "/usr/local/bin/app.tar"),
        ("${path%%.*}", "/usr/local/bin/app"),
        ("${abc/l/L}", "heLlo"),
        ("${abc//l/L}", "heLLo"),
        ("${abc:-$path}", "hello"),
        ("${unset:-${abc}x}", "hellox"),
        ("${unset:-'a b'}", "a b"),
    ],
)
def test_expand_word_matches_buildkit(word: str, expected: str) -> None:
    assert expand_word(word, ENV) == expected


@pytest.mark.parametrize(
    ("word", "error"),
    [
        ("${abc", "syntax error: missing '}'"),
        ("${}", "syntax error: bad substitution"),
        ("${:x}", "syntax error: bad substitution"),
        ("'open", "unexpected end of statement while looking for matching single-quote"),
        ('"open', "unexpected end of statement while looking for matching double-quote"),
        ("${unset:?must be set}", "unset: must be set"),
        ("${unset?}", "unset: is not allowed to be unset"),
        ("${empty:?}", "empty: is not allowed to be empty"),
        ("${abc^x}", "unsupported modifier (^) in substitution"),
    ],
)
def test_expand_word_errors_like_buildkit(word: str, error: str) -> None:
    with pytest.raises(ExpansionError) as caught:
        expand_word(word, ENV)
    assert str(caught.value) == error


def test_backtick_escape_directive_changes_the_escape_character() -> None:
    assert expand_word(r"C:\dir`$abc", ENV, escape="`") == r"C:\dir$abc"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("80 443/tcp", ["80", "443/tcp"]),
        ("$sp c", ["a", "b", "c"]),
        ('"$sp" c', ["a b", "c"]),
        ("  lead  trail  ", ["lead", "trail"]),
    ],
)
def test_expand_words_splits_after_substitution(text: str, expected: list[str]) -> None:
    assert expand_words(text, ENV) == expected


_plain = st.text(alphabet=st.characters(blacklist_characters="$'\"\\", min_codepoint=32,
                                        max_codepoint=0x2FF))


@given(_plain)
def test_text_without_special_characters_is_unchanged(text: str) -> None:
    assert expand_word(text, ENV) == text


@given(st.text(alphabet=st.characters(blacklist_characters="'", min_codepoint=32,
                                      max_codepoint=0x2FF)))
def test_single_quotes_keep_anything_literal(text: str) -> None:
    assert expand_word(f"'{text}'", ENV) == text


@given(st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True), _plain),
       st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True))
def test_braced_variable_is_its_value_or_empty(env: dict[str, str], name: str) -> None:
    assert expand_word("${" + name + "}", env) == env.get(name, "")


def test_heredoc_bodies_keep_their_quotes_but_expand_variables() -> None:
    assert expand_word("it's \"$abc\"\n", ENV, process_quotes=False) == "it's \"hello\"\n"


def test_substitutions_nested_past_the_limit_are_an_expansion_error_not_a_recursion() -> None:
    with pytest.raises(ExpansionError, match="nested more than 64 deep"):
        expand_word("${A:-" * 400 + "x" + "}" * 400, {})
