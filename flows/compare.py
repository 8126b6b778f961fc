"""Runs side by side (croco.compare): the comparison's tables and charts as an artifact of the flow run."""

from __future__ import annotations

from prefect import flow

from croco.compare import compare as compare_runs
from croco.redaction import NoCredential
from croco.summaries import publish_markdown


@flow(name="croco-compare", description="One table and one chart per metric across croco runs.")
def compare(runs: list[NoCredential], storage: NoCredential | None = None) -> str:
    """Compare two runs or more; the first is the reference whose intervals mark a difference as unsupported.

    Args:
        runs: Config files or URIs (their newest completed run), or, with `storage`, run ids or config names.
        storage: Storage root of the runs given by run id or config name, e.g. runs/demo.
    """
    html, markdown = compare_runs(runs, storage)
    publish_markdown(markdown, "croco-compare", f"croco comparison of {', '.join(runs)}")
    return html
