"""A real ComfyUI server with this pack installed, started headless on 127.0.0.1 for tests and the demo.

The pack is installed the way users install it: a folder in a custom_nodes directory (here a symlink
to this checkout, declared through an extra_model_paths.yaml), with models in folders declared the
same way. The server is stopped by PID (its whole process group). Its temporary files go to a private
folder (TMPDIR=<base>/tmp), so leaks can be counted; with ``block_network`` every outbound connection
attempt in the server process is refused and recorded (testkit/netguard).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACK_FOLDER_NAME = "ComfyUI-ReenactAnything"
NETGUARD = Path(__file__).resolve().parent / "netguard"


class ServerError(RuntimeError):
    pass


class PortTaken(ServerError):
    """Another process bound the chosen port before the server could."""


class PromptRejected(ServerError):
    """POST /prompt answered 400: the body holds ComfyUI's error and node_errors."""

    def __init__(self, body: dict):
        super().__init__(json.dumps(body)[:2000])
        self.body = body


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    def __init__(
        self,
        root: str | os.PathLike,
        base_dir: str | os.PathLike,
        model_folders: dict[str, str | os.PathLike] | None = None,
        python: str = sys.executable,
        extra_args: list[str] | None = None,
        block_network: bool = False,
        custom_nodes: list[str | os.PathLike] | None = None,
        env: dict[str, str] | None = None,
        port: int | None = None,
    ):
        self.root = Path(root).resolve()
        self.base = Path(base_dir).resolve()
        self.model_folders = {k: str(v) for k, v in (model_folders or {}).items()}
        self.python = python
        self.extra_args = list(extra_args or [])
        self.block_network = block_network
        self.custom_nodes = [Path(p).resolve() for p in (custom_nodes or [])]  # more node packs to install
        self.env = dict(env or {})
        self.port = port or free_port()  # ``port``: try this one first (a test gives a taken one)
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        self.client_id = uuid.uuid4().hex
        for sub in ("input", "output", "temp", "user", "custom_nodes", "tmp"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        self.log_path = self.base / "server.log"
        self.network_log = self.base / "network.log"

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self, timeout: float = 180.0, attempts: int = 3) -> ComfyServer:
        """Start the server. The port is free when chosen but may be taken before the server binds it:
        then the server exits, and it is started again on another port. It counts as started only once
        it has logged its own successful bind on this port and answers, never when some other process
        answers on the port."""
        for attempt in range(attempts):
            try:
                return self._start_once(timeout)
            except PortTaken:
                if attempt == attempts - 1:
                    raise
                self.port = free_port()
                self.url = f"http://127.0.0.1:{self.port}"
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> ComfyServer:
        for name, target in [(PACK_FOLDER_NAME, REPO)] + [(p.name, p) for p in self.custom_nodes]:
            link = self.base / "custom_nodes" / name
            if not link.exists():
                link.symlink_to(target, target_is_directory=True)
        config = self.base / "extra_model_paths.yaml"
        lines = ["reenact_test:", f"  base_path: {self.base}", "  custom_nodes: custom_nodes"]
        lines += [f"  {name}: {path}" for name, path in self.model_folders.items()]
        config.write_text("\n".join(lines) + "\n")
        args = [
            self.python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
            "--disable-auto-launch", "--output-directory", str(self.base / "output"),
            "--input-directory", str(self.base / "input"), "--temp-directory", str(self.base / "temp"),
            "--extra-model-paths-config", str(config),
        ]
        if "--user-directory" in (self.root / "comfy" / "cli_args.py").read_text():
            args += ["--user-directory", str(self.base / "user")]
        args += self.extra_args
        env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", DO_NOT_TRACK="1", TMPDIR=str(self.base / "tmp"))
        if self.block_network:
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(NETGUARD), env.get("PYTHONPATH")) if p)
            env["REENACT_NETWORK_LOG"] = str(self.network_log)
        env.update(self.env)
        self._log = open(self.log_path, "ab")
        log_start = self._log.tell()
        self.process = subprocess.Popen(args, cwd=self.root, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        bound = f"To see the GUI go to: http://127.0.0.1:{self.port}".encode()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code, tail = self.process.returncode, self.log_tail()
                new_output = self.log_path.read_bytes()[log_start:]
                self._log.close()
                self.process = None
                if b"already in use" in new_output:  # aiohttp's EADDRINUSE (2024), ComfyUI's own message (2025+)
                    raise PortTaken(self.port)
                raise ServerError(f"ComfyUI exited with {code} during start-up:\n{tail}")
            if bound in self.log_path.read_bytes()[log_start:]:
                try:
                    self.get("/object_info/LoadMotionReference", timeout=5)
                    return self
                except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                    pass
            time.sleep(0.5)
        self.stop()
        raise ServerError(f"ComfyUI did not answer within {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.process.wait(timeout=20)
        self._log.close()
        self.process = None

    def __enter__(self) -> ComfyServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss_bytes(self) -> int:
        """Resident memory of the server process (VmRSS)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise ServerError("no VmRSS in /proc/<pid>/status")

    def network_attempts(self) -> list[dict]:
        """Outbound connections the server process tried (and was refused) with block_network."""
        if not self.network_log.exists():
            return []
        return [json.loads(line) for line in self.network_log.read_text().splitlines() if line.strip()]

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # -- HTTP ----------------------------------------------------------------------------------------

    def get(self, path: str, timeout: float = 30) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict | None = None, timeout: float = 30) -> tuple[int, dict]:
        data = json.dumps(body or {}).encode()
        request = urllib.request.Request(self.url + path, data=data, headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
                return response.status, (json.loads(raw) if raw.strip() else {})
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except json.JSONDecodeError:
                return e.code, {"raw": raw.decode(errors="replace")}

    def queue(self, prompt: dict) -> str:
        """POST /prompt; returns the prompt id or raises PromptRejected with ComfyUI's node_errors."""
        status, body = self.post("/prompt", {"prompt": prompt, "client_id": self.client_id})
        if status != 200:
            raise PromptRejected(body)
        return body["prompt_id"]

    def wait(self, prompt_id: str, timeout: float = 600.0) -> dict:
        """Wait until the prompt is in /history; returns its entry (status, outputs)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise ServerError(f"ComfyUI died while running {prompt_id}:\n{self.log_tail()}")
            history = self.get(f"/history/{urllib.parse.quote(prompt_id)}")
            if prompt_id in history:  # ComfyUI adds the entry when the prompt has finished (or failed)
                return history[prompt_id]
            time.sleep(0.5)
        raise ServerError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{self.log_tail()}")

    def run(self, prompt: dict, timeout: float = 600.0) -> dict:
        return self.wait(self.queue(prompt), timeout)

    def output_path(self, file_info: dict) -> Path:
        """Path of an output file described as {filename, subfolder, type} in a history entry."""
        # ComfyUI puts its temp folder one level below --temp-directory (main.py joins "temp" to it).
        folder = {"output": "output", "temp": "temp/temp", "input": "input"}[file_info.get("type", "output")]
        return self.base / folder / file_info.get("subfolder", "") / file_info["filename"]


def execution_error(entry: dict) -> dict | None:
    """The execution_error message of a finished history entry, if it failed."""
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_error":
            return data
    return None
