"""`keras-roadmap serve`: the real server (uvicorn in a subprocess, on a free loopback port), queried
with a real HTTP client and, for the page, a real browser (Debian's chromium driven by playwright)."""

import concurrent.futures
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading

import pytest
from conftest import REPO
from serving_fixtures import write_gallery, write_image

from keras_roadmap.cli import main

pytestmark = pytest.mark.slow  # a real server (and browser) per module: end to end
import httpx2 as httpx  # noqa: E402 - the [test] extra (what fastapi.testclient needs too)

CHROMIUM = "/usr/bin/chromium"
UPLOAD_LIMIT_MB = 0.2


class Server:
    """`keras-roadmap serve ARGS --port 0` in a subprocess; ``url`` from the line it prints."""

    def __init__(self, *args, timeout=90):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "keras_roadmap.cli", "serve", *map(str, args), "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.proc.stdout], daemon=True).start()
        try:
            self.banner = lines.get(timeout=timeout)
        except queue.Empty:
            self.stop()
            raise AssertionError(f"the server printed nothing in {timeout} s: {self.proc.stderr.read()}") from None
        self.url = self.banner.split(" on ")[1].split()[0]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


@pytest.fixture(scope="module")
def served(onnx_embedder, tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    images = write_gallery(root / "photos")
    idx = root / "photos.idx"
    assert (
        main(["index", "build", "--model", str(onnx_embedder), "--images", str(root / "photos"), "--out", str(idx)])
        == 0
    )
    server = Server("--index", idx, "--max-upload-mb", UPLOAD_LIMIT_MB)
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            yield {"root": root, "images": images, "idx": idx, "server": server, "client": client}
    finally:
        server.stop()


def upload(client, path, k=3, name=None):
    with open(path, "rb") as handle:
        return client.post("/search", params={"k": k}, files={"file": (name or os.path.basename(path), handle.read())})


def test_search_healthz_and_thumbnails(served):
    client, images = served["client"], served["images"]
    assert served["server"].url.startswith("http://127.0.0.1:")  # loopback unless --host says otherwise
    port = int(served["server"].url.rsplit(":", 1)[1])
    others = {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)} - {"127.0.0.1"}
    for address in sorted(a for a in others if not a.startswith("127.")):
        with pytest.raises(OSError), socket.create_connection((address, port), timeout=5):
            pass  # this machine's other addresses do not answer
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["images"] == 9 and health.json()["dim"] == 16
    answer = upload(client, images[4], k=4)
    assert answer.status_code == 200, answer.text
    hits = answer.json()["results"]
    assert len(hits) == 4 and hits[0]["path"] == str(images[4]) and hits[0]["label"] == "class_1"
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4) and hits[0]["score"] > hits[1]["score"]
    thumb = client.get(hits[0]["thumbnail"])
    assert (
        thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg" and thumb.content[:2] == b"\xff\xd8"
    )
    page = client.get("/")
    assert page.status_code == 200 and 'id="drop"' in page.text and "<script src" not in page.text


