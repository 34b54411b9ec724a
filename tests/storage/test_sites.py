"""Sites and config: one contract suite run against file, memory and loopback-S3 sites."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hyperslab.config import Config, SiteConfig, load_config, parse_size
from hyperslab.errors import (
    AccessDeniedError,
    BadInputError,
    ConfigError,
    ConflictError,
    NotFoundError,
    TransientError,
    UnsafeNameError,
)
from hyperslab.storage import (
    FileSite,
    MemorySite,
    S3Site,
    Site,
    forget_memory_site,
    open_site,
    probe_cas,
    validate_key,
)
from tests.conftest import S3Bucket, S3Endpoint

SiteFactory = Callable[[str], Site]

# --------------------------------------------------------------------------- key strategies

_SAFE_CHARS = st.characters(categories=("L", "N")) | st.sampled_from(list("-_.+=@ ,~()!"))
safe_segment = st.text(_SAFE_CHARS, min_size=1, max_size=8).filter(
    lambda s: s not in (".", "..") and not s.startswith(".hyperslab-")
)
safe_key = st.lists(safe_segment, min_size=1, max_size=4).map("/".join)

_CONTROL_CHARS = st.characters(min_codepoint=0, max_codepoint=0x1F) | st.sampled_from(
    ["\x7f", "\x85", "\x9f"]
)


@st.composite
def unsafe_key(draw: st.DrawFn) -> str:
    """A key with exactly one thing wrong with it, somewhere."""
    segments = draw(st.lists(safe_segment, min_size=0, max_size=3))
    pos = draw(st.integers(0, len(segments)))
    kind = draw(
        st.sampled_from(["..", ".", "empty", "leading", "backslash", "control", "reserved"])
    )
    if kind in ("..", "."):
        segments.insert(pos, kind)
    elif kind == "empty":
        segments.insert(pos, "")
    elif kind == "reserved":
        segments.insert(pos, draw(st.sampled_from([".hyperslab-lock", ".hyperslab-tmp.x1"])))
    else:
        bad = {"backslash": "\\", "control": draw(_CONTROL_CHARS)}.get(kind, "")
        seg = draw(safe_segment)
        cut = draw(st.integers(0, len(seg)))
        segments.insert(pos, seg[:cut] + bad + seg[cut:])
    key = "/".join(segments)
    return "/" + key if kind == "leading" else key


UNSAFE_EXAMPLES = [
    "",
    "/abs",
    "a/../b",
    "..",
    "a/./b",
    "a//b",
    "a/",
    "a\\b",
    "a\x00b",
    "a\nb",
    ".hyperslab-lock",
    "x/.hyperslab-tmp.1",
]


def test_unsafe_examples_are_unsafe() -> None:
    for key in UNSAFE_EXAMPLES:
        with pytest.raises(UnsafeNameError):
            validate_key(key)


@settings(max_examples=60)
@given(unsafe_key())
def test_unsafe_key_strategy_is_always_rejected(key: str) -> None:
    with pytest.raises(UnsafeNameError):
        validate_key(key)


@settings(max_examples=60)
@given(safe_key)
def test_safe_keys_are_accepted(key: str) -> None:
    assert validate_key(key) == key


# --------------------------------------------------------------------------- contract


def _put_with_cas(site: Site, key: str, update: Callable[[bytes | None], bytes]) -> int:
    """Read-modify-write with put_if_match until it sticks; returns the attempts taken."""
    attempts = 0
    while True:
        attempts += 1
        try:
            etag: str | None = site.etag(key)
            current: bytes | None = site.get(key)
        except NotFoundError:
            etag, current = None, None
        try:
            site.put_if_match(key, update(current), etag)
            return attempts
        except ConflictError:
            continue


class SiteContract:
    """Every Site backend must pass these. Subclasses provide ``site_factory``."""

    atomic_sizes = (1 << 20, 3 << 20)  # two payload sizes for the torn-write test
    atomic_rounds = 20
    cas_threads, cas_increments = 4, 5

    @pytest.fixture
    def site_factory(self) -> SiteFactory:
        raise NotImplementedError

    @pytest.fixture
    def site(self, site_factory: SiteFactory) -> Site:
        return site_factory("root")

    # ----- basic objects

    def test_put_get_roundtrip(self, site: Site) -> None:
        payload = bytes(range(256)) * 3
        site.put("a/b/c.bin", payload)
        site.put("empty", b"")
        assert site.get("a/b/c.bin") == payload
        assert site.get("empty") == b""

    def test_put_file_and_iter_bytes(self, site: Site, tmp_path: Path) -> None:
        src = tmp_path / "big.bin"
        payload = os.urandom(3 * 1024 * 1024 + 17)
        src.write_bytes(payload)
        site.put_file("src/big.bin", src)
        assert site.head("src/big.bin").size == len(payload)
        assert b"".join(site.iter_bytes("src/big.bin", block_size=1 << 20)) == payload
        assert site.sha256("src/big.bin") == (hashlib.sha256(payload).hexdigest(), len(payload))
        site.put_file("src/big.bin", src)  # overwrite in place
        assert site.get("src/big.bin") == payload
        with pytest.raises(NotFoundError):
            list(site.iter_bytes("src/none.bin"))

    def test_put_overwrites_whole_object(self, site: Site) -> None:
        site.put("k", b"a much longer first value")
        site.put("k", b"short")
        assert site.get("k") == b"short"

    def test_missing_object_is_not_found(self, site: Site) -> None:
        for call in (
            lambda: site.get("no/such"),
            lambda: site.get_range("no/such", 0, 1),
            lambda: site.head("no/such"),
            lambda: site.etag("no/such"),
        ):
            with pytest.raises(NotFoundError) as info:
                call()
            assert "no/such" in str(info.value)
            assert site.url in str(info.value)
            assert info.value.to_json()["code"] == "not_found"

    def test_head_etag_exists(self, site: Site) -> None:
        before = datetime.now(UTC) - timedelta(minutes=5)
        assert not site.exists("obj")
        site.put("obj", b"12345")
        info = site.head("obj")
        assert site.exists("obj")
        assert info.size == 5
        assert info.etag == site.etag("obj")
        assert info.mtime.tzinfo is not None
        assert before < info.mtime < datetime.now(UTC) + timedelta(minutes=5)
        site.put("obj", b"67890")
        assert site.etag("obj") != info.etag
        assert not site.exists("ob")  # a prefix of a key is not an object

    def test_get_range(self, site: Site) -> None:
        data = bytes(range(100))
        site.put("r", data)
        assert site.get_range("r", 0, 10) == data[:10]
        assert site.get_range("r", 37, 13) == data[37:50]
        assert site.get_range("r", 90, 10) == data[90:]  # exactly to the end
        assert site.get_range("r", 99, 1) == data[99:]
        assert site.get_range("r", 5, 0) == b""
        assert site.get_range("r", 100, 0) == b""

    @pytest.mark.parametrize(("start", "length"), [(95, 10), (100, 1), (500, 3), (-1, 2), (0, -1)])
    def test_get_range_out_of_bounds(self, site: Site, start: int, length: int) -> None:
        site.put("r", bytes(100))
        with pytest.raises(BadInputError) as info:
            site.get_range("r", start, length)
        assert "'r'" in str(info.value)

    def test_get_ranges_in_order(self, site: Site) -> None:
        site.put("x", bytes(range(200)))
        site.put("d/y", b"abcdefghij")
        reqs = [("d/y", 2, 3), ("x", 150, 50), ("x", 0, 1), ("d/y", 0, 10)]
        reqs += [("x", i, 7) for i in range(0, 140, 7)]
        got = site.get_ranges(reqs)
        whole = {"x": bytes(range(200)), "d/y": b"abcdefghij"}
        assert got == [whole[k][s : s + n] for k, s, n in reqs]
        assert site.get_ranges([]) == []
        with pytest.raises(NotFoundError):
            site.get_ranges([("x", 0, 1), ("missing", 0, 1)])

    def test_list_with_prefixes(self, site: Site) -> None:
        keys = ["a/1", "a/2/x", "a/2/y", "ab", "b", "c/d/e/f", ".hyperslab-probe/z"]
        for k in reversed(keys):
            site.put(k, k.encode())
        assert list(site.list()) == sorted(keys)
        assert list(site.list("a/")) == ["a/1", "a/2/x", "a/2/y"]
        assert list(site.list("a")) == ["a/1", "a/2/x", "a/2/y", "ab"]
        assert list(site.list("a/2")) == ["a/2/x", "a/2/y"]
        assert list(site.list("c/d/")) == ["c/d/e/f"]
        assert list(site.list("zzz")) == []
        assert list(site.list("nope/")) == []

    def test_sites_at_neighbouring_prefixes_are_isolated(self, site_factory: SiteFactory) -> None:
        x, xy, nested = site_factory("x"), site_factory("xy"), site_factory("x/sub")
        x.put("k", b"x")
        xy.put("k", b"xy")
        nested.put("k", b"nested")
        assert x.get("k") == b"x"
        assert xy.get("k") == b"xy"
        assert list(xy.list()) == ["k"]
        assert list(x.list()) == ["k", "sub/k"]  # recursive, relative to the root
        assert x.get("sub/k") == b"nested"
        with pytest.raises(NotFoundError):
            nested.get("sub/k")

    def test_delete_is_idempotent(self, site: Site) -> None:
        site.put("d/k", b"1")
        site.delete("d/k")
        assert not site.exists("d/k")
        with pytest.raises(NotFoundError):
            site.get("d/k")
        site.delete("d/k")
        site.delete("never/was")
        assert list(site.list()) == []

    # ----- conditional writes

    def test_put_if_absent(self, site: Site) -> None:
        site.put_if_absent("refs/tags/v1", b"snap-1")
        with pytest.raises(ConflictError):
            site.put_if_absent("refs/tags/v1", b"snap-2")
        assert site.get("refs/tags/v1") == b"snap-1"

    def test_put_if_match_cas(self, site: Site) -> None:
        key = "refs/branches/main"
        e1 = site.put_if_match(key, b"one", None)
        assert e1 == site.etag(key)
        e2 = site.put_if_match(key, b"two", e1)
        assert e2 == site.etag(key) != e1
        with pytest.raises(ConflictError) as info:
            site.put_if_match(key, b"three", e1)  # stale etag
        assert info.value.details["expected"] == e1
        assert info.value.details["actual"] == e2
        assert info.value.to_json()["code"] == "conflict"
        assert site.get(key) == b"two"
        with pytest.raises(ConflictError) as info:
            site.put_if_match(key, b"four", None)  # must not exist, but does
        assert info.value.details["expected"] is None
        assert info.value.details["actual"] == e2
        assert site.get(key) == b"two"

    def test_put_if_match_on_missing_object_conflicts(self, site: Site) -> None:
        site.put("other", b"x")
        with pytest.raises(ConflictError) as info:
            site.put_if_match("refs/branches/dev", b"x", site.etag("other"))
        assert info.value.details["actual"] is None
        assert not site.exists("refs/branches/dev")

    def test_put_if_absent_race_has_one_winner(self, site: Site) -> None:
        n = 8
        barrier = threading.Barrier(n)
        outcome: dict[int, str] = {}

        def contender(i: int) -> None:
            barrier.wait()
            try:
                site.put_if_absent("refs/tags/race", f"writer-{i}".encode())
                outcome[i] = "won"
            except ConflictError:
                outcome[i] = "lost"
            except Exception as exc:  # recorded so the assertion below shows it
                outcome[i] = repr(exc)

        threads = [threading.Thread(target=contender, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        winners = [i for i, o in outcome.items() if o == "won"]
        assert sorted(outcome.values()).count("lost") == n - 1, outcome
        assert len(winners) == 1
        assert site.get("refs/tags/race") == f"writer-{winners[0]}".encode()

    def test_cas_loses_no_updates(self, site: Site) -> None:
        def worker() -> None:
            for _ in range(self.cas_increments):
                _put_with_cas(site, "counter", lambda b: str(int(b or b"0") + 1).encode())

        threads = [threading.Thread(target=worker) for _ in range(self.cas_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert int(site.get("counter")) == self.cas_threads * self.cas_increments

    def test_put_is_atomic_for_readers(self, site: Site) -> None:
        small, large = self.atomic_sizes
        payloads = (b"a" * small, b"b" * large)
        site.put("big", payloads[0])
        stop = threading.Event()
        seen: list[int] = []
        bad: list[tuple[int, bytes]] = []

        def reader() -> None:
            while not stop.is_set():
                data = site.get("big")
                if data in payloads:
                    seen.append(len(data))
                else:
                    bad.append((len(data), data[:16]))

        readers = [threading.Thread(target=reader) for _ in range(3)]
        for t in readers:
            t.start()
        try:
            for i in range(self.atomic_rounds):
                site.put("big", payloads[i % 2])
        finally:
            stop.set()
            for t in readers:
                t.join()
        assert not bad, f"readers saw partial objects: {bad[:3]}"
        assert seen

    # ----- names

    @pytest.mark.parametrize("key", UNSAFE_EXAMPLES)
    def test_unsafe_keys_rejected_examples(self, site: Site, key: str) -> None:
        self._assert_rejected(site, key)

    @settings(
        max_examples=40,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
        ],
    )
    @given(key=unsafe_key())
    def test_unsafe_keys_rejected_everywhere(self, site: Site, key: str) -> None:
        self._assert_rejected(site, key)

    @staticmethod
    def _assert_rejected(site: Site, key: str) -> None:
        calls: list[Callable[[], Any]] = [
            lambda: site.get(key),
            lambda: site.get_range(key, 0, 1),
            lambda: site.get_ranges([(key, 0, 1)]),
            lambda: site.put(key, b"x"),
            lambda: site.put_if_absent(key, b"x"),
            lambda: site.put_if_match(key, b"x", None),
            lambda: site.etag(key),
            lambda: site.head(key),
            lambda: site.exists(key),
            lambda: site.delete(key),
        ]
        if key:  # "" is a valid prefix (everything)
            calls.append(lambda: list(site.list(key + "/")))
        for call in calls:
            with pytest.raises(UnsafeNameError):
                call()

    @settings(
        max_examples=8,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.differing_executors,
        ],
    )
    @given(key=safe_key)
    def test_safe_keys_roundtrip(self, site: Site, key: str) -> None:
        # A fresh folder per example: on file sites "a" cannot become an object while
        # an earlier example left a directory "a/" behind (see FileSite).
        key = f"{uuid.uuid4().hex}/{key}"
        site.put(key, key.encode())
        try:
            assert site.get(key) == key.encode()
            assert list(site.list(key.partition("/")[0] + "/")) == [key]
        finally:
            site.delete(key)

    # ----- capabilities

    def test_probe_cas(self, site: Site) -> None:
        assert probe_cas(site) is True
        assert site.supports_cas is True
        assert list(site.list()) == []  # the probe cleans up after itself


class TestFileSite(SiteContract):
    @pytest.fixture
    def site_factory(self, tmp_path: Path) -> SiteFactory:
        return lambda prefix: FileSite(tmp_path / "site" / prefix)

    def test_no_temp_or_lock_files_listed(self, site: Site, tmp_path: Path) -> None:
        assert isinstance(site, FileSite)
        site.put("d/k", b"1")
        site.put_if_match("d/k", b"2", site.etag("d/k"))
        (site.root / "d" / ".hyperslab-tmp.stale").write_bytes(b"partial")
        names = sorted(p.name for p in (site.root / "d").iterdir())
        assert names == [".hyperslab-lock", ".hyperslab-tmp.stale", "k"]
        assert list(site.list()) == ["d/k"]

    def test_key_below_an_object_is_bad_input(self, site: Site) -> None:
        site.put("a", b"file")
        with pytest.raises(BadInputError):
            site.put("a/b", b"x")
        site.put("dir/x", b"x")
        with pytest.raises(NotFoundError):
            site.get("dir")
        with pytest.raises(BadInputError):
            site.put("dir", b"x")

    def test_url_is_file_url(self, tmp_path: Path) -> None:
        assert FileSite(tmp_path).url == f"file://{tmp_path}"

    def test_permission_denied(self, site: Site) -> None:
        assert isinstance(site, FileSite)
        site.put("locked/k", b"x")
        os.chmod(site.root / "locked" / "k", 0)
        try:
            if os.access(site.root / "locked" / "k", os.R_OK):
                pytest.skip("running as root: permissions are not enforced")
            with pytest.raises(AccessDeniedError):
                site.get("locked/k")
        finally:
            os.chmod(site.root / "locked" / "k", 0o644)

    def test_cas_across_processes(self, tmp_path: Path) -> None:
        root = tmp_path / "shared"
        procs, increments = 4, 10
        # Plain interpreters importing only hyperslab.storage: far cheaper than a spawn pool.
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", _PROCESS_WORKER, str(root), str(i), str(increments)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for i in range(procs)
        ]
        won = []
        for i, w in enumerate(workers):
            out, _ = w.communicate(timeout=60)
            assert w.returncode == 0
            if out.strip() == "won":
                won.append(i)
        site = FileSite(root)
        assert int(site.get("counter")) == procs * increments
        assert len(won) == 1  # put_if_absent on "tag" across processes
        assert site.get("tag") == f"proc-{won[0]}".encode()


_PROCESS_WORKER = """
import sys
from pathlib import Path
from hyperslab.errors import ConflictError, NotFoundError
from hyperslab.storage import FileSite

