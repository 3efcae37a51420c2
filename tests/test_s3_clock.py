"""gc ages incomplete multipart uploads by the S3 server's clock, not the local one.

moto dates every multipart upload 2010-11-10, so its server sits behind a
proxy on loopback (`ClockProxy`, real HTTP both ways) that gives it a clock:
each upload is dated when it was begun, and each answer's Date header is the
server's time. Skew is the proxy's clock set off from this machine's; nothing
is patched in-process.
"""

from __future__ import annotations

import http.client
import re
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import torch
from helpers import moto_endpoint
from test_s3 import aws, bucket, objects, team
from test_s3_faults import BIG_ARCH, BIG_ARGS, big_model

from registry import Registry

pytest.importorskip("boto3")
pytest.importorskip("moto.server")

__all__ = ["aws", "bucket", "team"]  # test_s3's fixtures, served here through the proxy

DAY = timedelta(days=1)
# Request and answer headers that belong to one connection, not to the message.
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}
# What boto3's CRC checksums add to a request (the checksum itself, or one in a trailer).
CHECKSUM_HEADERS = ("x-amz-checksum", "x-amz-sdk-checksum", "x-amz-trailer")


class ClockProxy:
    """An HTTP proxy on loopback in front of moto that gives the S3 server a clock.

    The server's clock is this machine's plus `offset`. The proxy notes, by that
    clock, when each CreateMultipartUpload is answered, writes it into the
    `<Initiated>` of ListMultipartUploads answers, and sends `date()` as every
    answer's Date header (none when it returns None). With `hold_parts`, a part's
    upload waits until a listing has shown an upload, so a gc sees it running.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.offset = timedelta(0)
        self.date: Callable[[], str | None] = lambda: format_datetime(self.now(), usegmt=True)
        self.hold_parts = False
        self.refuse_checksums = False
        self.checksummed = 0
        self.requests: list[str] = []  # "GET /bucket/key?query", in order
        self.created = threading.Event()  # an upload was begun
        self.listed = threading.Event()  # a listing showed an upload
        self._started: dict[bytes, datetime] = {}
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Forward)
        self._server.daemon_threads = True
        self._server.proxy = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def now(self) -> datetime:
        return datetime.now(timezone.utc) + self.offset

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def begun(self, answer: bytes) -> None:
        [upload_id] = re.findall(rb"<UploadId>(.*?)</UploadId>", answer)
        self._started[upload_id] = self.now()
        self.created.set()

    def dated(self, listing: bytes) -> bytes:
        """A ListMultipartUploads answer with each upload's real start."""

        def initiated(upload: re.Match[bytes]) -> bytes:
            [upload_id] = re.findall(rb"<UploadId>(.*?)</UploadId>", upload[0])
            when = self._started[upload_id].isoformat(timespec="milliseconds")
            stamp = b"<Initiated>%s</Initiated>" % when.replace("+00:00", "Z").encode()
            return re.sub(rb"<Initiated>.*?</Initiated>", stamp, upload[0])

        dated, uploads = re.subn(rb"<Upload>.*?</Upload>", initiated, listing, flags=re.S)
        if uploads:
            self.listed.set()
        return dated


class _Forward(BaseHTTPRequestHandler):
    """Send each request on to moto; answer with what it said, on the proxy's clock."""

    protocol_version = "HTTP/1.1"  # boto3 keeps its connections open

    def _forward(self) -> None:
        proxy: ClockProxy = self.server.proxy  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        proxy.requests.append(f"{self.command} {self.path}")
        if any(name.lower().startswith(CHECKSUM_HEADERS) for name in self.headers):
            proxy.checksummed += 1
            if proxy.refuse_checksums:
                self._refuse_checksum()
                return
        query = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
        if proxy.hold_parts and "partNumber" in query:
            proxy.listed.wait(30)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        moto = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
        moto.request(self.command, self.path, body, headers)
        answer = moto.getresponse()
        data = answer.read()
        moto.close()
        if "uploads" in query and answer.status == 200:  # CreateMultipartUpload, or a listing
            if self.command == "POST":
                proxy.begun(data)
            else:
                data = proxy.dated(data)
        self.send_response_only(answer.status, answer.reason)  # no Date of its own
        for key, value in answer.getheaders():
            if key.lower() not in {*HOP_BY_HOP, "date", "content-length"}:
                self.send_header(key, value)
        length = answer.getheader("Content-Length", "0") if self.command == "HEAD" else len(data)
        self.send_header("Content-Length", str(length))
        date = proxy.date()
        if date is not None:
            self.send_header("Date", date)
        self.end_headers()
        self.wfile.write(data)

    def _refuse_checksum(self) -> None:
        error = (
            b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>NotImplemented</Code>"
            b"<Message>Header 'x-amz-checksum-crc32' not implemented</Message></Error>"
        )
        self.send_response_only(501, "Not Implemented")
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(error)))
        self.end_headers()
        self.wfile.write(error)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def moto() -> Iterator[str]:
    with moto_endpoint() as url:
        yield url


