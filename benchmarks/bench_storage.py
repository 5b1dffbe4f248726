"""Throughput and memory of moving a large result video: CDN download, then S3 upload.

A 1 GiB file (``--size-mb``) that starts with an MP4 ``ftyp`` box is served over loopback HTTP
by a small sendfile() server in a separate process, and moto's S3 server runs as another
process. In the same run, on the same loopback and the same file, we time:

* download, raw: ``httpx.AsyncClient().stream("GET", url)`` writing chunks to a file (no hashing,
  no fsync) -- the baseline;
* download, ours: ``AimlApiClient.download`` (sha256, Content-Length and signature checks,
  temp file + fsync + rename);
* upload, raw: ``boto3 client.upload_file(path, bucket, key)`` with the default TransferConfig;
* upload, ours: ``prefect_aimlapi_video.storage.destinations.S3Destination.store`` (managed multipart transfer + verifying head_object).

Throughput is in MB/s with MB = 2**20 bytes. Peak RSS growth of this process is measured for each
phase: the kernel's high-water mark (VmHWM, reset through /proc/self/clear_refs) and a VmRSS
sample every 20 ms, minus VmRSS at the start of the phase (after gc and malloc_trim). The source
file is read once beforehand so both sides find it in the page cache, dirty pages are synced
before each phase, and the order of raw/ours alternates across repeats. An untimed warm-up
(80 MB, multipart) pays the one-off costs first. Figures are medians (throughput) and maxima
(RSS) over the repeats; loopback and moto numbers are noisy on a small VM, so use --repeats 3+
to compare runs.

Target (from the issue): at least 80 % of raw throughput, RSS growth under 64 MB. Nothing is
asserted; the last line printed is one JSON object with every figure.

    python benchmarks/bench_storage.py [--size-mb 1024] [--repeats 1] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import hashlib
import http.server
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import httpx

# The repository root, for the test services (`tests.support`); the package is the installed one, as
# nothing at the root shadows it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect_aimlapi_video.api.client import AimlApiClient
from prefect_aimlapi_video.storage.destinations import S3Destination
from tests.support.local_services import AWS_TEST_ENV, free_port, moto_server

MB = 1024 * 1024
TARGET_RATIO = 0.80
TARGET_RSS_MB = 64.0
FTYP_BOX = b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2"
BUCKET = "bench-storage"
WARMUP_MB = 80  # above flows.s3.MULTIPART_THRESHOLD, so the warm-up uploads are multipart too


# --- the source file and the loopback server ------------------------------------------------------


def make_video_file(path: Path, size: int) -> Path:
    """`size` bytes: an ftyp box, then 1 MiB of random bytes repeated with a counter (incompressible)."""
    block = bytearray(os.urandom(MB))
    with open(path, "wb") as out:
        out.write(FTYP_BOX)
        written, counter = len(FTYP_BOX), 0
        while written < size:
            block[:8] = counter.to_bytes(8, "little")
            piece = memoryview(block)[: min(MB, size - written)]
            out.write(piece)
            written += len(piece)
            counter += 1
    return path


def warm_page_cache(path: Path) -> None:
    """Read the file once, so raw and ours both read it from memory."""
    with open(path, "rb") as handle:
        while handle.read(8 * MB):
            pass


class _SendfileHandler(http.server.BaseHTTPRequestHandler):
    """GET /<name> streams <directory>/<name> with a Content-Length, via sendfile(2)."""

    protocol_version = "HTTP/1.1"
    directory = Path(".")

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        path = self.directory / self.path.lstrip("/").split("?", 1)[0]
        if "/" in self.path.lstrip("/") or not path.is_file():
            self.send_error(404)
            return
        with open(path, "rb") as handle:
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", str(os.fstat(handle.fileno()).st_size))
            self.end_headers()
            self.connection.sendfile(handle)

    def log_message(self, *args: object) -> None:
        pass


def _serve(directory: str, port: int) -> None:
    _SendfileHandler.directory = Path(directory)
    http.server.ThreadingHTTPServer(("127.0.0.1", port), _SendfileHandler).serve_forever()


@contextlib.contextmanager
def file_server(directory: Path) -> Iterator[str]:
    """The file server in its own process, so it shares neither the GIL nor the RSS we measure."""
    port = free_port()
    process = multiprocessing.get_context("spawn").Process(target=_serve, args=(str(directory), port), daemon=True)
    process.start()
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{base}/missing", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or not process.is_alive():
                    raise RuntimeError("the loopback file server did not start") from None
                time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        process.join(10)


# --- measuring -----------------------------------------------------------------------------------


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def _settle() -> None:
    """Start each phase from the same place: no dirty pages queued, freed memory given back."""
    os.sync()
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class RssPeak:
    """Peak VmRSS growth (MB) over a `with` block: VmHWM reset at entry, plus 20 ms samples."""

    def __init__(self) -> None:
        self.growth_mb = 0.0
        self._stop = threading.Event()
        self._peak_kb = 0

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self._peak_kb = max(self._peak_kb, _status_kb("VmRSS:"))

    def __enter__(self) -> RssPeak:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        self._start_kb = self._peak_kb = _status_kb("VmRSS:")
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        peak = max(self._peak_kb, _status_kb("VmRSS:"), _status_kb("VmHWM:"))
        self.growth_mb = (peak - self._start_kb) / 1024


def measure(run: Callable[[], object], size: int) -> dict[str, float]:
    """Run one phase; its throughput (MB/s), wall time and peak RSS growth."""
    _settle()
    with RssPeak() as rss:
        started = time.perf_counter()
        run()
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "mbps": size / MB / seconds, "rss_mb": rss.growth_mb}


# --- the four phases -----------------------------------------------------------------------------


async def _raw_download(url: str, destination: Path, verify: bool) -> int:
    """A bare httpx copy; with `verify`, the same work ours does inline (sha256 and fsync)."""
    digest = hashlib.sha256()
    async with httpx.AsyncClient(timeout=120) as client, client.stream("GET", url) as response:
        response.raise_for_status()
        with open(destination, "wb") as handle:
            received = 0
            async for chunk in response.aiter_raw():
                if verify:
                    digest.update(chunk)
                handle.write(chunk)
                received += len(chunk)
            if verify:
                handle.flush()
                os.fsync(handle.fileno())
    return received


def raw_download(url: str, destination: Path, verify: bool = False) -> int:
    return asyncio.run(_raw_download(url, destination, verify))


async def _our_download(base: str, url: str, destination: Path, size: int) -> str:
    async with AimlApiClient("benchmark-key", base) as client:
        result = await client.download(url, destination, max_bytes=max(size, client.downloads.max_bytes))
    if result.size_bytes != size:
        raise RuntimeError(f"download returned {result.size_bytes} bytes, expected {size}")
    return result.sha256


def our_download(base: str, url: str, destination: Path, size: int) -> str:
    return asyncio.run(_our_download(base, url, destination, size))


def raw_upload(client: object, path: Path, key: str) -> None:
    client.upload_file(str(path), BUCKET, key)


def our_upload(path: Path, key: str, sha256: str) -> None:
    target = S3Destination(template="x", bucket=BUCKET)
    asyncio.run(target.store(path, key, sha256=sha256, content_type="video/mp4"))


def _check_object(client: object, key: str, size: int) -> None:
    length = client.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
    if length != size:
        raise RuntimeError(f"s3://{BUCKET}/{key} holds {length} bytes, expected {size}")
    client.delete_object(Bucket=BUCKET, Key=key)  # moto keeps objects in its process: don't pile them up


def _ordered(repeat: int, raw: Callable[[], dict], ours: Callable[[], dict]) -> tuple[dict, dict]:
    """Baseline first on even repeats, ours first on odd ones."""
    if repeat % 2 == 0:
        first = raw()
        return first, ours()
    second = ours()
    return raw(), second


def bench_downloads(base: str, work: Path, size: int, repeats: int) -> tuple[list[dict], list[dict], list[dict], str]:
    url = f"{base}/source.mp4"
    raw_dst, our_dst = work / "raw-download.mp4", work / "our-download.mp4"
    digests: list[str] = []

    def raw() -> dict:
        raw_dst.unlink(missing_ok=True)
        figures = measure(lambda: raw_download(url, raw_dst), size)
        if raw_dst.stat().st_size != size:
            raise RuntimeError("the raw download is truncated")
        return figures

    def ours() -> dict:
        our_dst.unlink(missing_ok=True)
        return measure(lambda: digests.append(our_download(base, url, our_dst, size)), size)

    def raw_verified() -> dict:
        raw_dst.unlink(missing_ok=True)
        return measure(lambda: raw_download(url, raw_dst, verify=True), size)

    raws, ourses = zip(*(_ordered(i, raw, ours) for i in range(repeats)))
    verified = [raw_verified() for _ in range(repeats)]
    raw_dst.unlink(missing_ok=True)
    our_dst.unlink(missing_ok=True)
    return list(raws), list(ourses), verified, digests[-1]


def bench_uploads(client: object, source: Path, size: int, sha256: str, repeats: int) -> tuple[list[dict], list[dict]]:
    def raw() -> dict:
        figures = measure(lambda: raw_upload(client, source, "raw.mp4"), size)
        _check_object(client, "raw.mp4", size)
        return figures

    def ours() -> dict:
        figures = measure(lambda: our_upload(source, "ours.mp4", sha256), size)
        _check_object(client, "ours.mp4", size)
        return figures

    raws, ourses = zip(*(_ordered(i, raw, ours) for i in range(repeats)))
    return list(raws), list(ourses)


def warm_up(base: str, work: Path, client: object) -> None:
    """One pass of a small file through all four paths, so imports and first-use costs (boto3 models,
    prefect-aws, the multipart transfer's threads and their malloc arenas) are neither timed nor
    counted in the RSS growth of whichever phase happens to run first."""
    small = make_video_file(work / "warmup.mp4", WARMUP_MB * MB)
    raw_download(f"{base}/warmup.mp4", work / "warmup-raw.mp4")
    digest = our_download(base, f"{base}/warmup.mp4", work / "warmup-ours.mp4", small.stat().st_size)
    raw_upload(client, small, "warmup-raw.mp4")
    our_upload(small, "warmup-ours.mp4", digest)
    for key in ("warmup-raw.mp4", "warmup-ours.mp4"):
        client.delete_object(Bucket=BUCKET, Key=key)
    for name in ("warmup.mp4", "warmup-raw.mp4", "warmup-ours.mp4"):
        (work / name).unlink(missing_ok=True)


# --- reporting -----------------------------------------------------------------------------------


def summarise(size_mb: int, repeats: int, downloads: tuple[list, list], uploads: tuple[list, list]) -> dict:
    def median(runs: list[dict]) -> float:
        return round(statistics.median(r["mbps"] for r in runs), 1)

    def worst_rss(runs: list[dict]) -> float:
        return round(max(r["rss_mb"] for r in runs), 1)

    figures: dict[str, object] = {"size_mb": size_mb, "repeats": repeats}
    for name, (raws, ours) in (("download", downloads), ("upload", uploads)):
        raw_mbps, our_mbps = median(raws), median(ours)
        figures |= {
            f"{name}_raw_mbps": raw_mbps,
            f"{name}_ours_mbps": our_mbps,
            f"{name}_ratio": round(our_mbps / raw_mbps, 3),
            f"{name}_raw_runs_mbps": [round(r["mbps"], 1) for r in raws],
            f"{name}_ours_runs_mbps": [round(r["mbps"], 1) for r in ours],
            f"rss_growth_{name}_raw_mb": worst_rss(raws),
            f"rss_growth_{name}_mb": worst_rss(ours),
        }
    for name in ("download", "upload"):
        figures[f"{name}_ratio_target_met"] = figures[f"{name}_ratio"] >= TARGET_RATIO
        figures[f"{name}_rss_target_met"] = figures[f"rss_growth_{name}_mb"] < TARGET_RSS_MB
    figures["targets"] = {"min_ratio": TARGET_RATIO, "max_rss_growth_mb": TARGET_RSS_MB}
    figures["all_targets_met"] = all(v for k, v in figures.items() if k.endswith("_target_met"))
    return figures


def print_table(f: dict) -> None:
    print(f"\nMoving a {f['size_mb']} MB file over loopback ({f['repeats']} repeat(s); MB = 2**20 bytes)\n")
    print(f"{'phase':<10}{'raw MB/s':>10}{'ours MB/s':>11}{'ratio':>8}{'raw RSS+ MB':>13}{'ours RSS+ MB':>14}  targets")
    for name in ("download", "upload"):
        ratio_ok = "ok" if f[f"{name}_ratio_target_met"] else "MISSED"
        rss_ok = "ok" if f[f"{name}_rss_target_met"] else "MISSED"
        print(
            f"{name:<10}{f[f'{name}_raw_mbps']:>10.1f}{f[f'{name}_ours_mbps']:>11.1f}{f[f'{name}_ratio']:>8.3f}"
            f"{f[f'rss_growth_{name}_raw_mb']:>13.1f}{f[f'rss_growth_{name}_mb']:>14.1f}"
            f"  ratio>={TARGET_RATIO:.0%} {ratio_ok}, RSS<{TARGET_RSS_MB:.0f} MB {rss_ok}"
        )
    if "download_raw_verified_mbps" in f:
        print(f"\ndownload, raw httpx doing the same verification inline (sha256 + fsync): "
              f"{f['download_raw_verified_mbps']:.1f} MB/s; ours/that = {f['download_ratio_vs_raw_verified']:.3f}")
    print()


# --- main ----------------------------------------------------------------------------------------


def run(work: Path, size_mb: int, repeats: int) -> dict:
    size = size_mb * MB
    served = work / "served"
    served.mkdir()
    print(f"making a {size_mb} MB source file in {served} ...", flush=True)
    source = make_video_file(served / "source.mp4", size)
    with moto_server(work / "moto.log") as endpoint, file_server(served) as base:
        os.environ.update(AWS_TEST_ENV, AWS_ENDPOINT_URL=endpoint)
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        warm_up(base, served, client)
        warm_page_cache(source)
        print("downloading ...", flush=True)
        raw_dl, our_dl, verified_dl, sha256 = bench_downloads(base, work, size, repeats)
        print("uploading ...", flush=True)
        warm_page_cache(source)
        raw_ul, our_ul = bench_uploads(client, source, size, sha256, repeats)
    figures = summarise(size_mb, repeats, (raw_dl, our_dl), (raw_ul, our_ul))
    verified_mbps = round(statistics.median(r["mbps"] for r in verified_dl), 1)
    figures["download_raw_verified_mbps"] = verified_mbps
    figures["download_ratio_vs_raw_verified"] = round(figures["download_ours_mbps"] / verified_mbps, 3)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="file size in MB (2**20 bytes)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None, help="where to put the files (default: a temp dir)")
    args = parser.parse_args()
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-storage-", dir=args.workdir))
    try:
        figures = run(work, args.size_mb, max(1, args.repeats))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(figures)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
