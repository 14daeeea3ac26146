"""What made an output: the one shape of every provenance record napari-fmbff writes (the
files ``fmbff segment`` writes, the attributes of a large zarr output, a prompted result, the
record a labels layer carries, a labels file saved from napari).

A record is ``provenance(...)``: the input it was made from (``source``), the model
(``model_record`` of a loaded network, ``model_file_record`` of a model file or registered
name), what its maker adds (how the network ran, the post-processing, the prompts, the
widget's fields), then this package's version and the time (UTC, to the second). Those last
three are the record's own: what a maker adds never replaces them. The makers keep only
what is theirs: ``jobs.files.result_provenance`` (a segmenter's result),
``jobs.large_outputs.LargeOutputs`` (a large output without its segmenter),
``jobs.prompted.prompt_record``, ``jobs.saved_labels.run_record`` (a model run into a labels
layer) and ``provenance_of`` (a saved labels file), and Segment's layer record. The parts
are ``Segmenter.record`` (how the network ran), ``Postprocess.record`` and
``litemedsam.provenance`` (the box engine)."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from pathlib import Path


def timestamp(when=None) -> str:
    """``when`` as a record's time: a datetime as ISO 8601 to the second, text as it is;
    default now, in UTC."""
    if when is None:
        when = _dt.datetime.now(_dt.timezone.utc)
    return when.isoformat(timespec="seconds") if isinstance(when, _dt.datetime) else str(when)


def model_record(net) -> dict:
    """Which model a result came from: its name, file and SHA-256 (where it was loaded from a
    file: ``load_model`` notes both in its ``metadata``), else its class's name."""
    meta = getattr(net, "metadata", None) or {}
    source = meta.get("source")
    return {"model": Path(source).stem if source else type(net).__name__,
            "model_file": source, "model_sha256": meta.get("sha256")}


def model_file_record(model) -> dict:
    """{model: stem, model_file, model_sha256} of a model file or registered name (the file
    and hash None when it is neither, so the record never names a file it did not read)."""
    from ..model.checkpoint import file_sha256
    from ..model.registry import resolve_model_path

    try:
        path = resolve_model_path(model)
        return {"model": path.stem, "model_file": str(path), "model_sha256": file_sha256(path)}
    except (ValueError, OSError):
        return {"model": str(model), "model_file": None, "model_sha256": None}


def provenance(*parts: Mapping, source=None, model: Mapping | None = None, when=None,
               stamp: str = "date", version: bool = True) -> dict:
    """One provenance record: ``{"source": str(source)}`` (when given), the ``model`` record,
    the ``parts`` in order (a later part's keys replace an earlier one's), then
    ``package_version`` (unless ``version`` is False) and the time under ``stamp``
    (``timestamp(when)``; no time when ``stamp`` is empty). The source, version and time are
    never replaced by a part's keys."""
    from .. import __version__

    head = {} if source is None else {"source": str(source)}
    record = {**head, **(model or {})}
    for part in parts:
        record.update(part)
    record.update(head)
    if version:
        record["package_version"] = __version__
    if stamp:
        record[stamp] = timestamp(when)
    return record
