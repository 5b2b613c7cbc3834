"""Download images listed in a CSV (`url,class,split`) into OUT/<split>/<class>/, resumably.

Every URL is fetched with a timeout (per socket operation and for the whole body), retried
on timeouts, connection errors and 5xx/408/429 answers, and kept only when the answer is
image/*, not larger than `max_bytes` and decodes with the same reader as training. Files
are written atomically; identical URLs and identical contents (sha1) are stored once. A
state file in OUT (one JSON line per finished URL, flushed as it goes) lets a re-run after
an interruption skip what is done; failures are retried on the next run. Standard library
only (urllib), no new dependency.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import io
import json
import os
import re
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from edgecls.atomic import atomic_write_bytes, atomic_write_text
from edgecls.data.images import check_image
from edgecls.data.layout import is_hidden
from edgecls.data.tools import SPLITS
from edgecls.errors import UserError

STATE_FILE = ".edgecls-import-state.jsonl"
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
FORMAT_EXT = {"JPEG": ".jpg", "PNG": ".png", "BMP": ".bmp", "WEBP": ".webp", "TIFF": ".tif"}
USER_AGENT = "edgecls-data-import/1"


@dataclass
class Row:
    line: int
    url: str
    cls: str
    split: str


class _Permanent(Exception):
    """A failure a retry cannot fix (404, wrong content type, too large, not an image)."""


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects (urllib allows 10 hops) but only to http(s) URLs."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            raise _Permanent(f"redirect to a non-http URL {newurl}")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)


def read_list(csv_path: str | os.PathLike) -> list[Row]:
    """Rows of `url,class[,split]` (a header line is optional; split defaults to train)."""
    path = Path(csv_path)
    if not path.is_file():
        raise UserError(f"{path}: CSV file not found; expected lines of url,class,split")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; save the list as a UTF-8 CSV") from None
    rows: list[Row] = []
    for number, fields in enumerate(csv.reader(io.StringIO(text)), start=1):
        fields = [f.strip() for f in fields]
        if not any(fields) or fields[0].startswith("#"):
            continue
        if number == 1 and [f.lower() for f in fields[:2]] == ["url", "class"]:
            continue
        if len(fields) not in (2, 3):
            raise UserError(f"{path}:{number}: expected url,class,split, got {len(fields)} field(s)")
        url, cls, split = fields[0], fields[1], (fields[2] if len(fields) == 3 and fields[2] else "train")
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise UserError(f"{path}:{number}: {url!r} is not an http(s) URL")
        if not cls or is_hidden(cls) or re.search(r"[/\\\x00]", cls) or cls in ("..", "."):
            raise UserError(f"{path}:{number}: class {cls!r} cannot be a folder name; use a plain name like 'cat'")
        if split not in SPLITS:
            raise UserError(f"{path}:{number}: split {split!r}: use train, val or test")
        rows.append(Row(number, url, cls, split))
    if not rows:
        raise UserError(f"{path}: no rows; expected lines of url,class,split")
    return rows


def fetch(url: str, timeout: float, max_bytes: int) -> tuple[bytes, str]:
    """(body, content type) of a 200 answer; _Permanent or OSError (retryable) otherwise."""
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "image/*"})
    deadline = time.monotonic() + timeout * 3
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            ctype = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if not ctype.startswith("image/"):
                raise _Permanent(f"content type {ctype or '(none)'} is not image/*")
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > max_bytes:
                raise _Permanent(f"{int(length):,} bytes is over the --max-bytes limit of {max_bytes:,}")
            chunks, size = [], 0
            while True:
                chunk = response.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    raise _Permanent(f"more than the --max-bytes limit of {max_bytes:,} bytes")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"body not received within {timeout * 3:g} s")
                chunks.append(chunk)
            return b"".join(chunks), ctype
    except urllib.error.HTTPError as exc:
        if exc.code in RETRY_STATUS:
            raise OSError(f"HTTP {exc.code} {exc.reason}") from None
        raise _Permanent(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, _Permanent):
            raise reason from None
        raise OSError(f"{'timed out' if isinstance(reason, TimeoutError) else reason}") from None


def download(url: str, timeout: float, retries: int, max_bytes: int, backoff: float) -> tuple[bytes | None, str, int]:
    """(body, failure reason, attempts); body None when it failed."""
    reason = ""
    for attempt in range(1, retries + 2):
        try:
            body, _ctype = fetch(url, timeout, max_bytes)
            return body, "", attempt
        except _Permanent as exc:
            return None, str(exc), attempt
        except (OSError, ValueError, http.client.HTTPException) as exc:  # timeouts, resets, 5xx, cut bodies
            reason = str(exc) if isinstance(exc, OSError) and str(exc) else f"{type(exc).__name__}: {exc}"
            if isinstance(exc, TimeoutError) and "timed out" not in reason:
                reason = f"timed out ({reason})"
        if attempt <= retries:
            time.sleep(backoff * 2 ** (attempt - 1))
    return None, f"{reason} (after {retries + 1} attempts)", retries + 1


def _image_format(data: bytes, tmp_dir: Path) -> tuple[str | None, str]:
    """(extension, '') when the bytes decode as an image training can read, else (None, reason)."""
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        reason = check_image(tmp)
        if reason:
            return None, f"downloaded bytes are not a readable image: {reason}"
        with Image.open(tmp) as img:
            fmt = img.format or ""
        if fmt not in FORMAT_EXT:
            return None, f"image format {fmt or 'unknown'} is not read by training (use JPEG, PNG, BMP, WEBP, TIFF)"
        return FORMAT_EXT[fmt], ""
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def file_name(url: str, ext: str) -> str:
    """A readable, stable name: the URL's last path part (sanitised) + 8 hex of its sha1."""
    stem = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).stem
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", stem).strip("_")[:40] or "image"
    return f"{stem}_{hashlib.sha1(url.encode('utf-8')).hexdigest()[:8]}{ext}"


