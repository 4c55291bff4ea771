"""The idempotency fingerprint: SipHash-2-4 of a canonical encoding, stable forever.

Fingerprints are persisted with every idempotency record, so these tests pin the scheme: the
SipHash reference vectors, an independent Python implementation of the canonical encoding, and
a few golden values that must never change.
"""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from quota.v1 import quota_service_pb2 as pb

from quota_server import _wire

from . import canonical
from .support import dataplane_on

# SipHash-2-4 test vectors of the reference implementation: key 00..0f, message 00..n-1.
SIPHASH_VECTORS = {
    0: 0x726FDB47DD0E0E31,
    1: 0x74F839C593DC67FD,
    2: 0x0D6C8009D9A94F5A,
    15: 0xA129CA6149BE45E5,  # the example in the SipHash paper
}

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.text(max_size=20),
                    st.binary(max_size=20))
values = st.one_of(scalars, st.dictionaries(st.text(max_size=8), st.one_of(st.integers(-(2**63), 2**63 - 1),
                                                                          st.text(max_size=8)), max_size=5))


def test_siphash_reference_vectors():
    """Goal: the C SipHash-2-4 and the Python reference both give the published vectors."""
    key = bytes(range(16))
    for n, expected in SIPHASH_VECTORS.items():
        assert _wire.siphash24_bytes(key, bytes(range(n))) == expected
        assert canonical.siphash24(key, bytes(range(n))) == expected


@given(st.binary(min_size=16, max_size=16), st.binary(max_size=80))
def test_siphash_matches_the_python_reference(key, data):
    """Goal: the C SipHash equals the Python one on every length (block and tail handling)."""
    assert _wire.siphash24_bytes(key, data) == canonical.siphash24(key, data)


@given(st.text(max_size=30), st.lists(values, max_size=6))
@settings(max_examples=300)
def test_fingerprint_is_the_documented_canonical_encoding(domain, parts):
    """Goal: _wire.fingerprint is exactly the scheme its docstring describes (written again here
    in plain Python), for every value type including big ints, bytes and maps."""
    assert _wire.fingerprint(domain, *parts) == canonical.fingerprint(domain, *parts)


def test_fingerprint_golden_values():
    """Goal: the persisted fingerprints never change (a change here breaks idempotency of every
    stored reservation, charge and grant: a retry would be refused as IDEMPOTENCY_KEY_REUSED)."""
    assert _wire.fingerprint_reserve(10, "", {}, 0, False, 0, 1, {}) == -5305037058199442709
    assert _wire.fingerprint_reserve(0, "llm.chat", {"input_tokens": 1200, "output_tokens": 400}, 30000, True, 5,
                                     2, {"team": "core", "model": "m-1"}) == 7488067975646964727
    assert _wire.fingerprint_commit(None, {}, {}) == 1753002744989106269
    assert _wire.fingerprint_commit(0, {}, {}) == -3405257804963206361
    assert _wire.fingerprint_charge(0, "image.generate", {}, {"k": "v"}) == 6478988841544832692
    assert _wire.fingerprint(_wire.DOMAIN_GRANT, 100, 1, 0, 0) == 7658261056002862932


def test_fingerprint_distinguishes_what_matters():
    """Goal: absence differs from zero, bool from int, kinds from each other, and map order is
    not a parameter."""
    assert _wire.fingerprint_commit(None, {}, {}) != _wire.fingerprint_commit(0, {}, {})
    assert _wire.fingerprint("d", True) != _wire.fingerprint("d", 1)
    assert _wire.fingerprint("d", "1") != _wire.fingerprint("d", 1)
    assert _wire.fingerprint("d", "ab", "c") != _wire.fingerprint("d", "a", "bc")
    assert _wire.fingerprint_charge(5, "", {}, {}) != _wire.fingerprint(_wire.DOMAIN_GRANT, 5, "", {}, {})
    forward = {f"k{i}": i for i in range(10)}
    backward = dict(reversed(list(forward.items())))
    assert _wire.fingerprint_reserve(1, "", forward, 0, False, 0, 1, backward) == \
        _wire.fingerprint_reserve(1, "", backward, 0, False, 0, 1, forward)


@given(st.dictionaries(st.text(min_size=1, max_size=6), st.integers(0, 10**15), max_size=6),
       st.dictionaries(st.text(min_size=1, max_size=6), st.text(max_size=6), max_size=6))
@settings(max_examples=100)
def test_python_and_fast_path_fingerprints_agree(config, snapshot, quantities, labels):
    """Goal: a Reserve and a Charge get the same fingerprint on both paths (a retry may take
    either), with maps whatever their wire order."""
    dp, _ = dataplane_on(snapshot, config)
    request = pb.ReserveRequest(account_id="acct-prepaid", reservation_id="r1", amount=5, action="llm.chat",
                                quantities=quantities, labels=labels, ttl_ms=1000, on_expire=2)
    fast = dp.wire.decode(1, request.SerializeToString())
    python = dp.prepare_reserve(request).op
    if fast is not None:
        assert fast[0][3] == python[3]
    assert python[3] == canonical.fingerprint(_wire.DOMAIN_RESERVE, 5, "llm.chat", quantities, 1000, False, 0, 2,
                                              labels)
    charge = pb.ChargeRequest(account_id="acct-prepaid", charge_id="c1", action="image.generate",
                              quantities=quantities, labels=labels)
    fast = dp.wire.decode(5, charge.SerializeToString())
    python = dp.prepare_charge(charge).op
    if fast is not None:
        assert fast[0][3] == python[3]


def test_nothing_uses_the_old_repr_fingerprint():
    """Goal: the data plane and the admin service use only the canonical scheme (the old
    validate.fingerprint hashed a repr, which differs between the two request paths)."""
    from quota_server import admin, dataplane

    assert not hasattr(admin, "fingerprint")
    assert not hasattr(dataplane, "fingerprint")
