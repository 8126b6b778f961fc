"""The HTML report and comparison of a small real run (every stage but EuroEval, on tiny models), opened in headless
Chromium as a person would open the file: every section there, no image broken. The screenshots are kept in the
test's folder (`pytest --basetemp=...` keeps them where you can look)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, background, free_port, make_config, run, write_jsonl
from croco.cli import main
from croco.errors import CrocoError
from croco.report import SECTIONS

# Written into a copy of the page: once everything has loaded, the body carries how many images there are and how
# many did not decode, and --dump-dom prints the body as it is then.
COUNT_IMAGES = """<script>addEventListener("load", () => {
  const broken = [...document.images].filter((image) => !image.complete || image.naturalWidth === 0);
  document.body.dataset.images = document.images.length;
  document.body.dataset.broken = broken.length;
});</script>"""


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium, installed with apt-get where it is missing (the test set-up runs as root)."""
    if not shutil.which("chromium") and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "chromium"], capture_output=True)
    if not shutil.which("chromium"):
        pytest.skip("Debian's chromium is not installed and apt-get could not install it (not root, or no network).")
    return shutil.which("chromium")


def open_in_chromium(chromium: str, page: Path, out: Path) -> tuple[str, Path]:
    """(the DOM after the page loaded, with the image counts on the body; a screenshot of the page's top)."""
    probe = out / f"{page.stem}-probe.html"
    probe.write_text(page.read_text().replace("</body>", COUNT_IMAGES + "</body>"))
    flags = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000"]
    dom = subprocess.run([*flags, "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120).stdout
    shot = out / f"{page.stem}.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1200,2600", page.as_uri()], timeout=120, check=True)
    return dom, shot


# Run in a page of the Prefect UI (a single-page app that draws the artifact after asking the API): once the
# artifact's images are there and decoded, how many there are, how many are broken, and the report's section titles.
UI_IMAGES = """(async () => {
  for (let waited = 0; waited < 90000 && document.querySelectorAll("article img").length === 0; waited += 500) {
    await new Promise((done) => setTimeout(done, 500));
  }
  const images = [...document.querySelectorAll("article img")];
  await Promise.all(images.map((image) => image.decode().catch(() => null)));
  return JSON.stringify({
    images: images.length,
    broken: images.filter((image) => image.naturalWidth === 0).length,
    headings: [...document.querySelectorAll("article h2")].map((heading) => heading.textContent.trim()),
  });
})()"""


