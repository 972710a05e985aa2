"""``astr_ray.media``: data URLs, capped base64, allowed hosts, media types, and bounded
downloads from a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from astr_ray.media import (
    MediaError,
    check_size,
    decode_base64,
    fetch_url,
    make_data_url,
    media_type,
    parse_data_url,
    url_allowed,
)

CHUNK = 64 * 1024


# -- data URLs and base64 ------------------------------------------------------------------------


def test_data_urls_parse_base64_and_percent_encoded() -> None:
    assert parse_data_url("data:image/png;base64,aGkh") == (b"hi!", "image/png")
    assert parse_data_url("data:text/plain,hi%21") == (b"hi!", "text/plain")
    assert parse_data_url("data:text/plain;charset=utf-8,a%20b") == (b"a b", "text/plain")
    assert parse_data_url("data:,plain") == (b"plain", None)
    assert parse_data_url("data:;base64,aGkh") == (b"hi!", None)


def test_broken_data_urls_and_other_urls_are_none() -> None:
    assert parse_data_url("data:nocomma") is None
    assert parse_data_url("data:image/png;base64,!!notbase64") is None
    assert parse_data_url("data:;base64,not base64!") is None
    assert parse_data_url("https://x.org/a.png") is None
    assert parse_data_url("base64://aGkh") is None


def test_make_data_url_round_trips() -> None:
    blob = bytes(range(256))
    url = make_data_url(blob, "audio/ogg")
    assert url.startswith("data:audio/ogg;base64,")
    assert parse_data_url(url) == (blob, "audio/ogg")


def test_base64_is_decoded_within_the_cap() -> None:
    assert decode_base64("aGkh", 3) == b"hi!"
    assert decode_base64("aGk=\n", 2) == b"hi"  # wrapped lines are fine
    with pytest.raises(MediaError, match="over the 2 byte limit"):
        decode_base64("aGkh", 2)
    with pytest.raises(MediaError, match="not valid base64"):
        decode_base64("a$b!", 100)
    check_size(10, 10)
    with pytest.raises(MediaError, match="over the 1,000 byte limit"):
        check_size(1001, 1000)


# -- who may be asked ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://files.slack.com/files-pri/T1-F1/a.m4a", True),
        ("https://slack.com/x", True),
        ("https://FILES.SLACK.COM/x", True),
        ("http://files.slack.com/x", False),  # the token never goes in the clear
        ("https://files.slack.com:8443/x", False),
        ("https://evilslack.com/x", False),
        ("https://files.slack.com.evil.example/x", False),
        ("https://files.slack.com@evil.example/x", False),  # user info
        ("https://evil.example\\@files.slack.com/x", False),  # does not parse
        ("http://127.0.0.1:8080/files-pri/F1/a", True),  # the API base's origin
        ("http://127.0.0.1:8081/files-pri/F1/a", False),  # another port
        ("https://127.0.0.1:8080/x", False),  # another scheme
        ("/files-pri/F1/a", False),
        ("file:///etc/passwd", False),
    ],
)
def test_url_allowed(url: str, allowed: bool) -> None:
    assert (
        url_allowed(url, origins=["http://127.0.0.1:8080/api/"], https_domains=["slack.com"])
        is allowed
    )


def test_url_allowed_by_exact_host() -> None:
    hosts = ["cdn.discordapp.com"]
    assert url_allowed("https://cdn.discordapp.com/attachments/1/2/a.ogg", https_hosts=hosts)
    assert not url_allowed("https://x.cdn.discordapp.com/a.ogg", https_hosts=hosts)
    assert not url_allowed("https://cdn.discordapp.com/a.ogg")  # nothing allowed


def test_media_type_prefers_a_specific_header_then_the_name() -> None:
    assert media_type("audio/ogg; codecs=opus") == "audio/ogg"
    assert media_type("application/octet-stream", "http://x/file/bot1/voice/f.oga?a=1") == (
        "audio/ogg"
    )
    assert media_type(None, "clip.mp3") == "audio/mpeg"
    assert media_type("application/octet-stream", "noext") == "application/octet-stream"
    assert media_type(None) is None


# -- bounded downloads ---------------------------------------------------------------------------


@dataclass
class Server:
    """A file server on 127.0.0.1 that records what it saw."""

    base: str = ""
    seen: list[web.Request] = field(default_factory=list)
    hung_up: asyncio.Event = field(default_factory=asyncio.Event)
    streamed: int = 0


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()

    async def ok(request: web.Request) -> web.Response:
        srv.seen.append(request)
        return web.Response(body=b"voice bytes", content_type="audio/ogg")

    async def status(request: web.Request) -> web.Response:
        srv.seen.append(request)
        return web.Response(status=int(request.match_info["code"]), text="no")

    async def declared(request: web.Request) -> web.Response:
        srv.seen.append(request)
        return web.Response(body=b"x" * 5000)

    async def endless(request: web.Request) -> web.StreamResponse:
        srv.seen.append(request)
        resp = web.StreamResponse()
        await resp.prepare(request)
        try:
            while srv.streamed < 256 * 1024 * 1024:
                await resp.write(b"\0" * CHUNK)
                srv.streamed += CHUNK
        except ConnectionError:
            srv.hung_up.set()
        return resp

    async def slow(request: web.Request) -> web.Response:
        srv.seen.append(request)
        await asyncio.sleep(5)
        return web.Response(text="late")

    async def auth(request: web.Request) -> web.Response:
        srv.seen.append(request)
        return web.Response(text=request.headers.get("Authorization", "none"))

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/status/{code}", status)
    app.router.add_get("/declared", declared)
    app.router.add_get("/endless", endless)
    app.router.add_get("/slow", slow)
    app.router.add_get("/auth", auth)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    srv.base = f"http://127.0.0.1:{port}"
    yield srv
    await runner.cleanup()


async def test_fetch_url_returns_the_body_and_its_type(server: Server) -> None:
    assert await fetch_url(server.base + "/ok", 100) == (b"voice bytes", "audio/ogg")
    body, _ = await fetch_url(server.base + "/auth", 100, headers={"Authorization": "Bearer s3"})
    assert body == b"Bearer s3"


async def test_a_declared_length_over_the_cap_is_refused(server: Server) -> None:
    with pytest.raises(MediaError, match="over the 1,000 byte limit"):
        await fetch_url(server.base + "/declared", 1000)
    assert len(server.seen) == 1


async def test_an_endless_body_is_cut_off_at_the_cap(server: Server) -> None:
    with pytest.raises(MediaError, match="over the 100,000 byte limit"):
        await fetch_url(server.base + "/endless", 100_000)
    async with asyncio.timeout(10):
        await server.hung_up.wait()  # we hung up: the server could not write on
    assert server.streamed < 64 * 1024 * 1024


async def test_statuses_schemes_timeouts_and_dead_ports_are_media_errors(server: Server) -> None:
    with pytest.raises(MediaError, match="HTTP 404"):
        await fetch_url(server.base + "/status/404", 100)
    with pytest.raises(MediaError, match="only http"):
        await fetch_url("file:///etc/passwd", 100)
    with pytest.raises(MediaError, match="only http"):
        await fetch_url("ftp://127.0.0.1/x", 100)
    with pytest.raises(MediaError, match="TimeoutError"):
        await fetch_url(server.base + "/slow", 100, timeout_s=0.3)
    with pytest.raises(MediaError, match="cannot fetch the media") as err:
        await fetch_url("http://127.0.0.1:1/x?token=secret", 100, headers={"X": "secret"})
    assert "secret" not in str(err.value)
