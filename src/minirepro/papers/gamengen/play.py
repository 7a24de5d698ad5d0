"""Play the learned game: a session that turns key presses into generated frames, and a
local web page (standard-library HTTP server) that shows them with the frame rate.

    session = GameSession.from_checkpoint("runs/gamengen/.../world_model.safetensors")
    server = make_server(session, port=8765)   # http://127.0.0.1:8765/
    server.serve_forever()

The page polls `POST /step {"action": i}` as fast as frames come back; each reply carries
the new frame as base64 RGB bytes and the server's milliseconds for it.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import torch

from minirepro.papers.gamengen.world_model import WorldModel, to_model, to_uint8

__all__ = ["KEYS", "GameSession", "make_server", "page_html"]

# Browser key names (KeyboardEvent.key) for each action name.
KEYS: dict[str, list[str]] = {
    "MOVE_LEFT": ["ArrowLeft", "a"],
    "MOVE_RIGHT": ["ArrowRight", "d"],
    "TURN_LEFT": ["ArrowLeft", "a"],
    "TURN_RIGHT": ["ArrowRight", "d"],
    "ATTACK": [" ", "ArrowUp", "w"],
    "FIRE": [" "],
    "RIGHT": ["ArrowUp", "ArrowRight"],
    "LEFT": ["ArrowDown", "ArrowLeft"],
    "MOVE_FORWARD": ["ArrowUp", "w"],
    "MOVE_BACKWARD": ["ArrowDown", "s"],
}


class GameSession:
    """The state of one game played inside the model: the last N frames and actions.

    Args:
        model: The world model.
        start_frames: (N, S, S, 3) uint8 real frames to start from.
        start_actions: (N,) the actions on them.
        steps: DDIM steps per frame.
        context_sigma: Inference context noise.
        seed: Seeds the sampling noise.
    """

    def __init__(
        self,
        model: WorldModel,
        start_frames: np.ndarray,
        start_actions: np.ndarray,
        *,
        steps: int = 4,
        context_sigma: float = 0.0,
        seed: int = 0,
    ) -> None:
        n, s = model.cfg.context, model.cfg.frame_size
        start_frames = np.asarray(start_frames)
        if start_frames.shape != (n, s, s, 3) or len(start_actions) != n:
            raise ValueError(
                f"need {n} start frames of {s}x{s}x3 and {n} actions, got "
                f"{start_frames.shape} and {len(start_actions)}"
            )
        if not 1 <= steps <= model.cfg.T:
            raise ValueError(f"steps must be in [1, {model.cfg.T}], got {steps}")
        if not 0.0 <= context_sigma <= model.cfg.max_sigma:
            raise ValueError(
                f"context_sigma must be in [0, {model.cfg.max_sigma}], got {context_sigma}"
            )
        # channels-last convolutions: ~15% faster at batch 1 on the CPU here
        self.model = model.eval().to(memory_format=torch.channels_last)
        self.steps, self.context_sigma = steps, context_sigma
        self._start = (start_frames.copy(), np.asarray(start_actions, np.int64).copy())
        self._lock = threading.Lock()
        self._g = torch.Generator().manual_seed(seed)
        self.reset()

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: object) -> GameSession:
        """Loads a `WorldModel.save` file that holds `start_frames` and `start_actions`."""
        model, extras = WorldModel.load(path)
        if "start_frames" not in extras or "start_actions" not in extras:
            raise ValueError(f"{path} has no start frames to play from")
        return cls(model, extras["start_frames"].numpy(), extras["start_actions"].numpy(), **kwargs)

    @property
    def action_names(self) -> tuple[str, ...]:
        return tuple(self.model.cfg.action_names) or tuple(
            str(i) for i in range(self.model.cfg.n_actions)
        )

    def reset(self) -> np.ndarray:
        """Back to the start frames; returns the current frame (S, S, 3) uint8."""
        with self._lock:
            frames, actions = self._start
            self._ctx = to_model(frames)[None]  # (1, N, 3, S, S)
            self._actions = torch.as_tensor(actions)[None]  # (1, N)
            self.frame = frames[-1].copy()
            self.history: list[int] = []
            return self.frame

    def step(self, action: int) -> np.ndarray:
        """Generates the frame that follows pressing `action` on the current one.

        Returns:
            (S, S, 3) uint8.
        """
        if not 0 <= int(action) < self.model.cfg.n_actions:
            raise ValueError(f"action {action} out of range 0..{self.model.cfg.n_actions - 1}")
        with self._lock:
            acts = torch.cat([self._actions[:, 1:], torch.tensor([[int(action)]])], dim=1)
            nxt = self.model.predict(
                self._ctx, acts, steps=self.steps, context_sigma=self.context_sigma,
                generator=self._g,
            )  # fmt: skip
            self._ctx = torch.cat([self._ctx[:, 1:], nxt[:, None]], dim=1)
            self._actions = acts
            self.history.append(int(action))
            self.frame = to_uint8(nxt[0])
            return self.frame


def page_html(session: GameSession) -> str:
    """The play page: a scaled canvas, the FPS, and the key map."""
    keymap = {k: i for i, name in enumerate(session.action_names) for k in KEYS.get(name, [])}
    legend = ", ".join(
        f"{name}: {' / '.join(repr(k) if k == ' ' else k for k in KEYS.get(name, ['-']))}"
        for name in session.action_names
    )
    size = session.model.cfg.frame_size
    return (
        _PAGE.replace("__KEYMAP__", json.dumps(keymap))
        .replace("__SIZE__", str(size))
        .replace("__LEGEND__", legend.replace("<", "&lt;"))
    )


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>GameNGen (minirepro)</title>
<style>body{background:#111;color:#ddd;font:14px sans-serif;text-align:center}
canvas{width:512px;height:512px;image-rendering:pixelated;border:1px solid #444}</style></head>
<body><h3>GameNGen: every frame is generated by the diffusion model</h3>
<canvas id="screen" width="__SIZE__" height="__SIZE__"></canvas>
<p>FPS: <b id="fps">0.0</b> &middot; frames: <b id="frames">0</b> &middot;
model ms/frame: <b id="ms">-</b> &middot; action: <b id="action">NOOP</b></p>
<p>Keys: __LEGEND__ &middot; r: restart</p>
<script>
const KEYMAP = __KEYMAP__, S = __SIZE__;
const down = new Set(); let restart = false, frames = 0, times = [];
addEventListener("keydown", e => { if (e.key === "r") restart = true;
  if (e.key in KEYMAP) { down.add(e.key); e.preventDefault(); } });
addEventListener("keyup", e => down.delete(e.key));
const ctx = document.getElementById("screen").getContext("2d");
function current() { let a = 0; for (const k of down) a = KEYMAP[k]; return a; }
async function loop() {
  while (true) {
    const body = JSON.stringify(restart ? {reset: true} : {action: current()});
    restart = false;
    const r = await fetch("/step", {method: "POST", body});
    const j = await r.json();
    const raw = atob(j.frame), img = ctx.createImageData(S, S);
    for (let i = 0, p = 0; i < S * S; i++) { img.data[p++] = raw.charCodeAt(3 * i);
      img.data[p++] = raw.charCodeAt(3 * i + 1); img.data[p++] = raw.charCodeAt(3 * i + 2);
      img.data[p++] = 255; }
    ctx.putImageData(img, 0, 0);
    frames++; const now = performance.now(); times.push(now);
    while (times.length && now - times[0] > 1000) times.shift();
    document.getElementById("fps").textContent = times.length.toFixed(1);
    document.getElementById("frames").textContent = frames;
    document.getElementById("ms").textContent = j.ms.toFixed(1);
    document.getElementById("action").textContent = j.action;
  }
}
loop();
</script></body></html>
"""


