"""The files of an evaluation artifact: scores and predictions (its version), timings (a report beside it).

Latencies differ from run to run, so they are written to ``timings.json``, which is left out of
the artifact's version: the same models on the same test split give the same evaluation version.
Reading joins them back, so callers see whole rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ft_assets.numbers import finite

RESULTS = "evaluations.json"
PREDICTIONS = "predictions.parquet"
PREDICTIONS_JSON = "predictions.json"  # written by the Azure evaluation
TIMINGS = "timings.json"
REPORTS = (TIMINGS,)
MODEL_TIMINGS = ("latency_p50_ms", "latency_p95_ms")
PREDICTION_TIMINGS = ("latency_ms",)


def json_number(value: Any) -> Any:
    """Make numpy numbers JSON-serializable (``default=`` of ``json.dumps``)."""
    return value.item() if hasattr(value, "item") else str(value)


def write_results(folder: Path, rows: list[dict[str, Any]], predictions: list[dict[str, Any]]) -> None:
    """Write evaluation rows and predictions to ``folder``, their timings apart in ``timings.json``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    timings = {
        "models": {row["model"]: {key: finite(row.get(key)) for key in MODEL_TIMINGS} for row in rows},
        "predictions": [{key: finite(p.get(key)) for key in PREDICTION_TIMINGS} for p in predictions],
    }
    untimed_rows = [{k: v for k, v in row.items() if k not in MODEL_TIMINGS} for row in rows]
    (folder / RESULTS).write_text(json.dumps(untimed_rows, indent=2, sort_keys=True, default=json_number))
    untimed = [{k: v for k, v in p.items() if k not in PREDICTION_TIMINGS} for p in predictions]
    table = pa.Table.from_pylist([{**p, "scores": json.dumps(p["scores"], sort_keys=True)} for p in untimed])
    pq.write_table(table, folder / PREDICTIONS)
    (folder / TIMINGS).write_text(json.dumps(timings, indent=1, sort_keys=True))


def read_results(folder: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return the evaluation rows and predictions of an evaluation folder, timings joined back in."""
    import pyarrow.parquet as pq

    rows = json.loads((folder / RESULTS).read_text())
    if (folder / PREDICTIONS).exists():
        predictions = [
            {**p, "scores": json.loads(p["scores"])} for p in pq.read_table(folder / PREDICTIONS).to_pylist()
        ]
    elif (folder / PREDICTIONS_JSON).exists():
        predictions = json.loads((folder / PREDICTIONS_JSON).read_text())
    else:
        predictions = []
    if (folder / TIMINGS).exists():
        timings = json.loads((folder / TIMINGS).read_text())
        rows = [{**row, **timings["models"].get(row["model"], {})} for row in rows]
        predictions = [{**p, **t} for p, t in zip(predictions, timings["predictions"], strict=True)]
    return rows, predictions
