"""`edgecls tune` workers on a real journal file and a real PostgreSQL server: a worker killed with SIGKILL in
the middle of a trial, then the same command again; two workers sharing one study at the same time.

The PostgreSQL server is Debian's `postgresql` package, started here on 127.0.0.1 in a temporary data folder
(as the `postgres` user when the tests run as root, since initdb refuses root). `.ci/run` installs the
package; without it the PostgreSQL cases are skipped and say so.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from conftest import REPO, copy_digits

from edgecls.tune.storage import JOURNAL, database_url

SPACE = "replace: true\nlr: {low: 1e-3, high: 1e-2, log: true}\nbatch-size: [16, 32]\n"
TRAIN = ["--backbone", "FP_classifier", "--input-size", "32", "--hflip", "0", "--workers", "0", "--epochs-max", "1"]
STORAGES = ["journal", "postgresql"]


@pytest.fixture(scope="module")
def data(digits_dir, tmp_path_factory) -> Path:
    return copy_digits(digits_dir, tmp_path_factory.mktemp("workers") / "data", digits="0123", n_train=24, n_val=8)


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("space") / "space.yaml"
    path.write_text(SPACE)
    return path


# ----------------------------------------------------------------------------- a PostgreSQL server


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """postgresql://postgres@127.0.0.1:PORT/postgres, a server of its own in a temporary folder."""
    bindir = postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run installs it as root)")
    user = None
    if os.getuid() == 0:  # initdb refuses root: run the server as the package's system user
        try:
            user = pwd.getpwnam("postgres").pw_name
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True)
            user = "postgres"
    root = Path(tempfile.mkdtemp(prefix="edgecls-pg-"))  # not under pytest's 0700 tmp: the server user reads it
    if user:
        shutil.chown(root, user)
    port = free_port()

    def pg(*args):
        return subprocess.run([str(bindir / args[0]), *args[1:]], user=user, cwd=root, capture_output=True,
                              text=True, timeout=120)  # fmt: skip

    init = pg("initdb", "-D", str(root / "data"), "--auth=trust", "-U", "postgres")
    assert init.returncode == 0, init.stderr
    options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root} -c fsync=off"
    start = pg("pg_ctl", "-D", str(root / "data"), "-o", options, "-l", str(root / "log"), "-w", "start")
    assert start.returncode == 0, start.stderr + (root / "log").read_text()
    yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    pg("pg_ctl", "-D", str(root / "data"), "-m", "immediate", "stop")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=STORAGES)
def storage(request) -> str | None:
    """None: the journal file in the study folder; else a database URL."""
    if request.param == "journal":
        return None
    return request.getfixturevalue("postgres_url")


# ----------------------------------------------------------------------------- helpers


def tune(args: list[str], cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "edgecls.cli.main", "tune", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, (proc.returncode, out[-3000:], err[-3000:])
    return out


def load(name: str, storage: str | None, study_dir: Path) -> optuna.Study:
    if storage is None:
        backend = optuna.storages.journal.JournalFileBackend(str(study_dir / JOURNAL))
        return optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(backend))
    return optuna.load_study(study_name=name, storage=database_url(storage).render_as_string(hide_password=False))


