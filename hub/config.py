"""The site's configuration: one file, ``imaginghub_config.py`` in the state
directory, read with traitlets as JupyterHub reads its own::

    c = get_config()  # noqa
    c.DataService.auth_cache_seconds = 10
    c.DaskLimits.max_workers_per_cluster = 8
    c.Spawner.mem_limit = "8G"   # another program's class: passed to it

Every admin setting of imaginghub is a trait with ``help=`` on the class
that uses it (:func:`classes`); ``imaginghub config`` prints them all. An
unknown setting of one of these classes, or a value of the wrong type, is a
:class:`ConfigError` that names it, before anything starts. Sections of
other programs' classes (``c.JupyterHub``, ``c.Spawner``, ``c.KubeSpawner``,
``c.DaskGateway``, ...) are loaded by the process that owns them, after its
generated configuration, and checked there against that class's traits.

What the machine chose (ports, the site's id, its mode) is not
configuration: it lives in ``state.json`` (:meth:`Home.load_state`). A state
directory of an older imaginghub keeps all of it in ``settings.json``;
:func:`migrate` splits it once.
"""

from __future__ import annotations

import difflib
import io
import json
import os
import textwrap
from pathlib import Path

from traitlets import TraitError
from traitlets.config import Config, Configurable

from .errors import ConfigError

CONFIG_FILE = "imaginghub_config.py"
# The machine's own choices, kept between starts.
STATE_FILE = "state.json"
# The modalities `imaginghub modalities add` keeps (a registry, like users.json).
MODALITIES_FILE = "modalities.json"


def classes() -> list[type[Configurable]]:
    """imaginghub's configurable classes, in the order of the reference."""
    from .orthanc import Archive
    from .services import HubService
    from .services.dask_gateway.limits import DaskLimits
    from .services.data.config import DataService
    from .services.jobs.config import JobService
    from .services.viewer.config import ViewerService
    from .stack import Stack
    from .state import Site

    return [Stack, Site, Archive, HubService, DataService, JobService, ViewerService,
            DaskLimits]


# The entry-point groups of plugins whose classes take settings of their own.
PLUGIN_GROUPS = ("imaginghub.job_runners", "imaginghub.archive_feeds")


def plugin_classes(names: set[str] | None = None) -> list[type[Configurable]]:
    """The installed plugins' classes (job runners, archive feeds, and the
    bases they share settings through), imaginghub's own and third
    parties'; with ``names``, only those of these class names (the others
    are not imported). One that cannot be loaded is left out (choosing it
    is the error that names it)."""
    out: list[type[Configurable]] = []
    if names is None or "ArchiveFeed" in names:
        from .services.data.feeds import ArchiveFeed

        out.append(ArchiveFeed)
    for name, ep in _plugin_entry_points().items():
        if names is not None and name not in names:
            continue
        try:
            cls = ep.load()
        except Exception:
            continue
        if isinstance(cls, type) and issubclass(cls, Configurable) and cls not in out:
            out.append(cls)
    return out


def _plugin_entry_points() -> dict:
    """{class name: entry point} of the plugin groups, read from the
    packages' metadata without importing them."""
    import importlib.metadata

    return {ep.attr.rsplit(".", 1)[-1]: ep for group in PLUGIN_GROUPS
            for ep in importlib.metadata.entry_points(group=group) if ep.attr}


