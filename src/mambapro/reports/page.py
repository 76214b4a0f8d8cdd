"""``report.html`` of ``mambapro analyze``: one self-contained page that opens from disk.

No scripts, fonts or styles from the network: the style sheet is inline and the figures are
relative links to the PNG files in the same folder (the page travels with its folder). Every
value is HTML-escaped.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from mambapro.files import atomic_write
from mambapro.modalities import RGB_NI_TI, ModalitySet

__all__ = ["write_report_page"]

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto;
       max-width: 1200px; padding: 0 16px; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.15em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; }
td.l, th.l { text-align: left; }
figure { margin: 16px 0 28px; }
figure img { max-width: 100%; height: auto; border: 1px solid #e4e4e4; image-rendering: auto; }
figcaption { font-size: 0.9em; color: #444; margin-top: 4px; }
.note { font-size: 0.85em; color: #555; }
code { background: #f5f5f5; padding: 0 3px; }
"""

_METRICS = ("mAP", "Rank-1", "Rank-5", "Rank-10", "mINP")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _pct(value: Any) -> str:
    try:
        return f"{100 * float(value):.1f}"
    except (TypeError, ValueError):
        return "-"


def _num(value: Any, digits: int = 3) -> str:
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return "-"


def _modalities(report: dict[str, Any]) -> ModalitySet:
    """The analysed models' modalities (RGB, NI, TI in an ``analysis.json`` that predates the record)."""
    stored = report.get("modalities")
    return RGB_NI_TI if stored is None else ModalitySet.from_dict(stored)


#: "all three modalities present", in words for the sizes a set may have.
_ALL_PRESENT = {2: "both modalities", 3: "all three modalities", 4: "all four modalities"}


def _table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    """Cells are already escaped; the first ``left`` columns are left-aligned."""

    def cells(tag: str, values: list[str]) -> str:
        return "".join(
            f'<{tag} class="l">{v}</{tag}>' if i < left else f"<{tag}>{v}</{tag}>"
            for i, v in enumerate(values)
        )

    head = cells("th", header)
    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _config_section(report: dict[str, Any]) -> str:
    cfg = report["config"]
    rows = [[_e(k), _e(v)] for k, v in cfg.items() if v is not None]
    general = _table(["setting", "value"], rows, left=2)
    keys = (
        "label",
        "checkpoint",
        "backbone",
        "aggregator",
        "img_size",
        "test_feature",
        "neck_feat",
        "distance",
        "epoch",
    )
    ck_rows = [[_e(c.get(k, "-")) for k in keys] for c in report["checkpoints"]]
    return f"<h2>Configuration</h2>{general}{_table(list(keys), ck_rows, left=len(keys))}"


def _metrics_section(report: dict[str, Any]) -> str:
    rows = []
    for label, m in report["metrics"].items():
        rows.append([_e(label), *(_pct(m.get(k)) for k in _METRICS), _e(m.get("num_valid", "-"))])
    table = _table(["checkpoint", *(f"{k} (%)" for k in _METRICS), "valid queries"], rows)
    present = _ALL_PRESENT.get(len(_modalities(report)), "all modalities")
    note = f'<p class="note">Plain distance (no re-ranking), {_e(present)} present.</p>'
    return f"<h2>Metrics</h2>{table}{note}"


def _alignment_section(report: dict[str, Any]) -> str:
    rows = []
    for label, pairs in report.get("alignment", {}).items():
        for pair, entry in pairs.items():
            before, after = entry.get("before", {}), entry.get("after", {})
            rows.append(
                [
                    _e(label),
                    _e(pair),
                    _num(before.get("mean"), 4),
                    _num(after.get("mean"), 4),
                    _num(entry.get("before_after_overlap")),
                    _num(before.get("same_vs_other_overlap")),
                    _num(after.get("same_vs_other_overlap")),
                ]
            )
    header = [
        "checkpoint",
        "pair",
        "mean cos before MA",
        "mean cos after MA",
        "overlap before/after",
        "same/other overlap before",
        "same/other overlap after",
    ]
    note = f'<p class="note">Overlap: {_e(report.get("overlap_definition", ""))}</p>'
    return f"<h2>Modality alignment</h2>{_table(header, rows, left=2)}{note}"


def _missing_section(report: dict[str, Any]) -> str:
    missing = report.get("missing")
    if not missing:
        return ""
    labels = list(missing)
    settings = list(next(iter(missing.values())))
    rows = [
        [_e(s), *(f"{_pct(missing[c][s].get('mAP'))} / {_pct(missing[c][s].get('Rank-1'))}" for c in labels)]
        for s in settings
    ]
    table = _table(["missing", *(f"{_e(c)}: mAP / R-1 (%)" for c in labels)], rows)
    mods = _modalities(report)
    first = f"-{mods.letters[0]}: {mods.keys[0]}"
    note = f'<p class="note">{_e(first)} missing (zeroed) in query and gallery, and so on.</p>'
    return f"<h2>Missing modalities</h2>{table}{note}"


def _figures_section(report: dict[str, Any]) -> str:
    parts = ["<h2>Figures</h2>"]
    for fig in report.get("figures", []):
        parts.append(
            f'<figure><img src="{_e(fig["file"])}" alt="{_e(fig["title"])}">'
            f"<figcaption><b>{_e(fig['title'])}.</b> {_e(fig['caption'])}</figcaption></figure>"
        )
    return "".join(parts)


def render_report_page(report: dict[str, Any]) -> str:
    """The page's HTML for the content of ``analysis.json``."""
    cfg = report["config"]
    title = f"MambaPro analysis: {cfg.get('dataset', '')}"
    labels = ", ".join(c["label"] for c in report["checkpoints"])
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{_STYLE}</style></head>'
        f"<body><h1>{_e(title)}</h1><p>Checkpoints: {_e(labels)}. Data in <code>analysis.json</code> "
        "beside this page.</p>"
        + _config_section(report)
        + _metrics_section(report)
        + _alignment_section(report)
        + _missing_section(report)
        + _figures_section(report)
        + "</body></html>\n"
    )


def write_report_page(out_dir: str | Path, report: dict[str, Any]) -> Path:
    """Write ``report.html`` into ``out_dir``; returns its path. Every figure it links must
    exist in ``out_dir``."""
    out = Path(out_dir)
    missing = [f["file"] for f in report.get("figures", []) if not (out / f["file"]).is_file()]
    if missing:
        raise FileNotFoundError(f"report.html would link missing figures: {missing}")
    path = out / "report.html"
    with atomic_write(path) as fh:
        fh.write(render_report_page(report).encode("utf-8"))
    return path
