"""The Dockerfile's steps, run here without Docker (no engine on this machine): copy what
it copies, ``pip install .`` (not editable) into a fresh virtual environment, run
``pictor serve`` from there, and run the image's HEALTHCHECK command against it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from server import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_shape() -> None:
    steps = instructions()
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) == 2  # multi-stage: the build tools stay in the first stage
    runs = " ".join(args for word, args in steps if word == "RUN")
    assert re.search(r"pip install --no-cache-dir \.(\s|$)", runs)  # the README's install
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert json.loads(next(args for word, args in steps if word == "CMD")) == ["pictor", "serve"]
    assert any(word == "HEALTHCHECK" and '"health"' in args for word, args in steps)
    # an init process as PID 1 (signals forwarded, exited children reaped)
    assert json.loads(next(args for word, args in steps if word == "ENTRYPOINT"))[0].endswith(
        "tini"
    )


def test_the_images_install_and_healthcheck_work(tmp_path: Path) -> None:
    steps = instructions()
    src = tmp_path / "src"
    src.mkdir()
    for word, args in steps:  # the build stage's COPY steps
        if word == "COPY" and "--from" not in args:
            *sources, _ = args.split()
            for name in sources:
                path = ROOT / name
                if path.is_dir():
                    shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy2(path, src / name)
    venv = tmp_path / "venv"
    # the dependencies are those of this environment; the package itself is built and
    # installed as in the image (a wheel, not an editable install). This environment may
    # itself be a virtual environment, whose packages --system-site-packages would not
    # see (issue #19): its site-packages are added by a .pth file instead, after the new
    # environment's own (so the installed wheel, not an editable checkout, is imported)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    purelib = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    outer = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    (Path(purelib) / "outer-environment.pth").write_text("\n".join(outer) + "\n")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run(
        [*pip, "--no-deps", "--no-cache-dir", str(src)],
        check=True,
        cwd=tmp_path,
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PICTOR_")}
    env.pop("DATABASE_URL", None)
    env.update(
        {
            "PICTOR_DATA_DIR": str(tmp_path / "data"),
            "PICTOR_PORT": str(port),
            "PICTOR_DIMSE_PORT": "0",
            "PICTOR_HL7_PORT": "0",
            "PICTOR_WORKERS": "1",
        }
    )
    # run from an empty folder: nothing of the checkout is importable, only the install
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    server = subprocess.Popen(
        [str(venv / "bin" / "pictor"), "serve"],
        cwd=run_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert server.poll() is None, server.stdout.read().decode()[-3000:]  # type: ignore[union-attr]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.3)
        healthcheck = next(args for word, args in steps if word == "HEALTHCHECK")
        command = json.loads(healthcheck.split(" CMD ", 1)[1])
        assert command[0] == "pictor"
        # the image's command, from the install, with the server's own environment
        result = subprocess.run(
            [str(venv / "bin" / command[0]), *command[1:]],
            cwd=run_dir,
            env=env,
            timeout=30,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"http://127.0.0.1:{port}/health: ok" in result.stdout
        # and it fails when nothing serves there
        elsewhere = {**env, "PICTOR_PORT": str(free_port())}
        down = subprocess.run(
            [str(venv / "bin" / command[0]), *command[1:]],
            cwd=run_dir,
            env=elsewhere,
            timeout=30,
            capture_output=True,
        )
        assert down.returncode == 1
        # the schema came with the install (share/pictor/schemas), not from the checkout
        import asyncio

        import asyncpg

        from conftest import embedded_dsn

        async def versions() -> list[int]:
            conn = await asyncpg.connect(embedded_dsn(tmp_path / "data"))
            try:
                return [r[0] for r in await conn.fetch("SELECT version FROM schema_migration")]
            finally:
                await conn.close()

        applied = asyncio.run(versions())
        assert applied == list(range(1, len(list((ROOT / "schemas").glob("*.sql"))) + 1))
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(60)
