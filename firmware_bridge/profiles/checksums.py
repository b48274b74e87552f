"""The checksums small devices put after their packets, by the names config uses.

=================  =====  ===================================================================
name               bytes  algorithm (check value of ``b"123456789"``)
=================  =====  ===================================================================
``sum8``           1      sum of the bytes, modulo 256 (0xDD)
``xor8``           1      XOR of the bytes (0x31)
``crc8``           1      CRC-8/SMBUS: poly 0x07, init 0, not reflected, no final XOR (0xF4)
``crc16-ccitt``    2      CRC-16/CCITT-FALSE: poly 0x1021, init 0xFFFF, not reflected (0x29B1)
``crc16-xmodem``   2      CRC-16/XMODEM: poly 0x1021, init 0 (0x31C3)
``crc32``          4      CRC-32/ISO-HDLC as zlib computes it (0xCBF43926)
=================  =====  ===================================================================

Check values are those of the CRC catalogue (reveng.sourceforge.io/crc-catalogue), which the
tests verify.
"""

from __future__ import annotations

import binascii
import zlib
from collections.abc import Callable
from typing import Literal

__all__ = ["CHECKSUMS", "ChecksumName", "checksum_size", "compute"]

ChecksumName = Literal["none", "sum8", "xor8", "crc8", "crc16-ccitt", "crc16-xmodem", "crc32"]


def _crc8_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table.append(crc)
    return tuple(table)


_CRC8 = _crc8_table()


def _crc8(data: bytes) -> int:
    crc = 0
    table = _CRC8
    for byte in data:
        crc = table[crc ^ byte]
    return crc


def _xor8(data: bytes) -> int:
    out = 0
    for byte in data:
        out ^= byte
    return out


CHECKSUMS: dict[str, tuple[int, Callable[[bytes], int]]] = {
    "sum8": (1, lambda data: sum(data) & 0xFF),
    "xor8": (1, _xor8),
    "crc8": (1, _crc8),
    "crc16-ccitt": (2, lambda data: binascii.crc_hqx(data, 0xFFFF)),
    "crc16-xmodem": (2, lambda data: binascii.crc_hqx(data, 0)),
    "crc32": (4, zlib.crc32),
}
"""Name → (size in bytes, function of the covered bytes)."""


def checksum_size(name: str) -> int:
    """Bytes the checksum ``name`` takes on the wire (0 for ``none``)."""
    return CHECKSUMS[name][0] if name in CHECKSUMS else 0


def compute(name: str, data: bytes) -> int:
    """The checksum ``name`` of ``data``.

    Raises:
        KeyError: unknown name (``none`` included: there is nothing to compute).
    """
    return CHECKSUMS[name][1](data)
