"""Hub-managed services: ``data`` (the DICOMweb gateway and project mapping)."""
