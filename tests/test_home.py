from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from spool import Home, LayoutError, Settings, StorageError
from spool.atomic import Durability
from spool.placement import spread_subdirectories


def test_creates_layout_with_version_and_settings(tmp_path):
    h = Home.open(tmp_path / "h", settings=Settings(durability=Durability.MACHINE, lease_ttl=5))
    layout = json.loads((tmp_path / "h" / "layout.json").read_text())
    assert layout["version"] == 1
    assert layout["settings"]["durability"] == "machine"
    assert h.settings.lease_ttl == 5.0
    for sub in ("queues", "workflows", "workers", "coordinator", "completions", "control"):
        assert (tmp_path / "h" / sub).is_dir()
    # reopening reads the recorded settings, not the defaults
    assert Home.open(tmp_path / "h").settings.durability is Durability.MACHINE


def test_home_from_env_and_default(tmp_path, monkeypatch):
    monkeypatch.setenv("TUIFLOW_HOME", str(tmp_path / "envhome"))
    assert Home.open().root == str(tmp_path / "envhome")
    monkeypatch.delenv("TUIFLOW_HOME")
    monkeypatch.chdir(tmp_path)
    assert Home.open().root == str(tmp_path / ".tuiflow")


def test_refuses_newer_layout_version(tmp_path):
    (tmp_path / "layout.json").write_text(json.dumps({"version": 7}))
    with pytest.raises(LayoutError, match=r"layout version 7.*upgrade tuiflow") as err:
        Home.open(tmp_path)
    assert err.value.path.endswith("layout.json")


@pytest.mark.parametrize("content", ["{not json", "[]", '{"version": "1"}', '{"version": 0}'])
def test_corrupt_layout_is_an_error_naming_the_file(tmp_path, content):
    (tmp_path / "layout.json").write_text(content)
    with pytest.raises(LayoutError, match=r"layout\.json"):
        Home.open(tmp_path)
    assert (tmp_path / "layout.json").read_text() == content  # never reset


def test_bad_setting_names_file_and_field(tmp_path):
    (tmp_path / "layout.json").write_text(json.dumps({"version": 1, "settings": {"lease_ttl": -3}}))
    with pytest.raises(LayoutError, match=r"layout.json: setting 'lease_ttl'=-3"):
        Home.open(tmp_path)
    (tmp_path / "layout.json").write_text(json.dumps({"version": 1, "settings": {"bogus": 1}}))
    with pytest.raises(LayoutError, match="unknown setting 'bogus'"):
        Home.open(tmp_path)


def test_env_overrides_durability_and_watch(tmp_path, monkeypatch):
    monkeypatch.setenv("TUIFLOW_DURABILITY", "machine")
    monkeypatch.setenv("TUIFLOW_WATCH", "poll")
    s = Home.open(tmp_path).settings
    assert (s.durability, s.watch) == (Durability.MACHINE, "poll")
    monkeypatch.setenv("TUIFLOW_WATCH", "sometimes")
    with pytest.raises(LayoutError, match="TUIFLOW_WATCH"):
        Home.open(tmp_path)


def test_missing_home_without_create(tmp_path):
    with pytest.raises(LayoutError, match=r"no tuiflow home at .*run-local"):
        Home.open(tmp_path / "absent", create=False)
    assert not (tmp_path / "absent").exists()


def test_concurrent_creation_agrees_on_one_layout(tmp_path):
    code = "import sys; from spool import Home; print(Home.open(sys.argv[1]).layout['created_at'])"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "h")], stdout=subprocess.PIPE, text=True)
        for _ in range(8)
    ]
    outs = {p.communicate()[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(outs) == 1


def test_unwritable_home_is_an_error_naming_the_path(readonly_fs):
    with pytest.raises(LayoutError, match=rf"cannot create home {readonly_fs}/new"):
        Home.open(readonly_fs / "new")
    with pytest.raises(LayoutError, match="not writable"):
        Home(str(readonly_fs / "existing"), Settings(), {}).check_writable()


def test_enospc_during_put_names_the_path_and_leaves_nothing_partial(small_fs):
    h = Home.open(small_fs / "h")
    q = h.queue("default")
    q.put("small")
    with pytest.raises(StorageError, match="no space left") as err:
        for _ in range(100):
            q.put({"blob": os.urandom(64 * 1024)})
    assert str(small_fs) in err.value.path
    leftovers = [n for d in q._ready for n in os.listdir(d) if n.startswith(".tmp")]
    assert leftovers == []
    assert q.claim("w", 1)[0].payload == "small"


def _flags(path) -> int:
    import array
    import fcntl

    fd = os.open(path, os.O_RDONLY)
    try:
        flags = array.array("i", [0])
        fcntl.ioctl(fd, 0x80086601, flags, True)
        return flags[0]
    finally:
        os.close(fd)


def test_a_new_home_asks_ext4_to_spread_its_subdirectories(tmp_path):
    home = Home.open(tmp_path / "h")
    if not spread_subdirectories(home.root):
        pytest.skip("this filesystem has no top-of-hierarchy flag (not ext2/3/4)")
    assert _flags(home.root) & 0x00020000  # FS_TOPDIR_FL, set before the subdirectories were made
    groups = {os.stat(f"{home.root}/{sub}").st_ino // 8192 for sub in ("queues", "workflows", "completions")}
    assert len(groups) > 1  # Orlov spread them (8,192 inodes per group is mkfs's default)


def test_spreading_is_best_effort_where_there_is_no_such_flag(tmp_path):
    assert spread_subdirectories(str(tmp_path / "missing")) is False
    if not os.path.ismount("/dev/shm"):
        pytest.skip("no tmpfs at /dev/shm")
    # tmpfs refuses the flag (EOPNOTSUPP): answered, not raised, and the home still opens.
    directory = tempfile.mkdtemp(dir="/dev/shm")
    try:
        assert spread_subdirectories(directory) is False
        assert Home.open(f"{directory}/h").root == f"{directory}/h"
    finally:
        shutil.rmtree(directory)
