from tests.support.registry import Registry


def test_registry_fixture_answers_the_v2_endpoint(registry: Registry) -> None:
    assert registry.tags("nothing/here") == []
