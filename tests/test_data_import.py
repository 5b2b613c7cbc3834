"""`edgecls data import` against a real HTTP server on 127.0.0.1 (real images, broken ones, errors)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import REPO
from PIL import Image

from edgecls.data.tools.importer import STATE_FILE, import_images, read_list
from edgecls.errors import UserError


class ImageServer:
    """Serves real digit images and every failure an importer meets; counts requests per path."""

    def __init__(self, digits_dir: Path):
        pngs = sorted((digits_dir / "train" / "3").iterdir())
        self.png = pngs[0].read_bytes()
        self.png2 = pngs[1].read_bytes()
        self.png3 = pngs[3].read_bytes()
        self.png4 = pngs[4].read_bytes()
        buf = io.BytesIO()
        Image.open(pngs[2]).convert("RGB").save(buf, format="JPEG", quality=90)
        self.jpeg = buf.getvalue()
        self.hits: Counter = Counter()
        self.hang = threading.Event()  # while clear, /hang.png stalls
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, code, ctype, body, extra=()):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in extra:
                    self.send_header(k, v)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (the slow endpoint): expected

            def do_GET(self):
                path = self.path.split("?")[0]
                with server.lock:
                    server.hits[path] += 1
                    hits = server.hits[path]
                if path == "/img/a.png":
                    self.send(200, "image/png", server.png)
                elif path == "/img/same_as_a.png":
                    self.send(200, "image/png", server.png)
                elif path == "/img/b.jpg":
                    self.send(200, "image/jpeg; charset=binary", server.jpeg)
                elif path == "/img/c.png":
                    self.send(200, "image/png", server.png2)
                elif path == "/moved":
                    self.send(302, "text/html", b"", [("Location", "/img/c.png")])
                elif path == "/truncated.png":
                    self.send(200, "image/png", server.png[: len(server.png) // 2])
                elif path == "/page.html":
                    self.send(200, "text/html", b"<html>not an image</html>")
                elif path == "/huge.png":
                    self.send(200, "image/png", server.png + b"\0" * 30000)
                elif path == "/slow.png":
                    time.sleep(3.0)
                    self.send(200, "image/png", server.png4)
                elif path == "/flaky.png":
                    if hits == 1:
                        self.send(503, "text/plain", b"busy")
                    else:
                        self.send(200, "image/png", server.png3)
                elif path == "/hang.png":
                    server.hang.wait(30)
                    self.send(200, "image/png", server.png3)
                else:
                    self.send(404, "text/plain", b"no such image")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.hang.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def server(digits_dir):
    srv = ImageServer(digits_dir)
    yield srv
    srv.close()


def write_csv(path: Path, base: str, rows: list[str]) -> Path:
    path.write_text("url,class,split\n" + "".join(r.replace("URL", base) + "\n" for r in rows))
    return path


def test_every_case_against_a_real_server(server, tmp_path):
    csv_file = write_csv(
        tmp_path / "list.csv",
        server.url,
        [
            "URL/img/a.png,three,train",
            "URL/img/b.jpg,three,val",
            "URL/moved,seven,train",
            "URL/img/same_as_a.png,three,train",
            "URL/img/a.png,three,train",
            "URL/img/a.png,seven,train",
            "URL/truncated.png,three,train",
            "URL/missing.png,three,train",
            "URL/page.html,three,train",
            "URL/huge.png,three,train",
            "URL/slow.png,three,test",
            "URL/flaky.png,seven,val",
        ],
    )
    out = tmp_path / "out"
    report = import_images(csv_file, out, timeout=1.0, retries=1, max_bytes=20000, workers=4, backoff=0.05)
    got = {Path(item["path"]).parent.as_posix() + "/" + item["url"].rsplit("/", 1)[1] for item in report["ok"]}
    assert got == {"train/three/a.png", "val/three/b.jpg", "train/seven/moved", "val/seven/flaky.png"}
    for item in report["ok"]:
        file = out / item["path"]
        Image.open(file).load()
        assert file.suffix == (".jpg" if item["url"].endswith("b.jpg") else ".png")
    assert (out / report["ok"][0]["path"]).read_bytes() == server.png
    assert [d["url"].rsplit("/", 1)[1] for d in report["duplicate"]] == ["same_as_a.png"]
    failed = {f["url"].rsplit("/", 1)[1]: f["reason"] for f in report["failed"]}
    assert set(failed) == {"a.png", "truncated.png", "missing.png", "page.html", "huge.png", "slow.png"}
    assert "listed again with class 'seven'" in failed["a.png"]
    assert "not a readable image" in failed["truncated.png"] and "truncated" in failed["truncated.png"]
    assert "HTTP 404" in failed["missing.png"]
    assert "text/html is not image/*" in failed["page.html"]
    assert "--max-bytes" in failed["huge.png"]
    assert "timed out" in failed["slow.png"] and "after 2 attempts" in failed["slow.png"]
    assert server.hits["/slow.png"] == 2 and server.hits["/flaky.png"] == 2 and server.hits["/missing.png"] == 1
    assert server.hits["/img/a.png"] == 1  # the repeated URL was fetched once
    # the report file and a state file; no temp files left behind
    assert json.loads((out / "import_report.json").read_text())["rows"] == 12
    assert not [p for p in out.rglob(".tmp-*")]
    # a re-run skips finished URLs and retries only the failures
    server.hits.clear()
    again = import_images(csv_file, out, timeout=6, retries=0, max_bytes=20000, workers=4)
    assert again["skipped"] == 5  # 4 ok + 1 duplicate content
    assert [item["url"].rsplit("/", 1)[1] for item in again["ok"]] == ["slow.png"]
    assert "/img/a.png" not in server.hits and "/img/b.jpg" not in server.hits
    assert server.hits["/missing.png"] == 1


def test_resume_after_the_process_is_killed(server, tmp_path):
    csv_file = write_csv(
        tmp_path / "list.csv",
        server.url,
        ["URL/img/a.png,a,train", "URL/img/b.jpg,b,train", "URL/hang.png,b,val", "URL/img/c.png,c,val"],
    )
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgecls.cli.main",
            "data",
            "import",
            str(csv_file),
            "--out",
            str(out),
            "--workers",
            "1",
            "--timeout",
            "30",
        ],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        state = out / STATE_FILE
        while time.monotonic() < deadline:
            if server.hits["/hang.png"] and state.exists() and len(state.read_text().splitlines()) == 2:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the importer never reached /hang.png")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert len(list((out / "train").rglob("*.*"))) == 2
    server.hang.set()
    server.hits.clear()
    report = import_images(csv_file, out, timeout=5)
    assert report["skipped"] == 2 and len(report["ok"]) == 2 and not report["failed"]
    assert set(server.hits) == {"/hang.png", "/img/c.png"}
    hashes = {hashlib.sha1(p.read_bytes()).hexdigest() for p in out.rglob("*") if p.suffix in (".png", ".jpg")}
    assert len(hashes) == 4


def test_bad_lists_are_user_errors(tmp_path):
    cases = {
        "ftp://x/a.png,cat,train\n": "not an http",
        "http://x/a.png,../up,train\n": "cannot be a folder name",
        "http://x/a.png,cat,holdout\n": "use train, val or test",
        "http://x/a.png\n": "expected url,class,split",
        "\n# only a comment\n": "no rows",
    }
    for i, (text, message) in enumerate(cases.items()):
        f = tmp_path / f"l{i}.csv"
        f.write_text(text)
        with pytest.raises(UserError, match=message):
            read_list(f)
    f = tmp_path / "ok.csv"
    f.write_text("http://x/a.png,cat\nhttps://x/b.png,dog,val\n")
    assert [(r.cls, r.split) for r in read_list(f)] == [("cat", "train"), ("dog", "val")]
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgecls.cli.main",
            "data",
            "import",
            str(tmp_path / "none.csv"),
            "--out",
            str(tmp_path / "o"),
        ],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and res.stderr.startswith("error:") and "not found" in res.stderr


def test_cli_numeric_flags_are_checked_before_anything_is_written(tmp_path, capsys):
    from edgecls.cli.data import cli

    csv_file = tmp_path / "list.csv"
    csv_file.write_text("http://127.0.0.1:9/a.png,cat\n")
    out = tmp_path / "out"
    for flags, message in (
        (["--timeout", "0"], "--timeout 0.0: must be greater than 0"),
        (["--retries", "-1"], "--retries -1: must be at least 0"),
        (["--max-bytes", "0"], "--max-bytes 0: must be at least 1"),
        (["--workers", "0"], "--workers 0: must be at least 1"),
    ):
        assert cli(["import", str(csv_file), "--out", str(out), *flags]) == 2
        assert capsys.readouterr().err.startswith("error: " + message)
    assert not out.exists()
