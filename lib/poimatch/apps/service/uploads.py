"""The request body: CSV parsing (multipart or raw), header checks, and the 4xx errors
that name what is wrong with an upload."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import AsyncGenerator
from typing import Any
from urllib.parse import quote

import pandas as pd
from fastapi import Request
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from poimatch import schema as S

log = logging.getLogger("poimatch.apps.service")  # one logger name for the whole service

ROW = "_row"  # 1-based data row number of the request (the header is row 0)
_MAX_LISTED = 10  # offending rows / ids named in an error message

# The service warms up on this file (the example): two exact duplicates.
EXAMPLE_CSV = """\
id,name,latitude,longitude,address,city,state,zip,country,url,phone,categories
E_00001118ad0191,Jamu Petani Bagan Serai,5.012169,100.535805,,,,,MY,,,Cafés
E_000020eb6fed40,Johnny's Bar,40.43420889065938,-80.56416034698486,497 N 12th St,Weirton,WV,26062,US,,,Bars
E_00002f98667edf,QIWI,47.215134,39.686088,"Межевая улица, 60",Ростов-на-Дону,,,RU,https://qiwi.com,+78003011131,ATMs
E_001b6bad66eb98,"Gelora Sriwijaya, Jaka Baring Sport City",-3.01467472168758,104.79437444575598,,,,,ID,,,Stadiums
E_0283d9f61e569d,Stadion Gelora Sriwijaya,-3.021726757527373,104.78862762451172,Jalan Gubernur Hasan Bastari,Palembang,South Sumatra,11480.0,ID,,,Soccer Stadiums
E_00002f98667edf_copy,QIWI,47.215134,39.686088,"Межевая улица, 60",Ростов-на-Дону,,,RU,https://qiwi.com,+78003011131,ATMs
E_001b6bad66eb98_copy,"Gelora Sriwijaya, Jaka Baring Sport City",-3.01467472168758,104.79437444575598,,,,,ID,,,Stadiums
"""  # noqa: E501


# ------------------------------------------------------------------------------- errors


class SparkLostError(RuntimeError):
    """The service's Spark JVM died (e.g. killed for memory): the process must restart."""