def _multipart(field, name, data, boundary="kerasroadmapboundary"):
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _png_header(width, height):
    """A PNG that declares a ``width`` x ``height`` canvas in a few bytes (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_bad_requests_are_json_4xx_and_the_server_lives(served, tmp_path):
    client, images = served["client"], served["images"]

    def error(response, status, *fragments):
        assert response.status_code == status, response.text
        message = response.json()["error"]
        assert all(f in message for f in fragments), message

    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    error(upload(client, not_image), 415, "notes.txt", "not an image")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    error(upload(client, empty), 415, "empty")
    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(int(UPLOAD_LIMIT_MB * 1e6) + 1000))
    error(upload(client, big), 413, "0.2 MB", "--max-upload-mb")
    body, content_type = _multipart("file", "big.png", big.read_bytes())
    chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))  # no Content-Length: chunked
    error(client.post("/search", content=chunks, headers={"content-type": content_type}), 413, "0.2 MB")
    error(client.post("/search", files={"file": ("bomb.png", _png_header(12_000, 12_000))}), 413, "12000 x 12000")
    error(client.post("/search", files={"file": ("bomb.png", _png_header(60_000, 60_000))}), 413, "bomb.png")
    body, content_type = _multipart("image", "x.jpg", images[0].read_bytes())
    error(
        client.post("/search", content=body, headers={"content-type": content_type}),
        422,
        "missing multipart field 'file'",
    )
    error(client.post("/search"), 422, "'file'")
    for k, fragment in (
        ("0", "greater than or equal to 1"),
        ("101", "less than or equal to 100"),
        ("x", "valid integer"),
    ):
        error(
            client.post("/search", params={"k": k}, files={"file": ("a.jpg", images[0].read_bytes())}),
            422,
            "k",
            fragment,
        )
    error(client.get("/gallery/999"), 404, "no gallery image with id 999")
    # A client never names a path: only ids of the index's own entries are served.
    for attempt in ("/gallery/..%2F..%2Fetc%2Fpasswd", "/gallery/%2Fetc%2Fpasswd", "/gallery/-1"):
        response = client.get(attempt)
        assert response.status_code in (404, 422) and "root:" not in response.text, attempt
    assert client.get("/healthz").status_code == 200


def test_a_burst_of_concurrent_searches_is_all_answered(served):
    images, url = served["images"], served["server"].url

    def ask(i):
        with httpx.Client(base_url=url, timeout=120) as client:
            response = upload(client, images[i % len(images)], k=2)
            return i, response.status_code, response.json()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(16)))
    assert [status for _, status, _ in answers] == [200] * 16
    for i, _, body in answers:
        assert body["results"][0]["path"] == str(images[i % len(images)])


def test_an_update_while_serving_is_picked_up(served, tmp_path):
    client, idx = served["client"], served["idx"]
    new = write_image(served["root"] / "photos" / "class_2" / "late.jpg", 21)
    assert main(["index", "add", "--index", str(idx), str(new)]) == 0
    assert client.get("/healthz").json()["images"] == 10
    hit = upload(client, new, k=1).json()["results"][0]
    assert hit["path"] == str(new) and hit["label"] == "class_2"


def test_serve_errors_are_one_line(served, tmp_path, capsys):
    assert main(["serve", "--index", str(tmp_path / "nothing")]) == 2
    assert "no keras-roadmap index there" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", "--index", str(served["idx"]), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err, err


def _browser():
    if not os.path.exists(CHROMIUM):
        if shutil.which("apt-get") is None:
            pytest.skip("no chromium and no apt-get to install it (make test installs it with apt-get)")
        raise AssertionError(f"{CHROMIUM} missing: run `make test` (it installs chromium with apt-get)")
    from playwright.sync_api import sync_playwright

    return sync_playwright


def test_the_page_shows_the_neighbours_of_a_dropped_image(served):
    sync_playwright = _browser()
    images, url = served["images"], served["server"].url
    query = images[7]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(url + "/")
            page.fill("#k", "3")
            page.set_input_files("#file", str(query))  # the file picker behind the drop zone
            page.wait_for_selector(".hit:nth-child(3)")
            assert page.locator(".hit .path").all_inner_texts()[0] == str(query)
            assert page.locator(".hit .label").all_inner_texts()[0] == f"class {query.parent.name}"
            assert page.locator(".hit .score").all_inner_texts()[0] == "#1 score 1.0000"
            page.wait_for_function(
                "[...document.querySelectorAll('.hit img')].every(i => i.complete && i.naturalWidth > 0)"
            )
            # A real drop event carrying the file, as a person dragging it onto the zone makes.
            payload = list(images[2].read_bytes())
            page.evaluate(
                """(bytes) => {
                const file = new File([new Uint8Array(bytes)], "dropped.jpg", {type: "image/jpeg"});
                const data = new DataTransfer(); data.items.add(file);
                document.getElementById("drop").dispatchEvent(
                    new DragEvent("drop", {dataTransfer: data, bubbles: true}));
            }""",
                payload,
            )
            page.wait_for_function(f"document.querySelector('.hit .path')?.textContent === {str(images[2])!r}")
            assert "neighbours of dropped.jpg" in page.inner_text("#status")
            bad = list(b"not an image")
            page.evaluate(
                """(bytes) => {
                const data = new DataTransfer(); data.items.add(new File([new Uint8Array(bytes)], "junk.jpg"));
                document.getElementById("drop").dispatchEvent(
                    new DragEvent("drop", {dataTransfer: data, bubbles: true}));
            }""",
                bad,
            )
            page.wait_for_selector("#status.error")
            assert "junk.jpg" in page.inner_text("#status") and page.locator(".hit").count() == 0
        finally:
            browser.close()
