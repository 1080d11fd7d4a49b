"""The local MLflow server: `stop` returns only once the server and its workers are gone, so a
`start` right after it never finds a server on its way out and reuses it."""

import os

import pytest

from conftest import free_port

pytestmark = pytest.mark.slow


def test_stop_waits_until_the_whole_process_group_is_gone(tmp_path):
    from mathllava.localserver import healthy, start, stop

    url = start(tmp_path / "mlflow", port=free_port())
    pid = int((tmp_path / "mlflow" / "server.pid").read_text())
    assert healthy(url)
    assert stop(tmp_path / "mlflow") is True
    with pytest.raises(ProcessLookupError):   # no process of the server's group is left, workers included
        os.killpg(pid, 0)
    assert not healthy(url, timeout=1)
    assert stop(tmp_path / "mlflow") is False  # nothing left to stop
