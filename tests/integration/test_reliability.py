"""Issue #17 without Metaflow: the kill switch, the per-run driver lock, clear errors on a full disk."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tango_steps.pipeline import driver


def test_the_kill_switch_kills_the_whole_process_group_only_at_its_point():
    code = (
        "import subprocess, sys, time\n"
        "from tango_steps.faults import maybe_kill\n"
        "quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], **quiet)\n"
        "print(child.pid, flush=True)\n"
        "maybe_kill(2, 'judge')\n"
        "print('survived', flush=True)\n"
    )
    for target, killed in (("2:judge", True), ("2:reward", False), ("1:judge", False)):
        proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TANGO_KILL_AT": target},
                              capture_output=True, text=True, timeout=60, start_new_session=True)  # fmt: skip
        child = int(proc.stdout.split()[0])
        if killed:
            assert proc.returncode == -signal.SIGKILL and "survived" not in proc.stdout
            for _ in range(50):  # the child was in the group: it dies too (reaped by init)
                if driver._process_start(child) is None or "Z" in open(f"/proc/{child}/stat").read().split()[2]:
                    break
                time.sleep(0.1)
            else:
                pytest.fail("the kill left the group's child process alive")
        else:
            assert proc.returncode == 0 and "survived" in proc.stdout
            os.kill(child, signal.SIGKILL)


@pytest.fixture
def root_id(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return "1234"


def test_a_second_driver_of_one_run_refuses_while_the_first_drives_a_round(root_id):
    holder = subprocess.Popen(
        [sys.executable, "-c", "from tango_steps.pipeline.driver import root_lock\n"
         f"with root_lock({root_id!r}, 2, 'TangoFlow/1'):\n    print('held', flush=True)\n    input()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "TMPDIR": os.environ["TMPDIR"]},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            driver.DriverBusy, match=rf"run {root_id} \(round 2\) is being driven by another process"
        ) as e:
            with driver.root_lock(root_id, 2, "TangoFlow/2"):
                pytest.fail("entered a lock another process holds")
        assert f'"pid": {holder.pid}' in str(e.value)  # the holder named
    finally:
        holder.communicate("\n", timeout=30)
    with driver.root_lock(root_id, 3, "TangoFlow/1"):  # released: the same run's next round proceeds
        pass


def test_between_rounds_the_lease_keeps_out_another_run_until_its_runtime_dies(root_id):
    runtime = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lease = driver._lock_path(root_id).with_suffix(".owner")
        lease.write_text(json.dumps({"driver": "TangoFlow/1", "host": socket.gethostname(), "pid": runtime.pid,
                                     "start": driver._process_start(runtime.pid)}))  # fmt: skip
        with pytest.raises(driver.DriverBusy, match=r"run 1234 \(round 3\) is being driven by TangoFlow/1"):
            with driver.root_lock(root_id, 3, "TangoFlow/2"):
                pytest.fail("entered while another live run holds the lease")
        with driver.root_lock(root_id, 3, "TangoFlow/1"):  # its own lease: the same run proceeds
            pass
    finally:
        runtime.kill()
        runtime.wait()
    lease.write_text(json.dumps({"driver": "TangoFlow/1", "host": socket.gethostname(), "pid": runtime.pid,
                                 "start": "12345"}))  # fmt: skip
    with driver.root_lock(root_id, 3, "TangoFlow/2"):  # a dead runtime's lease is taken over
        pass
    assert json.loads(lease.read_text())["driver"] == "TangoFlow/2"


def test_a_full_disk_stores_nothing_and_says_so(small_disk, tmp_path):
    """A checkpoint that does not fit: a clear error (what, how much, how much is free, what to do),
    no partial copy, and what was stored before still loads."""
    from metaflow.plugins.datastores.local_storage import LocalStorage

    from tango_steps.models.store import ModelStore

    disk = small_disk(4)
    store = ModelStore(LocalStorage(str(disk / "ds")))
    small, big = tmp_path / "small", tmp_path / "big"
    for d, mb in ((small, 1), (big, 5)):
        (d / "model").mkdir(parents=True)
        (d / "model" / "model.safetensors").write_bytes(os.urandom(mb << 20))
    kept = store.save(small, "TangoRoundFlow/1/generator_update/3/0/generator", meta={"round": 1, "role": "generator"})
    with pytest.raises(OSError, match=r"the datastore's disk is full: storing model .*round 2, role generator.*"
                       r"needs 5\.0 MiB and .* MiB are free .* Nothing of it was kept") as e:  # fmt: skip
        store.save(big, "TangoRoundFlow/2/generator_update/3/0/generator", meta={"round": 2, "role": "generator"})
    assert e.value.errno == 28  # ENOSPC, for callers that check
    models = disk / "ds" / "tango_models"
    assert not (models / "TangoRoundFlow" / "2").exists() or not any(
        p.is_file() for p in (models / "TangoRoundFlow" / "2").rglob("*")
    )  # no partial copy, not even in a temporary folder
    assert not [p for p in models.rglob(".*tmp-*")]
    assert store.load(kept).is_dir()
