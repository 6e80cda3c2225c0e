"""Job runners are plugins found by entry point (imaginghub's own `local`
too), made with the site's configuration, and checked like imaginghub's
own classes. The third-party package here is a real distribution on
sys.path (a module and its dist-info with entry_points.txt), found by
importlib.metadata as an installed one would be."""

from __future__ import annotations

import textwrap

import pytest

from imaginghub.hub import config
from imaginghub.hub.errors import ConfigError
from imaginghub.hub.services.jobs.runner import LocalProcessRunner, Runner, runner
from imaginghub.hub.state import Home

MODULE = '''
from traitlets import Unicode

from imaginghub.hub.services.jobs.runner import Runner


class QueueRunner(Runner):
    """Runs jobs on the site's batch queue."""

    name = "queue"
    queue_name = Unicode("default", help="The batch queue jobs go to.").tag(config=True)

    async def start(self, job_id, user, spec, notebook, env):
        return f"{self.queue_name}:{job_id}"


class NotARunner:
    pass
'''


@pytest.fixture
def thirdparty(tmp_path, monkeypatch):
    site = tmp_path / "site-packages"
    (site / "queue_runner-1.0.dist-info").mkdir(parents=True)
    (site / "queue_runner.py").write_text(MODULE)
    (site / "queue_runner-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: queue-runner\nVersion: 1.0\n")
    (site / "queue_runner-1.0.dist-info" / "entry_points.txt").write_text(textwrap.dedent("""\
        [imaginghub.job_runners]
        queue = queue_runner:QueueRunner
        broken = queue_runner:NotARunner
        """))
    monkeypatch.syspath_prepend(str(site))
    home = tmp_path / "home"
    home.mkdir()
    return Home(home)


def write(home: Home, text: str) -> None:
    home.config_file.write_text("c = get_config()  # noqa\n" + text)


def test_a_third_party_runner_gets_its_settings(thirdparty):
    import asyncio

    write(thirdparty, "c.JobService.runner = 'queue'\nc.QueueRunner.queue_name = 'gpu'\n")
    r = runner("queue", thirdparty)
    assert isinstance(r, Runner) and type(r).__name__ == "QueueRunner"
    assert r.queue_name == "gpu" and r.home is thirdparty
    assert asyncio.run(r.start("j1", "alice", {}, None, {})) == "gpu:j1"


def test_imaginghubs_own_runner_is_found_the_same_way(thirdparty):
    assert isinstance(runner("local", thirdparty), LocalProcessRunner)


def test_a_plugins_settings_are_checked(thirdparty):
    write(thirdparty, "c.QueueRunner.queue = 'gpu'\n")
    with pytest.raises(ConfigError, match=r"c\.QueueRunner\.queue is not a setting of "
                                          r"QueueRunner; did you mean c\.QueueRunner\.queue_name"):
        thirdparty.config()
    assert "QueueRunner" in {c.__name__ for c in config.plugin_classes()}


def test_an_unknown_or_wrong_runner_is_named(thirdparty):
    with pytest.raises(ValueError, match=r"no job runner called 'slurm'.*the installed ones are "
                                         r"broken, kubernetes, local, queue"):
        runner("slurm", thirdparty)
    with pytest.raises(ValueError, match="is not a subclass of"):
        runner("broken", thirdparty)
