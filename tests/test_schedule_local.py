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
            "    print('busy')\n")], capture_output=True, text=True, timeout=600,
            env={k: v for k, v in os.environ.items() if k != LOCK_FD})
        assert stranger.stdout.strip() == "busy"
    assert LOCK_FD not in os.environ


# ---- in-process checks of localcron (the subprocess tests above are invisible to mutation testing) ----

import re  # noqa: E402
from datetime import datetime  # noqa: E402

STAMP = r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)"


def _no_lock_inherited(monkeypatch):
    from mathllava.state import LOCK_FD

    monkeypatch.delenv(LOCK_FD, raising=False)


def test_create_returns_the_installed_entry_with_absolute_paths(tmp_path, monkeypatch):
    """A config path relative to the project folder (not to the current folder) ends up absolute in the
    entry; the state folder is the project's own when MATHLLAVA_HOME is unset; the entry that create
    returns is the one that `entries` reads back."""
    from mathllava.localcron import Entry, create, entries

    work, config = _project(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("MATHLLAVA_HOME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_PORT", "5999")
    tab = tmp_path / "deep" / "er" / "crontab"   # its folders do not exist yet
    entry = create("rel-1", "0  3 * * *", "nightly.yaml", work, crontab=tab, python="/opt/py 3/python")
    expected = " ".join(shlex.quote(w) for w in [
        "env", f"MATHLLAVA_HOME={work / '.mathllava'}", "MLFLOW_PORT=5999", "/opt/py 3/python", "-m",
        "mathllava.cli", "schedule", "run", "--name", "rel-1", "--config", str(config), "--workdir", str(work)])
    assert entry == Entry("rel-1", "0 3 * * *", expected)
    assert entries(tab) == [entry]
    assert entry.config == str(config)
    assert _lines(tab) == [f"0 3 * * * {expected} # mathllava-schedule:rel-1"]


def test_a_new_crontab_file_starts_empty(tmp_path):
    from mathllava.localcron import entries

    tab = tmp_path / "a" / "b" / "crontab"
    assert entries(tab) == []
    assert tab.read_text() == ""


def test_environment_carries_the_tracking_uri_or_the_local_port(tmp_path, monkeypatch):
    from mathllava.localcron import environment

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MATHLLAVA_HOME", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracker.example:5000")
    monkeypatch.setenv("MLFLOW_PORT", "5123")
    assert environment(work) == [f"MATHLLAVA_HOME={work / '.mathllava'}",
                                 "MLFLOW_TRACKING_URI=http://tracker.example:5000"]
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert environment(work) == [f"MATHLLAVA_HOME={work / '.mathllava'}", "MLFLOW_PORT=5123"]
    monkeypatch.setenv("MATHLLAVA_HOME", str(tmp_path / "state"))
    assert environment(work) == [f"MATHLLAVA_HOME={tmp_path / 'state'}", "MLFLOW_PORT=5123"]


def test_create_refuses_bad_names_configs_and_folders_and_writes_nothing(tmp_path, monkeypatch):
    from crontab import CronItem

    from mathllava.localcron import create

    work, config = _project(tmp_path)
    bare = tmp_path / "bare"   # a config but no Makefile
    bare.mkdir()
    (bare / "c.yaml").write_text("parameters: {}\n")
    tab = tmp_path / "crontab"
    tab.write_text("# keep me\n0 1 * * * /usr/bin/true\n")
    before = tab.read_text()
    for name in ["-x", "a b", "", "a" * 64, "a/b"]:
        with pytest.raises(ValueError) as err:
            create(name, "0 3 * * *", config, work, crontab=tab)
        assert str(err.value) == f"schedule name {name!r}: letters, digits, '.', '_' and '-' only"
    with pytest.raises(ValueError) as err:
        create("n", "0 3 * * *", "missing.yaml", work, crontab=tab)
    assert str(err.value) == f"{work.resolve() / 'missing.yaml'}: no such config file"
    with pytest.raises(ValueError) as err:
        create("n", "0 3 * * *", "c.yaml", bare, crontab=tab)
    assert str(err.value) == f"{bare.resolve()}: not the project folder (no Makefile); give --workdir"
    assert tab.read_text() == before
    monkeypatch.setattr(CronItem, "is_valid", lambda self: False)   # an expression python-crontab would not write
    with pytest.raises(ValueError) as err:
        create("n", "0 3 * * *", config, work, crontab=tab)
    assert str(err.value) == "'0 3 * * *': cron refused it"
    assert tab.read_text() == before
    monkeypatch.undo()
    assert create("a" * 63, "@daily", config, work, crontab=tab).name == "a" * 63   # the longest name
    assert _lines(tab)[0] == "0 1 * * * /usr/bin/true"


