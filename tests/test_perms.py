"""The modes of what tuiflow creates come from the home's `sharing` setting, never from the
umask of whoever runs it: a whole workflow (coordinator, workers, task attempts, logs,
spans, locks) runs in a real `tuiflow run-local` process under a hostile umask, and every
path in the home is then checked."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from spool import Home, Settings

WORKFLOW = """\
name: modes
tasks:
  - name: a
    call: "tasks:emit"
  - name: b
    depends_on: [a]
    run: echo "got {{ inputs.a.n }}"; echo err >&2
  - name: c
    depends_on: [b]
    run: exit 3
"""

TASKS = "def emit():\n    print('hello')\n    return {'n': 7}\n"


def _run_local(tmp_path: Path, home: Path, umask: int) -> subprocess.CompletedProcess:
    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    (tmp_path / "tasks.py").write_text(TASKS)
    return subprocess.run(
        [sys.executable, "-m", "tuiflow", "run-local", str(tmp_path / "wf.yaml"), "--home", str(home)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: os.umask(umask),
    )


def _modes(home: Path) -> dict[str, int]:
    found = {}
    for dirpath, dirnames, filenames in os.walk(home):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, home)] = os.lstat(path).st_mode
    found["."] = os.lstat(home).st_mode
    return found


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_a_private_home_is_the_users_alone_whatever_the_umask(tmp_path, umask):
    home = tmp_path / "home"
    r = _run_local(tmp_path, home, umask)
    assert r.returncode == 1, r.stderr  # c fails on purpose
    modes = _modes(home)
    assert len(modes) > 40, sorted(modes)  # queues, claims, workflow records, attempts, logs
    open_to_others = sorted(p for p, m in modes.items() if m & 0o077 and not stat.S_ISLNK(m))
    assert open_to_others == [], [(p, oct(modes[p])) for p in open_to_others]
    # and still usable by the user (the umask 077 case must not lock them out either)
    for path, mode in modes.items():
        want = 0o700 if stat.S_ISDIR(mode) else 0o600
        assert mode & want == want, (path, oct(mode))


def test_a_group_home_is_shared_with_the_group_and_new_entries_inherit_its_group(tmp_path):
    home = tmp_path / "home"
    # the cluster set-up of docs/deployment.md: a group's directory, setgid
    home.mkdir()
    gid = os.getgroups()[-1] if os.getgroups() else os.getgid()
    os.chown(home, -1, gid)
    os.chmod(home, 0o2770)
    Home.open(home, settings=Settings(sharing="group"))
    r = _run_local(tmp_path, home, 0o022)  # the common umask that would take the group's write bit
    assert r.returncode == 1, r.stderr
    modes = _modes(home)
    layout = json.loads((home / "layout.json").read_text())
    assert layout["settings"]["sharing"] == "group"
    for path, mode in modes.items():
        if stat.S_ISLNK(mode):
            continue
        assert mode & 0o007 == 0, (path, oct(mode))  # nothing for others
        if stat.S_ISDIR(mode):
            assert mode & 0o2770 == 0o2770, (path, oct(mode))
        else:
            assert mode & 0o660 == 0o660, (path, oct(mode))
        assert os.lstat(home / path).st_gid == gid, path


def test_init_makes_a_group_home_for_another_group_from_the_command_line(tmp_path):
    import grp

    others = [g for g in grp.getgrall() if g.gr_gid != os.getgid()]
    if os.geteuid() != 0 and not others:
        pytest.skip("no second group to share a home with")
    group = others[0]
    home = tmp_path / "home"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "tuiflow",
            "init",
            "--home",
            str(home),
            "--sharing",
            "group",
            "--group",
            group.gr_name,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "sharing=group" in r.stdout
    assert stat.S_IMODE(home.stat().st_mode) == 0o2770 and home.stat().st_gid == group.gr_gid
    r = _run_local(tmp_path, home, 0o077)  # a user who keeps everything to themselves elsewhere
    assert r.returncode == 1, r.stderr
    for path, mode in _modes(home).items():
        if not stat.S_ISLNK(mode):
            assert os.lstat(home / path).st_gid == group.gr_gid, path
            assert mode & 0o660 == 0o660 and mode & 0o007 == 0, (path, oct(mode))
    # the setting is fixed at creation: asking for another is refused, not applied halfway
    r = subprocess.run(
        [sys.executable, "-m", "tuiflow", "init", "--home", str(home), "--sharing", "private"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "already exists with sharing=group" in r.stderr, r.stderr
