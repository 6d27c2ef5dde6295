"""Every registered method keeps the shared contract (see contract.py), with no training."""

from __future__ import annotations

import pytest

from tracemark.keys import Key
from tracemark.methods import registry

from contract import check_contract, make_world


@pytest.fixture(scope="module")
def world(fmnist_train, fmnist_test):
    return make_world(fmnist_train, fmnist_test)


def test_the_registry_holds_the_three_methods():
    assert registry.names() == ["isotope", "tracker", "ubw"]
    for name in registry.names():
        method = registry.get(name)
        assert method.name == name and method.kind in ("images", "dataset")


@pytest.mark.parametrize("name", registry.names())
def test_every_method_keeps_the_contract(world, name):
    others = [Key.generate(n) for n in registry.names() if n != name]
    check_contract(registry.get(name), world, others)


def test_an_unknown_method_is_named_in_the_error():
    from tracemark.errors import TracemarkError

    with pytest.raises(TracemarkError, match="unknown method 'nope'; known methods: isotope"):
        registry.get("nope")
    with pytest.raises(TracemarkError, match="unknown method 'nope'"):
        Key.generate("nope")