def test_delete_names_the_schedules_there_are(tmp_path):
    from mathllava.localcron import create, delete, entries

    work, config = _project(tmp_path)
    tab = tmp_path / "crontab"
    with pytest.raises(ValueError) as err:
        delete("x", crontab=tab)
    assert str(err.value) == "no schedule named 'x' (schedules: none)"
    for name in ["a", "b"]:
        create(name, "0 3 * * *", config, work, crontab=tab)
    with pytest.raises(ValueError) as err:
        delete("x", crontab=tab)
    assert str(err.value) == "no schedule named 'x' (schedules: a, b)"
    delete("a", crontab=tab)
    assert [e.name for e in entries(tab)] == ["b"]


def test_the_users_crontab_needs_the_crontab_command(monkeypatch):
    """Without a crontab file, the user's crontab is edited through the `crontab` command: a clear error when
    there is none, else python-crontab's user table."""
    import shutil

    import crontab as crontab_module

    from mathllava.localcron import entries

    monkeypatch.delenv("MATHLLAVA_CRONTAB", raising=False)
    asked, opened = [], []

    class FakeTable(list):
        def __init__(self, **kwargs):
            super().__init__()
            opened.append(kwargs)

    monkeypatch.setattr(crontab_module, "CronTab", FakeTable)
    monkeypatch.setattr(shutil, "which", lambda name: asked.append(name))   # no command at all
    with pytest.raises(ValueError) as err:
        entries()
    assert str(err.value) == ("no `crontab` command on this machine: install cron (Debian: apt-get install cron), "
                              "or give --crontab FILE")
    assert asked == ["crontab"] and opened == []
    monkeypatch.setattr(shutil, "which", lambda name: "/usr/bin/crontab" if name == "crontab" else None)
    assert entries() == []
    assert opened == [{"user": True}]


def _child(tmp_path, body):
    script = tmp_path / "child.py"
    script.write_text(body)
    return [sys.executable, str(script)]


def test_run_locked_logs_the_run_and_hands_the_lock_to_it(tmp_path, monkeypatch):
    """The log gets a start line, the command's stdout and stderr, and an end line with the exit code; the
    command runs while the lock names this scheduled run, and can take the lock itself (it inherits it)."""
    from mathllava.localcron import run_locked
    from mathllava.state import LOCK_FD, pipeline_lock

    _no_lock_inherited(monkeypatch)
    monkeypatch.setenv("MATHLLAVA_HOME", str(tmp_path / "default-home"))   # not the home given
    home = tmp_path / "home"
    log = tmp_path / "logs" / "deeper" / "run.log"   # its folders do not exist yet
    command = _child(tmp_path, (
        "import sys\n"
        "from mathllava.state import Busy, pipeline_lock\n"
        f"print(open({str(home / 'schedules' / 'pipeline.lock')!r}).read(), flush=True)\n"
        "try:\n"
        f"    with pipeline_lock({str(home)!r}):\n"
        "        print('inside', flush=True)\n"
        "except Busy:\n"
        "    print('busy', flush=True)\n"
        "print('to stderr', file=sys.stderr, flush=True)\n"
        "sys.exit(4)\n"))
    before, start = datetime.now().replace(microsecond=0), time.monotonic()
    assert run_locked(command, home, log) == 4
    elapsed, after = time.monotonic() - start, datetime.now()
    match = re.fullmatch(f"{STAMP} start: {re.escape(' '.join(command))}\n"
                         f"pid {os.getpid()} since {STAMP}: scheduled run\n"
                         "inside\n"
                         "to stderr\n"
                         f"{STAMP} end: exit code 4 after (\\d+) s\n", log.read_text(encoding="utf-8"))
    assert match, log.read_text()
    stamps = [datetime.fromisoformat(s) for s in match.groups()[:3]]
    assert before <= stamps[0] <= stamps[1] <= stamps[2] <= after
    assert int(match.group(4)) <= elapsed + 1
    assert not (tmp_path / "default-home").exists()
    # the lock is free again, and no longer handed down
    assert LOCK_FD not in os.environ
    with pipeline_lock(home):
        pass
    # a second run appends to the same log
    assert run_locked([sys.executable, "-c", "print('again')"], home, log) == 0
    assert log.read_text().count(" start: ") == 2 and "\nagain\n" in log.read_text()


