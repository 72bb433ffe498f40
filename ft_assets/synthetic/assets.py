"""The synthetic examples asset. Generation arrives with the API issue; until then the set is empty."""

import json

import dagster as dg

from ft_assets.artifacts import ArtifactRef
from ft_assets.code_versions import source_version
from ft_assets.resources import ArtifactStore, LineageStore

NOT_BUILT = "synthetic generation is not built yet; this set is intentionally empty"


@dg.asset(
    group_name="data",
    code_version=source_version("ft_assets.synthetic.assets"),
    kinds={"jsonl"},
    description="Synthetic chat examples generated from raw examples and source documents. For now always empty "
    "(provider: none): generation is not built yet.",
)
def synthetic_examples(
    context: dg.AssetExecutionContext,
    raw_examples: ArtifactRef,
    source_documents: ArtifactRef,
    artifacts: ArtifactStore,
    lineage: LineageStore,
) -> dg.Output[ArtifactRef]:
    """Write an empty, honestly labelled set of synthetic examples."""
    generator = {"provider": "none", "examples": 0, "note": NOT_BUILT}
    with artifacts.stage("synthetic_examples") as staging:
        (staging / "examples.jsonl").write_bytes(b"")
        (staging / "generator.json").write_text(json.dumps(generator, indent=2, sort_keys=True))
        ref = artifacts.publish(staging, "synthetic_examples")
    context.log.warning(f"synthetic_examples: {NOT_BUILT}")
    metadata = lineage.record(context, ref, [raw_examples, source_documents])
    return dg.Output(
        ref,
        data_version=dg.DataVersion(ref.version),
        metadata={**metadata, **generator, "dagster/row_count": 0},
    )
