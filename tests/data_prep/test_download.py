import threading
import time

import pytest

from data_prep.download import DownloadConfig, Downloader, map_unordered

GOOD = b"\xff\xd8\xff\xe0 pretend jpeg bytes" * 100


def fast_config(**overrides) -> DownloadConfig:
    base = dict(connect_timeout=2.0, read_timeout=0.4, retries=2, backoff=0.01, max_backoff=5.0, max_bytes=2**20,
                allow_private_addresses=True)  # the test server is on 127.0.0.1
    return DownloadConfig(**{**base, **overrides})


class RecordedSleep:
    """Stands in for time.sleep so backoff can be checked without waiting."""

    def __init__(self):
        self.delays = []

    def __call__(self, seconds):
        self.delays.append(seconds)


def test_good_url_returns_its_bytes_in_one_attempt(http_server):
    http_server.routes["/good.jpg"] = http_server.reply(200, GOOD)
    result = Downloader(fast_config()).fetch(http_server.url("/good.jpg"))
    assert result.ok and result.data == GOOD and result.attempts == 1


def test_404_is_not_retried(http_server):
    result = Downloader(fast_config(retries=3)).fetch(http_server.url("/missing.jpg"))
    assert (result.reason, result.attempts) == ("http_404", 1)
    assert http_server.hits["/missing.jpg"] == 1


def test_500_is_retried_with_growing_backoff_until_it_succeeds(http_server):
    http_server.routes["/flaky.jpg"] = http_server.failing_first(2, 500, http_server.reply(200, GOOD))
    sleep = RecordedSleep()
    result = Downloader(fast_config(retries=3, backoff=1.0), sleep=sleep).fetch(http_server.url("/flaky.jpg"))
    assert result.ok and result.data == GOOD and result.attempts == 3
    assert http_server.hits["/flaky.jpg"] == 3
    # Jitter keeps each delay within [half, full] of backoff * 2**k, so the second is never shorter.
    assert len(sleep.delays) == 2
    assert 0.5 <= sleep.delays[0] <= 1.0 <= sleep.delays[1] <= 2.0


def test_500_gives_up_after_the_configured_retries(http_server):
    http_server.routes["/down.jpg"] = http_server.reply(500, b"oops")
    result = Downloader(fast_config(retries=1), sleep=RecordedSleep()).fetch(http_server.url("/down.jpg"))
    assert (result.reason, result.attempts) == ("http_500", 2)


def test_retry_after_header_is_honoured_up_to_max_backoff(http_server):
    http_server.routes["/busy.jpg"] = lambda h: (
        http_server.reply(503, b"", {"Retry-After": "3"})(h) if http_server.hits[h.path] == 1
        else http_server.reply(200, GOOD)(h))
    sleep = RecordedSleep()
    result = Downloader(fast_config(max_backoff=10.0), sleep=sleep).fetch(http_server.url("/busy.jpg"))
    assert result.ok and sleep.delays == [3.0]


def test_slow_server_times_out_and_is_retried(http_server):
    http_server.routes["/slow.jpg"] = http_server.delayed(1.5, http_server.reply(200, GOOD))
    started = time.monotonic()
    result = Downloader(fast_config(read_timeout=0.3, retries=1)).fetch(http_server.url("/slow.jpg"))
    assert (result.reason, result.attempts) == ("timeout", 2)
    assert time.monotonic() - started < 1.5


def test_body_that_stalls_midway_is_a_timeout(http_server):
    http_server.routes["/stall.jpg"] = http_server.stalled_body(GOOD[:100], 1.5, declared=len(GOOD))
    result = Downloader(fast_config(read_timeout=0.3, retries=0)).fetch(http_server.url("/stall.jpg"))
    assert result.reason == "timeout"