root, index, increments = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
site = FileSite(root)
try:
    site.put_if_absent("tag", f"proc-{index}".encode())
    won = True
except ConflictError:
    won = False
for _ in range(increments):
    while True:
        try:
            etag, value = site.etag("counter"), int(site.get("counter"))
        except NotFoundError:
            etag, value = None, 0
        try:
            site.put_if_match("counter", str(value + 1).encode(), etag)
            break
        except ConflictError:
            continue
print("won" if won else "lost")
"""


class TestMemorySite(SiteContract):
    @pytest.fixture
    def site_factory(self) -> Iterator[SiteFactory]:
        name = f"test-{uuid.uuid4().hex}"
        yield lambda prefix: MemorySite(name, prefix)
        forget_memory_site(name)

    def test_same_name_shares_storage(self) -> None:
        name = f"shared-{uuid.uuid4().hex}"
        try:
            MemorySite(name, "p").put("k", b"v")
            assert MemorySite(name).get("p/k") == b"v"
            assert MemorySite(name + "x").exists("p/k") is False
        finally:
            forget_memory_site(name)
        assert MemorySite(name).exists("p/k") is False


class TestS3Site(SiteContract):
    # moto copies whole bodies around per request: keep the heavy tests light.
    atomic_sizes = (256 << 10, 768 << 10)
    atomic_rounds = 6
    cas_threads, cas_increments = 3, 3

    @pytest.fixture
    def site_factory(self, s3_bucket: S3Bucket) -> Iterator[SiteFactory]:
        opened: list[S3Site] = []

        def factory(prefix: str) -> Site:
            site = s3_bucket.site(prefix)
            opened.append(site)
            return site

        yield factory
        for site in opened:
            site.close()

    def test_objects_land_under_the_prefix(self, s3_bucket: S3Bucket) -> None:
        site = s3_bucket.site("repo")
        site.put("refs/x", b"1")
        client = s3_bucket.endpoint.client()
        body = client.get_object(Bucket=s3_bucket.bucket, Key=s3_bucket.key("repo/refs/x"))["Body"]
        assert body.read() == b"1"
        assert site.url == f"{s3_bucket.url}/repo"

    def test_works_inside_running_event_loop(self, site: Site) -> None:
        async def notebook_cell() -> bytes:
            site.put("nb", b"from a coroutine")
            return site.get("nb")

        assert asyncio.run(notebook_cell()) == b"from a coroutine"

    def test_aws_endpoint_url_env_needs_no_config(
        self, s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3_bucket.endpoint.endpoint_url)
        with S3Site(s3_bucket.bucket, s3_bucket.prefix) as plain:
            plain.put("via-env", b"ok")
        site, display = open_site(s3_bucket.url, Config())
        assert site.get("via-env") == b"ok"
        assert display == s3_bucket.url

    def test_missing_bucket(self, s3_bucket: S3Bucket) -> None:
        site = S3Site("no-such-bucket-" + uuid.uuid4().hex[:8], "", s3_bucket.endpoint.endpoint_url)
        with pytest.raises(NotFoundError) as info:
            site.get("k")
        assert "bucket" in str(info.value)
        with pytest.raises(NotFoundError):
            list(site.list())

    def test_unreachable_endpoint_is_transient(self, s3_endpoint: S3Endpoint) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # closed again below: nothing listens there
        site = S3Site(
            "bucket",
            endpoint_url=f"http://127.0.0.1:{port}",
            options={"retries": 1, "config_kwargs": {"retries": {"max_attempts": 1}}},
        )
        with pytest.raises(TransientError) as info:
            site.get("k")
        assert info.value.to_json()["code"] == "transient"

    def test_bad_credentials_denied_without_leaking_secret(
        self, s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        secret = "hyperslabTESTsecret/9f8e7d6c5b4a+leak"
        s3_bucket.site().put("k", b"x")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAHYPERSLABBADKEY0")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        site = s3_bucket.site()
        errors: list[BaseException] = []
        with _iam_enforced(s3_bucket.endpoint):
            for call in (
                lambda: site.get("k"),
                lambda: site.put("k2", b"y"),
                lambda: site.put_if_match("k", b"z", None),
                lambda: list(site.list()),
            ):
                with pytest.raises(AccessDeniedError) as info:
                    call()
                errors.append(info.value)
        for err in errors:
            assert isinstance(err, AccessDeniedError)
            text = "".join(traceback.format_exception(err))
            assert secret not in text
            assert secret not in str(err.to_json())
            assert secret not in repr(site)

    def test_supports_cas_probes_lazily(self, s3_bucket: S3Bucket) -> None:
        assert s3_bucket.site(cas=False).supports_cas is False  # no request made
        assert s3_bucket.site().supports_cas is True

    def test_many_concurrent_ranges(self, site: Site) -> None:
        data = os.urandom(64 << 10)
        site.put("blob", data)
        reqs = [("blob", i * 1000, 1000) for i in range(60)]
        assert site.get_ranges(reqs) == [data[s : s + n] for _, s, n in reqs]


class _iam_enforced:
    """moto accepts any credentials unless IAM checks are switched on; real servers check."""

    def __init__(self, endpoint: S3Endpoint) -> None:
        self._cm: Any = None
        if not endpoint.real:
            from moto.core.authorization import enable_iam_authentication

            self._cm = enable_iam_authentication()

    def __enter__(self) -> None:
        if self._cm is not None:
            self._cm.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)


class _IgnoresConditions(MemorySite):
    """Like s3rver: accepts conditional writes and ignores the condition."""

    def put_if_match(self, key: str, data: bytes, expected_etag: str | None) -> str:
        self.put(key, data)
        return self.etag(key)


def test_probe_cas_detects_servers_that_ignore_conditions() -> None:
    name = f"liar-{uuid.uuid4().hex}"
    try:
        assert probe_cas(_IgnoresConditions(name)) is False
        assert probe_cas(MemorySite(name)) is True
        assert list(MemorySite(name).list()) == []
    finally:
        forget_memory_site(name)


# --------------------------------------------------------------------------- open_site


def _write_toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_open_site_urls_and_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site, display = open_site(f"file://{tmp_path}/repo")
    assert isinstance(site, FileSite)
    assert site.root == tmp_path / "repo"
    assert display == f"file://{tmp_path}/repo"

    monkeypatch.chdir(tmp_path)
    site, _ = open_site("rel/dir")
    assert isinstance(site, FileSite) and site.root == tmp_path / "rel" / "dir"
    site, _ = open_site("./odd:name")
    assert isinstance(site, FileSite) and site.root == tmp_path / "odd:name"

    name = f"open-{uuid.uuid4().hex}"
    try:
        site, display = open_site(f"memory://{name}/pre/fix")
        site.put("k", b"v")
        assert MemorySite(name).get("pre/fix/k") == b"v"
        assert display == f"memory://{name}/pre/fix"
    finally:
        forget_memory_site(name)


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("ftp://host/x", BadInputError),
        ("file://otherhost/x", BadInputError),
        ("s3://", BadInputError),
        ("s3://bucket/a/../b", UnsafeNameError),
        ("memory://m/a//b", UnsafeNameError),
        ("nosuchsite:repo", ConfigError),
    ],
)
def test_open_site_rejects(spec: str, error: type[Exception], tmp_path: Path) -> None:
    cfg = Config(sites={"local": SiteConfig("local", str(tmp_path))}, preference=("local",))
    with pytest.raises(error) as info:
        open_site(spec, cfg)
    if error is ConfigError:
        assert "known sites: local" in str(info.value)


def test_open_site_refuses_credentials_in_urls() -> None:
    with pytest.raises(ConfigError) as info:
        open_site("s3://AKIAEXAMPLE:wJalrSECRETKEY@bucket/x", Config())
    assert "wJalrSECRETKEY" not in str(info.value)
    assert "AWS environment" in str(info.value)


def test_open_site_by_name_from_toml(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    endpoint = s3_bucket.endpoint.endpoint_url
    cfg = load_config(
        _write_toml(
            tmp_path / "hyperslab.toml",
            f"""
