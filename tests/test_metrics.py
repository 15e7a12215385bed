"""kadfast.metrics: Prometheus text format 0.0.4 and the /metrics HTTP server."""

import asyncio
import re

import pytest

import kadfast.loop
from kadfast.loop import uvloop_available
from kadfast.metrics import CONTENT_TYPE, DEFAULT_BUCKETS, MAX_REQUEST_HEAD, Metrics, serve_metrics

# one sample line of the text format: name, optional labels, value
SAMPLE_RE = re.compile(
    r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*"(,[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*")*\})? '
    r"(-?[0-9.e+-]+|[+-]Inf|NaN)$"
)


def check_format(text: str) -> None:
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        assert SAMPLE_RE.match(line), line


def test_render_counters_gauges_histograms():
    m = Metrics()
    m.counter("kad_requests_total", "Inbound kad requests")
    m.inc("kad_requests_total", {"type": "FIND_NODE"})
    m.inc("kad_requests_total", {"type": "FIND_NODE"}, 2)
    m.inc("kad_requests_total", {"type": "PING"})
    m.inc("kad_plain_total")
    peers = [1, 2, 3]
    m.gauge("kad_routing_peers", "Peers in the routing table", lambda: len(peers))
    m.observe("kad_query_seconds", 0.003)
    m.observe("kad_query_seconds", 0.3)
    m.observe("kad_query_seconds", 60.0)
    text = m.render()
    check_format(text)
    lines = text.splitlines()
    assert lines[:4] == [
        "# HELP kad_requests_total Inbound kad requests",
        "# TYPE kad_requests_total counter",
        'kad_requests_total{type="FIND_NODE"} 3',
        'kad_requests_total{type="PING"} 1',
    ]
    assert "# TYPE kad_plain_total counter" in lines and "kad_plain_total 1" in lines
    assert "# HELP kad_routing_peers Peers in the routing table" in lines
    assert "# TYPE kad_routing_peers gauge" in lines and "kad_routing_peers 3" in lines
    peers.append(4)
    assert "kad_routing_peers 4" in m.render().splitlines()  # read at scrape time
    assert "# TYPE kad_query_seconds histogram" in lines
    assert 'kad_query_seconds_bucket{le="0.005"} 1' in lines
    assert 'kad_query_seconds_bucket{le="0.25"} 1' in lines
    assert 'kad_query_seconds_bucket{le="0.5"} 2' in lines
    assert 'kad_query_seconds_bucket{le="10"} 2' in lines
    assert 'kad_query_seconds_bucket{le="+Inf"} 3' in lines
    assert "kad_query_seconds_count 3" in lines
    assert float(next(ln for ln in lines if ln.startswith("kad_query_seconds_sum ")).split()[1]) == pytest.approx(60.303)
    buckets = [ln for ln in lines if ln.startswith("kad_query_seconds_bucket")]
    assert len(buckets) == len(DEFAULT_BUCKETS) + 1
    counts = [int(ln.rsplit(" ", 1)[1]) for ln in buckets]
    assert counts == sorted(counts)  # cumulative


def test_labelled_gauge_histogram_labels_and_timer():
    m = Metrics()
    m.gauge("kad_store_items", "Items in the store", lambda: [({"kind": "record"}, 5), ({"kind": "provider"}, 2.5)])
    m.histogram("rpc_seconds", "RPC durations", buckets=[0.1, 1])
    m.observe("rpc_seconds", 0.5, {"peer": "a"})
    with m.timer("rpc_seconds", {"peer": "b"}):
        pass
    text = m.render()
    check_format(text)
    assert 'kad_store_items{kind="record"} 5' in text.splitlines()
    assert 'kad_store_items{kind="provider"} 2.5' in text.splitlines()
    assert 'rpc_seconds_bucket{peer="a",le="1"} 1' in text.splitlines()
    assert 'rpc_seconds_bucket{peer="b",le="0.1"} 1' in text.splitlines()
    assert 'rpc_seconds_count{peer="b"} 1' in text.splitlines()


def test_label_and_help_escaping():
    m = Metrics()
    m.counter("odd_total", 'help with \\ backslash\nand newline and "quotes"')
    m.inc("odd_total", {"path": 'C:\\dir\n"x"', "b": "ü"})
    text = m.render()
    check_format(text)
    assert '# HELP odd_total help with \\\\ backslash\\nand newline and "quotes"' in text.splitlines()
    # label names sorted; backslash, newline and double quote escaped
    assert 'odd_total{b="ü",path="C:\\\\dir\\n\\"x\\""} 1' in text.splitlines()