class RequestError(Exception):
    """A request the service refuses: HTTP status, a stable code and a message."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        **details: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.details = details

    def body(self) -> dict[str, Any]:
        """The JSON error body."""
        return {"error": self.code, "message": self.message, **self.details}


# ----------------------------------------------------------------------- request body


_CSV_TYPES = ("text/csv", "application/csv", "text/plain", "application/octet-stream")


async def read_body(request: Request, *, max_bytes: int) -> bytes:
    """The uploaded CSV's bytes: multipart field ``file`` or the raw body.

    Raises:
        RequestError: 413 over ``max_bytes``; 415 for a content type that is not
            CSV; 400 for a multipart form without ``file``.
    """
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise RequestError(
            413,
            "too_large",
            f"the body has {int(declared)} bytes; "
            f"the limit is {max_bytes} (service.max_body_bytes)",
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise RequestError(
                413,
                "too_large",
                f"the body exceeds the limit of {max_bytes} bytes (service.max_body_bytes)",
            )
        chunks.append(chunk)
    data = b"".join(chunks)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        return await _multipart_file(request.headers, data, max_bytes=max_bytes)
    if content_type and content_type not in _CSV_TYPES:
        raise RequestError(
            415,
            "not_csv",
            f"content type {content_type!r} is not CSV: send text/csv, "
            "or multipart/form-data with the file in field 'file'",
        )
    return data


async def _multipart_file(headers: Headers, data: bytes, *, max_bytes: int) -> bytes:
    async def stream() -> AsyncGenerator[bytes, None]:
        yield data

    parser = MultiPartParser(headers, stream(), max_files=1, max_fields=10, max_part_size=max_bytes)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise RequestError(
            400, "bad_multipart", f"the multipart form cannot be read: {exc}"
        ) from None
    upload = form.get("file")
    if upload is None:
        raise RequestError(
            400, "no_file", f"the multipart form has no field 'file' (fields: {list(form.keys())})"
        )
    if isinstance(upload, UploadFile):
        content = await upload.read()
        await upload.close()
        return content
    return str(upload).encode("utf-8")


def parse_upload(data: bytes, *, max_rows: int) -> tuple[pd.DataFrame, list[str]]:
    """Decode and split an uploaded CSV into string columns of the input layout.

    Records are read one at a time and reading stops at the first record past
    ``max_rows``: a body of a million short lines costs ``max_rows + 1`` records, not a
    million. Run it off the event loop (it is CPU work).

    Returns:
        The rows (every input column, ``None`` for empty or absent values, plus
        ``_row``, the 1-based data row number) and notes about ignored or absent
        optional columns.

    Raises:
        RequestError: empty body, undecodable bytes, not CSV, missing or duplicate
            columns, rows with the wrong number of fields (400); too many rows (413).
    """
    if not data.strip():
        raise RequestError(400, "empty_body", "the request has no CSV (empty body)")
    if b"\x00" in data:
        raise RequestError(400, "not_csv", "the body holds NUL bytes: it is not a CSV text file")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise RequestError(
            400,
            "not_utf8",
            f"bytes that are not UTF-8 at byte {exc.start} (line {line}): "
            "re-encode the file as UTF-8",
            byte_offset=exc.start,
            line=line,
        ) from None
    records = (r for r in csv.reader(io.StringIO(text, newline="")) if any(v.strip() for v in r))
    try:
        first = next(records, None)
        if first is None:
            raise RequestError(400, "empty_body", "the request has no CSV header line")
        header = _checked_header(first)
        body: list[list[str]] = []
        for record in records:
            body.append(record)
            if len(body) > max_rows:
                raise RequestError(
                    413,
                    "too_many_rows",
                    f"the CSV has more than {max_rows} data rows; "
                    f"the limit is {max_rows} (service.max_rows)",
                )
    except csv.Error as exc:
        raise RequestError(400, "not_csv", f"the body is not CSV: {exc}") from None
    if not body:
        raise RequestError(400, "no_rows", "the CSV has a header but no data rows")
    ragged = [i for i, r in enumerate(body, start=1) if len(r) != len(header)]
    if ragged:
        raise RequestError(
            400,
            "malformed_rows",
            f"{len(ragged)} row(s) do not have {len(header)} fields like the header: "
            f"data rows {ragged[:_MAX_LISTED]}",
            rows=ragged[:_MAX_LISTED],
        )
    position = {h: i for i, h in enumerate(header)}
    columns: dict[str, list[str | None]] = {}
    for name in S.INPUT_COLUMNS:
        at = position.get(name)
        columns[name] = [
            (r[at] if r[at].strip() else None) if at is not None else None for r in body
        ]
    table = pd.DataFrame(columns, dtype=object)
    table[ROW] = range(1, len(body) + 1)
    notes = []
    absent = [c for c in S.INPUT_COLUMNS if c not in position]
    if absent:
        notes.append(f"absent optional columns: {absent}")
    ignored = [h for h in header if h not in S.INPUT_COLUMNS]
    if ignored:
        notes.append(f"ignored columns: {ignored}")
    return table, notes


def _checked_header(record: list[str]) -> list[str]:
    """The header's column names; 400 when a required one is missing or one repeats."""
    header = [h.strip() for h in record]
    missing = [c for c in S.REQUIRED_COLUMNS if c not in header]
    if missing:
        shown = header if len(header) <= 20 else [*header[:20], "..."]
        raise RequestError(
            400,
            "missing_columns",
            f"missing required column(s) {missing}; the header has {shown}",
            missing=missing,
        )
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise RequestError(
            400, "duplicate_columns", f"duplicate column name(s) {dupes} in the header"
        )
    return header


# Printable ASCII other than "%" stays as it is; everything else (non-ASCII letters,
# control characters such as a newline in a quoted column name) is percent-encoded.
_NOTE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def header_text(text: str) -> str:
    """``text`` made safe for an HTTP header: percent-encoded UTF-8 (RFC 3986 style).

    HTTP header values are Latin-1 at most and may hold no control characters, while
    a note can name any column of the upload (``категория``, a quoted newline). ASCII
    text reads as it is; decode with ``urllib.parse.unquote``.
    """
    return quote(text, safe=_NOTE_SAFE)


def problem_for_rejections(rejected: list[tuple[int, str | None, str]]) -> RequestError:
    """One 422 naming each rule's first offending rows (and ids, for duplicates)."""
    by_reason: dict[str, list[tuple[int, str | None]]] = {}
    for row, ident, reasons in rejected:
        for reason in reasons.split(","):
            by_reason.setdefault(reason, []).append((row, ident))
    parts = []
    for reason in sorted(by_reason):
        hits = by_reason[reason]
        rows = [r for r, _ in hits[:_MAX_LISTED]]
        if reason == "duplicate_id":
            ids = sorted({str(i) for _, i in hits})[:_MAX_LISTED]
            parts.append(f"duplicate_id: ids {ids} (data rows {rows})")
        else:
            parts.append(f"{reason}: data rows {rows}")
    return RequestError(
        422,
        "invalid_rows",
        f"{len(rejected)} of the rows are invalid: " + "; ".join(parts),
        reasons={k: [r for r, _ in v[:_MAX_LISTED]] for k, v in sorted(by_reason.items())},
    )
