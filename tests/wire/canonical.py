"""A plain-Python reference of the idempotency fingerprint (`quota_server._wire.fingerprint`).

Written from the scheme in the docstring of `_wire.fingerprint`, independently of the Cython
code: SipHash-2-4 under the fixed key b"quota.v1/idem-fp" of a canonical, typed, length-prefixed
encoding of the parameters, maps sorted by key.
"""
from __future__ import annotations

import struct
from collections.abc import Mapping

KEY = b"quota.v1/idem-fp"
MASK = (1 << 64) - 1


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & MASK


def siphash24(key: bytes, data: bytes) -> int:
    """SipHash-2-4 as in the paper by Aumasson and Bernstein (unsigned 64-bit result)."""
    k0, k1 = struct.unpack("<QQ", key)
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573

    def rounds(n: int) -> None:
        nonlocal v0, v1, v2, v3
        for _ in range(n):
            v0 = (v0 + v1) & MASK
            v1 = _rotl(v1, 13) ^ v0
            v0 = _rotl(v0, 32)
            v2 = (v2 + v3) & MASK
            v3 = _rotl(v3, 16) ^ v2
            v0 = (v0 + v3) & MASK
            v3 = _rotl(v3, 21) ^ v0
            v2 = (v2 + v1) & MASK
            v1 = _rotl(v1, 17) ^ v2
            v2 = _rotl(v2, 32)

    full = len(data) - len(data) % 8
    for i in range(0, full, 8):
        (m,) = struct.unpack_from("<Q", data, i)
        v3 ^= m
        rounds(2)
        v0 ^= m
    last = (len(data) & 0xFF) << 56
    for i, byte in enumerate(data[full:]):
        last |= byte << (8 * i)
    v3 ^= last
    rounds(2)
    v0 ^= last
    v2 ^= 0xFF
    rounds(4)
    return v0 ^ v1 ^ v2 ^ v3


def _body(raw: bytes) -> bytes:
    return struct.pack("<I", len(raw)) + raw


def encode_value(value: object) -> bytes:
    if value is None:
        return b"\x00"
    if isinstance(value, bool):
        return b"\x01" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        if -(2**63) <= value < 2**63:
            return b"\x02" + struct.pack("<q", value)
        return b"\x03" + _body(str(value).encode())
    if isinstance(value, str):
        return b"\x04" + _body(value.encode("utf-8", "surrogatepass"))
    if isinstance(value, bytes):
        return b"\x05" + _body(value)
    if isinstance(value, Mapping):
        out = [b"\x06", struct.pack("<I", len(value))]
        for key, item in sorted(value.items()):
            out += [encode_value(key), encode_value(item)]
        return b"".join(out)
    raise TypeError(type(value))


def canonical(domain: str, *parts: object) -> bytes:
    return b"QFP1" + encode_value(domain) + b"".join(encode_value(p) for p in parts)


def fingerprint(domain: str, *parts: object) -> int:
    digest = siphash24(KEY, canonical(domain, *parts))
    return digest - (1 << 64) if digest >= 1 << 63 else digest
