"""A libp2p dialer driven by hand (a raw asyncio socket plus the sans-IO
multistream, Noise and Yamux cores), so that a test can break the rules at any
layer or put exactly the frames it wants into one read of the server."""

from __future__ import annotations

import asyncio

from kadfast import Ed25519KeyPair
from kadfast import yamux as y
from kadfast.multistream import MultistreamDialer
from kadfast.net import Host
from kadfast.net.connection import NOISE_PROTOCOL, YAMUX_PROTOCOL
from kadfast.noise import NoiseHandshake


def tcp_port(h: Host) -> int:
    return int(h.listen_addrs[0].value_for("tcp"))


async def read_to_eof(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything the server sends until it closes (EOF or reset)."""
    out = bytearray()

    async def go():
        while True:
            try:
                data = await reader.read(65536)
            except ConnectionError:
                return
            if not data:
                return
            out.extend(data)

    await asyncio.wait_for(go(), timeout)
    return bytes(out)


class RawClient:
    """A libp2p dialer driven by hand: a raw socket plus the sans-IO cores."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.crypto = None
        self.session: y.YamuxSession | None = None

    @classmethod
    async def connect(cls, host: Host, local_ip: str | None = None) -> "RawClient":
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", tcp_port(host), local_addr=(local_ip, 0) if local_ip else None
        )
        return cls(reader, writer)

    def close(self) -> None:
        self.writer.transport.abort()

    async def recv(self, timeout: float = 5.0) -> bytes:
        data = await asyncio.wait_for(self.reader.read(65536), timeout)
        if not data:
            raise ConnectionError("closed by the server")
        return data

    async def select_noise(self) -> bytes:
        ms = MultistreamDialer([NOISE_PROTOCOL])
        self.writer.write(ms.data_to_send())
        while not ms.done:
            ms.receive_data(await self.recv())
        return ms.unused

    async def noise(self, rest: bytes = b"", keypair=None, static_key=None) -> bytes:
        hs = NoiseHandshake(keypair or Ed25519KeyPair.generate(), initiator=True, static_key=static_key)
        self.writer.write(hs.data_to_send())
        if rest:
            hs.receive_data(rest)
        while not hs.complete:
            hs.receive_data(await self.recv())
        self.writer.write(hs.data_to_send())  # message 3
        self.crypto = hs.transport()
        return hs.unused

    async def upgrade(self) -> list:
        """The whole upgrade; returns the first Yamux events."""
        rest = await self.noise(await self.select_noise())
        ms = MultistreamDialer([YAMUX_PROTOCOL])
        self.writer.write(self.crypto.encrypt(ms.data_to_send()))
        plain = self.crypto.decrypt(rest) if rest else b""
        if plain:
            ms.receive_data(plain)
        while not ms.done:
            ms.receive_data(self.crypto.decrypt(await self.recv()))
        self.session = y.YamuxSession(True)
        return self.session.receive_data(ms.unused) if ms.unused else []

    def send_plain(self, data: bytes) -> None:
        self.writer.write(self.crypto.encrypt(data))

    def flush(self) -> None:
        out = self.session.data_to_send()
        if out:
            self.send_plain(out)

    async def events_until(self, predicate, timeout: float = 5.0) -> list:
        """Yamux events from the server until ``predicate(events)`` holds."""
        events: list = []

        async def go():
            while not predicate(events):
                events.extend(self.session.receive_data(self.crypto.decrypt(await self.recv())))

        await asyncio.wait_for(go(), timeout)
        return events

    async def events_to_eof(self, timeout: float = 5.0) -> list:
        """Yamux events from everything the server sends until it closes."""
        data = await read_to_eof(self.reader, timeout)
        return self.session.receive_data(self.crypto.decrypt(data)) if data else []
