"""systemd/vip-worker.service: systemd itself accepts it, and it says what the daemon needs.

``systemd-analyze verify`` loads a copy whose paths are rendered to exist here (the
venv's own vip-worker, a temporary config, this user); every other line is the shipped
one. The text checks read the shipped file and tie its numbers to the code's.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from vip_worker import config, exitcodes

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "vip-worker.service"
SHIPPED_EXEC = "/opt/vip-worker/.venv/bin/vip-worker"
SHIPPED_CONFIG = "/etc/vip-worker/vip-worker.toml"
# The master's own stop deadline is grace + longest wait + this (arbiter.stop).
MASTER_DEADLINE_EXTRA_S = 15


def directives(text: str) -> dict[tuple[str, str], list[str]]:
    """``(section, key) -> [values]`` of a unit file; comments and blank lines skipped."""
    found: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        found.setdefault((section, key.strip()), []).append(value.strip())
    return found


def value(key: str, section: str = "Service") -> str:
    values = directives(UNIT.read_text()).get((section, key))
    assert values, f"{UNIT.name}: no {key}= in [{section}]"
    assert len(values) == 1, f"{UNIT.name}: {key}= set {len(values)} times"
    return values[0]


# -- what the shipped unit says ------------------------------------------------------

REQUIRED = {
    "Type": "notify",
    "NotifyAccess": "main",
    "ExecStart": f"{SHIPPED_EXEC} run --config {SHIPPED_CONFIG}",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "KillMode": "mixed",
    "KillSignal": "SIGTERM",
    "Restart": "on-failure",
    "RestartSec": "5",
    "RestartPreventExitStatus": str(exitcodes.CONFIG),
    "WatchdogSec": "30",
    "User": "vip-worker",
    "Group": "vip-worker",
    "EnvironmentFile": "-/etc/vip-worker/vip-worker.env",
    "StateDirectory": "vip-worker",
    "RuntimeDirectory": "vip-worker",
    "WorkingDirectory": "/opt/vip-worker",
    "StandardOutput": "journal",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
}


@pytest.mark.parametrize("key", REQUIRED)
def test_the_unit_sets(key):
    assert value(key) == REQUIRED[key]


def test_stop_timeout_outlasts_the_masters_own_deadline():
    """systemd must not SIGKILL a graceful stop the master is still running by the book."""
    grace = config.worker_by_name()["grace_period_s"].default
    longest_poll = config.QUEUE_BY_NAME["wait_time_s"].default
    master_deadline = grace + longest_poll + MASTER_DEADLINE_EXTRA_S
    assert int(value("TimeoutStopSec")) > master_deadline


def test_writable_paths_are_only_the_units_own_directories():
    allowed = {f"/var/lib/{value('StateDirectory')}", f"/var/log/{value('LogsDirectory')}",
               f"/run/{value('RuntimeDirectory')}"}
    assert set(value("ReadWritePaths").split()) <= allowed


def test_sd_notify_can_reach_systemd():
    """sd_notify is a unix datagram: a RestrictAddressFamilies= without AF_UNIX breaks READY."""
    assert "AF_UNIX" in value("RestrictAddressFamilies").split()


def test_the_command_is_the_installed_entry_point():
    setup = (ROOT / "setup.cfg").read_text()
    assert re.search(r"^\s*vip-worker = vip_worker\.cli:main$", setup, re.MULTILINE)
    assert value("WantedBy", "Install") == "multi-user.target"


def test_every_non_obvious_line_is_explained():
    """A comment sits right above each of these lines (why mixed, why 78...)."""
    lines = UNIT.read_text().splitlines()
    for key in ("NotifyAccess", "ExecReload", "KillMode", "TimeoutStopSec",
                "RestartPreventExitStatus", "WatchdogSec", "EnvironmentFile", "ProtectSystem"):
        index = next(i for i, line in enumerate(lines) if line.startswith(f"{key}="))
        assert lines[index - 1].startswith("#"), f"{key}= has no comment above it"


# -- what systemd says about it ------------------------------------------------------


def analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (make test installs Debian's systemd "
                    "package when run as root)")
    return path


def verify(unit: Path) -> subprocess.CompletedProcess:
    """``systemd-analyze verify`` on ``unit`` (an absolute path, or it reports nothing)."""
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "notice", "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run([analyze(), "verify", "--man=no", str(unit)], env=env,
                          capture_output=True, text=True, timeout=60)


def complaints(result: subprocess.CompletedProcess, unit: Path) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines()
            if unit.name in line]


@pytest.fixture
def rendered(tmp_path):
    """The shipped unit with paths that exist here; returns a function of extra edits."""
    executable = Path(sys.executable).parent / "vip-worker"
    if executable.exists():
        exec_start = f"{executable} run --config"
    else:  # not installed as a script: the same entry point through the interpreter
        exec_start = f"{sys.executable} -m vip_worker run --config"
    (tmp_path / "vip-worker.toml").write_text("")
    (tmp_path / "work").mkdir()
    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name

    def render(*edits: tuple[str, str]) -> Path:
        text = UNIT.read_text()
        for old, new in (
            (f"{SHIPPED_EXEC} run --config", exec_start),
            (SHIPPED_CONFIG, str(tmp_path / "vip-worker.toml")),
            ("EnvironmentFile=-/etc/vip-worker/", f"EnvironmentFile=-{tmp_path}/"),
            ("WorkingDirectory=/opt/vip-worker", f"WorkingDirectory={tmp_path / 'work'}"),
            ("User=vip-worker", f"User={user}"),
            ("Group=vip-worker", f"Group={group}"),
            *edits,
        ):
            assert old in text, old
            text = text.replace(old, new)
        path = tmp_path / "vip-worker.service"
        path.write_text(text)
        return path

    return render


def test_systemd_analyze_verify_accepts_the_unit(rendered, tmp_path):
    # First make sure systemd-analyze works at all here (containers can refuse it).
    probe = tmp_path / "probe" / "vw-probe.service"
    probe.parent.mkdir()
    probe.write_text(f"[Service]\nType=oneshot\nExecStart={shutil.which('true') or '/bin/true'}"
                     "\n")
    checked = verify(probe)
    if checked.returncode != 0:
        pytest.skip(f"systemd-analyze verify cannot run here: {checked.stderr.strip()[:300]}")

    unit = rendered()
    result = verify(unit)
    assert result.returncode == 0, result.stderr
    assert not complaints(result, unit), "\n".join(complaints(result, unit))


def test_the_verify_check_catches_a_bad_line(rendered):
    """The check above can fail: a misspelt value is reported, naming the file."""
    unit = rendered(("KillMode=mixed", "KillMode=mixd"))
    result = verify(unit)
    assert any("KillMode" in line or "kill mode" in line for line in complaints(result, unit))


WEB_UNIT = ROOT / "systemd" / "vip-worker-web.service"


def test_systemd_analyze_verify_accepts_the_web_unit(tmp_path):
    probe = tmp_path / "probe" / "vw-probe.service"
    probe.parent.mkdir()
    probe.write_text(f"[Service]\nType=oneshot\nExecStart={shutil.which('true') or '/bin/true'}"
                     "\n")
    if verify(probe).returncode != 0:
        pytest.skip("systemd-analyze verify cannot run here")
    executable = Path(sys.executable).parent / "vip-worker"
    exec_start = (f"{executable} web --config" if executable.exists()
                  else f"{sys.executable} -m vip_worker web --config")
    (tmp_path / "vip-worker.toml").write_text("")
    (tmp_path / "work").mkdir()
    text = WEB_UNIT.read_text()
    for old, new in ((f"{SHIPPED_EXEC} web --config", exec_start),
                     (SHIPPED_CONFIG, str(tmp_path / "vip-worker.toml")),
                     ("EnvironmentFile=-/etc/vip-worker/", f"EnvironmentFile=-{tmp_path}/"),
                     ("WorkingDirectory=/opt/vip-worker", f"WorkingDirectory={tmp_path / 'work'}"),
                     ("User=vip-worker", f"User={pwd.getpwuid(os.getuid()).pw_name}"),
                     ("Group=vip-worker", f"Group={grp.getgrgid(os.getgid()).gr_name}")):
        assert old in text, old
        text = text.replace(old, new)
    unit = tmp_path / "vip-worker-web.service"
    unit.write_text(text)
    result = verify(unit)
    assert result.returncode == 0, result.stderr
    assert not complaints(result, unit), "\n".join(complaints(result, unit))
    assert "RestartPreventExitStatus=78" in text