# -- reading ------------------------------------------------------------------
def read_file(path: Path, *, owner: int | None = None) -> Config:
    """The configuration in ``path`` (a traitlets Python config file).

    With ``owner`` (root, for a process that runs as root), the file must
    belong to that uid and be writable by nobody else, and what is executed
    is what was checked: another account that could swap the file would
    otherwise have its code run as root.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return Config()
    except OSError as e:
        raise ConfigError(f"{path} cannot be read ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if owner is not None and (st.st_uid != owner or st.st_mode & 0o022):
            raise ConfigError(
                f"{path} must belong to {_name(owner)} and be writable by nobody else (it is "
                f"{_name(st.st_uid)}'s, mode {st.st_mode & 0o777:o}): run "
                f"'chown {_name(owner)} {path}; chmod go-w {path}'")
        source = f.read().decode("utf-8", errors="replace")
    cfg = Config()
    namespace = {"get_config": lambda: cfg, "c": cfg, "__file__": str(path),
                 "__name__": "imaginghub_config"}
    try:
        exec(compile(source, str(path), "exec"), namespace)  # noqa: S102 (the admin's file)
    except SyntaxError as e:
        raise ConfigError(f"{path}, line {e.lineno}: {e.msg}; fix the file and start "
                          "again") from None
    except Exception as e:
        line = _line_of(e, str(path))
        raise ConfigError(f"{path}{f', line {line}' if line else ''}: "
                          f"{type(e).__name__}: {e}; fix the file and start again") from None
    return cfg


def _name(uid: int) -> str:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _line_of(exc: BaseException, filename: str) -> int | None:
    tb = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def check(cfg: Config, source: str = CONFIG_FILE) -> Config:
    """``cfg`` when every setting of imaginghub's classes in it exists and has
    a value of the right type; else a ConfigError naming the first wrong one
    (and what was probably meant)."""
    ours = {cls.__name__: cls for cls in classes()}
    others = {s for s in cfg if s not in ours}
    known = set(ours)
    if others:  # plugins' sections? (only those plugins are imported)
        ours.update({cls.__name__: cls for cls in plugin_classes(others)})
        known |= {*_plugin_entry_points(), "ArchiveFeed"}
    for section in list(cfg):
        if not isinstance(cfg[section], Config) or not section[:1].isupper():
            continue
        cls = ours.get(section)
        if cls is None:
            close = difflib.get_close_matches(section, known, n=1, cutoff=0.8)
            if close:
                raise ConfigError(f"{source}: there is no class {section} in imaginghub; "
                                  f"did you mean c.{close[0]}?")
            continue  # another program's class: its process checks it
        traits = cls.class_traits(config=True)
        for name, value in cfg[section].items():
            if name not in traits:
                hint = difflib.get_close_matches(name, traits, n=1)
                raise ConfigError(
                    f"{source}: c.{section}.{name} is not a setting of {section}"
                    + (f"; did you mean c.{section}.{hint[0]}?" if hint else "")
                    + " ('imaginghub config' lists them all)")
            one = Config({section: {name: value}})
            try:
                probe(cls, validators=False)(config=one)
            except TraitError as e:
                kind = traits[name].info()
                raise ConfigError(f"{source}: c.{section}.{name} = {value!r:.80} is not "
                                  f"{kind} ({_short(e)})") from None
            try:
                probe(cls)(config=one)
            except TraitError as e:  # the right type, refused by the class's own check
                raise ConfigError(f"{source}: {_short(e)}") from None
    return cfg


def probe(cls: type[Configurable], *, validators: bool = True) -> type[Configurable]:
    """A class of the same name with only ``cls``'s settings (and, with
    ``validators``, its own checks of their values): what checks a value
    without making a ``cls`` (a Stack needs its home)."""
    import copy

    from traitlets.traitlets import ValidateHandler

    members = {n: copy.deepcopy(t) for n, t in cls.class_traits(config=True).items()}
    if validators:
        for klass in reversed(cls.__mro__):
            members.update({n: v for n, v in vars(klass).items()
                            if isinstance(v, ValidateHandler)
                            and any(t in members for t in v.trait_names)})
    return type(cls.__name__, (Configurable,), members)


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]


def _owner() -> int | None:
    """Whose the configuration file must be: root's when root reads it (it is
    executed), anyone's otherwise."""
    return 0 if os.geteuid() == 0 else None


def site_config(home) -> Config:
    """The checked configuration of the site in ``home`` (a :class:`Home`)."""
    path = Path(home.path) / CONFIG_FILE
    return check(read_file(path, owner=_owner()), str(path))


def foreign(cfg: Config) -> Config:
    """The sections of ``cfg`` that belong to other programs' classes."""
    ours = {cls.__name__ for cls in classes()}
    return Config({k: v for k, v in cfg.items() if k not in ours})


def load_site_config(c: Config, path: str) -> None:
    """Merge the other programs' sections of the site's configuration file
    into ``c``: called at the end of the configuration imaginghub writes for
    the hub and for Dask Gateway, so the site's settings win and the program
    checks them against its own classes."""
    merge(c, foreign(read_file(Path(path), owner=_owner())))