preference = ["local", "beamline"]
[sites.beamline]
url = "{s3_bucket.url}"
endpoint_url = "{endpoint}"
region = "us-east-1"
[sites.local]
url = "local"
""",
        ),
        env={},
    )
    site, display = open_site("beamline:repo/x", cfg)
    assert isinstance(site, S3Site)
    assert display == f"beamline:repo/x ({s3_bucket.url}/repo/x)"
    site.put("refs/main", b"snap")
    client = s3_bucket.endpoint.client()
    obj = client.get_object(Bucket=s3_bucket.bucket, Key=s3_bucket.key("repo/x/refs/main"))
    assert obj["Body"].read() == b"snap"

    # a plain s3:// URL inside a configured site picks up that site's endpoint
    same, display = open_site(f"{s3_bucket.url}/repo/x", cfg)
    assert same.get("refs/main") == b"snap"
    assert "site beamline" in display

    local, _ = open_site("local:data", cfg)
    assert isinstance(local, FileSite) and local.root == tmp_path / "local" / "data"
    with pytest.raises(UnsafeNameError):
        open_site("local:../escape", cfg)
    with pytest.raises(ConfigError) as info:
        open_site("cloud:repo", cfg)
    assert "known sites: local, beamline" in str(info.value) or "beamline, local" in str(info.value)


# --------------------------------------------------------------------------- config


@pytest.fixture
def no_user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cwd and user config/cache dirs, so only what a test writes is found."""
    home = tmp_path / "home"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return home


