"""Playing the model: the session, the HTTP page with a real client, the CLI, and real
headless Chromium pressing keys."""

import base64
import json
import shutil
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from minirepro import cli
from minirepro.papers.gamengen import GameSession, make_server

from .conftest import tiny_model

runner = CliRunner(env={"COLUMNS": "200"})


def _trained_like_model():
    """A tiny model whose weights are random (not the zero-init identity), so actions and
    context change its frames."""
    torch.manual_seed(0)
    model = tiny_model()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.15)
    return model.eval()


@pytest.fixture()
def session():
    model = _trained_like_model()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    return GameSession(model, frames, np.zeros(3, np.int64), steps=2)


@pytest.fixture()
def server(session):
    srv = make_server(session, port=0)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(srv, path="/"):
    host, port = srv.server_address[:2]
    return f"http://{host}:{port}{path}"


def _post(srv, body):
    req = urllib.request.Request(_url(srv, "/step"), data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_session_steps_and_resets(session):
    first = session.frame.copy()
    a = session.step(1)
    assert a.shape == (16, 16, 3) and a.dtype == np.uint8 and not np.array_equal(a, first)
    session.step(2)
    assert session.history == [1, 2]
    assert np.array_equal(session.reset(), first) and session.history == []
    with pytest.raises(ValueError, match="out of range"):
        session.step(9)
    with pytest.raises(ValueError, match="start frames"):
        GameSession(session.model, np.zeros((2, 16, 16, 3), np.uint8), [0, 0])


def test_http_page_and_steps(server, session):
    with urllib.request.urlopen(_url(server), timeout=10) as r:
        page = r.read().decode()
    assert "<canvas" in page and 'id="fps"' in page and "ArrowLeft" in page
    reply = _post(server, {"action": 1})
    frame = np.frombuffer(base64.b64decode(reply["frame"]), np.uint8).reshape(16, 16, 3)
    np.testing.assert_array_equal(frame, session.frame)
    assert reply["action"] == "MOVE_LEFT" and reply["ms"] > 0
    with pytest.raises(urllib.error.HTTPError) as err:
        _post(server, {"action": 99})
    assert err.value.code == 400


def test_cli_play_errors(tmp_path):
    r = runner.invoke(cli.app, ["play", "flow"])
    assert r.exit_code == 2 and "nothing to play" in r.output
    r = runner.invoke(cli.app, ["play", "gamengen", "--runs-dir", str(tmp_path)])
    assert r.exit_code == 2 and "minirepro run gamengen" in r.output
    bad = tmp_path / "x.safetensors"
    bad.write_text("nope")
    r = runner.invoke(cli.app, ["play", "gamengen", "--checkpoint", str(bad)])
    assert r.exit_code == 2 and "not a safetensors" in r.output


CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.slow
def test_browser_keys_drive_the_generated_frames(server, session, tmp_path):
    """Real headless Chromium opens the page, holds keys, and sees frames change and FPS."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    exe = _chromium()
    if exe is None:
        pytest.skip("no Chromium browser (apt-get install chromium; `make test` tries)")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=exe, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            page = browser.new_page()
            page.goto(_url(server))
            page.wait_for_function("Number(document.getElementById('frames').textContent) > 3")
            shot = "document.getElementById('screen').toDataURL()"
            before = page.evaluate(shot)
            page.keyboard.down("ArrowLeft")
            page.wait_for_function("document.getElementById('action').textContent == 'MOVE_LEFT'")
            page.keyboard.up("ArrowLeft")
            page.keyboard.down("ArrowRight")
            page.wait_for_function("document.getElementById('action').textContent == 'MOVE_RIGHT'")
            page.keyboard.up("ArrowRight")
            after = page.evaluate(shot)
            fps = float(page.text_content("#fps"))
        finally:
            browser.close()
    assert before != after
    assert 1 in session.history and 2 in session.history
    assert fps > 0
