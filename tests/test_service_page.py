"""The page `autofit serve` serves at `/`, used as a person would in headless Chromium against a
real server: a wrong token is refused, the right one accepted and kept for the tab, a broken and
a good dataset uploaded and a run submitted through the forms, a second run stopped while it
queues, the first watched live over its event stream (cut once and resumed with Last-Event-ID)
until it finishes, its report viewed and its model downloaded; no console error, no uncaught
exception, no request to another host. The page's SSE parser is also checked on its own."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import service_server
from chromium import browser

import autofit.service
from autofit.events import PHASE_COLOURS

MINUTES = 0.75  # 0.3 and 0.5 leave too little after setup on a loaded 2-core machine
FINISH_S = 300.0  # the run's own 45 s, its setup and the page's polling, on 2 shared cores
STATE = """JSON.stringify({status: document.getElementById('live-status').textContent,
  phase: document.getElementById('live-phase').textContent,
  stream: document.getElementById('live-stream').textContent,
  error: document.getElementById('live-error').textContent,
  runs: document.getElementById('runs-message').textContent})"""
SEEN = """(() => { window.seen = {status: [], phase: []};
  for (const key of ['status', 'phase']) {
    const el = document.getElementById('live-' + key);
    new MutationObserver(() => { const v = window.seen[key];
      if (v[v.length - 1] !== el.textContent) v.push(el.textContent); })
      .observe(el, {childList: true, characterData: true, subtree: true}); } })()"""
BAR = """[...document.querySelectorAll('#budget-bar span')].map(s =>
  [s.dataset.phase, getComputedStyle(s).backgroundColor, parseFloat(s.style.width)])"""


PARSE = """(async () => {
  const got = [];
  dispatch = (view, type, data) => got.push([type, data, view.lastId]);
  const chunks = ['id: 1\\nevent: start\\ndata: {"a":', '1}\\r', '\\n\\r\\n: keep-alive\\n\\n',
    'id: 2\\r\\nevent: phase\\r\\ndata: x\\r\\ndata:y\\r\\n\\r\\ndata: no id\\n\\nretry: 50\\n',
    'id: 3\\ndata\\n\\nevent: end\\ndata: {}\\n\\nid: 4\\ndata: unterminated'];
  const body = new ReadableStream({ start(c) {
    for (const chunk of chunks) c.enqueue(new TextEncoder().encode(chunk));
    c.close(); } });
  const view = { lastId: null };
  const retry = await readEvents(view, body.getReader());
  return { got, retry, lastId: view.lastId }; })()"""


def rgb(hex_colour: str) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


def streams_of(page, run_id: str) -> list[dict[str, str]]:
    """The headers of each request the page made for the run's event stream."""
    page.evaluate("1")  # reads the events that came meanwhile
    return [{k.lower(): v for k, v in e["params"]["request"]["headers"].items()}
            for e in page.pipe.events if e.get("method") == "Network.requestWillBeSent"
            and e["params"]["request"]["url"].endswith(f"/v1/runs/{run_id}/events")]


@pytest.fixture
def chromium_session():
    if browser() is None:
        if os.environ.get("AUTOFIT_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed and AUTOFIT_REQUIRE_BROWSER is set")
        pytest.skip("chromium is not installed (Debian package chromium); .ci/run installs it")
    from chromium_session import Session

    with Session() as session:
        yield session


@pytest.fixture
def server(tmp_path):
    with service_server.running(tmp_path / "serve") as running:
        yield running