def wait_for(condition, timeout: float = 300, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def counted(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The trials that count: every one but a failed one that was queued again."""
    retried = {n for t in study.trials for n in t.system_attrs.get("retry_history", [])}
    return [t for t in study.trials if t.number not in retried]


# ----------------------------------------------------------------------------- tests


def test_a_worker_killed_mid_trial_is_continued_by_the_same_command(storage, data, space, tmp_path, request):
    """SIGKILL while trial 1 trains; the same command again: trial 1 is marked failed by its stopped heartbeat
    and retried once with the same parameters, trial 0 is not re-run, and the study ends with exactly 3."""
    name = f"kill_{request.node.callspec.id}_{os.getpid()}"
    out = tmp_path / "study"
    argv = [str(data), "--trials", "3", "--out", str(out), "--study", name, "--space", str(space), "--no-prune",
            "--heartbeat", "1", *TRAIN, *(["--storage", storage] if storage else [])]  # fmt: skip
    first = tune(argv, cwd=tmp_path)
    wait_for(lambda: (out / "trials" / "0001").is_dir() or first.poll() is not None, what="trial 1 to start")
    first.send_signal(signal.SIGKILL)
    first.wait()
    before = load(name, storage, out)
    assert [t.state.name for t in before.trials] == ["COMPLETE", "RUNNING"]
    done_before = before.trials[0]

    second = finish(tune(argv, cwd=tmp_path))
    study = load(name, storage, out)
    trials = study.trials
    assert sorted(t.number for t in trials) == list(range(len(trials)))  # no number twice
    assert trials[0].datetime_complete == done_before.datetime_complete and trials[0].value == done_before.value
    assert trials[1].state.name == "FAIL"
    retries = [t for t in trials if t.system_attrs.get("retry_history")]
    assert len(retries) == 1 and retries[0].system_attrs["retry_history"] == [1]  # retried once, trial 1 only
    assert retries[0].params == trials[1].params and retries[0].state.name == "COMPLETE"
    assert len(counted(study)) == 3 and all(t.state.name == "COMPLETE" for t in counted(study))
    assert not any(t.state.name in ("RUNNING", "WAITING") for t in trials)
    assert "3 of 3 trials finished (3 complete, 0 pruned, 0 failed, 1 retried)" in second
    assert "trial 0 [" not in second  # the finished trial was not trained again
    assert not (out / "trials" / "0001").exists()  # the killed trial's partial folder is removed


def test_two_workers_share_one_study_and_stop_at_exactly_n(storage, data, space, tmp_path, request):
    """Two processes at once (one study folder for the journal; one folder each, like two machines, for
    PostgreSQL): every trial number once, exactly N trials, each finished, both workers ran some."""
    name = f"pair_{request.node.callspec.id}_{os.getpid()}"
    n = 4

    def argv(folder: str) -> list[str]:
        out = tmp_path / ("study" if storage is None else folder)
        return [str(data), "--trials", str(n), "--out", str(out), "--study", name, "--space", str(space),
                "--heartbeat", "1", *TRAIN, *(["--storage", storage] if storage else [])]  # fmt: skip

    workers = [tune(argv("a"), cwd=tmp_path), tune(argv("b"), cwd=tmp_path)]
    outputs = [finish(w) for w in workers]
    study = load(name, storage, tmp_path / ("study" if storage is None else "a"))
    assert len(study.trials) == n and sorted(t.number for t in study.trials) == list(range(n))
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    ran = [[line.split()[1] for line in text.splitlines() if line.startswith("trial ")] for text in outputs]
    assert sorted(ran[0] + ran[1]) == [str(i) for i in range(n)], outputs  # each trial trained once, by one
    assert ran[0] and ran[1], outputs
    for text in outputs:  # both end with the whole study's files
        assert f"{n} of {n} trials finished" in text


def test_ctrl_c_mid_trial_queues_it_again_and_the_same_command_finishes(data, space, tmp_path):
    """SIGINT (Ctrl-C) while trial 1 trains: exit 130 with one line, trial 1 failed and queued again at once;
    the same command runs the queued retry first and ends with exactly 3."""
    out = tmp_path / "study"
    argv = [str(data), "--trials", "3", "--out", str(out), "--study", "ctrl_c", "--space", str(space), "--no-prune",
            "--heartbeat", "1", *TRAIN]  # fmt: skip
    first = tune(argv, cwd=tmp_path)
    wait_for(lambda: (out / "trials" / "0001").is_dir() or first.poll() is not None, what="trial 1 to start")
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 130 and err.strip().splitlines()[-1] == "error: interrupted", err[-2000:]
    states = [t.state.name for t in load("ctrl_c", None, out).trials]
    assert states == ["COMPLETE", "FAIL", "WAITING"], states
    assert not (out / "trials" / "0001").exists()  # the interrupted trial's partial folder is gone

    second = finish(tune(argv, cwd=tmp_path))
    study = load("ctrl_c", None, out)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert study.trials[2].system_attrs["retry_history"] == [1] and study.trials[2].params == study.trials[1].params
    assert "trial 2 [2/3]" in second and "trial 3 [3/3]" in second
