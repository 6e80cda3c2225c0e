"""The site's configuration file: imaginghub_config.py (traitlets).

Unit tests of reading, checking, the reference and the migration of an
older settings.json need no stack; the last tests look at the session's
stack (who owns the files root executes, a c.Spawner setting reaching the
users' servers) and at `up` refusing a wrong setting before it starts
anything."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import IMAGINGHUB, processes_using
from traitlets.config import Config

from imaginghub.hub import config
from imaginghub.hub.errors import ConfigError
from imaginghub.hub.state import Home


def write(home: Path, text: str) -> Path:
    path = home / config.CONFIG_FILE
    path.write_text("c = get_config()  # noqa\n" + text)
    return path


def check(home: Path) -> Config:
    return config.site_config(Home(home))


def test_settings_reach_the_classes_that_use_them(tmp_path):
    from imaginghub.hub.services.data.config import DataService
    from imaginghub.hub.services.jobs.config import JobService

    write(tmp_path, "c.HubService.auth_cache_seconds = 3\nc.DataService.max_stow_mb = 9\n"
                    "c.Site.homes_dir = '/srv/homes'\n")
    cfg = check(tmp_path)
    assert DataService(config=cfg).max_stow_mb == 9
    # a setting of the shared base applies to every service
    assert DataService(config=cfg).auth_cache_seconds == 3
    assert JobService(config=cfg).auth_cache_seconds == 3
    assert Home(tmp_path).homes_dir() == Path("/srv/homes")


@pytest.mark.parametrize("text, message", [
    ("c.DataService.auth_cache_secs = 3",
     r"c\.DataService\.auth_cache_secs is not a setting of DataService; did you mean "
     r"c\.DataService\.auth_cache_seconds\?"),
    ("c.DataServce.max_stow_mb = 3", r"there is no class DataServce in imaginghub; did you "
                                     r"mean c\.DataService\?"),
    ("c.QidoFed.interval = 3", r"there is no class QidoFed in imaginghub; did you mean "
                               r"c\.QidoFeed\?"),
    ("c.QidoFeed.intervall = 3", r"c\.QidoFeed\.intervall is not a setting of QidoFeed; did you "
                                 r"mean c\.QidoFeed\.interval\?"),
    ("c.DataService.max_stow_mb = 'lots'",
     r"c\.DataService\.max_stow_mb = 'lots' is not an int"),
    ("c.JobService.workflow_dirs = [42]", r"c\.JobService\.workflow_dirs = \[42\] is not a "
                                          r"list"),
    ("c.DaskLimits.max_workers_per_cluster = 2.5", r"max_workers_per_cluster = 2\.5 is not "
                                                   r"an int"),
    ("c.DataService.archive_url = 'pacs.example.org/rs'",
     r"archive_url = 'pacs\.example\.org/rs' is not the http\(s\) address of a DICOMweb root"),
    ("c.DataService.archive_url = 'https://u:secret@pacs/rs'",
     r"must not carry credentials: set archive_username and archive_password_file"),
    ("c.DataService.max_stow_mb = 3 +", r"line 2: invalid syntax"),
    ("x = 1 / 0", r"line 2: ZeroDivisionError"),
])
def test_a_wrong_setting_is_named(tmp_path, text, message):
    path = write(tmp_path, text + "\n")
    with pytest.raises(ConfigError, match=message) as e:
        check(tmp_path)
    assert str(path) in str(e.value)


def test_other_programs_sections_pass_to_them(tmp_path):
    write(tmp_path, "c.DataService.max_stow_mb = 9\nc.Spawner.mem_limit = '4G'\n"
                    "c.Spawner.environment.update({'SITE': 'x'})\n"
                    "c.DaskGateway.log_level = 'DEBUG'\n")
    cfg = check(tmp_path)
    theirs = config.foreign(cfg)
    assert set(theirs) == {"Spawner", "DaskGateway"}
    # a value changed in place adds to what imaginghub's generated config has
    c = Config({"Spawner": {"environment": {"IMAGINGHUB_DICOMWEB_URL": "u"}}})
    config.merge(c, theirs)
    assert c.Spawner.environment == {"IMAGINGHUB_DICOMWEB_URL": "u", "SITE": "x"}
    assert c.Spawner.mem_limit == "4G" and c.DaskGateway.log_level == "DEBUG"


def test_the_reference_and_the_commented_file_cover_every_setting(tmp_path):
    reference = config.reference()
    written = config.commented()
    assert {"ArchiveFeed", "QidoFeed"} <= {c.__name__ for c in config.documented()}
    for cls in config.documented():
        for name, trait in cls.class_own_traits(config=True).items():
            assert f"c.{cls.__name__}.{name} = " in reference
            assert trait.help, f"c.{cls.__name__}.{name} has no help"
            assert f"# c.{cls.__name__}.{name} = " in written
    # the commented file is a valid configuration, and so is every line uncommented
    (tmp_path / config.CONFIG_FILE).write_text(written)
    assert not [k for k in check(tmp_path) if k in {c.__name__ for c in config.classes()}]
    uncommented = re.sub(r"^# (c\.\w+\.\w+ = .*)$", r"\1", written, flags=re.M)
    (tmp_path / config.CONFIG_FILE).write_text(uncommented)
    cfg = check(tmp_path)
    for cls in config.documented():
        probe = config.probe(cls)  # a Stack needs its home: a class with its settings
        for name in cls.class_own_traits(config=True):
            assert name in cfg[cls.__name__]
            assert getattr(probe(config=cfg), name) == getattr(probe(), name)


@pytest.mark.skipif(os.geteuid() != 0, reason="root reads the file only when it is root's")
def test_root_executes_only_a_file_of_roots(tmp_path):
    path = write(tmp_path, "c.DataService.max_stow_mb = 9\n")
    os.chown(path, 65534, 65534)
    with pytest.raises(ConfigError, match=r"must belong to root and be writable by nobody "
                                          r"else \(it is nobody's"):
        check(tmp_path)
    os.chown(path, 0, 0)
    path.chmod(0o666)
    with pytest.raises(ConfigError, match="mode 666"):
        check(tmp_path)
    path.chmod(0o640)
    link = tmp_path / "elsewhere.py"
    path.rename(link)
    path.symlink_to(link)
    with pytest.raises(ConfigError, match="cannot be read"):
        check(tmp_path)


def test_an_older_settings_json_is_split_once(tmp_path):
    old = {"port": 8111, "account_prefix": "lab-", "data_auth_cache_seconds": 5,
           "jobs_workflow_dirs": ["/srv/flows"], "jobs_max_running": 3,
           "dask_max_workers_per_cluster": 6, "dask_user_limits": {"alice": {
               "max_workers_per_cluster": 8}},
           "orthanc_http_port": 41234, "dask_gateway_port": 41235, "site_id": "abcd1234",
           "mode": "single-user", "colour": "blue",
           "modalities": {"ct": {"AET": "CT1", "Host": "10.0.0.5", "Port": 104}}}
    (tmp_path / "settings.json").write_text(json.dumps(old))
    home = Home(tmp_path)
    said = config.migrate(home)
    assert said and "imaginghub_config.py" in said and "state.json" in said
    assert not (tmp_path / "settings.json").exists()
    assert json.loads((tmp_path / "settings.json.migrated").read_text()) == old
    assert home.load_state() == {"orthanc_http_port": 41234, "dask_gateway_port": 41235,
                                 "site_id": "abcd1234", "mode": "single-user"}
    assert home.load_modalities() == old["modalities"]
    from imaginghub.hub.services.dask_gateway.limits import DaskLimits
    from imaginghub.hub.services.jobs.config import JobService
    from imaginghub.hub.stack import Stack

    cfg = check(tmp_path)
    assert cfg.Stack.port == 8111 and Stack.class_traits()["port"]
    assert home.site.account_prefix == "lab-"
    jobs = JobService(config=cfg)
    assert (jobs.workflow_dirs, jobs.max_running, jobs.auth_cache_seconds) == (
        ["/srv/flows"], 3, 5)
    limits = DaskLimits(config=cfg)
    assert limits.max_workers_per_cluster == 6
    assert limits.user_limits == {"alice": {"max_workers_per_cluster": 8}}
    text = home.config_file.read_text()
    assert "settings.json had colour = 'blue': not a setting" in text
    assert config.migrate(home) is None  # once


def test_the_reference_from_the_command_line(tmp_path):
    out = subprocess.run([IMAGINGHUB, "config"], capture_output=True, text=True, check=True)
    assert "c.HubService.auth_cache_seconds = 10" in out.stdout
    assert "c.DaskLimits.max_workers_per_cluster = 4" in out.stdout
    write(tmp_path, "c.DaskLimits.max_worker = 3\n")
    bad = subprocess.run([IMAGINGHUB, "--home", str(tmp_path), "config", "--check"],
                         capture_output=True, text=True)
    assert bad.returncode == 1
    assert "c.DaskLimits.max_worker is not a setting of DaskLimits" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_up_stops_at_a_wrong_setting_before_it_starts_anything(tmp_path):
    write(tmp_path, "c.JobService.max_running_per_users = 1\n")
    up = subprocess.run([IMAGINGHUB, "--home", str(tmp_path), "up", "--port", "1"],
                        capture_output=True, text=True, timeout=120)
    assert up.returncode == 1
    assert "c.JobService.max_running_per_users is not a setting of JobService; did you mean " \
           "c.JobService.max_running_per_user?" in up.stderr
    assert "Traceback" not in up.stderr + up.stdout
    assert not (tmp_path / "run.json").exists() and not processes_using(tmp_path)


def test_a_missing_workflow_folder_is_named(tmp_path):
    write(tmp_path, "c.JobService.workflow_dirs = ['/nonexistent/flows']\n")
    up = subprocess.run([IMAGINGHUB, "--home", str(tmp_path), "up", "--port", "1"],
                        capture_output=True, text=True, timeout=120)
    assert up.returncode == 1
    assert ("c.JobService.workflow_dirs names /nonexistent/flows, which is not a folder"
            in up.stderr)
    assert not processes_using(tmp_path)


def test_the_site_files_root_executes_stay_roots(stack):
    """The service account owns the state directory, but not the files that
    root's processes (the hub, Dask Gateway, the CLI) execute: it could
    otherwise run code as root."""
    if not stack.home.multi_user:
        pytest.skip("single-user: everything is the invoking account's")
    import grp

    service_gid = grp.getgrnam("imaginghub").gr_gid
    for path in stack.home.root_files():
        st = path.stat()
        assert st.st_uid == 0, path
        assert not st.st_mode & 0o022, path
    st = stack.home.config_file.stat()
    assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (service_gid, 0o640)


def test_a_spawner_setting_of_the_site_reaches_the_servers(stack):
    """conftest's stack adds IMAGINGHUB_TEST_SITE to c.Spawner.environment in
    its imaginghub_config.py: alice's kernel has it, with imaginghub's own."""
    from hubclient import UserSession

    alice = UserSession(stack.url, "alice", stack.token("alice"))
    alice.start_server()
    kernel = alice.start_kernel()
    out = alice.execute(kernel["id"], "import os; print(os.environ.get('IMAGINGHUB_TEST_SITE'),"
                                      " 'IMAGINGHUB_DICOMWEB_URL' in os.environ)")
    assert out["error"] is None, out
    assert out["stdout"].split() == ["from-the-site-config", "True"]


def test_the_archive_is_the_embedded_one_or_the_sites(tmp_path):
    from imaginghub.hub.services.data.config import DataService, archive_endpoint

    home = Home(tmp_path)
    home.save_state({"orthanc_http_port": 41236})
    embedded = archive_endpoint(home)
    assert (embedded.dicomweb, embedded.orthanc) == ("http://127.0.0.1:41236/dicom-web",
                                                     "http://127.0.0.1:41236")
    assert DataService(config=home.config()).feed_name() == "orthanc"

    secret = tmp_path / "pw"
    secret.write_text("s3cret\nignored\n")
    secret.chmod(0o640)
    write(tmp_path, "c.DataService.archive_url = 'https://pacs.example.org/rs/'\n"
                    "c.DataService.archive_username = 'gateway'\n"
                    f"c.DataService.archive_password_file = {str(secret)!r}\n")
    site = archive_endpoint(Home(tmp_path))
    assert (site.dicomweb, site.orthanc, site.auth) == ("https://pacs.example.org/rs", None,
                                                        ("gateway", "s3cret"))
    assert not site.embedded
    assert DataService(config=Home(tmp_path).config()).feed_name() == "qido"
    secret.chmod(0o604)
    with pytest.raises(ConfigError, match=r"open to every account \(mode 604\)"):
        archive_endpoint(Home(tmp_path))
    secret.unlink()
    with pytest.raises(ConfigError, match=r"archive_password_file .*pw cannot be read"):
        archive_endpoint(Home(tmp_path))