def test_the_page_uploads_submits_and_watches_a_run_to_its_report_and_model(
        chromium_session, server, tmp_path, request):
    url, token, api = server.url, server.token, server.client()
    request.addfinalizer(api.close)
    page = chromium_session
    started = time.time()
    page.navigate(url + "/")
    assert page.evaluate("document.getElementById('app').hidden") is True
    assert page.evaluate("document.activeElement.id") == "token"

    # a wrong token: refused with a clear message, the token box asked again
    page.fill("#token", "not-a-token")
    page.click("#token-save")
    message = page.wait("document.getElementById('auth-message').textContent", 20)
    assert "401" in message and "token" in message
    assert page.evaluate("document.getElementById('app').hidden") is True
    assert page.evaluate("sessionStorage.getItem('autofit-token')") is None
    page.collect()
    assert page.errors and all("status of 401" in e for e in page.errors), page.errors
    page.errors.clear()

    page.fill("#token", token)
    page.click("#token-save")
    page.wait("!document.getElementById('app').hidden", 20,
              what="document.getElementById('auth-message').textContent")
    assert page.evaluate("sessionStorage.getItem('autofit-token')") == token

    # a broken upload: the server's one-line error, shown as it said it
    (tmp_path / "broken.npz").write_bytes(b"not a zip archive")
    page.set_files("#upload-file", [tmp_path / "broken.npz"])
    page.click("#upload-submit")
    page.wait("document.getElementById('upload-result').classList.contains('error')", 30)
    refused = page.evaluate("document.getElementById('upload-result').textContent")
    assert refused.startswith("error 400: ") and "\n" not in refused, refused
    page.collect()
    assert page.errors and all("status of 400" in e for e in page.errors), page.errors
    page.errors.clear()

    # upload: the answer shows the dataset, and the run form offers it
    data = service_server.digits_npz(tmp_path / "digits.npz")
    images = len(np.load(data)["y_train"])
    page.set_files("#upload-file", [data])
    page.fill("#upload-name", "digits <8x8>")
    page.click("#upload-submit")
    page.wait("document.getElementById('upload-result').classList.contains('ok')"
              " || document.getElementById('upload-result').classList.contains('error')", 60)
    answer = page.evaluate("document.getElementById('upload-result').textContent")
    assert "digits <8x8>" in answer and f"{images} images" in answer, answer
    assert "10 classes: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9" in answer, answer
    dataset = page.evaluate("document.getElementById('upload-result').dataset.dataset")
    assert page.evaluate("document.getElementById('run-dataset').value") == dataset
    # the name went in as text, not as markup
    assert page.evaluate("document.querySelectorAll('#upload-result *, option *').length") == 0

    # submit a run; the live view opens on it
    page.fill("#run-minutes", str(MINUTES))
    page.fill("#run-max-params", "150k")
    page.fill("#run-seed", "0")
    page.click("#run-submit")
    page.wait("document.getElementById('live').dataset.run", 30,
              what="document.getElementById('run-result').textContent")
    run_id = page.evaluate("document.getElementById('live').dataset.run")
    assert run_id in page.evaluate("document.getElementById('run-result').textContent")

    # a second run queues behind it; the live view's stop button takes it off the queue
    page.click("#run-submit")
    page.wait(f"(id => id && id !== '{run_id}')(document.getElementById('live').dataset.run)",
              30, what="document.getElementById('run-result').textContent")
    queued = page.evaluate("document.getElementById('live').dataset.run")
    page.wait("document.getElementById('live-status').dataset.status === 'queued'"
              " && !document.getElementById('live-stop').hidden", 10, what=STATE)
    assert "(position " in page.evaluate("document.getElementById('live-status').textContent")
    page.click("#live-stop")
    page.wait("document.getElementById('live-stream').textContent === 'event stream ended'"
              " && document.getElementById('live-status').dataset.status === 'stopped'", 30,
              what=STATE)
    assert page.evaluate("document.getElementById('live-stop').hidden") is True
    page.wait(f"document.querySelector('#runs-table tr[data-run=\"{queued}\"]')"
              ".textContent.includes('stopped')", 10)

    # back to the first run, from the runs table
    page.evaluate(SEEN)
    before = len(streams_of(page, run_id))  # its stream until the second run's view took over
    page.click(f'#runs-table button[aria-label="watch run {run_id}"]')
    page.wait(f"document.getElementById('live').dataset.run === '{run_id}'", 5)

    # cut its stream once a few events are in: the page resumes it with Last-Event-ID
    page.wait("Number(document.getElementById('live').dataset.events) >= 2", FINISH_S,
              what=STATE)
    page.evaluate("live.reader.cancel()")  # as if the connection had dropped
    deadline = time.time() + 30
    while len(streams_of(page, run_id)) < before + 2:
        assert time.time() < deadline, "the page did not reconnect its event stream"
        time.sleep(0.5)
    page.collect()
    cut = [e for e in page.errors if "canceled: True" in e]  # the switch and the cut
    page.errors = [e for e in page.errors if e not in cut]

    page.wait("document.getElementById('live-stream').textContent === 'event stream ended'",
              FINISH_S, every=1.0, what=STATE)
    page.wait("!['queued', 'running'].includes("
              "document.getElementById('live-status').dataset.status)", 10, what=STATE)
    assert page.evaluate("document.getElementById('live-status').dataset.status") == "finished", \
        page.evaluate(STATE)
    page.wait("document.querySelector('#runs-table tr[data-run=\"" + run_id + "\"]')"
              ".textContent.includes('finished')", 10)
    watched_s = time.time() - started

    run = api.get(f"/v1/runs/{run_id}").raise_for_status().json()
    lines = [json.loads(line) for line in
             api.get(f"/v1/runs/{run_id}/events.jsonl").raise_for_status().text.splitlines()]
    assert run["status"] == "finished" and run["test_accuracy"] is not None

    # every line arrived once, across the cut
    live = page.evaluate("({...document.getElementById('live').dataset})")
    assert int(live["events"]) == len(lines) and live["lastEventId"] == str(len(lines))
    streams = streams_of(page, run_id)[before:]
    assert len(streams) >= 2 and "last-event-id" not in streams[0]
    assert all(int(h["last-event-id"]) >= 2 for h in streams[1:]), streams

    # what the live view saw, and what it shows now
    seen = page.evaluate("window.seen")
    assert seen["status"][-1] == "finished" and "running" in seen["status"], seen
    test_accuracy = page.evaluate("document.getElementById('live-test-accuracy').dataset.value")
    assert float(test_accuracy) == pytest.approx(run["test_accuracy"])
    assert page.evaluate("document.getElementById('live-test-accuracy').textContent") == \
        f"{100 * run['test_accuracy']:.1f}%"
    phases = ["setup"] + [e["phase"] for e in lines if e["kind"] == "phase"]
    assert seen["phase"][-1] == phases[-1] == "report"
    bar = page.evaluate(BAR)
    assert [name for name, _, _ in bar] == phases
    assert all(colour == rgb(PHASE_COLOURS[name]) for name, colour, _ in bar), bar
    times = [0.0] + [e["t"] for e in lines if e["kind"] == "phase"] + [lines[-1]["t"]]
    for (name, _, width), since, until in zip(bar, times, times[1:], strict=False):
        assert width == pytest.approx(100 * (until - since) / run["budget_s"], abs=0.05), name
    assert sum(width for _, _, width in bar) <= 100.0 + 1e-6

    trials = sorted({e["trial"] for e in lines if e["kind"] == "trial_start"})
    rows = page.evaluate("[...document.querySelectorAll('#trials-table tbody tr')]"
                         ".map(r => Number(r.dataset.trial))")
    assert sorted(rows) == trials
    no_search = page.evaluate("document.getElementById('no-search').hidden")
    assert no_search is bool(trials)
    if trials:
        assert page.evaluate("document.getElementById('live-best').textContent").startswith(
            "best so far: trial ")

    # the report, viewed in the page's sandboxed frame; the model, downloaded
    page.click("#view-report")
    report = page.wait("""(() => { const f = document.getElementById('report-frame');
      const d = !f.hidden && f.contentDocument;
      return d && d.readyState === 'complete' && d.querySelector('h2') &&
        JSON.stringify({status: d.querySelector('.status').textContent,
                        images: [...d.images].map(i => i.complete && i.naturalWidth > 0)}); })()""",
                       30)
    report = json.loads(report)
    assert report["status"] == "finished" and report["images"] and all(report["images"])
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    page.allow_downloads(downloads)
    page.click("#get-model")
    guid = page.wait_download("model.onnx")
    assert (downloads / guid).read_bytes() == api.get(f"/v1/runs/{run_id}/model.onnx").content

    # a reload keeps the token for the tab
    page.navigate(url + "/")
    page.wait("!document.getElementById('app').hidden && "
              "document.querySelector('#runs-table tbody tr')", 20)

    page.collect()
    assert page.errors == []
    server_host = urlsplit(url).netloc
    foreign = [u for u in page.requests
               if not u.startswith(("data:", "blob:", "about:"))
               and urlsplit(u).netloc != server_host]
    assert foreign == [], foreign
    print(f"\nwatched run {run_id} to its end in {watched_s:.0f}s: {len(lines)} events, "
          f"{len(trials)} trials, test accuracy {run['test_accuracy']:.4f}, "
          f"{len(page.requests)} requests")


def test_the_page_parses_server_sent_events_as_the_standard_says(chromium_session):
    """Fields split across reads, CRLF and LF, comments, multi-line data, an event with no
    data, the id kept for Last-Event-ID, and a message the stream cut off is not dispatched."""
    page = chromium_session
    page.navigate((Path(autofit.service.__file__).parent / "page.html").as_uri())
    found = page.evaluate(PARSE)
    assert found["got"] == [["start", '{"a":1}', "1"], ["phase", "x\ny", "2"],
                            ["message", "no id", "2"], ["message", "", "3"],
                            ["end", "{}", "3"]]
    assert found["retry"] == 50 and found["lastId"] == "3"
    page.collect()
    assert page.errors == [] and all(u.startswith(("file:", "data:")) for u in page.requests)
