"""What a user's own code tries against the others, as alice, from her
kernel, her job and her Dask worker (tests/hub/test_isolation.py sends this
file's source there and runs :func:`run_attacks`).

Every attack reports what it got: ``{"ok": False, "why": ...}`` when the
system stopped it, ``{"ok": True, "got": ...}`` when it got through. The
test checks that none got through and that nothing it got holds a secret.
Only the standard library, pyzmq and pynetdicom: what any kernel has.
"""


def run_attacks(targets: dict) -> dict:
    import os
    import signal
    import socket

    out = {}

    def attempt(name, fn):
        try:
            got = fn()
        except Exception as e:  # the system said no: what it said
            out[name] = {"ok": False, "why": f"{type(e).__name__}: {e}"}
            return
        if got in (None, b"", "", [], {}):
            out[name] = {"ok": False, "why": "nothing"}
        else:
            out[name] = {"ok": True, "got": repr(got)[:4000]}

    def read(path):
        with open(path, "rb") as f:
            return f.read(65536)

    # the state directory: every file, and the directory itself
    for path in targets["state_files"]:
        attempt(f"read {path}", lambda p=path: read(p))
    attempt("list the state directory", lambda: os.listdir(targets["state_dir"]))

    # the hub's processes: their environment (tokens) and open files
    for pid in targets["service_pids"]:
        attempt(f"environ of {pid}", lambda p=pid: read(f"/proc/{p}/environ"))
        attempt(f"fds of {pid}", lambda p=pid: os.listdir(f"/proc/{p}/fd"))
    # every command line is readable on Linux: it must hold no secret (the
    # test checks what came back)
    cmdlines = {}
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdlines[pid] = read(f"/proc/{pid}/cmdline").decode(errors="replace")
            except OSError:
                pass
    out["command lines"] = {"ok": False, "why": "readable by design", "got": repr(cmdlines)}

    # bob's home, his runtime folder (kernel connection files), his processes
    attempt("list bob's home", lambda: os.listdir(targets["bob_home"]))
    attempt("read bob's .bashrc", lambda: read(os.path.join(targets["bob_home"], ".bashrc")))
    attempt("list bob's runtime folder", lambda: os.listdir(targets["bob_runtime"]))
    for path in targets["bob_files"]:
        attempt(f"read {path}", lambda p=path: read(p))
    for pid in targets["bob_pids"]:
        attempt(f"signal 0 to bob's {pid}", lambda p=pid: os.kill(p, 0) or "signalled")
        attempt(f"SIGTERM to bob's {pid}", lambda p=pid: os.kill(p, signal.SIGTERM) or "killed")

    # bob's kernel: its IPC sockets (shell: send code; iopub: read output)
    for path in targets["bob_sockets"]:
        def connect(p=path):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(3)
            try:
                s.connect(p)
                return "connected"
            finally:
                s.close()
        attempt(f"connect to {path}", connect)

    # ... and any TCP port bob's processes listen on: subscribe as to an iopub
    def listening_ports(uid):
        ports = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                lines = open(table).read().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                f = line.split()
                if f[3] == "0A" and int(f[7]) == uid:  # LISTEN
                    ports.add(int(f[1].rsplit(":", 1)[1], 16))
        return sorted(ports)

    def subscribe_all():
        import zmq

        heard = []
        ctx = zmq.Context()
        try:
            for port in listening_ports(targets["bob_uid"]):
                sub = ctx.socket(zmq.SUB)
                sub.setsockopt(zmq.LINGER, 0)
                sub.setsockopt(zmq.SUBSCRIBE, b"")
                sub.connect(f"tcp://127.0.0.1:{port}")
                if sub.poll(2000):
                    heard.append((port, sub.recv_multipart()))
                sub.close()
        finally:
            ctx.term()
        return heard
    attempt("subscribe to bob's TCP ports", subscribe_all)

    # the archive: HTTP and DICOM, and C-FIND with a configured modality's title
    for port in targets["archive_ports"]:
        attempt(f"connect to the archive's port {port}",
                lambda p=port: socket.create_connection(("127.0.0.1", p), timeout=3) and "open")

    def c_find():
        from pydicom.dataset import Dataset
        from pynetdicom import AE
        from pynetdicom.sop_class import PatientRootQueryRetrieveInformationModelFind

        ae = AE(ae_title=targets["modality_aet"])
        ae.add_requested_context(PatientRootQueryRetrieveInformationModelFind)
        assoc = ae.associate("127.0.0.1", targets["dicom_port"], ae_title="IMAGINGHUB")
        if not assoc.is_established:
            raise ConnectionRefusedError("no association")
        q = Dataset()
        q.QueryRetrieveLevel, q.PatientName, q.PatientID = "PATIENT", "*", ""
        found = [str(ds.PatientName) for status, ds in
                 assoc.send_c_find(q, PatientRootQueryRetrieveInformationModelFind)
                 if ds is not None]
        assoc.release()
        return found
    attempt("C-FIND as a configured modality", c_find)
    return out