def test_redirect_to_http_is_followed(http_server):
    http_server.routes["/good.jpg"] = http_server.reply(200, GOOD)
    http_server.routes["/moved"] = http_server.redirect("/good.jpg", 301)
    http_server.routes["/hop"] = http_server.redirect(http_server.url("/moved"))
    result = Downloader(fast_config()).fetch(http_server.url("/hop"))
    assert result.ok and result.data == GOOD and result.final_url == http_server.url("/good.jpg")


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/x.jpg", "gopher://127.0.0.1/x"])
def test_redirect_to_another_scheme_is_refused(http_server, tmp_path, target):
    http_server.routes["/sneaky"] = http_server.redirect(target)
    # Even with local reads on, a server must not be able to point us at the local disk.
    result = Downloader(fast_config(allow_local=True)).fetch(http_server.url("/sneaky"))
    assert result.reason == "bad_scheme" and result.attempts == 1


def test_redirect_loop_stops(http_server):
    http_server.routes["/loop"] = http_server.redirect("/loop")
    result = Downloader(fast_config(max_redirects=3)).fetch(http_server.url("/loop"))
    assert result.reason == "too_many_redirects"
    assert http_server.hits["/loop"] == 4


def test_declared_huge_body_is_refused_before_reading(http_server):
    http_server.routes["/huge.jpg"] = http_server.reply(
        200, b"x" * 16, {"Content-Length": str(10 * 2**30)}, content_length=False)
    result = Downloader(fast_config(max_bytes=2**20)).fetch(http_server.url("/huge.jpg"))
    assert (result.reason, result.attempts) == ("too_large", 1)


def test_undeclared_huge_body_is_abandoned_early(http_server):
    http_server.routes["/endless.jpg"] = http_server.endless_body()
    started = time.monotonic()
    result = Downloader(fast_config(max_bytes=2**20)).fetch(http_server.url("/endless.jpg"))
    assert result.reason == "too_large"
    assert time.monotonic() - started < 5
    deadline = time.monotonic() + 5
    while "/endless.jpg" not in http_server.bytes_sent and time.monotonic() < deadline:
        time.sleep(0.05)
    # The server noticed the hang-up long before its 512 MiB safety net (socket buffers hold a few MiB).
    assert http_server.bytes_sent["/endless.jpg"] < 64 * 2**20


def test_unknown_scheme_and_bad_url_are_reasons_not_exceptions():
    downloader = Downloader(fast_config())
    assert downloader.fetch("ftp://example.com/a.jpg").reason == "bad_scheme"
    assert downloader.fetch("http://[::1/bad").reason == "bad_url"
    refused = downloader.fetch("http://127.0.0.1:9/nothing-listens-here.jpg")
    assert refused.reason == "connection_error" and refused.attempts == 3


def test_local_paths_only_when_allowed(tmp_path):
    path = tmp_path / "a.jpg"
    path.write_bytes(GOOD)
    assert Downloader(fast_config()).fetch(str(path)).reason == "bad_scheme"
    local = Downloader(fast_config(allow_local=True))
    assert local.fetch(str(path)).data == GOOD
    assert local.fetch(path.as_uri()).data == GOOD
    assert local.fetch(str(tmp_path / "nope.jpg")).reason == "file_missing"
    assert Downloader(fast_config(allow_local=True, max_bytes=10)).fetch(str(path)).reason == "too_large"


def test_fetch_many_runs_in_parallel_with_a_session_per_thread(http_server):
    for i in range(8):
        http_server.routes[f"/img{i}.jpg"] = http_server.delayed(0.4, http_server.reply(200, GOOD + bytes([i])))
    downloader = Downloader(fast_config(read_timeout=2.0))
    started = time.monotonic()
    results = list(downloader.fetch_many([http_server.url(f"/img{i}.jpg") for i in range(8)], workers=8))
    elapsed = time.monotonic() - started
    assert sorted(r.data[-1] for r in results) == list(range(8))
    assert elapsed < 8 * 0.4 / 2  # serial would take 3.2 s

    sessions = []
    threads = [threading.Thread(target=lambda: sessions.append(downloader.session)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sessions[0] is not sessions[1]
    assert downloader.session is downloader.session


def test_map_unordered_is_lazy_and_propagates_errors():
    pulled = []

    def source():
        for i in range(1000):
            pulled.append(i)
            yield i

    results = map_unordered(lambda x: x * x, source(), workers=2, in_flight=4)
    first = next(results)
    assert first in {0, 1, 4, 9} and len(pulled) <= 5
    assert sorted([first, *results]) == [i * i for i in range(1000)]

    def boom(x):
        raise ValueError(f"bad {x}")

    with pytest.raises(ValueError):
        list(map_unordered(boom, range(3), workers=2))


# ---- safe fetching: private addresses and X-Robots-Tag opt-outs ----------------------------------------------
def resolver(answers: dict):
    """A getaddrinfo stand-in: host -> address; anything else resolves to the real loopback test server."""
    def resolve(host, port, *args):
        return [(2, 1, 6, "", (answers.get(host, "127.0.0.1"), port))]
    return resolve


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "192.168.0.7", "169.254.169.254", "224.0.0.1",
                                     "0.0.0.0", "::1", "fd00::1"])