def merge(c: Config, other: Config) -> None:
    """``other`` into ``c``; a value the site changes in place
    (``c.Spawner.environment.update({...})``) changes the value already in
    ``c`` rather than replacing it."""
    from traitlets.config.loader import LazyConfigValue

    for key, value in other.items():
        mine = c.get(key) if key in c else None
        if isinstance(value, Config) and isinstance(mine, Config):
            merge(mine, value)
        elif isinstance(value, LazyConfigValue) and mine is not None and not isinstance(
                mine, (Config, LazyConfigValue)):
            c[key] = value.get_value(mine)
        else:
            c[key] = value


# -- writing --------------------------------------------------------------------
HEADER = '''\
# imaginghub configuration of this site.
#
# Every setting is shown with its default, commented out: uncomment and
# change what the site needs, then restart `imaginghub up`. An unknown
# setting of imaginghub's classes, or a value of the wrong type, stops
# `imaginghub up` with a message naming it. `imaginghub config` prints this
# reference again.
#
# Sections of other programs' classes go here too and are passed to the
# program that owns them, after the configuration imaginghub writes for it:
#   c.JupyterHub.*, c.Authenticator.*, c.Spawner.* (the hub),
#   c.DaskGateway.*, c.ClusterConfig.* (Dask Gateway).
# No secret belongs in this file: the services read theirs from secrets/.

c = get_config()  # noqa: F821
'''


def documented() -> list[type[Configurable]]:
    """imaginghub's classes, then the installed plugins' that have settings."""
    return [*classes(), *(c for c in plugin_classes() if c.class_traits(config=True))]


def commented() -> str:
    """A configuration file with every setting commented out at its default."""
    out = io.StringIO()
    out.write(HEADER)
    for cls in documented():
        out.write("\n" + cls.class_config_section() + "\n")
    return out.getvalue()


def reference() -> str:
    """The reference of every setting, for ``imaginghub config``."""
    out = io.StringIO()
    out.write("imaginghub settings (in imaginghub_config.py of the state directory, "
              "as c.Class.name = value)\n")
    listed = documented()
    for cls in listed:
        doc = (cls.__doc__ or "").strip().split("\n\n")[0]
        out.write(f"\n{cls.__name__}\n{'-' * len(cls.__name__)}\n")
        if doc:
            out.write(textwrap.fill(" ".join(doc.split()), 79) + "\n")
        own = cls.class_own_traits(config=True)
        for name, trait in sorted(cls.class_traits(config=True).items()):
            if name not in own and any(name in b.class_own_traits(config=True)
                                       for b in cls.__mro__[1:] if b in listed):
                continue  # listed under the class it comes from
            default = trait.default_value_repr()
            out.write(f"\nc.{cls.__name__}.{name} = {default}   ({trait.info()})\n")
            if trait.help:
                out.write(textwrap.indent(textwrap.fill(" ".join(trait.help.split()), 75),
                                          "    ") + "\n")
    return out.getvalue()


def write_file(path: Path, text: str) -> None:
    """Write a configuration file that a process running as root executes:
    root's, readable by the service account's group (0640), when written as
    root; private to the invoking account otherwise."""
    from .state import write_private

    if os.geteuid() != 0:
        write_private(path, text)
        return
    import grp

    from .accounts import SERVICE_ACCOUNT

    try:
        gid = grp.getgrnam(SERVICE_ACCOUNT).gr_gid
    except KeyError:
        gid = 0
    write_private(path, text, owner=(0, gid), mode=0o640)


def write_settings(path: Path, sections: dict[str, dict], extra: str = "") -> None:
    """A configuration file that sets ``sections`` (``{"Class": {"name":
    value}}``), then ``extra`` lines, written as :func:`write_file` does."""
    write_file(path, "c = get_config()  # noqa: F821\n" + render(sections) + extra)


def render(sections: dict[str, dict]) -> str:
    """Lines ``c.Class.name = value`` for ``{"Class": {"name": value}}``."""
    return "".join(f"c.{cls}.{name} = {value!r}\n"
                   for cls, values in sections.items() for name, value in values.items())


def share_with_services(home, gid: int) -> None:
    """Let the service account's group read the site's configuration (the
    services read their settings from it); it stays root's."""
    path = Path(home.path) / CONFIG_FILE
    st = os.lstat(path)
    if st.st_uid == 0 and (st.st_gid != gid or st.st_mode & 0o777 != 0o640):
        os.chown(path, 0, gid, follow_symlinks=False)
        os.chmod(path, 0o640)


