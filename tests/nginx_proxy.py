"""nginx in front of several Pictor nodes, for the several-nodes test and benchmark
(issue #16): Debian's nginx-light (installed by .ci/run), started on loopback in a
temporary directory of its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil

from server import free_port


class Nginx:
    """nginx (Debian's) round robin in front of Pictor nodes on ``upstreams`` ports, as
    docs/scaling.md configures it: uploads and answers streamed, relayed in buffers of
    ``buffer_size`` (None: nginx's default, one page). Each answer says which node gave
    it (``X-Upstream``)."""

    def __init__(self, upstreams: list[int], buffer_size: str | None = "512k") -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="pictor-nginx-"))
        os.chmod(self.root, 0o755)  # nginx's workers run as nobody under root
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.root / sub).mkdir()
            os.chmod(self.root / sub, 0o777)
        servers = "".join(f"        server 127.0.0.1:{p};\n" for p in upstreams)
        # unbuffered, nginx relays an answer through one buffer of proxy_buffer_size
        # (default one page): a read and a write per 4 KB of a 512 KB frame
        buffer = ""
        if buffer_size:  # nginx checks the busy size against proxy_buffers even unbuffered
            buffer = "".join(
                f"            {line};\n"
                for line in (
                    f"proxy_buffer_size {buffer_size}",
                    f"proxy_buffers 4 {buffer_size}",
                    f"proxy_busy_buffers_size {buffer_size}",
                )
            )
        (self.root / "nginx.conf").write_text(
            f"""
worker_processes auto;
error_log {self.root}/error.log warn;
pid {self.root}/nginx.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {self.root}/body;
    proxy_temp_path {self.root}/proxy;
    fastcgi_temp_path {self.root}/fastcgi;
    uwsgi_temp_path {self.root}/uwsgi;
    scgi_temp_path {self.root}/scgi;
    client_max_body_size 0;
    upstream pictor {{
{servers}        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            proxy_pass http://pictor;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_request_buffering off;
            proxy_buffering off;
{buffer}            add_header X-Upstream $upstream_addr always;
        }}
    }}
}}
"""
        )
        self.proc = subprocess.Popen(
            ["nginx", "-p", str(self.root), "-c", str(self.root / "nginx.conf"),
             "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            self._wait()
        except BaseException:
            self.stop()
            raise

    def _wait(self) -> None:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return
            except urllib.error.HTTPError:
                return  # nginx answers (an upstream's error status is not nginx's)
            except OSError:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read() if self.proc.stderr else b""
                    raise RuntimeError(f"nginx exited: {err.decode(errors='replace')}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not start") from None
                time.sleep(0.1)

    def pids(self) -> list[int]:
        try:
            parent = psutil.Process(self.proc.pid)
            return [parent.pid] + [c.pid for c in parent.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)
