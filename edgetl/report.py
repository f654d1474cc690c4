"""Reports of a verify run: terminal table, JSON, JUnit XML and one self-contained HTML page.

The HTML has no external assets (inline CSS and SVG) so it can be attached to a CI run and
opened anywhere. Files are written by outdir.write_report (atomically; devices, FIFOs and
/dev/std* in place; symbolic links through to their targets); text_table() is also the
bench's table.
"""

from __future__ import annotations

import html
import io
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

from edgetl.outdir import write_report

if TYPE_CHECKING:
    from edgetl.results import PairResult, VerifyResult


def _num(v: float | None, fmt: str = ".2e") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return format(v, fmt)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.0%}"


def _row(p: PairResult) -> list[str]:
    s = p.stats
    acc = "-"
    if p.accuracy is not None:
        acc = f"{p.accuracy:.1%}"
        if p.reference_accuracy is not None:
            acc += f" (keras {p.reference_accuracy:.1%})"
        if p.images is not None:
            acc += f" on {p.images}"
    return [
        p.artifact,
        p.runtime,
        p.status.upper(),
        _num(s.max_abs) if s else "-",
        _num(s.p99_abs) if s else "-",
        _pct(s.top1_agreement) if s else "-",
        acc,
        p.tolerance.describe(),
    ]


HEADERS = ["artifact", "runtime", "status", "max_abs", "p99_abs", "top1", "accuracy", "tolerance"]


def text_table(header: list[str], rows: list[list]) -> list[str]:
    """Left-aligned columns two spaces apart, a dashed rule under the header (verify's table
    and the bench's)."""
    cells = [[str(c) for c in r] for r in [header, *rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return [line(cells[0]), line(["-" * w for w in widths]), *map(line, cells[1:])]


def format_table(result: VerifyResult) -> str:
    """artifact x runtime with status, errors and tolerance; reasons and unavailable runtimes
    listed under it."""
    out = [
        f"bundle {result.bundle_dir} ({result.name}): {result.probes} golden probes"
        + (f", {result.data['images']} labelled images" if result.data else "")
    ]
    out.append(probe_line(result))
    out += text_table(HEADERS, [_row(p) for p in result.pairs])
    adapters = {
        p.runtime: p.info["webgpu_adapter"] for p in result.pairs if p.info.get("webgpu_adapter")
    }
    if adapters:  # which WebGPU adapter ran: a real GPU, or SwiftShader's software one
        out.append(
            "WebGPU adapter: "
            + "; ".join(
                f"{rt}: {a.get('vendor') or '?'} {a.get('architecture') or ''}".rstrip()
                for rt, a in adapters.items()
            )
        )
    for p in result.pairs:
        if p.passed:
            continue
        out.append(f"{p.artifact}@{p.runtime}:")
        out += [f"  - {r}" for r in p.reasons]
        if p.localization is not None:
            out.append(f"  - {p.localization.describe()}")
    idle = [r.name for r in result.runtimes if r.available and not r.artifacts]
    if idle:
        out.append(f"available, but no artifact of theirs in the bundle: {', '.join(idle)}")
    missing = [r for r in result.runtimes if not r.available]
    if missing:
        out.append("unavailable runtimes (not counted as passing):")
        for r in missing:
            req = " [REQUIRED]" if r.required else ""
            out.append(f"  {r.name}{req}: {r.reason}")
    not_run = [(r.name, a, why) for r in result.runtimes for a, why in r.not_run.items()]
    if not_run:
        out.append("not run on this machine (not counted as passing):")
        out.extend(f"  {a}@{name}: {why}" for name, a, why in not_run)
    return "\n".join(out)


def probe_line(result: VerifyResult) -> str:
    """What the probes can prove: output spread and embedding features switched on."""
    c = result.probe_coverage
    if c is None:
        return f"probes: coverage not recorded. WARNING: {result.probe_warning}"
    parts = [f"output spread {c.get('output_spread', 0):.2g}"]
    if "log_spread" in c:
        parts[0] += f" (log p {c['log_spread']:.2g})"
    if "features" in c:
        parts.append(
            f"{c['features_active']}/{c['features']} embedding features switched on "
            f"({c['features_share']:.0%})"
        )
    if c.get("saturated"):
        parts.append(f"{c['saturated']}/{result.probes} saturated (judged in log p)")
    verdict = "informative" if c.get("informative") else f"WARNING: {result.probe_warning}"
    if result.saturation_note and result.strict_probes:
        verdict += f"; FAILED (--strict-probes): {result.saturation_note}"
    elif result.saturation_note and c.get("informative"):
        verdict = "informative (the saturated probes in log p only)"
    return f"probes: {', '.join(parts)}: {verdict}"


def to_json_dict(result: VerifyResult) -> dict:
    return {
        "bundle": str(result.bundle_dir),
        "name": result.name,
        "ok": result.ok,
        "summary": result.summary(),
        "probes": result.probes,
        "probe_coverage": result.probe_coverage,
        "probe_warning": result.probe_warning,
        "saturation_note": result.saturation_note,
        "strict_probes": result.strict_probes,
        "data": result.data,
        "seconds": result.seconds,
        "runtimes": [r.to_dict() for r in result.runtimes],
        "pairs": [p.to_dict() for p in result.pairs],
    }


def write_json(result: VerifyResult, path: Path) -> None:
    text = json.dumps(to_json_dict(result), indent=2, allow_nan=False) + "\n"
    write_report(path, text.encode("utf-8"))


def write_junit(result: VerifyResult, path: Path) -> None:
    """One <testcase> per pair (classname = artifact, name = runtime); unavailable runtimes are
    <skipped>, or <failure> when --require named them."""
    suite = ET.Element("testsuite", name=f"edgetl verify {result.name}")
    n_fail = n_skip = 0
    for p in result.pairs:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"edgetl.{p.artifact}",
            name=p.runtime,
            time=f"{p.seconds or 0:.3f}",
        )
        if not p.passed:
            n_fail += 1
            text = "\n".join(p.reasons + ([p.localization.describe()] if p.localization else []))
            fail = ET.SubElement(case, "failure", message=p.reasons[0] if p.reasons else p.status)
            fail.text = text
    for r in result.runtimes:
        for art_id, why in r.not_run.items():
            case = ET.SubElement(suite, "testcase", classname=art_id, name=r.name, time="0")
            n_skip += 1
            ET.SubElement(case, "skipped", message=why)
        if r.available:
            continue
        case = ET.SubElement(suite, "testcase", classname="edgetl.runtime", name=r.name, time="0")
        if r.required:
            n_fail += 1
            ET.SubElement(case, "failure", message=f"required runtime unavailable: {r.reason}")
        else:
            n_skip += 1
            ET.SubElement(case, "skipped", message=r.reason or "unavailable")
    if result.strict_problems:
        problems = "; ".join(result.strict_problems)
        case = ET.SubElement(suite, "testcase", classname="edgetl.probes", name="coverage")
        if result.strict_probes:
            n_fail += 1
            ET.SubElement(case, "failure", message=problems)
        else:
            ET.SubElement(case, "system-err").text = f"WARNING: {problems}"
    suite.set("tests", str(len(suite)))
    suite.set("failures", str(n_fail))
    suite.set("errors", "0")
    suite.set("skipped", str(n_skip))
    suite.set("time", f"{result.seconds:.3f}")
    buf = io.BytesIO()
    ET.ElementTree(suite).write(buf, encoding="utf-8", xml_declaration=True)
    write_report(path, buf.getvalue())


def histogram_svg(hist: dict | None, width: int = 260, height: int = 80) -> str:
    """Inline SVG bars of log10 |error| (1e-10 .. 1), exact zeros as a separate grey bar."""
    if not hist:
        return "<svg width='1' height='1'></svg>"
    counts = list(hist["counts"])
    edges = hist["edges_log10"]
    bars = [hist.get("zeros", 0), *counts]
    top = max(max(bars), 1)
    n = len(bars)
    bw = width / n
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height + 14}' "
        f"role='img'><title>log10 |error| histogram</title>"
    ]
    for i, c in enumerate(bars):
        h = (height - 2) * c / top
        color = "#999" if i == 0 else "#3572b0"
        label = "exactly 0" if i == 0 else f"1e{edges[i - 1]:g}..1e{edges[i]:g}"
        parts.append(
            f"<rect x='{i * bw:.1f}' y='{height - h:.1f}' width='{bw - 1:.1f}' "
            f"height='{h:.1f}' fill='{color}'><title>{label}: {c}</title></rect>"
        )
    for i, e in enumerate(edges[:-1]):
        if e == int(e) and int(e) % 2 == 0:
            parts.append(
                f"<text x='{(i + 1) * bw:.1f}' y='{height + 12}' font-size='9'>1e{int(e)}</text>"
            )
    parts.append("</svg>")
    return "".join(parts)