def write_default(home) -> Path | None:
    """Write the commented configuration file if the site has none; its path
    when written."""
    path = Path(home.path) / CONFIG_FILE
    if path.exists():
        return None
    write_file(path, commented())
    return path


# -- an older state directory: settings.json -------------------------------------
# settings.json key -> (class, trait, convert)
_MIGRATE = {
    "port": ("Stack", "port", int),
    "dicom_port": ("Archive", "dicom_port", int),
    "aet": ("Archive", "aet", str),
    "account_prefix": ("Site", "account_prefix", str),
    "homes_dir": ("Site", "homes_dir", str),
    "spool_dir": ("Site", "spool_dir", str),
    "data_auth_cache_seconds": ("HubService", "auth_cache_seconds", int),
    "data_max_stow_mb": ("DataService", "max_stow_mb", int),
    "data_read_archive_files": ("DataService", "read_archive_files", bool),
    "data_db_url": ("DataService", "db_url", str),
    "catalog_full_sync_hours": ("ArchiveFeed", "full_sync_hours", float),
    "jobs_db_url": ("JobService", "db_url", str),
    "jobs_workflow_dirs": ("JobService", "workflow_dirs", list),
    "jobs_runner": ("JobService", "runner", str),
    "jobs_max_running": ("JobService", "max_running", int),
    "jobs_max_running_per_user": ("JobService", "max_running_per_user", int),
    "jobs_time_limit_minutes": ("JobService", "time_limit_minutes", float),
    "dask_user_limits": ("DaskLimits", "user_limits", dict),
}
# what the machine chose: state.json
_STATE_KEYS = ("orthanc_http_port", "dask_gateway_port", "mode", "site_id")


def migrate(home) -> str | None:
    """Split an older ``settings.json`` into the configuration file (the
    admin's settings), ``state.json`` (ports, the site's id) and
    ``modalities.json``, once; the old file is kept as
    ``settings.json.migrated``. A sentence saying so, or None."""
    from .services.dask_gateway.limits import DaskLimits
    from .state import write_private

    old = Path(home.path) / "settings.json"
    if not old.exists():
        return None
    try:
        settings = json.loads(old.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{old} is not valid JSON ({e}); fix it so that it can be "
                          "moved to imaginghub_config.py, or remove it") from None
    moved: dict[str, dict] = {}
    unknown = []
    for key, value in sorted(settings.items()):
        if key in _STATE_KEYS or key == "modalities":
            continue
        if key.startswith("dask_") and key[5:] in DaskLimits.class_traits(config=True):
            cls, name = "DaskLimits", key[5:]
        elif key in _MIGRATE:
            cls, name, convert = _MIGRATE[key]
            try:
                value = convert(value)
            except (TypeError, ValueError):
                unknown.append(key)
                continue
        else:
            unknown.append(key)
            continue
        moved.setdefault(cls, {})[name] = value
    state = {k: settings[k] for k in _STATE_KEYS if k in settings}
    if state:
        home.save_state({**home.load_state(), **state})
    if settings.get("modalities"):
        write_private(Path(home.path) / MODALITIES_FILE,
                      json.dumps(settings["modalities"], indent=2, sort_keys=True) + "\n")
    path = Path(home.path) / CONFIG_FILE
    text = path.read_text() if path.exists() else commented()
    lines = sum(len(v) for v in moved.values())
    if moved:
        text += ("\n# -- moved from settings.json by imaginghub " + _version() + " --\n"
                 + render(moved))
    if unknown:
        text += "".join(f"# settings.json had {k} = {settings[k]!r}: not a setting, or "
                        "not of its type (left out)\n" for k in unknown)
    write_file(path, text)
    os.replace(old, old.with_name("settings.json.migrated"))
    return (f"moved the settings of {old} to {path} (admin settings"
            + (f": {lines}" if lines else ": none") + f"), ports to {STATE_FILE}"
            + (f", modalities to {MODALITIES_FILE}" if settings.get("modalities") else "")
            + "; the old file is kept as settings.json.migrated")


def _version() -> str:
    try:
        import importlib.metadata

        return importlib.metadata.version("imaginghub")
    except Exception:
        return ""
