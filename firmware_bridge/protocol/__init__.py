"""Wire protocols spoken by sensor firmware, one module per version.

:mod:`firmware_bridge.protocol.v1` is the current one: SLIP framing, CRC-32, and HELLO,
IMU_BATCH and STATUS frames (specified in ``docs/protocol.md``). An incompatible successor gets
its own module beside it, so a gateway keeps decoding devices in the field that still speak v1.
"""