def write_html(result: VerifyResult, path: Path) -> None:
    esc = html.escape
    rows = []
    for p in result.pairs:
        cells = "".join(f"<td>{esc(c)}</td>" for c in _row(p))
        detail = "<br>".join(esc(r) for r in p.reasons)
        if p.localization is not None:
            detail += ("<br>" if detail else "") + esc(p.localization.describe())
        cls = "pass" if p.passed else "fail"
        rows.append(
            f"<tr class='{cls}'>{cells}<td>{histogram_svg(p.histogram)}</td><td>{detail}</td></tr>"
        )
    missing = "".join(
        f"<li><b>{esc(r.name)}</b>{' [REQUIRED]' if r.required else ''}: {esc(r.reason or '')}</li>"
        for r in result.runtimes
        if not r.available
    )
    heads = "".join(f"<th>{h}</th>" for h in [*HEADERS, "|error| histogram", "details"])
    verdict = "PASS" if result.ok else "FAIL"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>edgetl verify: {esc(result.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ccc; padding: 4px 8px;
vertical-align: top; font-size: 13px; }}
tr.pass td:nth-child(3) {{ color: #176317; font-weight: bold; }}
tr.fail td:nth-child(3) {{ color: #b00020; font-weight: bold; }}
.verdict {{ font-size: 1.4em; font-weight: bold; color: {"#176317" if result.ok else "#b00020"}; }}
</style></head><body>
<h1>edgetl verify: {esc(result.name)}</h1>
<p class="verdict">{verdict}: {esc(result.summary())}</p>
<p>bundle {esc(str(result.bundle_dir))}; {result.probes} golden probes;
{result.seconds:.1f} s</p>
<p class="probes">{esc(probe_line(result))}</p>
<table><thead><tr>{heads}</tr></thead><tbody>
{"".join(rows)}
</tbody></table>
<h2>Unavailable runtimes</h2><ul>{missing or "<li>none</li>"}</ul>
</body></html>
"""
    write_report(path, page.encode("utf-8"))