FULL_TOML = """
preference = ["cloud", "beamline"]
[cache]
dir = "/scratch/hs-cache"
size = "1.5GiB"
[sites.beamline]
url = "s3://beamline"
endpoint_url = "http://127.0.0.1:9000"
[sites.cloud]
url = "s3://cloud/data"
region = "eu-west-1"
profile = "cloud"
anon = true
[sites.cloud.options]
config_kwargs = { connect_timeout = 3 }
"""


def test_config_defaults_without_file(no_user_config: Path) -> None:
    cfg = load_config(env={})
    assert cfg.sites == {} and cfg.preference == () and cfg.source is None
    assert cfg.cache_dir == no_user_config / "cache" / "hyperslab"
    assert cfg.cache_size == 20 * 10**9


def test_config_full_file(no_user_config: Path, tmp_path: Path) -> None:
    path = _write_toml(tmp_path / "c.toml", FULL_TOML)
    cfg = load_config(path, env={})
    assert cfg.source == path
    assert cfg.preference == ("cloud", "beamline")
    assert cfg.cache_dir == Path("/scratch/hs-cache")
    assert cfg.cache_size == int(1.5 * 2**30)
    assert cfg.sites["beamline"] == SiteConfig(
        "beamline", "s3://beamline", endpoint_url="http://127.0.0.1:9000"
    )
    cloud = cfg.sites["cloud"]
    assert (cloud.region, cloud.profile, cloud.anon) == ("eu-west-1", "cloud", True)
    assert cloud.options == {"config_kwargs": {"connect_timeout": 3}}


