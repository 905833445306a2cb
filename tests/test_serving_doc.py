"""docs/serving-index.md: every command of its bash blocks runs as written, in a folder holding
what the page says it holds (embedder.onnx, photos/<class>/..., query.jpg, new/shoe_3.jpg).

`keras-roadmap ...` runs as `python -m keras_roadmap.cli ...` (this checkout); `keras-roadmap serve`
runs in the background until the end. Port 8000 is used when it is free; when another process
holds it, the test swaps in a free port (the only change) rather than fail."""

import json
import os
import queue
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading

import pytest
from conftest import REPO
from serving_fixtures import write_gallery, write_image

pytestmark = pytest.mark.slow
DOC = REPO / "docs" / "serving-index.md"


def doc_commands():
    text = DOC.read_text(encoding="utf-8")
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(line.strip())
    return commands


def _port_free(port):
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_every_documented_command_runs(onnx_embedder, tmp_path):
    shutil.copy(onnx_embedder, tmp_path / "embedder.onnx")
    images = write_gallery(tmp_path / "photos")
    (tmp_path / "photos" / "class_0" / "notes.txt").write_text("not an image")
    write_image(tmp_path / "query.jpg", 4, (50, 60))  # the pattern of photos/class_1/img_4.jpg, another size
    write_image(tmp_path / "new" / "shoe_3.jpg", 30)
    commands = doc_commands()
    assert len(commands) == 8, commands
    port = 8000 if _port_free(8000) else _free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    outputs, server = [], None
    try:
        for command in commands:
            argv = shlex.split(command.replace(":8000", f":{port}").replace("--port 8000", f"--port {port}"))
            if argv[0] == "keras-roadmap":
                argv = [sys.executable, "-m", "keras_roadmap.cli", *argv[1:]]
            if "serve" in argv:
                server = subprocess.Popen(
                    argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
                )
                lines = queue.Queue()
                threading.Thread(
                    target=lambda lines=lines, out=server.stdout: [lines.put(x) for x in out], daemon=True
                ).start()
                banner = lines.get(timeout=90)
                assert f"on http://127.0.0.1:{port}" in banner, banner
                outputs.append(banner)
                continue
            result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, f"{command}\n{result.stderr}"
            outputs.append(result)
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=15)

    built, table, as_json, added, removed, _, searched, health = outputs
    assert "indexed 9 images (3 classes, dim 16, flat index)" in built.stdout
    assert "notes.txt: not an image extension" in built.stderr  # listed, not dropped silently
    manifest = json.loads((tmp_path / "photos.idx" / "manifest.json").read_text())
    assert any(path.endswith("notes.txt") for path, _ in manifest["gallery"]["skipped"])
    nearest = json.loads(as_json.stdout)[0]["results"]
    assert len(nearest) == 5 and nearest[0]["path"] == str(images[4]) and nearest[0]["label"] == "class_1"
    assert f"{nearest[0]['path']}" in table.stdout and "class class_1" in table.stdout
    assert "added id 9" in added.stdout and "(class shoe)" in added.stdout
    assert "removed id 9" in removed.stdout
    hits = json.loads(searched.stdout)["results"]
    assert len(hits) == 3 and hits[0]["path"] == str(images[4])
    assert json.loads(health.stdout) == {
        "status": "ok",
        "images": 9,
        "dim": 16,
        "index_type": "flat",
        "generation": manifest["generation"],
    }
