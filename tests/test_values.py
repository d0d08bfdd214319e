"""Request-scoped values: lookup, shadowing, typed keys and bad keys."""

from __future__ import annotations

import pytest

import gocontext

from .conftest import OtherContext


def test_value_is_found_through_every_kind_of_ancestor() -> None:
    key = gocontext.Key[str]("user")
    ctx = gocontext.with_value(gocontext.background(), key, "ada")
    ctx, _ = gocontext.with_cancel(ctx)
    ctx, _ = gocontext.with_timeout(ctx, 60)
    ctx = gocontext.without_cancel(ctx)
    ctx = OtherContext(ctx)  # type: ignore[assignment]
    ctx, _ = gocontext.with_cancel(ctx)
    ctx = gocontext.with_value(ctx, "other", 1)
    assert ctx.value(key) == "ada"
    assert ctx.value("other") == 1
    assert ctx.value("missing") is None


def test_nearest_value_shadows_and_none_shadows_too() -> None:
    ctx = gocontext.with_value(gocontext.background(), "k", "outer")
    inner = gocontext.with_value(ctx, "k", "inner")
    nothing = gocontext.with_value(inner, "k", None)
    assert ctx.value("k") == "outer"
    assert inner.value("k") == "inner"
    assert nothing.value("k") is None


def test_keys_are_compared_by_identity_for_key_objects() -> None:
    a, b = gocontext.Key[int]("same"), gocontext.Key[int]("same")
    ctx = gocontext.with_value(gocontext.background(), a, 1)
    assert ctx.value(a) == 1
    assert ctx.value(b) is None


def test_deep_chains_find_values_far_up() -> None:
    top = gocontext.Key[str]("top")
    ctx = gocontext.with_value(gocontext.background(), top, "here")
    keys = []
    for i in range(200):
        k = gocontext.Key[int](f"k{i}")
        keys.append(k)
        ctx = gocontext.with_value(ctx, k, i)
        if i % 3 == 0:
            ctx, _ = gocontext.with_cancel(ctx)
    assert ctx.value(top) == "here"
    assert [ctx.value(k) for k in keys] == list(range(200))


@pytest.mark.parametrize("bad", [None, [], {}, {1}])
def test_a_none_or_unhashable_key_is_a_type_error(bad: object) -> None:
    with pytest.raises(TypeError, match="key") as info:
        gocontext.with_value(gocontext.background(), bad, 1)  # type: ignore[arg-type]
    assert repr(bad) in str(info.value) or "None" in str(info.value)


def test_propagated_keys_are_interned_tokens_with_string_values() -> None:
    rid = gocontext.PropagatedKey("request-id")
    assert gocontext.PropagatedKey("request-id") is rid
    assert isinstance(rid, gocontext.Key)
    ctx = gocontext.with_value(gocontext.background(), rid, "r-1")
    assert ctx.value(rid) == "r-1"
    with pytest.raises(TypeError, match="str value"):
        gocontext.with_value(gocontext.background(), rid, 42)
    for bad in ("", "has space", "semi;colon", "x=y"):
        with pytest.raises(ValueError, match="token"):
            gocontext.PropagatedKey(bad)


def test_outgoing_and_attached_values_carry_only_propagated_keys() -> None:
    from gocontext import _propagation

    rid = gocontext.PropagatedKey("test-rid")
    secret = gocontext.Key[str]("secret")
    ctx = gocontext.with_value(gocontext.background(), secret, "hunter2")
    ctx = gocontext.with_value(ctx, rid, "abc")
    out = _propagation.outgoing_values(ctx)
    assert out["test-rid"] == "abc"
    assert "hunter2" not in out.values()
    received = _propagation.attach_values(
        gocontext.background(), {"test-rid": "abc", "undeclared-name": "x"}
    )
    assert received.value(rid) == "abc"
    assert _propagation.outgoing_values(received) == {"test-rid": "abc"}


def test_value_lookup_with_a_typed_key_is_typed() -> None:
    port = gocontext.Key[int]("port")
    ctx = gocontext.with_value(gocontext.background(), port, 8080)
    got = ctx.value(port)
    assert got is not None
    assert got + 1 == 8081