def test_config_lookup_order(no_user_config: Path, tmp_path: Path) -> None:
    user = no_user_config / "config" / "hyperslab" / "hyperslab.toml"
    user.parent.mkdir(parents=True)
    _write_toml(user, '[sites.user]\nurl = "/u"\n')
    assert load_config(env={}).source == user
    cwd_file = _write_toml(Path.cwd() / "hyperslab.toml", '[sites.cwd]\nurl = "/c"\n')
    assert load_config(env={}).source == cwd_file
    explicit = _write_toml(tmp_path / "explicit.toml", '[sites.env]\nurl = "/e"\n')
    cfg = load_config(env={"HYPERSLAB_CONFIG": str(explicit)})
    assert cfg.source == explicit and list(cfg.sites) == ["env"]
    assert cfg.preference == ("env",)  # default: order of the [sites.*] tables
    with pytest.raises(ConfigError, match="HYPERSLAB_CONFIG"):
        load_config(env={"HYPERSLAB_CONFIG": str(tmp_path / "missing.toml")})


def test_config_env_overrides(no_user_config: Path, tmp_path: Path) -> None:
    path = _write_toml(tmp_path / "c.toml", FULL_TOML)
    env = {
        "HYPERSLAB_CACHE_DIR": str(tmp_path / "cache"),
        "HYPERSLAB_CACHE_SIZE": "512MB",
        "HYPERSLAB_PREFERENCE": "beamline, laptop,cloud",
        "HYPERSLAB_SITE_BEAMLINE_ENDPOINT_URL": "http://127.0.0.1:9500",
        "HYPERSLAB_SITE_LAPTOP_URL": "/data/laptop",
        "HYPERSLAB_SITE_LAPTOP_REGION": "local",
    }
    cfg = load_config(path, env=env)
    assert cfg.cache_dir == tmp_path / "cache"
    assert cfg.cache_size == 512 * 10**6
    assert cfg.preference == ("beamline", "laptop", "cloud")
    assert cfg.sites["beamline"].endpoint_url == "http://127.0.0.1:9500"
    assert cfg.sites["beamline"].url == "s3://beamline"
    assert cfg.sites["laptop"] == SiteConfig("laptop", "/data/laptop", region="local")


