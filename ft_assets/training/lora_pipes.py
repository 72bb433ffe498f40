"""The LoRA training process, launched by Dagster Pipes: ``python -m ft_assets.training.lora_pipes JOB.json``.

The job file names the base model folder, the splits, the output folder, the settings and a file
that receives the error if training fails (so the asset can say why). Every
process reads it, so launchers that start several (``accelerate launch``, ``torchrun``) work;
only the first process (rank 0) talks to Dagster: training progress goes to the Dagster log as
it happens and the summary comes back as a custom message. Run without Dagster, it logs to
standard error.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from ft_assets.training.process_group import exit_with_parent


def run_job(job: dict[str, Any], log: Any) -> dict[str, Any]:
    """Train the adapter the job describes; return the training summary."""
    from ft_assets.training.lora import LoraSettings, train_lora

    settings = dict(job["settings"])
    settings["target_modules"] = tuple(settings["target_modules"])
    return train_lora(
        job["base_dir"],
        job["train_path"],
        job.get("validation_path"),
        Path(job["out_dir"]),
        LoraSettings(**settings),
        log=log,
        scratch=Path(job["scratch"]) if job.get("scratch") else None,
        init_adapter=Path(job["init_adapter"]) if job.get("init_adapter") else None,
    )


def main(argv: list[str]) -> int:
    """Entry point: read the job file, train, report."""
    exit_with_parent()
    if len(argv) != 1:
        print("usage: python -m ft_assets.training.lora_pipes JOB.json", file=sys.stderr)
        return 2
    job = json.loads(Path(argv[0]).read_text())
    first_process = os.environ.get("RANK", "0") == "0"
    launched_by_dagster = first_process and "DAGSTER_PIPES_CONTEXT" in os.environ
    if launched_by_dagster:
        from dagster_pipes import open_dagster_pipes

        session: Any = open_dagster_pipes()
    else:
        session = nullcontext()
    try:
        with session as pipes:
            if pipes is not None:
                summary = run_job(job, pipes.log.info)
                pipes.report_custom_message({"training_summary": summary})
            else:
                logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
                logger = logging.getLogger("ft_assets.lora")
                run_job(job, logger.info if first_process else logger.debug)
    except Exception as error:
        if first_process and job.get("error_file"):
            Path(job["error_file"]).write_text(f"{type(error).__name__}: {error}")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
