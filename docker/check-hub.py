"""The hub image's check, run inside its root file system by `make images`
(docker/build-rootfs.sh, with runc, as uid 1000):

    python3 /tmp/check-hub.py ORTHANC_JSON PG_PORT HTTP_PORT DICOM_PORT

ORTHANC_JSON is the chart's own Orthanc configuration (its ConfigMap, as
Helm renders it for ci/values/orthanc-postgres.yaml). It starts PostgreSQL
the way the chart's StatefulSet does (imaginghub-postgresql), then Orthanc
with that configuration, its index in that PostgreSQL. It stores a DICOM
instance, finds it again over DICOMweb (QIDO-RS), and checks that the index
lives in PostgreSQL. Then it stops both. The other programs the chart runs
from this image answer --version. Prints one line per check; exits 1 on
the first that fails."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PASSWORD = "check-" + os.urandom(6).hex()


def say(text: str) -> None:
    print(f"check: {text}", flush=True)


def fail(text: str) -> None:
    print(f"check FAILED: {text}", flush=True)
    sys.exit(1)


def run(*args: str) -> str:
    """What the command printed; a RuntimeError if it failed."""
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if r.returncode:
        raise RuntimeError(f"{' '.join(args)} exited {r.returncode}: "
                           f"{(r.stderr or r.stdout)[-1000:]}")
    return (r.stdout or r.stderr).strip()


def wait(what: str, ready, procs, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                fail(f"{what}: a process ended with {p.returncode}")
        try:
            value = ready()
            if value:
                return value
        except Exception:  # not yet
            pass
        time.sleep(0.5)
    fail(f"{what} was not ready in {timeout:.0f} s")


def a_dicom_instance() -> tuple[bytes, str]:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    import io

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.Modality = "CHECK-1", "OT"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), ds.SeriesInstanceUID


def main(*args: str) -> int:
    try:
        return check(*args)
    except RuntimeError as e:
        fail(str(e))


def check(config_path: str, pg_port: str, http_port: str, dicom_port: str) -> int:
    import httpx

    for args in (["jupyterhub", "--version"], ["configurable-http-proxy", "--version"],
                 ["traefik", "version"], ["dask-gateway-server", "--version"],
                 ["Orthanc", "--version"], ["imaginghub", "--help"]):
        say(f"{args[0]}: {run(*args).splitlines()[0]}")
    ohif = Path(sys.prefix) / "share" / "imaginghub" / "ohif" / "index.html"
    if not ohif.is_file():
        fail(f"the OHIF app is missing ({ohif})")
    say(f"the OHIF app: {ohif}")

    work = Path(tempfile.mkdtemp(prefix="hubcheck-"))
    config = json.loads(Path(config_path).read_text())
    # the chart's configuration, with this check's ports and folders
    config.update(StorageDirectory=str(work / "orthanc-db"), HttpPort=int(http_port),
                  DicomPort=int(dicom_port))
    config["PostgreSQL"].update(Host="127.0.0.1", Port=int(pg_port))
    (work / "orthanc.json").write_text(json.dumps(config))
    # psql (here and in imaginghub-postgresql) and the server take these too
    os.environ.update(PGPASSWORD=PASSWORD, PGPORT=pg_port, PGUSER="imaginghub")
    env = {**os.environ, "IMAGINGHUB_DATABASES": "imaginghub_orthanc",
           "ORTHANC_PASSWORD": PASSWORD}
    pg = subprocess.Popen(["imaginghub-postgresql", str(work / "pgdata")], env=env,
                          stdout=open(work / "pg.log", "w"), stderr=subprocess.STDOUT)
    procs = [pg]
    orthanc = None
    try:
        wait("PostgreSQL with the database imaginghub_orthanc", lambda: "imaginghub_orthanc" in
             run("psql", "-h", "127.0.0.1", "-d", "postgres", "-tAc",
                 "SELECT datname FROM pg_database"), procs)
        say("PostgreSQL (imaginghub-postgresql) made imaginghub_orthanc")
        orthanc = subprocess.Popen(["Orthanc", str(work / "orthanc.json")], env=env,
                                   stdout=open(work / "orthanc.log", "w"),
                                   stderr=subprocess.STDOUT)
        procs.append(orthanc)
        http = httpx.Client(base_url=f"http://127.0.0.1:{http_port}",
                            auth=("imaginghub", PASSWORD), timeout=30)
        system = wait("Orthanc", lambda: http.get("/system").json(), procs)
        if not system.get("DatabaseBackendPlugin"):
            fail(f"Orthanc's index is not in PostgreSQL: {system}")
        say(f"Orthanc {system['Version']}, its index in PostgreSQL "
            f"({Path(system['DatabaseBackendPlugin']).name})")
        if http.get("/system", auth=("imaginghub", "wrong")).status_code != 401:
            fail("Orthanc answered a wrong password")
        data, series_uid = a_dicom_instance()
        stored = http.post("/instances", content=data)
        if stored.status_code != 200:
            fail(f"Orthanc refused an instance: {stored.status_code} {stored.text[:300]}")
        found = http.get("/dicom-web/series", params={"SeriesInstanceUID": series_uid}).json()
        if len(found) != 1:
            fail(f"QIDO-RS found {len(found)} series for the stored one")
        say("an instance stored and found again over DICOMweb (QIDO-RS)")
        rows = run("psql", "-h", "127.0.0.1", "-d", "imaginghub_orthanc", "-tAc",
                   "SELECT count(*) FROM resources")
        if int(rows) < 4:  # patient, study, series, instance
            fail(f"PostgreSQL holds {rows} of Orthanc's resources")
        say(f"PostgreSQL holds Orthanc's index ({rows} resources)")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        pg_log = (work / "pg.log").read_text(errors="replace")
        orthanc_end = orthanc.returncode if orthanc else 0
        shutil.rmtree(work, ignore_errors=True)
    if "database system is shut down" not in pg_log:
        fail(f"PostgreSQL did not shut down cleanly:\n{pg_log[-1500:]}")
    if orthanc_end:
        fail(f"Orthanc ended with {orthanc_end} on SIGTERM")
    say("PostgreSQL and Orthanc stopped cleanly on SIGTERM")
    print("hub image checked", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
