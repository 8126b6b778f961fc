"""The README's way to load an old version with `datasets` works as printed, offline, for a local and an S3 root."""

import json
import re
import subprocess
import sys

from conftest import REPO
from croco.records import SAMPLE
from croco.storage import Storage


def readme_snippets() -> tuple[str, str]:
    """The Python block after "loads with `datasets`", and the inline croco-reader expression after it."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("Every Parquet version loads with") :]
    start = section.index("```python\n") + len("```python\n")
    block = section[start : section.index("\n```", start)]
    reader = re.search(r"`(datasets\.Dataset\(Storage\(.*?\)\))`", section).group(1)
    return block, reader


def test_the_readme_loads_a_local_and_an_s3_version_under_hf_datasets_offline(tmp_path, s3_server, monkeypatch):
    for name, value in {
        **s3_server,
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
    }.items():
        monkeypatch.setenv(name, value)
    samples = [
        {
            **dict.fromkeys(SAMPLE.names, "x"),
            "prompt_id": f"p{i}",
            "sample_index": 0,
            "prompt_tokens": 1,
            "completion_tokens": 1,
            "detected_confidence": 0.9,
            "line_pass_rate": None,
        }
        for i in range(3)
    ]
    prefix = f"s3://croco/{tmp_path.name}"
    for root in (str(tmp_path / "runs/demo"), prefix):
        version = Storage(root).version("generate", "da", "k1")
        version.write_shard("00000", samples[:2], SAMPLE)
        version.write_shard("00001", samples[2:], SAMPLE)
        version.commit({"records_in": 3, "records_out": 3, "skipped": {}})

    block, reader = readme_snippets()
    endpoint = s3_server["AWS_ENDPOINT_URL"]
    code = (
        "\n".join(
            [
                "import datasets, json",
                "from croco.records import SAMPLE",
                "from croco.storage import Storage",
                block,
                f"checked = {reader}",
                "print(json.dumps([sorted(row['prompt_id'] for row in loaded) for loaded in (local, remote, checked)]))",
            ]
        )
        .replace("<key>", "k1")
        .replace("s3://bucket/prefix", prefix)
        .replace("http://127.0.0.1:5555", endpoint)
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == [["p0", "p1", "p2"]] * 3