def test_config_env_defines_site_without_file(no_user_config: Path) -> None:
    cfg = load_config(
        env={
            "HYPERSLAB_SITE_MY_SITE_URL": "s3://b/p",
            "HYPERSLAB_SITE_MY_SITE_ENDPOINT_URL": "http://127.0.0.1:1",
        }
    )
    assert cfg.sites["my_site"].endpoint_url == "http://127.0.0.1:1"
    assert cfg.preference == ("my_site",)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"HYPERSLAB_SITE_GHOST_ENDPOINT_URL": "http://x"}, "HYPERSLAB_SITE_GHOST_URL"),
        ({"HYPERSLAB_PREFERENCE": "beamline,nowhere"}, "nowhere"),
        ({"HYPERSLAB_CACHE_SIZE": "lots"}, "HYPERSLAB_CACHE_SIZE"),
        ({"HYPERSLAB_SITE_BEAMLINE_SECRET": "s3cr3t"}, "AWS environment"),
    ],
)
def test_config_bad_env(no_user_config: Path, env: dict[str, str], fragment: str) -> None:
    path = _write_toml(Path.cwd() / "hyperslab.toml", '[sites.beamline]\nurl = "s3://b"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env=env)
    assert fragment in str(info.value)
    assert "s3cr3t" not in str(info.value)


@pytest.mark.parametrize(
    "table",
    [
        'key = "AKIAEXAMPLE"',
        'secret = "SuperSecretValue1"',
        'aws_secret_access_key = "SuperSecretValue1"',
        'password = "SuperSecretValue1"',
        'token = "SuperSecretValue1"',
        'options = { client_kwargs = { aws_secret_access_key = "SuperSecretValue1" } }',
    ],
)
def test_config_refuses_credentials(no_user_config: Path, tmp_path: Path, table: str) -> None:
    path = _write_toml(tmp_path / "c.toml", f'[sites.cloud]\nurl = "s3://c"\n{table}\n')
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert "AWS" in message and "cloud" in message and str(path) in message
    assert "SuperSecretValue1" not in message and "AKIAEXAMPLE" not in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[sites.a\nurl = 1", "malformed TOML"),
        ('[cache]\nsize = "20 parsecs"', "cannot parse size"),
        ('preference = ["ghost"]\n[sites.a]\nurl = "/a"', "unknown site 'ghost'"),
        ('[sites.a]\nendpoint_url = "http://x"', "has no url"),
        ('[sites.a]\nurl = "/a"\nendpoint = "http://x"', "unknown key(s) endpoint"),
        ('[sites."bad name"]\nurl = "/a"', "bad site name"),
        ('preference = ["a", "a"]\n[sites.a]\nurl = "/a"', "twice"),
        ('colour = "blue"', "unknown top-level key"),
    ],
)
def test_config_errors_name_the_file(
    no_user_config: Path, tmp_path: Path, text: str, fragment: str
) -> None:
    path = _write_toml(tmp_path / "bad.toml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert fragment in str(info.value)
    assert str(path) in str(info.value)
    assert info.value.exit_status == 2


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("20GB", 20 * 10**9),
        ("20 gb", 20 * 10**9),
        ("1KiB", 1024),
        ("3MiB", 3 * 2**20),
        ("2TiB", 2 * 2**40),
        ("1.5TB", 15 * 10**11),
        ("100", 100),
        (4096, 4096),
        ("7KB", 7000),
    ],
)
def test_parse_size(value: object, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["", "GB", "-1GB", "1XB", True, 1.5, -3])
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(ConfigError):
        parse_size(value)
