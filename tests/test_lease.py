"""The one-writer rule where the file system has no flock: a lease with holder and age."""

import errno
import fcntl
import json
import os
import time

import pytest

from cifar_jax.errors import UsageError, WorkdirInUse
from cifar_jax.job import lease, storage
from cifar_jax.job import workdir as workdir_lib


@pytest.fixture
def no_flock(monkeypatch):
    def flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(fcntl, "flock", flock)


def write_lease(workdir, **holder):
    (workdir / lease.LEASE_FILE).write_text(json.dumps(holder))


def test_a_lease_stands_in_for_flock_and_is_released(tmp_path, no_flock):
    with workdir_lib.workdir_lock(str(tmp_path)):
        holder, age = lease.read(str(tmp_path / lease.LEASE_FILE))
        assert holder["pid"] == os.getpid() and 0 <= age < 5
        assert not (tmp_path / workdir_lib.LOCK_FILE).exists()
        with pytest.raises(WorkdirInUse, match=rf"in use by process {os.getpid()} .* renewed 0 s ago"):
            with workdir_lib.workdir_lock(str(tmp_path)):
                pass
    assert not (tmp_path / lease.LEASE_FILE).exists()


def test_a_fresh_lease_of_another_host_refuses_naming_holder_age_and_how_to_take_over(tmp_path, no_flock):
    write_lease(tmp_path, pid=123, host="elsewhere", renewed=time.time() - 100)
    with pytest.raises(WorkdirInUse) as refused:
        with workdir_lib.workdir_lock(str(tmp_path)):
            pass
    message = str(refused.value)
    assert "process 123 on elsewhere" in message and "renewed 100 s ago" in message
    assert "rerun in 200 s or delete" in message and len(message) < 300


def test_an_empty_lease_is_in_use_until_its_file_ages(tmp_path, no_flock):
    (tmp_path / lease.LEASE_FILE).write_text("")  # its holder is writing it, or died doing so
    with pytest.raises(WorkdirInUse):
        with workdir_lib.workdir_lock(str(tmp_path)):
            pass
    old = time.time() - lease.STALE_S - 1
    os.utime(tmp_path / lease.LEASE_FILE, (old, old))
    with workdir_lib.workdir_lock(str(tmp_path)):
        assert lease.read(str(tmp_path / lease.LEASE_FILE))[0]["pid"] == os.getpid()


def test_a_stale_lease_of_another_host_is_taken_over_with_a_warning(tmp_path, no_flock, caplog):
    write_lease(tmp_path, pid=123, host="elsewhere", renewed=time.time() - lease.STALE_S - 1)
    with workdir_lib.workdir_lock(str(tmp_path)):
        assert lease.read(str(tmp_path / lease.LEASE_FILE))[0]["pid"] == os.getpid()
    assert "taking over the lease of process 123 on elsewhere" in caplog.text


def test_the_holder_renews_its_lease(tmp_path):
    release = lease.take(str(tmp_path), renew_s=0.05)
    try:
        first = lease.read(str(tmp_path / lease.LEASE_FILE))[0]["renewed"]
        time.sleep(0.5)
        assert lease.read(str(tmp_path / lease.LEASE_FILE))[0]["renewed"] > first
    finally:
        release()


def test_two_overwrites_within_a_second_move_the_old_runs_aside_under_distinct_names(tmp_path):
    names = set()
    for _ in range(2):
        (tmp_path / workdir_lib.CONFIG_FILE).write_text("{}")
        names.add(os.path.basename(workdir_lib._move_aside(str(tmp_path))))
    assert len(names) == 2 and all(name.startswith("replaced-") for name in names)
    assert all((tmp_path / name / workdir_lib.CONFIG_FILE).exists() for name in names)


@pytest.mark.parametrize("uri", ["s3://bucket/x", "az://bucket/x"])
def test_a_workdir_uri_orbax_cannot_write_is_refused_in_one_line_instead_of_becoming_a_local_path(uri):
    with pytest.raises(UsageError, match=r"not supported \(Orbax writes checkpoints natively to gs:// only"):
        storage.check_workdir(uri)
    storage.check_workdir("runs/gs:x")  # a local name with a colon is a local name


def test_a_gs_workdir_without_the_package_orbax_lists_it_with_is_refused_naming_it(monkeypatch):
    monkeypatch.setattr(storage, "GCS_PACKAGES", ("no_such_package.storage",))
    with pytest.raises(UsageError, match=r"needs google-cloud-storage .*pip install google-cloud-storage"):
        storage.check_workdir("gs://bucket/runs/x")
    monkeypatch.setattr(storage, "GCS_PACKAGES", ())
    storage.check_workdir("gs://bucket/runs/x")
