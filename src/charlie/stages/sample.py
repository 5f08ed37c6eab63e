"""Generate the synthetic sample corpus: theses XML and daily prices, deterministically.

Writes <out-dir>/xml/<TICKER>.xml (the seed's thesis format), <out-dir>/prices/<TICKER>.csv
(date, open, high, low, close, adj_close, volume) and <out-dir>/manifest.json (what was
generated and what a correct parse must report). The action rule, the edge built into the
returns and the defects are documented in charlie.sample and in the README.

The bundled sample in data/samples/ is exactly `charlie sample` with params.yaml's defaults;
the benchmark corpus (the real volume, ~19 MB) is
`charlie sample --tickers 20 --detail full --no-ipo-ticker --out-dir DIR`. Past the 20 names,
tickers are numbered rounds of them (ACME2 ... TIDE2, ACME3 ...), so a larger corpus keeps the
first 20 byte for byte (benchmarks/bench_scaling.py generates 100 and 500).
"""

from __future__ import annotations

import argparse
import logging

from charlie.config import SampleParams, add_flags, load_params
from charlie.io import atomic_outputs
from charlie.logs import setup_logging
from charlie.progress import progress_bar
from charlie.sample import SampleSpec, iter_generate, manifest_json, render_prices_csv, render_xml

log = logging.getLogger("charlie.sample")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags override params.yaml's `sample` section."""
    add_flags(parser, SampleParams, "sample")


def run(args: argparse.Namespace) -> int:
    """Generate and write the sample; returns the exit code."""
    params = load_params(args).sample
    setup_logging("sample")
    log.debug("sample: %s", params.model_dump_json())

    spec = SampleSpec(**params.model_dump(exclude={"out_dir"}))
    out = params.out_dir
    samples, paths, texts = [], [], []
    with progress_bar(total=spec.tickers, desc="sample", unit="ticker") as bar:
        for sample in iter_generate(spec):
            samples.append(sample)
            paths += [out / "xml" / f"{sample.ticker}.xml", out / "prices" / f"{sample.ticker}.csv"]
            texts += [render_xml(sample, spec.seed), render_prices_csv(sample)]
            bar.update()
    paths.append(out / "manifest.json")
    texts.append(manifest_json(samples, spec))
    with atomic_outputs(*paths) as temps:
        for tmp, text in zip(temps, texts, strict=True):
            tmp.write_text(text, encoding="utf-8")

    n_theses = sum(len(s.theses) for s in samples)
    size = sum(len(t.encode()) for t, p in zip(texts, paths, strict=True) if p.suffix == ".xml")
    log.info(
        "wrote %d theses for %d tickers (%.1f MB of XML) and their prices to %s",
        n_theses,
        len(samples),
        size / 1e6,
        out,
    )
    return 0
