"""The archive's ports closed to every local account but root and the
service account (multi-user mode), with an nftables rule on the socket's
owner.

Orthanc 1.10 cannot bind to loopback, and a local process may claim any
modality's AE title from 127.0.0.1, so credentials and host checks are not
enough once users run code on the machine. ``up`` adds one table per site,
``inet imaginghub_SITE``, whose output hook rejects connections to the
archive's HTTP and DICOM ports from any other uid (locally generated
packets only: modalities on the network still reach the DICOM port), and
removes it when it stops. The table's comment names the state directory;
a table whose ``up`` no longer runs (killed) is removed by the next ``up``
on this machine and by the tests.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess

from .errors import StackError

log = logging.getLogger(__name__)

PREFIX = "imaginghub_"


class PortGuardUnavailable(StackError):
    pass


def _nft(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["nft", *args], input=stdin, capture_output=True, text=True,
                          timeout=30)


def check_available() -> None:
    """Raise PortGuardUnavailable, saying what is missing, unless nftables
    can add rules here."""
    if shutil.which("nft") is None:
        raise PortGuardUnavailable(
            "multi-user mode closes the archive's ports to users' processes with nftables, "
            "which is not installed: 'apt-get install nftables' (make does it), or start "
            "imaginghub as an ordinary user (single-user mode)")
    r = _nft("list", "tables")
    if r.returncode:
        raise PortGuardUnavailable(
            "multi-user mode closes the archive's ports to users' processes with nftables, "
            f"and nft cannot change rules here ({r.stderr.strip() or 'no permission'}): it "
            "needs root with CAP_NET_ADMIN")


def table_name(site_id: str) -> str:
    return PREFIX + site_id


def install(site_id: str, home: str, ports: list[int], allowed_uids: list[int], *,
            name: str | None = None) -> None:
    """Close ``ports`` to every uid but ``allowed_uids`` (replacing the site's
    table if a killed ``up`` left it). ``name``: a table of another owner
    than ``up`` (a federation's coordinator), which ``remove_stale`` leaves
    alone."""
    name = name or table_name(site_id)
    remove_table(name)
    comment = json.dumps(f"imaginghub {home}")
    port_set = ", ".join(str(p) for p in sorted(set(ports)))
    uid_set = ", ".join(str(u) for u in sorted(set(allowed_uids)))
    rules = (
        f"table inet {name} {{\n"
        f"  comment {comment}\n"
        "  chain output {\n"
        "    type filter hook output priority 0; policy accept;\n"
        f"    tcp dport {{ {port_set} }} meta skuid != {{ {uid_set} }} reject with tcp reset\n"
        "  }\n"
        "}\n")
    r = _nft("-f", "-", stdin=rules)
    if r.returncode:
        raise PortGuardUnavailable(f"nft refused the archive's rules: {r.stderr.strip()}")
    log.debug("archive ports %s closed to all but uids %s", port_set, uid_set)


def remove(site_id: str) -> None:
    remove_table(table_name(site_id))


def remove_table(name: str) -> None:
    if _nft("list", "table", "inet", name).returncode == 0:
        _nft("delete", "table", "inet", name)


def tables() -> dict[str, str]:
    """{table name: state directory} of every imaginghub table on this machine."""
    r = _nft("-j", "list", "tables")
    if r.returncode:
        return {}
    out = {}
    for item in json.loads(r.stdout or "{}").get("nftables", []):
        t = item.get("table")
        if not (t and t.get("family") == "inet" and t.get("name", "").startswith(PREFIX)):
            continue
        # nft 1.0.6 leaves a table's comment out of its JSON: read the text form
        text = _nft("list", "table", "inet", t["name"]).stdout
        found = re.search(r'^\s*comment "imaginghub (.*)"\s*$', text, re.M)
        out[t["name"]] = found.group(1) if found else ""
    return out


def remove_stale() -> list[str]:
    """Remove the tables whose ``up`` is not running any more; their names."""
    if shutil.which("nft") is None:
        return []
    from .state import Home

    gone = []
    for name, home in tables().items():
        if home and Home(home).read_run() is not None:
            continue
        _nft("delete", "table", "inet", name)
        gone.append(name)
    return gone
