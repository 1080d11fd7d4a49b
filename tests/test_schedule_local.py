"""`mathllava schedule create|list|delete` on one machine: cron entries in the real crontab format
(python-crontab, on a crontab file), cron checked before anything is written, and the entry's
command running the pipeline under a lock that refuses an overlapping run."""

import os
import shlex
import subprocess
import sys
import time

import pytest
import yaml

from mathllava.cli import main
from mathllava.localcron import BUSY


def _project(tmp_path, hold=False):
    """A project folder whose `make run` records each run (the scheduled command calls `make run`); with
    `hold`, a run waits until the file `release` exists in the folder."""
    work = tmp_path / "my project"   # a space: the cron line must quote its paths
    work.mkdir()
    wait = "\twhile [ ! -e release ]; do sleep 0.05; done\n" if hold else ""
    (work / "Makefile").write_text(f"run:\n{wait}\techo \"$(CONFIG) $(RUN_ARGS)\" >> runs.txt\n")
    config = work / "nightly.yaml"
    config.write_text(yaml.safe_dump({"schedule": {"cron_expression": "15 2 * * MON-FRI", "name": "nightly"},
                                      "parameters": {}}))
    return work, config


def _lines(tab):
    return [line for line in tab.read_text().splitlines() if line.strip() and not line.startswith("#")]


