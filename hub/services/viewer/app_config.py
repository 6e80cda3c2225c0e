"""The OHIF app's configuration (``app-config.js``, ``window.config``), made
by the viewer service instead of the one in the app's dist.

How the app is told what to show: everything is in the page's path, which
the script reads when the page loads.

- ``/services/viewer/...``: the study list of every study of the user's
  projects; DICOMweb at ``/services/viewer/dicom-web/s/XSRF``, where XSRF
  is the hub's XSRF token of the page (its ``_xsrf`` cookie): JupyterHub
  accepts a script's request authenticated by a cookie only with it, and
  OHIF's data source adds no header of our choosing.
- ``/services/viewer/cohorts/PROJECT/NAME[@VERSION]/...``: the study list
  of a saved cohort (the studies of its series); DICOMweb at that path's
  ``dicom-web``, where the viewer service keeps only the cohort's studies in
  study searches. The app's router keeps the cohort's path as its base, so
  the list, the viewer and a reload stay within the cohort.

Nothing in it names another host: every root is this page's origin.
"""

from __future__ import annotations

import json

from .config import PREFIX

COHORT_PATH = r"cohorts/([a-z0-9][a-z0-9_-]{0,62})/([^/]{1,80})"


def dicomweb_source(title: str) -> dict:
    """The data source's settings except its roots (set by the script)."""
    return {
        "friendlyName": f"{title}: your projects",
        "name": "imaginghub",
        "qidoSupportsIncludeField": False,
        "imageRendering": "wadors",
        "thumbnailRendering": "wadors",
        "enableStudyLazyLoad": True,
        "supportsFuzzyMatching": False,
        "supportsWildcard": True,
        "supportsReject": False,
        "dicomUploadEnabled": False,  # reads only: the service refuses STOW
        "staticWado": False,
        "singlepart": "bulkdata,video",
        "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
        "omitQuotationForMultipartRequest": True,
    }


def settings(title: str) -> dict:
    """``window.config`` but the parts that depend on the page's path."""
    return {
        "name": "imaginghub",
        "extensions": [],
        "modes": [],
        "customizationService": {},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 3,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "groupEnabledModesFirst": True,
        # shown once per browser otherwise; the site's terms are the hub's
        "investigationalUseDialog": {"option": "never"},
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 25},
        "showErrorDetails": "production",
        "defaultDataSourceName": "imaginghub",
        "dataSources": [{
            "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
            "sourceName": "imaginghub",
            "configuration": dicomweb_source(title),
        }],
    }


def app_config_js(title: str) -> str:
    """The text of ``app-config.js``."""
    return f"""\
// imaginghub's configuration of the OHIF viewer (made by the viewer service;
// see imaginghub.hub.services.viewer.app_config). Every address is this page's.
(function () {{
  var base = {json.dumps(PREFIX)};
  var cohort = new RegExp("^" + base + "/{COHORT_PATH}(/|$)").exec(window.location.pathname);
  var root = cohort ? base + "/cohorts/" + cohort[1] + "/" + cohort[2] : base;
  var config = {json.dumps(settings(title), indent=2)};
  // the hub's XSRF token for this page (JupyterHub asks it of every script's
  // request that its cookie authenticates): a path segment of the roots
  var xsrf = /(?:^|;\s*)_xsrf=([^;]*)/.exec(document.cookie);
  var dicomweb = window.location.origin + root + "/dicom-web/s/" +
    (xsrf ? encodeURIComponent(decodeURIComponent(xsrf[1].replace(/^"|"$/g, ""))) : "-");
  var source = config.dataSources[0].configuration;
  source.qidoRoot = source.wadoRoot = source.wadoUriRoot = dicomweb;
  config.routerBasename = root;
  window.config = config;
}})();
"""