def test_run_locked_skips_a_run_while_another_holds_the_lock(tmp_path, monkeypatch):
    import fcntl

    from mathllava.localcron import BUSY, run_locked

    _no_lock_inherited(monkeypatch)
    home = tmp_path / "home"
    lock = home / "schedules" / "pipeline.lock"
    lock.parent.mkdir(parents=True)
    log = tmp_path / "run.log"
    log.write_text("earlier\n")
    marker = tmp_path / "ran"
    with open(lock, "a+") as held:   # another holder: its own open file, not handed to us
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 1 since 2026-01-01T00:00:00: by hand")
        held.flush()
        assert BUSY == 75
        assert run_locked([sys.executable, "-c", f"open({str(marker)!r}, 'w')"], home, log) == BUSY
    assert not marker.exists()
    assert re.fullmatch(f"earlier\n{STAMP} skipped: a run is still going "
                        f"\\(pid 1 since 2026-01-01T00:00:00: by hand holds {re.escape(str(lock))}\\)\n",
                        log.read_text()), log.read_text()


def test_run_locked_under_a_lock_that_hands_down_no_descriptor(tmp_path, monkeypatch):
    """When the lock sets no descriptor to hand down (none in the environment), the command still runs."""
    from contextlib import contextmanager

    from mathllava import localcron

    _no_lock_inherited(monkeypatch)
    taken = []

    @contextmanager
    def lock(home, what=""):
        taken.append((home, what))
        yield home

    monkeypatch.setattr(localcron, "pipeline_lock", lock)
    log = tmp_path / "run.log"
    assert localcron.run_locked([sys.executable, "-c", "print('ran')"], tmp_path / "home", log) == 0
    assert taken == [(tmp_path / "home", "scheduled run")]
    assert "\nran\n" in log.read_text() and "end: exit code 0 after" in log.read_text()


def test_run_locked_writes_its_log_in_utf8_whatever_the_locale(tmp_path, monkeypatch):
    """cron may start runs under the C locale: a non-ASCII path in the command must not break the log."""
    import locale

    from mathllava.localcron import run_locked

    _no_lock_inherited(monkeypatch)
    log = tmp_path / "run.log"
    saved = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        code = run_locked([sys.executable, "-c", "pass", "résumé"], tmp_path / "home", log)
    finally:
        locale.setlocale(locale.LC_CTYPE, saved)
    assert code == 0
    assert " start: " in log.read_bytes().decode("utf-8")
    assert "-c pass résumé\n" in log.read_bytes().decode("utf-8")


def test_run_scheduled_runs_make_in_the_project_under_its_state_folder(tmp_path, monkeypatch):
    from mathllava.localcron import run_scheduled

    work, config = _project(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("MATHLLAVA_HOME", raising=False)
    _no_lock_inherited(monkeypatch)
    assert run_scheduled("nightly", config, work) == 0
    assert (work / "runs.txt").read_text().splitlines() == [f"{config} --no-schedule"]
    log = (work / ".mathllava" / "schedules" / "nightly.log").read_text()
    assert re.match(f"{STAMP} start: make -C {re.escape(str(work))} run CONFIG={re.escape(str(config))} "
                    "RUN_ARGS=--no-schedule\n", log), log
    assert log.rstrip("\n").splitlines()[-1].split(" ", 1)[1].startswith("end: exit code 0 after ")
    assert not (elsewhere / ".mathllava").exists()
    (work / "Makefile").write_text("run:\n\texit 3\n")
    assert run_scheduled("nightly", config, work) == 2   # make's own code for a failed recipe
