"""Training pairs: the images of a cohort and their reference
segmentations (DICOM SEG series that reference them)."""

from __future__ import annotations

from ..query import first_value
from .registry import ModelError


# -- training pairs: images and their reference segmentations -------------------------
def segmentation_record(pacs, study_uid: str, seg_uid: str) -> dict:
    """What a SEG series' metadata says: ``{"seg_uid", "instances",
    "references" (series UIDs), "segments" ({number: name}), "automatic"
    (every segment made by an algorithm), "description"}`` (of its first
    instance)."""
    found = pacs.retrieve_series_metadata(study_uid, seg_uid)
    item = found[0] if found else {}
    refs = [first_value(r, "0020000E") for r in item.get("00081115", {}).get("Value", [])]
    segments = item.get("00620002", {}).get("Value", [])
    return {
        "seg_uid": seg_uid,
        "instances": len(found),
        "references": sorted({r for r in refs if r}),
        "segments": {int(first_value(s, "00620004")): str(first_value(s, "00620005") or "")
                     for s in segments},
        "automatic": bool(segments) and all(first_value(s, "00620008") == "AUTOMATIC"
                                            for s in segments),
        "description": str(first_value(item, "0008103E") or ""),
    }


def reference_segmentation(pacs, series_uid: str) -> dict:
    """The reference segmentation of an image series: the one SEG series of
    the same study that references it and was not made by an algorithm
    (segment algorithm type MANUAL or SEMIAUTOMATIC). Raises ModelError when
    there is none or there are several (pass the SEG UIDs then)."""
    record = pacs.find_series(series_uid)
    study = first_value(record, "0020000D")
    candidates = []
    for seg in pacs.search_for_series(study, search_filters={"Modality": "SEG"}):
        info = segmentation_record(pacs, study, first_value(seg, "0020000E"))
        if series_uid in info["references"]:
            candidates.append(info)
    chosen = [c for c in candidates if not c["automatic"] and c["instances"] == 1]
    if len(chosen) == 1:
        return chosen[0]
    if not chosen:
        automatic = sum(c["automatic"] for c in candidates)
        made = (f" ({automatic} made by an algorithm are not taken as labels)"
                if automatic else "")
        if len(candidates) > automatic:
            made += f" ({len(candidates) - automatic} of several instances are left out)"
        raise ModelError(
            f"series {series_uid} has no reference segmentation in its study{made}: store "
            "one (a DICOM SEG that references the series), or pass the SEG series to train "
            "on in the parameter label_series")
    listed = "; ".join(f"{c['seg_uid']} ({c['description']})" for c in chosen)
    raise ModelError(
        f"series {series_uid} has {len(chosen)} reference segmentations: {listed}. Say "
        "which to train on in the parameter label_series")


def training_pairs(pacs, series_uids, label_series=()) -> dict[str, dict]:
    """``{image series UID: segmentation record}`` for training: each image's
    SEG from ``label_series`` (SEG series UIDs, matched to the images by the
    series they reference) or else found by :func:`reference_segmentation`."""
    if isinstance(label_series, str):
        label_series = label_series.replace(",", " ").split()
    given = {}
    for seg_uid in dict.fromkeys(u.strip() for u in label_series or () if u.strip()):
        record = pacs.find_series(seg_uid)
        if first_value(record, "00080060") != "SEG":
            raise ModelError(f"label_series: {seg_uid} is not a segmentation (Modality "
                             f"{first_value(record, '00080060')}, not SEG)")
        info = segmentation_record(pacs, first_value(record, "0020000D"), seg_uid)
        if info["instances"] != 1:
            raise ModelError(f"label_series: segmentation series {seg_uid} holds "
                             f"{info['instances']} instances; train on SEG series of one "
                             "instance each")
        for ref in info["references"]:
            if ref in given:
                raise ModelError(f"label_series: {given[ref]['seg_uid']} and {seg_uid} both "
                                 f"label series {ref}: give one SEG per image series")
            given[ref] = info
    unused = sorted({i["seg_uid"] for i in given.values()
                     if not set(i["references"]) & set(series_uids)})
    if unused:
        raise ModelError(f"label_series: {', '.join(unused)} label none of the series to train "
                         "on (a SEG goes with the series its ReferencedSeriesSequence names)")
    pairs = {}
    for uid in series_uids:
        pairs[uid] = given[uid] if uid in given else reference_segmentation(pacs, uid)
    return pairs
