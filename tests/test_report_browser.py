"""The backtest report in a real browser: Debian's chromium, driven by Playwright.

`make test` installs chromium when it is missing (and apt-get can); Playwright drives that
binary (no browser download). The page must load with no console error, no failed request and
no broken image, stay one self-contained file, and its screenshots (top and whole page) are
saved under the test's tmp dir for a person to look at.
"""

from __future__ import annotations

import json
import shutil

import pytest

from charlie.backtest.report import output_paths

from .test_backtest import REPO, SAMPLES, params_file, write_eval_csv

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    BROWSER is None, reason="no chromium on PATH (`make test` installs Debian's when it can)"
)


def _report(tmp_path, cli) -> tuple:
    """The demo sample's predictions (the thesis labels) backtested, with an evaluation's
    metrics beside them (the committed demo's), as `dvc repro` lays them out."""
    from charlie.parsing import parse_files

    records = parse_files(sorted((SAMPLES / "xml").glob("*.xml"))).records
    rows = [{"uid": r["uid"], "ticker": r["ticker"], "as_of_date": r["as_of_date"],
             "true_action": r["action"], "pred_action": r["action"], "correct": True,
             "truncated": False}
            for r in records if "2025-01-01" <= r["as_of_date"] <= "2025-04-24"]  # fmt: skip
    eval_csv = write_eval_csv(tmp_path / "eval_results.csv", rows)
    shutil.copy(REPO / "results" / "eval_metrics.json", tmp_path / "eval_metrics.json")
    out = tmp_path / "backtests" / "baseline.csv"
    assert cli(["backtest", "--params", str(params_file(tmp_path, SAMPLES / "prices")),
                "--eval-csv", str(eval_csv), "--out", str(out)]) == 0  # fmt: skip
    return output_paths(out)["report"], json.loads((tmp_path / "eval_metrics.json").read_text())


def test_the_report_renders_in_chromium_without_errors_or_broken_images(tmp_path):
    from playwright.sync_api import sync_playwright

    from charlie.cli import main

    report, evaluation = _report(tmp_path, main)
    html = report.read_text()
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=BROWSER, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 1000})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
            page.goto(report.as_uri(), wait_until="load")
            images = page.evaluate(
                "[...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 0])"
            )
            headings = page.evaluate("[...document.querySelectorAll('h2')].map(h => h.innerText)")
            baselines = page.evaluate("[...document.querySelectorAll('table')][0].innerText")
            page.screenshot(path=tmp_path / "report-top.png")
            page.screenshot(path=tmp_path / "report-full.png", full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert len(images) == 6 and all(ok for _, ok in images), images
    assert headings[:2] == ["The model against its baselines (evaluation, test split)",
                            "Strategy against the benchmark"]  # fmt: skip
    for name in ("Returns by period", "Risk over time", "Worst drawdowns", "Trades"):
        assert name in headings
    for name in evaluation["baselines"]:
        assert (name if name != "model" else "model (fine-tuned)") in baselines
    for shot in ("report-top.png", "report-full.png"):
        assert (tmp_path / shot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