def test_private_addresses_are_refused_by_default(http_server, address):
    http_server.routes["/good.jpg"] = http_server.reply(200, GOOD)
    url = http_server.url("/good.jpg").replace("127.0.0.1", "internal.example")
    result = Downloader(fast_config(allow_private_addresses=False), resolve=resolver({"internal.example": address})).fetch(url)
    assert result.reason == "private_address" and address in result.detail
    assert http_server.hits["/good.jpg"] == 0  # refused before any connection


def test_a_redirect_from_a_public_host_to_a_private_one_is_refused(http_server):
    """The first host "resolves" to a public address (the request itself still reaches the local test server);
    its redirect names another host that resolves to loopback, and that hop is refused before connecting."""
    http_server.routes["/good.jpg"] = http_server.reply(200, GOOD)
    http_server.routes["/hop"] = http_server.redirect(http_server.url("/good.jpg").replace("127.0.0.1", "localhost"))
    answers = {"127.0.0.1": "93.184.216.34", "localhost": "127.0.0.1"}
    result = Downloader(fast_config(allow_private_addresses=False), resolve=resolver(answers),
                        peer_allowed=lambda address: True).fetch(http_server.url("/hop"))  # the DNS check alone
    assert result.reason == "private_address" and "localhost" in result.detail
    assert http_server.hits["/hop"] == 1 and http_server.hits["/good.jpg"] == 0


def test_a_host_that_resolves_public_but_connects_private_is_refused(http_server):
    """DNS rebinding: the check's answer is public, the connection lands on loopback; the open socket's peer is
    checked before any request byte is sent."""
    http_server.routes["/good.jpg"] = http_server.reply(200, GOOD)
    url = http_server.url("/good.jpg").replace("127.0.0.1", "localhost")
    result = Downloader(fast_config(allow_private_addresses=False),
                        resolve=resolver({"localhost": "93.184.216.34"})).fetch(url)
    assert result.reason == "private_address" and "connected to 127.0.0.1" in result.detail
    assert http_server.hits["/good.jpg"] == 0


def test_private_addresses_are_fetched_with_the_flag(http_server):
    http_server.routes["/good.jpg"] = http_server.reply(200, GOOD)
    assert Downloader(fast_config(allow_private_addresses=True)).fetch(http_server.url("/good.jpg")).data == GOOD


@pytest.mark.parametrize("header", ["noai", "noimageai", "noindex, NoAI", "somebot: noimageai"])
def test_x_robots_tag_opt_outs_are_skipped_unless_turned_off(http_server, header):
    http_server.routes["/optout.jpg"] = http_server.reply(200, GOOD, {"X-Robots-Tag": header})
    result = Downloader(fast_config()).fetch(http_server.url("/optout.jpg"))
    assert result.reason == "robots_noai" and result.attempts == 1
    kept = Downloader(fast_config(honor_robots_tag=False)).fetch(http_server.url("/optout.jpg"))
    assert kept.ok and kept.data == GOOD


def test_other_robots_directives_do_not_skip(http_server):
    http_server.routes["/indexed.jpg"] = http_server.reply(200, GOOD, {"X-Robots-Tag": "noindex, nofollow"})
    assert Downloader(fast_config()).fetch(http_server.url("/indexed.jpg")).ok