@pytest.fixture
def proxy(moto: str) -> Iterator[ClockProxy]:
    proxy = ClockProxy(moto)
    proxy.start()
    yield proxy
    proxy.stop()


@pytest.fixture
def endpoint(proxy: ClockProxy) -> str:
    """test_s3's fixtures (`aws`, `bucket`, `team`) reach moto through the proxy."""
    return proxy.url


def begin_upload(bucket: str) -> str:
    import boto3

    key = "team/sha256/" + "a" * 64
    return str(boto3.client("s3").create_multipart_upload(Bucket=bucket, Key=key)["UploadId"])


def uploads(bucket: str) -> list[str]:
    import boto3

    listing = boto3.client("s3").list_multipart_uploads(Bucket=bucket)
    return [upload["UploadId"] for upload in listing.get("Uploads", [])]


def test_gc_on_a_machine_a_day_ahead_leaves_a_fresh_upload(
    team: Registry, bucket: str, proxy: ClockProxy
) -> None:
    proxy.offset = -(DAY + timedelta(hours=1))  # the server's clock: a day and an hour behind
    running = begin_upload(bucket)
    assert team.gc().temp_files == 0
    assert uploads(bucket) == [running]


def test_gc_aborts_an_upload_begun_over_a_day_before_the_servers_date(
    team: Registry, bucket: str, proxy: ClockProxy
) -> None:
    stale = begin_upload(bucket)
    proxy.offset = DAY + timedelta(minutes=1)  # a day has passed on the server, not here
    fresh = begin_upload(bucket)
    assert team.gc(dry_run=True).temp_files == 1
    assert sorted(uploads(bucket)) == sorted([stale, fresh])
    assert team.gc().temp_files == 1
    assert uploads(bucket) == [fresh]


@pytest.mark.parametrize("date", [None, "not a date"])
def test_without_a_usable_date_gc_ages_uploads_by_the_local_clock(
    team: Registry, bucket: str, proxy: ClockProxy, date: str | None
) -> None:
    proxy.offset = -(DAY + timedelta(hours=1))
    begin_upload(bucket)  # a day and an hour ago, by this machine's clock
    proxy.date = lambda: date
    assert team.gc().temp_files == 1
    assert uploads(bucket) == []


@pytest.mark.timeout(120)
def test_gc_racing_a_multipart_push_on_a_machine_a_day_ahead_leaves_the_push_intact(
    team: Registry, bucket: str, proxy: ClockProxy, tmp_path: Path
) -> None:
    proxy.offset = -(DAY + timedelta(hours=1))  # the gc's machine runs a day and an hour ahead
    proxy.hold_parts = True  # no part is sent before a gc has listed the upload
    other = Registry(
        home=tmp_path / "other", store=team.store.location, database_url=team.settings.database_url
    )
    big = big_model()
    with ThreadPoolExecutor(1) as pool:
        pushing = pool.submit(team.push, big, arch=BIG_ARCH, name="big", arch_args=BIG_ARGS)
        assert proxy.created.wait(30)
        reclaimed = [other.gc()]
        while not pushing.done():
            reclaimed.append(other.gc())
        version = pushing.result()
    assert proxy.listed.is_set()  # a gc saw the upload running
    assert [r.temp_files for r in reclaimed] == [0] * len(reclaimed)
    assert objects(bucket) == {f"team/sha256/{version.sha256}": version.size}
    assert uploads(bucket) == []
    assert team.verify() == []
    assert torch.equal(other.load(version.ref).weight, big.weight)  # from the bucket: a cold cache
    other.close()