class _State:
    """The resume journal: one JSON line per finished URL, appended and flushed under a lock."""

    def __init__(self, out: Path):
        self.path = out / STATE_FILE
        self.done: dict[str, dict] = {}
        self.hashes: dict[str, str] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line cut by an interruption
                if entry.get("status") == "ok" and not (out / entry["path"]).is_file():
                    continue  # the file was removed since: fetch it again
                self.done[entry["url"]] = entry
                if entry.get("status") == "ok":
                    self.hashes[entry["sha1"]] = entry["path"]
        self.lock = threading.Lock()
        self.handle = open(self.path, "a", encoding="utf-8")

    def record(self, entry: dict) -> None:
        self.handle.write(json.dumps(entry) + "\n")
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.done[entry["url"]] = entry

    def close(self) -> None:
        self.handle.close()


def import_images(
    csv_path: str | os.PathLike,
    out: str | os.PathLike,
    timeout: float = 10.0,
    retries: int = 2,
    max_bytes: int = 20_000_000,
    workers: int = 8,
    backoff: float = 0.5,
    report_path: str | os.PathLike | None = None,
) -> dict:
    """Fetch every row; returns the report {"ok", "duplicate", "failed", "skipped" (resume), "rows"}."""
    if timeout <= 0 or retries < 0 or max_bytes < 1 or workers < 1:
        raise UserError("`timeout`, `max_bytes` and `workers` must be positive and `retries` >= 0")
    rows = read_list(csv_path)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"`out` {out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    state = _State(out)
    report = {"csv": str(csv_path), "out": str(out), "ok": [], "duplicate": [], "failed": [], "skipped": 0}

    first_row: dict[str, Row] = {}
    todo: list[Row] = []
    for row in rows:
        if row.url in first_row:
            earlier = first_row[row.url]
            if (earlier.cls, earlier.split) != (row.cls, row.split):
                report["failed"].append(
                    {
                        "url": row.url,
                        "line": row.line,
                        "reason": f"listed again with class {row.cls!r}/{row.split} "
                        f"(line {earlier.line} says {earlier.cls!r}/{earlier.split}); kept the first",
                    }
                )
            continue
        first_row[row.url] = row
        if row.url in state.done:
            report["skipped"] += 1
        else:
            todo.append(row)

    def work(row: Row):
        body, reason, attempts = download(row.url, timeout, retries, max_bytes, backoff)
        ext = None
        if body is not None:
            ext, reason = _image_format(body, out)
        return row, body if ext else None, ext, reason, attempts

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            # map() yields in CSV order, so which copy of a duplicate is kept does not depend on timing
            for row, body, ext, reason, attempts in pool.map(work, todo):
                if body is None:
                    report["failed"].append({"url": row.url, "line": row.line, "reason": reason, "attempts": attempts})
                    continue
                digest = hashlib.sha1(body).hexdigest()
                rel = f"{row.split}/{row.cls}/{file_name(row.url, ext)}"
                if digest in state.hashes and state.hashes[digest] != rel:
                    entry = {"url": row.url, "status": "duplicate", "path": state.hashes[digest], "sha1": digest}
                    report["duplicate"].append({"url": row.url, "line": row.line, "same_as": state.hashes[digest]})
                else:
                    dest = out / rel
                    atomic_write_bytes(body, dest)
                    state.hashes[digest] = rel
                    entry = {"url": row.url, "status": "ok", "path": rel, "sha1": digest}
                    report["ok"].append({"url": row.url, "line": row.line, "path": rel})
                state.record(entry)
    finally:
        state.close()
    report["rows"] = len(rows)
    report_file = Path(report_path) if report_path else out / "import_report.json"
    atomic_write_text(json.dumps(report, indent=2) + "\n", report_file)
    report["report_file"] = str(report_file)
    return report


def format_import_report(report: dict, limit: int = 20) -> str:
    lines = [
        f"{report['rows']} rows: {len(report['ok'])} downloaded, {len(report['duplicate'])} duplicate content, "
        f"{report['skipped']} already done (resume), {len(report['failed'])} failed"
    ]
    for item in report["failed"][:limit]:
        lines.append(f"  failed {item['url']}: {item['reason']}")
    if len(report["failed"]) > limit:
        lines.append(f"  ... {len(report['failed']) - limit} more")
    lines.append(f"images in {report['out']}/<split>/<class>/; report {report['report_file']}")
    if report["failed"]:
        lines.append("re-run the same command to retry the failures; finished URLs are skipped")
    return "\n".join(lines)