def in_chromium(chromium: str, url: str, expression: str, shot: Path, log: Path) -> dict:
    """The value of an async `expression` evaluated in the page at `url`, through the Chrome DevTools protocol;
    then a screenshot of the page."""
    from websockets.sync.client import connect

    port = free_port()
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--remote-debugging-port={port}"]
    with background([*command, "--window-size=1200,2000", "about:blank"], f"http://127.0.0.1:{port}/json/version", log):
        opened = urllib.request.Request(f"http://127.0.0.1:{port}/json/new?about:blank", method="PUT")
        with urllib.request.urlopen(opened) as answer:
            page = json.load(answer)
        with connect(page["webSocketDebuggerUrl"], max_size=None) as socket:
            sent, events = iter(range(1, 1000)), []

            def answer_to(method: str, **params) -> dict:
                """The reply to a command; the events that come before it are kept in `events`."""
                number = next(sent)
                socket.send(json.dumps({"id": number, "method": method, "params": params}))
                while True:
                    message = json.loads(socket.recv(timeout=180))
                    if message.get("id") == number:
                        assert "error" not in message, f"{method}: {message['error']}"
                        return message["result"]
                    events.append(message.get("method"))

            answer_to("Page.enable")
            answer_to("Page.navigate", url=url)
            while "Page.loadEventFired" not in events:  # evaluated sooner, it would run in the blank page before
                events.append(json.loads(socket.recv(timeout=180)).get("method"))
            found = answer_to("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
            shot.write_bytes(base64.b64decode(answer_to("Page.captureScreenshot", format="png")["data"]))
    return json.loads(found["result"]["value"])


def image_counts(dom: str) -> tuple[int, int]:
    found = re.search(r'<body data-images="(\d+)" data-broken="(\d+)"', dom)
    assert found, "the page's load event never ran"
    return int(found[1]), int(found[2])


@pytest.fixture(scope="module")
def two_variants(tmp_path_factory, tiny_models, smollm_dir):
    """Two configs in one storage, as the demo's variants would be: pairs from in-language answers only, and pairs
    whose chosen answer must be in the prompt's language. Generation and scoring are shared (cache hits)."""
    folder = tmp_path_factory.mktemp("report")
    prompts = write_jsonl(
        folder / "prompts.jsonl",
        [
            {"prompt_id": f"p{i}", "language": lang, "messages": [{"role": "user", "content": f"Question {i}?"}]}
            for lang in ("en", "da")
            for i in range(4)
        ],
    )
    questions = [
        {
            "question_id": f"q{i}",
            "prompt": f"Question {i}?",
            "category": "hard_prompt",
            "subcategory": "math",
            "language": lang,
        }
        for lang in ("en", "da")
        for i in range(4)
    ]
    sections = {
        "evaluate": {"run_adapters": [], "models": {"other": {"path": str(smollm_dir)}}},
        "arena": {"prompts": {"path": str(write_jsonl(folder / "arena.jsonl", questions))}, "max_new_tokens": 6},
        "judge": {"kind": "reward"},
        "euroeval": {"enabled": False},
    }
    base = make_config(folder / "store", tiny_models, [{"path": str(prompts)}], name="in-language", **sections)
    variant = make_config(
        folder / "store",
        tiny_models,
        [{"path": str(prompts)}],
        name="chosen-in-language",
        pair={"require_language": "chosen"},
        **sections,
    )
    return folder, run(base), run(variant), base


def test_the_html_report_opens_without_a_network_shows_every_section_and_no_broken_image(two_variants, chromium):
    folder, result, *_ = two_variants
    page = Path(result["html"])
    assert page.name == "report.html" and page.parent.parent.parent.name == "reports"
    html = page.read_text()
    assert not re.search(r'(src|href)="(?!data:|#)', html)  # nothing to fetch: every image inside, no other link
    dom, shot = open_in_chromium(chromium, page, folder)
    for anchor, title, _ in SECTIONS:
        assert f'<section id="{anchor}">' in dom and f"<h2>{title}</h2>" in dom
    euroeval = dom.split('<section id="euroeval">')[1].split("</section>")[0]
    assert "Not run in this run: no euroeval unit" in euroeval
    arena = dom.split('<section id="arena">')[1].split("</section>")[0]
    assert "95% CI" in arena and "order disagreement" in arena
    images, broken = image_counts(dom)
    # rewards, two margins, SFT and DPO curves, win rates
    assert images >= 5 and broken == 0
    assert shot.stat().st_size > 10_000
    assert Path(page.parent.parent / "report.html").read_text() == html  # the newest, where a person looks first


def test_croco_report_writes_a_runs_report_again_from_its_record(two_variants, capsys):
    folder, result, *_ = two_variants
    page = Path(result["html"])
    page.unlink()
    assert main(["report", "in-language", "--storage", str(folder / "store")]) == 0
    assert capsys.readouterr().out.strip() == str(page) and '<section id="training">' in page.read_text()
    assert main(["report", str(folder / "store.yaml")]) == 0  # the config file the last run saved: the variant's
    assert "/reports/chosen-in-language/" in capsys.readouterr().out
    assert main(["report", "nothing-like-it", "--storage", str(folder / "store")]) == 2
    assert "no completed run of a config named nothing-like-it" in capsys.readouterr().err


def test_a_comparison_of_two_variants_has_a_table_and_chart_per_metric_and_marks_unsupported_differences(
    two_variants, chromium, capsys
):
    folder, first, second, _ = two_variants
    assert main(["compare", first["run_id"], "chosen-in-language", "--storage", str(folder / "store")]) == 0
    page = Path(capsys.readouterr().out.strip())
    dom, shot = open_in_chromium(chromium, page, folder)
    # Generation and scoring were shared: equal values, whose intervals overlap.
    rewards = dom.split("<h2>mean reward</h2>")[1].split("</section>")[0]
    assert rewards.count("≈") == 2
    for metric in ("mean reward", "samples in the prompt's language %", "final training loss", "arena win rate %"):
        assert f"<h2>{metric}</h2>" in dom
    images, broken = image_counts(dom)
    assert images == 4 and broken == 0


def test_the_report_artifact_shows_every_section_and_its_images_in_the_prefect_ui(two_variants, chromium, tmp_path):
    """The report as the UI shows it: a Prefect server with its UI, a cached rerun publishing its artifacts there,
    and the artifact's page opened in Chromium."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.settings import PREFECT_API_URL, temporary_settings

    *_, cfg = two_variants
    port = free_port()
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PREFECT_HOME": str(tmp_path),
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",  # the UI asks port 4200 otherwise
    }
    env.pop("PREFECT_API_URL", None)
    server = ["bash", str(REPO / "infra" / "prefect-server.sh"), str(port)]
    with background(server, f"http://127.0.0.1:{port}/api/health", tmp_path / "server.log", env=env):
        with temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{port}/api"}):
            run(cfg)
            with get_client(sync_client=True) as client:
                wanted = ArtifactFilter(key=ArtifactFilterKey(any_=["croco-in-language-2-report"]))
                [artifact] = client.read_artifacts(artifact_filter=wanted)
        url = f"http://127.0.0.1:{port}/artifacts/artifact/{artifact.id}"
        shown = in_chromium(chromium, url, UI_IMAGES, tmp_path / "artifact.png", tmp_path / "chromium.log")
    assert shown["headings"] == [title for _, title, _ in SECTIONS]
    assert shown["images"] >= 5 and shown["broken"] == 0


def test_the_compare_flow_publishes_its_tables_and_charts_as_one_artifact(two_variants):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    from croco.flows.compare import compare

    folder, first, *_ = two_variants
    page = Path(compare(runs=[first["run_id"], "chosen-in-language"], storage=str(folder / "store")))
    assert page.name == "compare.html" and page.is_file()
    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["croco-compare"]))
        )
    assert artifact.data.count("](data:image/png;base64,") == 4 and re.search(r"\| da \| -?\d+\.\d\d \[", artifact.data)
    with pytest.raises(CrocoError, match=r"compare needs two runs or more \(got 1\)"):
        compare(runs=[first["run_id"]], storage=str(folder / "store"))
