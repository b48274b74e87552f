"""The install directory: versions appear whole or not at all, state survives SIGKILL."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_agent.inference.bundle import load_bundle
from edge_agent.ota.archive import extract_archive, inspect_archive
from edge_agent.ota.errors import OtaStateError, UpdateRejectedError
from edge_agent.ota.repository import RESTARTED, ModelRepository
from tests.ota_support import Publisher, make_bundle

REPO_ROOT = Path(__file__).resolve().parent.parent
KILLS = 6


def _install(repo: ModelRepository, archive: Path) -> str:
    info = inspect_archive(archive, None, 1 << 30)
    staging = repo.new_staging()
    extract_archive(archive, info, staging)
    repo.commit(staging, info.manifest.name, info.manifest.version)
    return info.manifest.version


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("archives")
    pub = Publisher(tmp / "out")
    return [pub.pack(make_bundle(tmp / "src", f"1.{i}.0"), golden=False).path for i in range(5)]


def test_trial_confirm_prune_and_remove(tmp_path: Path, archives: list[Path]) -> None:
    repo = ModelRepository(tmp_path / "ota")
    assert repo.open() == []
    try:
        for archive in archives:
            version = _install(repo, archive)
            repo.begin_trial("imu-test", version, current=repo.serving("imu-test") or "0.9.0")
            assert repo.serving("imu-test") == version
            repo.confirm("imu-test")
            repo.prune("imu-test", keep=3)
        state = repo.state("imu-test")
        assert state.active == "1.4.0"
        assert state.history[-2:] == ["1.2.0", "1.3.0"]
        assert repo.installed("imu-test") == ["1.2.0", "1.3.0", "1.4.0"]
        with pytest.raises(OtaStateError, match="active"):
            repo.remove("imu-test", "1.4.0")
        assert repo.rollback_target("imu-test") == "1.3.0"
        repo.record_rollback("imu-test", "1.3.0", "operator")
        assert repo.state("imu-test").active == "1.3.0"
        repo.remove("imu-test", "1.4.0")
        assert repo.installed("imu-test") == ["1.2.0", "1.3.0"]
    finally:
        repo.close()


def test_versions_are_immutable(tmp_path: Path, archives: list[Path]) -> None:
    repo = ModelRepository(tmp_path / "ota")
    repo.open()
    try:
        _install(repo, archives[0])
        _install(repo, archives[0])  # the same content again: reused
        pub = Publisher(tmp_path / "other")
        changed = pub.pack(
            make_bundle(tmp_path / "src", "1.0.0", extra_files={"NOTE.txt": b"different"}),
            golden=False,
        )
        with pytest.raises(UpdateRejectedError) as err:
            _install(repo, changed.path)
        assert err.value.check == "version_exists"
    finally:
        repo.close()


def test_one_process_at_a_time(tmp_path: Path) -> None:
    first = ModelRepository(tmp_path / "ota")
    first.open()
    try:
        with pytest.raises(OtaStateError, match="in use"):
            ModelRepository(tmp_path / "ota").open()
    finally:
        first.close()


def test_a_restart_during_probation_reverts_to_the_previous_version(
    tmp_path: Path, archives: list[Path]
) -> None:
    repo = ModelRepository(tmp_path / "ota")
    repo.open()
    _install(repo, archives[1])
    repo.begin_trial("imu-test", "1.1.0", current="1.0.0")
    repo.close()  # as a SIGKILL would leave it
    again = ModelRepository(tmp_path / "ota")
    reverted = again.open()
    try:
        assert [(r.name, r.version, r.back_to) for r in reverted] == [
            ("imu-test", "1.1.0", "1.0.0")
        ]
        assert again.serving("imu-test") == "1.0.0"
        assert again.state("imu-test").failed == {"1.1.0": RESTARTED}
    finally:
        again.close()


CHILD = """
import json, sys
from pathlib import Path
from edge_agent.ota.archive import extract_archive, inspect_archive
from edge_agent.ota.repository import ModelRepository

repo = ModelRepository(Path(sys.argv[1]))
repo.open()
archives = [Path(a) for a in json.loads(sys.argv[2])]
print("ready", flush=True)
i = 0
while True:  # install, try, confirm and prune versions until killed
    archive = archives[i % len(archives)]
    info = inspect_archive(archive, None, 1 << 30)
    staging = repo.new_staging()
    extract_archive(archive, info, staging)
    repo.commit(staging, info.manifest.name, info.manifest.version)
    repo.begin_trial("imu-test", info.manifest.version, current=repo.serving("imu-test"))
    repo.confirm("imu-test")
    repo.prune("imu-test", keep=2)
    i += 1
"""


def test_sigkill_at_random_moments_leaves_whole_versions_and_a_valid_state(
    tmp_path: Path, archives: list[Path]
) -> None:
    """SIGKILL a process that unpacks, installs, activates and prunes versions in a tight loop,
    6 times at random moments; after each kill, opening the directory finds a readable state,
    no version on probation, only complete versions that verify, and no leftovers."""
    root = tmp_path / "ota"
    rng = random.Random(5)
    for _ in range(KILLS):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(root), json.dumps([str(a) for a in archives])],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline() == b"ready\n"
            time.sleep(rng.uniform(0.0, 0.3))
        finally:
            proc.kill()
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        repo = ModelRepository(root)
        repo.open()
        try:
            state = repo.state("imu-test")
            assert state.trial is None
            for version in repo.installed("imu-test"):
                path = repo.version_dir("imu-test", version)
                assert load_bundle(path).manifest.version == version
                assert (path / "manifest.sig").is_file()
            if state.active is not None:
                assert state.active in repo.installed("imu-test")
            assert list((root / ".staging").iterdir()) == []
            assert list((root / ".trash").iterdir()) == []
            assert [p.name for p in (root / "imu-test").iterdir() if not p.is_dir()] == []
        finally:
            repo.close()