def test_invalid_names_and_misuse():
    m = Metrics()
    with pytest.raises(ValueError):
        m.inc("bad-name")
    with pytest.raises(ValueError):
        m.inc("ok_total", {"bad-label": "x"})
    with pytest.raises(ValueError):
        m.inc("ok_total", {"__reserved": "x"})
    with pytest.raises(ValueError):
        m.inc("ok_total", value=-1)
    m.inc("ok_total")
    with pytest.raises(ValueError):
        m.observe("ok_total", 1.0)  # a counter is not a histogram
    m.observe("lat_seconds", 1.0)
    with pytest.raises(ValueError):
        m.inc("lat_seconds_count")  # collides with the histogram's series
    with pytest.raises(ValueError):
        m.observe("lat_seconds", 1.0, {"le": "1"})


def test_failing_gauge_is_left_out_of_the_scrape():
    m = Metrics()
    m.gauge("broken", "raises", lambda: 1 / 0)
    m.gauge("fine", "works", lambda: 1)
    text = m.render()
    assert "broken" not in text
    assert "fine 1" in text.splitlines()


def test_empty_registry_renders_empty():
    assert Metrics().render() == ""


async def http(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)  # until the server closes
    finally:
        writer.close()


def split_response(raw: bytes):
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("ascii").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, v in (ln.split(":", 1) for ln in lines[1:])}
    return status, headers, body


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request):
    """Run a coroutine function on a fresh loop of each kind the node may use."""
    if request.param == "uvloop" and not uvloop_available():
        pytest.skip("uvloop is not installed")
    return lambda main: kadfast.loop.run(main, request.param)


def test_http_get_metrics(run):
    async def main():
        m = Metrics()
        m.inc("kad_requests_total", {"type": "PING"})
        m.gauge("up", "always one", lambda: 1)
        srv = await serve_metrics(m)
        port = srv.sockets[0].getsockname()[1]
        try:
            raw = await http(port, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n")
            status, headers, body = split_response(raw)
            assert status == 200
            assert headers["content-type"] == CONTENT_TYPE
            assert headers["content-type"].startswith("text/plain; version=0.0.4")
            assert headers["connection"] == "close"
            assert int(headers["content-length"]) == len(body)
            assert body.decode() == m.render()
            assert 'kad_requests_total{type="PING"} 1' in body.decode().splitlines()
            # a second connection sees fresh values; query strings are ignored
            m.inc("kad_requests_total", {"type": "PING"})
            _, _, body = split_response(await http(port, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"))
            assert 'kad_requests_total{type="PING"} 2' in body.decode().splitlines()
            # HEAD: headers only
            status, headers, body = split_response(await http(port, b"HEAD /metrics HTTP/1.1\r\n\r\n"))
            assert status == 200 and body == b"" and int(headers["content-length"]) > 0
        finally:
            srv.close()
            await srv.wait_closed()

    run(main)


def test_http_errors_and_oversized_request(run):
    async def main():
        srv = await serve_metrics(Metrics(), port=0)
        port = srv.sockets[0].getsockname()[1]
        try:
            status, _, _ = split_response(await http(port, b"GET / HTTP/1.1\r\n\r\n"))
            assert status == 404
            status, _, _ = split_response(await http(port, b"GET /metricsx HTTP/1.1\r\n\r\n"))
            assert status == 404
            status, headers, _ = split_response(await http(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n"))
            assert status == 405 and headers["allow"] == "GET, HEAD"
            status, _, _ = split_response(await http(port, b"garbage\r\n\r\n"))
            assert status == 400
            # a request head over 8 KiB is dropped: connection closed, no response
            big = b"GET /metrics HTTP/1.1\r\nX-Filler: " + b"a" * MAX_REQUEST_HEAD + b"\r\n\r\n"
            try:
                raw = await http(port, big)
            except ConnectionResetError:
                raw = b""
            assert raw == b""
            # a head just under the limit is still served
            ok = b"GET /metrics HTTP/1.1\r\nX-Filler: " + b"a" * (MAX_REQUEST_HEAD - 100) + b"\r\n\r\n"
            status, _, _ = split_response(await http(port, ok))
            assert status == 200
            # a client that closes without a full request does not upset the server
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /met")
            writer.close()
            status, _, _ = split_response(await http(port, b"GET /metrics HTTP/1.1\r\n\r\n"))
            assert status == 200
        finally:
            srv.close()
            await srv.wait_closed()

    run(main)


def test_a_counter_read_at_scrape_time():
    counts = {"FIND_NODE": 3}
    m = Metrics()
    m.counter("kad_requests_total", "requests by type", lambda: [({"type": t}, n) for t, n in counts.items()])
    assert 'kad_requests_total{type="FIND_NODE"} 3' in m.render()
    counts["PUT_VALUE"] = 1
    text = m.render()
    assert "# TYPE kad_requests_total counter" in text
    assert 'kad_requests_total{type="PUT_VALUE"} 1' in text and 'kad_requests_total{type="FIND_NODE"} 3' in text
    with pytest.raises(TypeError):
        m.counter("other_total", "x", fn=42)
