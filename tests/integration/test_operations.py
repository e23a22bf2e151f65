"""docs/operations.md and deploy/ as written (issue #19: "the guide's commands were run
as written"): each ``pictor`` command the guide shows is one the CLI takes, the systemd
unit passes systemd's own check, and ``pictor --version`` says what it is. The flows
themselves (backup, restore, verify, health, the lock, the disk floor) are run by
their own tests with the same commands."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from app.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "operations.md"
UNIT = ROOT / "deploy" / "pictor.service"


def _commands(text: str) -> list[list[str]]:
    """The argument lists of every ``pictor`` command in the guide's code blocks."""
    found = []
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if not line or line.startswith("#"):
                continue
            words = shlex.split(line)
            for i, word in enumerate(words[:-1]):
                # the command at the start, by its path, or run in a container
                if (
                    (i == 0 and word == "pictor")
                    or word.endswith("/bin/pictor")
                    or (word == "pictor" and i >= 2 and words[i - 2] == "exec")
                ):
                    rest = words[i + 1 :]
                    if rest[0].startswith("-") or rest[0].isalpha():
                        found.append(rest)
    return found


def test_every_pictor_command_in_the_guide_is_accepted_as_written() -> None:
    commands = _commands(GUIDE.read_text())
    assert {"backup", "restore", "verify", "token", "--version"} <= {c[0] for c in commands}
    parser = build_parser()
    for argv in commands:
        out = io.StringIO()
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                parser.parse_args(argv)
        except SystemExit as exc:  # --version prints and exits 0; an error exits 2
            assert exc.code == 0, f"pictor {' '.join(argv)}: {out.getvalue()}"


def test_version_names_the_release_and_the_index_schema() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "app.cli", "--version"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0
    last = max(int(p.name[:3]) for p in (ROOT / "schemas").glob("*.sql"))
    assert re.fullmatch(rf"pictor \d+\.\d+\.\d+ \(index schema {last}\)\n", out.stdout)
    newest = max((ROOT / "schemas").glob("*.sql")).stem
    assert f"`{newest}`" in (ROOT / "CHANGELOG.md").read_text()  # the release names it


def test_the_systemd_unit_passes_systemd_analyze(tmp_path: Path) -> None:
    """systemd's own parser (CI installs systemd); the ExecStart path is this machine's
    install, as an administrator adjusts it."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: .ci/run installs the systemd package"
    pictor = shutil.which("pictor")
    assert pictor
    unit = tmp_path / "pictor.service"
    unit.write_text(UNIT.read_text().replace("/opt/pictor/bin/pictor", pictor))
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert str(unit) not in out.stderr, out.stderr  # no line of the unit was ignored
    text = UNIT.read_text()
    assert "KillMode=mixed" in text and "ExecStart=/opt/pictor/bin/pictor serve" in text
