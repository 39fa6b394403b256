"""Radiology reports into a table: Indiana University (Open-i) XML, or plain text files.

:func:`read_reports` reads the IU chest X-ray reports straight from their archive
(``NLMCXR_reports.tgz``, streamed, nothing extracted to disk), from a folder of XML or text files,
or from one file; :func:`split_sections` splits a plain-text report by its headings.
"""

from __future__ import annotations

import io
import logging
import re
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from histoxmodal.deps import require_extra
from histoxmodal.errors import ReportReadError as ReportReadError

log = logging.getLogger(__name__)

#: sections of every row of :func:`read_reports`, in report order
SECTIONS: tuple[str, ...] = ("comparison", "indication", "findings", "impression")

#: columns of :func:`read_reports`
COLUMNS: tuple[str, ...] = (
    "report_id",
    "patient_id",
    "image_ids",
    *SECTIONS,
    "text",
    "source",
)

# heading (lower case, one space between words) -> section name
_HEADINGS = {
    "comparison": "comparison",
    "comparisons": "comparison",
    "indication": "indication",
    "indications": "indication",
    "reason for exam": "indication",
    "reason for examination": "indication",
    "history": "history",
    "clinical history": "history",
    "technique": "technique",
    "findings": "findings",
    "finding": "findings",
    "impression": "impression",
    "conclusion": "impression",
    "conclusions": "impression",
}
# a heading starts a line or follows a sentence end, and ends with a colon
_HEADING_RE = re.compile(
    r"(?:^|(?<=[.!?]))[ \t]*("
    + "|".join(sorted((h.replace(" ", r"[ \t]+") for h in _HEADINGS), key=len, reverse=True))
    + r")[ \t]*:",
    re.IGNORECASE | re.MULTILINE,
)
_ARCHIVE_SUFFIXES = (".tgz", ".tar.gz", ".tar", ".tar.bz2", ".tar.xz")


def split_sections(text: str) -> dict[str, str]:
    """Split a plain-text report into sections by its headings, case-insensitively.

    Headings (followed by a colon, at the start of a line or after a sentence end):
    COMPARISON, INDICATION (or REASON FOR EXAM), HISTORY (or CLINICAL HISTORY), TECHNIQUE,
    FINDINGS, IMPRESSION (or CONCLUSION). Text before the first heading is ``"preamble"``;
    a heading that occurs twice has its parts joined by a newline.

    Returns
    -------
    dict
        Section name (lower case: ``"findings"``, ``"impression"``, ...) -> stripped text, in
        the order they appear; sections without text are left out.
    """
    out: dict[str, str] = {}
    matches = list(_HEADING_RE.finditer(text))
    pre = text[: matches[0].start() if matches else len(text)].strip()
    if pre:
        out["preamble"] = pre
    ends = [m.start() for m in matches[1:]] + ([len(text)] if matches else [])
    for m, end in zip(matches, ends, strict=True):
        name = _HEADINGS[re.sub(r"\s+", " ", m.group(1).lower())]
        body = text[m.end() : end].strip()
        if not body:
            continue
        out[name] = f"{out[name]}\n{body}" if name in out else body
    return out


def read_reports(path: str | Path):
    """Read radiology reports into a DataFrame, one row per report.

    Parameters
    ----------
    path
        A ``.tgz``/``.tar(.gz)`` archive of IU XML reports (streamed, not extracted), a folder
        of ``.xml``/``.txt`` reports (searched recursively), or one ``.xml``/``.txt`` file.

    Returns
    -------
    pandas.DataFrame
        Columns ``report_id`` (IU ``uId`` such as ``"CXR1"``, or the file stem),
        ``patient_id`` (None: the IU reports carry none), ``image_ids`` (list of the report's
        ``parentImage`` ids), ``comparison``, ``indication``, ``findings``, ``impression``
        (None when the report lacks the section), ``text`` (the sections as
        ``"HEADING: text"`` lines; the whole file for plain text) and ``source`` (file name).
        Extra columns: ``mesh`` (IU MeSH major terms), and for plain text any other section
        (``history``, ``technique``).
    """
    require_extra("spatial", "read_reports")  # pandas only
    import pandas as pd

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"reports not found: {p}")
    rows = list(_iter_rows(p))
    if not rows:
        raise ReportReadError(
            f"{p}: no reports found; expected .xml (Indiana University format) or .txt files, "
            f"or a .tgz archive of them"
        )
    df = pd.DataFrame(rows)
    extra = [c for c in df.columns if c not in COLUMNS]
    for c in COLUMNS:
        if c not in df.columns:
            df[c] = None
    df = df[[*COLUMNS, *extra]]
    return df.astype(object).where(df.notna(), None)