def test_create_list_delete_in_the_crontab_format(tmp_path, capsys):
    from cronsim import CronSim
    from crontab import CronTab

    work, config = _project(tmp_path)
    tab = tmp_path / "crontab"
    assert main(["schedule", "create", "--cron", "0 3 * * *", "--config", str(config), "--name", "daily",
                 "--workdir", str(work), "--crontab", str(tab)]) == 0
    assert main(["schedule", "create", "--config", str(config), "--workdir", str(work), "--crontab", str(tab)]) == 0
    lines = _lines(tab)
    assert len(lines) == 2
    for line in lines:   # five cron fields, a command, our marker: what cron itself reads
        fields = line.split()
        CronSim(" ".join(fields[:5]), __import__("datetime").datetime(2026, 1, 1))
        assert f"schedule run --name {line.rsplit('mathllava-schedule:', 1)[1]}" in line
        assert f"--config {shlex.quote(str(config))} --workdir {shlex.quote(str(work))}" in line
    assert lines[1].startswith("15 2 * * MON-FRI ")  # from the config's schedule: block, with its name
    assert {job.comment for job in CronTab(tabfile=str(tab))} == {"mathllava-schedule:daily", "mathllava-schedule:nightly"}

    capsys.readouterr()
    assert main(["schedule", "list", "--crontab", str(tab)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [row.split("\t")[:2] for row in listed] == [["daily", "0 3 * * *"], ["nightly", "15 2 * * MON-FRI"]]

    # the same name again replaces its entry; a delete removes only that one
    assert main(["schedule", "create", "--cron", "30 4 * * *", "--config", str(config), "--name", "daily",
                 "--workdir", str(work), "--crontab", str(tab)]) == 0
    assert len(_lines(tab)) == 2 and any(line.startswith("30 4 * * * ") for line in _lines(tab))
    assert main(["schedule", "delete", "daily", "--crontab", str(tab)]) == 0
    assert [line.split()[:5] for line in _lines(tab)] == [["15", "2", "*", "*", "MON-FRI"]]
    assert main(["schedule", "delete", "daily", "--crontab", str(tab)]) == 2
    assert "no schedule named 'daily' (schedules: nightly)" in capsys.readouterr().err


def test_a_bad_cron_or_config_installs_nothing(tmp_path, capsys):
    work, config = _project(tmp_path)
    tab = tmp_path / "crontab"
    tab.write_text("# keep me\n0 1 * * * /usr/bin/true\n")
    before = tab.read_text()
    for args, message in [
        (["--cron", "0 25 * * *", "--config", str(config)], "'0 25 * * *'"),
        (["--cron", "0 3 * *", "--config", str(config)], "5 fields"),
        (["--cron", "0 3 * * *", "--config", str(work / "missing.yaml")], "no such config file"),
    ]:
        assert main(["schedule", "create", *args, "--workdir", str(work), "--crontab", str(tab)]) == 2
        assert message in capsys.readouterr().err
    assert tab.read_text() == before


def test_the_installed_command_runs_the_pipeline_under_a_lock(tmp_path, monkeypatch):
    """Two runs at once: the second is refused by the lock and logged; the first runs to its end. The entry
    carries the state folder and tracking port it was created with (cron starts with an empty environment)."""
    work, config = _project(tmp_path, hold=True)
    tab = tmp_path / "crontab"
    monkeypatch.setenv("MATHLLAVA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_PORT", "5123")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["schedule", "create", "--config", str(config), "--workdir", str(work), "--crontab", str(tab)]) == 0
    command = _lines(tab)[0].split(None, 5)[5].rsplit(" # ", 1)[0]   # what cron would run
    assert command.startswith(f"env MATHLLAVA_HOME={shlex.quote(str(tmp_path / 'home'))} MLFLOW_PORT=5123 ")
    env = {k: v for k, v in os.environ.items() if k not in ("MATHLLAVA_HOME", "MLFLOW_PORT")}   # as cron's
    first = subprocess.Popen(["bash", "-c", command], env=env)
    lock = tmp_path / "home" / "schedules" / "pipeline.lock"
    hang_guard = time.monotonic() + 600
    while not (lock.exists() and lock.read_text().startswith("pid")):
        assert time.monotonic() < hang_guard and first.poll() is None
        time.sleep(0.05)
    second = subprocess.run(["bash", "-c", command], env=env, timeout=600)
    assert second.returncode == BUSY
    (work / "release").touch()   # the first run goes on only now: no race with a slow second start
    assert first.wait(timeout=600) == 0
    assert (work / "runs.txt").read_text().splitlines() == [f"{config} --no-schedule"]  # one run, not two
    log = (tmp_path / "home" / "schedules" / "nightly.log").read_text()
    assert "skipped: a run is still going (pid" in log and "end: exit code 0" in log
    # the lock is free again once the run is over
    assert subprocess.run(["bash", "-c", command], env=env, timeout=600).returncode == 0
    assert len((work / "runs.txt").read_text().splitlines()) == 2


def test_a_failing_run_reports_its_exit_code(tmp_path):
    from mathllava.localcron import run_locked

    log = tmp_path / "log"
    assert run_locked([sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"], tmp_path / "home", log) == 3
    text = log.read_text()
    assert "boom" in text and "end: exit code 3" in text


def test_run_py_puts_a_scheduled_config_in_cron_on_the_local_orchestrator(tmp_path, monkeypatch, capsys):
    from conftest import ROOT
    from run import schedule

    _, config = _project(tmp_path)
    tab = tmp_path / "crontab"
    monkeypatch.setenv("MATHLLAVA_CRONTAB", str(tab))
    info = schedule(str(config), pipeline=None, options={})  # the default stack: the local orchestrator
    assert info["orchestrator"] == "local"
    (line,) = _lines(tab)
    assert line.startswith("15 2 * * MON-FRI ") and f"--workdir {ROOT}" in line and line.endswith("mathllava-schedule:nightly")
    assert "cron entry nightly" in capsys.readouterr().out


def test_the_pipeline_lock_names_its_holder_and_passes_to_children_only(tmp_path):
    from mathllava.state import LOCK_FD, Busy, pipeline_lock

    home = tmp_path / "home"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from mathllava.state import pipeline_lock\n"
        f"with pipeline_lock({str(home)!r}, what='make run'):\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.readline()\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Busy) as busy:
            with pipeline_lock(home):
                pass
        assert busy.value.holder.startswith(f"pid {holder.pid} since ") and busy.value.holder.endswith(": make run")
    finally:
        holder.communicate("\n", timeout=600)
    # free again once its holder is gone; a child given the descriptor runs under the parent's lock
    with pipeline_lock(home, what="parent"):
        fd = int(os.environ[LOCK_FD])
        child = subprocess.run([sys.executable, "-c", (
            "from mathllava.state import pipeline_lock\n"
            f"with pipeline_lock({str(home)!r}):\n"
            "    print('inside')\n")], capture_output=True, text=True, pass_fds=(fd,), timeout=600)
        assert child.stdout.strip() == "inside", child.stderr
        stranger = subprocess.run([sys.executable, "-c", (
            "from mathllava.state import Busy, pipeline_lock\n"
            "try:\n"
            f"    with pipeline_lock({str(home)!r}):\n"
            "        print('inside')\n"
            "except Busy:\n"
            "    print('busy')\n")], capture_output=True, text=True, timeout=60,
            env={k: v for k, v in os.environ.items() if k != LOCK_FD})
        assert stranger.stdout.strip() == "busy"
    assert LOCK_FD not in os.environ
