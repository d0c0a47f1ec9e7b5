"""`tunesmith serve`: a real HTTP server (FastAPI on uvicorn) for finished runs.

    from tunesmith.serve import Server, ServeOptions
    with Server(["runs/sentiment-lora-..."], ServeOptions(port=0)) as server:   # in a thread
        requests.post(f"{server.url}/v1/classify", json={"model": "...", "texts": ["great"]})

`Server(...).run()` blocks (the CLI): SIGTERM / Ctrl-C stop accepting, let in-flight requests finish
(up to the request timeout), let shadow answers finish, drain the batch queues and flush the prediction
log, then exit.
"""

from __future__ import annotations

import signal
import socket
import threading
import time

from ..errors import ConfigError
from .app import build_app
from .options import Route, ServeOptions, Shadow, parse_route, parse_shadow, read_api_keys
from .pool import open_runs, warm
from .predlog import PredictionLog, summarize, summary_table
from .protocol import with_header_deadline
from .shadow import check_shadows, compare_arms, read_labels, shadow_table

__all__ = [
    "Route",
    "ServeOptions",
    "Server",
    "Shadow",
    "compare_arms",
    "parse_route",
    "parse_shadow",
    "read_api_keys",
    "read_labels",
    "shadow_table",
    "summarize",
    "summary_table",
]


class Server:
    def __init__(self, sources: list[str], options: ServeOptions | None = None, say=print):
        import uvicorn

        self.options = options or ServeOptions()
        if self.options.threads:
            import torch

            torch.set_num_threads(self.options.threads)
        self.models = open_runs(list(sources))
        for route in self.options.routes:
            if route.name in self.models:
                raise ConfigError(f"--route {route.name}: a served model already has that name; name the route apart")
            for arm, _ in route.arms:
                if arm not in self.models:
                    raise ConfigError(
                        f"--route {route.name}: arm '{arm}' is not a served model ({', '.join(self.models)})"
                    )
        check_shadows(self.options.shadows, self.models, {r.name for r in self.options.routes}, self.options.log)
        warm(self.models, say)
        log = None
        if self.options.log is not None:
            log = PredictionLog(self.options.log, self.options.log_rotate_bytes, self.options.log_keep)
        self.app = build_app(self.models, self.options, log)
        config = uvicorn.Config(
            self.app,
            host=self.options.host,
            port=self.options.port,
            log_level="warning",
            timeout_graceful_shutdown=int(self.options.timeout_s) + 1,
            # beyond the queues' room, new connections get 503 from uvicorn itself
            limit_concurrency=self.options.queue_size * max(len(self.models), 1) + 64,
            timeout_keep_alive=5,
            http=with_header_deadline(self.options.read_timeout_s, self._headers_late),
        )
        self.uvicorn = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def _headers_late(self) -> None:
        self.app.serving.telemetry.observe("other", "", 408, None, "timeout")

    @property
    def port(self) -> int:
        servers = getattr(self.uvicorn, "servers", None)
        return servers[0].sockets[0].getsockname()[1] if servers else self.options.port

    @property
    def url(self) -> str:
        return f"http://{self.options.host}:{self.port}"

    def run(self) -> None:
        """Serve until SIGTERM / Ctrl-C (uvicorn's signal handling: graceful)."""
        self._check_port()
        if threading.current_thread() is not threading.main_thread():
            return self.uvicorn.run()
        # uvicorn re-raises the stop signal once it has shut down gracefully; absorbing it here lets the
        # caller finish (say so, exit 0) instead of dying of the signal's default action after the fact.
        absorb = lambda sig, frame: None
        previous = {sig: signal.signal(sig, absorb) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.uvicorn.run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def start(self, timeout: float = 30.0) -> Server:
        """Serve in a background thread; returns once the socket listens."""
        self._check_port()
        self._thread = threading.Thread(target=self.uvicorn.run, name="tunesmith-serve", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.uvicorn.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(f"serve: the server did not start on {self.options.host}:{self.options.port}")
            time.sleep(0.02)
        return self

    def _check_port(self) -> None:
        """A taken port is the user's to fix: one line, before uvicorn's own exit."""
        if not self.options.port:
            return
        with socket.socket(socket.AF_INET6 if ":" in self.options.host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.options.host, self.options.port))
            except OSError as err:
                raise ConfigError(
                    f"serve: cannot listen on {self.options.host}:{self.options.port} ({err.strerror}); pick another --port"
                ) from None

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(self.options.timeout_s + 5)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