def _iter_rows(p: Path) -> Iterator[dict[str, Any]]:
    name = p.name.lower()
    if p.is_dir():
        files = sorted(
            (f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in (".xml", ".txt")),
            key=lambda f: _natural_key(str(f.relative_to(p))),
        )
        for f in files:
            yield _parse(f.read_bytes(), f.name, str(f))
    elif name.endswith(_ARCHIVE_SUFFIXES):
        try:
            # "r|*" streams the archive member by member, never extracting to disk
            with tarfile.open(p, mode="r|*") as tf:
                found = []
                for m in tf:
                    low = m.name.lower()
                    if not m.isfile() or not low.endswith((".xml", ".txt")):
                        continue
                    f = tf.extractfile(m)
                    if f is not None:
                        found.append((m.name, f.read()))
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ReportReadError(f"{p}: not a readable tar archive: {e}") from e
        # archives list 1, 10, 100, ...; number order matches the folder case and the IU ids
        for member, data in sorted(found, key=lambda t: _natural_key(t[0])):
            yield _parse(data, Path(member).name, f"{p}:{member}")
    elif p.suffix.lower() in (".xml", ".txt"):
        yield _parse(p.read_bytes(), p.name, str(p))
    else:
        raise ReportReadError(
            f"{p}: not a report file; give a .tgz archive, a folder of .xml/.txt reports, or "
            f"one .xml/.txt file"
        )


def _natural_key(s: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def _parse(data: bytes, name: str, where: str) -> dict[str, Any]:
    if name.lower().endswith(".xml"):
        return _parse_iu_xml(data, name, where)
    text = data.decode("utf-8", errors="replace")
    row: dict[str, Any] = {
        "report_id": Path(name).stem,
        "patient_id": None,
        "image_ids": [],
        "text": text.strip(),
        "source": name,
    }
    for k, v in split_sections(text).items():
        if k != "preamble":
            row[k] = v
    return row


def _parse_iu_xml(data: bytes, name: str, where: str) -> dict[str, Any]:
    try:
        root = ET.parse(io.BytesIO(data)).getroot()
    except ET.ParseError as e:
        raise ReportReadError(f"{where}: not well-formed XML: {e}") from e
    uid = root.find("uId")
    row: dict[str, Any] = {
        "report_id": (uid.get("id") if uid is not None else None) or Path(name).stem,
        "patient_id": None,
        "image_ids": [e.get("id") for e in root.iter("parentImage") if e.get("id")],
        "source": name,
    }
    parts = []
    for a in root.iter("AbstractText"):
        label = (a.get("Label") or "").strip()
        body = "".join(a.itertext()).strip()
        key = _HEADINGS.get(label.lower(), label.lower())
        if not label or not body:
            continue
        row[key] = f"{row[key]}\n{body}" if row.get(key) else body
        parts.append(f"{label.upper()}: {body}")
    row["text"] = "\n".join(parts)
    mesh = root.find("MeSH")
    row["mesh"] = [m.text.strip() for m in mesh.iter("major") if m.text] if mesh is not None else []
    if not any(k in row for k in SECTIONS):
        log.debug("%s: no COMPARISON/INDICATION/FINDINGS/IMPRESSION sections", where)
    return row


__all__ = ["COLUMNS", "SECTIONS", "ReportReadError", "read_reports", "split_sections"]
