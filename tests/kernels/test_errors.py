"""What a user's code sees when a request is refused, a hub service is down,
or the archive behind the data service is: three exceptions under the
kernel's root (a plain HTTP server plays the service; no stack needed)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from imaginghub.hub.state import free_port
from imaginghub.kernels.dicomweb import PACS
from imaginghub.kernels.errors import (ArchiveUnavailable, PACSError, Refused,
                                       ServiceUnavailable, Unavailable)
from imaginghub.kernels.jobs import Jobs


class Answers(BaseHTTPRequestHandler):
    """Answers every request with the status in its path's last part."""

    def do_GET(self):
        status = int(self.path.rstrip("/").rsplit("/", 1)[-1].split("?")[0])
        body = json.dumps({"message": f"said {status}"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def service():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_a_job_service_that_is_down_is_not_the_archive():
    jobs = Jobs(f"http://127.0.0.1:{free_port()}/services/jobs", token="t")
    with pytest.raises(ServiceUnavailable) as e:
        jobs.workflows()
    assert not isinstance(e.value, ArchiveUnavailable)
    assert isinstance(e.value, Unavailable) and isinstance(e.value, PACSError)
    assert "job service" in str(e.value)


@pytest.mark.parametrize("status", [400, 409, 413, 422])
def test_a_refused_request_says_why(service, status):
    jobs = Jobs(service, token="t")
    with pytest.raises(Refused, match=f"said {status}") as e:
        jobs._json("GET", f"x/{status}")
    assert isinstance(e.value, ValueError)  # what code that caught ValueError still catches


@pytest.mark.parametrize("status", [502, 503, 504])
def test_a_service_that_cannot_answer_now(service, status):
    with pytest.raises(ServiceUnavailable, match=f"said {status}"):
        Jobs(service, token="t")._json("GET", f"x/{status}")


def test_pacs_through_the_data_service_tells_the_service_from_the_archive(service):
    down = PACS(f"http://127.0.0.1:{free_port()}/services/data/dicom-web", token="t")
    with pytest.raises(ServiceUnavailable, match="the data service at"):
        down.search_for_series()
    # the data service answered that the archive behind it did not
    for status in (502, 504):
        with pytest.raises(ArchiveUnavailable, match="the archive behind"):
            PACS(f"{service}/dicom-web/{status}", token="t")._call(
                "search", _raise_http, status)
    with pytest.raises(ServiceUnavailable):
        PACS(f"{service}/dicom-web", token="t")._call("search", _raise_http, 503)
    with pytest.raises(Refused):
        PACS(f"{service}/dicom-web", token="t")._call("search", _raise_http, 400)


def _raise_http(status: int):
    """What dicomweb-client raises for an answer with ``status``."""
    import requests

    response = requests.Response()
    response.status_code = status
    raise requests.exceptions.HTTPError(response=response)