def make_server(
    session: GameSession, host: str = "127.0.0.1", port: int = 8765
) -> ThreadingHTTPServer:
    """An HTTP server for the play page (`GET /`) and frames (`POST /step`).

    Args:
        session: The game.
        host: Address to bind (loopback by default; there is no authentication).
        port: TCP port (0: any free port; read `server.server_address`).

    Raises:
        OSError: The address cannot be bound.
    """
    page = page_html(session).encode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _send(self, code: int, body: bytes, kind: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path in ("/", "/index.html"):
                self._send(200, page, "text/html; charset=utf-8")
            else:
                self._send(404, b"not found", "text/plain")

        def do_POST(self) -> None:
            if self.path != "/step":
                self._send(404, b"not found", "text/plain")
                return
            try:
                n = int(self.headers.get("Content-Length", 0))
                req = json.loads(self.rfile.read(n) or b"{}")
                start = time.perf_counter()
                if req.get("reset"):
                    frame, action = session.reset(), 0
                else:
                    action = int(req.get("action", 0))
                    frame = session.step(action)
                ms = (time.perf_counter() - start) * 1e3
            except (ValueError, TypeError, AttributeError) as exc:
                self._send(400, json.dumps({"error": str(exc)}).encode(), "application/json")
                return
            body = {
                "frame": base64.b64encode(np.ascontiguousarray(frame).tobytes()).decode(),
                "ms": ms,
                "action": session.action_names[action],
            }
            self._send(200, json.dumps(body).encode(), "application/json")

    return ThreadingHTTPServer((host, port), Handler)
