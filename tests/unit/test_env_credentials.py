"""The fork's ``env`` credential source: KANIKO_<HOST>_USER / _PASSWORD, longest name first."""

from __future__ import annotations

from executor.registry.credentials import env_credential


def test_the_full_registry_name_upper_cased_with_dots_and_dashes_as_underscores() -> None:
    env = {"KANIKO_MY_REG_EXAMPLE_COM_USER": "u", "KANIKO_MY_REG_EXAMPLE_COM_PASSWORD": "p"}
    found = env_credential("my-reg.example.com", env)
    assert found is not None and (found.username, found.password) == ("u", "p")


def test_a_parent_domain_serves_its_subdomains_and_the_longest_name_wins() -> None:
    env = {"KANIKO_EXAMPLE_COM_USER": "parent", "KANIKO_EXAMPLE_COM_PASSWORD": "p1",
           "KANIKO_EU_EXAMPLE_COM_USER": "eu", "KANIKO_EU_EXAMPLE_COM_PASSWORD": "p2"}
    assert env_credential("reg.example.com", env).username == "parent"  # type: ignore[union-attr]
    assert env_credential("eu.example.com", env).username == "eu"  # type: ignore[union-attr]


def test_a_user_without_a_password_is_no_credential() -> None:
    assert env_credential("example.com", {"KANIKO_EXAMPLE_COM_USER": "u"}) is None


def test_the_source_names_the_variable_never_the_secret() -> None:
    env = {"KANIKO_127_0_0_1:5000_USER": "u", "KANIKO_127_0_0_1:5000_PASSWORD": "secret"}
    found = env_credential("127.0.0.1:5000", env)
    assert found is not None and "secret" not in repr(found)
    assert found.source == "$KANIKO_127_0_0_1:5000_USER"
