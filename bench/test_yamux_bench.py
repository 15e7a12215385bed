"""pytest-benchmark: the Yamux session core on its hot paths (no sockets).

    python -m pytest bench/test_yamux_bench.py --benchmark-only

Per-frame cost = the reported time / ``extra_info["frames_per_call"]``.
"""

from kadfast.yamux import (
    DEFAULT_WINDOW,
    FLAG_FIN,
    FLAG_SYN,
    MAX_WINDOW,
    TYPE_DATA,
    TYPE_WINDOW_UPDATE,
    YamuxSession,
    encode_header,
)

FRAMES = 64
PAYLOAD = b"k" * 100


def test_receive_64_small_data_frames(benchmark):
    """receive_data of one buffer holding 64 Data frames of 100 bytes on an
    open stream, with the consumed() call that keeps the window open."""
    s = YamuxSession(False)
    s.receive_data(encode_header(TYPE_DATA, FLAG_SYN, 1, 0))
    buf = (encode_header(TYPE_DATA, 0, 1, len(PAYLOAD)) + PAYLOAD) * FRAMES
    total = FRAMES * len(PAYLOAD)
    receive, consumed, drain = s.receive_data, s.consumed, s.data_to_send

    def run():
        events = receive(buf)
        consumed(1, total)
        drain()
        return events

    events = benchmark(run)
    assert len(events) == FRAMES
    benchmark.extra_info["frames_per_call"] = FRAMES


def test_send_100_bytes(benchmark):
    """send() of a 100-byte message on an open stream, then data_to_send()."""
    c = YamuxSession(True)
    sid = c.open_stream()
    c.send(sid, b"x")
    c.data_to_send()
    # a window large enough for every round of the benchmark
    c.receive_data(encode_header(TYPE_WINDOW_UPDATE, 0, sid, MAX_WINDOW - DEFAULT_WINDOW))
    send, drain = c.send, c.data_to_send

    def run():
        send(sid, PAYLOAD)
        return drain()

    assert len(benchmark(run)) == 12 + len(PAYLOAD)
    benchmark.extra_info["frames_per_call"] = 1


def test_request_stream_lifecycle(benchmark):
    """A server's whole share of a one-shot request: receive SYN+data+FIN in
    one frame, reply, close (the stream is freed), data_to_send()."""
    s = YamuxSession(False, max_streams=1 << 20)
    frames = {}
    next_id = [1]
    receive, send, close, drain = s.receive_data, s.send, s.close_stream, s.data_to_send

    def run():
        sid = next_id[0]
        next_id[0] = sid + 2
        wire = frames.get(sid)
        if wire is None:
            wire = encode_header(TYPE_DATA, FLAG_SYN | FLAG_FIN, sid, len(PAYLOAD)) + PAYLOAD
        receive(wire)
        send(sid, PAYLOAD)
        close(sid)
        return drain()

    # the reply's Data frame, then its FIN in a WindowUpdate frame of its own
    # (js-libp2p drops the payload of a Data frame that carries FIN)
    assert len(benchmark(run)) == 12 + len(PAYLOAD) + 12
    assert s.stream_ids() == []
    benchmark.extra_info["frames_per_call"] = 2
