from typing import final

_Buffer = bytes | bytearray | memoryview

def openssl_version() -> str: ...

@final
class NoiseTransport:
    """The compiled Noise transport; see kadfast.noise.NoiseTransport, its twin."""

    _send_n: int
    _recv_n: int
    @property
    def _buf(self) -> bytearray: ...
    # __cinit__ in the .pyx: the arguments go to __new__
    def __new__(cls, send_key: bytes, recv_key: bytes) -> NoiseTransport: ...
    def encrypt(self, plaintext: _Buffer) -> bytes: ...
    def decrypt(self, data: _Buffer) -> bytes: ...
