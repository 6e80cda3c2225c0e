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


# -- the training itself: shared by train-segmentation and federated-train ----------------
def check_labels(pairs: dict[str, dict], uids, labels) -> dict[int, str]:
    """``{label value: segment name}`` for ``labels`` (names, or one string
    of names separated by commas; empty: every segment of the first series'
    SEG), after checking that every SEG has a segment of each name."""
    if isinstance(labels, str):
        labels = [label.strip() for label in labels.split(",") if label.strip()]
    labels = list(dict.fromkeys(labels or pairs[uids[0]]["segments"].values()))
    for uid in uids:
        have = set(pairs[uid]["segments"].values())
        if set(labels) - have:
            raise ModelError(
                f"SEG {pairs[uid]['seg_uid']} of series {uid} has no segment named "
                f"{', '.join(sorted(set(labels) - have))} (it has {', '.join(sorted(have))}): "
                "set labels to names that every SEG has, or choose other SEGs with "
                "label_series")
    return dict(enumerate(labels, start=1))


def training_data(pacs, uids, pairs: dict[str, dict], names: dict[int, str], spec: dict, *,
                  progress: bool = True):
    """Each series and its SEG (on the series' grid) loaded and resampled
    onto the input grid: ``(images, targets, held)``: input tensors
    ``(1, n, n, n)``, label tensors ``(1, n, n, n)`` (0 background, then
    ``names``' values), and ``(volume, labels on its own grid)`` per series
    for measuring Dice there."""
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from .grid import labels_to_grid, to_input

    value = {name: v for v, name in names.items()}
    images, targets, held = [], [], []
    for uid in tqdm(uids, desc="load", unit="series", disable=not progress):
        volume = pacs.load_series(uid, progress=False)
        seg, seg_names = pacs.load_segmentation(pairs[uid]["seg_uid"], series=volume)
        to_label = np.zeros(max(seg_names) + 1, np.uint8)  # SEG segment number -> our label
        for number, segment in seg_names.items():
            to_label[number] = value.get(segment, 0)
        truth = to_label[seg.array]
        image, affine = to_input(volume, spec)
        images.append(image)
        targets.append(torch.from_numpy(labels_to_grid(truth, volume, affine, spec)).long()[None])
        held.append((volume, truth))
    return images, targets, held


def train(network, images, targets, *, epochs: int, patch_size: int, patches_per_series: int,
          batch_size: int, learning_rate: float, seed: int, progress: bool = True):
    """Adam on Dice plus cross-entropy: every epoch ``patches_per_series``
    patches of every series, each centred on a voxel of a label drawn at
    random (so a small structure is seen as often as a large one), in
    batches of ``batch_size``; the patches come from a generator seeded with
    ``seed``. Returns (the mean loss of every epoch, seconds)."""
    import time

    import torch
    from monai.losses import DiceCELoss
    from tqdm.auto import tqdm

    for what, value in {"epochs": epochs, "patches_per_series": patches_per_series,
                        "batch_size": batch_size}.items():
        if value < 1:
            raise ModelError(f"{what} must be at least 1 (got {value})")
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(network.parameters(), lr=learning_rate)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)

    def pick(n):
        return int(torch.randint(0, n, (1,), generator=generator))

    def random_patches():
        xs, ys = [], []
        for image, target in zip(images, targets):
            present = torch.unique(target)
            for _ in range(patches_per_series):
                voxels = (target[0] == present[pick(len(present))]).nonzero()
                centre = voxels[pick(len(voxels))]
                corner = [min(max(int(c) - patch_size // 2, 0), n - patch_size)
                          for c, n in zip(centre, image.shape[1:])]
                window = (slice(None), *(slice(c, c + patch_size) for c in corner))
                xs.append(image[window])
                ys.append(target[window])
        order = torch.randperm(len(xs), generator=generator)
        return torch.stack(xs)[order], torch.stack(ys)[order]

    losses = []
    network.train()
    start = time.perf_counter()
    for _ in tqdm(range(epochs), desc="train", unit="epoch", disable=not progress):
        x, y = random_patches()
        total = 0.0
        for b in range(0, len(x), batch_size):
            optimiser.zero_grad()
            loss = loss_function(network(x[b:b + batch_size]), y[b:b + batch_size])
            loss.backward()
            optimiser.step()
            total += loss.item() * len(x[b:b + batch_size])
        losses.append(total / len(x))
    network.eval()
    return losses, time.perf_counter() - start


def training_dice(network, held, names: dict[int, str], spec: dict) -> tuple[dict, dict]:
    """Each training series segmented as the workflow ``segment`` does it
    (sliding windows over the input grid, probabilities resampled onto the
    series' own grid) and compared with its labels: (mean Dice per label,
    Dice per label of each series, in the order of ``held``)."""
    import numpy as np

    from .grid import predict, to_input, to_series_grid
    from .metrics import dice_per_label

    per_series = []
    for volume, truth in held:
        image, affine = to_input(volume, spec)
        predicted = to_series_grid(predict(network, image, spec["patch_size"][0]), affine,
                                   volume)
        per_series.append(dice_per_label(predicted, truth, names))
    mean = {label: float(np.mean([d[label] for d in per_series])) for label in names.values()}
    return mean, per_series
