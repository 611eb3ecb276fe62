"""API keys of the public API, without a server: the keys file, roles, constant-time matching, rate limits.

The same rules over real gRPC (every role against every RPC, health, reflection): test_api_keys.py.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
from pathlib import Path

import pytest

from cir.retriever.v1 import retriever_pb2
from cir_common.errors import ConfigError, PermissionDenied, ResourceExhausted, Unauthenticated
from cir_common.vocabulary import RETRIEVER
from cir_retriever import auth
from cir_retriever.auth import (
    RPC_ROLES,
    ApiKeyAuthorizer,
    Role,
    allowed_rpcs,
    authorizer_for,
    generate_key,
    key_digest,
    keys_entry,
    parse_keys,
)
from cir_retriever.settings import RetrieverSettings

SEARCH_KEY, WRITE_KEY, ADMIN_KEY = "cir_search-key", "cir_write-key", "cir_admin-key"


def _method(rpc: str) -> str:
    return f"/{RETRIEVER.grpc_name}/{rpc}"


def _bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _keys_file(tmp_path: Path, text: str | None = None) -> Path:
    path = tmp_path / "keys.toml"
    path.write_text(
        text
        if text is not None
        else keys_entry("searcher", SEARCH_KEY, Role.SEARCH)
        + keys_entry("writer", WRITE_KEY, Role.WRITE)
        + keys_entry("admin", ADMIN_KEY, Role.ADMIN),
        encoding="utf-8",
    )
    return path


# --- roles ------------------------------------------------------------------------------------------------


def test_every_rpc_of_the_proto_has_exactly_one_least_role():
    # A new RPC in retriever.proto without a role here fails this test (and is refused to every key).
    rpcs = {m.name for m in retriever_pb2.DESCRIPTOR.services_by_name["RetrieverService"].methods}
    assert set(RPC_ROLES) == rpcs


def test_roles_nest_as_the_issue_lists_them():
    search = {"Search", "GetCollectionInfo", "ListCollections", "ListStrategies"}
    write = search | {"CreateCollection", "IngestImages", "ImportGalleryFeatures", "DeleteImages"}
    admin = write | {"DeleteCollection", "ExportGalleryFeatures", "GetServiceStats"}
    assert allowed_rpcs(Role.SEARCH) == search
    assert allowed_rpcs(Role.WRITE) == write
    assert allowed_rpcs(Role.ADMIN) == admin == set(RPC_ROLES)


@pytest.mark.parametrize("rpc", sorted(RPC_ROLES))
@pytest.mark.parametrize("role", list(Role))
def test_each_role_against_each_rpc(tmp_path, rpc, role):
    keys = {Role.SEARCH: SEARCH_KEY, Role.WRITE: WRITE_KEY, Role.ADMIN: ADMIN_KEY}
    authorize = ApiKeyAuthorizer(_keys_file(tmp_path))
    if rpc in allowed_rpcs(role):
        authorize(_method(rpc), _bearer(keys[role]))
    else:
        with pytest.raises(PermissionDenied) as refused:
            authorize(_method(rpc), _bearer(keys[role]))
        assert f"may not call {rpc}" in refused.value.message
        assert f"role {RPC_ROLES[rpc].value!r}" in refused.value.message


def test_a_method_of_another_service_is_refused_even_to_admin(tmp_path):
    authorize = ApiKeyAuthorizer(_keys_file(tmp_path))
    with pytest.raises(PermissionDenied):
        authorize("/cir.encoder.v1.EncoderService/EncodeImages", _bearer(ADMIN_KEY))
    with pytest.raises(PermissionDenied):
        authorize(_method("NoSuchRpc"), _bearer(ADMIN_KEY))


# --- callers without a valid key ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [{}, {"authorization": ""}, {"authorization": "Bearer "}, {"authorization": "Basic dXNlcjpwdw=="}],
    ids=["none", "empty", "bearer-without-key", "basic"],
)
def test_no_key_is_unauthenticated_and_says_how_to_send_one(tmp_path, metadata):
    authorize = ApiKeyAuthorizer(_keys_file(tmp_path))
    with pytest.raises(Unauthenticated) as refused:
        authorize(_method("Search"), metadata)
    assert "Bearer <key>" in refused.value.message


def test_a_wrong_key_is_unauthenticated_without_echoing_it(tmp_path):
    authorize = ApiKeyAuthorizer(_keys_file(tmp_path))
    wrong = SEARCH_KEY + "x"
    with pytest.raises(Unauthenticated) as refused:
        authorize(_method("Search"), _bearer(wrong))
    assert wrong not in refused.value.message
    assert "CIR_API_KEY" in refused.value.message


def test_the_scheme_is_case_insensitive_and_spaces_around_the_key_are_ignored(tmp_path):
    authorize = ApiKeyAuthorizer(_keys_file(tmp_path))
    authorize(_method("Search"), {"authorization": f"bearer  {SEARCH_KEY} "})


def test_every_stored_digest_is_compared_in_constant_time(tmp_path, monkeypatch):
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    authorize = ApiKeyAuthorizer(_keys_file(tmp_path))
    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    stored = [key.digest for key in authorize.keys]
    for presented in (SEARCH_KEY, ADMIN_KEY, "cir_unknown"):
        compared.clear()
        with contextlib.suppress(Unauthenticated):
            authorize(_method("ListCollections"), _bearer(presented))
        # The presented key's digest (never the key itself) against every stored digest: a match on the first
        # entry does not stop the loop, so the time taken does not tell which key matched.
        assert compared == [(key_digest(presented), digest) for digest in stored]


# --- the keys file ---------------------------------------------------------------------------------------


def test_a_generated_key_round_trips_through_its_entry():
    key = generate_key()
    assert key.startswith("cir_") and len(key) > 40 and key.isascii()
    entry = keys_entry('team "blue"', key, Role.WRITE, requests_per_second=2.5, burst=4)
    assert key not in entry
    (parsed,) = parse_keys(entry)
    assert (parsed.name, parsed.digest, parsed.role) == ('team "blue"', key_digest(key), Role.WRITE)
    assert parsed.rate_limit == auth.RateLimit(2.5, 4)


def test_burst_defaults_to_the_rate_at_least_one():
    text = keys_entry("a", "k1", Role.SEARCH, 2.5) + keys_entry("b", "k2", Role.SEARCH, 0.1)
    assert [key.rate_limit.burst for key in parse_keys(text)] == [3, 1]


_DIGEST = "ab" * 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[[keys]\nname = 'x'", "not valid TOML"),
        ("", "no [[keys]] tables"),
        ("keys = []", "no [[keys]] tables"),
        ("[settings]\nx = 1", "unknown top-level entries ['settings']"),
        (f"[[keys]]\nsha256 = '{_DIGEST}'\nrole = 'search'", "`name` is missing"),
        ("[[keys]]\nname = 'a'\nrole = 'search'", "`sha256` must be the key's sha256 as 64 hex digits"),
        ("[[keys]]\nname = 'a'\nsha256 = 'abc'\nrole = 'search'", "64 hex digits"),
        (f"[[keys]]\nname = 'a'\nsha256 = '{'zz' * 32}'\nrole = 'search'", "64 hex digits"),
        (f"[[keys]]\nname = 'a'\nsha256 = '{_DIGEST}'", "`role` is None; use one of search, write, admin"),
        (f"[[keys]]\nname = 'a'\nsha256 = '{_DIGEST}'\nrole = 'root'", "`role` is 'root'"),
        (
            f"[[keys]]\nname = 'a'\nsha256 = '{_DIGEST}'\nrole = 'search'\nkey = 'cir_plain'",
            "never the key itself",
        ),
        (
            f"[[keys]]\nname = 'a'\nsha256 = '{_DIGEST}'\nrole = 'search'\nrequests_per_second = 0",
            "`requests_per_second` must be a number above 0",
        ),
        (
            f"[[keys]]\nname = 'a'\nsha256 = '{_DIGEST}'\nrole = 'search'\nburst = 3",
            "`burst` needs `requests_per_second`",
        ),
        (
            f"[[keys]]\nname = 'a'\nsha256 = '{_DIGEST}'\nrole = 'search'\n"
            "requests_per_second = 1\nburst = 0.5",
            "`burst` must be a whole number",
        ),
        (
            f"[[keys]]\nname = 'a'\nsha256 = '{_DIGEST}'\nrole = 'search'\n"
            f"[[keys]]\nname = 'a'\nsha256 = '{'cd' * 32}'\nrole = 'admin'",
            "two keys are named 'a'",
        ),
        (
            f"[[keys]]\nname = 'a'\nsha256 = '{_DIGEST}'\nrole = 'search'\n"
            f"[[keys]]\nname = 'b'\nsha256 = '{_DIGEST.upper()}'\nrole = 'admin'",
            "keys 'a' and 'b' have the same sha256",
        ),
    ],
    ids=[
        "bad-toml",
        "empty",
        "empty-list",
        "unknown-table",
        "no-name",
        "no-digest",
        "short-digest",
        "not-hex",
        "no-role",
        "unknown-role",
        "plaintext-key",
        "zero-rate",
        "burst-without-rate",
        "fractional-burst",
        "duplicate-name",
        "duplicate-digest",
    ],
)
def test_a_bad_keys_file_is_refused_with_what_to_fix(tmp_path, text, expected):
    path = _keys_file(tmp_path, text)
    with pytest.raises(ConfigError) as refused:
        ApiKeyAuthorizer(path)
    assert expected in refused.value.message
    assert refused.value.message.startswith(f"CIR_RETRIEVER_API_KEYS_FILE={path}")
    assert "cir_plain" not in refused.value.message


def test_a_missing_keys_file_is_named(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"CIR_RETRIEVER_API_KEYS_FILE={missing}: cannot read"):
        authorizer_for(RetrieverSettings(api_keys_file=str(missing)))


def test_without_a_keys_file_there_is_no_authorizer():
    assert authorizer_for(RetrieverSettings()) is None


# --- rate limits -----------------------------------------------------------------------------------------


def test_a_key_past_its_rate_limit_is_refused_with_a_retry_hint(tmp_path):
    clock = Clock()
    path = _keys_file(
        tmp_path,
        keys_entry("limited", SEARCH_KEY, Role.SEARCH, requests_per_second=2, burst=3)
        + keys_entry("free", ADMIN_KEY, Role.ADMIN),
    )
    authorize = ApiKeyAuthorizer(path, clock=clock)
    for _ in range(3):  # the burst
        authorize(_method("Search"), _bearer(SEARCH_KEY))
    with pytest.raises(ResourceExhausted) as refused:
        authorize(_method("Search"), _bearer(SEARCH_KEY))
    assert refused.value.retry_after_ms == 500  # one token at 2 per second
    assert "'limited' is over its rate limit (2 requests per second, burst 3)" in refused.value.message
    assert SEARCH_KEY not in refused.value.message
    for _ in range(20):  # a key without a limit is not limited, and other keys' buckets are their own
        authorize(_method("Search"), _bearer(ADMIN_KEY))
    clock.now += 0.25  # half a token: still refused, the hint shrinks
    with pytest.raises(ResourceExhausted) as refused:
        authorize(_method("Search"), _bearer(SEARCH_KEY))
    assert refused.value.retry_after_ms == 250
    clock.now += 0.25
    authorize(_method("Search"), _bearer(SEARCH_KEY))
    clock.now += 100.0  # refills up to the burst, no more
    for _ in range(3):
        authorize(_method("Search"), _bearer(SEARCH_KEY))
    with pytest.raises(ResourceExhausted):
        authorize(_method("Search"), _bearer(SEARCH_KEY))


def test_refused_calls_spend_no_tokens(tmp_path):
    clock = Clock()
    path = _keys_file(
        tmp_path, keys_entry("limited", SEARCH_KEY, Role.SEARCH, requests_per_second=1, burst=1)
    )
    authorize = ApiKeyAuthorizer(path, clock=clock)
    for _ in range(5):  # a role refusal comes before the rate limit
        with pytest.raises(PermissionDenied):
            authorize(_method("DeleteCollection"), _bearer(SEARCH_KEY))
    authorize(_method("Search"), _bearer(SEARCH_KEY))


# --- reload ----------------------------------------------------------------------------------------------


def _rewrite(path: Path, text: str, mtime: int) -> None:
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(mtime, mtime))  # a distinct mtime, whatever the file system's resolution


def test_a_changed_keys_file_is_reloaded_without_a_restart(tmp_path, caplog):
    clock = Clock()
    path = _keys_file(tmp_path, keys_entry("old", SEARCH_KEY, Role.SEARCH))
    authorize = ApiKeyAuthorizer(path, clock=clock, reload_interval_s=1.0)
    authorize(_method("Search"), _bearer(SEARCH_KEY))
    _rewrite(path, keys_entry("new", WRITE_KEY, Role.WRITE), 10**18)
    authorize(_method("Search"), _bearer(SEARCH_KEY))  # not checked again within the interval
    clock.now += 1.0
    with pytest.raises(Unauthenticated):  # revoked
        authorize(_method("Search"), _bearer(SEARCH_KEY))
    authorize(_method("IngestImages"), _bearer(WRITE_KEY))

    # A changed file that does not load keeps the keys in force, and says so in the log.
    with caplog.at_level(logging.ERROR, logger="cir_retriever.auth"):
        _rewrite(path, "[[keys]]\nname = 'broken'", 2 * 10**18)
        clock.now += 1.0
        authorize(_method("IngestImages"), _bearer(WRITE_KEY))
    assert "stay in force" in caplog.text and "`sha256` must be" in caplog.text

    # A file that is gone for a moment (a Secret's update) keeps them too.
    path.unlink()
    clock.now += 1.0
    authorize(_method("IngestImages"), _bearer(WRITE_KEY))


def test_a_reload_keeps_the_buckets_of_unchanged_limits(tmp_path):
    clock = Clock()
    entry = keys_entry("limited", SEARCH_KEY, Role.SEARCH, requests_per_second=1, burst=1)
    path = _keys_file(tmp_path, entry)
    authorize = ApiKeyAuthorizer(path, clock=clock, reload_interval_s=0.0)
    authorize(_method("Search"), _bearer(SEARCH_KEY))
    _rewrite(path, entry + keys_entry("other", ADMIN_KEY, Role.ADMIN), 10**18)
    authorize(_method("Search"), _bearer(ADMIN_KEY))  # reloads
    assert [key.name for key in authorize.keys] == ["limited", "other"]
    with pytest.raises(ResourceExhausted):  # the reload gave "limited" no fresh burst
        authorize(_method("Search"), _bearer(SEARCH_KEY))
