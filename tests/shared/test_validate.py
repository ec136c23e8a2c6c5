"""The one validator kit: the codec's field checks and the rules of Kubernetes values."""

from __future__ import annotations

import pytest

from shared import validate


@pytest.mark.parametrize(("check", "good", "bad", "says"), [
    (validate.integer(ge=0), 3, True, "must be an integer, not bool"),
    (validate.integer(ge=1), 1, 0, "must be >= 1"),
    (validate.string(min_length=1, max_length=3), "ab", "", "at least 1 character"),
    (validate.string(max_length=3), "abc", "abcd", "at most 3 characters"),
    (validate.number(gt=0, le=10), 10, 0, "must be > 0"),
    (validate.boolean, False, 0, "must be a boolean, not int"),
    (validate.literal("a", "b"), "a", "c", "must be one of 'a', 'b', not 'c'"),
    (validate.optional(validate.integer()), None, "x", "must be an integer, not str"),
    (validate.mapping(validate.integer()), {"k": 1}, {"k": "v"}, "['k'] must be an integer"),
    (validate.array(validate.string(), max_length=2), ["a"], ["a", 1], "[1] must be a string"),
    (validate.byte_string(max_length=2), b"ab", b"abc", "at most 2 bytes"),
    (validate.map_or_none, None, [], "must be a map or nil, not list"),
    (validate.dns_name, "web-1.a", "Web", "lowercase DNS-1123 name"),
    (validate.abs_path, "/etc/web", "/", "absolute path"),
    (validate.host_path, "/", "/a/../b", "absolute host path"),
    (validate.rel_path, "conf/a", "a//b", "relative path"),
    (validate.http_path, "/healthz", "/a b", "start with '/'"),
    (validate.capability, "NET_ADMIN", "net_admin", "not a capability name"),
    (validate.group_id, 0, -1, "outside 0.."),
])
def test_checks_accept_and_refuse_saying_why(check, good, bad, says) -> None:
    assert check(good) == good
    with pytest.raises(ValueError) as info:
        check(bad)
    assert says in str(info.value)


def test_number_widens_an_int_and_quantities_parse() -> None:
    assert validate.number()(2) == 2.0 and isinstance(validate.number()(2), float)
    validate.quantities({"cpu": "250m", "memory": "64Mi", "example.com/npu": 1})
    with pytest.raises(ValueError, match="cpu"):
        validate.quantities({"cpu": "lots"})
    with pytest.raises(ValueError, match="container names must be unique"):
        validate.unique(["a", "a"], "container names")
